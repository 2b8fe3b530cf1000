"""Convert a dataset of an older format (hubdask/1, hubdask/2: objects straight under ``ds/``) to the
current one (everything under ``ds/@hub/``, immutable versions in open nodes).

Committed objects keep their names (a commit's map names their node, and ``layout.object_key`` reads a
bare node as an unversioned object); the zero-byte objects that meant "deleted" there become tombstones.
Objects of each branch's open node become version 1 of their key. The new marker is written after
everything else is in place and the old objects are removed last, so an interrupted upgrade is simply
run again. Run it while nothing writes to the dataset.
"""

from __future__ import annotations

import json
import time

from hubdask.errors import NotFoundError
from hubdask.storage import Root
from hubdask.versioning import layout

FOLDERS = ("refs/", "commits/", "nodes/", "seals/")


def upgrade(root: Root, ds: str, progress=None) -> int:
    """Convert dataset ``ds`` in place; returns the number of objects converted. ``progress(n)`` is
    called as objects are done (a tqdm ``update``, say)."""
    legacy_marker = f"{ds}/{layout.MARKER}"
    raw = root.get(legacy_marker)
    if raw is None:
        if root.get(layout.marker_key(ds)) is not None:
            return 0  # already converted
        raise NotFoundError(f"no dataset {ds!r} in {root.url} to upgrade")
    marker = json.loads(raw)
    keys = [k for k in root.list_prefix(f"{ds}/") if not layout.is_temp(k)
            and k[len(ds) + 1:].startswith(FOLDERS)]
    open_nodes = _open_nodes(root, ds, keys)
    done = 0
    for key in keys:
        rel = key[len(ds) + 1:]
        data = root.get(key)
        if data is None:
            continue
        if rel.startswith("nodes/"):
            _, node, logical = rel.split("/", 2)
            if data == b"":
                data = layout.TOMBSTONE
            target = layout.version_key(ds, node, logical, 1) if node in open_nodes else layout.base(ds) + rel
        else:
            target = layout.base(ds) + rel
        root.put(target, data)
        done += 1
        if progress:
            progress(1)
    new_marker = {**marker, "format": "hubdask/3", "upgraded_from": marker.get("format", "hubdask/1"),
                  "upgraded": time.time()}
    root.put(layout.marker_key(ds), json.dumps(new_marker).encode())
    root.delete(legacy_marker)
    root.delete_many(keys)
    return done


def _open_nodes(root: Root, ds: str, keys: list[str]) -> set[str]:
    """The open node of every branch's newest head record (records hold {"node", "base"})."""
    heads: dict[str, tuple[int, str]] = {}
    prefix = f"{ds}/refs/heads/"
    for k in keys:
        if not k.startswith(prefix):
            continue
        branch, _, name = k[len(prefix):].partition("/")
        if name.isdigit() and int(name) >= heads.get(branch, (-1, ""))[0]:
            heads[branch] = (int(name), k)
    nodes = set()
    for _, key in heads.values():
        raw = root.get(key)
        if raw is not None:
            nodes.add(json.loads(raw)["node"])
    return nodes
