"""A write transaction buffers the patient, study and series records and
the counters, and writes each once before it commits: the index it
commits must be exactly the one that writing every change through to
LMDB would have committed, whatever the batch holds."""

from __future__ import annotations

import hashlib
import io
import json
import struct
from collections.abc import Callable

import lmdb
import pydicom
import pytest

from pacsstore import Archive
from pacsstore.store import index as index_module
from pacsstore.store import records
from pacsstore.store.hierarchy import link_instance, unlink_instance
from pacsstore.store.index import Index
from pacsstore.synthetic import structured_reports
from test_store_support import CT_SMALL, corpus_bytes, instance_json


def _instance(number: int, patient: str, study: str, series: str, *,
              modality: str = "CT", name: str | None = None,
              sop_class: str = "1.2.840.10008.5.1.4.1.1.2"
              ) -> dict[str, object]:
    uid = f"1.2.3.{number}"
    return {
        "sop_instance_uid": uid, "sop_class_uid": sop_class,
        "patient": patient, "study": study, "series": series,
        "attributes": {
            "SOPInstanceUID": uid, "PatientID": patient,
            "PatientName": name or f"Doe^{patient}",
            "StudyInstanceUID": study, "StudyDate": "20240102",
            "AccessionNumber": f"A{study}", "SeriesInstanceUID": series,
            "Modality": modality, "SeriesNumber": number % 3,
        },
    }


# Many instances of few series, studies and patients; a later instance
# renames its patient and brings a second modality into a study; then
# instances go away again, emptying a series, a study and a patient.
_LINKED = [
    _instance(1, "P1", "S1", "E1"),
    _instance(2, "P1", "S1", "E1"),
    _instance(3, "P1", "S1", "E2", modality="SR",
              sop_class="1.2.840.10008.5.1.4.1.1.88.11"),
    _instance(4, "P2", "S2", "E3", modality="MR"),
    _instance(5, "P1", "S1", "E1", name="Doe^Jane"),
    _instance(6, "P2", "S3", "E4"),
    _instance(7, "P3", "S4", "E5"),
    # names another study, but its series belongs to S1: filed there
    _instance(8, "P9", "S9", "E1"),
]
_UNLINKED = [_LINKED[2], _LINKED[5], _LINKED[6]]
# Enough instances of their own studies to fill a map of 64 KiB.
_FILLER = [_instance(100 + n, f"F{n}", f"FS{n}", f"FE{n}")
           for n in range(300)]


def _link(index: Index, txn: lmdb.Transaction, *,
          filler: bool = False) -> None:
    for record in _LINKED + (_FILLER if filler else []):
        link_instance(index, txn, dict(record))
        index.add_counter(txn, "logical_bytes", 100)


def _unlink(index: Index, txn: lmdb.Transaction) -> None:
    """Changes and deletes records committed by an earlier
    transaction, and brings a deleted patient back."""
    for record in _UNLINKED:
        unlink_instance(index, txn, dict(record))
        index.add_counter(txn, "logical_bytes", -100)
    link_instance(index, txn, _instance(9, "P3", "S5", "E6"))


def _link_and_unlink(index: Index, txn: lmdb.Transaction) -> None:
    _link(index, txn)
    _unlink(index, txn)


# Each phase is one transaction: all in one, or the deletes and changes
# of what an earlier transaction committed.
PHASES = {"one transaction": [_link_and_unlink],
          "two transactions": [_link, _unlink]}
Phase = Callable[[Index, lmdb.Transaction], None]


def _contents(index: Index) -> dict[str, list[tuple[bytes, bytes]]]:
    with index.read() as txn:
        return {name: list(txn.cursor(db=db))
                for name, db in index.db.items() if db is not None}


def _written_through(path, phases: list[Phase]
                     ) -> dict[str, list[tuple[bytes, bytes]]]:
    """The reference: every change put straight into LMDB, as a
    transaction begun outside Index.write does."""
    index = Index(path, readonly=False)
    try:
        for phase in phases:
            with index.env.begin(write=True) as txn:
                phase(index, txn)
        return _contents(index)
    finally:
        index.close()


def _batched(path, phases: list[Phase], **options
             ) -> dict[str, list[tuple[bytes, bytes]]]:
    index = Index(path, readonly=False, **options)
    try:
        for phase in phases:
            index.write(lambda txn, phase=phase: phase(index, txn))
        return _contents(index)
    finally:
        index.close()


@pytest.mark.parametrize("phases", PHASES)
def test_batch_commits_what_writing_through_commits(tmp_path, phases):
    reference = _written_through(tmp_path / "through", PHASES[phases])
    # P3 came back; S1 lost E2, S3 and S4 went away
    assert len(reference["patients"]) == 3
    assert len(reference["studies"]) == 3
    assert reference["series"] and reference["attributes"]

    assert _batched(tmp_path / "batched", PHASES[phases]) == reference


@pytest.mark.parametrize("phases", PHASES)
def test_batch_over_the_buffer_bound_commits_the_same(tmp_path,
                                                      monkeypatch, phases):
    reference = _written_through(tmp_path / "through", PHASES[phases])
    monkeypatch.setattr(index_module, "MAX_BUFFERED_RECORDS", 2)

    assert _batched(tmp_path / "batched", PHASES[phases]) == reference


def _filled(index: Index, txn: lmdb.Transaction) -> None:
    _link(index, txn, filler=True)
    _unlink(index, txn)


