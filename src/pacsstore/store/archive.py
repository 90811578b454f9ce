"""The Archive: pacsstore's embedded API over one store directory.

A store is a directory::

    PACSSTORE       marker: magic line and format version (JSON)
    lock            fcntl lock held by the one writer
    index/          the LMDB environment (index.py)
    segments/       append-only segment files (segments.py)

Opening for writing takes the lock, so a second writer fails at once with
StoreLockedError instead of interleaving appends; readers take no lock
and may run in other processes while the writer works. Every store call
returns only after its data and index records are durable: ``store`` and
``store_received`` wait for the group commit that carries them, and
``store_many`` keeps a bounded number of bytes in flight so that it can
prepare the next instances while earlier ones commit.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import io
import json
import logging
import operator
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from stat import S_ISREG
from types import TracebackType
from typing import Any, BinaryIO, Union

import numpy as np
import pydicom
import zstandard
from pydicom.dataset import Dataset
from pydicom.uid import (AllTransferSyntaxes, DeflatedExplicitVRLittleEndian,
                         ExplicitVRBigEndian, ExplicitVRLittleEndian)

from pacsstore import parsing
from pacsstore.errors import (
    ArchiveClosedError,
    ConflictError,
    CorruptStoreError,
    DamagedCopyError,
    DatasetMismatchError,
    MalformedDicomError,
    NewerFormatError,
    NotAStoreError,
    NotFoundError,
    NotStorableError,
    OutOfSpaceError,
    QueryError,
    ReadOnlyStoreError,
    StoreLockedError,
)
from pacsstore.filemeta import build_file_meta
from pacsstore.pixels.decode import decode_frame
from pacsstore.store import blocks, layout, policy, query, results
from pacsstore.store.bases import BaseReader
from pacsstore.store.commit import (
    DEDUP_SAVED,
    LOGICAL_BYTES,
    Committer,
)
from pacsstore.store.faults import crash_point
from pacsstore.store.index import (
    DEFAULT_MAP_SIZE,
    DEFAULT_MAX_MAP_SIZE,
    BlockEntry,
    Index,
)
from pacsstore.store.prepare import Prepared, Preparer
from pacsstore.store.readahead import DEFAULT_WINDOW, read_in_order
from pacsstore.store.reader import InstanceReader, open_stream
from pacsstore.store.results import ArchiveStats, StoreResult
from pacsstore.store.segments import (
    DEFAULT_MAX_SIZE,
    HEADER_SIZE as SEGMENT_HEADER_SIZE,
    fsync_directory,
    SegmentReader,
    SegmentWriter,
)
from pacsstore.store.verify import VerifyReport, verify

log = logging.getLogger(__name__)

STORE_MAGIC = b"PACSSTORE store\n"
STORE_FORMAT_VERSION = 1

# store_many keeps at most this many bytes prepared but not committed:
# enough for large batches (few syncs), small enough to keep memory flat.
DEFAULT_MAX_INFLIGHT = 256 << 20
# A file at least this large is streamed: its frames are read, digested,
# compressed and written a chunk at a time (prepare.py, "large files"),
# so that a store's memory does not grow with the file. A smaller file is
# read whole, which costs it less (one read, and its blocks join the
# batch's appends).
DEFAULT_STREAM_THRESHOLD = 64 << 20
# Threads that prepare store_many's items: one per core is enough, since
# the work they do outside the GIL (SHA-256, zstd) is CPU-bound.
PREPARE_WORKERS = max(2, min(8, os.cpu_count() or 2))
# store_many prepares items smaller than this in its own thread, and
# commits them in chunks of up to SMALL_CHUNK_ITEMS items or
# SMALL_CHUNK_BYTES prepared bytes (see _Pipeline). 1,000 reports of
# 2-40 KB went from about 2,600 to 4,500 a second on two cores. Where
# the pool starts to win, measured with CT slices of growing size: a
# slice of 65 KiB took 503 µs through the pool and 334 µs here, one of
# 129 KiB 653 and 620 µs, one of 177 KiB 627 and 715 µs.
SMALL_ITEM_BYTES = 128 << 10
SMALL_CHUNK_ITEMS = 256
SMALL_CHUNK_BYTES = 16 << 20
# Items store_many reads ahead of the oldest it has not yet handed to the
# committer, while that one is still being prepared on the pool.
READ_AHEAD = 2 * PREPARE_WORKERS
# store() and store_received announce an instance smaller than this to
# the committer (Committer.announce): its prepare takes no longer than
# a batch waits for it (about 1.7 ms for a CT slice of 512 KiB, alone
# on a core), so a batch never waits out its time for a large one.
ANNOUNCE_BELOW_BYTES = 1 << 20

StoreInput = Union[bytes, bytearray, memoryview, str, os.PathLike, Dataset]
BIG_ENDIAN = "1.2.840.10008.1.2.2"
# Errors that make one item invalid without saying anything about the
# store: skip_invalid turns them into "rejected" results.
_ITEM_ERRORS = (MalformedDicomError, NotStorableError, ConflictError,
                DamagedCopyError)


# Errors that mean "this directory cannot be written", not a failure.
_NOT_WRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
# What a store creation leaves before its marker is in place; a directory
# that holds only these (the folders empty) is a creation to finish.
_CREATION_LEFTOVERS = frozenset({"segments", "index", "lock",
                                 "PACSSTORE.new"})


def _creation_leftover(entry: Path) -> bool:
    if entry.name not in _CREATION_LEFTOVERS:
        return False
    return not entry.is_dir() or not any(entry.iterdir())


def _creation_error(exc: OSError, path: Path) -> OSError:
    """The pacsstore error for an OSError met while creating a store."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutOfSpaceError(
            exc.errno, f"no space left on the disk while creating the "
                       f"store {path}; free space and open it again")
    if exc.errno in _NOT_WRITABLE:
        return ReadOnlyStoreError(
            exc.errno, f"cannot create a store at {path} ({exc.strerror}: "
                       f"read-only media or no permission)")
    return exc


def _check_identity(prepared: Prepared, sop_class_uid: str,
                    sop_instance_uid: str) -> None:
    """Refuse a received dataset that is not the instance its command
    names (PS3.4 B.2.3): filing it under the command's UID would make the
    archive answer for an instance it does not hold. A dataset without
    a SOP Instance UID never gets here (prepare refuses it); one without
    a SOP Class UID is filed under the command's."""
    found = prepared.record["attributes"]
    for keyword, expected in (("SOPInstanceUID", sop_instance_uid),
                              ("SOPClassUID", sop_class_uid)):
        value = found.get(keyword)
        if isinstance(value, str) and value and value != expected:
            raise DatasetMismatchError(
                f"the dataset's {keyword} is {value}, but the C-STORE "
                f"command names {expected}")


