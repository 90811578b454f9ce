"""Group commit: one segment fsync and one LMDB commit for many stores.

A store is acknowledged only when its blocks are on disk and its index
records are committed, and each of those costs a flush to stable storage.
Paying them per instance caps a store at a few hundred instances a second
on a good disk, far below what the parse, digest and compress stages
deliver. So the callers prepare their instances in their own threads and
hand them to a single committer thread, which takes everything pending
at once and, for the whole batch:

1. applies each instance in one LMDB write transaction: the re-send
   policy, a digest lookup per block (a known block only gains a
   reference; a new one is given its place at the end of the open
   segment), the manifest block, the instance record and the hierarchy;
2. writes the new blocks and fdatasyncs the segments;
3. records the new segment lengths in the same transaction and commits
   it (LMDB syncs on commit);
4. wakes every caller of the batch with its own result.

A crash before 3 leaves segment bytes the index does not cover, which the
next writer cuts off; a crash after it loses nothing that was
acknowledged. One instance's failure (a conflict under ``reject``) is its
own result and does not fail the batch; a failure of the batch as a whole
(no space on the disk) fails every caller in it, and the segments are
rolled back so nothing of it stays behind.

While one batch commits, the next gathers: the busier the store, the
larger the batches, and the fewer syncs per instance.
"""

from __future__ import annotations

import collections
import logging
import threading
from concurrent.futures import Future
from typing import Any

import lmdb

from pacsstore.errors import (
    ArchiveClosedError,
    ConflictError,
    PacsstoreError,
)
from pacsstore.store import policy, results
from pacsstore.store.blocks import EncodedBlock
from pacsstore.store.faults import crash_point
from pacsstore.store.hierarchy import link_instance, unlink_instance
from pacsstore.store.index import BlockEntry, Index
from pacsstore.store.prepare import Prepared, Preparer
from pacsstore.store.results import StoreResult
from pacsstore.store.segments import SegmentWriter

log = logging.getLogger(__name__)

LOGICAL_BYTES = "logical_bytes"
DEDUP_SAVED = "dedup_saved_bytes"


def result_for(record: dict[str, Any], status: str, *, written: int = 0,
               deduplicated: int = 0, error: str | None = None
               ) -> StoreResult:
    return StoreResult(
        sop_instance_uid=record.get("sop_instance_uid") or None,
        sop_class_uid=record.get("sop_class_uid") or None,
        study_instance_uid=record.get("study") or None,
        series_instance_uid=record.get("series") or None,
        patient_id=record.get("patient"),
        status=status, size=record.get("size", 0), bytes_written=written,
        bytes_deduplicated=deduplicated,
        frames=record.get("frames", 0), error=error)


def same_content(stored: dict[str, Any], new: dict[str, Any]) -> bool:
    """The re-send test (see policy.py): dataset bytes and syntax."""
    return (stored["content_sha256"] == new["content_sha256"]
            and stored["transfer_syntax"] == new["transfer_syntax"])


class _Job:
    __slots__ = ("prepared", "future")

    def __init__(self, prepared: Prepared) -> None:
        self.prepared = prepared
        self.future: Future[StoreResult] = Future()


