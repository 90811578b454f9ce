"""A full disk, a full index map, read-only media.

The real conditions where the machine allows them: a small tmpfs mounted
for the test (root, or CAP_SYS_ADMIN), filled to the last byte by a
ballast file that is deleted again when "space returns", and remounted
read-only for the read-only cases. Where mounting is not possible those
tests skip, and the injected-ENOSPC tests below still run: they make the
segment writer's system calls fail through a stand-in for its ``os``.

In every case new data is refused with a clear pacsstore error (the
node answers 0xA700, Refused: Out of Resources), nothing acknowledged
before is lost or changed, and ingest resumes once the cause is gone,
in the same process and after reopening.
PACSSTORE_FULL_DISK_ROUNDS repeats the fill-and-free cycle (1 here).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pacsstore import (Archive, OutOfSpaceError, ReadOnlyStoreError,
                       StoreLockedError)
from pacsstore.net import Node
from pacsstore.net.peers import describe, send_with_pynetdicom
from pacsstore.store import faults, segments
from reliability_support import reap_children  # noqa: F401 (fixture)
from reliability_support import (FILE, PACSSTORE_CLI, RECEIVED, SENDER_AE,
                                 SMALL_SEGMENT, check_contents, check_store,
                                 child_env, expected_bytes, file_bytes,
                                 instance_uid, meta_end, read_log, reap,
                                 received_parts, report, spawn_child,
                                 write_files)

ROUNDS = int(os.environ.get("PACSSTORE_FULL_DISK_ROUNDS", "1"))
FILESYSTEM_SIZE = os.environ.get("PACSSTORE_FULL_DISK_SIZE", "8m")
OUT_OF_RESOURCES = 0xA700


# A small filesystem ----------------------------------------------------------

# tmpfs needs nothing but the mount; ext4 on a loop device is a disk
# filesystem with a journal and delayed allocation (full runs add it).
FILESYSTEMS = os.environ.get("PACSSTORE_FULL_DISK_FILESYSTEMS",
                             "tmpfs").split(",")
# Mount point -> "16m ext4", for the figures.
KINDS: dict[Path, str] = {}


def _mount(kind: str, mount_point: Path, image: Path) -> None:
    if kind == "tmpfs":
        command = ["mount", "-t", "tmpfs", "-o",
                   f"size={FILESYSTEM_SIZE},mode=0755", "tmpfs"]
    else:
        subprocess.run(["truncate", "-s", FILESYSTEM_SIZE, str(image)],
                       check=True)
        made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)],
                              capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"cannot make an ext4 image: {made.stderr}")
        command = ["mount", "-o", "loop", str(image)]
    mounted = subprocess.run([*command, str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {kind} here ({mounted.stderr.strip()})"
                    f"; the injected-ENOSPC tests cover the writer")


@pytest.fixture(params=FILESYSTEMS)
def small_fs(request, tmp_path) -> Iterator[Path]:
    """A small filesystem of FILESYSTEM_SIZE, unmounted afterwards."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    _mount(request.param, mount_point, tmp_path / "ext4.img")
    KINDS[mount_point] = f"{FILESYSTEM_SIZE} {request.param}"
    try:
        yield mount_point
    finally:
        reap()  # nothing may hold the filesystem busy
        subprocess.run(["umount", str(mount_point)], check=True)


def fill(filesystem: Path) -> Path:
    """Fill ``filesystem`` to its last byte with a ballast file."""
    ballast = filesystem / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 16, 4096, 1):
            chunk = b"\0" * size
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, chunk)
    finally:
        os.close(fd)
    assert os.statvfs(filesystem).f_bavail == 0
    return ballast


def _remount(mount_point: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount_point)],
                   check=True)


# Store calls that may meet the full disk -----------------------------------

def _store_file(archive: Archive, number: int) -> str:
    uid = instance_uid(1, FILE, number)
    archive.store(file_bytes(uid))
    return uid


def _store_received(archive: Archive, number: int) -> str:
    uid = instance_uid(1, RECEIVED, number)
    dataset, syntax, sop_class = received_parts(uid)
    archive.store_received(dataset, syntax, sop_class_uid=sop_class,
                           sop_instance_uid=uid, source_ae=SENDER_AE)
    return uid


