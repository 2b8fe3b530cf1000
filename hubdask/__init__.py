"""hubdask: versioned, named, chunked arrays on object storage that are Dask collections."""

from hubdask.api import array, dataset, delete, export, gc, load, ls, store, upgrade
from hubdask.array import Array
from hubdask.mapblocks import map_blocks
from hubdask.storage import cache
from hubdask.dataset import Dataset
from hubdask.errors import ConflictError, CorruptChunkError, InvalidNameError, NotFoundError, ReadOnlyError
from hubdask.errors import AlreadyExistsError, CorruptionError, HubdaskError, StorageError

__all__ = [
    "cache", "map_blocks",
    "Array", "ConflictError", "CorruptChunkError", "InvalidNameError", "NotFoundError", "ReadOnlyError",
    "Dataset", "dataset", "export",
    "AlreadyExistsError", "CorruptionError", "HubdaskError", "StorageError",
    "array", "delete", "gc", "load", "ls", "store", "upgrade",
]
__version__ = "0.1.0"
