"""A dataset as a repository: branches whose writes land in an open node, commits that seal nodes.

Commit protocol (a crash anywhere leaves the branch at the old or the new commit):
1. read the head (open working node N, base B); 2. create the seal marker of N: from now on a writer that
finds N sealed after writing repeats its write in the next open node; 3. list N's objects and copy them
(hard link / server-side copy) into a fresh node C that no writer ever touches, so a late write into N
cannot change the commit; 4. create the record ``commits/C`` (parents [B], source N); 5. create head
SEQ+1 = (new open node, base C): exactly one committer wins. Two committers of one working node coalesce:
the loser finds the winner's commit has the same source and returns it.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from dataclasses import dataclass

from hubdask.errors import AlreadyExistsError, ConflictError, InvalidNameError, NotFoundError, ReadOnlyError
from hubdask.names import check_part
from hubdask.storage import Root
from hubdask.versioning import refs
from hubdask.versioning.commits import Commit, CommitGraph, new_node_id
from hubdask.versioning.store import PARTIAL_SUFFIX, VersionedStore, node_prefix

MARKER = "hubdask.json"
FORMAT = "hubdask/2"  # 2: writers mark open nodes before writing (refs.written_key)


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


class Repository:
    """One dataset's refs, commits and nodes under ``root``/``ds``."""

    SEAL_WAIT = 60.0  # seconds a writer waits for a commit in progress to move the head

    def __init__(self, root: Root, ds: str) -> None:
        self.root, self.ds = root, ds
        self.graph = CommitGraph(root, ds)
        self._marker: dict | None = None

    def __repr__(self) -> str:
        return f"Repository({self.root.url!r}, {self.ds!r})"

    def marker(self, refresh: bool = False) -> dict | None:
        """The dataset marker (written once at creation; kept in memory once seen, unless ``refresh``:
        another process may have deleted the dataset since), or None."""
        if self._marker is None or refresh:
            raw = self.root.get(f"{self.ds}/{MARKER}")
            self._marker = json.loads(raw) if raw is not None else None
        return self._marker

    def exists(self, refresh: bool = False) -> bool:
        return self.marker(refresh) is not None


    # --- creation ----------------------------------------------------------------------------------

    def create(self, branch: str, write_initial, message: str = "created") -> State:
        """Make the dataset: ``write_initial(store)`` writes its metadata into the first node, which is
        committed at once; the branch ``branch`` then points past it. Exactly one creator wins."""
        check_part(branch, "branch", f"{self.ds}:{branch}")
        node = new_node_id()
        write_initial(VersionedStore(self.root, self.ds, {}, node))
        changes = self._node_keys(node)
        self.graph.write(self.graph.make(node, (), message, {k: node for k in changes}))
        first = new_node_id()
        if not refs.start_branch(self.root, self.ds, branch, first, node):
            raise AlreadyExistsError(f"dataset {self.ds!r} already exists in {self.root.url}")
        marker = {"format": FORMAT, "created": time.time(), "default_branch": branch}
        self.root.put(f"{self.ds}/{MARKER}", json.dumps(marker).encode())
        self._marker = marker
        return State(branch, node, refs.Head(branch, 0, first, node, written=False))

    def default_branch(self) -> str:
        """The branch a name without ':REF' means: the dataset's first branch (``main`` unless named)."""
        return (self.marker() or {}).get("default_branch", "main")

    # --- resolving refs ------------------------------------------------------------------------------

    def resolve(self, ref: str) -> State:
        """A branch, a tag or a commit id -> State, or NotFoundError listing what exists."""
        head = self.read_head(ref)
        if head is not None:
            return State(ref, head.base, head)
        tagged = refs.read_tag(self.root, self.ds, ref)
        if tagged is not None:
            return State(ref, tagged)
        if self.graph.get(ref) is not None:
            return State(ref, ref)
        raise NotFoundError(
            f"dataset {self.ds!r} has no branch, tag or commit {ref!r}; branches: "
            f"{', '.join(self.branches()) or 'none'}; tags: {', '.join(self.tags()) or 'none'}"
        )

    def refresh(self, state: State) -> State:
        """The same ref resolved again (a branch may have moved)."""
        return self.resolve(state.ref) if state.head else state

    def store_at(self, commit: str | None, node: str | None = None, *, branch: str | None = None,
                 node_written: bool = True, immutable_get=None) -> VersionedStore:
        """The Store view of ``commit``, writable into ``node`` (``branch``'s open node) when one is given."""
        return VersionedStore(self.root, self.ds, self.graph.chunk_map(commit), node, branch=branch,
                              node_written=node_written, immutable_get=immutable_get)

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

    def _node_keys(self, node: str) -> list[str]:
        prefix = node_prefix(self.ds, node)
        return sorted(k[len(prefix):] for k in self.root.list_prefix(prefix) if not k.endswith(PARTIAL_SUFFIX))

    def seal_key(self, node: str) -> str:
        return f"{self.ds}/seals/{node}"

    def is_sealed(self, node: str) -> bool:
        return self.root.get(self.seal_key(node)) is not None

    def uncommitted(self, branch: str) -> list[str]:
        """Logical keys written on ``branch`` since its last commit."""
        head = self._head(branch)
        return self._node_keys(head.node)

    def read_head(self, branch: str) -> refs.Head | None:
        """The head of ``branch`` (refs.read_head); datasets of format 1 had no written marks, so there
        an open node always counts as written."""
        head = refs.read_head(self.root, self.ds, branch)
        if head is not None and not head.written and (self.marker() or {}).get("format") == "hubdask/1":
            head = dataclasses.replace(head, written=True)
        return head

    def _head(self, branch: str) -> refs.Head:
        head = self.read_head(branch)
        if head is None:
            if refs.read_tag(self.root, self.ds, branch) is not None or self.graph.get(branch):
                raise ReadOnlyError(f"dataset {self.ds!r}: {branch!r} is a tag or commit, not a branch; "
                                    "commits and tags are read-only (make a branch from it to write)")
            raise NotFoundError(f"dataset {self.ds!r} has no branch {branch!r}")
        return head

    def commit(self, branch: str, message: str = "", *, merge_parent: str | None = None,
               extra_changes: dict[str, str | None] | None = None, expect_base: str | None = None) -> str:
        """Seal the branch's open node into a commit and open a new node; returns the commit id.

        ``merge_parent`` and ``extra_changes`` (keys taken by reference) make a merge commit;
        ``expect_base`` refuses to commit if the branch moved since the caller looked at it.
        """
        head = self._head(branch)
        if expect_base is not None and head.base != expect_base:
            raise ConflictError(f"dataset {self.ds!r}: branch {branch!r} moved during the operation; try again")
        self.root.create(self.seal_key(head.node), b"")
        keys = self._node_keys(head.node)
        cid = new_node_id()  # the commit's own node: nobody ever writes there, so it never changes
        self.root.copy_many([(f"{node_prefix(self.ds, head.node)}{k}", f"{node_prefix(self.ds, cid)}{k}") for k in keys])
        changes: dict[str, str | None] = dict(extra_changes or {})
        changes.update({k: cid for k in keys})
        parents = tuple(p for p in (head.base, merge_parent) if p is not None)
        rec = self.graph.write(self.graph.make(cid, parents, message, changes, source=head.node))
        if refs.write_head(self.root, self.ds, branch, head.seq + 1, new_node_id(), rec.id):
            return rec.id
        taken = refs.read_head_at(self.root, self.ds, branch, head.seq + 1)
        winner = self.graph.get(taken.base) if taken is not None and taken.base else None
        if winner is not None and winner.source == head.node:
            refs.name_head(self.root, self.ds, branch, taken.seq, taken.node, taken.base)  # if ours, lost
            return winner.id  # a concurrent committer of the same working node finished first
        raise ConflictError(f"dataset {self.ds!r}: branch {branch!r} moved while committing; try again")

    def wait_for_new_head(self, branch: str, sealed_node: str) -> refs.Head:
        """After a write landed in a sealed node: the head that replaced it (a commit is finishing)."""
        deadline = time.monotonic() + self.SEAL_WAIT
        delay = 0.01
        while True:
            head = self._head(branch)
            if head.node != sealed_node:
                return head
            if time.monotonic() > deadline:
                raise ConflictError(
                    f"dataset {self.ds!r}: a commit of branch {branch!r} started {self.SEAL_WAIT:.0f}s ago and "
                    "has not finished (crashed?); run .commit() on the branch to complete it, then retry"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    # --- branches and tags --------------------------------------------------------------------------

    def create_branch(self, name: str, commit: str | None) -> None:
        check_part(name, "branch", f"{self.ds}:{name}")
        self._check_free(name)
        node = new_node_id()
        if not refs.start_branch(self.root, self.ds, name, node, commit):
            raise InvalidNameError(f"dataset {self.ds!r} already has a branch {name!r}")

    def create_tag(self, name: str, commit: str) -> None:
        check_part(name, "tag", f"{self.ds}:{name}")
        self._check_free(name)
        if not refs.write_tag(self.root, self.ds, name, commit) and refs.read_tag(self.root, self.ds, name) != commit:
            raise InvalidNameError(f"dataset {self.ds!r} already has a tag {name!r}")

    def _check_free(self, name: str) -> None:
        if refs.read_head(self.root, self.ds, name) is not None:
            raise InvalidNameError(f"dataset {self.ds!r} already has a branch named {name!r}")
        if refs.read_tag(self.root, self.ds, name) is not None:
            raise InvalidNameError(f"dataset {self.ds!r} already has a tag named {name!r}")
        if self.graph.get(name) is not None:
            raise InvalidNameError(f"dataset {self.ds!r}: {name!r} is a commit id; choose another name")

    def delete_branch(self, name: str) -> None:
        self._head(name)
        if len(self.branches()) == 1:
            raise ConflictError(f"dataset {self.ds!r}: {name!r} is the only branch; delete the dataset instead")
        self.root.delete_prefix(refs.head_prefix(self.ds, name))

    def delete_tag(self, name: str) -> None:
        if refs.read_tag(self.root, self.ds, name) is None:
            raise NotFoundError(f"dataset {self.ds!r} has no tag {name!r}")
        self.root.delete(refs.tag_key(self.ds, name))

    def log(self, state: State) -> list[Commit]:
        return self.graph.chain(state.commit)


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