def _store_batch(archive: Archive, number: int) -> str:
    uid = instance_uid(1, FILE, number)
    archive.store_many([file_bytes(uid)])
    return uid


STORE_CALLS: tuple[Callable[[Archive, int], str], ...] = (
    _store_file, _store_received, _store_batch)


def _attempt(archive: Archive, numbers: range,
             acknowledged: set[str]) -> list[tuple[int, OutOfSpaceError]]:
    """Store each number (by the three API paths in turn); an instance
    either is acknowledged or fails with OutOfSpaceError, nothing else."""
    refused = []
    for number in numbers:
        call = STORE_CALLS[number % len(STORE_CALLS)]
        try:
            acknowledged.add(call(archive, number))
        except OutOfSpaceError as error:
            refused.append((number, error))
    return refused


def _until_refused(archive: Archive, acknowledged: set[str], *,
                   limit: int, refusals: int = 5
                   ) -> list[tuple[int, OutOfSpaceError]]:
    """Store new instances until ``refusals`` in a row were refused."""
    refused: list[tuple[int, OutOfSpaceError]] = []
    for number in range(limit):
        failed = _attempt(archive, range(number, number + 1), acknowledged)
        refused = refused + failed if failed else []
        if len(refused) == refusals:
            return refused
    raise AssertionError(f"{limit} instances stored, none refused")


def _no_loose_bytes(archive: Archive, store: Path) -> None:
    """A refused batch was rolled back: the segments hold exactly what
    the index says was committed."""
    stats = archive.stats()
    files = sorted((store / "segments").glob("*.seg"))
    assert stats.segments == len(files)
    assert stats.stored_bytes == sum(f.stat().st_size for f in files)


def test_full_disk_refuses_new_data_and_resumes_when_space_returns(small_fs):
    store = small_fs / "store"
    acknowledged: set[str] = set()
    refusals: dict[str, int] = {}
    with Archive(store, segment_size=SMALL_SEGMENT) as archive:
        assert not _attempt(archive, range(30), acknowledged)
        for round_ in range(ROUNDS):
            first = 30 + 60 * round_
            ballast = fill(small_fs)
            refused = _attempt(archive, range(first, first + 30),
                               acknowledged)
            assert refused, "a full disk refused nothing"
            for _, error in refused:
                assert error.errno == errno.ENOSPC
                assert "no space left on the disk" in str(error)
                assert "nothing of this batch was acknowledged" in \
                    str(error)
            for _, error in refused:
                where = "index" if "committing the index" in str(error) \
                    else "segments"
                refusals[where] = refusals.get(where, 0) + 1
            _no_loose_bytes(archive, store)
            check_contents(archive, acknowledged)
            ballast.unlink()
            # Space is back: the same Archive takes the refused ones.
            again = _attempt(archive, range(first, first + 60),
                             acknowledged)
            assert not again, again[0][1]
        check_contents(archive, acknowledged)
    check = check_store(store, acknowledged, segment_size=SMALL_SEGMENT)
    assert check.instances == len(acknowledged)
    with Archive(store) as archive:  # and after reopening
        assert not _attempt(archive, range(1000, 1010), acknowledged)
    report("full_disk_api", rounds=ROUNDS,
           refused_in_segment_write=refusals.get("segments", 0),
           refused_in_index_commit=refusals.get("index", 0),
           acknowledged=len(acknowledged), filesystem=KINDS[small_fs])


