"""Dedup: frames are blocks named by their SHA-256, stored once."""

from __future__ import annotations

import errno
import io

import pydicom
import pytest

from pacsstore import Archive, DamagedCopyError, NotFoundError
from test_store_support import (CT_SMALL, EMRI_10_FRAMES, corpus_bytes,
                                corpus_path)


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


def _damage_block(archive: Archive, name: bytes) -> None:
    """Flip one payload byte of the stored block ``name``."""
    with archive._index.read() as txn:
        entry = archive._index.block(txn, name)
    path = archive.path / "segments" / f"{entry.segment:08d}.seg"
    with open(path, "r+b") as handle:
        handle.seek(entry.offset + 64 + entry.stored_length // 2)
        byte = handle.read(1)[0]
        handle.seek(-1, io.SEEK_CUR)
        handle.write(bytes([byte ^ 0x40]))


def test_an_instance_sharing_a_damaged_stored_frame_is_not_stored(
        tmp_path):
    """It was acknowledged with its frames deduplicated onto the damaged
    copy, and read damaged, though its sender had sent it whole."""
    original = corpus_bytes(EMRI_10_FRAMES)
    copy = _relabelled(original, "1.2.826.0.1.3680043.8.498.2")
    with Archive(tmp_path / "s") as archive:
        first = archive.store(original)
        frame = bytes.fromhex(
            archive.record(first.sop_instance_uid)["blocks"][3])
        _damage_block(archive, frame)

        with pytest.raises(DamagedCopyError, match="stored copy of its "
                                                   "block .* is damaged"):
            archive.store(copy)
        with pytest.raises(DamagedCopyError):
            archive.store_many([copy])
        # The item's result with skip_invalid; the others are stored.
        results = archive.store_many([copy, corpus_bytes(CT_SMALL)],
                                     skip_invalid=True)
        assert [r.status for r in results] == ["rejected", "stored"]
        assert "is damaged" in results[0].error

        with pytest.raises(NotFoundError):
            archive.get("1.2.826.0.1.3680043.8.498.2")
        assert archive.stats().dedup_saved_bytes == 0


def test_a_resend_onto_a_damaged_stored_copy_is_not_acknowledged(tmp_path):
    """An identical re-send was a duplicate, a success, though its
    stored copy read damaged; a replace took a reference on its damaged
    header block. Both fail now, and the sender keeps its copy."""
    original = corpus_bytes(EMRI_10_FRAMES)
    ds = pydicom.dcmread(io.BytesIO(original))
    ds.PixelData = ds.PixelData[:-2] + b"\x01\x00"
    edited = io.BytesIO()
    ds.save_as(edited, enforce_file_format=True)
    with Archive(tmp_path / "s", on_conflict="replace") as archive:
        uid = archive.store(original).sop_instance_uid
        record = archive.record(uid)
        _damage_block(archive, bytes.fromhex(record["blocks"][0]))
        with pytest.raises(DamagedCopyError):
            archive.store(original)
        _damage_block(archive, bytes.fromhex(record["header"]))
        with pytest.raises(DamagedCopyError, match=record["header"]):
            archive.store(edited.getvalue())
        assert archive.record(uid) == record


def test_a_segment_that_cannot_be_read_refuses_only_the_sharing_instance(
        tmp_path, monkeypatch):
    """An I/O error (a bad sector) reading the stored copy failed the
    whole batch, instances that share nothing included."""
    original = corpus_bytes(EMRI_10_FRAMES)
    copy = _relabelled(original, "1.2.826.0.1.3680043.8.498.3")
    with Archive(tmp_path / "s") as archive:
        archive.store(original)

        def bad_sector(*args, **kwargs):
            raise OSError(errno.EIO, "Input/output error")
        monkeypatch.setattr(archive._segments, "check_intact", bad_sector)
        results = archive.store_many([copy, corpus_bytes(CT_SMALL)],
                                     skip_invalid=True)
    assert [r.status for r in results] == ["rejected", "stored"]


def test_one_batch_that_sends_an_instance_twice_is_not_refused(tmp_path):
    """The second send is a duplicate of blocks the same batch appended,
    which are not on disk before its flush: reading their stored copy
    refused it as damaged."""
    data = corpus_bytes(EMRI_10_FRAMES)
    copy = _relabelled(data, "1.2.826.0.1.3680043.8.498.4")
    with Archive(tmp_path / "s") as archive:
        results = archive.store_many([data, copy, data])
        assert [r.status for r in results] == \
            ["stored", "stored", "duplicate"]
        assert archive.verify().problems == []
