"""Publishing a root folder on a static host: the key index that lets its branches resolve without LIST.

Above ``storage.root`` (it opens the folder as a root), while ``storage.public`` (below the root, which
wraps public URLs in it) only reads the index.
"""

from __future__ import annotations

from hubdask.storage.public import INDEX
from hubdask.storage.root import open_root


def write_index(folder: str, storage_options: dict | None = None) -> int:
    """Write ``FOLDER/hubdask-keys.txt`` listing every key under ``folder`` (a root or a dataset folder
    about to be copied to a static host), so branches resolve there too; returns the number of keys."""
    root = open_root(folder, storage_options)
    keys = sorted(k for k in root.list_prefix("") if k != INDEX and not k.endswith(".partial"))
    root.put(INDEX, ("\n".join(keys) + "\n").encode())
    return len(keys)


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        print("usage: python -m hubdask.storage.publish FOLDER   (writes FOLDER/hubdask-keys.txt)", file=sys.stderr)
        sys.exit(2)
    print(f"{write_index(sys.argv[1])} keys listed in {sys.argv[1].rstrip('/')}/{INDEX}")