def test_full_disk_at_reopen_after_a_crash(small_fs, tmp_path):
    """A writer killed mid-batch left an uncommitted tail; the disk is
    full when the store is next opened, so the tail cannot be set aside:
    the open is refused with OutOfSpaceError and nothing changes; the
    store reads meanwhile; once space is back it opens and recovers."""
    store, log = small_fs / "store", tmp_path / "crash.log"
    env = {faults.ENVIRONMENT_VARIABLE: "commit.synced:4"}
    child = spawn_child("writer", str(store), str(log), "1", "--count",
                        "400", **env)
    child.communicate(timeout=120)
    acknowledged = set(read_log(log).acknowledged)
    tail = sorted((store / "segments").glob("*.seg"))[-1]
    size = tail.stat().st_size
    ballast = fill(small_fs)
    for _ in range(2):  # the same process may try again
        with pytest.raises(OutOfSpaceError, match="no space left"):
            Archive(store)
        assert tail.stat().st_size == size
        recovered = store / "recovered"
        assert not recovered.exists() or not any(recovered.iterdir())
    with Archive(store, readonly=True) as reader:
        check_contents(reader, acknowledged)
    ballast.unlink()
    check = check_store(store, acknowledged)
    assert check.recovered_files == 1
    report("full_disk_reopen_after_crash", acknowledged=len(acknowledged),
           filesystem=KINDS[small_fs])


def test_full_disk_when_creating_a_store(small_fs):
    fill(small_fs)
    with pytest.raises(OutOfSpaceError, match="while creating the store"):
        Archive(small_fs / "new")
    (small_fs / "ballast").unlink()
    with Archive(small_fs / "new") as archive:  # the leftovers taken over
        archive.store(file_bytes(instance_uid(1, FILE, 0)))
    check_store(small_fs / "new", {instance_uid(1, FILE, 0)})


def test_full_disk_under_the_index_commit_is_out_of_space(small_fs):
    """When the disk fills while LMDB writes a commit's pages, LMDB says
    EIO (its write came back short), not ENOSPC: that surfaced as a bare
    lmdb.Error, and the node answered 0xC211 instead of Out of
    Resources. The index's own write is the one that fails here."""
    store = small_fs / "store"
    with Archive(store) as archive:
        data = file_bytes(instance_uid(1, FILE, 0))
        kept = archive.store(data).sop_instance_uid
        ballast = fill(small_fs)
        # A little room back, as a rolled-back segment append leaves it:
        # LMDB's write of its pages then fits in part.
        os.truncate(ballast, ballast.stat().st_size - (16 << 10))
        values = [os.urandom(1500) for _ in range(2000)]   # new pages

        def put_many(txn):
            for number, value in enumerate(values):
                txn.put(b"filler %d" % number, value,
                        db=archive._index.db["meta"])

        with pytest.raises(OutOfSpaceError, match="committing the index"):
            archive._index.write(put_many)
        ballast.unlink()
        assert archive.get(kept) == data
        with archive._index.read() as txn:
            assert txn.get(b"filler 0", db=archive._index.db["meta"]) is None


def test_full_disk_through_the_node_answers_out_of_resources(small_fs,
                                                             tmp_path):
    uids = [instance_uid(1, FILE, n) for n in range(40)]
    paths = write_files(tmp_path / "files", uids)
    outgoing = [describe(path) for path in paths]
    store = small_fs / "store"
    with Archive(store) as archive, Node(archive, port=0) as node:
        sent = send_with_pynetdicom(outgoing[:10], "127.0.0.1", node.port,
                                    "PACSSTORE", calling_ae=SENDER_AE)
        assert sent.statuses == {0x0000: 10}
        ballast = fill(small_fs)
        full = send_with_pynetdicom(outgoing[10:], "127.0.0.1", node.port,
                                    "PACSSTORE", calling_ae=SENDER_AE)
        assert full.statuses.get(OUT_OF_RESOURCES, 0) >= 1, full.statuses
        assert set(full.statuses) <= {0x0000, OUT_OF_RESOURCES}
        assert all("no space left" in comment
                   for _, comment in full.failed)
        ballast.unlink()
        resent = send_with_pynetdicom(outgoing, "127.0.0.1", node.port,
                                      "PACSSTORE", calling_ae=SENDER_AE)
        assert resent.statuses == {0x0000: 40}
        for uid, path in zip(uids, paths):
            stored = archive.get(uid)
            assert stored[-len(expected_dataset(path)):] == \
                expected_dataset(path)
    report("full_disk_node", refused=full.statuses[OUT_OF_RESOURCES],
           filesystem=KINDS[small_fs])