class Archive:
    """A pacsstore store, opened for writing (the default) or reading."""

    def __init__(self, path: str | os.PathLike, *,
                 on_conflict: str = policy.REJECT,
                 readonly: bool = False,
                 compression_level: int = blocks.DEFAULT_LEVEL,
                 segment_size: int = DEFAULT_MAX_SIZE,
                 map_size: int = DEFAULT_MAP_SIZE,
                 max_map_size: int = DEFAULT_MAX_MAP_SIZE,
                 max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT,
                 stream_threshold: int = DEFAULT_STREAM_THRESHOLD) -> None:
        self.path = Path(path)
        self.on_conflict = policy.check_policy(on_conflict)
        if not isinstance(readonly, bool):
            raise policy.StoreConfigError(
                f"readonly is True or False; found {readonly!r}")
        self.readonly = readonly
        self._max_inflight = _check_bytes("max_inflight_bytes",
                                          max_inflight_bytes, 1)
        self._stream_threshold = _check_bytes("stream_threshold",
                                              stream_threshold, 0)
        level = _check_compression_level(compression_level)
        _check_bytes("segment_size", segment_size, SEGMENT_HEADER_SIZE + 1)
        _check_bytes("map_size", map_size, 1, _LARGEST_MAP)
        _check_bytes("max_map_size", max_map_size, 1, _LARGEST_MAP)
        if max_map_size < map_size:
            raise policy.StoreConfigError(
                f"map_size ({map_size} bytes) is larger than max_map_size "
                f"({max_map_size}): the map starts at map_size and grows "
                f"up to max_map_size; raise max_map_size with it")
        self._lock_fd: int | None = None
        self._committer: Committer | None = None
        self._closed = False
        self._open_marker()
        if not readonly and self._lock_fd is None:
            self._take_lock()
        try:
            self._refuse_lost_index()
            self._index = Index(self.path / "index", readonly=readonly,
                                map_size=map_size,
                                max_map_size=max_map_size)
        except BaseException:
            self._release_lock()
            raise
        self._segments = SegmentReader(self.path / "segments")
        self._bases = BaseReader(self._located, self._segments)
        self._preparer = Preparer(self._index, level)
        if not readonly:
            try:
                self._start_writer(segment_size)
            except BaseException:
                # Recovery or the first segment failed (a full disk):
                # let go of everything, so that the same process can
                # open the store again once the cause is gone.
                self.close()
                raise

    # Opening and closing -------------------------------------------------

    def _open_marker(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise NotAStoreError(f"{self.path} is a file, not a pacsstore "
                                 f"store (a store is a directory)")
        marker = self.path / "PACSSTORE"
        if not marker.exists():
            if self.readonly:
                raise NotAStoreError(f"{self.path} is not a pacsstore store "
                                     f"(no PACSSTORE marker)")
            self._create()
            return
        self._check_marker(marker)

    def _check_marker(self, marker: Path) -> None:
        if not marker.is_file():
            raise NotAStoreError(f"{marker} is not a file; a store's "
                                 f"marker is")
        raw = marker.read_bytes()
        if not raw.startswith(STORE_MAGIC):
            raise NotAStoreError(f"{marker} is not a pacsstore marker")
        try:
            version = json.loads(raw[len(STORE_MAGIC):])["format_version"]
        except (ValueError, KeyError, TypeError):
            raise NotAStoreError(f"{marker} is damaged") from None
        if version > STORE_FORMAT_VERSION:
            raise NewerFormatError(
                f"{self.path} has store format version {version}; this "
                f"pacsstore reads up to {STORE_FORMAT_VERSION}")

    def _create(self) -> None:
        """Make a new store, holding the writer lock while doing it: of
        two processes creating one store at once, one creates it and the
        other gets StoreLockedError. What a creation cut short (by a
        crash or a full disk) left behind is taken over."""
        self._refuse_foreign_directory()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except (NotADirectoryError, FileExistsError):
            raise NotAStoreError(
                f"cannot create a store at {self.path}: a part of the path "
                f"is a file, not a directory") from None
        except OSError as exc:
            raise _creation_error(exc, self.path) from None
        self._take_lock()
        try:
            marker = self.path / "PACSSTORE"
            if marker.exists():  # created by a writer gone before us
                self._check_marker(marker)
                return
            self._refuse_foreign_directory()
            self._write_skeleton()
        except BaseException:
            self._release_lock()
            raise
        log.info("created store %s", self.path)

    def _refuse_lost_index(self) -> None:
        """An index file missing or empty beside segments that hold
        blocks is an index lost, not a store to start afresh: LMDB would
        make a new, empty index there, after which the store would look
        empty to every reader and to verify."""
        data = self.path / "index" / "data.mdb"
        if data.is_file() and data.stat().st_size > 0:
            return
        holding = [path.name for path in
                   sorted((self.path / "segments").glob("*.seg"))
                   if path.is_file()
                   and path.stat().st_size > SEGMENT_HEADER_SIZE]
        if holding:
            state = "empty" if data.is_file() else "missing"
            raise CorruptStoreError(
                f"the index of {self.path} is lost ({data} is {state}) "
                f"while its segments hold blocks ({', '.join(holding[:3])}"
                f"{', ...' if len(holding) > 3 else ''}); nothing was "
                f"changed: `pacsstore rebuild-index` builds the index "
                f"again from the segments")

    def _refuse_foreign_directory(self) -> None:
        """Create a store only where nothing but a store, or the
        leftovers of creating one, would be overwritten."""
        if not self.path.exists() or (self.path / "PACSSTORE").exists():
            return
        foreign = [entry.name for entry in self.path.iterdir()
                   if not _creation_leftover(entry)]
        if foreign:
            raise NotAStoreError(
                f"{self.path} exists, is not empty and is not a pacsstore "
                f"store; refusing to create one inside it")

    def _write_skeleton(self) -> None:
        body = json.dumps({"format_version": STORE_FORMAT_VERSION})
        temporary = self.path / "PACSSTORE.new"
        try:
            (self.path / "segments").mkdir(exist_ok=True)
            (self.path / "index").mkdir(exist_ok=True)
            with open(temporary, "wb") as handle:
                handle.write(STORE_MAGIC + body.encode() + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
            crash_point("store.creating")
            os.replace(temporary, self.path / "PACSSTORE")
        except OSError as exc:
            raise _creation_error(exc, self.path) from None

    def _take_lock(self) -> None:
        self._lock_fd = take_write_lock(
            self.path,
            unwritable="read-only media or no permission: open it with "
                       "readonly=True to read",
            locked="read it from this one with readonly=True")

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _start_writer(self, segment_size: int) -> None:
        with self._index.read() as txn:
            committed = self._index.segments(txn)
        writer = SegmentWriter(self.path / "segments", committed,
                               max_size=segment_size)
        if writer.needs_first_segment:
            lengths = writer.start_first_segment()
            self._index.write(
                lambda txn: self._index.put_segments(txn, lengths))
            # The names of a new store's files must survive a power loss
            # too: LMDB syncs its data, not the directory entries of
            # data.mdb, nor the store's own entries for index/ and
            # segments/ (a no-op cost after the first open).
            for directory in (self.path / "index", self.path):
                fsync_directory(directory)
        self._committer = Committer(self._index, writer, self.on_conflict,
                                    self._segments,
                                    self._preparer.code_alone)

    def close(self) -> None:
        """Commit what is pending, release the writer lock. Calls made
        after it, or racing with it in other threads, raise
        ArchiveClosedError; closing twice is harmless."""
        self._closed = True
        if self._committer is not None:
            self._committer.close()
        if getattr(self, "_preparer", None) is not None:
            self._preparer.close()
        if getattr(self, "_index", None) is not None:
            self._segments.close()
            self._index.close()
        self._release_lock()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, kind: type[BaseException] | None,
                 value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # Storing ---------------------------------------------------------------

    def _writer(self) -> Committer:
        if self._closed:
            raise ArchiveClosedError(
                f"the store at {self.path} is closed; open a new Archive "
                f"to store")
        if self._committer is None:
            raise policy.StoreConfigError(
                f"{self.path} is open read-only; open it without "
                f"readonly=True to store")
        return self._committer

    def _prepare(self, data: StoreInput, *, alone: bool = False,
                 code: bool = True) -> Prepared:
        """``alone``: the caller waits on this one instance, so its
        whole-file digest is taken on another core; ``code=False``: its
        digests and compression are left to Preparer.code_together
        (Preparer.prepare).
        """
        if isinstance(data, (str, os.PathLike)):
            return self._prepare_file(data, alone=alone, code=code)
        return self._preparer.prepare(_as_bytes(data), digest_aside=alone,
                                      code=code)

    def _prepare_file(self, path: str | os.PathLike, *,
                      alone: bool = False, code: bool = True) -> Prepared:
        """A file: read whole when small, streamed when large (its frames
        read and written a chunk at a time, into segments of its own)."""
        name = os.fspath(path)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise NotStorableError(
                f"cannot read {name!r}: {exc.strerror}") from None
        except ValueError as exc:  # a NUL in the path
            raise NotStorableError(f"cannot read {name!r}: {exc}") from None
        try:
            stat = os.fstat(fd)
            plan = None
            if S_ISREG(stat.st_mode) and \
                    stat.st_size >= self._stream_threshold:
                plan = self._preparer.plan_stream(fd, name)
            if plan is None:
                return self._preparer.prepare(_read_file(fd, name),
                                              digest_aside=alone, code=code)
            committer = self._writer()
            stream = committer.open_stream()
            try:
                prepared = self._preparer.prepare_stream(fd, plan, stream)
            except BaseException:
                committer.abandon(stream)
                raise
            committer.written(stream)
            return prepared
        finally:
            os.close(fd)

    def store(self, data: StoreInput) -> StoreResult:
        """Store one instance; returns once it is durable."""
        return self._store_alone(lambda: self._prepare(data, alone=True),
                                 _size_of(data))

    def store_received(self, dataset: bytes | memoryview,
                       transfer_syntax: str, *, sop_class_uid: str,
                       sop_instance_uid: str,
                       source_ae: str | None = None) -> StoreResult:
        """Store a dataset as a C-STORE delivered it: a file meta group is
        written in front of the bytes, which are kept exactly as they
        came. Thread-safe; concurrent callers share group commits.
        ``transfer_syntax`` is the one the dataset is encoded in, one
        DICOM defines (as a C-STORE's presentation context names it)."""
        _check_transfer_syntax(transfer_syntax)
        _check_no_file_meta(dataset, transfer_syntax)

        def prepare() -> Prepared:
            meta = build_file_meta(sop_class_uid=sop_class_uid,
                                   sop_instance_uid=sop_instance_uid,
                                   transfer_syntax=transfer_syntax,
                                   source_ae=source_ae)
            # A dataset off the wire arrived whole, so one that ends
            # inside an element was sent broken: refuse it (a file cut
            # short on disk, by contrast, is kept as it is; parsing.py).
            prepared = self._preparer.prepare(b"".join((meta, dataset)),
                                              source_ae=source_ae,
                                              refuse_truncated=True,
                                              digest_aside=True)
            _check_identity(prepared, sop_class_uid, sop_instance_uid)
            return prepared
        return self._store_alone(prepare, len(dataset))

    def _store_alone(self, prepare: Callable[[], Prepared],
                     size: int | None) -> StoreResult:
        """Prepare one instance and wait for its commit. One small enough
        to be prepared in a few milliseconds is announced to the
        committer, so that a batch about to commit can wait for it."""
        committer = self._writer()
        announced = size is not None and size < ANNOUNCE_BELOW_BYTES
        if announced:
            committer.announce()
        try:
            prepared = prepare()
        except BaseException:
            if announced:
                committer.withdraw()
            raise
        return committer.submit(prepared, announced=announced).result()

    def store_many(self, items: Iterable[StoreInput], *,
                   skip_invalid: bool = False) -> list[StoreResult]:
        """Store many instances through group commit, in order.

        With ``skip_invalid`` a bad item (malformed, not storable, or a
        conflict under ``reject``) gives a result with status "rejected"
        and ``error`` set, and the rest go on. Without it, the first bad
        item raises, after every item before it is durable (a conflict,
        found at commit, raises in its place even when a later item was
        found bad meanwhile); items after it that were already handed
        to the committer complete as well (store them again to learn
        their results: a re-send is idempotent), later ones are not
        read. When the iterable itself raises, the items read before
        are stored, then it is raised. Items handed on that fail are
        noted on the error raised (``__notes__``). An error of no item's
        own kind (a defect an input brings out) raises whatever
        ``skip_invalid`` says, after every item before it is durable.
        How many items past a conflict may be stored is in
        docs/store.md.
        """
        if isinstance(items, (str, bytes, bytearray, memoryview,
                              os.PathLike, Dataset)):
            raise NotStorableError(
                f"store_many takes an iterable of instances, not one "
                f"instance; found {type(items).__name__} (use store for "
                f"one, or put it in a list)")
        return _Pipeline(self, skip_invalid).run(items)

    # Reading -----------------------------------------------------------------

    def _reader(self, uid: str) -> InstanceReader:
        return InstanceReader(self._index, self._segments, _uid_arg(uid),
                              bases=self._bases)

    def _located(self, name: bytes) -> BlockEntry | None:
        """The index entry of block ``name``, now."""
        with self._index.read() as txn:
            return self._index.block(txn, name)

    def get(self, sop_instance_uid: str) -> bytes:
        """The stored bytes of the instance, exactly."""
        return self._reader(sop_instance_uid).read_all()

    def get_many(self, sop_instance_uids: Iterable[str], *,
                 read_ahead: int = DEFAULT_WINDOW) -> Iterator[bytes]:
        """The stored bytes of each instance, exactly, in the order of
        ``sop_instance_uids``, while a small thread pool reads the next
        ones (up to ``read_ahead`` bytes of them) ahead.

        An error belongs to its position: a UID that is not stored
        (NotFoundError), one that is not a string (QueryError), damage
        (CorruptStoreError) is raised when the iteration reaches it,
        after every instance before it, and ends the iteration. Closing
        the iterator early cancels the reading ahead and leaves no
        thread behind. See docs/store.md, "Reading a study".
        """
        if isinstance(sop_instance_uids, (str, bytes)):
            raise QueryError(
                f"get_many takes an iterable of SOP Instance UIDs, not "
                f"one UID; found {sop_instance_uids!r} (use get for one)")
        if isinstance(read_ahead, bool) or not isinstance(read_ahead, int) \
                or read_ahead < 1:
            raise QueryError(f"read_ahead is a number of bytes (1 or "
                             f"more); found {read_ahead!r}")
        return read_in_order(self._reader, sop_instance_uids,
                             window=read_ahead)

    def open(self, sop_instance_uid: str) -> BinaryIO:
        """A streaming read of the instance, one block at a time."""
        return open_stream(self._reader(sop_instance_uid))  # type: ignore

    def dataset(self, sop_instance_uid: str) -> Dataset:
        """The instance as a pydicom Dataset; MalformedDicomError when
        pydicom cannot read the bytes stored (which get() returns)."""
        data = self.get(sop_instance_uid)
        try:
            return pydicom.dcmread(io.BytesIO(data), force=True)
        except (MemoryError, RecursionError):
            raise
        except Exception as exc:
            # pydicom raises what its reader meets: OSError for an
            # undefined length it cannot follow, ValueError, ...
            raise MalformedDicomError(
                f"instance {sop_instance_uid} is stored, but pydicom "
                f"cannot read it: {type(exc).__name__}: {exc}; get() "
                f"returns its bytes") from None

    def frame(self, sop_instance_uid: str, index: int, *,
              decode: bool = False) -> bytes | np.ndarray:
        """Frame ``index`` (0-based): its stored bytes (a frame's
        fragment values joined, for encapsulated syntaxes) or, with
        ``decode``, the decoded pixels as a numpy array."""
        reader = InstanceReader(
            self._index, self._segments, _uid_arg(sop_instance_uid),
            lambda record: _frame_blocks(record, index, decode),
            bases=self._bases)
        index = _frame_index(index)
        frame, prefix, syntax = _frame_of(reader, index, decode)
        if not decode:
            return frame
        record = reader.record
        native = record["layout"] != layout.ENCAPSULATED
        big_endian = syntax == BIG_ENDIAN and \
            record["layout"] == layout.NATIVE
        vr = _pixel_vr(reader.header(), record) if big_endian else None
        return decode_frame(prefix, frame, syntax, native=native,
                            pixel_vr=vr, sop_instance_uid=sop_instance_uid,
                            index=index)

    def find(self, level: str, *,
             match_unknown: bool | Iterable[str] = False,
             combined_datetime: bool = False,
             **keys: Any) -> list[dict[str, Any]]:
        """Patients, studies, series or instances matching ``keys``.

        ``level`` is "patient", "study", "series" or "instance"; each key
        is a keyword of that level or of a level above it, and each
        answer carries the attributes of its level and of the levels
        above, with their counts (NumberOfStudyRelatedSeries,
        ModalitiesInStudy and so on). A value matches as C-FIND does
        (PS3.4 C.2.2.2, docs/query.md): exactly, with ``*`` and ``?``
        wildcards, or universally when it is ``""``, ``"*"`` or
        ``None``; person names ignore case. A UID key takes a list or
        tuple of UIDs (any of them); a date or time key takes a range
        ``"20040101-20041231"``, ``"-2004"`` or ``"2004-"``. At study
        level, ``Modality`` matches a study that has a series of that
        modality. Any other key or value is a QueryError.
        ``match_unknown`` lets an entity whose required key is empty
        match any value (PS3.4 C.2.2.1.2): True for every required key,
        or the keys to apply it to; ``combined_datetime`` reads
        a date and a time range of the same form as one datetime range.
        """
        return query.find(self._index, level, match_unknown=match_unknown,
                          combined_datetime=combined_datetime, **keys)

    def stats(self) -> ArchiveStats:
        index = self._index
        with index.read() as txn:
            segments = index.segments(txn)
            return ArchiveStats(
                patients=index.count(txn, "patient"),
                studies=index.count(txn, "study"),
                series=index.count(txn, "series"),
                instances=index.count(txn, "instance"),
                blocks=txn.stat(index.db["blocks"])["entries"],
                logical_bytes=index.counter(txn, LOGICAL_BYTES),
                stored_bytes=sum(segments.values()),
                dedup_saved_bytes=index.counter(txn, DEDUP_SAVED),
                segments=len(segments))

    def record(self, sop_instance_uid: str) -> dict[str, Any]:
        """The index record of an instance (see docs/format.md)."""
        _uid_arg(sop_instance_uid)
        with self._index.read() as txn:
            found = self._index.record(txn, "instance", sop_instance_uid)
        if found is None:
            raise NotFoundError(f"no instance with SOP Instance UID "
                                f"{sop_instance_uid} is stored")
        return found

    def __contains__(self, sop_instance_uid: object) -> bool:
        if not isinstance(sop_instance_uid, str):
            return False
        with self._index.read() as txn:
            return self._index.record(
                txn, "instance", sop_instance_uid) is not None

    def verify(self, *, scratch_dir: str | os.PathLike | None = None
               ) -> VerifyReport:
        """Check every block, instance record and index entry of the
        store against each other (pacsstore.store.verify); the problems
        found are in the report, nothing is repaired. Runs beside a
        writer. ``scratch_dir`` holds its temporary tables (the system's
        temporary folder by default)."""
        return verify(self._index, self._segments,
                      scratch_dir=None if scratch_dir is None
                      else Path(scratch_dir))


class _Pipeline:
    """store_many: prepare ahead on a small thread pool while earlier
    batches commit; small items in the caller's thread, a chunk at a time.

    Preparing a large item (reading, parsing, digesting, compressing) is
    mostly hashlib and zstandard, which release the GIL, so
    ``PREPARE_WORKERS`` threads prepare large items at once. A small
    item's prepare is mostly Python (the parse's result, the record,
    its JSON), and so is the committer's work: both hold the GIL, so on
    other threads they only interleave, and each LMDB call of the
    committer (py-lmdb releases the GIL around every get and put) hands
    the GIL to a preparer and waits to get it back. Small items are
    therefore prepared here, ``SMALL_CHUNK_ITEMS`` at a time, all but
    their digests and their compression; the Python of a chunk never
    runs beside the committer's. The chunk's digests and compression,
    three calls that hold no GIL (Preparer.code_together), are what runs
    while the chunk before it commits:

        here:       prepare 2 | code 2 | wait    | prepare 3 | code 3 |
        committer:            | commit 1         |           | commit 2 |

    Items still reach the committer in the order of the iterable, which
    is what makes the re-send policy's "first" and "last" mean the
    caller's order.
    """

    def __init__(self, archive: Archive, skip_invalid: bool) -> None:
        self.archive = archive
        self.committer = archive._writer()
        self.skip_invalid = skip_invalid
        self.small_below = min(SMALL_ITEM_BYTES, archive._stream_threshold)
        self.results: list[StoreResult | None] = []
        self.preparing: collections.deque[tuple[int, Future[Prepared]]] = \
            collections.deque()
        # Small items prepared here and not yet handed on: (position,
        # prepared), in order, all later than everything in preparing;
        # those held are coded, those unencoded later still.
        self.held: list[tuple[int, Prepared]] = []
        self.unencoded: list[tuple[int, Prepared]] = []
        self.unencoded_bytes = 0
        self.inflight: collections.deque[tuple[int, Future, int]] = \
            collections.deque()
        self.inflight_bytes = 0

    def run(self, items: Iterable[StoreInput]) -> list[StoreResult]:
        with ThreadPoolExecutor(PREPARE_WORKERS,
                                thread_name_prefix="pacsstore-prepare"
                                ) as pool:
            try:
                for position, item in self._read(items):
                    if self._is_small(item):
                        self._prepare_here(position, item)
                        continue
                    self._hand_on_small()
                    self._prepare_on(pool, position, item)
                    while len(self.preparing) > READ_AHEAD:
                        self._forward_oldest()
                self._hand_on_read()
            except BaseException as stopped:
                # What stopped the loop (a bad item, the iterable's own
                # error, an interrupt) is what the caller gets; the items
                # already handed on still complete, and those that fail
                # are noted on it.
                dropped = self._stop()
                if dropped:
                    stopped.add_note(_read_not_stored(dropped))
                for position, failure in self._drain(quiet=True):
                    stopped.add_note(_not_stored_either(position, failure))
                raise
            self._drain()
        return [r for r in self.results if r is not None]

    def _prepare_on(self, pool: ThreadPoolExecutor, position: int,
                    item: StoreInput) -> None:
        preparing = pool.submit(self.archive._prepare, item)
        # A batch about to commit waits a little for items still being
        # prepared (Committer.announce): the batches of the CT study
        # went from 2.5 instances to 9.5.
        self.committer.announce()
        preparing.add_done_callback(self._prepared)
        self.preparing.append((position, preparing))

    def _stop(self) -> list[int]:
        """Drop what was read but not handed on, and its streams; the
        positions of the items dropped."""
        dropped = sorted(position for position, _ in (
            *self.preparing, *self.held, *self.unencoded))
        for _position, future in self.preparing:
            future.cancel()
            future.add_done_callback(self._abandon_unsent)
        self.preparing.clear()
        for _position, prepared in (*self.held, *self.unencoded):
            if prepared.stream is not None:  # a file that grew
                self.committer.abandon(prepared.stream)
        self.held.clear()
        self.unencoded.clear()
        return dropped

    def _read(self, items: Iterable[StoreInput]
              ) -> Iterator[tuple[int, StoreInput]]:
        """The items with their positions, each snapshotted before the
        iterable is asked for the next (a caller may refill a buffer).
        An item that cannot be snapshotted (a Dataset pydicom cannot
        encode) is rejected in its place. When the iterable itself
        fails, the items read before are stored first, as if it had
        ended there, and then its exception is raised."""
        iterator = iter(items)
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except BaseException as failure:
                self._hand_on_read_before(failure)
                raise
            position = len(self.results)
            self.results.append(None)
            try:
                snapshot = _snapshot(item)
            except _ITEM_ERRORS as exc:
                self._reject_unsent(position, exc, hand_on_read=True)
                continue
            yield position, snapshot

    def _hand_on_read_before(self, failure: BaseException) -> None:
        try:
            self._hand_on_read()
        except Exception as exc:  # noqa: BLE001 - noted on the failure
            failure.add_note(f"storing the items read before it stopped "
                             f"at: {exc!r}")

    def _hand_on_read(self) -> None:
        """Hand on every item read so far, in order."""
        self._forward_all()
        self._hand_on_small()

    def _is_small(self, item: StoreInput) -> bool:
        size = _size_of(item)
        return size is not None and size < self.small_below

    def _prepare_here(self, position: int, item: StoreInput) -> None:
        # While large items before it are still being prepared, read no
        # further ahead of them than the pool path does: one of them may
        # be bad, and raising should not wait for a whole chunk.
        while self.preparing and len(self.preparing) + len(self.held) \
                + len(self.unencoded) >= READ_AHEAD:
            self._forward_oldest()
        try:
            prepared = self.archive._prepare(item, code=False)
        except _ITEM_ERRORS as exc:
            # Everything before the bad item is handed on first, so that
            # raising leaves it durable.
            self._reject_unsent(position, exc, hand_on_read=True)
            return
        except Exception as exc:
            exc.add_note(f"raised preparing item {position} of the input "
                         f"(from 0)")
            self._raise_after_read(position, exc)
        self.unencoded.append((position, prepared))
        self.unencoded_bytes += prepared.held_bytes
        if len(self.unencoded) >= SMALL_CHUNK_ITEMS or \
                self.unencoded_bytes >= SMALL_CHUNK_BYTES:
            self._code_unencoded()
            self._settle_all()  # commits before the next is prepared

    def _hand_on_small(self) -> None:
        """Hand on every small item prepared here, coded first."""
        self._code_unencoded()
        self._hand_on_held()

    def _code_unencoded(self) -> None:
        """Name and code the small items prepared since the last chunk,
        while the chunk held before them goes to the committer; they are
        held next."""
        chunk, self.unencoded, self.unencoded_bytes = self.unencoded, [], 0
        items = [p for _, p in chunk]
        handing_on = bool(self.held)
        self._hand_on_held()
        self.held.extend(chunk)  # held even if coding fails, for _stop
        try:
            self.archive._preparer.code_together(items)
        except Exception:
            self._code_one_by_one(chunk)
        if handing_on:
            # The chunk before settles before this one can be handed on:
            # an item of it that fails (a conflict) stops store_many
            # with nothing after that chunk stored.
            self._settle_all()

    def _code_one_by_one(self, chunk: list[tuple[int, Prepared]]) -> None:
        """Coding the chunk at once failed: code its items one at a
        time, so that the items before the one that fails are stored
        before its error raises (_raise_after_read)."""
        for done, (position, prepared) in enumerate(chunk):
            try:
                self.archive._preparer.code_together([prepared])
            except Exception as exc:
                exc.add_note(f"raised coding item {position} of the input "
                             f"(from 0)")
                self.held = chunk[:done]
                self._raise_after_read(position, exc)

    def _raise_after_read(self, position: int, exc: Exception) -> None:
        """Raise ``exc``, no error of an item's own kind but a defect of
        pacsstore's that item ``position`` brings out: whatever
        skip_invalid says, and once every item read before it is
        durable. An earlier item that fails meanwhile (a conflict) is
        the first bad one: it raises instead, with this one noted."""
        try:
            self._hand_on_read()
            self._settle_all()
        except BaseException as earlier:
            earlier.add_note(f"item {position} of the input (from 0) "
                             f"failed too: {exc!r}")
            raise
        raise exc

    def _settle_all(self) -> None:
        while self.inflight:
            self._settle_oldest()

    def _hand_on_held(self) -> None:
        """Hand the held small items to the committer in one piece,
        after every item before them."""
        if not self.held:
            return
        self._forward_all()
        held, self.held = self.held, []
        futures = self.committer.submit_all([p for _, p in held])
        for (position, prepared), future in zip(held, futures):
            self.inflight.append((position, future, prepared.held_bytes))
            self.inflight_bytes += prepared.held_bytes
        while self.inflight_bytes > self.archive._max_inflight:
            self._settle_oldest()

    def _prepared(self, future: Future[Prepared]) -> None:
        """Done (or cancelled): the committer need wait for it no more."""
        self.committer.withdraw()

    def _abandon_unsent(self, future: Future[Prepared]) -> None:
        """An item prepared but never handed on (an earlier one failed):
        the segments it streamed into are removed."""
        if future.cancelled() or future.exception() is not None:
            return
        stream = future.result().stream
        if stream is not None:
            self.committer.abandon(stream)

    def _forward_all(self) -> None:
        while self.preparing:
            self._forward_oldest()

    def _forward_oldest(self) -> None:
        """Hand the oldest prepared item to the committer, in order."""
        position, preparing = self.preparing.popleft()
        try:
            prepared = preparing.result()
        except _ITEM_ERRORS as exc:
            self._reject_unsent(position, exc)
            return
        except BaseException:
            # Interrupted while it is still being prepared: its stream,
            # if any, goes once it is done.
            preparing.add_done_callback(self._abandon_unsent)
            raise
        cost = prepared.held_bytes
        future = self.committer.submit(prepared)
        self.inflight.append((position, future, cost))
        self.inflight_bytes += cost
        while self.inflight_bytes > self.archive._max_inflight:
            self._settle_oldest()

    def _settle_oldest(self) -> None:
        position, future, cost = self.inflight.popleft()
        self.inflight_bytes -= cost
        try:
            self.results[position] = future.result()
        except _ITEM_ERRORS as exc:
            self._reject(position, exc, future)

    def _reject_unsent(self, position: int, exc: Exception, *,
                       hand_on_read: bool = False) -> None:
        """A bad item found before it reached the committer, every item
        before it handed on (here first, with ``hand_on_read``). Without
        skip_invalid those settle first: one that fails at commit (a
        conflict) is the first bad item, so its error is raised, with
        this one noted on it."""
        try:
            if hand_on_read:
                self._hand_on_read()
            if not self.skip_invalid:
                self._settle_all()
        except BaseException as earlier:
            earlier.add_note(f"item {position} of the input (from 0) was "
                             f"not storable either: {exc!r}")
            raise
        self._reject(position, exc, None)

    def _reject(self, position: int, exc: Exception,
                future: Future | None) -> None:
        if not self.skip_invalid:
            raise exc
        uid = getattr(exc, "sop_instance_uid", None)
        self.results[position] = StoreResult(
            sop_instance_uid=uid, sop_class_uid=None,
            study_instance_uid=None, series_instance_uid=None,
            patient_id=None, status=results.REJECTED, size=0,
            bytes_written=0, bytes_deduplicated=0, frames=0,
            error=str(exc))

    def _drain(self, *, quiet: bool = False
               ) -> list[tuple[int, BaseException]]:
        """Wait for everything in flight; the first error (if any and not
        skipped) is raised after all of it is settled, unless ``quiet``
        (another error is already on its way to the caller): then the
        errors are returned, with the position of each item."""
        failed: list[tuple[int, BaseException]] = []
        while self.inflight:
            position, future, _cost = self.inflight[0]
            try:
                self._settle_oldest()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                if not _outcome_of(future, exc):
                    # The wait itself was interrupted (a second Ctrl-C):
                    # stop waiting. The item is no failure of its own,
                    # and it and those after it still commit.
                    exc.add_note(_not_waited_for(position,
                                                 1 + len(self.inflight)))
                    raise
                failed.append((position, exc))
        if failed and not quiet:
            first = failed[0][1]
            for position, failure in failed[1:]:
                first.add_note(_not_stored_either(position, failure))
            raise first
        return failed


def _outcome_of(future: Future, exc: BaseException) -> bool:
    """Whether ``exc``, raised by ``future.result()``, is the future's
    own outcome rather than an interruption of the wait for it."""
    return future.done() and not future.cancelled() and \
        future.exception() is exc


def _not_waited_for(position: int, count: int) -> str:
    return (f"store_many stopped waiting at item {position} of the input "
            f"(from 0): it and the {count - 1} handed on after it are left "
            f"to commit, and may be stored")


def _read_not_stored(positions: list[int]) -> str:
    """A note of the items read but never handed on when store_many
    stopped (a second interrupt, an error while a chunk was held)."""
    first, last = positions[0], positions[-1]
    which = (f"item {first}" if len(positions) == 1 else
             f"items {first} to {last}" if last - first + 1 == len(positions)
             else f"{len(positions)} items from {first} to {last}")
    verb = "was" if len(positions) == 1 else "were"
    return (f"{which} of the input (from 0) {verb} read but not handed on "
            f"when store_many stopped, and not stored")


def _not_stored_either(position: int, failure: BaseException) -> str:
    return (f"item {position} of the input (from 0) was not stored "
            f"either: {failure!r}")


def _as_bytes(data: StoreInput) -> bytes | memoryview:
    if isinstance(data, bytes):
        return data
    if isinstance(data, memoryview):
        return _owned_view(data)
    if isinstance(data, bytearray):
        return bytes(data)
    if isinstance(data, Dataset):
        return _dataset_bytes(data)
    if isinstance(data, (str, os.PathLike)):
        try:
            return Path(data).read_bytes()
        except OSError as exc:
            raise NotStorableError(
                f"cannot read {os.fspath(data)!r}: {exc.strerror}") from None
        except ValueError as exc:  # a NUL in the path
            raise NotStorableError(
                f"cannot read {os.fspath(data)!r}: {exc}") from None
    try:
        view = memoryview(data)  # a numpy array, an array.array, a mmap
    except TypeError:
        raise NotStorableError(
            f"store() takes bytes or another buffer (a bytearray, a "
            f"memoryview, a numpy array), a path or a pydicom Dataset; "
            f"found {type(data).__name__}") from None
    return _owned_view(view)


def _read_file(fd: int, name: str) -> bytes:
    try:
        return io.FileIO(fd, closefd=False).readall()
    except OSError as exc:
        raise NotStorableError(
            f"cannot read {name!r}: {exc.strerror}") from None


def take_write_lock(store: Path, *, unwritable: str, locked: str) -> int:
    """Open the lock file of ``store`` and take its exclusive flock (a
    store has one writer at a time); the descriptor, which holds the
    lock until it is closed. ``unwritable`` and ``locked`` end the
    messages for a store this process cannot write and for one that
    another process writes: what the caller can do instead."""
    try:
        fd = os.open(store / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    except IsADirectoryError:
        raise NotAStoreError(
            f"{store / 'lock'} is a directory; a store's lock is a file "
            f"(empty), which the writer creates") from None
    except OSError as exc:
        if exc.errno not in _NOT_WRITABLE:
            raise
        raise ReadOnlyStoreError(
            exc.errno, f"{store} cannot be written here ({exc.strerror}); "
                       f"{unwritable}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLockedError(
            f"{store} is open for writing by another process; "
            f"{locked}") from None
    return fd


def _check_compression_level(value: object) -> int:
    """A zstd level, refused when the Archive opens rather than at the
    first store, before anything is created on disk."""
    if isinstance(value, bool) or not isinstance(value, int) or \
            not 1 <= value <= zstandard.MAX_COMPRESSION_LEVEL:
        raise policy.StoreConfigError(
            f"compression_level is a zstd level, a whole number from 1 "
            f"to {zstandard.MAX_COMPRESSION_LEVEL} (3 by default); found "
            f"{value!r}")
    return value


# The largest LMDB map the options take: far beyond any disk, and inside
# what py-lmdb converts (2**70 raised OverflowError from within LMDB's
# open, after the store's directory was made).
_LARGEST_MAP = 1 << 56


def _check_bytes(name: str, value: object, minimum: int,
                 maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or \
            value < minimum or (maximum is not None and value > maximum):
        bounds = (f"{minimum} or more" if maximum is None
                  else f"{minimum} to {maximum}")
        raise policy.StoreConfigError(
            f"{name} is a number of bytes ({bounds}); found {value!r}")
    return value


def _size_of(data: StoreInput) -> int | None:
    """The bytes ``data`` holds, when that is cheap to know (a snapshot's
    buffer, a regular file); None otherwise."""
    if isinstance(data, bytes):
        return len(data)
    if isinstance(data, memoryview):
        try:
            return data.nbytes
        except ValueError:  # released: the prepare says so
            return None
    if isinstance(data, (str, os.PathLike)):
        try:
            stat = os.stat(data)
        except (OSError, ValueError):
            return None  # the prepare says what is wrong with it
        return stat.st_size if S_ISREG(stat.st_mode) else None
    return None


def _snapshot(data: StoreInput) -> StoreInput:
    """``data`` as it is now, when the caller may change it once the
    loop moves on: a buffer it refills, a Dataset it edits and yields
    again. Paths are read later, in the prepare pool."""
    if isinstance(data, (bytes, str, os.PathLike)):
        return data
    return _as_bytes(data)


def _owned_view(view: memoryview) -> bytes | memoryview:
    """A view of bytes nobody can change while the store runs.

    Prepare digests the blocks, then compresses them, then the record
    digests the file, each a separate read of the buffer; store_many
    runs it in a pool while the caller's loop already fills the next
    item. A view of a buffer the caller may reuse (a numpy array, a
    bytearray, a mmap) would name a block by one content and store
    another, so it is copied first, like a bytearray. A view of bytes
    is kept as a view of its own, which lives on when the caller
    releases theirs (a ``with memoryview(...)`` around a yield). A
    non-contiguous view is left for prepare to refuse with its own
    message."""
    try:
        if isinstance(view.obj, bytes) or not view.c_contiguous:
            return view[:]
    except ValueError:  # released before it was handed over
        raise NotStorableError("the memoryview was released before it "
                               "was stored") from None
    return view.tobytes()


def _dataset_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    try:
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    except MemoryError:
        raise
    # Whatever pydicom raises for a Dataset it cannot encode: an OSError
    # for a US of 70000 (writing into memory, nothing else raises one
    # here), NotImplementedError for an unknown VR, a ValueError, a
    # TypeError...
    except Exception as exc:  # noqa: BLE001 - all of them mean the same
        # Some of pydicom's messages carry a traceback of their own.
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise NotStorableError(
            f"the pydicom Dataset cannot be written as a Part 10 file: "
            f"{reason}") from None
    return buffer.getvalue()


def _check_transfer_syntax(value: object) -> None:
    """Refuse a transfer syntax DICOM does not define: it decides how the
    dataset is read, and one misnamed would store an instance that no
    reader decodes (an unknown syntax is read as explicit VR little
    endian)."""
    if not isinstance(value, str) or value not in _TRANSFER_SYNTAXES:
        raise NotStorableError(
            f"transfer_syntax {value!r} is not a transfer syntax DICOM "
            f"defines; give the UID of the one the dataset is encoded in "
            f"(such as {ExplicitVRLittleEndian!r})")


_TRANSFER_SYNTAXES = frozenset(str(uid) for uid in AllTransferSyntaxes)


def _check_no_file_meta(dataset: bytes | memoryview,
                        transfer_syntax: str) -> None:
    """Refuse a data set that begins with a file meta element: group
    0002 is no part of a data set (PS3.10 7.1), and behind the meta the
    node writes it would be read as that meta's, its (0002,0010) taking
    the place of the negotiated transfer syntax."""
    if transfer_syntax == DeflatedExplicitVRLittleEndian or \
            len(dataset) < 2:
        return  # deflated: the bytes are a deflate stream, not elements
    order = "big" if transfer_syntax == ExplicitVRBigEndian else "little"
    if int.from_bytes(bytes(dataset[:2]), order) == 0x0002:
        element = int.from_bytes(bytes(dataset[2:4]), order)
        raise MalformedDicomError(
            f"the data set begins with a file meta element "
            f"(0002,{element:04X}); group 0002 belongs to a Part 10 "
            f"file's meta, not to a data set (PS3.10 7.1)",
            tag=0x00020000 | element, offset=0)


def _uid_arg(uid: object) -> str:
    """Refuse a SOP Instance UID that is not a string here, rather than
    as an AttributeError from deep in the index."""
    if not isinstance(uid, str):
        raise QueryError(f"expected a SOP Instance UID string; found "
                         f"{type(uid).__name__} {uid!r}")
    return uid


def _frame_index(index: object) -> int:
    """A frame index: an int (a numpy integer too), never a bool, which
    Python would otherwise take as frame 0 or 1."""
    if isinstance(index, bool):
        raise QueryError(f"a frame index is an integer; found bool {index} "
                         f"(frame(uid, index, decode=True) decodes)")
    try:
        return operator.index(index)  # type: ignore[arg-type]
    except TypeError:
        raise QueryError(f"a frame index is an integer; found "
                         f"{type(index).__name__} {index!r}") from None


def _pixel_vr(header: bytes, record: dict[str, Any]) -> str:
    """The VR of the stored (7FE0,0010) element (explicit VR: bytes 4-5
    of the element). Big Endian OW data of 8 bits is swapped in 16-bit
    words, OB data is not, so the decoder must be told which it is."""
    offset = record["pixel_offset"]
    return header[offset + 4:offset + 6].decode("ascii", "replace")


def _frame_blocks(record: dict[str, Any], index: object,
                  decode: bool) -> list[int]:
    """The block positions frame ``index`` reads (0 the header block, 1..
    the frame blocks): its own block, and the header block only to
    decode (the attributes before the pixel data, the pixel VR). A
    deflated dataset is stored whole and needs every block; a frame that
    does not exist needs none (_frame_of says so)."""
    index = _frame_index(index)
    kind, count, blocks = record["layout"], record["frames"], \
        len(record["blocks"])
    if kind == layout.NONE or not 0 <= index < max(count, 0):
        return []
    if kind == layout.WHOLE:
        return list(range(blocks + 1))
    wanted = [0] if decode else []
    if kind == layout.BITPACKED:
        wanted.append(1)
    elif index < blocks:
        wanted.append(index + 1)
    return wanted


def _frame_of(reader: InstanceReader, index: int,
              decode: bool = True) -> tuple[bytes, bytes, str]:
    """(frame bytes, bytes before the pixel data, transfer syntax); the
    bytes before the pixel data only with ``decode`` (b"" otherwise, so
    that the header block is not read)."""
    record = reader.record
    kind, count = record["layout"], record["frames"]
    uid = record["sop_instance_uid"]
    if kind == layout.NONE or not 0 <= index < max(count, 0):
        raise NotFoundError(
            f"instance {uid} has {count} frame(s); frame {index} (0-based) "
            f"does not exist")
    if kind == layout.WHOLE:
        return _deflated_frame(reader.read_all(), index, uid)
    prefix = reader.header()[:record["pixel_offset"]] if decode else b""
    if kind == layout.BITPACKED:
        value = reader.frame_block(0)
        frame = layout.bit_frame(value, index, record["frame_bits"])
    else:
        if index >= len(record["blocks"]):
            raise NotFoundError(f"instance {uid}: frame {index} is not in "
                                f"the stored pixel data")
        frame = reader.frame_block(index)
    return frame, prefix, record["transfer_syntax"]


def _deflated_frame(data: bytes, index: int,
                    uid: str) -> tuple[bytes, bytes, str]:
    """Deflated datasets are stored whole: inflate and cut on read."""
    header = parsing.read_header(data)
    inflated, pixel = header.result.inflated, header.result.pixel
    if inflated is None or pixel is None:
        raise NotFoundError(f"instance {uid} has no pixel data")
    parts = layout.split(inflated, pixel, deflated=False)
    if parts.layout == layout.BITPACKED:
        frame = layout.bit_frame(bytes(parts.blocks[0]), index,
                                 parts.frame_bits)
    elif index < len(parts.blocks):
        frame = bytes(parts.blocks[index])
    else:
        raise NotFoundError(f"instance {uid}: frame {index} is not in the "
                            f"stored pixel data")
    prefix = inflated[:pixel.element_offset]
    return frame, prefix, "1.2.840.10008.1.2.1"
