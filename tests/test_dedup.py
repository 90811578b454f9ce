"""Dedup: frames are blocks named by their SHA-256, stored once."""

from __future__ import annotations

import io

import pydicom

from pacsstore import Archive
from test_store_support import EMRI_10_FRAMES, corpus_bytes, corpus_path


def _relabelled(data: bytes, uid: str) -> bytes:
    """The same pixels under another UID and patient: a new header."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.PatientName = "Other^Patient"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _segment_sizes(archive: Archive) -> dict[str, int]:
    return {p.name: p.stat().st_size
            for p in (archive.path / "segments").glob("*.seg")}


def test_dedup_same_pixels_different_header_share_frames(tmp_path):
    original = corpus_bytes(EMRI_10_FRAMES)
    copy = _relabelled(original, "1.2.826.0.1.3680043.8.498.1")
    pixels = pydicom.dcmread(io.BytesIO(original)).PixelData
    with Archive(tmp_path / "s") as archive:
        first = archive.store(original)
        blocks_after_first = archive.stats().blocks
        second = archive.store(copy)
        stats = archive.stats()
        # One new block: the second header. The ten frames are shared.
        assert stats.blocks == blocks_after_first + 1
        assert second.bytes_deduplicated == len(pixels)
        assert second.bytes_written < len(copy) - len(pixels) + 4096
        assert stats.dedup_saved_bytes == len(pixels)
        assert stats.logical_bytes == first.size + second.size
        assert archive.get(first.sop_instance_uid) == original
        assert archive.get(second.sop_instance_uid) == copy
        assert archive.record(first.sop_instance_uid)["blocks"] == \
            archive.record(second.sop_instance_uid)["blocks"]


def test_dedup_storing_a_file_twice_adds_nothing(tmp_path):
    path = corpus_path(EMRI_10_FRAMES)
    with Archive(tmp_path / "s") as archive:
        archive.store(path)
        stats, sizes = archive.stats(), _segment_sizes(archive)
        again = archive.store(path)
        assert again.status == "duplicate" and again.bytes_written == 0
        assert archive.stats() == stats
        assert _segment_sizes(archive) == sizes
