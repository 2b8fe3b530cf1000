"""hubdask: versioned, named, chunked arrays on object storage that are Dask collections."""

from hubdask.api import array, delete, load, ls, store
from hubdask.array import Array
from hubdask.errors import ConflictError, CorruptChunkError, InvalidNameError, NotFoundError, ReadOnlyError

__all__ = [
    "Array", "ConflictError", "CorruptChunkError", "InvalidNameError", "NotFoundError", "ReadOnlyError",
    "array", "delete", "load", "ls", "store",
]
__version__ = "0.1.0"
