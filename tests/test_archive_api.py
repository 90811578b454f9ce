"""The Archive API: storing the three kinds of input, reading back in the
four ways, find, stats, and the errors of each call."""

from __future__ import annotations

import hashlib
import io
import threading
import time

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames

from pacsstore import (
    Archive,
    ArchiveClosedError,
    NotAStoreError,
    NotFoundError,
    NotStorableError,
    QueryError,
    StoreConfigError,
)
from pacsstore import parsing
from pacsstore.errors import FrameDecodeError, MalformedDicomError
from test_store_support import (
    BITPACKED_SEG,
    CT_SMALL,
    DEFLATED,
    DICOMDIR,
    EMRI_10_FRAMES,
    JPEG_FRAGMENTED,
    MR_SMALL,
    RLE_2_FRAMES,
    corpus_bytes,
    corpus_path,
)

RT_PLAN = "pydicom/test_files/rtplan.dcm"


@pytest.fixture
def archive(tmp_path):
    with Archive(tmp_path / "store") as opened:
        yield opened


def test_archive_store_bytes_path_and_dataset(archive):
    data = corpus_bytes(CT_SMALL)
    from_bytes = archive.store(data)
    assert from_bytes.status == "stored"
    assert from_bytes.size == len(data)
    assert from_bytes.frames == 1
    assert archive.store(corpus_path(CT_SMALL)).status == "duplicate"
    ds = pydicom.dcmread(corpus_path(MR_SMALL))
    from_dataset = archive.store(ds)
    assert from_dataset.sop_instance_uid == ds.SOPInstanceUID
    assert from_dataset.patient_id == ds.PatientID
    assert archive.dataset(ds.SOPInstanceUID).PatientName == ds.PatientName


