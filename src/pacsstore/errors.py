"""The exceptions pacsstore raises.

Every error derives from :class:`PacsstoreError`. Errors about the input a
caller handed in (a malformed file, a dataset without a SOP Instance UID, a
bad setting) also derive from :class:`ValueError`, so that code which
already catches ``ValueError`` around pydicom keeps working. Messages say
what was expected, what was found, and where: tag as ``(gggg,eeee)``, byte
offset, SOP Instance UID.
"""

from __future__ import annotations


class PacsstoreError(Exception):
    """Base of every pacsstore error."""


class MalformedDicomError(PacsstoreError, ValueError):
    """The bytes are not a DICOM dataset pacsstore can walk safely.

    ``tag`` is the element being read when the problem was found (``None``
    before the first element), ``offset`` the byte offset in the input.
    """

    def __init__(self, message: str, *, tag: int | None = None,
                 offset: int | None = None) -> None:
        self.tag = tag
        self.offset = offset
        where = []
        if tag is not None:
            where.append(f"tag ({tag >> 16:04X},{tag & 0xFFFF:04X})")
        if offset is not None:
            where.append(f"offset {offset}")
        suffix = f" at {', '.join(where)}" if where else ""
        super().__init__(f"{message}{suffix}")


class NotStorableError(PacsstoreError, ValueError):
    """A well-formed dataset that the archive cannot keep.

    For example a DICOMDIR or a saved query: no SOP Instance UID to file it
    under.
    """


class DatasetMismatchError(NotStorableError):
    """A received dataset is not the instance its C-STORE command names:
    its SOP Instance UID or SOP Class UID differs from the command's."""


class ConflictError(PacsstoreError):
    """A SOP Instance UID already stored with different bytes was sent
    again while the re-send policy is ``reject``."""

    def __init__(self, sop_instance_uid: str) -> None:
        self.sop_instance_uid = sop_instance_uid
        super().__init__(
            f"SOP Instance UID {sop_instance_uid} is already stored with "
            f"different content; the re-send policy is 'reject' "
            f"(on_conflict='replace' or 'keep-first' changes it, "
            f"--on-conflict on the command line)")


class StoreConfigError(PacsstoreError, ValueError):
    """A setting of the Archive has a value it cannot work with."""


class QueryError(PacsstoreError, ValueError):
    """A query names an unknown level, a key its level does not have, or
    a value that cannot match; or a read is given a SOP Instance UID that
    is not a string, or a frame index that is not an integer."""


class FrameDecodeError(PacsstoreError, ValueError):
    """pydicom's pixel handlers could not decode a stored frame (an
    unsupported transfer syntax, or a damaged bitstream)."""


class TranscodeError(PacsstoreError, ValueError):
    """An instance cannot be re-encoded in the transfer syntax asked for:
    its own syntax does not decode here, the target would lose data, or
    a codec refused the pixel data."""


class NotFoundError(PacsstoreError, KeyError):
    """No instance with that SOP Instance UID is stored."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StoreFormatError(PacsstoreError):
    """A file of the store is not in a format this version can read."""


class NotAStoreError(StoreFormatError):
    """The file does not start with a pacsstore magic."""


class NewerFormatError(StoreFormatError):
    """The file was written by a newer pacsstore format version."""


class CorruptStoreError(StoreFormatError):
    """Stored bytes fail their checksum or digest."""


class DamagedCopyError(CorruptStoreError):
    """An instance not stored because the copy the store holds of a block
    it brings is damaged (a frame it shares with instances stored before,
    or the blocks of its earlier send): acknowledging it would promise
    bytes the store does not hold. The sender keeps it; store_many with
    skip_invalid gives it a rejected result."""


class ArchiveClosedError(PacsstoreError):
    """The Archive was closed; a call made after (or racing with)
    ``close()`` gets this rather than an error of LMDB or of a closed
    file descriptor."""


class StoreLockedError(PacsstoreError):
    """Another process has the store open for writing."""


class AlreadyOpenError(PacsstoreError):
    """The store is already open in this process, by another Archive: an
    LMDB environment opens once per process. Share that Archive (it is
    thread-safe, and reads as well as it writes) or close it first."""


class ReadOnlyStoreError(PacsstoreError, PermissionError):
    """The store cannot be written here (read-only media, or no write
    permission); it still opens with ``readonly=True``."""


class OutOfSpaceError(PacsstoreError, OSError):
    """The disk or the index map is full; nothing of the batch was
    acknowledged and what was stored before is intact."""