class Committer:
    """The single writer thread of an Archive."""

    def __init__(self, index: Index, writer: SegmentWriter,
                 preparer: Preparer, on_conflict: str) -> None:
        self._index = index
        self._writer = writer
        self._preparer = preparer
        self._policy = on_conflict
        self._cond = threading.Condition()
        self._queue: collections.deque[_Job] = collections.deque()
        self._closing = False
        # Set when the thread met an error it cannot hand to one batch
        # (a rollback that itself failed): the segments may then be out
        # of step with the index, so nothing more is accepted.
        self._broken: BaseException | None = None
        self.batches = 0
        self._thread = threading.Thread(
            target=self._run, name="pacsstore-committer", daemon=True)
        self._thread.start()

    def submit(self, prepared: Prepared) -> Future[StoreResult]:
        job = _Job(prepared)
        with self._cond:
            if self._broken is not None:
                raise PacsstoreError(
                    f"the writer of {self._writer.directory.parent} "
                    f"stopped after an error it could not recover from "
                    f"({self._broken}); reopen the store to recover"
                ) from self._broken
            if self._closing:
                raise ArchiveClosedError(
                    f"the store at {self._writer.directory.parent} is "
                    f"closed; open a new Archive to store")
            self._queue.append(job)
            self._cond.notify()
        return job.future

    def close(self) -> None:
        """Commit what is pending, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = list(self._queue)
                self._queue.clear()
            try:
                self._commit(batch)
            except BaseException as exc:  # noqa: BLE001
                self._stop_broken(batch, exc)
                return

    def _stop_broken(self, batch: list[_Job], exc: BaseException) -> None:
        """Fail every waiting caller instead of leaving them blocked on
        a thread that is gone; reopening the store runs recovery."""
        log.critical("the committer stopped: %s", exc)
        with self._cond:
            self._broken = exc
            waiting = batch + list(self._queue)
            self._queue.clear()
        for job in waiting:
            if not job.future.done():
                job.future.set_exception(exc)

    def _commit(self, batch: list[_Job]) -> None:
        try:
            outcomes, lengths = self._index.write(
                lambda txn: self._apply_batch(txn, batch),
                on_retry=self._writer.rollback)
        # The committer is the boundary between the callers and the
        # disk: whatever failed the batch is handed to each caller, who
        # raises it in its own thread; nothing is swallowed.
        except BaseException as exc:  # noqa: BLE001
            self._writer.rollback()
            log.error("group commit of %d instances failed: %s",
                      len(batch), exc)
            for job in batch:
                job.future.set_exception(exc)
            return
        crash_point("commit.committed")
        self._writer.committed_as(lengths)
        self.batches += 1
        for job, outcome in zip(batch, outcomes):
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    def _apply_batch(self, txn: lmdb.Transaction, batch: list[_Job]
                     ) -> tuple[list[StoreResult | PacsstoreError],
                                dict[int, int]]:
        outcomes = [self._apply(txn, job.prepared) for job in batch]
        lengths = self._writer.flush() if self._writer.has_pending else {}
        self._index.put_segments(txn, lengths)
        crash_point("commit.synced")
        return outcomes, lengths

    def _apply(self, txn: lmdb.Transaction, item: Prepared
               ) -> StoreResult | PacsstoreError:
        record = item.record
        stored = self._index.record(txn, "instance", item.uid)
        status = results.STORED
        if stored is not None:
            if same_content(stored, record):
                crash_point("commit.resend")
                return result_for(stored, results.DUPLICATE,
                                  deduplicated=stored["size"])
            if self._policy == policy.REJECT:
                return ConflictError(item.uid)
            if self._policy == policy.KEEP_FIRST:
                return result_for(stored, results.KEPT_FIRST)
            self._release(txn, stored)
            status = results.REPLACED
        written, deduplicated = self._add_blocks(txn, item)
        written += self._add_manifest(txn, record)
        self._index.put_record(txn, "instance", item.uid, record)
        link_instance(self._index, txn, record)
        self._index.add_counter(txn, LOGICAL_BYTES, record["size"])
        return result_for(record, status, written=written,
                          deduplicated=deduplicated)

    def _add_blocks(self, txn: lmdb.Transaction,
                    item: Prepared) -> tuple[int, int]:
        written = deduplicated = 0
        for name, kind, length in zip(item.digests, item.kinds,
                                      item.raw_lengths):
            entry = self._index.block(txn, name)
            if entry is not None:
                if entry.refcount:
                    self._index.add_counter(txn, DEDUP_SAVED, length)
                self._index.put_block(txn, name,
                                      entry.with_refcount(entry.refcount + 1))
                deduplicated += length
                continue
            block = item.encoded.get(name)
            if block is None:
                raise AssertionError(
                    f"block {name.hex()} was indexed when prepared but is "
                    f"missing now; blocks are never removed")
            written += self._append(txn, block, refcount=1)
        return written, deduplicated

    def _append(self, txn: lmdb.Transaction, block: EncodedBlock, *,
                refcount: int) -> int:
        segment, offset = self._writer.reserve(block.total_length)
        self._writer.append(segment, block.header)
        self._writer.append(segment, block.payload)
        if refcount:
            self._index.put_block(txn, block.digest, BlockEntry(
                segment, offset, block.raw_length, len(block.payload),
                block.kind, block.codec, refcount))
        return block.total_length

    def _add_manifest(self, txn: lmdb.Transaction,
                      record: dict[str, Any]) -> int:
        """The manifest goes into the segment (for rebuilding the index)
        and its position into the record; it is not a shared block."""
        content = {k: v for k, v in record.items() if k != "manifest"}
        block = self._preparer.encode_manifest(content)
        segment, offset = self._writer.reserve(block.total_length)
        self._writer.append(segment, block.header)
        self._writer.append(segment, block.payload)
        record["manifest"] = [segment, offset]
        return block.total_length

    def _release(self, txn: lmdb.Transaction,
                 stored: dict[str, Any]) -> None:
        """Drop the references of a replaced instance."""
        names = [stored["header"], *stored["blocks"]]
        for name in map(bytes.fromhex, names):
            entry = self._index.block(txn, name)
            if entry is None or entry.refcount == 0:
                continue
            if entry.refcount > 1:
                self._index.add_counter(txn, DEDUP_SAVED, -entry.raw_length)
            self._index.put_block(txn, name,
                                  entry.with_refcount(entry.refcount - 1))
        unlink_instance(self._index, txn, stored)
        self._index.add_counter(txn, LOGICAL_BYTES, -stored["size"])
