"""Reading an instance back into the bytes object returned: the native
file assembly, the per-thread read buffers it goes with, and the hint
that starts a study's disk reads ahead of its decoding."""

from __future__ import annotations

import io
import os
import resource
import struct
import zlib

import pydicom
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from pacsstore import Archive, CorruptStoreError, NewerFormatError
from pacsstore._assemble import FileAssembly, PlanesDecoder
from pacsstore._filters import planes16
from pacsstore.store import blocks, filters
from pacsstore.store.blocks import HEADER_SIZE, Codec
from pacsstore.store.reader import InstanceReader
from pacsstore.store.segments import SegmentReader
from pacsstore.synthetic import write_ct_series
from test_store_support import (CT_SMALL, CT_TS, MR_SMALL, corpus_bytes,
                                frame_codecs,
                                corpus_path)

HTJ2K_CT = "DICOMHTJ2K/htj2k/CT1_JPH"
J2K_CT = CT_TS + "JPEG2000LosslessOnlyTransferSyntax_1.2.840.10008.1.2.4.90.dcm"


# The assembly itself ----------------------------------------------------------

def test_pieces_written_in_order_make_the_file():
    assembly = FileAssembly(7)
    assert bytes(assembly.append(b"abc")) == b"abc"
    assert bytes(assembly.append(memoryview(b"xdefgx")[1:5])) == b"defg"
    assert assembly.filled == 7
    assert assembly.finish() == b"abcdefg"


def test_a_piece_that_does_not_fit_is_refused_and_nothing_is_written():
    assembly = FileAssembly(4)
    assembly.append(b"ab")
    with pytest.raises(OverflowError, match="3 more bytes do not fit: 2 of 4"):
        assembly.append(b"cde")
    assert assembly.filled == 2


def test_an_unfinished_assembly_hands_out_nothing():
    # Its unwritten bytes are whatever the allocator left there.
    assembly = FileAssembly(10)
    assembly.append(b"0123")
    with pytest.raises(ValueError, match="only 4 of 10 bytes are written"):
        assembly.finish()


def test_an_assembly_is_finished_once():
    assembly = FileAssembly(2)
    assembly.append(b"ok")
    assert assembly.finish() == b"ok"
    with pytest.raises(ValueError, match="already finished"):
        assembly.finish()
    with pytest.raises(ValueError, match="already finished"):
        assembly.append(b"")


def test_a_negative_size_is_refused():
    with pytest.raises(ValueError, match="negative"):
        FileAssembly(-1)


# Reads through it --------------------------------------------------------------

def _uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data),
                               stop_before_pixels=True).SOPInstanceUID)


# A planes16 block decoded in one native call ----------------------------------

_PLANES = zstandard.ZstdCompressor(level=3, write_content_size=True)


def _planes_block(content: bytes, payload: bytes | None = None
                  ) -> tuple[blocks.BlockHeader, bytes, bytes]:
    """A planes16 block of ``content``; with ``payload``, the same block
    header (name and content length) over that payload, its stored
    length and CRC32 made to match it: damage the CRC cannot see."""
    # Sealed as planes16 whether or not zstd saves anything, so that
    # incompressible content is a planes16 block as well.
    coded = blocks.Coded(Codec.PLANES16_ZSTD, _PLANES.compress(
        planes16(content)))
    block = blocks.seal(blocks.Kind.FRAME, blocks.digest(content),
                        len(content), coded)
    head, payload = block.header, payload or block.payload
    head = head[:48] + struct.pack("<Q", len(payload)) + head[56:60]
    head += struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))
    return blocks.parse_header(head, "test"), head, payload


def _decoded_onto(header, head, payload, where="segment 3 offset 99"):
    assembly = FileAssembly(header.raw_length + 2)
    assembly.append(b"<")
    try:
        blocks.decode_onto(header, head, payload, where, assembly)
    except CorruptStoreError:
        assert assembly.filled == 1, "a failed block counted as written"
        raise
    assembly.append(b">")
    return assembly.finish()[1:-1]


