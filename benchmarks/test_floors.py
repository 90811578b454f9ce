"""The floors of the ingest rows: the network rows' durable floor holds
exactly what it acknowledged, the API rows' work floor copies and names
every file, and each note reads its floor against the row's target."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import pytest

from benchmarks.durable_floor import AppendOnlyLog, Discard, count_records
from benchmarks.measure import Sample
from benchmarks.peers import durable_floor
from benchmarks.rows import Target
from benchmarks.suite import Context, ingest_api, ingest_net
from benchmarks.suite.ingest_net import _floor_note
from benchmarks.sending import STORESCU, send
from benchmarks.work_floor import durable_copy
from pacsstore.synthetic import write_structured_reports


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


def test_discard_answers_and_keeps_nothing():
    assert Discard().store_received(b"data", "1.2.840.10008.1.2.1",
                                    sop_class_uid="1.2",
                                    sop_instance_uid="3").status == "stored"


def test_log_of_nothing_counts_none(tmp_path):
    path = tmp_path / "received.log"
    AppendOnlyLog(path, preallocate=1 << 16).close()
    assert path.stat().st_size == 1 << 16
    assert count_records(path) == 0


def test_floor_note_adds_the_durable_write_to_dcmtk_network_path():
    # 1,000 instances: storescp 0.5 s, storescp --ignore 0.4 s, the
    # node's network path alone 0.7 s, the floor 1.2 s: a durable write
    # costs 0.5 ms an instance, and DCMTK's network path with it would
    # take 0.9 s, 0.56x storescp.
    storescp, orthanc = Sample.of([0.5]), Sample.of([2.5])
    note = _floor_note(1000, Sample.of([1.2]), Sample.of([0.7]),
                       Sample.of([0.4]),
                       [("storescp", storescp, Target(">=", 0.8)),
                        ("Orthanc", orthanc, Target(">=", 3))])
    assert "0.50 ms an instance more" in note
    assert "with that added is 0.9 s, the floor's 1.2 s" in note
    assert "0.56x storescp and 2.78x Orthanc" in note
    assert "would not reach 0.8x storescp or 3x Orthanc" in note


def test_floor_note_says_when_a_durable_receiver_could_reach_it():
    storescp = Sample.of([1.0])
    note = _floor_note(100, Sample.of([0.6]), Sample.of([0.5]),
                       Sample.of([0.9]),
                       [("storescp", storescp, Target(">=", 0.8))])
    assert "1.67x storescp" in note
    assert "within reach" in note


def test_floor_note_takes_the_floor_when_it_beats_dcmtk_with_a_write():
    # The node's network path is faster than DCMTK's (small instances):
    # the floor itself is then the best durable receiver.
    storescp = Sample.of([0.5])
    note = _floor_note(1000, Sample.of([0.55]), Sample.of([0.35]),
                       Sample.of([0.45]),
                       [("storescp", storescp, Target(">=", 0.8))])
    assert "0.20 ms an instance more" in note
    assert "0.91x storescp" in note
    assert "within reach" in note


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

    def note(floor, copy, orthanc):
        return ingest_api._floor_note(Sample.of([floor]), Sample.of([copy]),
                                      Sample.of([orthanc]), target)
    neither = note(1.0, 0.8, 3.0)
    assert "3.00x and 3.75x Orthanc's rate" in neither
    assert "whatever it names its content by" in neither
    copy_only = note(1.0, 0.5, 3.0)
    assert "names its content by SHA-256" in copy_only
    assert "writes every byte it is given" in neither
    assert "within reach" in note(1.0, 0.5, 6.0)


@pytest.mark.skipif(not Path(STORESCU).exists(), reason="DCMTK not here")
def test_durable_floor_node_takes_what_storescu_sends(tmp_path):
    paths = write_structured_reports(tmp_path / "sent", 5, seed=3,
                                     min_bytes=2000, max_bytes=4000)
    log = tmp_path / "received.log"
    with durable_floor(log, 1 << 16, tmp_path / "floor.out") as endpoint:
        send(endpoint, paths)
    assert count_records(log) == 5
    # The network path alone answers every C-STORE too (send raises on a
    # failure status), keeping nothing.
    with durable_floor(None, 0, tmp_path / "network.out") as endpoint:
        send(endpoint, paths)


def _counting(monkeypatch, name):
    """Count the calls of ``os.<name>``, still making them."""
    calls = []
    real = getattr(os, name)

    def spy(fd):
        calls.append(fd)
        return real(fd)
    monkeypatch.setattr(os, name, spy)
    return calls


def test_log_syncs_the_zeros_once_and_each_dataset_before_answering(
        tmp_path, monkeypatch):
    fsyncs = _counting(monkeypatch, "fsync")
    fdatasyncs = _counting(monkeypatch, "fdatasync")
    log = AppendOnlyLog(tmp_path / "received.log", preallocate=1 << 20)
    assert len(fsyncs) == 1 and not fdatasyncs
    for n in range(3):
        log.store_received(b"z" * 100, "1.2.840.10008.1.2.1",
                           sop_class_uid="1.2", sop_instance_uid=str(n))
        assert len(fdatasyncs) == n + 1
    log.close()


def test_work_floor_syncs_once_after_every_write(tmp_path, monkeypatch):
    paths = []
    for n in range(5):
        path = tmp_path / f"{n}.dcm"
        path.write_bytes(bytes([n]) * 5000)
        paths.append(path)
    fdatasyncs = _counting(monkeypatch, "fdatasync")
    written = []
    real_pwrite = os.pwrite

    def pwrite(fd, data, offset):
        assert not fdatasyncs, "synced before every file was written"
        written.append(len(data))
        return real_pwrite(fd, data, offset)
    monkeypatch.setattr(os, "pwrite", pwrite)
    durable_copy(paths, tmp_path / "copy")
    assert len(fdatasyncs) == 1
    assert written == [5000] * 5


def test_a_receiver_that_lost_an_instance_fails_the_row(tmp_path,
                                                       monkeypatch):
    @contextlib.contextmanager
    def losing(folder):
        yield ingest_net.Received(None, lambda: 2)
    monkeypatch.setattr(ingest_net, "send_parallel", lambda *args: None)
    context = Context(data=None, scratch=tmp_path, repeat=1)
    time = ingest_net._timer(context, [[Path("a"), Path("b"), Path("c")]])
    with pytest.raises(RuntimeError, match="holds 2 of the 3"):
        time(losing)
