"""store_received from the network node, concurrent writers and readers,
the writer lock, and damage detected on read."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from pacsstore import (
    AlreadyOpenError,
    Archive,
    CorruptStoreError,
    MalformedDicomError,
    NotStorableError,
    StoreLockedError,
    parsing,
)
from pacsstore.errors import DatasetMismatchError
from test_store_support import CT_SMALL, MR_SMALL, corpus_bytes

SRC = Path(__file__).resolve().parents[1] / "src"


def _bare_dataset(data: bytes, uid: str | None = None) -> tuple[bytes, str,
                                                                 str, str]:
    """A corpus file as a C-STORE delivers it: the dataset without its
    file meta, its transfer syntax, SOP class and instance UIDs."""
    ds = pydicom.dcmread(io.BytesIO(data))
    syntax = ds.file_meta.TransferSyntaxUID
    if uid is not None:
        ds.SOPInstanceUID = uid
    out = DicomBytesIO()
    out.is_little_endian = not syntax == pydicom.uid.ExplicitVRBigEndian
    out.is_implicit_VR = syntax == pydicom.uid.ImplicitVRLittleEndian
    write_dataset(out, ds)
    return out.getvalue(), str(syntax), ds.SOPClassUID, ds.SOPInstanceUID


def test_store_received_keeps_the_dataset_bytes(tmp_path):
    data = corpus_bytes(CT_SMALL)
    body, syntax, sop_class, uid = _bare_dataset(data)
    with Archive(tmp_path / "s") as archive:
        result = archive.store_received(body, syntax, sop_class_uid=sop_class,
                                        sop_instance_uid=uid,
                                        source_ae="MODALITY1")
        assert result.status == "stored"
        stored = archive.get(uid)
        assert stored.endswith(body)
        ds = pydicom.dcmread(io.BytesIO(stored))
        assert ds.file_meta.SourceApplicationEntityTitle == "MODALITY1"
        assert ds.file_meta.MediaStorageSOPInstanceUID == uid
        assert ds.file_meta.TransferSyntaxUID == syntax
        again = archive.store_received(body, syntax, sop_class_uid=sop_class,
                                       sop_instance_uid=uid,
                                       source_ae="MODALITY1")
        assert again.status == "duplicate"


def test_store_received_refuses_a_uid_mismatch(tmp_path):
    body, syntax, sop_class, uid = _bare_dataset(corpus_bytes(CT_SMALL))
    with Archive(tmp_path / "s") as archive:
        with pytest.raises(DatasetMismatchError, match="names 1.2.3.4"):
            archive.store_received(body, syntax, sop_class_uid=sop_class,
                                   sop_instance_uid="1.2.3.4")
        with pytest.raises(DatasetMismatchError, match="names 1.2.3"):
            archive.store_received(body, syntax, sop_class_uid="1.2.3",
                                   sop_instance_uid=uid)
        assert archive.stats().instances == 0


@pytest.mark.parametrize("syntax", ["nope", "1.2.3.4", "", None])
def test_store_received_refuses_a_syntax_dicom_does_not_define(tmp_path,
                                                                syntax):
    """A misnamed syntax would store an instance no reader decodes."""
    body, _, sop_class, uid = _bare_dataset(corpus_bytes(CT_SMALL))
    with Archive(tmp_path / "s") as archive:
        with pytest.raises(NotStorableError, match="not a transfer syntax"):
            archive.store_received(body, syntax, sop_class_uid=sop_class,
                                   sop_instance_uid=uid)
        assert archive.stats().instances == 0


def _without_sop_instance_uid(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.SOPInstanceUID
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()


def test_store_received_refuses_a_dataset_without_sop_instance_uid(
        tmp_path):
    body, syntax, sop_class, uid = _bare_dataset(corpus_bytes(CT_SMALL))
    explicit = "1.2.840.10008.1.2.1"
    refused = {"nothing": (b"", syntax), "zeros": (b"\0" * 5000, syntax),
               "no (0008,0018)": (
                   _without_sop_instance_uid(corpus_bytes(CT_SMALL)),
                   explicit)}
    with Archive(tmp_path / "s") as archive:
        for name, (dataset, ts) in refused.items():
            with pytest.raises(NotStorableError,
                               match=r"no SOP Instance UID \(0008,0018\)"):
                archive.store_received(dataset, ts, sop_class_uid=sop_class,
                                       sop_instance_uid=uid)
        assert archive.stats().instances == 0
        assert archive.store_received(
            body, syntax, sop_class_uid=sop_class,
            sop_instance_uid=uid).status == "stored"


# Real files whose SOP Instance UIDs break PS3.5 9.1 (a leading zero, a
# UUID, a hex digest); file ingest stores them, so the network must too.
NONCONFORMANT_UIDS = ("fo-dicom/TestData/CR-ModalitySequenceLUT.dcm",
                      "deid/func-sequence-replace/cleaned.dcm",
                      "pydicom-data/bad_sequence.dcm")


@pytest.mark.parametrize("relpath", NONCONFORMANT_UIDS)
def test_store_received_keeps_uids_real_devices_send(tmp_path, relpath):
    data = corpus_bytes(relpath)
    header = parsing.read_header(data)
    body = data[header.result.dataset_offset:]
    with Archive(tmp_path / "s") as archive:
        result = archive.store_received(
            body, header.transfer_syntax,
            sop_class_uid=header.sop_class_uid,
            sop_instance_uid=header.sop_instance_uid)
        assert result.status == "stored"
        stored = archive.get(header.sop_instance_uid)
        assert stored.endswith(body)
        meta = pydicom.dcmread(io.BytesIO(stored)).file_meta
        assert meta.MediaStorageSOPInstanceUID == header.sop_instance_uid


@pytest.mark.parametrize("cut", [1, 2, 7, 100])
def test_store_received_refuses_a_dataset_cut_short(tmp_path, cut):
    """A file cut short on disk is kept as it is, but a dataset that
    arrives whole over the network and still ends inside an element was
    sent broken: it is refused, naming where it ends."""
    body, syntax, sop_class, uid = _bare_dataset(corpus_bytes(CT_SMALL))
    with Archive(tmp_path / "s") as archive:
        with pytest.raises(MalformedDicomError, match="ends inside"):
            archive.store_received(body[:-cut], syntax,
                                   sop_class_uid=sop_class,
                                   sop_instance_uid=uid)
        assert uid not in archive
        assert archive.store_received(
            body, syntax, sop_class_uid=sop_class,
            sop_instance_uid=uid).status == "stored"


def test_store_received_from_threads_shares_group_commits(tmp_path):
    data = corpus_bytes(MR_SMALL)
    bodies = [_bare_dataset(data, f"1.2.826.0.1.3680043.8.498.5.{i}")
              for i in range(48)]
    results = {}
    with Archive(tmp_path / "s") as archive:
        barrier = threading.Barrier(8)

        def send(chunk):
            barrier.wait()
            for body, syntax, sop_class, uid in chunk:
                results[uid] = archive.store_received(
                    body, syntax, sop_class_uid=sop_class,
                    sop_instance_uid=uid)

        threads = [threading.Thread(target=send, args=(bodies[i::8],))
                   for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(results) == 48
        assert all(r.status == "stored" for r in results.values())
        # Fewer commits than instances: callers shared batches.
        assert archive._committer.batches < 48
        for body, _, _, uid in bodies:
            assert archive.get(uid).endswith(body)


def test_second_writer_gets_store_locked_error(tmp_path):
    with Archive(tmp_path / "s"):
        with pytest.raises(StoreLockedError, match="readonly=True"):
            Archive(tmp_path / "s")
    with Archive(tmp_path / "s"):
        pass  # the lock went with close()


def test_a_second_archive_in_the_same_process_is_a_clear_error(tmp_path):
    # LMDB opens an environment once per process: a reader opened beside
    # a writer (as the second writer's message used to advise) raised
    # lmdb.Error, and so did a writer beside a reader, and two readers.
    store = tmp_path / "s"
    data = corpus_bytes(CT_SMALL)
    with Archive(store) as writer:
        uid = writer.store(data).sop_instance_uid
        with pytest.raises(AlreadyOpenError,
                           match=f"{store} is already open in this process"):
            Archive(store, readonly=True)
        assert writer.get(uid) == data
    with Archive(store, readonly=True) as reader:
        with pytest.raises(AlreadyOpenError, match="use that Archive"):
            Archive(store)
        with pytest.raises(AlreadyOpenError):
            Archive(store, readonly=True)
        assert reader.get(uid) == data
    # Nothing was left held: the writer lock and the environment are free.
    with Archive(store) as writer:
        assert writer.get(uid) == data


READER = textwrap.dedent("""
    import hashlib, sys
    from pacsstore import Archive
    with Archive(sys.argv[1], readonly=True) as archive:
        data = archive.get(sys.argv[2])
        print(hashlib.sha256(data).hexdigest(), archive.stats().instances)
