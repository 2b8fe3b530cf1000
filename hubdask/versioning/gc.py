"""Garbage collection: delete the objects no branch, tag or open node reaches.

Reached: every commit reachable (through all parents) from a branch's base or a tag, every version
those commits' chunk maps name, everything in a branch's open node, and, for an open node whose commit
is in progress (sealed, head not moved yet), the commit to be: its record and its own node.

The order is what makes gc safe against every concurrent writer, committer and merger: the objects are
listed first, the refs read after. An object created after the listing is never a candidate; an object
listed before is deleted only if nothing reaches it at the later reading of the refs, and the protocol
never makes an unreached old object reachable again (a commit names versions of the open node that gc
keeps, or of its own node that the seal protects). Nodes younger than ``grace`` seconds are spared
all the same (a branch being created). Seal markers are kept: late writers rely on them. Temp files of
interrupted writes (``*.partial``) older than ``grace`` are removed, and so are the claims of claim
windows that have a floor record (what a trimmer that died between its floor and its deletes left): no
such claim can be accepted or is read, whenever gc runs; claims of a window without a floor are kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from hubdask.versioning import layout, refs
from hubdask.versioning.commits import node_time
from hubdask.versioning.repository import Repository


@dataclass
class GCReport:
    unreachable: list[str] = field(default_factory=list)  # keys relative to the dataset's @hub/ folder
    deleted: bool = False

    def __len__(self) -> int:
        return len(self.unreachable)


def branch_heads(repo: Repository) -> dict[str, refs.Head]:
    """Every branch's current head."""
    heads = {b: refs.read_head(repo.root, repo.ds, b) for b in repo.branches()}
    return {b: h for b, h in heads.items() if h is not None}


def reachable(repo: Repository, heads: dict[str, refs.Head]) -> tuple[set[str], set[str]]:
    """(commits reached from ``heads``, the tags and commits in progress; nodes kept whole: open nodes
    and the own nodes of commits in progress)."""
    whole = {h.node for h in heads.values()}
    tips = {h.base for h in heads.values() if h.base}
    tips.update(repo.tags().values())
    for h in heads.values():
        seal = repo.seal(h.node)
        if seal and seal.get("commit"):
            whole.add(seal["commit"])
            if repo.graph.get(seal["commit"]) is not None:
                tips.add(seal["commit"])
    seen: set[str] = set()
    for tip in tips:
        seen.update(repo.graph.ancestors(tip))
    return seen | {n for n in whole if repo.graph.get(n) is not None}, whole


def gc(repo: Repository, dry_run: bool = True, grace: float = 3600.0) -> GCReport:
    """List (and unless ``dry_run``, delete) what no ref reaches, sparing nodes younger than ``grace`` s."""
    base = layout.base(repo.ds)
    nodes = repo.root.list_prefix(f"{base}nodes/")  # listed before the refs are read: see the docstring
    records = repo.root.list_prefix(layout.commits_prefix(repo.ds))
    heads = branch_heads(repo)
    commits, whole = reachable(repo, heads)
    keep: set[str] = set()
    for cid in commits:
        rec = repo.graph.get(cid)
        if rec is None:  # a ref naming a commit that is gone (a branch revived while being deleted): keeps nothing
            continue
        for key, held_by in rec.changes.items():
            if held_by is not None:
                keep.add(layout.object_key(repo.ds, key, held_by))
    cutoff = time.time() - grace
    report = GCReport()
    for full in nodes:
        node = full[len(base):].split("/", 2)[1]
        if node in whole or full in keep or _young(node, cutoff):
            continue
        report.unreachable.append(full[len(base):])
    for full in records:
        cid = full.rsplit("/", 1)[1]
        if layout.is_temp(cid):
            if not _young(cid.split(".")[0], cutoff):
                report.unreachable.append(full[len(base):])
        elif cid not in commits and not _young(cid, cutoff):
            report.unreachable.append(full[len(base):])
    report.unreachable += _stale_temp_refs(repo, cutoff)
    report.unreachable += [k[len(base):] for k in refs.swept_claims(repo.root, repo.ds)]
    report.unreachable.sort()
    if not dry_run:
        repo.root.delete_many([base + rel for rel in report.unreachable])
        report.deleted = True
    return report


def _stale_temp_refs(repo: Repository, cutoff: float) -> list[str]:
    """Temp files of interrupted ref creates (head records, tags) older than ``cutoff``."""
    if not repo.root.is_local:
        return []  # only local roots write temp files
    import os
    from pathlib import Path

    from hubdask.storage import files

    base = layout.base(repo.ds)
    found = files.list_sizes(Path(repo.root.url), f"{base}refs/", temps=True)
    out = []
    for k in found:
        try:
            if layout.is_temp(k) and os.stat(os.path.join(repo.root.url, k)).st_mtime < cutoff:
                out.append(k[len(base):])
        except FileNotFoundError:
            pass
    return out


def _young(node: str, cutoff: float) -> bool:
    try:
        return node_time(node) > cutoff
    except ValueError:
        return False
