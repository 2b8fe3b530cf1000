"""Branch heads and tags, moved atomically with nothing but exclusive create.

A branch is a sequence of head records ``refs/heads/BRANCH/SEQ``; the head is the highest SEQ. Moving a
branch means creating SEQ+1, which exactly one writer can do, on every backend that supports exclusive
create (local link, memory, S3 If-None-Match). A head names the branch's open node (where uncommitted
writes go) and its base commit. A tag is one record ``refs/tags/TAG``.

The winner of SEQ+1 deletes the records older than SEQ (with their name copies and marks), so a branch's
folder holds a handful of objects however long its history: resolving a branch is one short LIST at
10,000 commits as at 1. A creator that was so late that SEQ had already been pruned and re-created by
it sees a newer record in the same LIST and gives its record up (``write_head`` answers False).

Two kinds of empty objects beside the records let one LIST of the branch's folder answer a read, with
no GET (on S3 each request is a round trip that no cache may save, since refs move):
- ``SEQ.NODE.BASE``, created by the winner right after record SEQ: the record's content in its name;
- ``written-NODE.WRITER``, created by every writer process (WRITER: a random id per process) with its
  first write into open node NODE (the write returns only once it has landed): without any, the node
  holds no returned write, and readers take every chunk from the base commit (and its disk cache); with
  only the committing process's own, a commit knows the node's content without listing it.
A crash before either object leaves the safe answer (GET the record; look in the node). Temp files of
an interrupted create (``*.partial``) are never read as records.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from hubdask.errors import CorruptionError
from hubdask.storage import Root
from hubdask.versioning import layout
from hubdask.versioning.layout import head_prefix, tag_key

SEQ_DIGITS = 12
KEEP = 2  # head records kept: the newest and the one before it


@dataclass(frozen=True)
class Head:
    """One head record: the branch's open node and the commit it started from (None before any)."""

    branch: str
    seq: int
    node: str
    base: str | None
    written: bool = True  # the open node may hold writes (False: the listing proved it empty)


def written_key(ds: str, branch: str, node: str, writer: str) -> str:
    """The mark writer process ``writer`` creates with its first write into ``node``, the open node of
    ``branch``."""
    return f"{head_prefix(ds, branch)}written-{node}.{writer}"


def _marked_node(name: str) -> str | None:
    return name[len("written-"):].split(".")[0] if name.startswith("written-") else None


def writers(root: Root, ds: str, branch: str, node: str) -> set[str]:
    """The writer processes whose marks for ``node`` are in ``branch``'s folder (one LIST); a mark of an
    upgraded dataset, which names no writer, counts as an unknown one ("?")."""
    names = [k.rsplit("/", 1)[1] for k in _list(root, ds, branch).keys]
    return {(n.split(".", 1)[1] if "." in n else "?") for n in names if _marked_node(n) == node}


def record_key(ds: str, branch: str, seq: int) -> str:
    return f"{head_prefix(ds, branch)}{seq:0{SEQ_DIGITS}d}"


def _pointer_key(ds: str, branch: str, seq: int, node: str, base: str | None) -> str:
    return f"{record_key(ds, branch, seq)}.{node}.{base or '-'}"


@dataclass
class _Listing:
    """What one LIST of a branch's folder says."""

    seqs: list[int]
    pointers: dict[int, list[tuple[str, str | None]]]
    marked: set[str]
    keys: list[str]


def _list(root: Root, ds: str, branch: str) -> _Listing:
    prefix = head_prefix(ds, branch)
    keys = [k for k in root.list_prefix(prefix) if not layout.is_temp(k) and "/" not in k[len(prefix):]]
    names = [k[len(prefix):] for k in keys]
    pointers: dict[int, list[tuple[str, str | None]]] = {}
    for n in names:
        parts = n.split(".")
        if len(parts) == 3 and parts[0].isdigit():
            pointers.setdefault(int(parts[0]), []).append((parts[1], None if parts[2] == "-" else parts[2]))
    return _Listing(sorted(int(n) for n in names if n.isdigit()), pointers,
                    {_marked_node(n) for n in names if n.startswith("written-")}, keys)


