"""The planes16 pre-filter and the PLANES16_ZSTD codec: exact inversion
on any bytes, real frames through a store, old stores, unknown codecs."""

from __future__ import annotations

import shutil
import struct
import zlib

import numpy as np
import pydicom
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from pacsstore import Archive, CorruptStoreError, NewerFormatError, \
    rebuild_index, synthetic
from pacsstore.store import blocks, filters, prepare
from pacsstore.store.blocks import Codec, Kind
from pacsstore.store.segments import segment_path
from test_store_support import (
    CT_SMALL,
    EMRI_10_FRAMES,
    JPEG_FRAGMENTED,
    MR_SMALL,
    corpus_bytes,
    corpus_path,
    frame_codecs,
)

COMPRESSOR = zstandard.ZstdCompressor(level=3, write_content_size=True)
BIG_ENDIAN_16 = "dcm_qa_ts/3.dcm"
RGB_8_BITS = "pydicom-data/SC_rgb.dcm"
# Native 16-bit little-endian files of several sizes and modalities.
NATIVE_16 = (CT_SMALL, MR_SMALL, EMRI_10_FRAMES,
             "dicomParser/testImages/CT1_UNC.implicit_little_endian.dcm")
VERSION_AT, CODEC_AT = 4, 6


def _roundtrip(content: bytes) -> bytes:
    block = blocks.encode(Kind.FRAME, content, compressor=COMPRESSOR,
                          sample_bytes=2)
    header = blocks.parse_header(block.header, "test")
    return blocks.decode(header, block.header, block.payload, "test")


@given(st.binary(max_size=4099))
def test_planes16_inverts_any_bytes(content):
    filtered = filters.planes16(content)
    assert len(filtered) == filters.planes16_length(len(content))
    assert filters.unplanes16(filtered, len(content)) == content


def _reference_planes16(content: bytes) -> bytes:
    """planes16 written another way (numpy, whole arrays), as the oracle
    of the native filter."""
    samples = len(content) // 2
    words = np.frombuffer(content, dtype="<u2", count=samples)
    low = (words & 0xFF).astype(np.uint8)
    if samples % 2:
        low = np.append(low, np.uint8(0))
    even, odd = low[0::2], low[1::2]
    upper = (even >> 4) | (odd & 0xF0)
    lower = (even & 0x0F) | ((odd & 0x0F) << 4)
    tail = content[-1:] if len(content) % 2 else b""
    return ((words >> 8).astype(np.uint8).tobytes() + upper.tobytes()
            + lower.tobytes() + tail)


@given(st.binary(max_size=4099))
def test_native_planes16_equals_the_reference(content):
    assert filters.planes16(content) == _reference_planes16(content)


@given(st.binary(max_size=4099))
def test_unplanes16_accepts_any_buffer_of_bytes(content):
    filtered = bytearray(filters.planes16(content))
    assert filters.unplanes16(memoryview(filtered), len(content)) == content


@given(st.binary(max_size=4099))
def test_block_with_sample_hint_reads_back_any_bytes(content):
    assert _roundtrip(content) == content


