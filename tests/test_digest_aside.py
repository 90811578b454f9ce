"""The whole-file SHA-256 taken on another thread for a caller that waits
on one instance (store, store_received): the record's digest is the
file's, whichever thread took it, and the thread ends with the Archive."""

from __future__ import annotations

import csv
import hashlib
import io
import threading

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

from pacsstore import Archive, parsing
from pacsstore.errors import PacsstoreError
from pacsstore.store import layout, prepare
from pacsstore.synthetic import write_ct_series
from test_store_support import CT_SMALL, corpus_bytes, corpus_path


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


def test_no_digest_is_taken_aside_after_close(tmp_path):
    data = write_ct_series(tmp_path / "ct", 1, seed=8)[0].read_bytes()
    archive = Archive(tmp_path / "store")
    preparer = archive._preparer
    archive.close()
    assert preparer._names_aside(memoryview(data), _split(data)) is None
    assert not _digest_threads()


def _same_prepared(a: prepare.Prepared, b: prepare.Prepared) -> None:
    assert a.record == b.record
    assert a.digests == b.digests
    assert a.kinds == b.kinds and a.raw_lengths == b.raw_lengths
    assert {n: (e.header, e.payload) for n, e in a.encoded.items()} == \
        {n: (e.header, e.payload) for n, e in b.encoded.items()}


def test_coding_before_the_digests_prepares_what_digesting_first_does(
        tmp_path):
    """The caller compresses every block while the digests are taken
    aside; the instance it hands the committer is the one the in-place
    order (digest, look up, compress what is missing) gives, byte for
    byte, for a single-frame slice, a multi-frame object with a repeated
    frame, and a large file without frames."""
    slice_ = write_ct_series(tmp_path / "ct", 1, seed=9)[0].read_bytes()
    ds = pydicom.dcmread(io.BytesIO(slice_))
    frame = ds.PixelData
    ds.NumberOfFrames = 3
    ds.PixelData = frame + frame[::-1] + frame
    multi = DicomBytesIO()
    ds.save_as(multi, enforce_file_format=True)
    ds.SOPInstanceUID = generate_uid()
    del ds.PixelData
    ds.add_new(0x00091010, "OB", bytes(range(256)) * 1200)
    no_frames = DicomBytesIO()
    ds.save_as(no_frames, enforce_file_format=True)
    with Archive(tmp_path / "store") as archive:
        preparer = archive._preparer
        for data in (slice_, multi.getvalue(), no_frames.getvalue()):
            assert len(data) >= prepare.DIGEST_ASIDE_BYTES
            aside = preparer.prepare(data, digest_aside=True)
            in_place = preparer.prepare(data)
            _same_prepared(aside, in_place)
            assert aside.record["sha256"] == hashlib.sha256(data).hexdigest()
        assert len(preparer.prepare(multi.getvalue(),
                                    digest_aside=True).encoded) == 3


def test_blocks_the_index_holds_are_not_handed_over_again(tmp_path):
    path = write_ct_series(tmp_path / "ct", 1, seed=10)[0]
    data = path.read_bytes()
    with Archive(tmp_path / "store") as archive:
        archive.store(path)
        again = archive._preparer.prepare(data, digest_aside=True)
        assert again.encoded == {}
        assert again.record["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_busy_digest_thread_is_not_queued_behind(tmp_path):
    """With the digest thread taken by another instance, a prepare takes
    its digests in place rather than waiting its turn; both come out
    right."""
    paths = write_ct_series(tmp_path / "ct", 2, seed=11)
    first, second = (p.read_bytes() for p in paths)
    with Archive(tmp_path / "store") as archive:
        preparer = archive._preparer
        warm = preparer._names_aside(memoryview(first), _split(first))
        warm.result()
        # Hold the digest thread on an event, and queue the first
        # instance's digests behind it: the thread is busy until released.
        release = threading.Event()
        preparer._aside.submit(release.wait)
        blocker = preparer._names_aside(memoryview(first), _split(first))
        assert blocker is not None
        try:
            assert preparer._names_aside(memoryview(second),
                                         _split(second)) is None
            prepared = preparer.prepare(second, digest_aside=True)
            assert prepared.record["sha256"] == \
                hashlib.sha256(second).hexdigest()
        finally:
            release.set()
        assert blocker.result().sha256 == hashlib.sha256(first).hexdigest()


def _split(data: bytes) -> layout.Split:
    result = parsing.read_header(memoryview(data)).result
    return layout.split(memoryview(data), result.pixel, False)


def _corpus_over_aside_size() -> list[tuple[str, str]]:
    """(path, transfer syntax) of the first corpus file at or above
    DIGEST_ASIDE_BYTES for each transfer syntax and modality."""
    manifest = corpus_path("MANIFEST.tsv")
    seen: dict[tuple[str, str], str] = {}
    with manifest.open() as rows:
        for row in csv.DictReader(rows, delimiter="\t"):
            key = (row["transfer_syntax_uid"], row["modality"])
            if int(row["size_bytes"]) >= prepare.DIGEST_ASIDE_BYTES:
                seen.setdefault(key, row["path"])
    return sorted((path, key[0]) for key, path in seen.items())


@pytest.mark.parametrize("relpath, syntax", _corpus_over_aside_size())
def test_corpus_files_prepare_alike_either_way(tmp_path, relpath, syntax):
    data = corpus_bytes(relpath)
    with Archive(tmp_path / "store") as archive:
        preparer = archive._preparer
        try:
            in_place = preparer.prepare(data)
        except PacsstoreError as exc:
            with pytest.raises(type(exc)):
                preparer.prepare(data, digest_aside=True)
            return
        _same_prepared(preparer.prepare(data, digest_aside=True), in_place)
