"""Acknowledged means durable, shown by killing writers at random.

Each test kills an ingesting process with SIGKILL, over and over, and
after every kill checks the store (reliability_support.check_store): it
opens without repair, every instance whose store was acknowledged before
the kill is there byte for byte, and every instance any API shows reads
back whole. Two writers are killed:

- a process ingesting through the API (``store``, ``store_many``,
  ``store_received`` and re-sends, on four threads, with small segments
  so that rotations are frequent); an instance is acknowledged when the
  call returned, which the child logs at once;
- ``pacsstore serve`` receiving from DCMTK's ``storescu``; an instance
  is acknowledged when storescu logged "Received Store Response
  (Success)" for it. That line is storescu's own record of a success
  status that reached it, the only evidence a modality has; the node
  writes no log line of its own after the response is on the wire, and
  a line before sending would claim more than the peer knows.

PACSSTORE_KILLS and PACSSTORE_NODE_KILLS set the number of kills (10 and
3 here; scripts/reliability.sh runs hundreds).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corpus import corpus_available, corpus_files
from pacsstore import Archive
from reliability_support import reap_children  # noqa: F401 (fixture)
from reliability_support import (NETWORK, SMALL_SEGMENT, StorescuRun,
                                 check_store, child_env, instance_uid,
                                 kill, read_log, report, spawn_child,
                                 start_serve, started, storescu_or_skip,
                                 wait_for_line, write_files)

API_KILLS = int(os.environ.get("PACSSTORE_KILLS", "10"))
NODE_KILLS = int(os.environ.get("PACSSTORE_NODE_KILLS", "3"))
SEED = int(os.environ.get("PACSSTORE_SEED", "20240611"))
# A fresh store after this many kills keeps each check (which reads
# every instance) short while a store still lives through many crashes.
KILLS_PER_STORE = 25
# The node's cycles each send the previous series again, then this many
# new instances.
NODE_SERIES = 40


# Through the API --------------------------------------------------------------

def _api_cycle(store: Path, log: Path, series: int,
               rng: random.Random) -> None:
    """Start a writer, kill it at a random moment: one kill in five while
    it opens the store (and recovers from the last kill), the rest while
    it ingests."""
    child = spawn_child("writer", str(store), str(log), str(series),
                        "--resend", "--segment-size", str(SMALL_SEGMENT))
    if rng.random() < 0.2:
        time.sleep(rng.uniform(0.0, 0.5))
    else:
        opened = wait_for_line(log, "open", child)
        assert opened, child.communicate()[1].decode()
        time.sleep(rng.uniform(0.0, 0.6))
    stderr = kill(child)
    assert child.returncode == -signal.SIGKILL, stderr.decode()


def test_durability_random_sigkill_of_api_writer_keeps_every_ack(tmp_path):
    """API_KILLS writers killed at random, each check_store'd, then a
    writer that runs to its end on every store."""
    rng = random.Random(SEED)
    acknowledged: dict[Path, set[str]] = {}
    checked = verified = 0
    for cycle in range(API_KILLS):
        store = tmp_path / f"store{cycle // KILLS_PER_STORE}"
        log = tmp_path / f"writer{cycle}.log"
        _api_cycle(store, log, cycle % KILLS_PER_STORE + 1, rng)
        written = read_log(log)
        assert not written.errors, written.errors
        acks = acknowledged.setdefault(store, set())
        acks.update(written.acknowledged)
        # Now and then the next writer, not the check, is the first to
        # open the store for writing, so that kills land in recovery too.
        recover = rng.random() < 0.75
        if not store.exists():
            continue  # killed before it made the store
        check = check_store(store, acks, recover=recover)
        checked += check.acknowledged
        verified += check.instances
    total = sum(map(len, acknowledged.values()))
    set_aside = sum(len(list((store / "recovered").glob("*")))
                    for store in acknowledged)
    assert total > API_KILLS, "the writers acknowledged almost nothing"
    for store, acks in acknowledged.items():
        final = check_store(store, acks)
        # And ingest goes on after the last kill.
        log = tmp_path / f"{store.name}-after.log"
        child = spawn_child("writer", str(store), str(log), "999",
                            "--count", "8")
        assert child.wait(60) == 0, child.communicate()[1].decode()
        assert read_log(log).finished
        assert check_store(store, acks).instances > final.instances
    report("api_random_kills", kills=API_KILLS, acknowledged=total,
           acknowledged_checks=checked, instance_reads=verified,
           stores=len(acknowledged), set_aside_files=set_aside)


# Through the node, with DCMTK's storescu ----------------------------------

@pytest.fixture
def storescu() -> str:
    return storescu_or_skip()


def test_durability_random_sigkill_of_node_keeps_every_success(
        tmp_path, storescu):
    """NODE_KILLS nodes killed at random while storescu sends; then one
    that stays up takes every file (re-sends included) with success."""
    rng = random.Random(SEED + 1)
    store, errors = tmp_path / "store", tmp_path / "serve.err"
    by_path: dict[Path, str] = {}
    acknowledged: set[str] = set()
    previous: list[str] = []
    for cycle in range(NODE_KILLS):
        new = [instance_uid(cycle + 1, NETWORK, n)
               for n in range(NODE_SERIES)]
        uids = previous + new
        files = write_files(tmp_path / "files", uids)
        by_path.update(zip(files, uids))
        server, port = start_serve(store, errors)
        sender = StorescuRun(storescu, port, files)
        # Kill after a random number of successes, a moment later: the
        # kill lands anywhere from receiving to committing to answering.
        sender.wait_for_successes(rng.randrange(len(files) - 10))
        time.sleep(rng.uniform(0.0, 0.01))
        kill(server)
        succeeded = sender.finish()
        assert len(succeeded) < len(files), "the kill came too late"
        acknowledged |= {by_path[p] for p in succeeded}
        check_store(store, acknowledged)
        previous = new
    # The node starts again and takes everything, re-sends included.
    files = write_files(tmp_path / "files", list(by_path.values()))
    server, port = start_serve(store, errors)
    try:
        succeeded = StorescuRun(storescu, port, files).finish()
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    assert len(succeeded) == len(files)
    final = check_store(store, set(by_path.values()))
    assert final.instances == len(by_path)
    report("node_random_kills", kills=NODE_KILLS,
           acknowledged=len(acknowledged), instances=final.instances)


# Real files ----------------------------------------------------------------

CORPUS_WRITER = """
import sys
from pacsstore import Archive
archive = Archive(sys.argv[1])
for result in archive.store_many(sys.argv[2:]):
    print(result.sop_instance_uid, flush=True)
print("DONE", flush=True)
sys.stdin.read()  # ingest done; wait to be killed
"""


@pytest.mark.skipif(not corpus_available(), reason="no corpus")
def test_durability_sigkill_after_store_many_of_real_files(tmp_path):
    """Real files from the corpus, killed once store_many returned: the
    data must survive without the close that would flush it."""
    paths = [f.path for f in corpus_files() if f.pydicom_status == "ok"
             and "dicomdir" not in f.flags
             and f.relpath.startswith("dcm_qa")][:40]
    store = tmp_path / "store"
    child = started(subprocess.Popen(
        [sys.executable, "-c", CORPUS_WRITER, str(store),
         *map(str, paths)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env=child_env()))
    uids = []
    for line in child.stdout:
        if line.strip() == "DONE":
            break
        uids.append(line.strip())
    kill(child)
    assert len(uids) == len(paths)
    with Archive(store) as archive:
        for uid, path in zip(uids, paths):
            assert hashlib.sha256(archive.get(uid)).digest() == \
                hashlib.sha256(path.read_bytes()).digest()
