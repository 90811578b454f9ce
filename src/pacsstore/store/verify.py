"""Verify: check a whole store, the segments against the index and back.

A read checks the blocks it touches; verify checks everything, so that
damage is found while another copy of the data (a backup, the sender)
still exists, and not on the day a clinician opens the image. It
proves, for one consistent snapshot of the index:

- every block of every segment, up to the committed length, is intact
  (framing, CRC32, decompression, SHA-256 against its name);
- every instance reads back, through the same reassembly as ``get``,
  to the size and SHA-256 of the file that was stored;
- every block reference count equals the references the instance
  records make, and the counters equal what the records add up to;
- every block the index names lies, intact, at the place it names; no
  intact block of the segments is unknown to the index;
- every instance's manifest in the segments says what its index record
  says, so that a rebuild of the index would bring back the same store;
- every segment the index lists is there, sound, and no shorter than
  its committed length, and no segment file below the newest it lists
  holds blocks it does not list.

Each problem names the instance and the segment place it touches.
Problems are reported, never repaired: verify opens nothing for writing
and runs beside a writer, reading only what the snapshot says was
committed (bytes past a committed length belong to a batch in flight).

The cross-checks need a fact per block (where it lies, how often it is
referenced), which for a large store does not fit in memory; they go to
a temporary SQLite database instead, and the joins run there. Memory
stays flat in the size of the store: one block, one record, SQLite's
page cache (``_CACHE_KIB``) and the problems found. The snapshot is one LMDB read transaction held for the
whole run, so on a busy store the index file grows while verify runs
(LMDB cannot reuse pages a reader may still see).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import sqlite3
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb

from pacsstore.errors import CorruptStoreError, StoreFormatError
from pacsstore.store import blocks, layout, scan
from pacsstore.store.bases import BaseReader
from pacsstore.store.blocks import BlockHeader, Kind
from pacsstore.store.commit import DEDUP_SAVED, LOGICAL_BYTES
from pacsstore.store.index import (
    BlockEntry,
    DamagedBlockEntry,
    Index,
    unkey,
)
from pacsstore.store.record_bases import base_defect
from pacsstore.store.records import (
    DamagedRecord,
    dumps,
    instance_record,
    loads,
    record_defect,
)
from pacsstore.store.segments import HEADER_SIZE, SegmentReader, segment_path
from pacsstore.wording import counted

log = logging.getLogger(__name__)

# Problem kinds (stable names: the --json output carries them).
DAMAGED_BLOCK = "damaged-block"          # a block fails its own checks
SEGMENT = "segment"                      # missing, unsound or too short
MISSING_SEGMENT = "missing-segment"      # a gap in the segment numbers
UNLISTED_SEGMENT = "unlisted-segment"    # a segment file the index lacks
INSTANCE_DIGEST = "instance-digest"      # reads back to other bytes
UNREADABLE_INSTANCE = "unreadable-instance"
MISSING_BLOCK_ENTRY = "missing-block-entry"
BLOCK_ENTRY = "block-entry"              # an unusable index entry
INCOMPLETE_INSTANCE = "incomplete-instance"  # rebuild: blocks lost
MISSING_BASE = "missing-base"            # rebuild: a header's base lost
REFCOUNT = "refcount"
MISPLACED_BLOCK = "misplaced-block"
UNINDEXED_BLOCK = "unindexed-block"
MANIFEST = "manifest"
RECORD = "record"                        # an unusable instance record
BASE_RECORD = "base-record"              # an unusable base record
COUNTER = "counter"

# SQLite's page cache for the scratch tables: beyond it they spill to
# their file. A few MiB keep the joins quick; more buys little.
_CACHE_KIB = 16 << 10


@dataclass(frozen=True)
class Problem:
    """One thing found wrong; ``segment`` and ``offset`` are the place in
    the segments it touches, ``sop_instance_uid`` the instance (each
    None where it does not apply or cannot be known)."""

    kind: str
    segment: int | None
    offset: int | None
    sop_instance_uid: str | None
    message: str

    def __str__(self) -> str:
        where = []
        if self.segment is not None:
            where.append(f"segment {self.segment}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        if self.sop_instance_uid is not None:
            where.append(f"instance {self.sop_instance_uid}")
        prefix = f"{', '.join(where)}: " if where else ""
        return f"[{self.kind}] {prefix}{self.message}"


@dataclass
class VerifyReport:
    """What verify checked and what it found."""

    segments: int = 0
    blocks: int = 0
    instances: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        # Blocks as read from the segments: stats() counts data blocks,
        # this also counts each instance's manifest block.
        return (f"verified {counted(self.segments, 'segment')}, "
                f"{counted(self.blocks, 'block')} (manifests included), "
                f"{counted(self.instances, 'instance')}: "
                f"{counted(len(self.problems), 'problem')}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def manifest_content(record: dict[str, Any]) -> bytes:
    """The bytes of the manifest block that records ``record``."""
    return dumps({k: v for k, v in record.items() if k != "manifest"})


def verify(index: Index, reader: SegmentReader, *,
           scratch_dir: Path | None = None) -> VerifyReport:
    """Check the store of ``index`` and ``reader`` (see the module)."""
    with tempfile.TemporaryDirectory(prefix="pacsstore-verify-",
                                     dir=scratch_dir) as folder, \
            contextlib.closing(_Scratch(Path(folder) / "facts.db")) \
            as scratch, index.read() as txn:
        try:
            return _Verification(index, txn, reader, scratch).run()
        except struct.error as exc:
            # A fixed-size index value (a segment length, a counter) of
            # the wrong size: past what a report can describe.
            raise CorruptStoreError(
                f"the index is damaged ({exc}); rebuild it from the "
                f"segments with rebuild-index") from None


class _Scratch:
    """Per-block facts on disk: where each block lies (from the walk)
    and how often the records reference it."""

    _SCHEMA = """
        CREATE TABLE places (segment INTEGER, offset INTEGER, digest BLOB,
            kind INTEGER, codec INTEGER, raw_length INTEGER,
            stored_length INTEGER, intact INTEGER, span INTEGER,
            PRIMARY KEY (segment, offset)) WITHOUT ROWID;
        CREATE TABLE refs (digest BLOB PRIMARY KEY, count INTEGER,
            first_uid TEXT) WITHOUT ROWID;
        CREATE TABLE indexed (digest BLOB PRIMARY KEY, segment INTEGER,
            offset INTEGER, raw_length INTEGER, stored_length INTEGER,
            kind INTEGER, codec INTEGER, refcount INTEGER) WITHOUT ROWID;
    """

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        # Scratch data, thrown away at the end: no journal, no syncs.
        for pragma in ("journal_mode=OFF", "synchronous=OFF",
                       "temp_store=FILE", f"cache_size=-{_CACHE_KIB}"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.executescript(self._SCHEMA)
        self.db.execute("BEGIN")

    def add_place(self, segment: int, offset: int,
                  header: BlockHeader | None, intact: bool,
                  span: int) -> None:
        fields = (None,) * 5 if header is None else (
            header.digest, header.kind, header.codec, header.raw_length,
            header.stored_length)
        self.db.execute("INSERT INTO places VALUES (?,?,?,?,?,?,?,?,?)",
                        (segment, offset, *fields, intact, span))

    def inside_damage(self, segment: int, offset: int) -> bool:
        row = self.db.execute(
            "SELECT offset + span > ? FROM places WHERE segment = ? AND "
            "offset <= ? AND NOT intact ORDER BY offset DESC LIMIT 1",
            (offset, segment, offset)).fetchone()
        return bool(row and row[0])

    def index_places(self) -> None:
        self.db.execute("CREATE INDEX places_digest ON places (digest)")

    def place(self, segment: int, offset: int) -> tuple | None:
        return self.db.execute(
            "SELECT digest, kind, intact FROM places WHERE segment = ? "
            "AND offset = ?", (segment, offset)).fetchone()

    def where_is(self, digest: bytes) -> tuple[int, int] | None:
        return self.db.execute(
            "SELECT segment, offset FROM places WHERE digest = ? AND "
            "intact LIMIT 1", (digest,)).fetchone()

    def add_reference(self, digest: bytes, uid: str) -> None:
        self.db.execute(
            "INSERT INTO refs VALUES (?, 1, ?) ON CONFLICT (digest) DO "
            "UPDATE SET count = count + 1", (digest, uid))

    def first_user(self, digest: bytes) -> str | None:
        row = self.db.execute("SELECT first_uid FROM refs WHERE digest = ?",
                              (digest,)).fetchone()
        return None if row is None else row[0]

    def add_indexed(self, digest: bytes, entry: BlockEntry) -> None:
        self.db.execute(
            "INSERT INTO indexed VALUES (?,?,?,?,?,?,?,?)",
            (digest, entry.segment, entry.offset, entry.raw_length,
             entry.stored_length, entry.kind, entry.codec, entry.refcount))

    def index_indexed(self) -> None:
        self.db.execute(
            "CREATE INDEX indexed_place ON indexed (segment, offset)")

    def indexed_at(self, segment: int, offset: int) -> bytes | None:
        row = self.db.execute(
            "SELECT digest FROM indexed WHERE segment = ? AND offset = ? "
            "LIMIT 1", (segment, offset)).fetchone()
        return None if row is None else row[0]

    def rows(self, query: str) -> Iterator[tuple]:
        return self.db.execute(query)

    def close(self) -> None:
        self.db.close()


class _Verification:
    """One run of verify over one snapshot of the index."""

    def __init__(self, index: Index, txn: lmdb.Transaction,
                 reader: SegmentReader, scratch: _Scratch) -> None:
        self.index, self.txn = index, txn
        self.reader, self.scratch = reader, scratch
        # Header blocks compressed against a base are read with it, as
        # get() reads them, located in this snapshot.
        self.bases = BaseReader(
            lambda name: _entry_of(txn.get(name, db=index.db["blocks"])),
            reader)
        self.report = VerifyReport()
        # Places already reported lost with their whole segment: an
        # unusable segment, or the part of one past its file's end.
        self.lost_from: dict[int, int] = {}
        self.committed: dict[int, int] = {}
        # Damaged-block problems: position in the report, segment, offset.
        self.damaged: list[tuple[int, int, int]] = []
        # The counters are only checked when every record could be read
        # and followed to its blocks; otherwise they would differ for a
        # reason already reported.
        self.complete_records = True

    def problem(self, kind: str, segment: int | None, offset: int | None,
                uid: str | None, message: str) -> None:
        self.report.problems.append(
            Problem(kind, segment, offset, uid, message))

    def run(self) -> VerifyReport:
        self.check_segments()
        self.check_instances()
        self.check_record_bases()
        self.check_blocks()
        self.attribute_damage()
        return self.report

    # Segments ------------------------------------------------------------

    def check_segments(self) -> None:
        self.committed = self.index.segments(self.txn)
        for number, length in sorted(self.committed.items()):
            self.report.segments += 1
            end = self.usable_length(number, length)
            if end is not None:
                self.walk(number, end)
            log.info("verified the blocks of segment %d", number)
        self.check_unlisted()
        self.scratch.index_places()

    def check_unlisted(self) -> None:
        """Segment files the index does not list, holding blocks: a
        segment a rebuild left out (its header damaged), or segments
        whose index was lost and made again empty. Their blocks are
        read by nobody. Those numbered past the newest listed are left
        alone: the writer's batches in flight fill them (several at
        once, and more commit while verify runs), and a crash leaves
        them, which the next writer sets aside."""
        newest = max(self.committed, default=0)
        for number, path in scan.segment_files(self.reader.directory):
            if number in self.committed or (
                    self.committed and number > newest):
                continue
            size = path.stat().st_size if path.is_file() else 0
            if size <= HEADER_SIZE:
                continue
            self.problem(UNLISTED_SEGMENT, number, None, None,
                         f"segment file {path} holds {size} bytes but the "
                         f"index does not list it: no read finds its "
                         f"blocks (a segment a rebuild left out, or an "
                         f"index lost and made again)")

    def usable_length(self, number: int, length: int) -> int | None:
        """How much of segment ``number`` can be walked (None: none)."""
        path = segment_path(self.reader.directory, number)
        if not path.is_file():
            self.lost_from[number] = 0
            state = "is not a file" if path.exists() else "is missing"
            self.problem(SEGMENT, number, None, None,
                         f"segment file {path} {state}; the index "
                         f"records {length} committed bytes")
            return None
        reason = scan.check_header(path, number)
        if reason is not None:
            self.lost_from[number] = 0
            self.problem(SEGMENT, number, 0, None, reason)
            return None
        size = path.stat().st_size
        if size < length:
            self.lost_from[number] = size
            self.problem(SEGMENT, number, size, None,
                         f"{path} is {size} bytes but the index records "
                         f"{length} committed: the blocks from offset "
                         f"{size} on are lost")
            return size
        return length

    def walk(self, number: int, end: int) -> None:
        path = segment_path(self.reader.directory, number)
        for found in scan.walk(path, number, end):
            if isinstance(found, scan.Intact):
                self.report.blocks += 1
                self.scratch.add_place(number, found.offset, found.header,
                                       True, found.header.total_length)
                continue
            self.scratch.add_place(number, found.offset, found.header,
                                   False, found.length)
            self.damaged.append((len(self.report.problems), number,
                                 found.offset))
            self.problem(DAMAGED_BLOCK, number, found.offset, None,
                         f"{found.message} ({found.length} bytes up to "
                         f"the next intact block)")

    # Instances -----------------------------------------------------------

    def check_instances(self) -> None:
        logical = 0
        for raw_key, raw in self.txn.cursor(db=self.index.db["instances"]):
            self.report.instances += 1
            try:
                uid = unkey(raw_key)
            except CorruptStoreError:
                self.complete_records = False
                self.problem(RECORD, None, None, None,
                             f"an instance record's key is not UTF-8, so "
                             f"not a SOP Instance UID: {bytes(raw_key)!r}")
                continue
            record = self.load_record(uid, raw)
            if record is None:
                self.complete_records = False
                continue
            logical += record["size"]
            self.check_instance(uid, record)
            self.check_manifest(uid, record)
        if self.complete_records:
            self.check_counter(LOGICAL_BYTES, logical)

    def check_record_bases(self) -> None:
        """Every base record, used or not: a damaged one that no record
        names yet would fail the records the writer puts against it."""
        db = self.index.record_bases_db()
        if db is None:
            return
        try:
            bases = list(self.txn.cursor(db=db))
        except lmdb.InvalidParameterError:
            # Opened after this snapshot began: a writer raised the index
            # to version 4 since this reader opened it. The records read
            # above were decoded with those bases.
            return
        for key, value in bases:
            defect = base_defect(bytes(key), bytes(value))
            if defect is not None:
                self.problem(BASE_RECORD, None, None, None,
                             f"{defect}; `pacsstore rebuild-index` makes "
                             f"the base records again")

    def load_record(self, uid: str, raw: bytes) -> dict[str, Any] | None:
        try:
            record = instance_record(raw, uid, self.index.bases_in(self.txn))
        except DamagedRecord as exc:
            defect = exc.reason
        else:
            defect = record_defect(record)
            if defect is None:
                return record
        self.problem(RECORD, None, None, uid,
                     f"the index record of instance {uid} is unusable: "
                     f"{defect}")
        return None

    def check_instance(self, uid: str, record: dict[str, Any]) -> None:
        names = [bytes.fromhex(n) for n in [record["header"],
                                            *record["blocks"]]]
        entries = []
        for name in names:
            self.scratch.add_reference(name, uid)
            entries.append(self.txn.get(name, db=self.index.db["blocks"]))
        missing = [n for n, e in zip(names, entries) if e is None]
        for name in dict.fromkeys(missing):
            self.report_missing_entry(uid, name)
        decoded = [_entry(raw) for raw in entries if raw is not None]
        if missing or None in decoded:
            # Damaged entries are reported once, with the blocks.
            self.complete_records = False
            return
        self.check_content(uid, record, names, decoded)

    def report_missing_entry(self, uid: str, name: bytes) -> None:
        place = self.scratch.where_is(name)
        lies = ("no segment holds it" if place is None else
                f"the block lies at segment {place[0]} offset {place[1]}")
        segment, offset = place or (None, None)
        self.problem(MISSING_BLOCK_ENTRY, segment, offset, uid,
                     f"instance {uid} names block {name.hex()}, which the "
                     f"index does not have; {lies}")

    def check_content(self, uid: str, record: dict[str, Any],
                      names: list[bytes], entries: list[BlockEntry]) -> None:
        """Reassemble the instance as ``get`` does and compare its size
        and SHA-256 with the record's."""
        reading: list[BlockEntry] = [entries[0]]

        def read(position: int) -> bytes:
            entry = reading[0] = entries[position]
            return self.reader.read(entry.segment, entry.offset,
                                    expect=names[position],
                                    stored_length=entry.stored_length,
                                    base=self.bases)[1]

        digest, size = hashlib.sha256(), 0
        try:
            for chunk in _reassemble(read, record):
                digest.update(chunk)
                size += len(chunk)
        except StoreFormatError as exc:
            entry = reading[0]
            self.problem(UNREADABLE_INSTANCE, entry.segment, entry.offset,
                         uid, f"instance {uid} cannot be read back: {exc}")
            return
        if size != record["size"] or digest.hexdigest() != record["sha256"]:
            segment, offset = _manifest_place(record) or (None, None)
            self.problem(INSTANCE_DIGEST, segment, offset, uid,
                         f"instance {uid} reads back as {size} bytes with "
                         f"SHA-256 {digest.hexdigest()}; its record says "
                         f"{record['size']} bytes, {record['sha256']}")

    def check_manifest(self, uid: str, record: dict[str, Any]) -> None:
        """The manifest must say what the record says: it is what a
        rebuild of the index would bring back."""
        place = _manifest_place(record)
        if place is None:
            self.problem(MANIFEST, None, None, uid,
                         f"the record of instance {uid} names no manifest "
                         f"place")
            return
        found = self.scratch.place(*place)
        where = f"segment {place[0]} offset {place[1]}"
        expected = blocks.digest(manifest_content(record))
        if found is None or not found[2]:
            state = "lost" if found is None else "damaged"
            self.problem(MANIFEST, *place, uid,
                         f"the manifest of instance {uid} at {where} is "
                         f"{state}; a rebuild of the index would leave "
                         f"the instance out")
        elif found[1] != Kind.MANIFEST:
            self.problem(MANIFEST, *place, uid,
                         f"the record of instance {uid} places its "
                         f"manifest at {where}, where a "
                         f"{Kind(found[1]).name.lower()} block lies")
        elif found[0] != expected:
            self.problem(MANIFEST, *place, uid,
                         f"the index record of instance {uid} differs from "
                         f"its manifest at {where} in "
                         f"{self.differing_fields(place, record)}; a "
                         f"rebuild of the index would restore the "
                         f"manifest's")

    def differing_fields(self, place: tuple[int, int],
                         record: dict[str, Any]) -> str:
        try:
            _, content = self.reader.read(*place)
            manifest = loads(content, "of the manifest")
        except StoreFormatError:
            return "content"
        if not isinstance(manifest, dict):
            return "content"
        names = sorted((set(manifest) | set(record)) - {"manifest"})
        differing = [n for n in names if manifest.get(n) != record.get(n)]
        return ", ".join(differing) or "encoding"

    # Blocks --------------------------------------------------------------

    def check_blocks(self) -> None:
        for digest, raw in self.txn.cursor(db=self.index.db["blocks"]):
            try:
                entry = BlockEntry.decode(raw)
            except DamagedBlockEntry as exc:
                self.complete_records = False
                self.problem(BLOCK_ENTRY, None, None,
                             self.scratch.first_user(digest),
                             f"the index entry of block {digest.hex()} is "
                             f"damaged: {exc.reason}")
            else:
                self.scratch.add_indexed(digest, entry)
        self.scratch.index_indexed()
        self.check_refcounts()
        self.check_places()
        self.check_unindexed()
        if self.complete_records:
            (saved,) = next(self.scratch.rows(
                "SELECT COALESCE(SUM(i.raw_length * MAX(COALESCE(r.count, 0)"
                " - 1, 0)), 0) FROM indexed i LEFT JOIN refs r USING "
                "(digest)"))
            self.check_counter(DEDUP_SAVED, saved)

    def check_refcounts(self) -> None:
        for digest, segment, offset, refcount, count, uid in \
                self.scratch.rows(
                    "SELECT i.digest, i.segment, i.offset, i.refcount, "
                    "COALESCE(r.count, 0), r.first_uid FROM indexed i "
                    "LEFT JOIN refs r USING (digest) "
                    "WHERE i.refcount != COALESCE(r.count, 0)"):
            self.problem(REFCOUNT, segment, offset, uid,
                         f"block {digest.hex()} has reference count "
                         f"{refcount} in the index; the instance records "
                         f"make {count}")

    def check_places(self) -> None:
        for row in self.scratch.rows(
                "SELECT i.digest, i.segment, i.offset, p.digest, p.intact, "
                "r.first_uid FROM indexed i LEFT JOIN places p ON "
                "p.segment = i.segment AND p.offset = i.offset "
                "LEFT JOIN refs r ON r.digest = i.digest "
                "WHERE p.segment IS NULL OR (p.intact AND (p.digest != "
                "i.digest OR p.raw_length != i.raw_length OR "
                "p.stored_length != i.stored_length OR p.kind != i.kind "
                "OR p.codec != i.codec))"):
            digest, segment, offset, there, _intact, uid = row
            if self.reported_lost(segment, offset):
                continue
            self.problem(MISPLACED_BLOCK, segment, offset, uid,
                         self.misplaced_message(digest, segment, offset,
                                                there))

    def reported_lost(self, segment: int, offset: int) -> bool:
        """Whether the place lies in what a problem already reported
        lost: a damaged stretch, or a segment (or its part past the
        file's end) that cannot be read."""
        if self.lost_from.get(segment, offset + 1) <= offset:
            return True
        return self.scratch.inside_damage(segment, offset)

    def misplaced_message(self, digest: bytes, segment: int, offset: int,
                          there: bytes | None) -> str:
        said = (f"the index places block {digest.hex()} at segment "
                f"{segment} offset {offset}")
        if segment not in self.committed:
            found = "a segment the index does not list"
        elif offset >= self.committed[segment]:
            found = (f"past the segment's committed length "
                     f"{self.committed[segment]}")
        elif there is None:
            found = "where no block starts"
        elif there == digest:
            found = "where that block lies with other lengths or coding"
        else:
            found = f"where block {there.hex()} lies"
        place = self.scratch.where_is(digest)
        elsewhere = ("" if place is None or place == (segment, offset) else
                     f"; the block lies at segment {place[0]} offset "
                     f"{place[1]}")
        return f"{said}, {found}{elsewhere}"

    def check_unindexed(self) -> None:
        for segment, offset, digest in self.scratch.rows(
                f"SELECT segment, offset, digest FROM places p WHERE intact "
                f"AND kind != {int(Kind.MANIFEST)} AND NOT EXISTS (SELECT 1 "
                f"FROM indexed i WHERE i.digest = p.digest) AND NOT EXISTS "
                f"(SELECT 1 FROM refs r WHERE r.digest = p.digest)"):
            self.problem(UNINDEXED_BLOCK, segment, offset, None,
                         f"block {digest.hex()} is intact in the segments "
                         f"but has no index entry (no instance names it)")

    def check_counter(self, name: str, expected: int) -> None:
        found = self.index.counter(self.txn, name)
        if found != expected:
            self.problem(COUNTER, None, None, None,
                         f"the index counter {name} is {found}; the "
                         f"instance records add up to {expected}")

    def attribute_damage(self) -> None:
        """Name, for each damaged block, an instance that uses it (the
        walk ran before the records said who uses what). The block is
        the one the index places there, else the one its header names
        (when the damage spared the header)."""
        for position, segment, offset in self.damaged:
            name = self.scratch.indexed_at(segment, offset)
            if name is None:
                name = self.scratch.place(segment, offset)[0]
            uid = None if name is None else self.scratch.first_user(name)
            if uid is not None:
                self.report.problems[position] = dataclasses.replace(
                    self.report.problems[position], sop_instance_uid=uid)


def _entry(raw: bytes) -> BlockEntry | None:
    """A block entry of the index, or None when it is damaged."""
    try:
        return BlockEntry.decode(raw)
    except DamagedBlockEntry:
        return None


def _entry_of(raw: bytes | None) -> BlockEntry | None:
    """The block entry of ``raw`` when there is one and it is sound."""
    return None if raw is None else _entry(raw)


def _manifest_place(record: dict[str, Any]) -> tuple[int, int] | None:
    place = record.get("manifest")
    if (isinstance(place, list) and len(place) == 2
            and all(isinstance(n, int) and n >= 0 for n in place)):
        return place[0], place[1]
    return None


def _reassemble(read: Callable[[int], bytes],
                record: dict[str, Any]) -> Iterator[memoryview]:
    """The stored file in chunks: ``read(0)`` is the header block,
    ``read(i + 1)`` frame block ``i``; one frame block held at a time."""
    cached: dict[int, bytes] = {}

    def frame(index: int) -> bytes:
        if index not in cached:
            cached.clear()
            cached[index] = read(index + 1)
        return cached[index]

    cuts = [layout.Cut(*c) for c in record["cuts"]]
    return layout.splice(read(0), cuts, frame)
