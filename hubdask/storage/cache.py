"""The local disk cache of immutable objects (committed chunks). Placeholder hook: no caching yet."""

from __future__ import annotations

from hubdask.storage.root import Root


def immutable_reader(root: Root):
    """An async ``get(key, prototype)`` that serves immutable objects, or None to read storage directly."""
    return None
