"""pacsstore: a DICOM archive storage engine.

The embedded API is :class:`Archive`; the DICOM node lives in
:mod:`pacsstore.net` and the command line in :mod:`pacsstore.cli`.
"""

import logging

from pacsstore.errors import (
    ConflictError,
    CorruptStoreError,
    MalformedDicomError,
    NotFoundError,
    NotStorableError,
    OutOfSpaceError,
    PacsstoreError,
    StoreLockedError,
)

__version__ = "0.1.0"

# Root of the UIDs pacsstore itself creates (a UUID-derived root, PS3.5
# B.2), and the Implementation Class UID it writes into file meta groups.
UID_ROOT = "2.25.221347690050281183182351243737499062089"
IMPLEMENTATION_CLASS_UID = UID_ROOT + ".1"
IMPLEMENTATION_VERSION_NAME = "PACSSTORE_" + __version__.replace(".", "")

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "ConflictError",
    "CorruptStoreError",
    "MalformedDicomError",
    "NotFoundError",
    "NotStorableError",
    "OutOfSpaceError",
    "PacsstoreError",
    "StoreLockedError",
    "__version__",
]
