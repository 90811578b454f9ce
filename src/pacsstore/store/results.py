"""What the archive answers: the result of a store and the statistics."""

from __future__ import annotations

from dataclasses import dataclass

# Status values of StoreResult.status.
STORED = "stored"
DUPLICATE = "duplicate"
REPLACED = "replaced"
KEPT_FIRST = "kept-first"
REJECTED = "rejected"


@dataclass(frozen=True)
class StoreResult:
    """One instance handed to the archive and what became of it.

    ``size`` is the logical size of the instance (its Part 10 bytes);
    ``bytes_written`` counts what was appended to segments (block headers
    and the manifest included); ``bytes_deduplicated`` the logical bytes
    not written because identical blocks were already stored.
    """

    sop_instance_uid: str | None
    sop_class_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    patient_id: str | None
    status: str
    size: int
    bytes_written: int
    bytes_deduplicated: int
    frames: int
    error: str | None = None


@dataclass(frozen=True)
class ArchiveStats:
    """Counts and sizes of a store.

    ``logical_bytes`` is the sum of the sizes of the stored instances,
    ``stored_bytes`` the committed length of all segments,
    ``dedup_saved_bytes`` the logical bytes that blocks shared between
    (or within) instances did not have to store again.
    """

    patients: int
    studies: int
    series: int
    instances: int
    blocks: int
    logical_bytes: int
    stored_bytes: int
    dedup_saved_bytes: int
    segments: int
