"""Immutable commit records and the chunk maps they define.

A commit is the sealed node it was made from: ``commits/ID`` records its parents, message, time and
its *changes*: logical zarr key -> the node holding that key's bytes (None: deleted). The state of a
commit, its chunk map, is its first parent's map updated by its changes, so a commit that changed one
chunk stores one small record and one chunk. Records are immutable, so they are cached forever.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from hubdask.errors import CorruptionError, NotFoundError
from hubdask.storage import Root
from hubdask.versioning import layout
from hubdask.versioning.layout import commit_key

ChunkMap = dict[str, str | None]


def new_node_id() -> str:
    """A node (and future commit) id: 12 hex digits of milliseconds since the epoch, then 8 random.

    The time prefix lets garbage collection leave young nodes alone without reading object dates.
    """
    return f"{int(time.time() * 1000):012x}{os.urandom(4).hex()}"


def node_time(node: str) -> float:
    """Seconds since the epoch at which ``node`` was made."""
    return int(node[:12], 16) / 1000


@dataclass(frozen=True)
class Commit:
    id: str
    parents: tuple[str, ...]
    message: str
    time: float
    changes: dict[str, str | None] = field(repr=False)
    depth: int = 0  # first-parent distance from the root commit
    full: bool = False  # a checkpoint: ``changes`` is the whole chunk map, no need to walk further back
    source: str | None = None  # the branch's working node this commit was copied from

    def to_json(self) -> bytes:
        """The record; changes are grouped by holder (``{"NODE@SEQ": [keys]}``, deletions under ``null``),
        which a commit of many chunks written in one node stores in about a third of the bytes."""
        held: dict[str, list[str]] = {}
        for key, holder in self.changes.items():
            held.setdefault(holder or "", []).append(key)
        return json.dumps(
            {"id": self.id, "parents": list(self.parents), "message": self.message, "time": self.time,
             "depth": self.depth, "full": self.full, "source": self.source,
             "held": {h: keys for h, keys in held.items() if h}, "deleted": held.get("", [])},
            separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes, ds: str = "", key: str = "") -> "Commit":
        try:
            d = json.loads(raw)
            if "changes" in d:  # hubdask/2 records: key -> holder
                changes = dict(d["changes"])
            else:
                changes = {k: h for h, keys in d["held"].items() for k in keys}
                changes.update((k, None) for k in d["deleted"])
            return cls(d["id"], tuple(d["parents"]), d["message"], d["time"], changes,
                       d.get("depth", 0), d.get("full", False), d.get("source"))
        except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise CorruptionError(f"dataset {ds!r}: the commit record {key!r} is damaged ({exc!r}); expected "
                                  "a JSON record with id, parents, message, time and its changes") from None




class CommitGraph:
    """Reads commit records once and keeps them and a few chunk maps in memory.

    Every ``CHECKPOINT``-th commit of a first-parent line stores its whole chunk map, so building a map
    reads at most that many records, however long the history.
    """

    MAPS_KEPT = 8
    CHECKPOINT = 32

    def __init__(self, root: Root, ds: str) -> None:
        self.root, self.ds = root, ds
        self._records: dict[str, Commit] = {}
        self._maps: OrderedDict[str, ChunkMap] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, commit_id: str) -> Commit | None:
        rec = self._records.get(commit_id)
        if rec is None:
            key = commit_key(self.ds, commit_id)
            raw = self.root.get(key)
            if raw is None:
                return None
            rec = self._records[commit_id] = Commit.from_json(raw, self.ds, key)
        return rec

    def make(self, node: str, parents: tuple[str, ...], message: str, changes: dict[str, str | None],
             source: str | None = None) -> Commit:
        """The commit record for ``node`` on top of ``parents`` (a checkpoint every CHECKPOINT commits)."""
        first = self.get(parents[0]) if parents else None
        depth = first.depth + 1 if first else 0
        if depth and depth % self.CHECKPOINT == 0:
            full = dict(self.chunk_map(parents[0]))
            full.update(changes)
            changes = {k: v for k, v in full.items() if v is not None}
        return Commit(node, parents, message, time.time(), changes, depth, depth > 0 and depth % self.CHECKPOINT == 0,
                      source)

    def write(self, commit: Commit) -> Commit:
        """Store ``commit`` unless a record with its id exists; return the stored record."""
        if not self.root.create(commit_key(self.ds, commit.id), commit.to_json()):
            existing = self.get(commit.id)
            assert existing is not None
            return existing
        self._records[commit.id] = commit
        return commit

    def _missing(self, cid: str) -> NotFoundError:
        """The error for a commit record that is not there: its dataset was deleted (its marker is gone),
        or the store was modified outside hubdask."""
        if self.root.get(layout.marker_key(self.ds)) is None:
            return NotFoundError(f"dataset {self.ds!r} was deleted (commit {cid} went with it)")
        return NotFoundError(f"dataset {self.ds!r}: commit {cid} is missing from storage")

    def chain(self, commit_id: str | None) -> list[Commit]:
        """First-parent history, newest first."""
        out = []
        while commit_id is not None:
            rec = self.get(commit_id)
            if rec is None:
                raise self._missing(commit_id)
            out.append(rec)
            commit_id = rec.parents[0] if rec.parents else None
        return out

    def chunk_map(self, commit_id: str | None) -> ChunkMap:
        """Logical key -> holding node for every key present at ``commit_id`` (built once, kept)."""
        if commit_id is None:
            return {}
        with self._lock:
            if commit_id in self._maps:
                self._maps.move_to_end(commit_id)
                return self._maps[commit_id]
        chain, state, cid = [], {}, commit_id
        while cid is not None:  # walk back to the root or to the nearest map already in memory
            with self._lock:
                if cid in self._maps:
                    state = dict(self._maps[cid])
                    break
            rec = self.get(cid)
            if rec is None:
                raise self._missing(cid)
            chain.append(rec)
            cid = rec.parents[0] if rec.parents and not rec.full else None
        for rec in reversed(chain):
            for key, holder in rec.changes.items():
                if holder is None:
                    state.pop(key, None)
                else:
                    state[key] = holder
        with self._lock:
            self._maps[commit_id] = state
            while len(self._maps) > self.MAPS_KEPT:
                self._maps.popitem(last=False)
        return state

    def ancestors(self, commit_id: str) -> dict[str, int]:
        """Every ancestor (all parents, not only the first) -> its distance from ``commit_id``."""
        dist, frontier = {commit_id: 0}, [commit_id]
        while frontier:
            nxt = []
            for cid in frontier:
                rec = self.get(cid)
                for p in rec.parents if rec else ():
                    if p not in dist:
                        dist[p] = dist[cid] + 1
                        nxt.append(p)
            frontier = nxt
        return dist

    def merge_base(self, a: str, b: str) -> str | None:
        """The nearest common ancestor of two commits, or None for unrelated histories."""
        da, db = self.ancestors(a), self.ancestors(b)
        common = set(da) & set(db)
        if not common:
            return None
        # the best common ancestors: those that are no ancestor of another common one (git's rule).
        # The nearest by distance alone can be an older one after criss-cross merges, which would make
        # the other side look as if it had changed what it only inherited.
        below: set[str] = set()
        frontier = [p for c in common for p in (self.get(c).parents if self.get(c) else ())]
        while frontier:
            cid = frontier.pop()
            if cid in below:
                continue
            below.add(cid)
            rec = self.get(cid)
            frontier.extend(rec.parents if rec else ())
        best = common - below or common
        return min(best, key=lambda c: (da[c] + db[c], c))
