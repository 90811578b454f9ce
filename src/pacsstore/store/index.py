"""The index: an LMDB environment naming every block and instance.

The index is what makes a read one lookup and one positional read: it
maps each block digest to where the block lies and how many instances
refer to it, each SOP Instance UID to the record that says how to rebuild
its bytes, and the patient / study / series hierarchy to the attributes a
query matches on. It is also where the store records how far each segment
has been durably written, which is what lets the writer discard the torn
tail of a segment after a crash.

Everything here is derived: each instance's record is also written, as a
manifest block, into the segments, so a lost index can be rebuilt from
them. LMDB gives the index one writer and any number of readers, in this
process or others, that never block; its write transactions are durable
when they return because the environment is opened with sync on.

The map of an LMDB environment has a fixed size. When a write runs out of
it, the writer doubles the map and retries the transaction, up to
``max_map_size``; only past that does a store fail, with a message that
names the setting. Resizing needs every transaction of this process to be
finished, so read transactions pass through a small gate that the resize
closes while it works.

Encodings (docs/format.md has the full description): fixed records are
little-endian ``struct``s, the others compact UTF-8 JSON. The attribute
indexes (store/secondary.py) are sorted keys with empty values.

A write transaction keeps the patient, study and series records and the
counters it reads or changes in memory, and writes each changed one to
LMDB once, just before it commits (``_Buffered``): one batch of group
commit often holds many instances of one series, study or patient, and
each of them changes those records and counters, so encoding and
putting them once per batch instead of once per instance is most of the
cost of indexing a small instance that the batch can share. What is
committed is exactly what writing through would have committed.

An index of an older format is upgraded when a writer opens it: what
changed is derived from the instance records, so the upgrade rebuilds
it from them in one transaction (readers of other processes see the old
index or the new one, never half of it). A reader cannot write, so it
refuses an index that still needs its upgrade.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from pacsstore.errors import (
    AlreadyOpenError,
    ArchiveClosedError,
    CorruptStoreError,
    NewerFormatError,
    OutOfSpaceError,
    PacsstoreError,
    StoreFormatError,
)
from pacsstore.store import record_dictionary
from pacsstore.store.blocks import Codec, EncodedBlock
from pacsstore.store.record_bases import (
    BaseLookup,
    NewRecord,
    RecordBases,
)
from pacsstore.store.records import (
    AGAINST_BASE,
    DamagedRecord,
    against_base,
    compact,
    dumps,
    instance_for_commit,
    instance_record,
    loads,
    reference_to_base,
    without_manifest,
)

log = logging.getLogger(__name__)

# 2: patient, study and series records carry their counts; the
# attribute indexes (the "attributes" database) exist.
# 3: instance records may be compact (records.py); JSON ones stay.
# 4: instance records may be written against a base record of their
# series (record_bases.py, the "record_bases" database).
INDEX_FORMAT_VERSION = 4
# The oldest version this pacsstore reads without an upgrade: versions 3
# and 4 only added forms of instance record, so a version 2 index reads
# as it is.
_READS_AS_IT_IS = 2

# A fresh map is small (it is a sparse file, but some filesystems and
# backups see its full size); doubling reaches any size in a few steps.
DEFAULT_MAP_SIZE = 64 << 20
DEFAULT_MAX_MAP_SIZE = 1 << 40

DATABASES = ("meta", "segments", "blocks", "instances", "patients",
             "studies", "series", "attributes", "record_bases")
# Databases an index of an older format may lack (opened read-only, it
# cannot create them; a version 2 or 3 index reads without the base
# records, which it cannot have used; an older one is refused once its
# version is read).
_ADDED_SINCE_VERSION_1 = ("attributes", "record_bases")
# Parent -> child links, one LMDB dupsort database. Keys are a level
# prefix plus the parent key; values are the child keys.
CHILD_PREFIX = {"patient": b"p:", "study": b"s:", "series": b"e:"}

# segment, offset, raw length, stored length, kind, codec, refcount.
_BLOCK = struct.Struct("<IQQQBBI")
_SEGMENT_KEY = struct.Struct(">I")  # big-endian: keys sort by number
_U64 = struct.Struct("<Q")
_I64 = struct.Struct("<q")
_U32 = struct.Struct("<I")

# The levels whose records a write transaction buffers (see _Buffered);
# instance records are written once each, so buffering gains nothing.
_BUFFERED_LEVELS = frozenset(("patient", "study", "series"))
# Bounds the memory of a long write transaction (a rebuild, an upgrade
# of every record): past this many buffered records they are written
# out and forgotten, and buffering starts afresh.
MAX_BUFFERED_RECORDS = 10_000

T = TypeVar("T")


class DamagedBlockEntry(CorruptStoreError):
    """A block entry of the index that does not describe a block a
    segment could hold."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"a block entry of the index is damaged: {reason}")
        self.reason = reason


