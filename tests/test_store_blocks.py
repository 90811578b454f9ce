"""Blocks and segments: the on-disk units, their checks and recovery."""

from __future__ import annotations

import os
import struct
import zlib

import pytest
import zstandard

from pacsstore import CorruptStoreError, NewerFormatError, NotAStoreError
from pacsstore._assemble import FileAssembly
from pacsstore.store import blocks, record_dictionary, segments, zstd_frames
from pacsstore.store.blocks import Codec, Kind
from pacsstore.store.segments import SegmentReader, SegmentWriter
from test_store_support import EMRI_10_FRAMES, corpus_bytes

COMPRESSOR = zstandard.ZstdCompressor(level=3)


def _write(directory, committed, contents, max_size=1 << 20):
    writer = SegmentWriter(directory, committed, max_size=max_size)
    placed = []
    for content in contents:
        block = blocks.encode(Kind.FRAME, content, compressor=COMPRESSOR)
        segment, offset = writer.reserve(block.total_length)
        writer.append(segment, block.header)
        writer.append(segment, block.payload)
        placed.append((segment, offset, block.digest))
    lengths = writer.flush()
    writer.committed_as(lengths)
    return writer, placed


def test_block_compresses_real_pixels_and_reads_back(tmp_path):
    pixels = corpus_bytes(EMRI_10_FRAMES)[-8192:]
    writer, placed = _write(tmp_path, {}, [pixels])
    header, content = SegmentReader(tmp_path).read(*placed[0][:2])
    assert content == pixels
    assert header.codec is Codec.ZSTD
    assert header.stored_length < len(pixels)
    assert header.digest == blocks.digest(pixels)


def test_block_keeps_incompressible_payload_raw():
    noise = os.urandom(4096)
    block = blocks.encode(Kind.FRAME, noise, compressor=COMPRESSOR)
    assert block.codec is Codec.RAW and block.payload == noise


def test_block_flipped_bit_fails_crc(tmp_path):
    _, placed = _write(tmp_path, {}, [b"frame" * 100])
    path = segments.segment_path(tmp_path, 1)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptStoreError, match="CRC32"):
        SegmentReader(tmp_path).read(*placed[0][:2])


def test_block_wrong_name_is_refused(tmp_path):
    _, placed = _write(tmp_path, {}, [b"a" * 100])
    with pytest.raises(CorruptStoreError, match="expected"):
        SegmentReader(tmp_path).read(1, placed[0][1], expect=b"\0" * 32)


def test_block_newer_version_and_foreign_magic():
    block = blocks.encode(Kind.FRAME, b"x" * 64, compressor=COMPRESSOR)
    newer = block.header[:4] + b"\x09" + block.header[5:]
    with pytest.raises(NewerFormatError):
        blocks.parse_header(newer, "test")
    with pytest.raises(CorruptStoreError, match="magic"):
        blocks.parse_header(b"JUNK" + block.header[4:], "test")


def _stating(block: blocks.EncodedBlock, stated: int) -> tuple[bytes, bytes]:
    """``block`` with its zstd frame made to state ``stated`` content
    bytes in an 8-byte field, and its CRC32 made to match: damage the
    CRC cannot see."""
    frame = block.payload
    descriptor = frame[4]
    assert descriptor & 0x20 and descriptor & 0xC0 == 0x80   # 4 bytes
    payload = frame[:4] + bytes([descriptor | 0xC0]) + \
        struct.pack("<Q", stated) + frame[9:]
    head = bytearray(block.header)
    struct.pack_into("<Q", head, 48, len(payload))
    struct.pack_into("<I", head, 60, zlib.crc32(
        payload, zlib.crc32(bytes(head[:60]))))
    return bytes(head), payload


@pytest.mark.parametrize("kind, codec", [(Kind.HEADER, Codec.ZSTD),
                                         (Kind.MANIFEST, Codec.ZSTD_RECORD)])