def expected_dataset(path: Path) -> bytes:
    data = path.read_bytes()
    return data[meta_end(data):]


# The index map -----------------------------------------------------------------

def test_index_map_full_names_max_map_size_and_resumes_with_more(tmp_path):
    store = tmp_path / "store"
    acknowledged: set[str] = set()
    # Not a power of two times the first map: the last step is short.
    limit = 1536 << 10
    with Archive(store, map_size=256 << 10, max_map_size=limit) as archive:
        refused = _until_refused(archive, acknowledged, limit=3000)
        for _, error in refused:
            assert f"max_map_size={limit}" in str(error)
        # It grew as far as it was allowed, and no further.
        assert archive._index.env.info()["map_size"] == limit
        check_contents(archive, acknowledged)
        _no_loose_bytes(archive, store)
    with Archive(store, max_map_size=64 << 20) as archive:
        assert not _attempt(archive, [n for n, _ in refused],
                            acknowledged)
    check_store(store, acknowledged)
    report("index_map_full", acknowledged=len(acknowledged),
           refused=len(refused), max_map_size=limit)


# Read-only media ---------------------------------------------------------------

def test_read_only_media_opens_for_reading_only(small_fs):
    store = small_fs / "store"
    uids = {instance_uid(1, FILE, n) for n in range(6)}
    with Archive(store) as archive:
        for uid in uids:
            archive.store(file_bytes(uid))
    _remount(small_fs, "ro")
    try:
        with pytest.raises(ReadOnlyStoreError, match="readonly=True"):
            Archive(store)
        with pytest.raises(ReadOnlyStoreError, match="cannot create"):
            Archive(small_fs / "another")
        with Archive(store, readonly=True) as reader:
            check_contents(reader, uids)
            uid = sorted(uids)[0]
            assert expected_bytes(uid).endswith(reader.frame(uid, 0))
        got = subprocess.run([str(PACSSTORE_CLI), "--store", str(store),
                              "get", uid], env=child_env(),
                             capture_output=True)
        assert got.returncode == 0 and got.stdout == expected_bytes(uid)
        ingest = subprocess.run([str(PACSSTORE_CLI), "--store", str(store),
                                 "ingest", str(store)], env=child_env(),
                                capture_output=True, text=True)
        assert ingest.returncode == 1
        assert "cannot be written here" in ingest.stderr, ingest.stderr
    finally:
        _remount(small_fs, "rw")
    check_store(store, uids)


# Injected ENOSPC (no mount needed) -------------------------------------------

class _FailingOs:
    """``os`` for the segment writer, with one call failing on demand."""

    def __init__(self, failing: str) -> None:
        self._failing = failing
        self.armed = False

    def __getattr__(self, name: str):
        real = getattr(os, name)
        if name != self._failing:
            return real

        def call(*args, **kwargs):
            if self.armed:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(*args, **kwargs)
        return call


@pytest.mark.parametrize("failing", ["write", "fdatasync"])
def test_injected_enospc_in_the_segment_writer(tmp_path, monkeypatch,
                                               failing):
    """ENOSPC from write, or from fdatasync as a filesystem with delayed
    allocation or a thin volume may report it: the batch is refused and
    rolled back, and the writer goes on once the call succeeds again."""
    fake = _FailingOs(failing)
    monkeypatch.setattr(segments, "os", fake)
    store = tmp_path / "store"
    acknowledged: set[str] = set()
    with Archive(store, segment_size=SMALL_SEGMENT) as archive:
        assert not _attempt(archive, range(10), acknowledged)
        fake.armed = True
        refused = _attempt(archive, range(10, 20), acknowledged)
        assert [n for n, _ in refused] == list(range(10, 20))
        _no_loose_bytes(archive, store)
        fake.armed = False
        assert not _attempt(archive, range(10, 30), acknowledged)
    monkeypatch.undo()
    check_store(store, acknowledged)


def test_second_writer_is_still_locked_out_on_a_full_disk(small_fs):
    with Archive(small_fs / "store"):
        fill(small_fs)
        with pytest.raises(StoreLockedError):
            Archive(small_fs / "store")
