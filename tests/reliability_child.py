"""The processes the reliability tests start, kill and watch.

``writer``  ingests generated instances through every API path (store,
            store_many, store_received, and re-sends of an earlier
            series) from four threads, and appends ``ack <uid> <status>``
            to its log as soon as each call has returned; nothing is
            acknowledged before that line exists.
``reader``  opens the store read-only and, until told to stop, finds
            instances and reads each whole (get, open, frame), checking
            every byte against the record's digest and the generator.
``holder``  opens the store read-only and keeps one read transaction
            open, the worst a reader can do to a writer.
``opener``  opens the store for writing at a signal, racing another.

A log line is one ``os.write`` on an O_APPEND descriptor: a SIGKILL
cannot split it, and the page cache it lands in outlives the process,
so no fsync is needed for the kills these tests make (a power cut is
another matter; see docs/reliability.md).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import sys
import threading
import time
import traceback
from pathlib import Path

from pacsstore import Archive, PacsstoreError
from reliability_support import (FILE, RECEIVED, SENDER_AE, expected_digest,
                                 file_bytes, instance_uid, received_parts)

# Instances per store_many call of the batch thread.
BATCH = 6
# No child outlives this, whatever becomes of the test that started it.
LIFETIME_SECONDS = 900


def _end_at_lifetime() -> None:
    def watchdog() -> None:
        time.sleep(LIFETIME_SECONDS)
        os._exit(4)
    threading.Thread(target=watchdog, daemon=True).start()


class Log:
    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                           0o644)

    def line(self, text: str) -> None:
        os.write(self._fd, (text + "\n").encode())

    def fail(self, where: str) -> None:
        """An exception in a worker is the test's failure, not a quiet
        thread death: log it and end the process."""
        summary = traceback.format_exc().strip().splitlines()[-1]
        self.line(f"error {where}: {summary}")
        sys.stderr.write(traceback.format_exc())
        sys.stderr.flush()
        os._exit(3)


def _numbers(start: int, step: int, count: int | None):
    number = start
    while count is None or number < count:
        yield number
        number += step


def _store_files(archive: Archive, log: Log, series: int,
                 count: int | None) -> None:
    for number in _numbers(0, 4, count):
        uid = instance_uid(series, FILE, number)
        result = archive.store(file_bytes(uid))
        log.line(f"ack {result.sop_instance_uid} {result.status}")


def _store_received(archive: Archive, log: Log, series: int,
                    count: int | None) -> None:
    for number in _numbers(1, 4, count):
        uid = instance_uid(series, RECEIVED, number)
        dataset, syntax, sop_class = received_parts(uid)
        result = archive.store_received(
            dataset, syntax, sop_class_uid=sop_class, sop_instance_uid=uid,
            source_ae=SENDER_AE)
        log.line(f"ack {result.sop_instance_uid} {result.status}")


def _store_batches(archive: Archive, log: Log, series: int,
                   count: int | None) -> None:
    numbers = _numbers(2, 4, count)
    while True:
        uids = [instance_uid(series, FILE, n)
                for n in itertools.islice(numbers, BATCH)]
        if not uids:
            return
        for result in archive.store_many([file_bytes(u) for u in uids]):
            log.line(f"ack {result.sop_instance_uid} {result.status}")


def _resend(archive: Archive, log: Log, series: int,
            count: int | None) -> None:
    """Send an earlier series again: what it acknowledged comes back as
    a duplicate, what its crash cut off is stored now."""
    if series <= 1:
        return
    for number in _numbers(0, 1, count):
        for kind in (FILE, RECEIVED):
            uid = instance_uid(series - 1, kind, number)
            if kind == FILE:
                result = archive.store(file_bytes(uid))
            else:
                dataset, syntax, sop_class = received_parts(uid)
                result = archive.store_received(
                    dataset, syntax, sop_class_uid=sop_class,
                    sop_instance_uid=uid, source_ae=SENDER_AE)
            log.line(f"ack {result.sop_instance_uid} {result.status}")


def _claim_before_storing(log: Log, series: int, count: int) -> None:
    """The bug the checks exist to catch: acknowledging instances before
    they are durable (here, before they are even stored)."""
    for number in range(0, count, 4):
        log.line(f"ack {instance_uid(series, FILE, number)} claimed")


def writer(args: argparse.Namespace) -> None:
    log = Log(args.log)
    archive = Archive(args.store, segment_size=args.segment_size)
    log.line("open")
    if args.ack_early:
        _claim_before_storing(log, args.series, args.count)
    paths = [_store_files, _store_received, _store_batches]
    if args.resend:
        paths.append(_resend)
    threads = []
    for work in paths:
        def run(work=work) -> None:
            try:
                work(archive, log, args.series, args.count)
            except BaseException:  # noqa: BLE001 - reported, then exit
                log.fail(work.__name__)
        threads.append(threading.Thread(target=run, daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    archive.close()
    log.line("done")


def _check_instance(archive: Archive, uid: str) -> int:
    data = archive.get(uid)
    digest = hashlib.sha256(data).hexdigest()
    record = archive.record(uid)
    if not digest == record["sha256"] == expected_digest(uid):
        raise AssertionError(f"{uid}: read {digest}, record "
                             f"{record['sha256']}")
    with archive.open(uid) as stream:
        if hashlib.sha256(stream.read()).hexdigest() != digest:
            raise AssertionError(f"{uid}: the stream differs from get")
    frame = archive.frame(uid, 0)
    if not data.endswith(frame):
        raise AssertionError(f"{uid}: frame 0 is not the pixel data")
    return len(data)


def reader(args: argparse.Namespace) -> None:
    """Read until the stop file appears; log what was read and how."""
    log = Log(args.log)
    stop = Path(args.stop)
    reads = rounds = 0
    with Archive(args.store, readonly=True) as archive:
        log.line("open")
        while not stop.exists():
            found = [a["SOPInstanceUID"] for a in archive.find("instance")]
            for uid in found[-args.sample:]:
                try:
                    _check_instance(archive, uid)
                except BaseException:  # noqa: BLE001 - reported, exit
                    log.fail(f"reading {uid}")
                reads += 1
            rounds += 1
    log.line(f"reads {reads} rounds {rounds}")
    log.line("done")


def holder(args: argparse.Namespace) -> None:
    """Hold one read transaction open until the stop file appears."""
    log = Log(args.log)
    stop = Path(args.stop)
    with Archive(args.store, readonly=True) as archive:
        with archive._index.read() as txn:
            seen = archive._index.count(txn, "instance")
            log.line(f"open {seen}")
            while not stop.exists():
                time.sleep(0.01)
            still = archive._index.count(txn, "instance")
    # The snapshot did not move while the writer committed.
    log.line(f"snapshot {seen} {still}")
    log.line("done")


def opener(args: argparse.Namespace) -> None:
    """Open the store for writing the moment the go file appears; hold
    it until the stop file appears."""
    log = Log(args.log)
    go, stop = Path(args.go), Path(args.stop)
    while not go.exists():
        pass  # spin: both openers must start within microseconds of it
    try:
        archive = Archive(args.store)
    except PacsstoreError as error:
        log.line(f"refused {type(error).__name__}: {error}")
        return
    log.line("opened")
    while not stop.exists():
        time.sleep(0.01)
    archive.close()
    log.line("done")


def main() -> None:
    parser = argparse.ArgumentParser()
    roles = parser.add_subparsers(dest="role", required=True)
    write = roles.add_parser("writer")
    write.add_argument("store")
    write.add_argument("log")
    write.add_argument("series", type=int)
    write.add_argument("--count", type=int)
    write.add_argument("--segment-size", type=int, default=1 << 30)
    write.add_argument("--resend", action="store_true")
    write.add_argument("--ack-early", action="store_true")
    read = roles.add_parser("reader")
    read.add_argument("store")
    read.add_argument("log")
    read.add_argument("stop")
    read.add_argument("--sample", type=int, default=20)
    hold = roles.add_parser("holder")
    hold.add_argument("store")
    hold.add_argument("log")
    hold.add_argument("stop")
    open_ = roles.add_parser("opener")
    open_.add_argument("store")
    open_.add_argument("log")
    open_.add_argument("go")
    open_.add_argument("stop")
    args = parser.parse_args()
    _end_at_lifetime()
    {"writer": writer, "reader": reader, "holder": holder,
     "opener": opener}[args.role](args)


if __name__ == "__main__":
    main()