def test_a_frame_stating_a_huge_content_size_sizes_no_allocation(kind,
                                                                 codec):
    """zstandard allocates the content size a frame states, whatever the
    limit it is given: a block whose frame stated 2**50 bytes failed with
    a bare MemoryError instead of CorruptStoreError."""
    content = b'{"record":"' + bytes(range(48, 58)) * 10_000 + b'"}'
    block = blocks.encode(kind, content, compressor=COMPRESSOR)
    assert block.codec is codec
    head, payload = _stating(block, 1 << 50)
    header = blocks.parse_header(head, "test")
    says = (f"zstd frame of {1 << 50} bytes; at most {len(content)} are "
            f"possible")
    with pytest.raises(CorruptStoreError, match=says):
        blocks.decode(header, head, payload, "test")
    with pytest.raises(CorruptStoreError, match=says):
        blocks.decode_onto(header, head, payload, "test",
                           FileAssembly(len(content)))


def _resealed(block: blocks.EncodedBlock, payload: bytes,
              raw_length: int) -> tuple[blocks.BlockHeader, bytes, bytes]:
    head = bytearray(block.header)
    struct.pack_into("<Q", head, 40, raw_length)
    struct.pack_into("<Q", head, 48, len(payload))
    struct.pack_into("<I", head, 60, zlib.crc32(
        payload, zlib.crc32(bytes(head[:60]))))
    return blocks.parse_header(bytes(head), "test"), bytes(head), payload


def _without_content_size(block: blocks.EncodedBlock) -> bytes:
    dictionary = (record_dictionary._dictionary
                  if block.codec is Codec.ZSTD_RECORD else None)
    content = blocks.decode(blocks.parse_header(block.header, "t"),
                            block.header, block.payload, "t")
    return zstandard.ZstdCompressor(
        dict_data=dictionary, write_content_size=False,
        write_dict_id=False).compress(content)


@pytest.mark.parametrize("kind", [Kind.HEADER, Kind.MANIFEST])
@pytest.mark.parametrize("damage, says", [
    # A frame that states no content size, in a block that states 1 TiB:
    # zstandard allocated the whole TiB (MemoryError).
    ("no size", "holds a zstd frame that does not state its content "
                "size"),
    ("trailing", "has 5 bytes after its zstd frame"),
    ("cut", "holds a zstd frame cut short"),
])
def test_a_payload_that_is_not_one_sound_frame_is_damage(kind, damage,
                                                         says):
    content = b'{"record":"' + bytes(range(48, 58)) * 1000 + b'"}'
    block = blocks.encode(kind, content, compressor=COMPRESSOR)
    payload, raw_length = {
        "no size": (_without_content_size(block), 1 << 40),
        "trailing": (block.payload + b"extra", len(content)),
        "cut": (block.payload[:-4], len(content)),
    }[damage]
    header, head, payload = _resealed(block, payload, raw_length)
    with pytest.raises(CorruptStoreError, match=says):
        blocks.decode(header, head, payload, "test")


def test_segment_foreign_file_is_not_a_store(tmp_path):
    (tmp_path / "00000001.seg").write_bytes(b"\x00" * 64)
    with pytest.raises(NotAStoreError):
        SegmentReader(tmp_path).read(1, 32)


def test_segment_rotates_at_max_size(tmp_path):
    contents = [os.urandom(3000) for _ in range(5)]
    writer, placed = _write(tmp_path, {}, contents, max_size=8000)
    assert {segment for segment, _, _ in placed} == {1, 2, 3}
    reader = SegmentReader(tmp_path)
    for (segment, offset, _), content in zip(placed, contents):
        assert reader.read(segment, offset)[1] == content


def test_segment_writer_cuts_uncommitted_tail_on_open(tmp_path):
    writer, _ = _write(tmp_path, {}, [b"kept" * 50])
    committed = dict(writer.committed)
    path = segments.segment_path(tmp_path, 1)
    with open(path, "ab") as handle:
        handle.write(b"torn half of a block")
    segments.segment_path(tmp_path, 2).write_bytes(b"uncommitted")
    SegmentWriter(tmp_path, committed)
    assert path.stat().st_size == committed[1]
    assert not segments.segment_path(tmp_path, 2).exists()


