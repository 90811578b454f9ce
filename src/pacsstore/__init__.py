"""pacsstore: a DICOM archive storage engine.

The embedded API is :class:`Archive`; the DICOM node lives in
:mod:`pacsstore.net` and the command line in :mod:`pacsstore.cli`.
"""

import logging

from pacsstore.errors import (
    ArchiveClosedError,
    ConflictError,
    CorruptStoreError,
    MalformedDicomError,
    NewerFormatError,
    NotAStoreError,
    NotFoundError,
    NotStorableError,
    OutOfSpaceError,
    PacsstoreError,
    StoreLockedError,
)

from pacsstore.store import (
    Archive,
    ArchiveStats,
    QueryError,
    StoreConfigError,
    StoreResult,
)
from pacsstore.uids import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    UID_ROOT,
    VERSION as __version__,
)

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "Archive",
    "ArchiveClosedError",
    "ArchiveStats",
    "ConflictError",
    "CorruptStoreError",
    "MalformedDicomError",
    "NewerFormatError",
    "NotAStoreError",
    "NotFoundError",
    "NotStorableError",
    "OutOfSpaceError",
    "PacsstoreError",
    "QueryError",
    "StoreConfigError",
    "StoreLockedError",
    "StoreResult",
    "__version__",
]