@given(st.integers(0, 2047).map(lambda n: n * 2))
def test_smooth_samples_of_every_even_length_round_trip(length):
    # A ramp compresses, so these take the filtered codec, not RAW.
    content = bytes(i // 7 % 256 for i in range(length))
    block = blocks.encode(Kind.FRAME, content, compressor=COMPRESSOR,
                          sample_bytes=2)
    if length >= 256:
        assert block.codec is Codec.PLANES16_ZSTD
    assert _roundtrip(content) == content


def test_planes16_groups_high_bytes_then_nibbles():
    # Samples 0x1234, 0xABCD, 0x0F0E (little-endian), and an odd byte.
    filtered = filters.planes16(bytes.fromhex("3412cdab0e0f") + b"\x99")
    assert filtered.hex() == "12ab0f" "c300" "d40e" "99"


def test_unplanes16_refuses_a_wrong_length():
    # Three samples need one byte more than their six.
    with pytest.raises(ValueError, match="must be 7 bytes long, not 6"):
        filters.unplanes16(b"\0" * 6, 6)


def test_corpus_frame_is_smaller_with_the_filter():
    pixels = corpus_bytes(CT_SMALL)[-128 * 128 * 2:]
    plain = blocks.encode(Kind.FRAME, pixels, compressor=COMPRESSOR)
    filtered = blocks.encode(Kind.FRAME, pixels, compressor=COMPRESSOR,
                             sample_bytes=2)
    assert filtered.codec is Codec.PLANES16_ZSTD
    assert plain.codec is Codec.ZSTD
    assert len(filtered.payload) < len(plain.payload)
    assert filtered.digest == plain.digest == blocks.digest(pixels)
    assert _roundtrip(pixels) == pixels


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5, 9])
def test_the_planes_compressor_of_every_level_reads_back(level):
    """Its output is an ordinary zstd frame with the content size: the
    block reads back through the one decoder, whatever the level."""
    planes = blocks.planes16_compressor(level)
    for relpath in NATIVE_16:
        data = corpus_bytes(relpath)
        pixels = data[-(len(data) // 4) * 2:]
        block = blocks.encode(Kind.FRAME, pixels, compressor=COMPRESSOR,
                              sample_bytes=2, planes_compressor=planes)
        assert block.codec is Codec.PLANES16_ZSTD
        header = blocks.parse_header(block.header, "test")
        assert blocks.decode(header, block.header, block.payload,
                             "test") == pixels


@pytest.mark.parametrize("level", [1, 3, 6])
def test_an_archive_compresses_planes_with_the_planes_compressor(
        tmp_path, level):
    path = synthetic.write_ct_series(tmp_path / "ct", 1, seed=21)[0]
    pixels = path.read_bytes()[-512 * 512 * 2:]
    expected = blocks.planes16_compressor(level).compress(
        filters.planes16(pixels))
    with Archive(tmp_path / "store", compression_level=level) as archive:
        uid = archive.store(path).sop_instance_uid
        [name] = archive.record(uid)["blocks"]
        with archive._index.read() as txn:
            entry = archive._index.block(txn, bytes.fromhex(name))
    with segment_path(tmp_path / "store" / "segments",
                      entry.segment).open("rb") as segment:
        segment.seek(entry.offset + blocks.HEADER_SIZE)
        payload = segment.read(entry.stored_length)
    assert entry.codec == Codec.PLANES16_ZSTD
    assert payload == expected


@pytest.mark.parametrize("content", [b"", b"\x01", b"\x01\x02\x03"])
def test_empty_and_odd_frames_are_not_filtered(content):
    block = blocks.encode(Kind.FRAME, content, compressor=COMPRESSOR,
                          sample_bytes=2)
    assert block.codec is not Codec.PLANES16_ZSTD
    assert _roundtrip(content) == content


def test_only_frame_blocks_are_filtered():
    content = bytes(range(256)) * 64
    for kind in (Kind.HEADER, Kind.PIXELS, Kind.MANIFEST):
        block = blocks.encode(kind, content, compressor=COMPRESSOR,
                              sample_bytes=2)
        assert block.codec is Codec.ZSTD


def test_an_unknown_sample_size_is_refused():
    with pytest.raises(ValueError, match="sample_bytes must be one of"):
        blocks.encode(Kind.FRAME, b"\0" * 8, compressor=COMPRESSOR,
                      sample_bytes=4)


def test_filtered_blocks_carry_version_2_plain_ones_version_1():
    pixels = corpus_bytes(CT_SMALL)[-128 * 128 * 2:]
    filtered = blocks.encode(Kind.FRAME, pixels, compressor=COMPRESSOR,
                             sample_bytes=2)
    plain = blocks.encode(Kind.FRAME, pixels, compressor=COMPRESSOR)
    assert filtered.header[VERSION_AT] == 2
    assert plain.header[VERSION_AT] == 1


def test_a_version_1_reader_calls_a_filtered_block_newer(monkeypatch):
    pixels = corpus_bytes(CT_SMALL)[-128 * 128 * 2:]
    block = blocks.encode(Kind.FRAME, pixels, compressor=COMPRESSOR,
                          sample_bytes=2)
    # What a reader of format version 1 checks first.
    monkeypatch.setattr(blocks, "BLOCK_FORMAT_VERSION", 1)
    with pytest.raises(NewerFormatError, match="format version 2"):
        blocks.parse_header(block.header, "test")


def _with_header_bytes(block, version: int, codec: int) -> bytes:
    head = bytearray(block.header)
    head[VERSION_AT], head[CODEC_AT] = version, codec
    crc = zlib.crc32(block.payload, zlib.crc32(bytes(head[:60])))
    return bytes(head[:60]) + struct.pack("<I", crc)


def test_an_unknown_codec_from_a_newer_writer_is_newer_format():
    block = blocks.encode(Kind.FRAME, b"frame" * 100, compressor=COMPRESSOR)
    header = _with_header_bytes(block, blocks.BLOCK_FORMAT_VERSION + 1, 9)
    with pytest.raises(NewerFormatError, match="reads up to 2"):
        blocks.parse_header(header, "segment 1 offset 32")


def test_an_unknown_codec_under_a_known_version_is_corruption():
    block = blocks.encode(Kind.FRAME, b"frame" * 100, compressor=COMPRESSOR)
    header = _with_header_bytes(block, blocks.BLOCK_FORMAT_VERSION, 9)
    with pytest.raises(CorruptStoreError,
                       match="segment 1 offset 32 has unknown kind 2 or "
                             "codec 9 for its format version 2"):
        blocks.parse_header(header, "segment 1 offset 32")


def test_filtered_payload_of_the_wrong_length_is_corruption():
    # A zstd frame that is intact but holds one byte too few for the
    # filtered form of the stated content.
    content = bytes(range(256)) * 8
    block = blocks.encode(Kind.FRAME, content, compressor=COMPRESSOR,
                          sample_bytes=2)
    short = COMPRESSOR.compress(filters.planes16(content)[:-1])
    head = _with_payload(block.header, short)
    header = blocks.parse_header(head, "test")
    with pytest.raises(CorruptStoreError, match="filtered samples"):
        blocks.decode(header, head, short, "test")


def _with_payload(header: bytes, payload: bytes) -> bytes:
    """``header`` with the stored length and CRC32 of ``payload``."""
    head = header[:48] + struct.pack("<Q", len(payload)) + header[56:60]
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))


