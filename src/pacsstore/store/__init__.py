"""The storage engine: segments of content-addressed blocks, the LMDB
index, group commit, and the Archive API over them."""

from pacsstore.store.archive import Archive
from pacsstore.errors import QueryError, StoreConfigError
from pacsstore.store.results import ArchiveStats, StoreResult

__all__ = ["Archive", "ArchiveStats", "QueryError", "StoreConfigError",
           "StoreResult"]
