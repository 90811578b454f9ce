"""Acknowledged means durable: a writer killed with SIGKILL right after
``store_many`` returned loses none of what it acknowledged."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from corpus import corpus_available, corpus_files
from pacsstore import Archive

SRC = Path(__file__).resolve().parents[1] / "src"

CHILD = textwrap.dedent("""
    import sys
    import pydicom
    from pacsstore import Archive
    store, paths = sys.argv[1], sys.argv[2:]
    archive = Archive(store)
    results = archive.store_many(paths)
    for result in results:
        print(result.sop_instance_uid, flush=True)
    print("DONE", flush=True)
    # Keep writing new instances until killed, so that the kill lands
    # in the middle of appends and commits.
    ds = pydicom.dcmread(paths[0])
    n = 0
    while True:
        n += 1
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.77.{n}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PixelData = bytes([n % 256]) * len(ds.PixelData)
        archive.store_many([ds])
""")


def _files(count: int) -> list[Path]:
    files = [f for f in corpus_files() if f.pydicom_status == "ok"
             and "dicomdir" not in f.flags and f.relpath.startswith(
                 "dcm_qa")]
    return [f.path for f in files[:count]]


@pytest.mark.skipif(not corpus_available(), reason="no corpus")
def test_durability_sigkill_after_store_many_loses_nothing(tmp_path):
    paths = _files(40)
    store = tmp_path / "store"
    env = dict(os.environ, PYTHONPATH=str(SRC))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(store), *map(str, paths)],
        stdout=subprocess.PIPE, text=True, env=env)
    uids = []
    for line in child.stdout:
        if line.strip() == "DONE":
            break
        uids.append(line.strip())
    # Let it write more for a moment, so the kill lands mid-batch.
    time.sleep(0.5)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert len(uids) == len(paths)
    expected = {}
    for uid, path in zip(uids, paths):
        expected[uid] = hashlib.sha256(path.read_bytes()).hexdigest()
    with Archive(store) as archive:
        for uid, digest in expected.items():
            assert hashlib.sha256(archive.get(uid)).hexdigest() == digest
        stats = archive.stats()
        # What was committed after DONE is there too, and whole.
        for answer in archive.find("instance"):
            archive.get(answer["SOPInstanceUID"])
        sizes = sum(p.stat().st_size
                    for p in (store / "segments").glob("*.seg"))
        assert stats.stored_bytes == sizes


WRITER = textwrap.dedent("""
    import hashlib, io, sys, threading
    import pydicom
    from pacsstore import Archive
    store, source, run = sys.argv[1], sys.argv[2], sys.argv[3]
    ds = pydicom.dcmread(source)
    lock = threading.Lock()

    def variant(n):
        with lock:
            ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.78.{run}.{n}"
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.PixelData = bytes([n % 251]) * len(ds.PixelData)
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            return out.getvalue()

    archive = Archive(store)
    print("OPEN", flush=True)

    def work(first):
        # Four threads share group commits; a line is printed only once
        # store() has returned, so every line is an acknowledgement.
        for n in range(first, 1 << 30, 4):
            data = variant(n)
            result = archive.store(data)
            digest = hashlib.sha256(data).hexdigest()
            sys.stdout.write(f"{result.sop_instance_uid} {digest}\\n")
            sys.stdout.flush()

    for first in range(4):
        threading.Thread(target=work, args=(first,), daemon=True).start()
    threading.Event().wait()
""")


@pytest.mark.skipif(not corpus_available(), reason="no corpus")
def test_durability_repeated_sigkill_mid_batch_keeps_every_ack(tmp_path):
    """Kill the writer at random moments, reopening the store each time:
    every acknowledged instance survives whole, the store reopens after
    each kill and its counters match its blocks. PACSSTORE_KILLS sets
    the number of kills (5 by default; 20 or more for a longer run)."""
    kills = int(os.environ.get("PACSSTORE_KILLS", "5"))
    source = _files(1)[0]
    store = tmp_path / "store"
    env = dict(os.environ, PYTHONPATH=str(SRC))
    delays = random.Random(20240611)
    acknowledged: dict[str, str] = {}
    for run in range(kills):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(store), str(source),
             str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env)
        assert child.stdout.readline().strip() == b"OPEN", \
            child.communicate()[1].decode()
        time.sleep(delays.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        # The last line may be cut by the kill: only whole lines count.
        for line in out.decode().split("\n")[:-1]:
            uid, digest = line.split()
            acknowledged[uid] = digest
    assert acknowledged
    with Archive(store) as archive:
        for uid, digest in acknowledged.items():
            assert hashlib.sha256(archive.get(uid)).hexdigest() == digest
        stats = archive.stats()
        assert stats.instances >= len(acknowledged)
        sizes = sum(p.stat().st_size
                    for p in (store / "segments").glob("*.seg"))
        assert stats.stored_bytes == sizes
        assert stats.logical_bytes == sum(
            answer["size"] for answer in (
                archive.record(found["SOPInstanceUID"])
                for found in archive.find("instance")))
        archive.store(source)  # and it goes on