def test_segment_rollback_leaves_nothing_behind(tmp_path):
    writer, _ = _write(tmp_path, {}, [b"kept" * 50])
    size = segments.segment_path(tmp_path, 1).stat().st_size
    block = blocks.encode(Kind.FRAME, b"lost" * 50, compressor=COMPRESSOR)
    segment, _ = writer.reserve(block.total_length)
    writer.append(segment, block.header + block.payload)
    writer.flush()
    writer.rollback()
    assert segments.segment_path(tmp_path, 1).stat().st_size == size


def test_segment_missing_committed_bytes_is_corruption(tmp_path):
    writer, _ = _write(tmp_path, {}, [b"kept" * 50])
    committed = dict(writer.committed)
    os.truncate(segments.segment_path(tmp_path, 1), 40)
    with pytest.raises(CorruptStoreError, match="committed"):
        SegmentWriter(tmp_path, committed)


def _together_cases() -> list[blocks.Unencoded]:
    """One of each path encode_together takes: frames for the planes16
    filter, plain zstd (frames, a header), raw (noise), manifests, and an
    empty content, which zstandard's batch call refuses."""
    frames = corpus_bytes(EMRI_10_FRAMES)[-3 * 8192:]
    contents = [
        (Kind.FRAME, frames[:8192], 2),
        (Kind.FRAME, frames[8192:16384], 1),
        (Kind.HEADER, corpus_bytes(EMRI_10_FRAMES)[:4096], 1),
        (Kind.FRAME, os.urandom(4096), 1),
        (Kind.MANIFEST, b'{"v":1,"sop_instance_uid":"1.2.3","size":10}', 1),
        (Kind.FRAME, b"", 1),
        (Kind.MANIFEST, b'{"v":1,"sop_instance_uid":"1.2.4","size":12}', 1),
        (Kind.FRAME, frames[16384:], 2),
    ]
    return [blocks.Unencoded(kind, blocks.digest(content), content, sample)
            for kind, content, sample in contents]


@pytest.mark.parametrize("threads", [1, 2])
def test_blocks_encoded_together_are_the_blocks_encode_makes(threads):
    cases = _together_cases()
    together = blocks.encode_together(cases, compressor=COMPRESSOR,
                                      threads=threads)
    alone = [blocks.encode(c.kind, c.content, compressor=COMPRESSOR,
                           sample_bytes=c.sample_bytes) for c in cases]
    assert [b.codec for b in together] == [
        Codec.PLANES16_ZSTD_PER_PLANE, Codec.ZSTD, Codec.ZSTD, Codec.RAW,
        Codec.ZSTD_RECORD, Codec.RAW, Codec.ZSTD_RECORD,
        Codec.PLANES16_ZSTD_PER_PLANE]
    assert [(b.header, b.payload) for b in together] == \
        [(b.header, b.payload) for b in alone]


class _OneByOne:
    """A compressor without zstandard's batch call, as its cffi backend
    is."""

    def __init__(self, missing: type[Exception]) -> None:
        self.missing = missing

    def compress(self, content) -> bytes:
        return COMPRESSOR.compress(content)

    def multi_compress_to_buffer(self, contents, threads):
        raise self.missing("not in this backend")


@pytest.mark.parametrize("missing", [AttributeError, NotImplementedError])
def test_frames_made_together_without_the_batch_call_are_the_same(missing):
    contents = [c.content for c in _together_cases()]
    assert zstd_frames.compress_together(
        _OneByOne(missing), contents, threads=1) == \
        [COMPRESSOR.compress(c) for c in contents]
    assert zstd_frames.compress_together(COMPRESSOR, contents, 1) == \
        [COMPRESSOR.compress(c) for c in contents]