# Positions in a file are signed 64-bit numbers; a segment is far
# smaller, so anything past 2**62 is damage.
_LARGEST_POSITION = 1 << 62


@dataclass(frozen=True)
class BlockEntry:
    segment: int
    offset: int
    raw_length: int
    stored_length: int
    kind: int
    codec: int
    refcount: int

    def encode(self) -> bytes:
        return _BLOCK.pack(self.segment, self.offset, self.raw_length,
                           self.stored_length, self.kind, self.codec,
                           self.refcount)

    @classmethod
    def decode(cls, raw: bytes) -> BlockEntry:
        """The entry ``raw`` holds; DamagedBlockEntry when it is not one
        a segment could hold (a file position is a signed 64-bit
        number: a flipped high bit reached preadv as an OverflowError)."""
        if len(raw) != _BLOCK.size:
            raise DamagedBlockEntry(f"{len(raw)} bytes, not "
                                    f"{_BLOCK.size}")
        entry = cls(*_BLOCK.unpack(raw))
        if entry.offset + entry.stored_length > _LARGEST_POSITION or \
                entry.raw_length > _LARGEST_POSITION:
            raise DamagedBlockEntry(
                f"it places {entry.stored_length} bytes at offset "
                f"{entry.offset}, past any file")
        return entry

    def with_refcount(self, refcount: int) -> BlockEntry:
        return BlockEntry(self.segment, self.offset, self.raw_length,
                          self.stored_length, self.kind, self.codec,
                          refcount)


def key(value: str) -> bytes:
    """LMDB key of a UID or patient ID; an empty one is a single NUL
    (LMDB has no empty keys)."""
    return value.encode("utf-8") or b"\x00"


def unkey(raw: bytes) -> str:
    if raw == b"\x00":
        return ""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # Every key pacsstore writes is UTF-8 (``key``).
        raise CorruptStoreError(
            f"the index holds a key that is not UTF-8 ({bytes(raw)!r}): "
            f"the index is damaged; `pacsstore verify` says what else "
            f"is, and `pacsstore rebuild-index` builds it again from the "
            f"segments") from None


class _Gate:
    """Lets many read transactions in, or one map resize, not both; and
    once closed, lets nobody in (closing waits for those inside, because
    closing an LMDB environment invalidates its open transactions)."""

    def __init__(self, closed_message: str) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._resizing = False
        self._closed = False
        self._closed_message = closed_message

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            if self._closed:
                raise ArchiveClosedError(self._closed_message)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def resizing(self) -> Iterator[None]:
        with self._cond:
            self._resizing = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()

    def close(self) -> bool:
        """Shut the gate and wait for those inside; False when it was
        already shut."""
        with self._cond:
            if self._closed:
                return False
            self._closed = True
            while self._readers or self._resizing:
                self._cond.wait()
        return True


class _Buffered:
    """What one write transaction has read or changed of the level
    records and the counters, written to LMDB by ``Index._flush``.

    ``records`` maps (level, name) to the record as the transaction sees
    it, None for an absent one; ``dirty`` names those that differ from
    LMDB. A record handed out is shared with the buffer: callers put a
    changed copy, never change the one they were given."""

    __slots__ = ("txn", "records", "dirty", "counters", "dirty_counters")

    def __init__(self, txn: lmdb.Transaction) -> None:
        self.txn = txn
        self.records: dict[tuple[str, str], dict[str, Any] | None] = {}
        self.dirty: set[tuple[str, str]] = set()
        self.counters: dict[str, int] = {}
        self.dirty_counters: set[str] = set()


