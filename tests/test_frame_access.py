"""Archive.frame: one frame of a multi-frame instance, read alone.

A frame read locates only the blocks it needs (its own, and the header
block only to decode), so its cost does not grow with the number of
frames; each block it reads is still checked (CRC32 and SHA-256), and
the frames equal pydicom's.
"""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames

from corpus import CORPUS_ROOT, corpus_available
from pacsstore import Archive, CorruptStoreError, NotFoundError
from pacsstore import synthetic
from pacsstore.store import blocks

NATIVE = ["pydicom-data/emri_small.dcm",
          "pydicom-data/emri_small_big_endian.dcm",
          "pydicom-data/SC_rgb_2frame.dcm"]
ENCAPSULATED = [
    "pydicom-data/emri_small_RLE.dcm",
    "fo-dicom/BenchmarkData/multiframe.dcm",
    "dicomParser/testImages/encapsulated/multi-frame/"
    "IM00001.fragmented_no_bot_jpeg_baseline.50.dcm",
]
DECODED = ["pydicom-data/emri_small.dcm",
           "pydicom-data/emri_small_big_endian.dcm",
           "pydicom-data/emri_small_RLE.dcm"]

needs_corpus = pytest.mark.skipif(not corpus_available(),
                                  reason="../shared/corpus is absent")


def _read(path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path, force=True)


def _pydicom_frames(ds: pydicom.Dataset, encapsulated: bool) -> list[bytes]:
    count = int(ds.get("NumberOfFrames") or 1)
    if encapsulated:
        return list(generate_frames(ds.PixelData, number_of_frames=count))
    size = ds.Rows * ds.Columns * ds.get("SamplesPerPixel", 1) \
        * ds.BitsAllocated // 8
    return [ds.PixelData[i * size:(i + 1) * size] for i in range(count)]


def _stored(archive: Archive, path) -> str:
    return archive.store(path).sop_instance_uid


def _multiframe(tmp_path, frames: int):
    return synthetic.write_multiframe(tmp_path / f"mf{frames}.dcm", frames,
                                      rows=16, columns=16)


class _CountingLookups:
    """Counts the index's block lookups (Index.block) of one archive."""

    def __init__(self, archive: Archive, monkeypatch) -> None:
        self.calls = 0
        index = archive._index
        original = index.block

        def block(txn, digest):
            self.calls += 1
            return original(txn, digest)

        monkeypatch.setattr(index, "block", block)


@needs_corpus
@pytest.mark.parametrize("relpath", NATIVE + ENCAPSULATED)
def test_corpus_frames_equal_pydicom(tmp_path, relpath):
    path = CORPUS_ROOT / relpath
    expected = _pydicom_frames(_read(path), relpath in ENCAPSULATED)
    assert len(expected) > 1
    with Archive(tmp_path / "store") as archive:
        uid = _stored(archive, path)
        for i in reversed(range(len(expected))):
            assert archive.frame(uid, i) == expected[i], (relpath, i)
        assert archive.get(uid) == path.read_bytes()