def _block_versions(store) -> set[int]:
    """The version byte of every block in the store's first segment."""
    data = segment_path(store / "segments", 1).read_bytes()
    versions, at = set(), 32
    while at < len(data):
        assert data[at:at + 4] == blocks.BLOCK_MAGIC
        (stored,) = struct.unpack_from("<Q", data, at + 48)
        versions.add(data[at + VERSION_AT])
        at += blocks.HEADER_SIZE + stored
    return versions


def _native_frame(path, index: int) -> bytes:
    """Frame ``index`` of a native file, as pydicom reads it."""
    ds = pydicom.dcmread(path)
    size = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
    return ds.PixelData[index * size:(index + 1) * size]


def test_corpus_frames_come_back_byte_exact_through_a_store(tmp_path):
    files = {name: corpus_bytes(name) for name in
             (*NATIVE_16, BIG_ENDIAN_16, RGB_8_BITS, JPEG_FRAGMENTED)}
    store = tmp_path / "store"
    with Archive(store) as archive:
        uids = {name: archive.store(data).sop_instance_uid
                for name, data in files.items()}
        for name, data in files.items():
            assert archive.get(uids[name]) == data, name
        for name in NATIVE_16:
            assert set(frame_codecs(archive, uids[name])) == \
                {Codec.PLANES16_ZSTD}, name
        # Big-endian samples, 8-bit samples and JPEG fragments keep the
        # codecs they had.
        assert Codec.PLANES16_ZSTD not in frame_codecs(archive,
                                                  uids[BIG_ENDIAN_16])
        assert frame_codecs(archive, uids[RGB_8_BITS]) == [Codec.ZSTD]
        assert Codec.PLANES16_ZSTD not in frame_codecs(archive,
                                                  uids[JPEG_FRAGMENTED])
        frame = archive.frame(uids[EMRI_10_FRAMES], 3)
        assert frame == _native_frame(corpus_path(EMRI_10_FRAMES), 3)
        assert archive.verify().ok
    assert _block_versions(store) == {1, 2}
    shutil.rmtree(store / "index")
    rebuild_index(store)
    with Archive(store, readonly=True) as archive:
        for name, data in files.items():
            assert archive.get(uids[name]) == data, name
        assert archive.frame(uids[EMRI_10_FRAMES], 3) == frame
        assert archive.verify().ok


def test_a_store_written_without_filters_still_reads(tmp_path, monkeypatch):
    # Version 1 wrote every frame as zstd or raw; so does a preparer
    # that gets no sample hint.
    old, new = corpus_bytes(CT_SMALL), corpus_bytes(MR_SMALL)
    store = tmp_path / "store"
    with monkeypatch.context() as patch:
        patch.setattr(prepare, "_sample_bytes", lambda record: 1)
        with Archive(store) as archive:
            old_uid = archive.store(old).sop_instance_uid
            assert frame_codecs(archive, old_uid) == [Codec.ZSTD]
    assert _block_versions(store) == {1}
    with Archive(store) as archive:
        assert archive.get(old_uid) == old
        new_uid = archive.store(new).sop_instance_uid
        assert frame_codecs(archive, new_uid) == [Codec.PLANES16_ZSTD]
        assert archive.get(new_uid) == new
        assert archive.verify().ok


def test_the_same_frame_is_one_block_whichever_codec_stored_it(
        tmp_path, monkeypatch):
    data = corpus_bytes(CT_SMALL)
    with monkeypatch.context() as patch:
        patch.setattr(prepare, "_sample_bytes", lambda record: 1)
        with Archive(tmp_path / "store") as archive:
            first = archive.store(data).sop_instance_uid
    with Archive(tmp_path / "store") as archive:
        before = archive.stats()
        assert archive.store(corpus_path(CT_SMALL)).status == "duplicate"
        assert archive.stats().blocks == before.blocks
        assert archive.get(first) == data