def test_batch_retried_on_a_full_map_commits_the_same(tmp_path):
    reference = _written_through(tmp_path / "through", [_filled])
    grown = []
    index = Index(tmp_path / "batched", readonly=False, map_size=1 << 16)
    original = index._grow
    index._grow = lambda: (grown.append(1), original())[-1]
    try:
        index.write(lambda txn: _filled(index, txn))
        contents = _contents(index)
    finally:
        index.close()

    assert grown, "the map never filled: the retry was not exercised"
    assert contents == reference


def test_batch_reads_its_own_changes(tmp_path):
    index = Index(tmp_path / "index", readonly=False)
    seen = {}

    def work(txn: lmdb.Transaction) -> None:
        for record in _LINKED[:3]:
            link_instance(index, txn, dict(record))
        index.add_counter(txn, "logical_bytes", 7)
        index.add_counter(txn, "logical_bytes", 5)
        seen["study"] = index.record(txn, "study", "S1")
        seen["studies"] = index.count(txn, "study")
        seen["series"] = list(index.names(txn, "series"))
        seen["patients"] = dict(index.records(txn, "patient"))
        seen["bytes"] = index.counter(txn, "logical_bytes")

    try:
        index.write(work)
        with index.read() as txn:
            committed = index.record(txn, "study", "S1")
    finally:
        index.close()

    assert seen["study"]["NumberOfStudyRelatedInstances"] == 3
    assert seen["study"]["ModalitiesInStudy"] == ["CT", "SR"]
    assert seen["studies"] == 1
    assert seen["series"] == ["E1", "E2"]
    assert seen["patients"]["P1"]["NumberOfPatientRelatedInstances"] == 3
    assert seen["bytes"] == 12
    assert committed == seen["study"]


def test_failed_batch_leaves_nothing_behind(tmp_path):
    index = Index(tmp_path / "index", readonly=False)

    def failing(txn: lmdb.Transaction) -> None:
        link_instance(index, txn, dict(_LINKED[0]))
        index.add_counter(txn, "logical_bytes", 100)
        raise RuntimeError("the batch fails")

    try:
        with pytest.raises(RuntimeError):
            index.write(failing)
        index.write(lambda txn: link_instance(index, txn,
                                              dict(_LINKED[3])))
        with index.read() as txn:
            assert index.record(txn, "study", "S1") is None
            assert index.record(txn, "patient", "P1") is None
            assert index.counter(txn, "logical_bytes") == 0
            assert list(index.names(txn, "study")) == ["S2"]
    finally:
        index.close()


def _copy(data: bytes, number: int, series: int) -> bytes:
    """CT_small as instance ``number`` of series ``series`` of a study
    of its own per pair of series."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{number}"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = f"{ds.SeriesInstanceUID}.{series}"
    ds.StudyInstanceUID = f"{ds.StudyInstanceUID}.{series // 2}"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _reports(count: int) -> list[bytes]:
    out = []
    for ds in structured_reports(count, seed=3, min_bytes=2048,
                                 max_bytes=4096):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def test_store_many_indexes_as_one_store_at_a_time(tmp_path):
    data = corpus_bytes(CT_SMALL)
    items = [_copy(data, n, n % 4) for n in range(12)] + _reports(12)
    items.append(items[0])  # a duplicate in the same batch
    with Archive(tmp_path / "one") as archive:
        for item in items:
            archive.store(item)
        single = _contents(archive._index)
        commits_one = archive._committer.batches
    with Archive(tmp_path / "many") as archive:
        results = archive.store_many(items)
        many = _contents(archive._index)
        commits_many = archive._committer.batches

    assert [r.status for r in results] == ["stored"] * 24 + ["duplicate"]
    assert commits_many < commits_one, "store_many never batched"
    assert many == single


@pytest.mark.parametrize("item", ["report", "ct"])
def test_record_sha256_is_the_file_digest(tmp_path, item):
    data = _reports(1)[0] if item == "report" else corpus_bytes(CT_SMALL)
    with Archive(tmp_path / "store") as archive:
        result = archive.store(data)
        record = archive.record(result.sop_instance_uid)

    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert bool(record["cuts"]) == (item == "ct")


def test_records_are_the_bytes_json_dumps_gives(tmp_path):
    """The index's encoder is json.dumps(separators=(",", ":"),
    ensure_ascii=False), byte for byte: for records as stored, and for
    values that JSON escapes."""
    data = corpus_bytes(CT_SMALL)
    with Archive(tmp_path / "store") as archive:
        archive.store_many([_copy(data, n, n % 2) for n in range(4)]
                           + _reports(4))
        contents = _contents(archive._index)
    bases = {struct.unpack(">I", k)[0]: v
             for k, v in contents["record_bases"]}
    stored = [_json_of(name, raw, bases)
              for name in ("instances", "patients", "studies", "series")
              for _, raw in contents[name]]
    made = {"PatientName": "Müller^Jürgen=山田^太郎", "quote": '"\\/',
            "controls": "\x00\x1f\n\t\u2028", "n": [1, -2.5, 1e300, None,
                                                  True], "nested": {}}

    # 8 instances; CT: 1 patient, 1 study, 2 series; 4 reports: one
    # each of their own
    assert len(stored) == 8 + (1 + 4) + (1 + 4) + (2 + 4)
    for raw in [*stored, json.dumps(made).encode()]:
        record = json.loads(raw)
        assert records.dumps(record) == json.dumps(
            record, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
        if raw in stored:
            assert records.dumps(record) == raw


def _json_of(database: str, raw: bytes, bases: dict[int, bytes]) -> bytes:
    """The JSON an index value holds: an instance record's is
    compressed, without the manifest's place."""
    if database != "instances":
        return raw
    return instance_json(raw, bases)
