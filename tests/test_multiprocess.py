"""One writer and many readers, in separate processes.

LMDB gives a store one writer and readers that never block it, in any
process; the writer lock (an flock on ``lock``) keeps a second writer
out. These tests run the real thing: a writer process ingesting while
reader processes find and read through the API and the CLI, and while
one holds a read transaction open for the whole run; then processes
racing to open, and to create, the same store for writing.
PACSSTORE_CONCURRENCY_SECONDS sets how long each phase of the
reader/writer test runs (1.5 s here), PACSSTORE_OPEN_RACES how often
processes race to open one store (3 here).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pacsstore import Archive, StoreLockedError
from reliability_support import reap_children  # noqa: F401 (fixture)
from reliability_support import (PACSSTORE_CLI, check_store, child_env,
                                 expected_bytes, read_log, report,
                                 spawn_child, wait_for_line)

PHASE_SECONDS = float(os.environ.get("PACSSTORE_CONCURRENCY_SECONDS",
                                     "1.5"))
RACES = int(os.environ.get("PACSSTORE_OPEN_RACES", "3"))
READERS = 2


def _acks(log: Path) -> int:
    return len(read_log(log).acknowledged)


def _rate(log: Path, seconds: float) -> float:
    """Instances the writer acknowledged per second over ``seconds``."""
    start = _acks(log)
    time.sleep(seconds)
    return (_acks(log) - start) / seconds


def _cli(store: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(PACSSTORE_CLI), "--store", str(store),
                           *args], env=child_env(), capture_output=True,
                          timeout=60)


def _cli_reads(store: Path, deadline: float) -> int:
    """`pacsstore find` and `pacsstore get` beside the writer, until
    ``deadline``: every instance listed comes back whole."""
    reads = 0
    while time.monotonic() < deadline:
        listed = _cli(store, "find", "--level", "instance", "--format",
                      "tsv")
        assert listed.returncode == 0, listed.stderr.decode()
        rows = listed.stdout.decode().splitlines()
        header = rows[0].split("\t")
        column = header.index("SOPInstanceUID")
        for row in rows[-3:]:
            uid = row.split("\t")[column]
            got = _cli(store, "get", uid)
            assert got.returncode == 0, got.stderr.decode()
            assert got.stdout == expected_bytes(uid)
            reads += 1
    return reads


def test_readers_in_other_processes_never_block_the_writer(tmp_path):
    store, stop = tmp_path / "store", tmp_path / "stop"
    log = tmp_path / "writer.log"
    writer = spawn_child("writer", str(store), str(log), "1", "--resend")
    assert wait_for_line(log, "open", writer)
    alone = _rate(log, PHASE_SECONDS)

    holder_log = tmp_path / "holder.log"
    holder = spawn_child("holder", str(store), str(holder_log), str(stop))
    wait_for_line(holder_log, "open", holder, timeout=60) or pytest.fail(
        holder.communicate()[1].decode())
    reader_logs = [tmp_path / f"reader{n}.log" for n in range(READERS)]
    readers = [spawn_child("reader", str(store), str(path), str(stop))
               for path in reader_logs]
    before = _acks(log)
    started = time.monotonic()
    cli_reads = _cli_reads(store, started + PHASE_SECONDS)
    beside = (_acks(log) - before) / (time.monotonic() - started)
    stop.touch()
    for child in (holder, *readers):
        _, stderr = child.communicate(timeout=60)
        assert child.returncode == 0, stderr.decode()
    writer.send_signal(signal.SIGKILL)  # one more crash, readers attached
    writer.communicate()

    written = read_log(log)
    assert not written.errors
    reads = 0
    for path in reader_logs:
        lines = path.read_text().splitlines()
        assert lines[-1] == "done", lines[-3:]
        reads += int(lines[-2].split()[1])
    assert reads > 0 and cli_reads > 0
    # The held snapshot stayed where it was while the writer went on.
    snapshot = holder_log.read_text().splitlines()[-2].split()
    assert snapshot[1] == snapshot[2]
    assert beside > 0, "the writer stopped while readers read"
    # Two cores: readers take CPU from the writer, but must not stall it.
    assert beside >= 0.2 * alone, (alone, beside)
    check = check_store(store, set(written.acknowledged))
    report("readers_beside_writer", writer_alone_per_s=round(alone, 1),
           writer_beside_readers_per_s=round(beside, 1),
           api_reads=reads, cli_reads=cli_reads,
           instances=check.instances, seconds=PHASE_SECONDS)


def test_a_second_writer_process_gets_store_locked_error(tmp_path):
    store, log = tmp_path / "store", tmp_path / "writer.log"
    writer = spawn_child("writer", str(store), str(log), "1")
    try:
        assert wait_for_line(log, "open", writer)
        with pytest.raises(StoreLockedError, match="readonly=True"):
            Archive(store)
        ingest = _cli(store, "ingest", str(tmp_path))
        assert ingest.returncode == 1
        assert b"being written by another pacsstore process" in \
            ingest.stderr
        with Archive(store, readonly=True) as reader:
            assert reader.stats().instances >= 0
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.communicate()
    check_store(store, set(read_log(log).acknowledged))


@pytest.mark.parametrize("existing", [False, True],
                         ids=["new store", "existing store"])
def test_processes_racing_to_open_one_store_for_writing(tmp_path,
                                                        existing):
    """Two processes open the same store for writing at one instant,
    again and again, the store new or not: one gets it, the other gets
    StoreLockedError, and the store stays sound."""
    outcomes = []
    for race in range(RACES):
        store = tmp_path / f"store{race}"
        if existing:
            Archive(store).close()
        go, stop = tmp_path / f"go{race}", tmp_path / f"stop{race}"
        logs = [tmp_path / f"opener{race}-{n}.log" for n in range(2)]
        openers = [spawn_child("opener", str(store), str(path), str(go),
                               str(stop)) for path in logs]
        time.sleep(0.5)  # both spinning on the go file
        go.touch()
        first_lines = [_first_line(path, child)
                       for path, child in zip(logs, openers)]
        stop.touch()
        for child in openers:
            _, stderr = child.communicate(timeout=60)
            assert child.returncode == 0, stderr.decode()
        outcomes.append(sorted(line.split(":")[0] for line in first_lines))
        with Archive(store) as archive:
            assert archive.stats().segments == 1
    odd = [o for o in outcomes if o != ["opened",
                                        "refused StoreLockedError"]]
    assert not odd, odd
    report("open_races", races=RACES, existing=existing)


def _first_line(log: Path, child: subprocess.Popen) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if "\n" in text:
            return text.splitlines()[0]
        if child.poll() is not None:
            pytest.fail(f"exit {child.returncode}: "
                        f"{child.communicate()[1].decode()}")
        time.sleep(0.005)
    raise TimeoutError(f"{log} stayed empty")


def test_reader_sees_only_whole_instances_while_the_writer_is_killed(
        tmp_path):
    """A reader keeps reading through a writer's SIGKILL and the next
    writer's recovery: what it finds it reads whole, before and after."""
    store, stop = tmp_path / "store", tmp_path / "stop"
    first = tmp_path / "writer1.log"
    writer = spawn_child("writer", str(store), str(first), "1",
                         "--segment-size", str(96 * 1024))
    assert wait_for_line(first, "open", writer)
    time.sleep(0.3)
    reader_log = tmp_path / "reader.log"
    reader = spawn_child("reader", str(store), str(reader_log), str(stop))
    assert wait_for_line(reader_log, "open", reader)
    time.sleep(0.3)
    writer.send_signal(signal.SIGKILL)
    writer.communicate()
    second = tmp_path / "writer2.log"
    writer = spawn_child("writer", str(store), str(second), "2",
                         "--resend", "--segment-size", str(96 * 1024))
    assert wait_for_line(second, "open", writer)
    time.sleep(0.5)
    stop.touch()
    _, stderr = reader.communicate(timeout=60)
    assert reader.returncode == 0, stderr.decode()
    writer.send_signal(signal.SIGKILL)
    writer.communicate()
    lines = reader_log.read_text().splitlines()
    assert lines[-1] == "done" and int(lines[-2].split()[1]) > 0
    acknowledged = set(read_log(first).acknowledged) | set(
        read_log(second).acknowledged)
    check_store(store, acknowledged)


def test_stale_reader_slots_of_killed_processes_are_cleared(tmp_path):
    """A reader killed inside a read transaction leaves its slot in the
    LMDB lock file while another process keeps the environment open;
    such a slot pins old pages, so the index would only grow. The
    writer clears the slots of dead processes when it opens."""
    store, stop = tmp_path / "store", tmp_path / "stop"
    Archive(store).close()
    keeper_log, victim_log = tmp_path / "keeper.log", tmp_path / "victim.log"
    keeper = spawn_child("holder", str(store), str(keeper_log), str(stop))
    victim = spawn_child("holder", str(store), str(victim_log),
                         str(tmp_path / "never"))
    assert wait_for_line(keeper_log, "open 0", keeper)
    assert wait_for_line(victim_log, "open 0", victim)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    with Archive(store) as archive:
        table = archive._index.env.readers()
    stop.touch()
    keeper.communicate(timeout=60)
    assert f"{victim.pid} " not in table.replace("\n", " \n"), table
    assert f"{keeper.pid} " in table.replace("\n", " \n"), table

