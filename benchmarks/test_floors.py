"""The floors of the ingest rows: the network rows' durable floor holds
exactly what it acknowledged, the API rows' work floor copies and names
every file, and each note reads its floor against the row's target."""

from __future__ import annotations

import hashlib

from benchmarks.durable_floor import AppendOnlyLog, count_records
from benchmarks.measure import Sample
from benchmarks.rows import Target
from benchmarks.suite import ingest_api
from benchmarks.suite.ingest_net import _floor_note
from benchmarks.work_floor import durable_copy


def test_log_holds_each_dataset_over_the_zeros(tmp_path):
    path = tmp_path / "received.log"
    log = AppendOnlyLog(path, preallocate=4096)
    datasets = [b"\x08\x00\x16\x00" * 10, memoryview(b"x" * 3000),
                b"y" * 2000]
    for data in datasets:
        assert log.store_received(data, "1.2.840.10008.1.2.1",
                                  sop_class_uid="1.2", sop_instance_uid="3"
                                  ).status == "stored"
    log.close()
    assert count_records(path) == 3
    raw = path.read_bytes()
    assert raw[8:48] == bytes(datasets[0])
    # Longer than the zeros written beforehand: the last record grew it.
    assert len(raw) == sum(8 + len(d) for d in datasets)


def test_log_of_nothing_counts_none(tmp_path):
    path = tmp_path / "received.log"
    AppendOnlyLog(path, preallocate=1 << 16).close()
    assert path.stat().st_size == 1 << 16
    assert count_records(path) == 0


def test_floor_note_names_the_ratio_and_whether_the_target_is_reachable():
    storescp = Sample.of([1.0])
    below = _floor_note(Sample.of([2.0]), storescp)
    assert "0.50x storescp's rate" in below
    assert "no receiver that answers only durable data reaches" in below
    above = _floor_note(Sample.of([1.1]), storescp)
    assert "0.91x storescp's rate" in above
    assert "within reach" in above


def test_work_floor_copies_and_names_every_file(tmp_path):
    contents = [bytes([n]) * (1000 * n + 7) for n in range(1, 40)]
    paths = []
    for n, content in enumerate(contents):
        path = tmp_path / f"{n}.dcm"
        path.write_bytes(content)
        paths.append(path)
    names = durable_copy(paths, tmp_path / "copy")
    assert names == [hashlib.sha256(c).digest() for c in contents]
    copied = (tmp_path / "copy").read_bytes()
    assert len(copied) == sum(map(len, contents))
    # Threads place the files in any order, each whole.
    assert all(content in copied for content in contents)
    assert durable_copy(paths, tmp_path / "bare", hashed=False) == [
        b""] * len(paths)
    assert sorted((tmp_path / "bare").read_bytes()) == sorted(copied)


def test_work_floor_note_against_orthanc():
    target = Target(">=", 5)
    below = ingest_api._floor_note(Sample.of([1.0]), Sample.of([3.0]),
                                   target)
    assert "3.00x Orthanc's rate" in below
    assert "reaches the target of 5x" in below
    above = ingest_api._floor_note(Sample.of([1.0]), Sample.of([6.0]),
                                   target)
    assert "within reach" in above