def test_archive_get_open_and_dataset_agree(archive):
    data = corpus_bytes(EMRI_10_FRAMES)
    uid = archive.store(data).sop_instance_uid
    assert archive.get(uid) == data
    with archive.open(uid) as stream:
        pieces = [stream.read(1000) for _ in range(len(data) // 1000 + 2)]
    assert b"".join(pieces) == data
    ds = archive.dataset(uid)
    assert ds.SOPInstanceUID == uid
    assert ds.NumberOfFrames == 10


def test_archive_contains_and_not_found(archive):
    uid = archive.store(corpus_bytes(CT_SMALL)).sop_instance_uid
    assert uid in archive
    assert "1.2.3.4.5" not in archive
    with pytest.raises(NotFoundError, match="1.2.3.4.5"):
        archive.get("1.2.3.4.5")
    with pytest.raises(NotFoundError):
        archive.frame(uid, 1)


def test_archive_native_frames_are_the_pixel_slices(archive):
    data = corpus_bytes(EMRI_10_FRAMES)
    uid = archive.store(data).sop_instance_uid
    ds = pydicom.dcmread(io.BytesIO(data))
    size = ds.Rows * ds.Columns * ds.BitsAllocated // 8
    for index in range(10):
        expected = ds.PixelData[index * size:(index + 1) * size]
        assert archive.frame(uid, index) == expected
    decoded = archive.frame(uid, 3, decode=True)
    np.testing.assert_array_equal(decoded, ds.pixel_array[3])


@pytest.mark.parametrize("relpath", [RLE_2_FRAMES, JPEG_FRAGMENTED])
def test_archive_encapsulated_frames_join_their_fragments(archive, relpath):
    data = corpus_bytes(relpath)
    uid = archive.store(data).sop_instance_uid
    ds = pydicom.dcmread(io.BytesIO(data))
    expected = list(generate_frames(ds.PixelData,
                                    number_of_frames=ds.NumberOfFrames))
    assert [archive.frame(uid, i) for i in range(len(expected))] == expected
    np.testing.assert_array_equal(archive.frame(uid, 1, decode=True),
                                  ds.pixel_array[1])


def test_archive_bitpacked_frames_decode_like_pydicom(archive):
    data = corpus_bytes(BITPACKED_SEG)
    result = archive.store(data)
    assert archive.record(result.sop_instance_uid)["layout"] == "bitpacked"
    ds = pydicom.dcmread(io.BytesIO(data))
    for index in range(ds.NumberOfFrames):
        np.testing.assert_array_equal(
            archive.frame(result.sop_instance_uid, index, decode=True),
            ds.pixel_array[index])
    assert archive.get(result.sop_instance_uid) == data


def test_archive_deflated_instance_is_one_block_and_frames_inflate(archive):
    data = corpus_bytes(DEFLATED)
    uid = archive.store(data).sop_instance_uid
    record = archive.record(uid)
    assert record["layout"] == "whole" and record["blocks"] == []
    ds = pydicom.dcmread(io.BytesIO(data))
    assert archive.frame(uid, 0) == ds.PixelData
    np.testing.assert_array_equal(archive.frame(uid, 0, decode=True),
                                  ds.pixel_array)


def test_archive_refuses_dicomdir_and_garbage(archive):
    empty = archive.stats()
    with pytest.raises(NotStorableError, match="DICOMDIR"):
        archive.store(corpus_path(DICOMDIR))
    # Not DICOM at all: malformed, an input error the caller can catch
    # as ValueError.
    with pytest.raises(MalformedDicomError, match="not a DICOM file"):
        archive.store(b"hello world" * 10)
    with pytest.raises(NotStorableError, match="cannot read"):
        archive.store(corpus_path(CT_SMALL).parent / "no-such-file.dcm")
    assert archive.stats() == empty
    assert empty.instances == 0 and empty.blocks == 0


def test_archive_find_levels_and_wildcards(archive):
    for relpath in (CT_SMALL, MR_SMALL, EMRI_10_FRAMES):
        archive.store(corpus_path(relpath))
    ct = pydicom.dcmread(corpus_path(CT_SMALL), stop_before_pixels=True)
    studies = archive.find("study", StudyInstanceUID=ct.StudyInstanceUID)
    assert len(studies) == 1
    assert studies[0]["PatientID"] == ct.PatientID
    assert studies[0]["ModalitiesInStudy"] == ["CT"]
    assert studies[0]["NumberOfStudyRelatedInstances"] == 1
    series = archive.find("series", Modality="MR")
    assert {s["Modality"] for s in series} == {"MR"}
    assert len(series) == 2
    prefix = ct.PatientID[:2] + "*"
    patients = archive.find("patient", PatientID=prefix)
    assert ct.PatientID in {p["PatientID"] for p in patients}
    instances = archive.find("instance", Modality="CT")
    assert [i["SOPInstanceUID"] for i in instances] == [ct.SOPInstanceUID]
    assert archive.find("instance", SOPInstanceUID="9.9.9") == []
    assert len(archive.find("instance")) == 3


def test_archive_find_rejects_unknown_level_and_keyword(archive):
    with pytest.raises(QueryError, match="level"):
        archive.find("image")
    with pytest.raises(QueryError, match="NotAKeyword"):
        archive.find("study", NotAKeyword="x")


def test_archive_stats_count_what_was_stored(archive):
    sizes = 0
    for relpath in (CT_SMALL, MR_SMALL):
        sizes += archive.store(corpus_path(relpath)).size
    stats = archive.stats()
    assert (stats.patients, stats.studies, stats.series,
            stats.instances) == (2, 2, 2, 2)
    assert stats.logical_bytes == sizes
    assert stats.blocks == 4  # a header block and one frame each
    assert stats.segments == 1
    segment = next((archive.path / "segments").glob("*.seg"))
    assert stats.stored_bytes == segment.stat().st_size


def test_archive_refuses_a_directory_that_is_not_a_store(tmp_path):
    (tmp_path / "other.txt").write_text("not a store")
    with pytest.raises(NotAStoreError):
        Archive(tmp_path)
    with pytest.raises(NotAStoreError):
        Archive(tmp_path / "absent", readonly=True)


def test_archive_rejects_an_unknown_policy(tmp_path):
    with pytest.raises(StoreConfigError, match="on_conflict"):
        Archive(tmp_path / "store", on_conflict="overwrite")


def test_archive_readonly_refuses_to_store(tmp_path):
    with Archive(tmp_path / "store") as writer:
        uid = writer.store(corpus_path(CT_SMALL)).sop_instance_uid
    with Archive(tmp_path / "store", readonly=True) as reader:
        assert hashlib.sha256(reader.get(uid)).digest() == hashlib.sha256(
            corpus_bytes(CT_SMALL)).digest()
        with pytest.raises(StoreConfigError, match="read-only"):
            reader.store(corpus_bytes(MR_SMALL))


def test_archive_index_map_grows_when_full(tmp_path):
    with Archive(tmp_path / "s", map_size=32 << 10) as archive:
        for relpath in (CT_SMALL, MR_SMALL, EMRI_10_FRAMES, RLE_2_FRAMES,
                        JPEG_FRAGMENTED):
            archive.store(corpus_path(relpath))
        assert archive._index.env.info()["map_size"] > 32 << 10
        assert archive.stats().instances == 5


def test_archive_full_map_is_out_of_space_and_names_the_setting(tmp_path):
    from pacsstore import OutOfSpaceError
    ds = pydicom.dcmread(corpus_path(CT_SMALL))
    acknowledged = []
    with Archive(tmp_path / "s", map_size=128 << 10,
                 max_map_size=128 << 10) as archive:
        with pytest.raises(OutOfSpaceError, match="max_map_size"):
            for n in range(1, 2000):
                ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.9.{n}"
                archive.store(ds)
                acknowledged.append(ds.SOPInstanceUID)
        assert acknowledged
        stats = archive.stats()
        assert stats.instances == len(acknowledged)
        sizes = sum(p.stat().st_size
                    for p in (archive.path / "segments").glob("*.seg"))
        assert stats.stored_bytes == sizes  # the failed batch left nothing
        for uid in acknowledged:
            assert archive.dataset(uid).SOPInstanceUID == uid


def test_archive_memoryview_of_wider_items_is_stored_byte_exact(archive):
    # A memoryview counts items, not bytes: cast("H") halves len().
    data = corpus_bytes(EMRI_10_FRAMES)
    result = archive.store(memoryview(data).cast("H"))
    assert result.size == len(data)
    assert archive.get(result.sop_instance_uid) == data
    # Without pixel data the whole file is one block, and its recorded
    # size decides whether it reads back at all.
    plan = corpus_bytes(RT_PLAN)
    assert len(plan) % 4 == 0
    result = archive.store(memoryview(np.frombuffer(plan, np.uint32)))
    assert result.size == len(plan)
    assert archive.get(result.sop_instance_uid) == plan


def test_archive_non_contiguous_memoryview_is_not_storable(archive):
    with pytest.raises(NotStorableError, match="contiguous"):
        archive.store(memoryview(corpus_bytes(CT_SMALL))[::2])


def test_archive_truncated_bitpacked_value_is_kept_like_pydicom(archive):
    # pydicom reads a file cut inside its 1-bit pixel data; so must the
    # archive, with the frames that are complete.
    data = corpus_bytes(BITPACKED_SEG)[:-5]
    result = archive.store(data)
    assert archive.get(result.sop_instance_uid) == data
    ds = pydicom.dcmread(io.BytesIO(data))
    frame_bits = ds.Rows * ds.Columns
    assert result.frames == len(ds.PixelData) * 8 // frame_bits
    assert result.frames < ds.NumberOfFrames
    np.testing.assert_array_equal(
        archive.frame(result.sop_instance_uid, 0, decode=True),
        pydicom.dcmread(corpus_path(BITPACKED_SEG)).pixel_array[0])


def test_archive_calls_after_close_raise_archive_closed(tmp_path):
    archive = Archive(tmp_path / "s")
    uid = archive.store(corpus_bytes(CT_SMALL)).sop_instance_uid
    stream = archive.open(uid)
    archive.close()
    calls = [lambda: archive.get(uid), lambda: archive.frame(uid, 0),
             archive.stats, lambda: archive.find("study"),
             lambda: archive.record(uid), lambda: uid in archive,
             lambda: archive.store(corpus_bytes(MR_SMALL)),
             lambda: archive.store_many([corpus_bytes(MR_SMALL)]),
             stream.read]
    for call in calls:
        with pytest.raises(ArchiveClosedError, match="is closed"):
            call()
    archive.close()  # twice is harmless
    with Archive(tmp_path / "s", readonly=True) as reopened:
        assert reopened.stats().instances == 1


def test_archive_close_racing_stores_fails_them_with_archive_closed(
        tmp_path):
    ds = pydicom.dcmread(corpus_path(MR_SMALL))
    items = []
    for n in range(160):
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.31.{n}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        items.append(out.getvalue())
    archive = Archive(tmp_path / "s")
    acknowledged, failures = [], []
    started = threading.Barrier(9)

    def store(chunk):
        started.wait()
        for data in chunk:
            try:
                acknowledged.append(archive.store(data).sop_instance_uid)
            except Exception as exc:  # noqa: BLE001 - collected
                failures.append(exc)

    threads = [threading.Thread(target=store, args=(items[k::8],))
               for k in range(8)]
    for thread in threads:
        thread.start()
    started.wait()
    time.sleep(0.05)
    archive.close()
    for thread in threads:
        thread.join()
    assert failures, "close() came too late to race any store"
    assert all(isinstance(exc, ArchiveClosedError) for exc in failures), \
        {type(exc).__name__ + ": " + str(exc) for exc in failures}
    with Archive(tmp_path / "s") as reopened:
        assert all(uid in reopened for uid in acknowledged)
        assert reopened.stats().instances == len(acknowledged)


# Its file meta names 1.2.3.4 in (0002,0003); its dataset names nothing.
META_UID_ONLY = "libdicom/generated_encapsulated_defined_bot_1_to_1.dcm"
STRAY_ITEM_TAG = "fo-dicom/TestData/GH364.dcm"   # (FFFE,E000) at top level
BIG_ENDIAN_OW_8BIT = "pydicom-data/OBXXXX1A_expb.dcm"
RLE_NOT_DECODABLE = "pydicom-data/liver_rle.dcm"


def _meta_and_dataset(data: bytes) -> tuple[bytes, bytes]:
    offset = parsing.read_header(data).result.dataset_offset
    return data[:offset], data[offset:]


def _not_instances() -> dict[str, bytes]:
    """Inputs whose file meta names CT_small's UID in (0002,0003) while
    the dataset has no (0008,0018) of its own."""
    ct = corpus_bytes(CT_SMALL)
    meta, _ = _meta_and_dataset(ct)
    empty = io.BytesIO()
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dcmread(io.BytesIO(ct)).file_meta
    ds.save_as(empty, enforce_file_format=True)
    return {"empty dataset": empty.getvalue(),
            "meta and zeros": meta + b"\0" * 5000,
            "meta and noise": meta + np.random.default_rng(5).bytes(2000),
            "first 400 bytes": ct[:400]}


@pytest.mark.parametrize("name", ["empty dataset", "meta and zeros",
                                  "meta and noise", "first 400 bytes"])
def test_archive_refuses_a_dataset_without_its_own_sop_instance_uid(
        archive, name):
    with pytest.raises(NotStorableError,
                       match=r"no SOP Instance UID \(0008,0018\)"):
        archive.store(_not_instances()[name])
    with pytest.raises(NotStorableError,
                       match=r"names 1\.2\.3\.4 in \(0002,0003\)"):
        archive.store(corpus_path(META_UID_ONLY))
    assert archive.stats().instances == 0
    # Nothing was filed under the meta's UID: the real file is not kept
    # out under the default reject policy.
    assert archive.store(corpus_bytes(CT_SMALL)).status == "stored"


@pytest.mark.parametrize("data, found", [
    (b"", "the input is empty"),
    (b"# pacsstore\n\nA DICOM archive.\n", "'# pacsst'"),
    (np.random.default_rng(3).bytes(4096), "offset 0"),
])
def test_archive_input_that_is_not_dicom_says_so(archive, data, found):
    with pytest.raises(MalformedDicomError) as caught:
        archive.store(data)
    assert "not a DICOM file" in str(caught.value)
    assert found in str(caught.value)
    assert "SOP Instance UID" not in str(caught.value)


def test_archive_on_a_regular_file_is_not_a_store(tmp_path):
    path = tmp_path / "file.dcm"
    path.write_bytes(corpus_bytes(CT_SMALL))
    for readonly in (False, True):
        with pytest.raises(NotAStoreError, match="file.dcm is a file"):
            Archive(path, readonly=readonly)
    with pytest.raises(NotAStoreError, match="file.dcm"):
        Archive(path / "store")


@pytest.mark.parametrize("uid", [None, 123, b"1.2.3"])
def test_archive_reads_want_a_uid_string(archive, uid):
    calls = [archive.get, archive.open, archive.dataset, archive.record,
             lambda u: archive.frame(u, 0)]
    for call in calls:
        with pytest.raises(QueryError, match="SOP Instance UID string"):
            call(uid)


@pytest.mark.parametrize("index", [True, False, 1.0, "0", None])
def test_archive_frame_index_must_be_an_integer(archive, index):
    uid = archive.store(corpus_bytes(EMRI_10_FRAMES)).sop_instance_uid
    with pytest.raises(QueryError, match="frame index is an integer"):
        archive.frame(uid, index)
    assert archive.frame(uid, np.int64(1)) == archive.frame(uid, 1)


def test_archive_frame_with_a_stray_item_tag_decodes_like_pydicom(archive):
    uid = archive.store(corpus_path(STRAY_ITEM_TAG)).sop_instance_uid
    expected = pydicom.dcmread(corpus_path(STRAY_ITEM_TAG)).pixel_array
    np.testing.assert_array_equal(archive.frame(uid, 0, decode=True),
                                  expected)


def test_archive_big_endian_ow_frame_decodes_like_pydicom(archive):
    uid = archive.store(corpus_path(BIG_ENDIAN_OW_8BIT)).sop_instance_uid
    expected = pydicom.dcmread(corpus_path(BIG_ENDIAN_OW_8BIT)).pixel_array
    np.testing.assert_array_equal(archive.frame(uid, 0, decode=True),
                                  expected)


def test_archive_frame_decoder_failure_names_uid_frame_and_syntax(archive):
    uid = archive.store(corpus_path(RLE_NOT_DECODABLE)).sop_instance_uid
    with pytest.raises(FrameDecodeError) as caught:
        archive.frame(uid, 0, decode=True)
    message = str(caught.value)
    assert f"frame 0 of instance {uid}" in message
    assert "1.2.840.10008.1.2.5" in message


def test_archive_frame_decoder_exception_of_any_kind_is_wrapped(
        archive, monkeypatch):

    def broken(self):
        raise KeyError("codec state")

    uid = archive.store(corpus_bytes(CT_SMALL)).sop_instance_uid
    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(broken))
    with pytest.raises(FrameDecodeError, match="KeyError: 'codec state'"):
        archive.frame(uid, 0, decode=True)


@pytest.mark.parametrize("level", [0, 23, -1, 2.5, "3", True, None])
def test_a_compression_level_zstd_lacks_is_refused_at_open(tmp_path, level):
    """Refused by Archive() itself, naming the parameter, before the store
    is created; not by zstandard at the first store."""
    store = tmp_path / "store"
    with pytest.raises(StoreConfigError, match="compression_level is a zstd "
                                               "level, a whole number from 1 "
                                               "to 22"):
        Archive(store, compression_level=level)
    assert not store.exists()


@pytest.mark.parametrize("level", [1, 22])
def test_the_compression_levels_at_either_end_store_and_read(tmp_path, level):
    data = corpus_bytes(CT_SMALL)
    with Archive(tmp_path / "store", compression_level=level) as archive:
        uid = archive.store(data).sop_instance_uid
        assert archive.get(uid) == data


@pytest.mark.parametrize("option, value", [
    ("segment_size", "1 GiB"), ("segment_size", 32), ("segment_size", -5),
    ("map_size", "64M"), ("map_size", 0), ("map_size", 2**70),
    ("max_map_size", 1.5), ("max_map_size", 2**70),
    ("max_inflight_bytes", -1), ("max_inflight_bytes", "x"),
    ("readonly", "no"), ("readonly", 1),
])
def test_options_of_the_wrong_kind_are_refused_at_open(tmp_path, option,
                                                       value):
    store = tmp_path / "store"
    with pytest.raises(StoreConfigError, match=f"^{option} is "):
        Archive(store, **{option: value})
    assert not store.exists()


@pytest.mark.parametrize("options", [
    {"max_map_size": 1 << 20},  # less than the 64 MiB map to start with
    {"map_size": 1 << 41},      # more than the 1 TiB limit by default
])
def test_a_map_larger_than_its_limit_names_both_options(tmp_path, options):
    store = tmp_path / "store"
    with pytest.raises(StoreConfigError,
                       match=r"^map_size \(\d+ bytes\) is larger than "
                             r"max_map_size \(\d+\)"):
        Archive(store, **options)
    assert not store.exists()


def test_dataset_of_an_instance_pydicom_cannot_read_says_so(tmp_path):
    """pacsstore stores this file (its walker follows the undefined
    lengths); pydicom's reader stops with OSError, which dataset() let
    out as it was."""
    relpath = ("fo-dicom/TestData/"
               "GH177_D_CLUNIE_CT1_IVRLE_BigEndian_undefined_length.dcm")
    data = corpus_bytes(relpath)
    with Archive(tmp_path / "store") as archive:
        uid = archive.store(data).sop_instance_uid
        assert archive.get(uid) == data
        with pytest.raises(MalformedDicomError, match="pydicom cannot "
                                                      "read it"):
            archive.dataset(uid)


def test_frame_decode_of_attributes_pydicom_cannot_read(tmp_path):
    """(0002,0000) with the VR bytes "UO": pydicom raises
    NotImplementedError reading the attributes before the pixel data,
    which frame(decode=True) let out as it was."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 4, 4, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.arange(16, dtype=np.uint16).tobytes()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = bytearray(buffer.getvalue())
    assert data[132:138] == b"\x02\x00\x00\x00UL"
    data[136:138] = b"UO"
    with Archive(tmp_path / "store") as archive:
        uid = archive.store(bytes(data)).sop_instance_uid
        assert len(archive.frame(uid, 0)) == 32
        with pytest.raises(MalformedDicomError, match="NotImplementedError"):
            archive.frame(uid, 0, decode=True)
