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
   segment), the manifest block, the instance record and the hierarchy.
   The manifest block and the record's encoding come made from the
   preparing threads: this thread is the one every store waits on in
   turn, so what can be done before it is;
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

A large instance arrives with its blocks already written and fdatasynced
in files of its own (segments.StreamSegments): its caller wrote them
while reading the file, and small stores kept committing meanwhile. Its
batch gives those files the next segment numbers, indexes the blocks
where they lie, records the segments' lengths in the same transaction,
and writes the manifest behind them; the files of a stream that is not
stored (a conflict, a duplicate, a failed batch) are removed.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import lmdb

from pacsstore.errors import (
    ArchiveClosedError,
    ConflictError,
    DamagedCopyError,
    PacsstoreError,
    StoreFormatError,
)
from pacsstore.store import blocks, policy, results
from pacsstore.store.bases import usable_base
from pacsstore.store.blocks import Codec, EncodedBlock, Kind
from pacsstore.store.faults import crash_point
from pacsstore.store.hierarchy import link_instance, unlink_instance
from pacsstore.store.index import BlockEntry, Index
from pacsstore.store.prepare import PlacedBlock, Prepared
from pacsstore.store.records import DamagedRecord
from pacsstore.store.results import StoreResult
from pacsstore.store.segments import (
    SegmentReader,
    SegmentWriter,
    StreamSegments,
)

log = logging.getLogger(__name__)

# Seconds a batch waits at most for announced instances to join it.
# Four associations storing CT slices at once (400 in all), medians of
# four interleaved runs: no wait 174 MB/s in 1.5 instances a commit,
# 2 ms 189 MB/s (2.2 a commit), 4 ms 194 MB/s (3.0 a commit).
ANNOUNCED_WAIT = 0.004

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


def _keeps(outcome: Any) -> bool:
    """Whether an outcome stored the instance's blocks: a new instance
    or a replacement (a duplicate, keep-first or failure stores none)."""
    return isinstance(outcome, StoreResult) and \
        outcome.status in (results.STORED, results.REPLACED)


class _Job:
    __slots__ = ("prepared", "future")

    def __init__(self, prepared: Prepared) -> None:
        self.prepared = prepared
        self.future: Future[StoreResult] = Future()