def _open_environment(path: Path, *, readonly: bool,
                      map_size: int) -> lmdb.Environment:
    try:
        return lmdb.open(
            str(path), subdir=True, readonly=readonly,
            map_size=map_size, max_dbs=len(DATABASES) + 1,
            max_readers=256, sync=True, metasync=True, lock=True,
            create=not readonly)
    except _DAMAGE as exc:
        raise _damaged(path, exc) from None
    except lmdb.Error as exc:
        # py-lmdb's own check (one environment per path per process),
        # which only its message tells apart from other lmdb.Errors.
        if "already open in this process" not in str(exc):
            raise PacsstoreError(
                f"the index {path} cannot be opened: {exc}") from None
        raise AlreadyOpenError(
            f"the store at {path.parent} is already open in this process "
            f"by another Archive; use that Archive (it is thread-safe, "
            f"and reads too) or close it first") from None


# What LMDB raises for a file that is not, or no longer, a sound index.
_DAMAGE = (lmdb.InvalidError, lmdb.CorruptedError, lmdb.PageNotFoundError,
           lmdb.VersionMismatchError, lmdb.BadRslotError,
           lmdb.BadChecksumError, lmdb.IncompatibleError, lmdb.PanicError)


def _damaged(path: Path, exc: lmdb.Error) -> CorruptStoreError:
    return CorruptStoreError(
        f"the index {path} cannot be opened: {exc}; it is damaged, and "
        f"`pacsstore rebuild-index` builds it again from the segments")


def _check_length(env: lmdb.Environment, path: Path) -> None:
    """Refuse an index file shorter than the pages its last transaction
    uses (a copy cut short): LMDB maps the file and would read past its
    end, which the kernel answers with SIGBUS, killing the process."""
    used = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = (path / "data.mdb").stat().st_size
    if size < used:
        raise CorruptStoreError(
            f"the index file {path / 'data.mdb'} is {size} bytes, but its "
            f"last transaction uses {used}: it was cut short (a copy gone "
            f"wrong?); `pacsstore rebuild-index` builds it again from the "
            f"segments")