def _ct_pixels() -> bytes:
    return corpus_bytes(CT_SMALL)[-128 * 128 * 2:]


@given(st.binary(min_size=2, max_size=5000).filter(lambda b: len(b) % 2 == 0))
@settings(max_examples=60, deadline=None)
def test_any_planes16_block_decodes_onto_its_content(content):
    header, head, payload = _planes_block(content)
    assert _decoded_onto(header, head, payload) == content
    assert blocks.decode(header, head, payload, "test") == content


@given(st.binary(min_size=2, max_size=70_000).filter(
    lambda b: len(b) % 2 == 0))
@settings(max_examples=40, deadline=None)
def test_any_per_plane_block_decodes_onto_its_content(content):
    # Three zstd frames, one a plane, the middle one cut into blocks:
    # the native decoder reads across them as the Python one does.
    coded = blocks.Coded(Codec.PLANES16_ZSTD_PER_PLANE,
                         blocks.planes16_encoder(3).encode(content))
    block = blocks.seal(blocks.Kind.FRAME, blocks.digest(content),
                        len(content), coded)
    header = blocks.parse_header(block.header, "test")
    assert _decoded_onto(header, block.header, block.payload) == content
    assert blocks.decode(header, block.header, block.payload,
                         "test") == content


def test_an_intact_payload_of_other_samples_fails_the_digest_in_place():
    # A zstd frame with a right CRC32 and the right length whose samples
    # are not the block's (a decoder fault, or a payload written for
    # another block): the SHA-256 of the bytes written catches it.
    pixels = _ct_pixels()
    other = bytearray(pixels)
    other[len(other) // 2] ^= 0x40
    wrong = _PLANES.compress(planes16(bytes(other)))
    header, head, payload = _planes_block(pixels, wrong)
    for read in (_decoded_onto,
                 lambda *block: blocks.decode(*block, "segment 3 offset 99")):
        with pytest.raises(CorruptStoreError,
                           match="segment 3 offset 99 does not match its "
                                 "SHA-256"):
            read(header, head, payload)


@pytest.mark.parametrize("extra, says", [
    (b"\0" * 4096, "decompresses to more than {length} bytes of filtered"),
    (b"\0", "decompresses to more than {length} bytes of filtered"),
    (None, "decompresses to {short} bytes of filtered samples; "
           "{raw} content bytes make {length}"),
])
def test_planes_of_the_wrong_length_are_refused_alike(extra, says):
    pixels = _ct_pixels()
    planes = planes16(pixels)
    changed = planes[:-10] if extra is None else planes + extra
    header, head, payload = _planes_block(pixels, _PLANES.compress(changed))
    expected = says.format(length=len(planes), short=len(planes) - 10,
                           raw=len(pixels))
    for read in (_decoded_onto,
                 lambda *block: blocks.decode(*block, "segment 3 offset 99")):
        with pytest.raises(CorruptStoreError, match=expected):
            read(header, head, payload)


def test_a_payload_that_is_not_zstd_fails_alike_and_the_decoder_goes_on():
    pixels = _ct_pixels()
    good = _planes_block(pixels)
    header, head, payload = _planes_block(pixels, bytes(reversed(good[2])))
    with pytest.raises(CorruptStoreError,
                       match="segment 3 offset 99 does not decompress: "):
        _decoded_onto(header, head, payload)
    with pytest.raises(CorruptStoreError,
                       match="segment 3 offset 99 does not decompress: "):
        blocks.decode(header, head, payload, "segment 3 offset 99")
    assert _decoded_onto(*good) == pixels


def test_a_flipped_payload_byte_fails_the_crc_with_the_same_message():
    header, head, payload = _planes_block(_ct_pixels())
    flipped = bytearray(payload)
    flipped[7] ^= 0x01
    messages = []
    for read in (_decoded_onto,
                 lambda *block: blocks.decode(*block, "segment 3 offset 99")):
        with pytest.raises(CorruptStoreError, match="fails its CRC32") as e:
            read(header, head, bytes(flipped))
        messages.append(str(e.value))
    assert messages[0] == messages[1]
    with pytest.raises(CorruptStoreError, match="is truncated"):
        _decoded_onto(header, head, payload[:-1])


def test_the_native_call_checks_what_it_is_given():
    header, head, payload = _planes_block(_ct_pixels())
    assembly = FileAssembly(header.raw_length)
    decoder = PlanesDecoder()
    with pytest.raises(ValueError, match="32-byte digest"):
        assembly.append_planes16_block(
            decoder, payload, 0, header.crc32, header.raw_length,
            header.digest[:31], bytearray(header.raw_length + 1))
    with pytest.raises(OverflowError):
        assembly.append_planes16_block(
            decoder, payload, 0, header.crc32, header.raw_length + 2,
            header.digest,
            bytearray(filters.planes16_length(header.raw_length + 2) + 1))
    assert assembly.filled == 0


def test_raw_blocks_do_not_share_the_read_buffer(tmp_path):
    # HTJ2K and JPEG 2000 codestreams are stored raw: their content is the
    # payload read into the thread's reused buffer, so what is returned
    # must be a copy.
    first, second = corpus_bytes(HTJ2K_CT), corpus_bytes(J2K_CT)
    with Archive(tmp_path / "store") as archive:
        uids = [archive.store(first).sop_instance_uid,
                archive.store(second).sop_instance_uid]
        assert frame_codecs(archive, uids[0]) == [Codec.RAW]
        assert frame_codecs(archive, uids[1]) == [Codec.RAW]
        frame = archive.frame(uids[0], 0)
        expected = bytes(frame)
        assert archive.frame(uids[1], 0) != expected
        assert frame == expected
        assert archive.get(uids[0]) == first


def test_a_frame_block_longer_than_its_one_cut_is_corruption(tmp_path):
    data = corpus_bytes(CT_SMALL)
    with Archive(tmp_path / "store") as archive:
        uid = archive.store(data).sop_instance_uid
        reader = archive._reader(uid)
        reader.record = dict(reader.record)
        file_offset, length, block, block_offset = reader.record["cuts"][0]
        reader.record["cuts"] = [[file_offset, length - 2, block,
                                  block_offset]]
        with pytest.raises(CorruptStoreError,
                           match=f"holds {length} bytes; its one cut in "
                                 f"the file takes {length - 2}"):
            reader.read_all()


def test_a_given_assembly_must_be_empty_and_of_the_record_size(tmp_path):
    data = corpus_bytes(MR_SMALL)
    with Archive(tmp_path / "store") as archive:
        uid = archive.store(data).sop_instance_uid
        with pytest.raises(ValueError, match="cannot hold a fresh read"):
            archive._reader(uid).read_all(FileAssembly(len(data) + 1))
        assert archive._reader(uid).read_all(FileAssembly(len(data))) == data


# Reading a study ahead from disk ----------------------------------------------

def _ct_series(tmp_path, count: int) -> list[bytes]:
    folder = tmp_path / "ct"
    write_ct_series(folder, count, seed=3, rows=64, columns=64)
    return [p.read_bytes() for p in sorted(folder.rglob("*.dcm"))]


def test_get_many_asks_the_kernel_for_each_block_it_will_read(
        tmp_path, monkeypatch):
    files = _ct_series(tmp_path, 6)
    hinted: list[tuple[int, int, int]] = []
    will_need = SegmentReader.will_need

    def recorded(self, number, offset, length):
        hinted.append((number, offset, length))
        will_need(self, number, offset, length)

    with Archive(tmp_path / "store") as archive:
        uids = [r.sop_instance_uid for r in archive.store_many(files)]
        monkeypatch.setattr(SegmentReader, "will_need", recorded)
        assert list(archive.get_many(uids)) == files
        expected = set()
        for uid in uids:
            reader = InstanceReader(archive._index, archive._segments, uid)
            expected |= {(e.segment, e.offset, HEADER_SIZE + e.stored_length)
                         for e in reader._entries.values()}
    assert set(hinted) == expected


def test_get_many_from_a_cold_cache_reads_the_same_bytes(tmp_path):
    files = _ct_series(tmp_path, 8)
    store = tmp_path / "store"
    with Archive(store) as archive:
        uids = [r.sop_instance_uid for r in archive.store_many(files)]
    for path in store.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    with Archive(store, readonly=True) as archive:
        assert list(archive.get_many(uids)) == files


def test_the_corpus_ct_round_trips_through_get_many(tmp_path):
    data = corpus_path(CT_SMALL).read_bytes()
    with Archive(tmp_path / "store") as archive:
        uid = archive.store(data).sop_instance_uid
        assert uid == _uid(data)
        assert list(archive.get_many([uid, uid])) == [data, data]


def _stored_slice_block(tmp_path, path):
    """Store the slice at ``path`` in tmp_path/store: its UID, the index
    entry of its frame block, and the segment file that holds it."""
    with Archive(tmp_path / "store") as archive:
        uid = archive.store(path).sop_instance_uid
        [name] = archive.record(uid)["blocks"]
        with archive._index.read() as txn:
            entry = archive._index.block(txn, bytes.fromhex(name))
    segment = tmp_path / "store" / "segments" / f"{entry.segment:08d}.seg"
    return uid, entry, segment


# (byte of the block header, bit flipped): the content length is bytes
# 40-47, so these add 4 GiB and 1 TiB to it.
@pytest.mark.parametrize("at, flip", [(44, 0x01), (45, 0x01)])
def test_a_damaged_content_length_sizes_no_allocation(tmp_path, at, flip):
    """A flipped bit in a planes16 block's content length (a header field
    the CRC32 covers) fails the read with CorruptStoreError before the
    length sizes a buffer: it used to allocate the 4 GiB, or fail with a
    bare MemoryError for 1 TiB."""
    path = write_ct_series(tmp_path / "ct", 1, seed=31)[0]
    data = path.read_bytes()
    uid, entry, segment = _stored_slice_block(tmp_path, path)
    with open(segment, "r+b") as handle:
        handle.seek(entry.offset + at)
        value = handle.read(1)[0]
        handle.seek(entry.offset + at)
        handle.write(bytes([value ^ flip]))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with Archive(tmp_path / "store", readonly=True) as archive:
        with pytest.raises(CorruptStoreError):
            archive.get(uid)
        with pytest.raises(CorruptStoreError):
            list(archive.get_many([uid]))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - \
        peak_before
    assert grown_kib < 512 << 10, f"the peak grew by {grown_kib} KiB"
    with open(segment, "r+b") as handle:
        handle.seek(entry.offset + at)
        handle.write(bytes([value]))
    with Archive(tmp_path / "store", readonly=True) as archive:
        assert archive.get(uid) == data


# Content lengths a planes16 block header may state with its CRC32 made
# to match (damage the CRC cannot see): 8 GiB and 1 TiB.
@pytest.mark.parametrize("stated", [1 << 33, 1 << 40])
def test_a_stated_length_the_payload_cannot_hold_sizes_no_allocation(
        tmp_path, stated):
    """The reads that decode a block outside an assembly (frame, verify,
    rebuild) used to zero-fill a buffer of the stated length before
    finding it wrong (8.4 GB of memory for 8 GiB), or raise a bare
    MemoryError. A payload cannot decompress to more than zstd's largest
    expansion of it, so such a length is refused first."""
    path = write_ct_series(tmp_path / "ct", 1, seed=33)[0]
    data = path.read_bytes()
    uid, entry, segment = _stored_slice_block(tmp_path, path)
    with open(segment, "r+b") as handle:
        handle.seek(entry.offset)
        head = bytearray(handle.read(HEADER_SIZE))
        payload = handle.read(entry.stored_length)
        original = bytes(head)
        struct.pack_into("<Q", head, 40, stated)
        struct.pack_into("<I", head, 60, zlib.crc32(
            payload, zlib.crc32(bytes(head[:60]))))
        handle.seek(entry.offset)
        handle.write(head)
    says = (f"states {stated} content bytes, more than its "
            f"{len(payload)}-byte payload can decompress to")
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    header = blocks.parse_header(bytes(head), "test")
    with pytest.raises(CorruptStoreError, match=says):
        blocks.decode(header, bytes(head), payload, "test")
    with Archive(tmp_path / "store", readonly=True) as archive:
        with pytest.raises(CorruptStoreError, match=says):
            archive.frame(uid, 0)
        report = archive.verify()
        assert not report.ok
        assert any(says in p.message for p in report.problems)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - \
        peak_before
    assert grown_kib < 512 << 10, f"the peak grew by {grown_kib} KiB"
    with open(segment, "r+b") as handle:
        handle.seek(entry.offset)
        handle.write(original)
    with Archive(tmp_path / "store", readonly=True) as archive:
        assert archive.get(uid) == data
        assert archive.verify().ok


@pytest.mark.parametrize("extra", [
    b"\x28\xb5\x2f\xfd",                          # a zstd magic, no frame
    struct.pack("<II", 0x184D2A50, 0xFFFFFFF0),     # a skippable frame that
])                                                  # runs past the payload
def test_both_read_paths_refuse_bytes_after_the_planes(extra):
    """The Python reader used to stop where the planes were complete and
    take the block; the native one refuses what follows. A block now
    reads one way on both."""
    content = bytes(b for x in range(4800) for b in (x % 251, 0))
    payload = blocks.planes16_encoder(3).encode(content) + extra
    block = blocks.seal(blocks.Kind.FRAME, blocks.digest(content),
                        len(content),
                        blocks.Coded(Codec.PLANES16_ZSTD_PER_PLANE, payload))
    head = block.header
    header = blocks.parse_header(head, "test")
    for read in (_decoded_onto,
                 lambda *block: blocks.decode(*block, "segment 3 offset 99")):
        with pytest.raises(CorruptStoreError,
                           match="segment 3 offset 99 does not decompress"):
            read(header, head, payload)


def test_a_damaged_version_byte_is_damage_and_a_newer_block_is_newer(
        tmp_path):
    """The version byte is read before the CRC32 can be checked: a
    version past this reader's is a newer writer's block only when the
    block's CRC32 holds, and damage otherwise."""
    path = write_ct_series(tmp_path / "ct", 1, seed=32)[0]
    uid, entry, segment = _stored_slice_block(tmp_path, path)
    with open(segment, "r+b") as handle:
        handle.seek(entry.offset)
        head = bytearray(handle.read(HEADER_SIZE))
        payload = handle.read(entry.stored_length)
        head[4] = blocks.BLOCK_FORMAT_VERSION + 1
        handle.seek(entry.offset)
        handle.write(head)
    with Archive(tmp_path / "store", readonly=True) as archive:
        for read in (archive.get, lambda u: list(archive.get_many([u]))):
            with pytest.raises(CorruptStoreError, match="fails its CRC32"):
                read(uid)
    # The same version with the CRC32 a newer writer would have written.
    head[60:64] = struct.pack("<I", zlib.crc32(payload, zlib.crc32(
        bytes(head[:60]))))
    with open(segment, "r+b") as handle:
        handle.seek(entry.offset)
        handle.write(head)
    with Archive(tmp_path / "store", readonly=True) as archive:
        with pytest.raises(NewerFormatError, match="format version"):
            archive.get(uid)