def read_head(root: Root, ds: str, branch: str) -> Head | None:
    """The current head of ``branch``, or None if there is no such branch: one LIST (plus a GET of the
    record when its name copy is missing or ambiguous)."""
    listing = _list(root, ds, branch)
    for seq in reversed(listing.seqs):  # a half-deleted branch may lack its newest record: take the newest readable
        named = listing.pointers.get(seq, [])
        head = Head(branch, seq, *named[0]) if len(named) == 1 else read_head_at(root, ds, branch, seq)
        if head is not None:
            return dataclasses.replace(head, written=head.node in listing.marked)
    return None


def read_head_at(root: Root, ds: str, branch: str, seq: int) -> Head | None:
    """Head record number ``seq`` of ``branch`` (None if it does not exist)."""
    key = record_key(ds, branch, seq)
    raw = root.get(key)
    if raw is None:
        return None
    rec = parse_record(raw, ds, key, ("node", "base"))
    return Head(branch, seq, rec["node"], rec["base"])


def parse_record(raw: bytes, ds: str, key: str, fields: tuple[str, ...]) -> dict:
    """A JSON record with ``fields``, or CorruptionError naming the dataset and the object."""
    try:
        rec = json.loads(raw)
        if not isinstance(rec, dict) or any(f not in rec for f in fields):
            raise ValueError(f"expected an object with {', '.join(fields)}")
        return rec
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptionError(f"dataset {ds!r}: the record {key!r} is damaged ({exc}); expected a JSON record "
                              f"with {', '.join(fields)}") from None


def write_head(root: Root, ds: str, branch: str, seq: int, node: str, base: str | None) -> bool:
    """Create head record ``seq``; False if another writer created it first (the branch moved), or if
    the branch had moved past ``seq`` already (a very late creator: its record is taken back)."""
    key = record_key(ds, branch, seq)
    data = json.dumps({"node": node, "base": base}).encode()
    if not root.create(key, data):
        return False
    listing = _list(root, ds, branch)
    if listing.seqs and listing.seqs[-1] > seq:
        root.delete(key)
        return False
    _prune(root, ds, branch, seq, node, listing, also_put=_pointer_key(ds, branch, seq, node, base))
    return True


def _prune(root: Root, ds: str, branch: str, seq: int, node: str, listing: _Listing, also_put: str) -> None:
    """Create the name copy ``also_put`` of the new record and, in the same round trip, delete the records
    older than the last ``KEEP`` with their name copies, and written marks of nodes that no kept record
    names (best effort: a failure leaves a longer listing, nothing worse)."""
    cut = seq - KEEP + 1
    kept_nodes = {node} | {n for s, named in listing.pointers.items() if s >= cut for n, _ in named}
    prefix = head_prefix(ds, branch)
    gone = []
    for k in listing.keys:
        name = k[len(prefix):]
        head = name.split(".")[0]
        if head.isdigit() and int(head) < cut:
            gone.append(k)
        elif name.startswith("written-") and _marked_node(name) not in kept_nodes:
            gone.append(k)
    import asyncio

    from hubdask.storage import sync

    async def run() -> None:
        done = await asyncio.gather(root.put_async(also_put, b""), *(root.delete_async(k) for k in gone),
                                    return_exceptions=True)
        if isinstance(done[0], BaseException):
            raise done[0]  # the name copy matters (a missing one costs readers a GET); deletes may fail

    sync(run())


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


def list_branches(root: Root, ds: str) -> list[str]:
    """Branches with at least one head record (one LIST; empty folders of deleted branches don't count)."""
    prefix = layout.heads_prefix(ds)
    found = (k[len(prefix):].split("/") for k in root.list_prefix(prefix) if not layout.is_temp(k))
    return sorted({parts[0] for parts in found if len(parts) == 2 and parts[1].isdigit()})


def list_tags(root: Root, ds: str) -> dict[str, str]:
    """Tag name -> commit id."""
    out = {}
    for name in root.list_dir(layout.tags_prefix(ds)):
        name = name.rstrip("/")
        if layout.is_temp(name):
            continue
        commit = read_tag(root, ds, name)
        if commit is not None:
            out[name] = commit
    return dict(sorted(out.items()))


def read_tag(root: Root, ds: str, tag: str) -> str | None:
    key = tag_key(ds, tag)
    raw = root.get(key)
    return None if raw is None else parse_record(raw, ds, key, ("commit",))["commit"]


def write_tag(root: Root, ds: str, tag: str, commit: str) -> bool:
    return root.create(tag_key(ds, tag), json.dumps({"commit": commit}).encode())
