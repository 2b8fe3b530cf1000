"""A dataset as a repository: branches whose writes land in an open node, commits that pin node versions.

Commit protocol (a crash anywhere leaves the branch at the old or the new commit, and a later commit or
writer finishes what a crashed one began):
1. read the head (open node N, base B);
2. create the seal ``seals/N`` naming the commit id C to be: from now on a writer that finds N sealed
   after writing repeats its write in the next open node; a second committer of N finds the seal and
   makes the same commit C (committers coalesce);
3. LIST N: the newest version of each key is what C holds (nothing is copied: versions are immutable,
   and a late write is a newer version that C does not name);
4. create the record ``commits/C`` (parents [B], or [B, THEIRS] for a merge, whose merged chunks are
   written into node C first);
5. claim head SEQ+1 = (new open node, base C) and name it in the branch's folder (refs.write_head):
   exactly one creator wins, and everyone whose C the branch now holds returns it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from hubdask.errors import AlreadyExistsError, ConflictError, NotFoundError, ReadOnlyError
from hubdask.names import check_part
from hubdask.storage import Root, sync
from hubdask.versioning import layout, refs
from hubdask.versioning.commits import Commit, CommitGraph, new_node_id, node_time
from hubdask.versioning import store as store_module
from hubdask.versioning.store import VersionedStore, is_tombstone, node_versions

MARKER = layout.MARKER
FORMAT = "hubdask/3"  # 3: internals under @hub/, immutable versions, commits pin versions (no copies)
LEGACY_FORMATS = ("hubdask/1", "hubdask/2")
PREFIX_MIN = 7  # shortest commit id prefix accepted as a ref


@dataclass(frozen=True)
class State:
    """A resolved ref: a commit (read-only) or a branch head (read-write)."""

    ref: str  # what the user named: branch, tag or commit id
    commit: str | None  # the commit read (for a branch: its base)
    head: refs.Head | None = None  # set for a branch

    @property
    def writable(self) -> bool:
        return self.head is not None

    @property
    def branch(self) -> str | None:
        return self.head.branch if self.head else None


@dataclass(frozen=True)
class MergeSpec:
    """What a merge commit adds to the plain commit of the open node: the other parent, and a function
    from the sealed node's changes to the commit's full changes (it may write merged chunks into the
    commit's own node, whose id it is given)."""

    theirs: str
    apply: Callable[[dict[str, str | None], str], dict[str, str | None]]


class Repository:
    """One dataset's refs, commits and nodes under ``root``/``ds``/@hub."""

    SEAL_WAIT = 5.0  # seconds a writer waits for a commit in progress before finishing it itself
    DEBRIS_AGE = 60.0  # seconds after which a creation that left no marker is taken as crashed
    SWEEP_EVERY = refs.TRIM_EVERY  # heads between prunes from a fresh listing of the branch's folder

    def __init__(self, root: Root, ds: str) -> None:
        self.root, self.ds = root, ds
        self.graph = CommitGraph(root, ds)
        self._marker: dict | None = None
        self._made: dict[str, refs.Head] = {}  # branch -> the last head this process moved it to
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Repository({self.root.url!r}, {self.ds!r})"

    def marker(self, refresh: bool = False) -> dict | None:
        """The dataset marker (written once at creation; kept in memory once seen, unless ``refresh``:
        another process may have deleted the dataset since), or None."""
        if self._marker is None or refresh:
            key = layout.marker_key(self.ds)
            raw = self.root.get(key)
            self._marker = None if raw is None else refs.parse_record(raw, self.ds, key, ("format",))
        return self._marker

    def exists(self, refresh: bool = False) -> bool:
        return self.marker(refresh) is not None

    def legacy_format(self) -> str | None:
        """The format of a dataset stored in an older layout (``hubdask upgrade`` converts it), or None."""
        raw = self.root.get(f"{self.ds}/{MARKER}")
        if raw is None:
            return None
        try:
            return json.loads(raw).get("format", "hubdask/1")
        except ValueError:
            return "hubdask/1"

    # --- creation ----------------------------------------------------------------------------------

    def create(self, branch: str, write_initial, message: str = "created") -> State:
        """Make the dataset: ``write_initial(store)`` writes its metadata into the first node, which is
        committed at once; the branch ``branch`` then points past it, and the marker is written last.
        Exactly one creator wins; debris of a creation that crashed is cleared first."""
        check_part(branch, "branch", f"{self.ds}:{branch}")
        if self.exists(refresh=True):
            raise AlreadyExistsError(f"dataset {self.ds!r} already exists in {self.root.url}")
        self._clear_debris()
        node = new_node_id()
        write_initial(VersionedStore(self.root, self.ds, {}, node))
        changes = self._node_changes(node)
        self.graph.write(self.graph.make(node, (), message, changes))
        head = refs.start_branch(self.root, self.ds, branch, new_node_id(), node)
        if head is None:
            raise AlreadyExistsError(f"dataset {self.ds!r} already exists in {self.root.url}")
        marker = {"format": FORMAT, "created": time.time(), "default_branch": branch}
        self.root.put(layout.marker_key(self.ds), json.dumps(marker).encode())
        self._marker = marker
        return State(branch, node, head)

    def _clear_debris(self) -> None:
        """Objects left by a creation that crashed before its marker (no marker, heads older than
        DEBRIS_AGE) are removed, so the name can be created again; a creation in progress is left alone."""
        heads = [refs.read_head(self.root, self.ds, b) for b in self.branches()]
        if not heads:
            return
        if all(h is not None and time.time() - node_time(h.node) > self.DEBRIS_AGE for h in heads):
            for h in heads:
                self._bury(h, {"deleted": True})
            self.root.delete_many(self._doomed())

    def _doomed(self) -> list[str]:
        """The objects a deletion of the dataset removes: all but the seals (late writers read them) and
        the ref records that outlive a branch (refs.lasting: they refuse stale claims)."""
        base = layout.base(self.ds)
        return [k for k in self.root.list_prefix(base)
                if not k[len(base):].startswith("seals/") and not refs.lasting(self.ds, k)]

    def _bury(self, head: refs.Head, why: dict) -> None:
        """Delete ``head``'s branch: seal its open node as deleted (``why``: a late writer then learns
        that its write is not kept, and a committer that last moved the branch there cannot take it for
        open), then claim the next head as a tombstone. A branch that moved first (a commit won the
        number) is sealed and buried at its new head; one another deleter buried is left as it is."""
        while head is not None:
            self.root.create(layout.seal_key(self.ds, head.node), json.dumps(why).encode())
            seq = head.seq + 1
            if refs.write_head(self.root, self.ds, head.branch, seq, "", None, prior=head.listing,
                               deleted=why) is not None:
                return
            refs.name_claim(self.root, self.ds, head.branch, seq)  # its winner may have died before naming it
            head = self.read_head(head.branch)

    def default_branch(self) -> str:
        """The branch a name without ':REF' means: the dataset's first branch (``main`` unless named)."""
        return (self.marker() or {}).get("default_branch", "main")

    # --- resolving refs ------------------------------------------------------------------------------

    def resolve(self, ref: str) -> State:
        """A branch, a tag, a commit id or a unique prefix of one (>= 7 characters) -> State, or
        NotFoundError listing what exists."""
        full_id = len(ref) == len(new_node_id()) and all(c in "0123456789abcdef" for c in ref)
        lookups = [lambda: self.read_head(ref), lambda: refs.read_tag(self.root, self.ds, ref),
                   lambda: ref if full_id and self.graph.get(ref) is not None else None, self.marker]
        found = _first_found(lookups[:3], warm=lookups[3:], together=self.root.is_remote)
        if found is not None:
            kind, value = found
            return State(ref, value.base, value) if kind == 0 else State(ref, value)
        if not full_id and self.graph.get(ref) is not None:
            return State(ref, ref)
        full = self.expand_commit_prefix(ref)
        if full is not None:
            return State(ref, full)
        raise NotFoundError(
            f"dataset {self.ds!r} has no branch, tag or commit {ref!r}; branches: "
            f"{', '.join(self.branches()) or 'none'}; tags: {', '.join(self.tags()) or 'none'}"
        )

    def expand_commit_prefix(self, prefix: str) -> str | None:
        """The one commit id starting with ``prefix`` (at least PREFIX_MIN hex digits), None if none;
        ConflictError naming the candidates if several do."""
        if len(prefix) < PREFIX_MIN or any(c not in "0123456789abcdef" for c in prefix):
            return None
        base = layout.commits_prefix(self.ds)
        found = sorted(k[len(base):] for k in self.root.list_sizes(base + prefix) if not layout.is_temp(k))
        if len(found) > 1:
            raise NotFoundError(f"dataset {self.ds!r}: the commit id prefix {prefix!r} is ambiguous; it starts "
                                f"{', '.join(found[:10])}{' ...' if len(found) > 10 else ''}; give more characters")
        return found[0] if found else None

    def refresh(self, state: State) -> State:
        """The same ref resolved again (a branch may have moved)."""
        return self.resolve(state.ref) if state.head else state

    def store_at(self, commit: str | None, node: str | None = None, *, branch: str | None = None,
                 node_written: bool = True, immutable_get=None, chunk_map: dict | None = None) -> VersionedStore:
        """The Store view of ``commit`` (or of ``chunk_map``), writable into ``node`` (``branch``'s open
        node) when one is given."""
        return VersionedStore(self.root, self.ds, self.graph.chunk_map(commit) if chunk_map is None else chunk_map,
                              node, branch=branch, node_written=node_written, immutable_get=immutable_get)

    def store(self, state: State, *, immutable_get=None) -> VersionedStore:
        h = state.head
        if h is None:
            return self.store_at(state.commit, immutable_get=immutable_get)
        return self.store_at(state.commit, h.node, branch=h.branch, node_written=h.written,
                             immutable_get=immutable_get)

    def branches(self) -> list[str]:
        return refs.list_branches(self.root, self.ds)

    def tags(self) -> dict[str, str]:
        return refs.list_tags(self.root, self.ds)

    # --- commits ------------------------------------------------------------------------------------

    def _node_changes(self, node: str, prefix: str = "") -> dict[str, str | None]:
        """Logical key -> the holder of its newest version in ``node`` (None: deleted there)."""
        found = sync(node_versions(self.root, self.ds, node, prefix[: prefix.rfind("/") + 1]))
        changes: dict[str, str | None] = {}
        for key, (seq, size) in found.items():
            if not key.startswith(prefix):
                continue
            deleted = size == len(layout.TOMBSTONE) and is_tombstone(
                self.root.get(layout.version_key(self.ds, node, key, seq)))
            changes[key] = None if deleted else layout.holder(node, seq)
        return changes

    def _sealed_changes(self, branch: str, node: str) -> dict[str, str | None]:
        """The changes of sealed open ``node``: from this process's own record of the versions it made
        when the written marks (read after the seal) show no other writer, else from a LIST of the node.
        A writer whose mark is not there yet has not returned: it finds the seal and writes again."""
        if refs.only_writer(self.root, self.ds, branch, node, store_module.WRITER):
            holders: dict[int, str] = {}  # a handful of distinct versions across 10^4 keys: format each once
            return {k: None if deleted else holders.get(seq) or holders.setdefault(seq, layout.holder(node, seq))
                    for k, (seq, deleted) in store_module.created_here(self.root, self.ds, node).items()}
        return self._node_changes(node)

    def objects(self, commit: str | None, node: str | None = None, prefix: str = "") -> dict[str, str]:
        """Logical key (under ``prefix``) -> physical key of every object present in a state: the commit's
        chunk map plus, for a branch, the newest versions in its open node (deleted keys left out). The
        one chunk-set query of every caller (sparse reductions, viz, diff)."""
        out = {k: layout.object_key(self.ds, k, h) for k, h in self.graph.chunk_map(commit).items()
               if h is not None and k.startswith(prefix)}
        if node is not None:
            for key, held_by in self._node_changes(node, prefix).items():
                if held_by is None:
                    out.pop(key, None)
                else:
                    out[key] = layout.object_key(self.ds, key, held_by)
        return out

    def seal(self, node: str) -> dict | None:
        """The seal record of ``node`` (a commit of it started, or the dataset was deleted), or None."""
        key = layout.seal_key(self.ds, node)
        raw = self.root.get(key)
        if raw is None:
            return None
        if raw == b"":  # a hubdask/2 seal: a commit started, its id unknown
            return {"commit": None}
        return refs.parse_record(raw, self.ds, key, ())

    def uncommitted(self, branch: str) -> list[str]:
        """Logical keys written on ``branch`` since its last commit."""
        head = self._head(branch)
        return sorted(self._node_changes(head.node))

    def read_head(self, branch: str) -> refs.Head | None:
        """The head of ``branch`` (refs.read_head)."""
        return refs.read_head(self.root, self.ds, branch)

    def _head(self, branch: str) -> refs.Head:
        head = self.read_head(branch)
        if head is None:
            if refs.read_tag(self.root, self.ds, branch) is not None or self.graph.get(branch):
                raise ReadOnlyError(f"dataset {self.ds!r}: {branch!r} is a tag or commit, not a branch; "
                                    "commits and tags are read-only (make a branch from it to write)")
            if not self.exists(refresh=True):
                raise NotFoundError(f"dataset {self.ds!r} does not exist in {self.root.url} (deleted?)")
            raise NotFoundError(f"dataset {self.ds!r} has no branch {branch!r}")
        return head

    def commit(self, branch: str, message: str = "", *, merge: MergeSpec | None = None,
               allow_empty: bool = True, expect_base: str | None = None) -> str:
        """Seal the branch's open node into a commit and open a new node; returns the commit id.

        ``merge`` makes a merge commit; ``allow_empty=False`` makes no commit when nothing was written
        since the last one (the base's id is returned); ``expect_base`` refuses to commit if the branch
        moved since the caller looked at it.
        """
        return self.commit_head(branch, message, merge=merge, allow_empty=allow_empty, expect_base=expect_base)[0]

    def commit_head(self, branch: str, message: str = "", *, merge: MergeSpec | None = None,
                    allow_empty: bool = True, expect_base: str | None = None,
                    node: str | None = None) -> tuple[str, refs.Head]:
        """``commit``, returning also a head of the branch that holds the commit (the one it created, when
        it did), so that the caller can follow the branch without reading it again.

        ``node``: the open node the caller believes current. If it is that of the head this process last
        moved the branch to, the commit starts by sealing it, with no read of the branch: a seal that
        this call creates proves the head current (a branch moves on only after its open node was
        sealed, and a deleted branch's node is sealed as deleted); any other outcome reads the branch."""
        with self._lock:
            known = self._made.get(branch)
        if (known is not None and known.node == node and merge is None and allow_empty
                and expect_base is None):
            try:
                seal, ours = self._seal(known, message, None)
            except NotFoundError:
                ours = False
            if ours:
                return self._finish(branch, known, seal, None, ours=True)
        head = self._head(branch)
        if expect_base is not None and head.base != expect_base:
            raise ConflictError(f"dataset {self.ds!r}: branch {branch!r} moved during the operation; try again")
        if not allow_empty and merge is None and head.base is not None and not self._node_changes(head.node):
            return head.base, head
        seal, ours = self._seal(head, message, merge)
        if merge is not None and not ours:
            raise ConflictError(f"dataset {self.ds!r}: a commit of branch {branch!r} was already in progress; "
                                "merge again")
        if not ours and seal.get("merge"):
            # a merge is committing this node: its commit holds everything written here; wait for it
            # (wait_for_new_head finishes it as a plain commit only if the merger stalls)
            return seal["commit"], self.wait_for_new_head(branch, head.node)
        return self._finish(branch, head, seal, merge, ours=ours)

    def _seal(self, head: refs.Head, message: str, merge: MergeSpec | None) -> tuple[dict, bool]:
        """Create the seal of ``head.node`` naming the commit to be; (the seal, whether ours). A seal that
        exists already (another committer, a crashed one) is returned as it is."""
        key = layout.seal_key(self.ds, head.node)
        rec = {"commit": new_node_id(), "message": message, "time": time.time(),
               "merge": merge.theirs if merge else None}
        if self.root.create(key, json.dumps(rec).encode()):
            return rec, True
        existing = self.seal(head.node) or {}
        if existing.get("deleted"):
            raise NotFoundError(_deleted(self.ds, existing))
        if existing.get("commit") is None:  # a hubdask/2 seal: finish it under a fresh id
            existing = dict(rec, message=message or "commit")
        return existing, False

    def _finish(self, branch: str, head: refs.Head, seal: dict, merge: MergeSpec | None = None,
                ours: bool = False) -> tuple[str, refs.Head]:
        """Steps 3-5 of the protocol for the sealed head ``head``: idempotent, any process may run it.
        ``ours``: this call created the seal (its fresh commit id can have no record yet)."""
        cid = seal["commit"]
        rec = None if ours else self.graph.get(cid)
        if rec is None:
            changes = self._sealed_changes(branch, head.node)
            parents: tuple[str, ...] = tuple(p for p in (head.base,) if p is not None)
            conflict = None
            if merge is not None:
                try:
                    changes = merge.apply(changes, cid)
                    parents += (merge.theirs,)
                except ConflictError as exc:  # a write that raced the merge made it conflict: commit plainly
                    conflict = exc
            message = seal.get("message") or ""
            if conflict is not None:
                message = f"{message} (merge not applied: conflicts)".strip()
            rec = self.graph.write(self.graph.make(cid, parents, message, changes, source=head.node))
            if conflict is not None:
                self._move(branch, head, rec)
                raise conflict
            if merge is not None and merge.theirs not in rec.parents:  # another process finished it plainly
                self._move(branch, head, rec)
                raise ConflictError(f"dataset {self.ds!r}: the merge into {branch!r} stalled and its node was "
                                    "committed without it; merge again")
        elif merge is not None and merge.theirs not in rec.parents:
            self._move(branch, head, rec)
            raise ConflictError(f"dataset {self.ds!r}: the merge into {branch!r} was interrupted and its node was "
                                "committed without it; merge again")
        return self._move(branch, head, rec)

    def _move(self, branch: str, head: refs.Head, rec: Commit) -> tuple[str, refs.Head]:
        """Create head SEQ+1 on commit ``rec``; its id and a head holding it if the branch now holds it,
        else ConflictError."""
        # every SWEEP_EVERY-th head prunes from a fresh listing, not the one it was read from: marks that a
        # late writer put and could not drop (it died first) go then
        prior = head.listing if (head.seq + 1) % self.SWEEP_EVERY else None
        moved = refs.write_head(self.root, self.ds, branch, head.seq + 1, new_node_id(), rec.id, prior=prior)
        if moved is not None:
            with self._lock:
                self._made[branch] = moved
            return rec.id, moved
        tombstone = refs.tombstone_at(self.root, self.ds, branch, head.seq + 1)
        if tombstone is not None:
            raise NotFoundError(f"{_deleted(self.ds, tombstone)} while committing; the commit was not kept")
        now = self.read_head(branch)
        if now is None:
            self._head(branch)  # NotFoundError: the branch or the dataset was deleted meanwhile
        if now is not None and now.seq <= head.seq and refs.name_claim(self.root, self.ds, branch, head.seq + 1):
            now = self.read_head(branch)  # the winner died before naming its head (or is about to name it)
        if now is not None and self._holds(now.base, rec):
            return rec.id, now  # a concurrent committer of the same node (or a writer finishing it) won
        raise ConflictError(f"dataset {self.ds!r}: branch {branch!r} moved while committing; try again")

    def _holds(self, tip: str | None, rec: Commit) -> bool:
        """Whether commit ``rec`` is on the first-parent line of ``tip`` (walks back to rec's depth only)."""
        while tip is not None:
            if tip == rec.id:
                return True
            cur = self.graph.get(tip)
            if cur is None or cur.depth <= rec.depth or not cur.parents:
                return False
            tip = cur.parents[0]
        return False

    def after_write(self, branch: str, node: str) -> refs.Head | None:
        """Called after a write into ``node`` landed: None if the node is still open; else the head to
        repeat the write in (waiting for a commit in progress, finishing it if it stalls), or
        NotFoundError if the dataset or branch was deleted meanwhile."""
        seal = self.seal(node)
        if seal is None:
            return None
        if seal.get("deleted"):
            refs.drop_marks(self.root, self.ds, node)  # the branch's folder is gone: no mark there is anyone's
            raise NotFoundError(f"{_deleted(self.ds, seal)} while writing; the write was not kept")
        head = self.wait_for_new_head(branch, node)
        if head.listing is not None:  # a head past the node is named: the marks put beside it are no one's
            refs.drop_marks(self.root, self.ds, node)
        return head

    def wait_for_new_head(self, branch: str, sealed_node: str) -> refs.Head:
        """After a write landed in a sealed node: the head that replaced it. A commit that has not moved
        the head after SEAL_WAIT seconds (its process stalled or died) is finished here."""
        deadline = time.monotonic() + self.SEAL_WAIT
        delay = 0.005
        while True:
            head = self._head(branch)
            if head.node != sealed_node:
                return head
            if time.monotonic() > deadline:
                seal, _ = self._seal(head, "commit", None)
                try:
                    self._finish(branch, head, seal)
                except ConflictError:
                    pass  # someone else moved the branch meanwhile: read it again
                deadline = time.monotonic() + self.SEAL_WAIT
                continue
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    # --- branches and tags --------------------------------------------------------------------------

    def create_branch(self, name: str, commit: str | None) -> None:
        check_part(name, "branch", f"{self.ds}:{name}")
        self._check_free(name)
        if refs.start_branch(self.root, self.ds, name, new_node_id(), commit) is None:
            raise AlreadyExistsError(f"dataset {self.ds!r} already has a branch {name!r}")

    def create_tag(self, name: str, commit: str) -> None:
        check_part(name, "tag", f"{self.ds}:{name}")
        self._check_free(name)
        if not refs.write_tag(self.root, self.ds, name, commit) and refs.read_tag(self.root, self.ds, name) != commit:
            raise AlreadyExistsError(f"dataset {self.ds!r} already has a tag {name!r}")
        if not self.exists(refresh=True):  # a deletion began before the tag landed: its LIST may have missed it
            self.root.delete(layout.tag_key(self.ds, name))
            raise NotFoundError(f"dataset {self.ds!r} was deleted while tagging {name!r}; the tag was not kept")

    def _check_free(self, name: str) -> None:
        if refs.read_head(self.root, self.ds, name) is not None:
            raise AlreadyExistsError(f"dataset {self.ds!r} already has a branch named {name!r}")
        if refs.read_tag(self.root, self.ds, name) is not None:
            raise AlreadyExistsError(f"dataset {self.ds!r} already has a tag named {name!r}")
        if self.graph.get(name) is not None:
            raise AlreadyExistsError(f"dataset {self.ds!r}: {name!r} is a commit id; choose another name")

    def delete_branch(self, name: str) -> None:
        head = self._head(name)
        if len(self.branches()) == 1:
            raise ConflictError(f"dataset {self.ds!r}: {name!r} is the only branch; delete the dataset instead")
        if name == self.default_branch():
            raise ConflictError(f"dataset {self.ds!r}: {name!r} is the default branch (what a name without "
                                ":REF opens); it cannot be deleted while the dataset exists")
        self._bury(head, {"deleted": True, "branch": name})

    def delete_tag(self, name: str) -> None:
        if refs.read_tag(self.root, self.ds, name) is None:
            raise NotFoundError(f"dataset {self.ds!r} has no tag {name!r}")
        self.root.delete(layout.tag_key(self.ds, name))

    def delete(self) -> int:
        """Delete the dataset: every branch is buried first (its open node sealed as deleted: a writer
        holding a stale handle then fails with NotFoundError instead of writing where nobody reads; a
        tombstone head: a stalled committer cannot move a dataset created under the name later), then
        the marker, then every other object but the seals and the ref records that outlive it."""
        for branch in self.branches():
            head = self.read_head(branch)
            if head is not None:
                self._bury(head, {"deleted": True})
        self.root.delete(layout.marker_key(self.ds))
        keys = self._doomed()
        self.root.delete_many(keys)
        self._marker = None
        return len(keys) + 1

    def log(self, state: State) -> list[Commit]:
        return self.graph.chain(state.commit)


def _deleted(ds: str, seal: dict) -> str:
    """What a seal of a deleted dataset or branch says."""
    branch = seal.get("branch")
    return f"branch {branch!r} of dataset {ds!r} was deleted" if branch else f"dataset {ds!r} was deleted"


_REPOS: dict[tuple[str, str], Repository] = {}
_REPOS_LOCK = threading.Lock()


def repository(root: Root, ds: str) -> Repository:
    """The process-wide Repository of ``ds`` in ``root`` (its commit cache is shared)."""
    key = (root.token, ds)
    with _REPOS_LOCK:
        repo = _REPOS.get(key)
        if repo is None:
            repo = _REPOS[key] = Repository(root, ds)
        return repo


def forget(root: Root, ds: str) -> None:
    """Drop the process-wide Repository of ``ds`` (after the dataset was deleted)."""
    with _REPOS_LOCK:
        _REPOS.pop((root.token, ds), None)


def _first_found(lookups: list[Callable[[], object]], warm: list[Callable[[], object]] = (),
                 together: bool = False) -> tuple[int, object] | None:
    """(index, value) of the first of ``lookups``, in order, that finds something (not None), or None.

    ``together`` (a remote root, where each request costs a round trip): every lookup, and the ``warm``
    ones whose results their callers keep, runs at once in threads, so the order costs no extra round
    trip (a tag's GET goes beside the branch's LIST); otherwise one after the other, stopping at the first."""
    if not together:
        for i, fn in enumerate(lookups):
            value = fn()
            if value is not None:
                return i, value
        return None

    import asyncio

    async def run() -> list:
        return await asyncio.gather(*(asyncio.to_thread(fn) for fn in (*lookups, *warm)), return_exceptions=True)

    results = sync(run())[: len(lookups)]
    for i, value in enumerate(results):
        if isinstance(value, BaseException):
            raise value
        if value is not None:
            return i, value
    return None
