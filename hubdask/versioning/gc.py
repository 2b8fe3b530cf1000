"""Garbage collection: delete the objects no branch, tag or open node reaches.

Reached: every commit record reachable (through all parents) from a branch's base or a tag, every
object those commits' changes name, and everything in a branch's open node. Nodes younger than
``grace`` seconds are never touched (a merge or branch may be writing them right now), and seal
markers are kept (a slow writer relies on them to notice a commit). Deleting also prunes the branches'
name copies and written marks of past heads (refs.prune).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from hubdask.versioning import refs
from hubdask.versioning.commits import node_time
from hubdask.versioning.repository import Repository


@dataclass
class GCReport:
    unreachable: list[str] = field(default_factory=list)  # keys relative to the dataset
    deleted: bool = False

    def __len__(self) -> int:
        return len(self.unreachable)


def branch_heads(repo: Repository) -> dict[str, refs.Head]:
    """Every branch's current head."""
    heads = {b: refs.read_head(repo.root, repo.ds, b) for b in repo.branches()}
    return {b: h for b, h in heads.items() if h is not None}


def reachable_commits(repo: Repository, heads: dict[str, refs.Head]) -> tuple[set[str], set[str]]:
    """(commits reached from ``heads`` and the tags, open nodes of branches)."""
    open_nodes = {h.node for h in heads.values()}
    tips = {h.base for h in heads.values() if h.base}
    tips.update(repo.tags().values())
    seen: set[str] = set()
    for tip in tips:
        seen.update(repo.graph.ancestors(tip))
    return seen, open_nodes


def gc(repo: Repository, dry_run: bool = True, grace: float = 3600.0) -> GCReport:
    """List (and unless ``dry_run``, delete) what no ref reaches, sparing nodes younger than ``grace`` s."""
    heads = branch_heads(repo)
    commits, open_nodes = reachable_commits(repo, heads)
    keep: set[tuple[str, str]] = set()
    for cid in commits:
        rec = repo.graph.get(cid)
        keep.update((holder, key) for key, holder in rec.changes.items() if holder is not None)
    cutoff = time.time() - grace
    ds = f"{repo.ds}/"
    report = GCReport()
    for full in repo.root.list_prefix(f"{ds}nodes/"):
        rel = full[len(ds):]
        _, node, key = rel.split("/", 2)
        if node in open_nodes or (node, key) in keep or _young(node, cutoff):
            continue
        report.unreachable.append(rel)
    for full in repo.root.list_prefix(f"{ds}commits/"):
        cid = full.rsplit("/", 1)[1]
        if cid not in commits and not _young(cid, cutoff):
            report.unreachable.append(full[len(ds):])
    report.unreachable.sort()
    if not dry_run:
        for rel in report.unreachable:
            repo.root.delete(ds + rel)
        for branch, head in heads.items():  # and the refs' name copies and marks of past heads
            refs.prune(repo.root, repo.ds, branch, head)
        report.deleted = True
    return report


def _young(node: str, cutoff: float) -> bool:
    try:
        return node_time(node) > cutoff
    except ValueError:
        return False