@needs_corpus
@pytest.mark.parametrize("relpath", DECODED)
def test_corpus_decoded_frames_equal_pydicom(tmp_path, relpath):
    path = CORPUS_ROOT / relpath
    expected = _read(path).pixel_array
    with Archive(tmp_path / "store") as archive:
        uid = _stored(archive, path)
        for i in (len(expected) - 1, 0, len(expected) // 2):
            np.testing.assert_array_equal(
                archive.frame(uid, i, decode=True), expected[i])


def test_synthetic_multiframe_frames_equal_pydicom(tmp_path):
    path = _multiframe(tmp_path, 12)
    ds = _read(path)
    expected = _pydicom_frames(ds, encapsulated=False)
    pixels = ds.pixel_array
    with Archive(tmp_path / "store") as archive:
        uid = _stored(archive, path)
        assert uid == synthetic.multiframe_uid(12, rows=16, columns=16)
        assert [archive.frame(uid, i) for i in range(12)] == expected
        for i in (11, 0, 5):
            np.testing.assert_array_equal(
                archive.frame(uid, i, decode=True), pixels[i])
        with pytest.raises(NotFoundError):
            archive.frame(uid, 12)
        assert archive.get(uid) == path.read_bytes()


def _lookups_for_one_frame(tmp_path, monkeypatch, frames: int,
                           decode: bool) -> int:
    path = _multiframe(tmp_path, frames)
    with Archive(tmp_path / f"store{frames}-{decode}") as archive:
        uid = _stored(archive, path)
        assert archive.record(uid)["frames"] == frames
        with monkeypatch.context() as patch:
            counter = _CountingLookups(archive, patch)
            archive.frame(uid, frames // 2, decode=decode)
        return counter.calls


@pytest.mark.parametrize("decode", [False, True])
def test_block_lookups_of_one_frame_do_not_grow(tmp_path, monkeypatch,
                                                decode):
    small = _lookups_for_one_frame(tmp_path, monkeypatch, 10, decode)
    large = _lookups_for_one_frame(tmp_path, monkeypatch, 200, decode)
    # The frame's own block, and the header block only to decode.
    assert small == large == (2 if decode else 1)


def test_whole_read_still_locates_every_block(tmp_path, monkeypatch):
    path = _multiframe(tmp_path, 10)
    with Archive(tmp_path / "store") as archive:
        uid = _stored(archive, path)
        counter = _CountingLookups(archive, monkeypatch)
        assert archive.get(uid) == path.read_bytes()
        assert counter.calls == 11
        with archive.open(uid) as stream:
            assert stream.read() == path.read_bytes()
        assert counter.calls == 22


def _damage(store, digest: bytes) -> None:
    """Flip one byte of the stored payload of block ``digest``."""
    with Archive(store, readonly=True) as archive:
        with archive._index.read() as txn:
            entry = archive._index.block(txn, digest)
    segment = store / "segments" / f"{entry.segment:08d}.seg"
    with open(segment, "r+b") as handle:
        at = entry.offset + blocks.HEADER_SIZE + entry.stored_length // 2
        handle.seek(at)
        byte = handle.read(1)
        handle.seek(at)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_damaged_frame_block_is_corruption(tmp_path):
    path = _multiframe(tmp_path, 10)
    store = tmp_path / "store"
    with Archive(store) as archive:
        uid = _stored(archive, path)
        record = archive.record(uid)
        expected = [archive.frame(uid, i) for i in range(10)]
    assert len(set(record["blocks"])) == 10
    _damage(store, bytes.fromhex(record["blocks"][3]))
    with Archive(store, readonly=True) as archive:
        for decode in (False, True):
            with pytest.raises(CorruptStoreError):
                archive.frame(uid, 3, decode=decode)
        with pytest.raises(CorruptStoreError):
            archive.get(uid)
        assert archive.frame(uid, 2) == expected[2]
        assert archive.frame(uid, 4) == expected[4]


def test_damaged_header_block_fails_decode_not_stored_frame(tmp_path):
    path = _multiframe(tmp_path, 10)
    store = tmp_path / "store"
    with Archive(store) as archive:
        uid = _stored(archive, path)
        record = archive.record(uid)
        expected = archive.frame(uid, 6)
    _damage(store, bytes.fromhex(record["header"]))
    with Archive(store, readonly=True) as archive:
        # The stored bytes of a frame are checked against their own
        # digest and do not need the header block; decoding does.
        assert archive.frame(uid, 6) == expected
        with pytest.raises(CorruptStoreError):
            archive.frame(uid, 6, decode=True)
        with pytest.raises(CorruptStoreError):
            archive.get(uid)


def _decodes_of_a_record(archive: Archive, monkeypatch) -> list[str]:
    """The instance records the index decodes, by SOP Instance UID."""
    from pacsstore.store import index as index_module
    seen: list[str] = []
    original = index_module.instance_record

    def counting(raw, uid, bases=None):
        seen.append(uid)
        return original(raw, uid, bases)

    monkeypatch.setattr(index_module, "instance_record", counting)
    return seen


def test_frames_of_a_large_record_decode_it_once(tmp_path, monkeypatch):
    # 600 frames: a record of more than 8 KiB stored, which frame reads
    # decoded again on every call.
    path = _multiframe(tmp_path, 600)
    reference = _pydicom_frames(_read(path), encapsulated=False)
    with Archive(tmp_path / "store") as archive:
        uid = _stored(archive, path)
        seen = _decodes_of_a_record(archive, monkeypatch)
        frames = [archive.frame(uid, i) for i in (0, 299, 599, 299)]
    assert frames == [reference[i] for i in (0, 299, 599, 299)]
    assert seen.count(uid) == 1


def test_a_replaced_instance_is_not_read_from_its_old_record(tmp_path):
    first = _multiframe(tmp_path, 600)
    ds = _read(first)
    ds.PixelData = bytes(b ^ 0xFF for b in ds.PixelData)  # other pixels
    second = tmp_path / "replaced.dcm"
    ds.save_as(second, enforce_file_format=True)
    with Archive(tmp_path / "store", on_conflict="replace") as archive:
        uid = _stored(archive, first)
        before = archive.frame(uid, 5)
        archive.store(second)
        after = archive.frame(uid, 5)
    assert before == _pydicom_frames(_read(first), encapsulated=False)[5]
    assert after == _pydicom_frames(_read(second), encapsulated=False)[5]
    assert after != before