class Committer:
    """The single writer thread of an Archive."""

    def __init__(self, index: Index, writer: SegmentWriter,
                 on_conflict: str, reader: SegmentReader,
                 code_alone: Callable[[Kind, bytes, bytes, bytes],
                                      EncodedBlock]) -> None:
        self._index = index
        self._writer = writer
        self._reader = reader
        self._policy = on_conflict
        # Codes a block alone whose base is not stored (kind, name,
        # content, base): Preparer.code_alone.
        self._code_alone = code_alone
        # Blocks the batch being applied appended, with their codecs: not
        # on disk before its flush, and just written, so not read
        # (_damaged_copy, _base_stored).
        self._appended: dict[bytes, int] = {}
        # Bases of this batch's headers found committed, and whether
        # their stored copies are intact: checked once a batch.
        self._bases_intact: dict[bytes, bool] = {}
        self._cond = threading.Condition()
        self._queue: collections.deque[_Job] = collections.deque()
        self._closing = False
        # Streams being written by callers, or queued with their batch:
        # close() waits for each to be committed or removed.
        self._streams: set[StreamSegments] = set()
        # Those of them written whole, not yet submitted (written).
        self._written: set[StreamSegments] = set()
        # Set when the thread met an error it cannot hand to one batch
        # (a rollback that itself failed): the segments may then be out
        # of step with the index, so nothing more is accepted.
        self._broken: BaseException | None = None
        # Instances callers announced and are preparing (announce).
        self._announced = 0
        self.batches = 0
        self._thread = threading.Thread(
            target=self._run, name="pacsstore-committer", daemon=True)
        self._thread.start()

    def _check_open(self) -> None:
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

    def announce(self) -> None:
        """A caller starts preparing one instance that it will submit
        with ``announced=True`` (or ``withdraw``): a batch about to
        commit waits a little for it (``_wait_for_announced``)."""
        with self._cond:
            self._announced += 1

    def withdraw(self) -> None:
        """The announced instance will not be submitted."""
        with self._cond:
            self._announced -= 1
            self._cond.notify_all()

    def submit(self, prepared: Prepared, *,
               announced: bool = False) -> Future[StoreResult]:
        """Queue ``prepared``; from here on its stream, if any, is the
        committer's to register or remove."""
        return self.submit_all([prepared], announced=announced)[0]

    def submit_all(self, items: Sequence[Prepared], *,
                   announced: bool = False) -> list[Future[StoreResult]]:
        """Queue ``items`` in order and at once: an idle committer takes
        them as one batch (one commit, one set of syncs). ``announced``:
        they are the instance an ``announce`` was for."""
        for prepared in items:
            if prepared.unnamed is not None:
                raise ValueError(f"instance {prepared.uid} was prepared "
                                 f"with code=False and never coded")
        jobs = [_Job(prepared) for prepared in items]
        with self._cond:
            if announced:
                self._announced -= 1
            try:
                self._check_open()
            except PacsstoreError:
                for prepared in items:
                    if prepared.stream is not None:
                        self._forget_stream(prepared.stream, stored=False)
                raise
            self._queue.extend(jobs)
            self._cond.notify()
        return [job.future for job in jobs]

    def open_stream(self) -> StreamSegments:
        """Segments for a large instance the caller is about to read;
        the caller hands them back through ``submit`` or ``abandon``."""
        with self._cond:
            self._check_open()
            stream = self._writer.open_stream()
            self._streams.add(stream)
            return stream

    def written(self, stream: StreamSegments) -> None:
        """The caller has written its whole instance into ``stream`` and
        has yet to submit it."""
        with self._cond:
            if stream in self._streams:
                self._written.add(stream)
                self._cond.notify_all()

    def abandon(self, stream: StreamSegments) -> None:
        """Remove a stream that will not be submitted (its file failed)."""
        with self._cond:
            self._forget_stream(stream, stored=False)

    def _forget_stream(self, stream: StreamSegments, *,
                       stored: bool) -> None:
        """Called holding ``_cond``."""
        if stored:
            stream.committed()
        else:
            stream.discard()
        self._streams.discard(stream)
        self._written.discard(stream)
        self._cond.notify_all()

    def close(self) -> None:
        """Commit what is pending, then stop the thread. Streams still
        being read are cancelled; close waits until each is committed
        or removed, so no segment is written after the lock is gone.
        Streams written whole but never submitted are removed."""
        with self._cond:
            self._closing = True
            for stream in self._streams:
                stream.cancel()
            self._cond.notify_all()
        self._thread.join()
        with self._cond:
            # A stream still being written ends in a submit or an abandon.
            # One written whole but not submitted may be held by the very
            # thread that is closing (store_many's iterable closed the
            # store), which would then wait for itself; it holds nothing
            # acknowledged, so it is removed here.
            while self._streams - self._written and self._broken is None:
                self._cond.wait()
            if self._broken is None:
                for stream in list(self._streams):
                    self._forget_stream(stream, stored=False)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                self._wait_for_announced()
                batch = list(self._queue)
                self._queue.clear()
            try:
                self._commit(batch)
            except BaseException as exc:  # noqa: BLE001
                self._stop_broken(batch, exc)
                return

    def _wait_for_announced(self) -> None:
        """Let instances being prepared by other callers join the batch,
        for at most ``ANNOUNCED_WAIT``. Called holding ``_cond``.

        Each caller of ``store()`` or ``store_received`` waits for its
        own commit, so with several at once (associations of the node)
        a batch mostly took the one or two that were ready, and the
        others paid a commit, and its syncs, of their own a moment
        later; store_many's pool hands items over as they are done, so
        its batches were as small. Waiting for them trades a little
        latency for fewer syncs. A caller alone is never kept waiting:
        its announcement ends in the same step as its own submit."""
        if not self._announced:
            return
        deadline = time.monotonic() + ANNOUNCED_WAIT
        while self._announced and not self._closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _stop_broken(self, batch: list[_Job], exc: BaseException) -> None:
        """Fail every waiting caller instead of leaving them blocked on
        a thread that is gone; reopening the store runs recovery."""
        log.critical("the committer stopped: %s", exc)
        with self._cond:
            self._broken = exc
            waiting = batch + list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in waiting:
            if not job.future.done():
                job.future.set_exception(exc)

    def _commit(self, batch: list[_Job]) -> None:
        try:
            outcomes, lengths = self._index.write(
                lambda txn: self._apply_batch(txn, batch),
                on_retry=lambda: self._undo_for_retry(batch))
        # The committer is the boundary between the callers and the
        # disk: whatever failed the batch is handed to each caller, who
        # raises it in its own thread; nothing is swallowed.
        except BaseException as exc:  # noqa: BLE001
            self._writer.rollback()
            self._settle_streams(batch, [exc] * len(batch))
            log.error("group commit of %d instances failed: %s",
                      len(batch), exc)
            for job in batch:
                job.future.set_exception(exc)
            return
        crash_point("commit.committed")
        self._writer.committed_as(lengths)
        self._settle_streams(batch, outcomes)
        self.batches += 1
        for job, outcome in zip(batch, outcomes):
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    def _undo_for_retry(self, batch: list[_Job]) -> None:
        """The batch runs again (a larger map): cut its appends and take
        back the numbers it gave streams, which it gives again."""
        self._writer.rollback()
        for job in batch:
            if job.prepared.stream is not None:
                job.prepared.stream.unnumber()

    def _settle_streams(self, batch: list[_Job],
                        outcomes: list[Any]) -> None:
        """Keep the streams of the instances stored, remove the rest."""
        with self._cond:
            for job, outcome in zip(batch, outcomes):
                stream = job.prepared.stream
                if stream is not None:
                    self._forget_stream(stream, stored=_keeps(outcome))

    def _apply_batch(self, txn: lmdb.Transaction, batch: list[_Job]
                     ) -> tuple[list[StoreResult | PacsstoreError],
                                dict[int, int]]:
        self._appended.clear()
        self._bases_intact.clear()
        outcomes = [self._apply(txn, job.prepared) for job in batch]
        lengths: dict[int, int] = {}
        for job, outcome in zip(batch, outcomes):
            if job.prepared.stream is not None and _keeps(outcome):
                lengths.update(job.prepared.stream.lengths)
        # A stream segment the batch continued in (the manifest) gets
        # the flushed length, which is the longer one.
        if self._writer.has_pending:
            lengths.update(self._writer.flush())
        self._index.put_segments(txn, lengths)
        crash_point("commit.synced")
        return outcomes, lengths

    def _apply(self, txn: lmdb.Transaction, item: Prepared
               ) -> StoreResult | PacsstoreError:
        record = item.record
        try:
            stored = self._index.record(txn, "instance", item.uid)
        except DamagedRecord as exc:
            # Whether this is a re-send, and what it would replace, is
            # unknown: refuse it alone, before it writes anything.
            log.error("not storing %s: %s", item.uid, exc)
            return DamagedCopyError(
                f"instance {item.uid} is not stored: the index record of "
                f"its earlier copy is damaged ({exc.reason}); `pacsstore "
                f"rebuild-index` makes the index again from the segments")
        status = results.STORED
        if stored is not None:
            if same_content(stored, record):
                crash_point("commit.resend")
                # A success says the store holds it: so it must.
                damage = self._damaged_copy(
                    txn, item.uid, [bytes.fromhex(name) for name in
                                    (stored["header"], *stored["blocks"])])
                if damage is not None:
                    return damage
                return result_for(stored, results.DUPLICATE,
                                  deduplicated=stored["size"])
            if self._policy == policy.REJECT:
                return ConflictError(item.uid)
            if self._policy == policy.KEEP_FIRST:
                return result_for(stored, results.KEPT_FIRST)
        shared = self._shared(item, resent=stored is not None)
        damage = self._damaged_copy(txn, item.uid, shared)
        if damage is not None:
            return damage
        if stored is not None:
            self._release(txn, stored)
            status = results.REPLACED
        if item.stream is not None:
            self._writer.take_stream(item.stream)
        written, deduplicated = self._add_blocks(txn, item)
        written += self._add_manifest(item)
        self._index.put_instance(txn, item.uid, item.encoded_record,
                                 item.manifest, record["series"],
                                 *record["manifest"])
        link_instance(self._index, txn, record)
        self._index.add_counter(txn, LOGICAL_BYTES, record["size"])
        return result_for(record, status, written=written,
                          deduplicated=deduplicated)

    def _shared(self, item: Prepared, *, resent: bool) -> list[bytes]:
        """The blocks of ``item`` that the store may hold already, whose
        stored copy it would take a reference on. Not the frames the
        prepare coded, which the index did not have then (one a batch
        since added is as fresh as this one's): so the usual store, of
        frames the store has not seen, reads nothing here. Always the
        header block (the first), which small instances code without a
        lookup: it names its SOP Instance UID, so it is stored already
        only when this instance was sent before (``resent``: every block
        is checked) or when its bytes are another instance's frame. A
        header the index lacks costs one lookup."""
        return [name for position, name in enumerate(item.digests)
                if resent or position == 0 or name not in item.encoded]

    def _damaged_copy(self, txn: lmdb.Transaction, uid: str,
                      names: list[bytes]) -> DamagedCopyError | None:
        """Why instance ``uid`` cannot take (or keep) a reference on the
        stored copies of ``names``: one of them is damaged on disk (its
        CRC32, checked as a read checks it first, fails, or it cannot be
        read). Without this an instance whose frame the store had already
        was acknowledged and read damaged, though its sender had sent it
        whole; now it fails, and its sender keeps it. Blocks this batch
        appended are not read: not on disk before its flush, and just
        written (an instance sent twice in one batch shares them)."""
        for name in names:
            if name in self._appended:
                continue
            entry = self._index.block(txn, name)
            if entry is None:
                continue
            damage = self._damage(txn, name, entry)
            if damage is not None:
                log.error("not storing %s: the stored copy of its block "
                          "%s is damaged: %s", uid, name.hex(), damage)
                return DamagedCopyError(
                    f"instance {uid} is not stored: the stored copy of "
                    f"its block {name.hex()} is damaged ({damage}); "
                    f"`pacsstore verify` reports the damage")
        return None

    def _damage(self, txn: lmdb.Transaction, name: bytes,
                entry: BlockEntry) -> Exception | str | None:
        """Why the stored copy of block ``name`` cannot be read as
        written (its CRC32 fails, it cannot be read, or, for a header
        compressed against a base, that base cannot), or None."""
        try:
            base = self._reader.check_intact(entry.segment, entry.offset,
                                             name, entry.stored_length)
        except (StoreFormatError, OSError) as exc:
            # StoreFormatError: a damaged segment header reads as no
            # store's or a newer one's; OSError: a bad sector.
            return exc
        if base is not None and not self._base_stored(txn, base):
            return (f"the base it is compressed against, {base.hex()}, is "
                    f"not stored intact")
        return None

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
            placed = item.placed.get(name)
            if placed is not None and item.stream is not None:
                written += self._index_placed(txn, placed, item.stream)
                continue
            block = item.encoded.get(name)
            if block is None:
                raise AssertionError(
                    f"block {name.hex()} was indexed when prepared but is "
                    f"missing now; blocks are never removed")
            if block.codec is Codec.ZSTD_BASE:
                block = self._with_stored_base(txn, item, block)
            written += self._append(txn, block, refcount=1)
        return written, deduplicated

    def _with_stored_base(self, txn: lmdb.Transaction, item: Prepared,
                          block: EncodedBlock) -> EncodedBlock:
        """``block``, a header coded against a base, if that base is
        stored and will stay readable; else the block coded alone. A
        base is prepared beside the headers coded against it, and may
        then not be stored (its instance refused, or in a later batch
        than theirs: several associations at once), or may be stored
        against a base itself (an instance sent again), or damaged."""
        base = block.payload[:blocks.BASE_NAME_BYTES]
        if self._base_stored(txn, base):
            return block
        content = item.against_base.get(block.digest)
        if content is None:
            raise AssertionError(f"instance {item.uid} has block "
                                 f"{block.digest.hex()} coded against a "
                                 f"base but not its content")
        log.info("coding block %s of %s alone: its base %s is not stored",
                 block.digest.hex(), item.uid, base.hex())
        alone = self._code_alone(block.kind, block.digest, content, base)
        item.encoded[block.digest] = alone
        return alone

    def _base_stored(self, txn: lmdb.Transaction, base: bytes) -> bool:
        """Whether ``base`` is a block a header can be read against: one
        stored on its own, appended by this batch before, or committed
        with its stored copy intact."""
        if base in self._appended:
            return self._appended[base] != Codec.ZSTD_BASE
        if base not in self._bases_intact:
            self._bases_intact[base] = self._usable_committed(txn, base)
        return self._bases_intact[base]

    def _usable_committed(self, txn: lmdb.Transaction, base: bytes) -> bool:
        entry = self._index.block(txn, base)
        if entry is None or not usable_base(entry):
            return False
        damage = self._damage(txn, base, entry)
        if damage is not None:
            log.error("not using block %s as a base: its stored copy is "
                      "damaged: %s", base.hex(), damage)
        return damage is None

    def _append(self, txn: lmdb.Transaction, block: EncodedBlock, *,
                refcount: int) -> int:
        segment, offset = self._writer.reserve(block.total_length)
        self._writer.append(segment, block.header)
        self._writer.append(segment, block.payload)
        self._appended[block.digest] = block.codec
        if refcount:
            self._index.put_block(txn, block.digest, BlockEntry(
                segment, offset, block.raw_length, len(block.payload),
                block.kind, block.codec, refcount))
        return block.total_length

    def _index_placed(self, txn: lmdb.Transaction, placed: PlacedBlock,
                      stream: StreamSegments) -> int:
        """A block its stream already wrote (and synced) gets its entry."""
        self._appended[placed.digest] = placed.codec
        self._index.put_block(txn, placed.digest, BlockEntry(
            stream.segment_of(placed.file), placed.offset, placed.raw_length,
            placed.stored_length, placed.kind, placed.codec, 1))
        return placed.total_length

    def _add_manifest(self, item: Prepared) -> int:
        """The manifest goes into the segment (for rebuilding the index)
        and its position into the record; it is not a shared block. The
        index record is the manifest's content with that position, so
        it is made of the manifest's payload (records.py)."""
        block = item.manifest
        if block is None:
            raise AssertionError(f"instance {item.uid} reached the "
                                 f"committer without its manifest")
        segment, offset = self._writer.reserve(block.total_length)
        self._writer.append(segment, block.header)
        self._writer.append(segment, block.payload)
        item.record["manifest"] = [segment, offset]
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
