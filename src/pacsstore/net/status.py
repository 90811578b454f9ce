"""DIMSE statuses of the storage SCP, and the mapping from pacsstore
errors to them.

A failed C-STORE must reach the peer as a status it can act on, with an
Error Comment a person can read, and the association must stay up: a
modality that loses its association mid-study retries the whole study.
The codes follow PS3.4 B.2.3 (Storage Service Class statuses) and PS3.7
Annex C (general statuses):

=========================  ======  =====================================
pacsstore error            status  meaning
=========================  ======  =====================================
(stored, duplicate, ...)   0x0000  Success
MalformedDicomError        0xC000  Error: cannot understand
NotStorableError           0xC001  Error: cannot understand (nothing to
                                   file the dataset under)
DatasetMismatchError       0xA900  Error: data set does not match SOP
                                   class (PS3.4 B.2.3, also used for a
                                   mismatched SOP Instance UID)
ConflictError              0x0111  Failure: duplicate SOP instance
OutOfSpaceError, ENOSPC    0xA700  Refused: out of resources
CorruptStoreError, other   0x0110  Failure: processing failure
=========================  ======  =====================================
"""

from __future__ import annotations

import errno

from pydicom.dataset import Dataset

from pacsstore.errors import (ConflictError, DatasetMismatchError,
                              MalformedDicomError, NotStorableError,
                              OutOfSpaceError)

SUCCESS = 0x0000
CANNOT_UNDERSTAND = 0xC000
NOT_STORABLE = 0xC001
DATASET_MISMATCH = 0xA900
DUPLICATE_SOP_INSTANCE = 0x0111
OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0x0110

# Error Comment is LO: at most 64 characters (PS3.7 C.5.2 and PS3.5 6.2).
ERROR_COMMENT_MAX = 64

_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def status_code(error: BaseException) -> int:
    """The C-STORE status for a store that raised ``error``."""
    if isinstance(error, DatasetMismatchError):
        return DATASET_MISMATCH
    if isinstance(error, MalformedDicomError):
        return CANNOT_UNDERSTAND
    if isinstance(error, NotStorableError):
        return NOT_STORABLE
    if isinstance(error, ConflictError):
        return DUPLICATE_SOP_INSTANCE
    if isinstance(error, OutOfSpaceError):
        return OUT_OF_RESOURCES
    if isinstance(error, OSError) and error.errno in _NO_SPACE_ERRNOS:
        return OUT_OF_RESOURCES
    return PROCESSING_FAILURE


def error_comment(error: BaseException) -> str:
    """The error's message cut to fit an Error Comment (LO, ASCII)."""
    text = str(error) or type(error).__name__
    text = text.encode("ascii", "replace").decode("ascii")
    text = text.replace("\\", "/")  # backslash separates LO values
    if len(text) > ERROR_COMMENT_MAX:
        text = text[:ERROR_COMMENT_MAX - 3] + "..."
    return text


def failure_status(error: BaseException) -> Dataset:
    """The status dataset (Status and Error Comment) for ``error``."""
    status = Dataset()
    status.Status = status_code(error)
    status.ErrorComment = error_comment(error)
    tag = getattr(error, "tag", None)
    if isinstance(tag, int) and 0 <= tag <= 0xFFFFFFFF:
        # Offending Element (0000,0901) names the tag that broke the parse.
        status.OffendingElement = [tag]
    return status


def success_status() -> Dataset:
    status = Dataset()
    status.Status = SUCCESS
    return status
