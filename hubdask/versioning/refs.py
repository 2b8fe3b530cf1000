"""Branch heads and tags, moved atomically with nothing but exclusive create.

A branch is an append-only sequence of head records ``refs/heads/BRANCH/SEQ``; the head is the highest
SEQ. Moving a branch means creating SEQ+1, which exactly one writer can do, on every backend that
supports exclusive create (local link, memory, S3 If-None-Match). A head names the branch's open node
(where uncommitted writes go) and its base commit. A tag is one record ``refs/tags/TAG``.

Two kinds of empty objects beside the records let one LIST of the branch's folder answer a read, with
no GET (on S3 each request is a round trip that no cache may save, since refs move):
- ``SEQ.NODE.BASE``, created by the winner right after record SEQ: the record's content in its name;
- ``written-NODE``, created by every writer with its first write into open node NODE (the write returns
  only once it has landed): without it the node holds no returned write, and readers take every chunk
  from the base commit (and its disk cache).
A crash before either object leaves the safe answer (GET the record; look in the node).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from hubdask.storage import Root

SEQ_DIGITS = 12


@dataclass(frozen=True)
class Head:
    """One head record: the branch's open node and the commit it started from (None before any)."""

    branch: str
    seq: int
    node: str
    base: str | None
    written: bool = True  # the open node may hold writes (False: the listing proved it empty)


def head_prefix(ds: str, branch: str) -> str:
    return f"{ds}/refs/heads/{branch}/"


def tag_key(ds: str, tag: str) -> str:
    return f"{ds}/refs/tags/{tag}"


def written_key(ds: str, branch: str, node: str) -> str:
    """The mark a writer creates with its first write into ``node``, the open node of ``branch``."""
    return f"{head_prefix(ds, branch)}written-{node}"


def _pointer_key(ds: str, branch: str, seq: int, node: str, base: str | None) -> str:
    return f"{head_prefix(ds, branch)}{seq:0{SEQ_DIGITS}d}.{node}.{base or '-'}"


def read_head(root: Root, ds: str, branch: str) -> Head | None:
    """The current head of ``branch``, or None if there is no such branch: one LIST (plus a GET of the
    record when its name copy is missing or ambiguous)."""
    names = [k.rsplit("/", 1)[1] for k in root.list_prefix(head_prefix(ds, branch))]
    seqs = sorted(int(n) for n in names if n.isdigit())
    pointers: dict[int, list[tuple[str, str | None]]] = {}
    for n in names:
        parts = n.split(".")
        if len(parts) == 3 and parts[0].isdigit():
            pointers.setdefault(int(parts[0]), []).append((parts[1], None if parts[2] == "-" else parts[2]))
    marked = {n[len("written-"):] for n in names if n.startswith("written-")}
    for seq in reversed(seqs):  # a half-deleted branch may lack its newest record; take the newest readable
        named = pointers.get(seq, [])
        head = Head(branch, seq, *named[0]) if len(named) == 1 else read_head_at(root, ds, branch, seq)
        if head is not None:
            return dataclasses.replace(head, written=head.node in marked)
    return None


def read_head_at(root: Root, ds: str, branch: str, seq: int) -> Head | None:
    """Head record number ``seq`` of ``branch`` (None if it does not exist)."""
    raw = root.get(f"{head_prefix(ds, branch)}{seq:0{SEQ_DIGITS}d}")
    if raw is None:
        return None
    rec = json.loads(raw)
    return Head(branch, seq, rec["node"], rec["base"])


def write_head(root: Root, ds: str, branch: str, seq: int, node: str, base: str | None) -> bool:
    """Create head record ``seq``; False if another writer created it first (the branch moved)."""
    data = json.dumps({"node": node, "base": base}).encode()
    if not root.create(f"{head_prefix(ds, branch)}{seq:0{SEQ_DIGITS}d}", data):
        return False
    name_head(root, ds, branch, seq, node, base)
    return True


def start_branch(root: Root, ds: str, branch: str, node: str, base: str | None) -> bool:
    """Create ``branch``'s first head record (open node ``node`` on commit ``base``); False if the branch
    exists. A create whose response was lost but that landed counts as ours (the record names ``node``)."""
    if write_head(root, ds, branch, 0, node, base):
        return True
    head = read_head(root, ds, branch)
    if head is None or head.node != node:
        return False
    name_head(root, ds, branch, 0, node, base)
    return True


def name_head(root: Root, ds: str, branch: str, seq: int, node: str, base: str | None) -> None:
    """Create the name copy of head record ``seq`` (idempotent; its creator calls it after winning)."""
    root.put(_pointer_key(ds, branch, seq, node, base), b"")


def prune(root: Root, ds: str, branch: str, head: Head) -> int:
    """Delete the name copies of records older than ``head`` and the written marks of their nodes, so
    the branch's listing stays short (records are kept: their sequence is what moves a branch, and what
    a newer head than ``head`` holds is left alone). Returns how many objects went."""
    prefix = head_prefix(ds, branch)
    old_nodes, gone = set(), []
    for k in root.list_prefix(prefix):
        parts = k[len(prefix):].split(".")
        if len(parts) == 3 and parts[0].isdigit() and int(parts[0]) < head.seq:
            old_nodes.add(parts[1])
            gone.append(k)
    gone += [written_key(ds, branch, n) for n in old_nodes if n != head.node]
    for k in gone:
        root.delete(k)
    return len(gone)


def list_branches(root: Root, ds: str) -> list[str]:
    """Branches with at least one head record (one LIST; empty folders of deleted branches don't count)."""
    prefix = f"{ds}/refs/heads/"
    found = (k[len(prefix):].split("/") for k in root.list_prefix(prefix))
    return sorted({parts[0] for parts in found if len(parts) == 2 and parts[1].isdigit()})


def list_tags(root: Root, ds: str) -> dict[str, str]:
    """Tag name -> commit id."""
    out = {}
    for name in root.list_dir(f"{ds}/refs/tags/"):
        raw = root.get(tag_key(ds, name))
        if raw is not None:
            out[name] = json.loads(raw)["commit"]
    return dict(sorted(out.items()))


def read_tag(root: Root, ds: str, tag: str) -> str | None:
    raw = root.get(tag_key(ds, tag))
    return None if raw is None else json.loads(raw)["commit"]


def write_tag(root: Root, ds: str, tag: str, commit: str) -> bool:
    return root.create(tag_key(ds, tag), json.dumps({"commit": commit}).encode())
