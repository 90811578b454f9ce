"""Callers of store() and store_received announce the instance they are
preparing, and a batch about to commit waits (a little) for announced
instances to join it: concurrent callers share a commit and its syncs
instead of each paying one a moment apart (Committer.announce)."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from pacsstore import Archive, ArchiveClosedError, MalformedDicomError
from pacsstore.store import archive as archive_module
from pacsstore.store import commit as commit_module
from test_store_many_chunks import _reports

# Long enough that a test which depended on the wait running out would
# hang visibly instead of passing by luck.
_WAIT = 60.0
_GUARD = 30.0


class _HeldPrepare:
    """Holds the prepare of the content ``matches`` picks until released
    (then lets it fail, with ``fail``)."""

    def __init__(self, archive: Archive, matches: Callable[[bytes], bool],
                 fail: bool = False) -> None:
        self.matches = matches
        self.fail = fail
        self.entered = threading.Event()
        self.release = threading.Event()
        self._prepare = archive._preparer.prepare
        archive._preparer.prepare = self

    def __call__(self, data, *args, **kwargs):
        if self.matches(bytes(data)):
            self.entered.set()
            assert self.release.wait(_GUARD)
            if self.fail:
                raise MalformedDicomError("made to fail by the test")
        return self._prepare(data, *args, **kwargs)


def _committer_waiting(archive: Archive) -> bool:
    committer = archive._committer
    with committer._cond:
        return bool(committer._queue) and committer._announced > 0


def _until(condition) -> None:
    done = threading.Event()
    for _ in range(int(_GUARD / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("the condition never held")


@pytest.fixture
def long_wait(monkeypatch):
    monkeypatch.setattr(commit_module, "ANNOUNCED_WAIT", _WAIT)


def test_an_announced_instance_joins_the_batch_waiting_for_it(
        tmp_path, long_wait):
    first, second = _reports(2, seed=21)
    with Archive(tmp_path / "s") as archive, ThreadPoolExecutor(2) as pool:
        held = _HeldPrepare(archive, second.__eq__)
        later = pool.submit(archive.store, second)
        assert held.entered.wait(_GUARD)
        sooner = pool.submit(archive.store, first)
        _until(lambda: _committer_waiting(archive))
        held.release.set()
        results = [sooner.result(_GUARD), later.result(_GUARD)]

        assert [r.status for r in results] == ["stored", "stored"]
        assert archive._committer.batches == 1
        assert archive.get(results[0].sop_instance_uid) == first
        assert archive.get(results[1].sop_instance_uid) == second


def _dataset_of(data: bytes) -> tuple[bytes, Dataset]:
    """The data set after the file meta group, as a C-STORE carries it."""
    ds = dcmread(io.BytesIO(data))
    return data[132 + 12 + ds.file_meta.FileMetaInformationGroupLength:], ds


def test_received_instances_are_announced_too(tmp_path, long_wait):
    first, second = _reports(2, seed=22)
    held_body = _dataset_of(second)[0]

    def received(data: bytes):
        body, ds = _dataset_of(data)
        return archive.store_received(
            body, str(ds.file_meta.TransferSyntaxUID),
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID))

    with Archive(tmp_path / "s") as archive, ThreadPoolExecutor(2) as pool:
        held = _HeldPrepare(archive, lambda d: d.endswith(held_body))
        later = pool.submit(received, second)
        assert held.entered.wait(_GUARD)
        sooner = pool.submit(received, first)
        _until(lambda: _committer_waiting(archive))
        held.release.set()
        assert sooner.result(_GUARD).status == "stored"
        assert later.result(_GUARD).status == "stored"
        assert archive._committer.batches == 1


def test_a_failed_prepare_stops_the_wait(tmp_path, long_wait):
    first, second = _reports(2, seed=23)
    with Archive(tmp_path / "s") as archive, ThreadPoolExecutor(2) as pool:
        held = _HeldPrepare(archive, second.__eq__, fail=True)
        failing = pool.submit(archive.store, second)
        assert held.entered.wait(_GUARD)
        sooner = pool.submit(archive.store, first)
        _until(lambda: _committer_waiting(archive))
        held.release.set()

        with pytest.raises(MalformedDicomError):
            failing.result(_GUARD)
        # Without the withdrawal this would wait out ANNOUNCED_WAIT.
        assert sooner.result(_GUARD).status == "stored"
        assert archive._committer._announced == 0


def test_closing_does_not_wait_for_announced_instances(tmp_path, long_wait):
    first, second = _reports(2, seed=24)
    archive = Archive(tmp_path / "s")
    with ThreadPoolExecutor(2) as pool:
        held = _HeldPrepare(archive, second.__eq__)
        late = pool.submit(archive.store, second)
        assert held.entered.wait(_GUARD)
        sooner = pool.submit(archive.store, first)
        _until(lambda: _committer_waiting(archive))
        # close joins the committer: had closing not ended its wait,
        # close would still be waiting (ANNOUNCED_WAIT) after the guard.
        closer = threading.Thread(target=archive.close, daemon=True)
        closer.start()
        closer.join(_GUARD)
        assert not closer.is_alive()
        assert sooner.result(_GUARD).status == "stored"
        held.release.set()
        with pytest.raises(ArchiveClosedError):
            late.result(_GUARD)
    with Archive(tmp_path / "s") as reopened:
        assert reopened.stats().instances == 1


def test_a_large_instance_is_not_announced(tmp_path, long_wait,
                                           monkeypatch):
    monkeypatch.setattr(archive_module, "ANNOUNCE_BELOW_BYTES", 1)
    first, second = _reports(2, seed=25)
    with Archive(tmp_path / "s") as archive, ThreadPoolExecutor(2) as pool:
        held = _HeldPrepare(archive, second.__eq__)
        later = pool.submit(archive.store, second)
        assert held.entered.wait(_GUARD)
        assert archive._committer._announced == 0
        # Committed while the other is still held: had it been announced,
        # this would wait ANNOUNCED_WAIT (longer than the guard) first.
        assert pool.submit(archive.store, first).result(_GUARD).status == \
            "stored"
        assert archive._committer.batches == 1
        held.release.set()
        assert later.result(_GUARD).status == "stored"
        assert archive._committer.batches == 2
