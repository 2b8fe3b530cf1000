"""Which dask.distributed context this code runs in, asked without importing distributed.

Below every layer: the locks choose their kind by it, and progress chooses its bar by it.
"""

from __future__ import annotations

import sys
from typing import Any


def distributed_owner() -> Any:
    """The Worker this code runs in, else the current Client, else None (no import of distributed)."""
    if "distributed" not in sys.modules:
        return None
    import distributed

    try:
        return distributed.get_worker()
    except ValueError:
        pass
    try:
        return distributed.default_client()
    except ValueError:
        return None


def distributed_active() -> bool:
    """True inside a dask.distributed worker or with a current distributed Client."""
    return distributed_owner() is not None
