"""Versioning: refs, immutable commits, copy-on-write nodes and the versioned Store view."""

from hubdask.versioning.repository import Repository, State, repository
from hubdask.versioning.store import VersionedStore

__all__ = ["Repository", "State", "VersionedStore", "repository"]
