"""A Source: one array at one resolved state, small and picklable, the unit every dask task carries.

Each process opens the zarr Array of a Source once and keeps it (LRU), so tasks pay no metadata I/O.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass

import zarr

from hubdask.storage import Root
from hubdask.versioning import repository
from hubdask.versioning import store as store_module

_OPEN: OrderedDict[tuple, zarr.Array] = OrderedDict()
_OPEN_LOCK = threading.Lock()
_KEEP = 64


@dataclass(frozen=True)
class Source:
    root: Root
    ds: str  # dataset path under the root
    path: str  # array path inside the dataset ("" for a single-array dataset)
    commit: str | None  # the commit read (for a branch: its base)
    node: str | None = None  # a branch's open node: writes go there
    branch: str | None = None
    cache: bool = True  # read committed objects of a remote root through the local disk cache
    node_written: bool = True  # False: the head showed no written mark, the open node is empty
    node_shared: bool = True  # False: the head showed no many-writers mark (only the first writer wrote there)
    meta_seq: int = 0  # the open node's version of the array's zarr.json (0: the base commit's metadata)
    meta_changed: bool = False  # the head showed the node's meta mark: some array's metadata changed there

    @classmethod
    def at(cls, root: Root, ds: str, path: str, commit: str | None, head=None, cache: bool = True) -> "Source":
        """The source of array ``path`` at a commit, or at a branch head (writable)."""
        source = cls(root, ds, path, commit, cache=cache)
        return source if head is None else source.at_head(head)

    def at_head(self, head) -> "Source":
        """This source at a branch head record: the one place a Source is rebuilt from a head (keeps ``cache``)."""
        moved = dataclasses.replace(self, commit=head.base, node=head.node, branch=head.branch,
                                    node_written=head.written, node_shared=getattr(head, "shared", True),
                                    meta_changed=getattr(head, "meta", False))
        return moved.for_array(self.path)

    def written_here(self) -> "Source":
        """This source as the head will show it once a write of this process into the open node returned:
        the node written, by this process alone if it made the first writer's mark (what a branch read
        assumes while its head check runs, and checks: another writer shows in the head's listing)."""
        return dataclasses.replace(self, node_written=True,
                                   node_shared=not store_module.first_writer(self.root, self.ds, self.node))

    def for_array(self, path: str) -> "Source":
        """The source of array ``path`` at this state; where the head showed new metadata in the open node
        (a resize or append), pinned to the newest version of the array's zarr.json there (one LIST)."""
        src = dataclasses.replace(self, path=path, meta_seq=0)
        if not self.meta_changed:
            return src
        from hubdask.storage import sync

        return dataclasses.replace(src, meta_seq=sync(store_module.newest_version(self.root, self.ds, self.node,
                                                                                  src.meta_key)))

    def pinned_metadata(self):
        """The array's metadata at version ``meta_seq`` of the open node (one GET, none for a version made
        or read here)."""
        import json

        from zarr.core.metadata import ArrayV3Metadata

        raw = store_module.small_version(self.root, self.ds, self.node, self.meta_key, self.meta_seq)
        return ArrayV3Metadata.from_dict(json.loads(raw))

    @property
    def meta_key(self) -> str:
        """The logical key of the array's zarr.json."""
        return f"{self.path}/zarr.json" if self.path else "zarr.json"

    def current(self) -> "Source":
        """The state to read now: a branch source at its branch's head (one head resolution), a commit's itself."""
        if self.branch is None:
            return self
        repo = repository(self.root, self.ds)
        head = repo.read_head(self.branch)  # a branch: its LIST only, no speculative tag or commit GET
        return self.at_head(head if head is not None else repo.resolve(self.branch).head)

    def stored_keys(self, prefix: str) -> list[str]:
        """Logical keys under ``prefix`` that hold an object at this state (the commit's chunk set and the
        open node's writes): versioning's one chunk-set query, no knowledge of the physical layout."""
        return list(repository(self.root, self.ds).objects(self.commit, self.node if self.reads_node else None,
                                                           prefix))

    def __dask_tokenize__(self) -> tuple:
        return ("hubdask.Source", self.root.token, self.ds, self.path, self.commit, self.node, self.node_written,
                self.node_shared, self.meta_seq)

    @property
    def reads_node(self) -> bool:
        """Whether reads must look in the open node (a branch whose node may hold writes)."""
        return self.node is not None and (self.node_written or store_module.writing(self.root, self.ds, self.node))

    def store(self, immutable_get=None):
        """The VersionedStore of this state (see versioning.store)."""
        return repository(self.root, self.ds).store_at(self.commit, self.node, branch=self.branch,
                                                       node_written=self.node_written, immutable_get=immutable_get)

    @property
    def key(self) -> tuple:
        return (*self.__dask_tokenize__(), self.cache)

    def chunk_prefix(self) -> str:
        return f"{self.path}/" if self.path else ""

    def zarr(self, metadata: dict | None = None) -> zarr.Array:
        """The zarr Array over this state's versioned store (opened once per process). ``metadata``: the
        array's zarr.json already read by the caller, so opening costs no request."""
        with _OPEN_LOCK:
            arr = _OPEN.get(self.key)
            if arr is not None:
                _OPEN.move_to_end(self.key)
                return arr
        from hubdask.storage.cache import immutable_reader

        store = self.store(immutable_reader(self.root) if self.cache else None)
        if metadata is None and self.meta_seq:  # exactly the version the head resolved (appends go on)
            metadata = self.pinned_metadata()
        if metadata is not None:
            from zarr.core.array import AsyncArray
            from zarr.storage import StorePath

            arr = zarr.Array(AsyncArray(metadata, StorePath(store, self.path)))
        else:
            arr = zarr.open_array(store=store, path=self.path, mode="r" if self.node is None else "r+",
                                  zarr_format=3)
        with _OPEN_LOCK:
            _OPEN[self.key] = arr
            while len(_OPEN) > _KEEP:
                _OPEN.popitem(last=False)
        return arr
