"""DIMSE statuses of the node, and the mapping from pacsstore errors to
them.

A failed C-STORE must reach the peer as a status it can act on, with an
Error Comment a person can read, and the association must stay up: a
modality that loses its association mid-study retries the whole study.
The codes are those PS3.4 B.2.3 allows a C-STORE response (Storage
Service Class statuses, plus the general 0x0110 of PS3.7 C). "Error:
Cannot understand" is the range 0xC000-0xCFFF, whose values an
implementation assigns; pacsstore uses three of them so that a peer's
log tells the causes apart:

=========================  ======  =====================================
pacsstore error            status  meaning
=========================  ======  =====================================
(stored, duplicate, ...)   0x0000  Success
MalformedDicomError        0xC000  Error: cannot understand (the dataset
                                   cannot be walked)
NotStorableError           0xC001  Error: cannot understand (nothing to
                                   file the dataset under)
ConflictError              0xC002  Error: cannot understand (the SOP
                                   Instance UID is stored with other
                                   content, policy ``reject``)
DatasetMismatchError       0xA900  Error: data set does not match SOP
                                   class (also used for a mismatched
                                   SOP Instance UID)
OutOfSpaceError, ENOSPC    0xA700  Refused: out of resources
CorruptStoreError, other   0x0110  Failure: processing failure
=========================  ======  =====================================

PS3.7 C's 0x0111 (Duplicate SOP Instance) is an N-CREATE status, not a
C-STORE one: DCMTK shows it as "Unknown Status", so a conflict gets
0xC002 instead.

C-FIND, C-MOVE and C-GET (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4) share
the "Failed: Unable to process" range 0xC000-0xCFFF, of which the
query/retrieve SCP uses 0xC100-0xC103, and the fixed codes below:

=========================  ======  =====================================
cause                      status  meaning
=========================  ======  =====================================
each match, sub-operation  0xFF00  Pending
C-CANCEL received          0xFE00  Cancel
no QueryRetrieveLevel, or  0xA900  Identifier does not match SOP class
a level the model lacks
unknown move destination   0xA801  Move destination unknown
identifier not decodable   0xC100  Unable to process
QueryError                 0xC101  Unable to process (a key or value
                                   the matcher refuses)
store failure on a query   0xC102  Unable to process
more than 65535 instances  0xC103  Unable to process (the counts of
                                   PS3.7 9.3 are 16-bit)
peer not permitted         0x0124  Refused: Not authorized (PS3.7 C.5)
=========================  ======  =====================================
"""

from __future__ import annotations

import errno

from pydicom.dataset import Dataset

from pacsstore.errors import (ConflictError, DatasetMismatchError,
                              MalformedDicomError, NotStorableError,
                              OutOfSpaceError, QueryError)

SUCCESS = 0x0000
CANNOT_UNDERSTAND = 0xC000
NOT_STORABLE = 0xC001
DATASET_MISMATCH = 0xA900
CONFLICTING_RESEND = 0xC002
OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0x0110
# Refused: SOP Class not supported (PS3.7 C.5): on the presentation
# context it came on.
SOP_CLASS_NOT_SUPPORTED = 0x0122

PENDING = 0xFF00
# Pending, some optional keys not supported (PS3.4 C.4.1.1.4).
PENDING_UNSUPPORTED_KEYS = 0xFF01
CANCEL = 0xFE00
NOT_AUTHORIZED = 0x0124
IDENTIFIER_MISMATCH = 0xA900
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_NOT_DECODABLE = 0xC100
QUERY_REFUSED = 0xC101
QUERY_FAILED = 0xC102
TOO_MANY_MATCHES = 0xC103

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
        return CONFLICTING_RESEND
    if isinstance(error, OutOfSpaceError):
        return OUT_OF_RESOURCES
    if isinstance(error, OSError) and error.errno in _NO_SPACE_ERRNOS:
        return OUT_OF_RESOURCES
    return PROCESSING_FAILURE


# ConflictError's message starts with the UID, which a long UID would
# push the point out of; the peer knows the UID from its own request.
CONFLICT_COMMENT = "SOP Instance UID already stored with different content"


def error_comment(error: BaseException) -> str:
    """The error's message cut to fit an Error Comment (LO, ASCII)."""
    if isinstance(error, ConflictError):
        return CONFLICT_COMMENT
    text = str(error) or type(error).__name__
    text = text.encode("ascii", "replace").decode("ascii")
    text = text.replace("\\", "/")  # backslash separates LO values
    text = " ".join(text.split())  # LO holds no line breaks or tabs
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


def refusal(code: int, comment: str) -> Dataset:
    """A failure status with an Error Comment cut to fit."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = error_comment(ValueError(comment))
    return status


def query_failure(error: BaseException) -> Dataset:
    """The C-FIND, C-MOVE or C-GET status for a query that raised
    ``error``: the matcher's refusal of the identifier, or a store
    failure."""
    code = QUERY_REFUSED if isinstance(error, QueryError) else QUERY_FAILED
    return refusal(code, str(error) or type(error).__name__)
