"""Kills at the named points of a commit (pacsstore.store.faults).

Random kills rarely land in the narrow windows of a group commit, so the
writer dies there on purpose: PACSSTORE_CRASH_AT=<point>:<n> kills it by
SIGKILL the n-th time it reaches the point. For each point the store
must reopen without repair, keep every acknowledged instance byte for
byte, show nothing the crashed batch half-wrote, and take the next
ingest. PACSSTORE_CRASH_HITS lists the hits to try at every point
("3" here; scripts/reliability.sh tries many more).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from pacsstore import Archive, NotAStoreError
from pacsstore.store import faults
from reliability_support import reap_children  # noqa: F401 (fixture)
from reliability_support import (NETWORK, SMALL_SEGMENT, ChildLog,
                                 StoreCheck, StorescuRun, check_store,
                                 instance_uid, read_log, report,
                                 spawn_child, start_serve,
                                 storescu_or_skip, write_files)

HITS = [int(n) for n in os.environ.get("PACSSTORE_CRASH_HITS",
                                       "3").split(",")]
# A crashing writer may go this far, enough to reach every hit tried;
# a writer that runs to the end stores a series of this many.
CRASH_COUNT, COUNT = 400, 16


def _writer(store: Path, log: Path, series: int, *extra: str,
            crash_at: str | None = None,
            count: int | None = None) -> tuple[int, str]:
    env = {faults.ENVIRONMENT_VARIABLE: crash_at} if crash_at else {}
    count = count or (CRASH_COUNT if crash_at else COUNT)
    child = spawn_child("writer", str(store), str(log), str(series),
                        "--count", str(count), "--segment-size",
                        str(SMALL_SEGMENT), *extra, **env)
    _, stderr = child.communicate(timeout=120)
    return child.returncode, stderr.decode()


def crash(store: Path, log: Path, series: int, point: str,
          *extra: str) -> ChildLog:
    """Run a writer that must die at ``point``; what it acknowledged."""
    code, stderr = _writer(store, log, series, *extra, crash_at=point)
    name = point.split(":")[0]
    assert code == -signal.SIGKILL, f"exit {code}, not killed: {stderr}"
    assert f"pacsstore: crash point {name}\n" in stderr, stderr
    written = read_log(log)
    assert not written.errors and not written.finished
    return written


def ingest(store: Path, log: Path, series: int, *extra: str,
           count: int | None = None) -> ChildLog:
    """A writer that runs to the end: the next ingest after a crash."""
    code, stderr = _writer(store, log, series, *extra, count=count)
    assert code == 0, stderr
    written = read_log(log)
    assert written.finished and not written.errors
    return written


def uncommitted(store: Path) -> tuple[int, int]:
    """(bytes, segment files) on disk that no index commit covers, as a
    reader sees them before any recovery."""
    with Archive(store, readonly=True) as reader:
        stats = reader.stats()
    files = list((store / "segments").glob("*.seg"))
    return (sum(f.stat().st_size for f in files) - stats.stored_bytes,
            len(files) - stats.segments)


def _recovered(store: Path) -> list[Path]:
    folder = store / "recovered"
    return sorted(folder.iterdir()) if folder.exists() else []


def _tally(point: str, check: StoreCheck, kills: int = 1) -> None:
    report("crash_point", point=point, kills=kills,
           instances=check.instances, acknowledged=check.acknowledged)


# Creating a store -----------------------------------------------------------

def test_crash_while_creating_a_store_leaves_one_that_opens(tmp_path):
    """Killed with the folders made and the marker not yet in place: no
    reader takes it for a store, and the next writer finishes creating
    it instead of refusing a directory that is "not empty"."""
    store = tmp_path / "store"
    crash(store, tmp_path / "crash.log", 1, "store.creating")
    with pytest.raises(NotAStoreError, match="no PACSSTORE marker"):
        Archive(store, readonly=True)
    after = ingest(store, tmp_path / "next.log", 1)
    check = check_store(store, set(after.acknowledged))
    _tally("store.creating", check)


# Inside the group commit ---------------------------------------------------

@pytest.mark.parametrize("point", ["segment.written", "commit.synced"])
@pytest.mark.parametrize("hit", HITS)
def test_crash_before_index_commit_sets_the_batch_aside(tmp_path, point,
                                                        hit):
    """Blocks written (and, at commit.synced, fdatasynced) but no index
    commit: nothing of the batch was acknowledged, it stays invisible,
    and reopening moves its bytes to recovered/ before cutting them."""
    store = tmp_path / "store"
    written = crash(store, tmp_path / "crash.log", 1, f"{point}:{hit}")
    loose_bytes, _ = uncommitted(store)
    assert loose_bytes > 0
    check = check_store(store, set(written.acknowledged))
    assert uncommitted(store) == (0, 0)
    aside = _recovered(store)
    assert sum(f.stat().st_size for f in aside) == loose_bytes
    assert aside
    after = ingest(store, tmp_path / "next.log", 2, "--resend")
    check_store(store, set(written.acknowledged) | set(after.acknowledged))
    _tally(f"{point}:{hit}", check)


@pytest.mark.parametrize("hit", HITS)
def test_crash_after_index_commit_before_ack_keeps_the_batch(tmp_path,
                                                             hit):
    """Committed, then killed before any caller heard: the batch is
    durable and whole, though nobody was told, and its re-send is a
    duplicate."""
    store = tmp_path / "store"
    written = crash(store, tmp_path / "crash.log", 1,
                    f"commit.committed:{hit}")
    assert uncommitted(store) == (0, 0)
    check = check_store(store, set(written.acknowledged))
    assert check.instances > len(written.acknowledged)
    after = ingest(store, tmp_path / "next.log", 2, "--resend")
    assert "duplicate" in after.acknowledged.values()
    check_store(store, set(written.acknowledged) | set(after.acknowledged))
    _tally(f"commit.committed:{hit}", check)


# Segment rotation ----------------------------------------------------------

@pytest.mark.parametrize("hit", [1, *(h + 1 for h in HITS)])
def test_crash_between_new_segment_and_its_registration(tmp_path, hit):
    """A new segment (the store's first at hit 1, then each rotation)
    has its header but no index commit names it: reopening sets it
    aside and removes it, and the next segment gets its number."""
    store = tmp_path / "store"
    written = crash(store, tmp_path / "crash.log", 1,
                    f"segment.created:{hit}")
    _, loose_files = uncommitted(store)
    assert loose_files == 1
    check = check_store(store, set(written.acknowledged))
    assert uncommitted(store) == (0, 0)
    after = ingest(store, tmp_path / "next.log", 2, "--resend")
    final = check_store(store, set(written.acknowledged)
                        | set(after.acknowledged))
    assert final.instances > check.instances
    _tally(f"segment.created:{hit}", check)


# Re-sends ------------------------------------------------------------------

@pytest.mark.parametrize("hit", HITS)
def test_crash_in_the_resend_path_keeps_the_stored_instance(tmp_path, hit):
    """Killed while recognising a re-send: the stored instance is
    untouched, and sending it again still gives a duplicate."""
    store = tmp_path / "store"
    # 30 instances: a re-send of each is a hit, enough for every hit.
    first = ingest(store, tmp_path / "first.log", 1, count=40)
    written = crash(store, tmp_path / "crash.log", 2, f"commit.resend:{hit}",
                    "--resend")
    acknowledged = set(first.acknowledged) | set(written.acknowledged)
    check = check_store(store, acknowledged)
    again = ingest(store, tmp_path / "again.log", 2, "--resend")
    assert all(status == "duplicate" for uid, status in
               again.acknowledged.items() if uid in first.acknowledged)
    check_store(store, acknowledged | set(again.acknowledged))
    _tally(f"commit.resend:{hit}", check)


# Recovery ----------------------------------------------------------------------

def test_crash_during_recovery_is_recovered_on_the_next_open(tmp_path):
    """Killed after copying an uncommitted tail aside but before cutting
    it off: the next open copies it again and cuts it; both copies hold
    the same bytes and the store is whole."""
    store = tmp_path / "store"
    written = crash(store, tmp_path / "crash.log", 1, "commit.synced:3")
    loose_bytes, _ = uncommitted(store)
    assert loose_bytes > 0
    crash(store, tmp_path / "recovering.log", 2, "recovery.set_aside")
    assert uncommitted(store)[0] == loose_bytes
    check = check_store(store, set(written.acknowledged))
    # One copy per tail (segment and offset), and a second of the tail
    # the killed recovery had copied; the crashed batch may have
    # spanned two segments, so there may be two tails.
    copies: dict[tuple[str, str], list[bytes]] = {}
    for path in _recovered(store):
        segment, start, _when, _suffix = path.name.split(".")
        copies.setdefault((segment, start), []).append(path.read_bytes())
    twice = [tail for tail in copies.values() if len(tail) == 2]
    assert len(twice) == 1 and twice[0][0] == twice[0][1]
    assert all(len(tail) in (1, 2) for tail in copies.values())
    assert sum(len(tail[0]) for tail in copies.values()) == loose_bytes
    ingest(store, tmp_path / "next.log", 3)
    _tally("recovery.set_aside", check, kills=2)


# The harness itself ------------------------------------------------------------

def test_the_check_catches_an_acknowledgement_before_durability(tmp_path):
    """A writer that claims its instances before storing them, killed in
    a commit: the check must find the claimed-but-lost instances; else
    none of these tests could fail."""
    store = tmp_path / "store"
    written = crash(store, tmp_path / "crash.log", 1, "commit.synced:2",
                    "--ack-early")
    with pytest.raises(AssertionError, match="acknowledged but lost"):
        check_store(store, set(written.acknowledged))


def test_crash_point_names_and_hits_are_checked():
    assert faults.parse("") == {}
    assert faults.parse("commit.synced, segment.created:3") == {
        "commit.synced": 1, "segment.created": 3}
    with pytest.raises(ValueError, match="unknown crash point 'commit'"):
        faults.parse("commit")
    with pytest.raises(ValueError, match="name:N with N >= 1"):
        faults.parse("commit.synced:0")
    faults.crash_point("commit.synced")  # not armed here: returns


# The node ------------------------------------------------------------------

@pytest.fixture
def storescu() -> str:
    return storescu_or_skip()


@pytest.mark.parametrize("point, kept", [("commit.committed:3", True),
                                         ("segment.written:3", False)])
def test_node_crash_then_resend_by_storescu(tmp_path, storescu, point,
                                            kept):
    """The node dies in its third commit. storescu saw success for the
    instances before it and not for that one; after a restart it sends
    everything again and every file succeeds. The instance of the
    crashed commit was kept (committed, unanswered: its re-send is a
    duplicate) or not (never committed: its re-send stores it)."""
    uids = [instance_uid(1, NETWORK, n) for n in range(10)]
    files = write_files(tmp_path / "files", uids)
    store = tmp_path / "store"
    Archive(store).close()  # so that hits count the node's commits only
    server, port = start_serve(store, tmp_path / "serve.err",
                          **{faults.ENVIRONMENT_VARIABLE: point})
    succeeded = StorescuRun(storescu, port, files).finish()
    server.wait(30)
    assert server.returncode == -signal.SIGKILL
    assert succeeded == files[:2]
    check = check_store(store, set(uids[:2]))
    assert check.instances == (3 if kept else 2)
    server, port = start_serve(store, tmp_path / "serve.err")
    try:
        assert StorescuRun(storescu, port, files).finish() == files
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    assert check_store(store, set(uids)).instances == len(uids)
    _tally(f"node {point}", check)