""")


def test_readonly_open_in_another_process_while_writing(tmp_path):
    import hashlib
    data = corpus_bytes(CT_SMALL)
    with Archive(tmp_path / "s") as writer:
        uid = writer.store(data).sop_instance_uid
        out = subprocess.run(
            [sys.executable, "-c", READER, str(tmp_path / "s"), uid],
            capture_output=True, text=True, check=True,
            env={"PYTHONPATH": str(SRC)})
        digest, count = out.stdout.split()
        assert digest == hashlib.sha256(data).hexdigest()
        assert count == "1"
        writer.store(corpus_bytes(MR_SMALL))  # the writer goes on


def test_corrupt_block_is_detected_on_read(tmp_path):
    data = corpus_bytes(CT_SMALL)
    with Archive(tmp_path / "s") as archive:
        uid = archive.store(data).sop_instance_uid
        frame_name = archive.record(uid)["blocks"][0]
        with archive._index.read() as txn:
            entry = archive._index.block(txn, bytes.fromhex(frame_name))
    segment = next((tmp_path / "s" / "segments").glob("*.seg"))
    raw = bytearray(segment.read_bytes())
    raw[entry.offset + 64 + entry.stored_length // 2] ^= 0x40
    segment.write_bytes(bytes(raw))
    with Archive(tmp_path / "s", readonly=True) as archive:
        with pytest.raises(CorruptStoreError, match="CRC32"):
            archive.get(uid)
        with pytest.raises(CorruptStoreError):
            archive.frame(uid, 0)
        assert archive.record(uid)["size"] == len(data)
