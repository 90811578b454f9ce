"""pacsstore: a DICOM archive storage engine.

The embedded API is :class:`Archive`; the DICOM node lives in
:mod:`pacsstore.net` and the command line in :mod:`pacsstore.cli`.
"""

import logging

from pacsstore.errors import (
    ArchiveClosedError,
    ConflictError,
    CorruptStoreError,
    DamagedCopyError,
    MalformedDicomError,
    NewerFormatError,
    NotAStoreError,
    NotFoundError,
    NotStorableError,
    OutOfSpaceError,
    PacsstoreError,
    ReadOnlyStoreError,
    StoreLockedError,
    AlreadyOpenError,
)

from pacsstore.store import (
    Archive,
    ArchiveStats,
    QueryError,
    StoreConfigError,
    StoreResult,
)
from pacsstore.store.rebuild import RebuildReport, rebuild_index
from pacsstore.store.verify import Problem, VerifyReport
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
    "DamagedCopyError",
    "MalformedDicomError",
    "NewerFormatError",
    "NotAStoreError",
    "NotFoundError",
    "NotStorableError",
    "OutOfSpaceError",
    "PacsstoreError",
    "Problem",
    "QueryError",
    "ReadOnlyStoreError",
    "RebuildReport",
    "StoreConfigError",
    "StoreLockedError",
    "AlreadyOpenError",
    "StoreResult",
    "VerifyReport",
    "__version__",
    "rebuild_index",
]
