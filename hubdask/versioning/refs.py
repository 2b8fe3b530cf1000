"""Branch heads and tags, moved atomically with nothing but exclusive create.

A branch is an append-only sequence of head records ``refs/heads/BRANCH/SEQ``; the head is the highest
SEQ. Moving a branch means creating SEQ+1, which exactly one writer can do, on every backend that
supports exclusive create (local link, memory, S3 If-None-Match). A head names the branch's open node
(where uncommitted writes go) and its base commit. A tag is one record ``refs/tags/TAG``.
"""

from __future__ import annotations

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


def head_prefix(ds: str, branch: str) -> str:
    return f"{ds}/refs/heads/{branch}/"


def tag_key(ds: str, tag: str) -> str:
    return f"{ds}/refs/tags/{tag}"


def read_head(root: Root, ds: str, branch: str) -> Head | None:
    """The current head of ``branch``, or None if there is no such branch (one LIST + one GET)."""
    keys = root.list_prefix(head_prefix(ds, branch))
    seqs = sorted(int(k.rsplit("/", 1)[1]) for k in keys if k.rsplit("/", 1)[1].isdigit())
    for seq in reversed(seqs):  # a half-deleted branch may lack its newest record; take the newest readable
        head = read_head_at(root, ds, branch, seq)
        if head is not None:
            return head
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
    return root.create(f"{head_prefix(ds, branch)}{seq:0{SEQ_DIGITS}d}", data)


def list_branches(root: Root, ds: str) -> list[str]:
    """Branches with at least one head record (one LIST; empty folders of deleted branches don't count)."""
    prefix = f"{ds}/refs/heads/"
    return sorted({k[len(prefix):].split("/", 1)[0] for k in root.list_prefix(prefix) if k.count("/") > prefix.count("/")})


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
