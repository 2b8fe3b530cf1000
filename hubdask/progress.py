"""Progress for long work: dask's progress bar (local schedulers) or distributed's (with a cluster).

Shown on a terminal by default; ``HUBDASK_PROGRESS=on|off`` or ``progress=True|False`` decides otherwise.
"""

from __future__ import annotations

import sys
from typing import Any

from hubdask import config
from hubdask.scheduler import distributed_active


def enabled(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    mode = config.progress()
    return mode == "on" or (mode == "auto" and sys.stderr.isatty())


def compute(collection: Any, progress: bool | None = None, **kwargs: Any) -> Any:
    """``dask.compute(collection)[0]`` with a progress bar when enabled."""
    import dask

    show = enabled(progress)
    if distributed_active() and show:
        import distributed

        client = distributed.default_client()
        future = client.compute(collection, **kwargs)
        distributed.progress(future)
        return future.result()
    if show:
        from dask.diagnostics import ProgressBar

        with ProgressBar(out=sys.stderr):
            return dask.compute(collection, **kwargs)[0]
    return dask.compute(collection, **kwargs)[0]


def bar(total: int, desc: str, progress: bool | None = None, unit: str = "it"):
    """A tqdm bar (disabled when progress is off): a widget in Jupyter when ipywidgets is installed
    (``pip install hubdask[notebook]``), else plain text, never tqdm's "IProgress not found" warning."""
    try:
        import ipywidgets  # noqa: F401  (tqdm.auto's notebook bar needs it)
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm.std import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled(progress), file=sys.stderr)
