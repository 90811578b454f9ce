"""The whole-file SHA-256 taken on another thread for a caller that waits
on one instance (store, store_received): the record's digest is the
file's, whichever thread took it, and the thread ends with the Archive."""

from __future__ import annotations

import hashlib
import io
import threading

import pydicom
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from pacsstore import Archive
from pacsstore.store import prepare
from pacsstore.synthetic import write_ct_series
from test_store_support import CT_SMALL, corpus_bytes


def _record_sha256(archive: Archive, uid: str) -> str:
    return archive.record(uid)["sha256"]


def _digest_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t.name.startswith("pacsstore-digest")]


def _bare(data: bytes) -> tuple[bytes, str, str, str]:
    ds = pydicom.dcmread(io.BytesIO(data))
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return (out.getvalue(), str(ds.file_meta.TransferSyntaxUID),
            ds.SOPClassUID, ds.SOPInstanceUID)


def test_a_large_file_stored_alone_has_its_own_digest(tmp_path):
    path = write_ct_series(tmp_path / "ct", 1, seed=5)[0]
    data = path.read_bytes()
    assert len(data) >= prepare.DIGEST_ASIDE_BYTES
    with Archive(tmp_path / "store") as archive:
        by_path = archive.store(path).sop_instance_uid
        assert _digest_threads(), "the digest was not taken aside"
        assert _record_sha256(archive, by_path) == \
            hashlib.sha256(data).hexdigest()
        assert archive.get(by_path) == data
    assert not _digest_threads()


def test_a_received_dataset_has_the_digest_of_the_file_it_makes(tmp_path):
    path = write_ct_series(tmp_path / "ct", 1, seed=6)[0]
    body, syntax, sop_class, uid = _bare(path.read_bytes())
    with Archive(tmp_path / "store") as archive:
        archive.store_received(memoryview(bytearray(body)), syntax,
                               sop_class_uid=sop_class, sop_instance_uid=uid,
                               source_ae="CT01")
        stored = archive.get(uid)
        assert stored.endswith(body)
        assert _record_sha256(archive, uid) == \
            hashlib.sha256(stored).hexdigest()


def test_small_files_and_store_many_digest_in_place(tmp_path):
    data = corpus_bytes(CT_SMALL)
    assert len(data) < prepare.DIGEST_ASIDE_BYTES
    paths = write_ct_series(tmp_path / "ct", 3, seed=7)
    with Archive(tmp_path / "store") as archive:
        uid = archive.store(data).sop_instance_uid
        results = archive.store_many(paths)
        assert not _digest_threads()
        assert _record_sha256(archive, uid) == hashlib.sha256(data).hexdigest()
        for path, result in zip(paths, results):
            assert _record_sha256(archive, result.sop_instance_uid) == \
                hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_digest_asked_after_close_is_taken_in_place(tmp_path):
    data = bytes(range(256)) * 2048
    archive = Archive(tmp_path / "store")
    preparer = archive._preparer
    archive.close()
    future = preparer._digest_aside(memoryview(data))
    assert future.done()
    assert future.result() == hashlib.sha256(data).hexdigest()
    assert not _digest_threads()