class Index:
    """The LMDB environment of one store and its named databases."""

    def __init__(self, path: Path, *, readonly: bool,
                 map_size: int = DEFAULT_MAP_SIZE,
                 max_map_size: int = DEFAULT_MAX_MAP_SIZE) -> None:
        self.path = path
        self.readonly = readonly
        self.max_map_size = max_map_size
        self._gate = _Gate(f"the store at {path.parent} is closed; open "
                           f"a new Archive to use it")
        # The _Buffered of the write transaction a thread is inside.
        self._local = threading.local()
        self._bases = RecordBases()
        # Guards the late opening of the base records' database.
        self._opening = threading.Lock()
        self._decoded = _DecodedRecords()
        self.env = _open_environment(path, readonly=readonly,
                                     map_size=map_size)
        try:
            _check_length(self.env, path)
            if not readonly:
                self._clear_stale_readers()
            try:
                self._open()
            except _DAMAGE as exc:
                raise _damaged(path, exc) from None
        except BaseException:
            # An index refused (newer, or waiting for its upgrade) must
            # not stay open: LMDB opens an environment once per process.
            self.env.close()
            raise

    def _open(self) -> None:
        while True:
            try:
                self.db = self._open_databases()
                break
            except lmdb.MapFullError:
                self._grow()  # creating the databases needs room too
        self._check_version()

    def _clear_stale_readers(self) -> None:
        """Free the reader slots of processes that died inside a read
        transaction. LMDB frees them only when no process has the
        environment open; while another reader keeps it open, a dead
        reader's slot pins the pages of its snapshot, and the index
        grows because the writer may never reuse them."""
        cleared = self.env.reader_check()
        if cleared:
            log.info("cleared %d reader slots of ended processes", cleared)

    def _open_databases(self) -> dict[str, Any]:
        create = not self.readonly
        db = {}
        for name in DATABASES:
            try:
                db[name] = self.env.open_db(name.encode(), create=create)
            except lmdb.NotFoundError:
                if name not in _ADDED_SINCE_VERSION_1:
                    raise
                db[name] = None
        db["children"] = self.env.open_db(b"children", dupsort=True,
                                          create=create)
        return db

    def _check_version(self) -> None:
        with self.read() as txn:
            raw = txn.get(b"format_version", db=self.db["meta"])
        if raw is None:
            if not self.readonly:
                self.write(lambda txn: txn.put(
                    b"format_version", _U32.pack(INDEX_FORMAT_VERSION),
                    db=self.db["meta"]))
            return
        (version,) = _U32.unpack(raw)
        if version > INDEX_FORMAT_VERSION:
            raise NewerFormatError(
                f"the index has format version {version}; this pacsstore "
                f"reads up to {INDEX_FORMAT_VERSION}")
        if version < INDEX_FORMAT_VERSION:
            if self.readonly and version >= _READS_AS_IT_IS:
                return
            if self.readonly:
                raise StoreFormatError(
                    f"the index has format version {version} and needs an "
                    f"upgrade to {INDEX_FORMAT_VERSION} before it can be "
                    f"read; open the store once for writing (Archive(path) "
                    f"without readonly=True) to upgrade it in place")
            self._upgrade(version)

    def _upgrade(self, version: int) -> None:
        """Rebuild what version 2 added (counts on the level records,
        the attribute indexes) from the instance records. Versions 3 and
        4 need nothing rebuilt: the instance records of an older form
        stay as they are (and the base records' database was created on
        opening)."""
        # The hierarchy imports this module, so it is imported here, on
        # the rare open that needs it.
        from pacsstore.store import hierarchy

        log.info("upgrading the index from format version %d to %d",
                 version, INDEX_FORMAT_VERSION)

        def work(txn: lmdb.Transaction) -> None:
            if version < 2:
                hierarchy.rebuild_from_instances(self, txn)
            txn.put(b"format_version", _U32.pack(INDEX_FORMAT_VERSION),
                    db=self.db["meta"])

        self.write(work)

    @contextlib.contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        """A read transaction; follows a map grown by another process."""
        with self._gate.reading():
            try:
                txn = self.env.begin(buffers=False)
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)
                txn = self.env.begin(buffers=False)
            try:
                yield txn
            finally:
                txn.abort()

    def write(self, work: Callable[[lmdb.Transaction], T], *,
              on_retry: Callable[[], None] | None = None) -> T:
        """Run ``work`` in one durable write transaction, growing the map
        and running it again (after ``on_retry``) when it is full."""
        while True:
            # The record bases the writer remembers before the
            # transaction: those it chose inside go with it if it aborts.
            remembered = self._bases.remembered()
            try:
                return self._write_once(work)
            except lmdb.MapFullError:
                self._bases.restore(remembered)
                if on_retry is not None:
                    on_retry()
                self._grow()
            except BaseException:
                self._bases.restore(remembered)
                raise

    def _write_once(self, work: Callable[[lmdb.Transaction], T]) -> T:
        """``work`` in one write transaction, a full disk named as such."""
        try:
            # Inside the gate, so that close() waits for the commit.
            with self._gate.reading(), self.env.begin(write=True) as txn:
                return self._buffering(txn, work)
        except lmdb.MapFullError:  # an lmdb.Error too: write() grows
            raise
        except lmdb.DiskError as exc:  # ENOSPC writing the pages
            raise _out_of_space(exc) from exc
        except lmdb.Error as exc:
            # LMDB reports a write of its pages that the disk cut short
            # as EIO: on a full disk, that is what ENOSPC looks like.
            if not _nearly_full(self.path):
                raise
            raise _out_of_space(exc) from exc

    def _buffering(self, txn: lmdb.Transaction,
                   work: Callable[[lmdb.Transaction], T]) -> T:
        """``work`` with the level records and counters buffered; they
        reach LMDB before the transaction commits. When ``work`` or the
        flush fails (a full map included) the buffer goes with the
        aborted transaction, and a retry starts from LMDB again."""
        self._local.buffered = buffered = _Buffered(txn)
        try:
            result = work(txn)
            self._flush(buffered)
            return result
        finally:
            self._local.buffered = None

    def _buffered(self, txn: lmdb.Transaction) -> _Buffered | None:
        buffered = getattr(self._local, "buffered", None)
        return buffered if buffered is not None and \
            buffered.txn is txn else None

    def _flush(self, buffered: _Buffered) -> None:
        """Write what the buffer changed; it stays as a clean copy."""
        txn = buffered.txn
        for level, name in sorted(buffered.dirty):
            record = buffered.records[(level, name)]
            if record is None:
                txn.delete(key(name), db=self.db[_plural(level)])
            else:
                txn.put(key(name), dumps(record),
                        db=self.db[_plural(level)])
        buffered.dirty.clear()
        for name in sorted(buffered.dirty_counters):
            txn.put(name.encode(), _I64.pack(buffered.counters[name]),
                    db=self.db["meta"])
        buffered.dirty_counters.clear()

    def _written_through(self, txn: lmdb.Transaction, level: str) -> None:
        """Before LMDB itself is read or changed at ``level`` (a cursor,
        a count, a drop), the buffer's changes must be in it."""
        buffered = self._buffered(txn)
        if buffered is not None and level in _BUFFERED_LEVELS:
            self._flush(buffered)

    def _grow(self) -> None:
        """Double the map, up to max_map_size and no further."""
        current = self.env.info()["map_size"]
        if current >= self.max_map_size:
            raise OutOfSpaceError(
                errno.ENOSPC,
                f"the LMDB index map is full at {current} bytes and may "
                f"not grow past max_map_size={self.max_map_size}; open "
                f"the Archive with a larger max_map_size")
        grown = min(current * 2, self.max_map_size)
        with self._gate.resizing():
            self.env.set_mapsize(grown)
        log.info("index map grown to %d bytes", grown)

    # Blocks --------------------------------------------------------------

    def block(self, txn: lmdb.Transaction, digest: bytes) -> BlockEntry | None:
        raw = txn.get(digest, db=self.db["blocks"])
        return None if raw is None else BlockEntry.decode(raw)

    def put_block(self, txn: lmdb.Transaction, digest: bytes,
                  entry: BlockEntry) -> None:
        txn.put(digest, entry.encode(), db=self.db["blocks"])

    # Instances and the hierarchy -----------------------------------------

    def record(self, txn: lmdb.Transaction, level: str,
               name: str) -> dict[str, Any] | None:
        """The record of ``name`` at ``level``, None when there is none.
        In a write transaction a level record may be shared with the
        buffer: put a changed copy, do not change it in place."""
        buffered = self._buffered(txn)
        if buffered is None or level not in _BUFFERED_LEVELS:
            return self._stored_record(txn, level, name)
        slot = (level, name)
        if slot not in buffered.records:
            self._make_room(buffered)
            buffered.records[slot] = self._stored_record(txn, level, name)
        return buffered.records[slot]

    def instance_to_read(self, txn: lmdb.Transaction,
                         uid: str) -> dict[str, Any] | None:
        """The instance record of ``uid`` for a reader that does not
        change it (it may be shared with other readers). A large record
        decoded before is reused while its stored bytes are the same."""
        raw = txn.get(key(uid), db=self.db["instances"])
        if raw is None:
            return None
        with self._newer_format_named(txn):
            return self._decoded.record(uid, raw, self.bases_in(txn))

    def bases_in(self, txn: lmdb.Transaction) -> BaseLookup:
        """The base records that instance records read in ``txn`` may be
        written against."""
        db = self.record_bases_db()

        def stored_base(base_key: bytes) -> bytes | None:
            if db is None:
                return None
            try:
                return txn.get(base_key, db=db)
            except lmdb.InvalidParameterError:
                # The database was opened after ``txn`` began (a writer
                # raised the index to version 4 since this reader opened
                # it), and LMDB does not let ``txn`` use it. A base is
                # never rewritten, so a newer snapshot holds what ``txn``
                # would; the record's CRC32 or checksum says if not.
                with self.read() as newer:
                    return newer.get(base_key, db=db)
        return self._bases.reader(stored_base)

    def record_bases_db(self) -> Any:
        """The base records' database; None while the index has none.
        An index opened read-only before a writer raised it to version 4
        had none to open then, and may have one now."""
        db = self.db["record_bases"]
        if db is None:
            with self._opening:
                db = self.db["record_bases"]
                if db is None:
                    try:
                        db = self.env.open_db(b"record_bases", create=False)
                    except lmdb.NotFoundError:
                        return None
                    self.db["record_bases"] = db
        return db

    @contextlib.contextmanager
    def _newer_format_named(self, txn: lmdb.Transaction) -> Iterator[None]:
        """A record that does not decode is named as damaged, unless the
        index was raised to a newer format since it was opened: then the
        record is of a form this pacsstore does not know."""
        try:
            yield
        except DamagedRecord:
            raw = txn.get(b"format_version", db=self.db["meta"])
            version = _U32.unpack(raw)[0] if raw and len(raw) == 4 else 0
            if version > INDEX_FORMAT_VERSION:
                raise NewerFormatError(
                    f"the index was raised to format version {version} "
                    f"after this pacsstore opened it; it reads up to "
                    f"{INDEX_FORMAT_VERSION}") from None
            raise

    def _stored_record(self, txn: lmdb.Transaction, level: str,
                       name: str) -> dict[str, Any] | None:
        raw = txn.get(key(name), db=self.db[_plural(level)])
        return None if raw is None else self._decode(txn, level, name, raw)

    def _decode(self, txn: lmdb.Transaction, level: str, name: str,
                raw: bytes) -> dict[str, Any]:
        if level == "instance":
            with self._newer_format_named(txn):
                return instance_record(raw, name, self.bases_in(txn))
        return loads(raw, f"{level} {name}")

    def _make_room(self, buffered: _Buffered) -> None:
        if len(buffered.records) >= MAX_BUFFERED_RECORDS:
            self._flush(buffered)
            buffered.records.clear()

    def put_record(self, txn: lmdb.Transaction, level: str, name: str,
                   record: dict[str, Any]) -> None:
        self._change_record(txn, level, name, record)

    def put_instance(self, txn: lmdb.Transaction, uid: str,
                     encoded_record: bytes, manifest: EncodedBlock,
                     series: str, segment: int, offset: int) -> None:
        """Put the instance record whose ``dumps`` (without the
        manifest's place) is ``encoded_record`` and whose manifest block,
        ``manifest``, lies at ``segment`` and ``offset``: against the
        base record of its series where that shrinks it, else in the
        form of its manifest (records.py). Instance records are not
        buffered."""
        if manifest.codec is Codec.ZSTD_RECORD:
            value = self._record_value(txn, uid, series, encoded_record,
                                       manifest.payload, segment, offset)
        else:
            value = instance_for_commit(encoded_record, manifest, segment,
                                        offset)
        txn.put(key(uid), value, db=self.db["instances"])

    def _record_value(self, txn: lmdb.Transaction, uid: str, series: str,
                      encoded_record: bytes, frame: bytes, segment: int,
                      offset: int) -> bytes:
        """The index value of a record whose frame against the record
        dictionary is ``frame``: against a base of its series, or
        compact. Puts the base, and makes the series' first record a
        reference to it, when the choice makes a new base."""
        record = NewRecord(uid, segment, offset, encoded_record, frame,
                           compact(segment, offset, frame))
        chosen = self._bases.choose(txn, self.record_bases_db(), series,
                                    record)
        if chosen is None:
            return record.value
        first = chosen.promoted
        if first is not None and \
                txn.get(key(first.uid), db=self.db["instances"]) == \
                first.value:
            txn.put(key(first.uid),
                    reference_to_base(first.segment, first.offset,
                                      chosen.number, first.content),
                    db=self.db["instances"])
        if not chosen.frame:
            return reference_to_base(segment, offset, chosen.number,
                                     encoded_record)
        return against_base(segment, offset, chosen.number, chosen.frame)

    def _instance_value(self, txn: lmdb.Transaction, uid: str,
                        record: dict[str, Any]) -> bytes:
        """The index value of a whole instance record (a rebuild's)."""
        if "manifest" not in record:
            return dumps(record)
        segment, offset = record["manifest"]
        encoded = without_manifest(record)
        return self._record_value(txn, uid, record["series"], encoded,
                                  record_dictionary.compress(encoded),
                                  segment, offset)

    def delete_record(self, txn: lmdb.Transaction, level: str,
                      name: str) -> None:
        self._change_record(txn, level, name, None)

    def _change_record(self, txn: lmdb.Transaction, level: str, name: str,
                       record: dict[str, Any] | None) -> None:
        buffered = self._buffered(txn)
        if buffered is not None and level in _BUFFERED_LEVELS:
            slot = (level, name)
            if slot not in buffered.records:
                self._make_room(buffered)
            buffered.records[slot] = record
            buffered.dirty.add(slot)
        elif record is None:
            txn.delete(key(name), db=self.db[_plural(level)])
        elif level == "instance":
            txn.put(key(name), self._instance_value(txn, name, record),
                    db=self.db["instances"])
        else:
            txn.put(key(name), dumps(record), db=self.db[_plural(level)])

    def records(self, txn: lmdb.Transaction,
                level: str) -> Iterator[tuple[str, dict[str, Any]]]:
        self._written_through(txn, level)
        for raw_key, raw in txn.cursor(db=self.db[_plural(level)]):
            name = unkey(raw_key)
            yield name, self._decode(txn, level, name, raw)

    def link(self, txn: lmdb.Transaction, level: str, parent: str,
             child: str) -> None:
        txn.put(CHILD_PREFIX[level] + key(parent), key(child),
                dupdata=False, db=self.db["children"])

    def unlink(self, txn: lmdb.Transaction, level: str, parent: str,
               child: str) -> None:
        txn.delete(CHILD_PREFIX[level] + key(parent), key(child),
                   db=self.db["children"])

    def children(self, txn: lmdb.Transaction, level: str,
                 parent: str) -> list[str]:
        cursor = txn.cursor(db=self.db["children"])
        if not cursor.set_key(CHILD_PREFIX[level] + key(parent)):
            return []
        return [unkey(raw) for raw in cursor.iternext_dup()]

    def is_child(self, txn: lmdb.Transaction, level: str, parent: str,
                 child: str) -> bool:
        cursor = txn.cursor(db=self.db["children"])
        return cursor.set_key_dup(CHILD_PREFIX[level] + key(parent),
                                  key(child))

    def count(self, txn: lmdb.Transaction, level: str) -> int:
        self._written_through(txn, level)
        return txn.stat(self.db[_plural(level)])["entries"]

    def names(self, txn: lmdb.Transaction, level: str,
              prefix: str = "") -> Iterator[str]:
        """The keys of a level in key order, those starting with
        ``prefix`` only."""
        self._written_through(txn, level)
        start = prefix.encode("utf-8")
        for raw in _keys_from(txn.cursor(db=self.db[_plural(level)]),
                              start):
            name = unkey(raw)
            if not name.startswith(prefix):
                return
            yield name

    def clear(self, txn: lmdb.Transaction, name: str) -> None:
        """Empty one database (for a rebuild of what it derives)."""
        buffered = self._buffered(txn)
        if buffered is not None:
            # Whatever the buffer holds of it would come back at the
            # flush; written first, it is dropped with the rest.
            self._flush(buffered)
            buffered.records.clear()
        txn.drop(self.db[name], delete=False)

    # Attribute indexes ---------------------------------------------------

    def put_entry(self, txn: lmdb.Transaction, entry: bytes) -> None:
        txn.put(entry, b"", db=self.db["attributes"])

    def delete_entry(self, txn: lmdb.Transaction, entry: bytes) -> None:
        txn.delete(entry, db=self.db["attributes"])

    def entries(self, txn: lmdb.Transaction, prefix: bytes,
                start: bytes | None = None) -> Iterator[bytes]:
        """Attribute index entries starting with ``prefix``, in order,
        from ``start`` (itself starting with ``prefix``) when given."""
        cursor = txn.cursor(db=self.db["attributes"])
        for raw in _keys_from(cursor, start or prefix):
            if not raw.startswith(prefix):
                return
            yield raw

    # Segments and counters -----------------------------------------------

    def segments(self, txn: lmdb.Transaction) -> dict[int, int]:
        return {_SEGMENT_KEY.unpack(k)[0]: _U64.unpack(v)[0]
                for k, v in txn.cursor(db=self.db["segments"])}

    def put_segments(self, txn: lmdb.Transaction,
                     lengths: dict[int, int]) -> None:
        for number, length in lengths.items():
            txn.put(_SEGMENT_KEY.pack(number), _U64.pack(length),
                    db=self.db["segments"])

    def counter(self, txn: lmdb.Transaction, name: str) -> int:
        buffered = self._buffered(txn)
        if buffered is not None and name in buffered.counters:
            return buffered.counters[name]
        raw = txn.get(name.encode(), db=self.db["meta"])
        value = 0 if raw is None else _I64.unpack(raw)[0]
        if buffered is not None:
            buffered.counters[name] = value
        return value

    def add_counter(self, txn: lmdb.Transaction, name: str,
                    delta: int) -> None:
        if not delta:
            return
        value = self.counter(txn, name) + delta
        buffered = self._buffered(txn)
        if buffered is None:
            txn.put(name.encode(), _I64.pack(value), db=self.db["meta"])
        else:
            buffered.counters[name] = value
            buffered.dirty_counters.add(name)

    def close(self) -> None:
        """Close the environment once every transaction has finished;
        calls after this raise ArchiveClosedError."""
        if self._gate.close():
            self.env.close()


