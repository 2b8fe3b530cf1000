"""Version control methods shared by arrays and datasets: commit, log, tag, branch, checkout, merge, diff."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hubdask.errors import NotFoundError, ReadOnlyError, refusing_read_only
from hubdask.names import parse
from hubdask.source import Source
from hubdask.storage.public import listing_note
from hubdask.versioning import Repository, repository
from hubdask.versioning.repository import State
from hubdask.versioning.commits import Commit
from hubdask.versioning.diff import Change, diff, shape_changes
from hubdask.versioning.merge import merge


def resolve(repo: Repository, ref: str | None) -> State:
    """The state of ``ref`` (None: the default branch) in ``repo``; when missing on a static host
    without a key index, the NotFoundError says how to publish one."""
    try:
        return repo.resolve(ref or repo.default_branch())
    except NotFoundError as exc:
        note = listing_note(repo.root.store)
        if not note:
            raise
        raise NotFoundError(f"{exc}{note}") from None


class Versioned:
    """Mixin for objects with ``_source`` (root, ds, commit, node, branch) and ``_name``."""

    _source: Any
    _name: str
    _opened: Callable[[Source, str], "Versioned"]  # an object of this kind (array or dataset) reading a source, named

    @property
    def _repo(self) -> Repository:
        return repository(self._source.root, self._source.ds)

    @property
    def dataset_name(self) -> str:
        """The dataset's path under its root (``owner/dataset``)."""
        return self._source.ds

    @property
    def ref(self) -> str:
        """The branch this view writes to, or the commit it reads."""
        return self._source.branch or self._source.commit

    @property
    def branch_name(self) -> str | None:
        return self._source.branch

    def zarr_store(self) -> Any:
        """This version as a zarr v3 Store of logical keys (the whole dataset's hierarchy), for zarr
        itself and zarr-based tools: ``zarr.open_array(store=...)``, ``xr.open_zarr(...)``."""
        return self._fresh_source().store()

    @property
    def commit_id(self) -> str | None:
        """The last commit of the state read (for a branch: the commit its uncommitted writes sit on)."""
        return self._source.commit

    @property
    def branches(self) -> list[str]:
        return self._repo.branches()

    @property
    def tags(self) -> dict[str, str]:
        return self._repo.tags()

    def _writable_branch(self, action: str) -> str:
        if self._source.branch is None:
            raise ReadOnlyError(
                f"dataset {self._name!r} is opened at commit {self._source.commit} (a tag or commit id), which is "
                f"read-only; cannot {action}. Open a branch, or make one with .branch(NAME)"
            )
        return self._source.branch

    def _follow(self, branch: str) -> None:
        """Point this object at the branch's current head (after a commit or merge moved it)."""
        assert self._source.branch == branch
        self._source = self._source.current()

    def commit(self, message: str = "") -> str:
        """Snapshot the branch's writes as an immutable commit; returns its id."""
        branch = self._writable_branch("commit")
        with refusing_read_only(f"dataset {self._name!r}", self._source.root.url):
            cid, head = self._repo.commit_head(branch, message, node=self._source.node)
        self._source = self._source.at_head(head)  # the head the commit made: no need to read the branch again
        return cid

    def _current_commit(self, why: str) -> str:
        """The commit this view stands for; on a branch with uncommitted writes, commit them first."""
        branch = self._source.branch
        if branch is None:
            return self._source.commit
        if self._repo.uncommitted(branch):
            return self.commit(why)
        return self._repo.resolve(branch).commit

    def log(self) -> list[Commit]:
        """Commits of this state's history, newest first (first parents); ``shape_changes(commit)`` tells
        which arrays a commit resized."""
        state = self._repo.resolve(self.ref)
        return self._repo.log(state)

    def shape_changes(self, commit: Commit | str) -> dict[str, tuple]:
        """Array path ('' for a single array) -> (shape before, shape after) for each array that
        ``commit`` (a Commit of ``log()`` or an id) resized or appended to."""
        rec = self._repo.graph.get(commit) if isinstance(commit, str) else commit
        if rec is None:
            raise NotFoundError(f"dataset {self._name!r} has no commit {commit!r}")
        return shape_changes(self._repo, rec)

    def tag(self, name: str) -> str:
        """Tag the current commit (a branch's uncommitted writes are committed first); returns the commit id."""
        cid = self._current_commit(f"commit before tag {name}")
        self._repo.create_tag(name, cid)
        return cid

    def branch(self, name: str):
        """Make branch ``name`` at the current commit (committing pending writes first); returns it opened."""
        cid = self._current_commit(f"commit before branch {name}")
        self._repo.create_branch(name, cid)
        return self.checkout(name)

    def checkout(self, ref: str):
        """This dataset at another branch, tag or commit."""
        state = resolve(self._repo, ref)
        src = self._source
        return self._opened(Source.at(src.root, src.ds, src.path, state.commit, state.head, cache=src.cache),
                            parse(self.dataset_name).with_ref(state.ref))

    def delete_branch(self, name: str) -> None:
        self._repo.delete_branch(name)

    def delete_tag(self, name: str) -> None:
        self._repo.delete_tag(name)

    def merge(self, ref: str, strategy: str | None = None, message: str | None = None) -> str:
        """Three-way merge of ``ref`` into this branch; returns the merge commit id (see versioning.merge)."""
        branch = self._writable_branch(f"merge {ref!r} into it")
        cid = merge(self._repo, branch, ref, strategy=strategy, message=message, name=self._name)
        self._follow(branch)
        return cid

    def diff(self, other: str | None = None) -> list[Change]:
        """What differs between ``other`` (default: this branch's last commit) and this state."""
        return diff(self._repo, other, self.ref)
