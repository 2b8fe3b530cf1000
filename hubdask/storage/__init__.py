"""Storage: a root URL becomes a zarr v3 Store with the primitives the layers above need."""

from hubdask.storage.root import Root, open_root, sync

__all__ = ["Root", "open_root", "sync"]
