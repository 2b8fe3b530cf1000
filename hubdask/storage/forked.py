"""obstore in a forked child: a fresh copy of its native module, whose async runtime is alive.

obstore runs its requests on a tokio runtime that lives in its native module's static memory. A child
forked after the parent started that runtime inherits it without its threads, so every call hangs
(tokio does not support fork). A DataLoader's workers are such children (fork is Linux's default),
and they are where training reads happen. Python loads an extension module once per path, and the
dynamic loader maps a library once per file: so the child loads the same module from a *copy* of
its file (a new file, a new mapping, new static memory, a new runtime), after dropping the parent's
obstore modules from ``sys.modules``; ``import obstore`` (zarr and hubdask import it lazily, inside
functions) then gives the fresh package. The copy lives in the temp folder, one per obstore build and
fork generation, made once (atomically) and shared by every child of that generation.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

_GENERATION = 0  # how many forks-with-reload away from the process that first loaded obstore
_LOCK = threading.Lock()
_STALE = False  # this process is a fork of one that had loaded obstore: its runtime may be dead
_KEPT: list[Any] = []  # the parent's obstore objects (and the modules), never freed in this process


def keep(*objects: Any) -> None:
    """Never free ``objects`` in this forked child: freeing an object of the parent's obstore runs its
    native destructor, which takes a lock that one of the parent's runtime threads may have held at the
    instant of the fork, and that thread does not exist here: the child would hang for ever."""
    _KEPT.extend(o for o in objects if o is not None)


def _after_fork() -> None:
    global _STALE, _LOCK
    _LOCK = threading.Lock()
    _STALE = "obstore._obstore" in sys.modules


def _copy_of(original: str, generation: int) -> str:
    """A copy of ``original`` for this generation, made once (by whichever process comes first)."""
    st = os.stat(original)
    digest = hashlib.sha256(f"{original}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"hubdask-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"obstore-{digest}-{generation}{Path(original).name[len('_obstore'):]}"
    if not target.exists() or target.stat().st_size != st.st_size:
        tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(original, tmp)
        os.replace(tmp, target)
    return str(target)


class _CopyFinder:
    """Finds ``obstore._obstore`` at the copy, everything else as usual."""

    def __init__(self, path: str) -> None:
        self.path = path

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "obstore._obstore":
            return None
        loader = importlib.machinery.ExtensionFileLoader(name, self.path)
        return importlib.util.spec_from_file_location(name, self.path, loader=loader)


def reload_obstore() -> None:
    """In a child forked after the parent loaded obstore: load a fresh obstore, once; else nothing."""
    global _GENERATION, _STALE
    with _LOCK:
        module = sys.modules.get("obstore._obstore")
        if not _STALE or module is None:
            return
        copy = _copy_of(module.__file__, _GENERATION + 1)
        for name in [m for m in sys.modules if m == "obstore" or m.startswith("obstore.")]:
            keep(sys.modules.pop(name))
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _CopyFinder)]
        sys.meta_path.insert(0, _CopyFinder(copy))
        import obstore  # noqa: F401  (the fresh package, over the copy)

        _GENERATION += 1
        _STALE = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