def _keys_from(cursor: lmdb.Cursor, start: bytes) -> Iterator[bytes]:
    """The keys of a cursor's database from the first one >= start."""
    if not cursor.set_range(start):
        return
    yield from cursor.iternext(keys=True, values=False)


class _DecodedRecords:
    """Decoded instance records kept for readers, by SOP Instance UID
    with the stored bytes they came from.

    An instance of many frames has a record listing every block (a
    2,048-frame object: 130 KB of JSON, 0.6 ms to decode), so reading
    one frame at a time decoded it again on every call and the read grew
    with the object. A kept record is used only while the stored bytes
    are equal to those it was decoded from (a comparison is a memcmp),
    so a replaced instance is never answered from an old record. Small
    records are decoded each time: that is as cheap as keeping them."""

    SMALLEST = 8 << 10   # stored bytes: compact, about half the JSON
    ENTRIES = 64

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[bytes, dict[str, Any]]] = {}

    def record(self, uid: str, raw: bytes,
               bases: BaseLookup) -> dict[str, Any]:
        # A record against a base is not kept: what it decodes to
        # depends on the base as well as on its own bytes.
        if len(raw) < self.SMALLEST or raw[0] == AGAINST_BASE:
            return instance_record(raw, uid, bases)
        with self._lock:
            kept = self._kept.get(uid)
        if kept is not None and kept[0] == raw:
            return kept[1]
        record = instance_record(raw, uid, bases)
        with self._lock:
            if len(self._kept) >= self.ENTRIES:
                self._kept.pop(next(iter(self._kept)))
            self._kept[uid] = (bytes(raw), record)
        return record


def _out_of_space(exc: lmdb.Error) -> OutOfSpaceError:
    return OutOfSpaceError(
        errno.ENOSPC, f"no space left on the disk while committing the "
                      f"index ({exc}); nothing of this batch was "
                      f"acknowledged")


# Free bytes below which a failed write of the index is taken for a full
# disk: LMDB writes a commit's pages in runs of up to a megabyte or so.
_NEARLY_FULL = 1 << 20


def _nearly_full(path: Path) -> bool:
    try:
        stat = os.statvfs(path)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < _NEARLY_FULL


def _plural(level: str) -> str:
    return {"instance": "instances", "series": "series",
            "study": "studies", "patient": "patients"}[level]
