"""Reading an instance back into the bytes object returned: the native
file assembly, the per-thread read buffers it goes with, and the hint
that starts a study's disk reads ahead of its decoding."""

from __future__ import annotations

import io
import os

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pacsstore import Archive, CorruptStoreError
from pacsstore._assemble import FileAssembly
from pacsstore._filters import planes16, unplanes16
from pacsstore.store import blocks
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


@settings(max_examples=200)
@given(st.binary(max_size=4099), st.binary(max_size=9))
def test_unplanes16_in_place_equals_the_filter_inverse(content, prefix):
    assembly = FileAssembly(len(prefix) + len(content))
    assembly.append(prefix)
    written = assembly.append_unplanes16(planes16(content), len(content))
    assert bytes(written) == content
    assert assembly.finish() == prefix + unplanes16(planes16(content),
                                                    len(content))


def test_a_piece_that_does_not_fit_is_refused_and_nothing_is_written():
    assembly = FileAssembly(4)
    assembly.append(b"ab")
    with pytest.raises(OverflowError, match="3 more bytes do not fit: 2 of 4"):
        assembly.append(b"cde")
    with pytest.raises(OverflowError):
        assembly.append_unplanes16(planes16(b"cdef"), 4)
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


def test_filtered_samples_of_the_wrong_length_are_refused():
    assembly = FileAssembly(8)
    with pytest.raises(ValueError, match="must be 8 bytes long, not 7"):
        assembly.append_unplanes16(b"\0" * 7, 8)
    with pytest.raises(ValueError, match="negative"):
        FileAssembly(-1)


# Reads through it --------------------------------------------------------------

def _uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data),
                               stop_before_pixels=True).SOPInstanceUID)


def test_a_filtered_frame_decoded_wrongly_is_caught_in_place(
        tmp_path, monkeypatch):
    # The SHA-256 is taken over the bytes where they were written: filtered
    # samples that decompress wrongly (a decoder fault the CRC32 of the
    # stored payload cannot see) fail the read instead of being returned.
    data = corpus_bytes(CT_SMALL)
    with Archive(tmp_path / "store") as archive:
        uid = archive.store(data).sop_instance_uid
        assert frame_codecs(archive, uid) == [Codec.PLANES16_ZSTD]
        assert archive.get(uid) == data
        unzstd = blocks._unzstd_planes

        def damaged(header, payload, where):
            filtered = unzstd(header, payload, where)
            wrong = bytearray(filtered)
            wrong[len(wrong) // 2] ^= 0x40
            return memoryview(wrong)

        monkeypatch.setattr(blocks, "_unzstd_planes", damaged)
        with pytest.raises(CorruptStoreError,
                           match="does not match its SHA-256"):
            archive.get(uid)
        with pytest.raises(CorruptStoreError,
                           match="does not match its SHA-256"):
            list(archive.get_many([uid]))


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
