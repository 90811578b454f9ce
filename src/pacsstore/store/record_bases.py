"""Instance records kept in the index against a base record of their
series (form 0x02 of records.py, docs/format.md "Index").

The records of one series repeat each other: the same study and series
UIDs, the same patient, equipment and protocol attributes; against the
record dictionary alone each keeps all of that. Compressed with zstd
against the record of the first instance of its series as a raw
dictionary, a record keeps little more than its own UIDs and digests:
the corpus's 1,778 records keep 0.50 MB instead of 1.15.

A base is an instance record's JSON (``records.dumps`` of it without
its manifest's place), kept in the index's ``record_bases`` database
under a 4-byte number, compressed as a manifest is (codec 4). The first
record of a series the writer does not remember is written compact, and
remembered; when a second record of the series comes, and the first
record's content shrinks it, that content becomes a base, the second
record is written against it and the first, where the index still holds
it as it was written, becomes a reference to the base that holds
nothing else. A series of one instance (most reports, scouts) thus
costs no base.

This is the index's business alone: the manifest blocks in the
segments are unchanged, and a rebuild of the index makes its bases
afresh. Bases are one level deep and never deleted: one outlives the
records written against it only when every instance of its series is
replaced, and then costs the bytes of one record.

The writer (``RecordBases.choose``) remembers the bases, or first
records, of the last series it wrote; what it chose in a transaction
that aborts is forgotten with it (``remembered`` and ``restore``, which
Index.write calls). Before it uses a base, it checks that the index
holds it as remembered, byte for byte: another process, or a rebuild,
may have given its number to another base. Readers
(``RecordBases.reader``) keep decoded bases under the same check, and
per thread their decompression contexts, which cost more to make than
a record takes to decompress. A reference (a record that is its base's
content) carries the CRC32 of that content, and readers check that a
record names the instance asked for (records.instance_record), so that
a base number changed by damage is not followed to another instance.
"""

from __future__ import annotations

import collections
import dataclasses
import struct
import threading
import zlib
from collections.abc import Callable
from typing import Any

import lmdb
import zstandard

from pacsstore.store import record_dictionary, zstd_frames
from pacsstore.store.lru import keep, recall

# The index key of a base: its number, big-endian, so that a new one
# (the last number plus one) is appended at the end of its database.
KEY = struct.Struct(">I")
LARGEST_NUMBER = 0xFFFFFFFF
# Records larger than this (in JSON) neither become bases nor are written
# against one: a many-frame object's record lists thousands of digests,
# which no other record shares, and a base is held in memory.
MAX_RECORD_BYTES = 32 << 10
# Series whose base the writer remembers; bases a reader keeps decoded.
REMEMBERED = 64
READ_CACHE = 64
# zstd's level against a base, as against the record dictionary.
_LEVEL = 3


class Base:
    """One base record: its number (None until it is put in the index),
    its value in the index, and its content (the JSON records are
    compressed against)."""

    def __init__(self, number: int | None, stored: bytes,
                 content: bytes) -> None:
        self.number = number
        self.stored = stored
        self.content = content
        self._dictionary = zstandard.ZstdCompressionDict(
            content, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        self.content_crc = zlib.crc32(content)
        self._compressor: zstandard.ZstdCompressor | None = None
        self._local = threading.local()

    def compress(self, record: bytes) -> bytes:
        """``record`` as a zstd frame against this base, stating its size
        and with its checksum, as record_dictionary.compress does. Only
        the writer compresses, one transaction at a time."""
        if self._compressor is None:
            self._compressor = zstandard.ZstdCompressor(
                level=_LEVEL, dict_data=self._dictionary,
                write_dict_id=False, write_checksum=True)
        return self._compressor.compress(record)

    def decompress(self, frame: bytes | memoryview) -> bytes:
        """The record a frame written against this base holds;
        zstd_frames.FrameDamage when it holds none."""
        found = getattr(self._local, "decompressor", None)
        if found is None:
            found = self._local.decompressor = zstandard.ZstdDecompressor(
                dict_data=self._dictionary)
        return zstd_frames.content_of(found, frame)


class BaseDamage(ValueError):
    """A base record that is missing or does not decompress; the message
    follows "index record ... is damaged: its ..."."""


BaseLookup = Callable[[int], Base]


@dataclasses.dataclass(frozen=True, slots=True)
class NewRecord:
    """An instance record about to be put in the index."""

    uid: str
    segment: int        # where its manifest block lies
    offset: int
    content: bytes      # its JSON, without the manifest's place
    compact: bytes      # its frame against the record dictionary
    value: bytes        # its index value in the compact form


@dataclasses.dataclass(frozen=True, slots=True)
class Choice:
    """A record to be put against base ``number`` as ``frame`` (empty
    when it is the base's content). ``promoted`` is the first record of
    the series when this choice made its content the new base: the
    index value of that record, if the index still holds it as written,
    becomes a reference to the base."""

    number: int
    frame: bytes
    promoted: NewRecord | None


class RecordBases:
    """The bases of one index: the writer's choice of base for each new
    record, and the bases readers decode records with. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Per series, its base, or its first record while it has no
        # base: a series of one instance (a report, a scout) then costs
        # no base record at all.
        self._series: collections.OrderedDict[str, Base | NewRecord] = \
            collections.OrderedDict()
        self._read: collections.OrderedDict[int, Base] = \
            collections.OrderedDict()

    def choose(self, txn: lmdb.Transaction, db: Any, series: str,
               record: NewRecord) -> Choice | None:
        """How ``record``, of series ``series``, is to be written in
        ``txn``: against a base (putting the base when the series' first
        record becomes one), or in its compact form (None): for the
        first record of a series the writer does not remember, a record
        without a series or too large, and one a base does not shrink."""
        if db is None or not series or \
                len(record.content) > MAX_RECORD_BYTES:
            return None
        with self._lock:
            found = recall(self._series, series)
        if isinstance(found, NewRecord) and found.uid == record.uid:
            # The first record sent again with other content: it is the
            # series' first record still, not a base of itself.
            found = None
        first = found if isinstance(found, NewRecord) else None
        if first is not None:
            base = Base(None, first.compact, first.content)
        elif found is not None and \
                txn.get(KEY.pack(found.number), db=db) == found.stored:
            base = found
        else:
            # Unknown, or a base the index no longer holds as it was
            # remembered: another process or a rebuild gave its number
            # to another base.
            with self._lock:
                keep(self._series, series, record, REMEMBERED)
            return None
        frame = b"" if base.content == record.content else \
            base.compress(record.content)
        if len(frame) >= len(record.compact):
            return None
        if first is not None:
            base.number = _next_number(txn, db)
            if base.number is None:
                return None
            txn.put(KEY.pack(base.number), base.stored, db=db)
            with self._lock:
                keep(self._series, series, base, REMEMBERED)
        assert base.number is not None
        return Choice(base.number, frame, first)

    def remembered(self) -> collections.OrderedDict[str, Base | NewRecord]:
        """What the writer remembers now, for ``restore``."""
        with self._lock:
            return collections.OrderedDict(self._series)

    def restore(self,
                remembered: collections.OrderedDict[str, Base | NewRecord]
                ) -> None:
        """Forget what was chosen since ``remembered``: the transaction
        that chose it aborted, and a retry must not find its own records
        as first records, nor bases the index does not hold."""
        with self._lock:
            self._series = collections.OrderedDict(remembered)

    def reader(self, stored_base: Callable[[bytes], bytes | None]
               ) -> BaseLookup:
        """The bases by number, their values read by ``stored_base``
        (None for a key the index does not hold); BaseDamage for one
        that is missing or does not decompress."""
        def base(number: int) -> Base:
            stored = stored_base(KEY.pack(number))
            if stored is None:
                raise BaseDamage(f"base record {number} is missing")
            with self._lock:
                kept = recall(self._read, number)
            if kept is not None and kept.stored == stored:
                return kept
            kept = Base(number, bytes(stored), _content(number, stored))
            with self._lock:
                keep(self._read, number, kept, READ_CACHE)
            return kept
        return base


def _next_number(txn: lmdb.Transaction, db: Any) -> int | None:
    """One more than the largest base number the index holds, past keys
    that are not numbers (damage, which verify reports); None when no
    number is left, and then no more bases are made (only ratio is
    lost until a rebuild of the index)."""
    cursor = txn.cursor(db=db)
    found = cursor.last()
    while found and len(cursor.key()) != KEY.size:
        found = cursor.prev()
    number = KEY.unpack(cursor.key())[0] + 1 if found else 1
    return number if number <= LARGEST_NUMBER else None


def base_defect(key: bytes, value: bytes) -> str | None:
    """What is wrong with the base record ``value`` kept under ``key``,
    or None: verify's check of every base record."""
    if len(key) != KEY.size:
        return f"a base record's key is not a 4-byte number: {key!r}"
    try:
        _content(KEY.unpack(key)[0], value)
    except BaseDamage as exc:
        return str(exc)
    return None


def _content(number: int, stored: bytes) -> bytes:
    """The content of base ``number`` stored as ``stored`` (a frame
    against the record dictionary); BaseDamage when it holds none."""
    try:
        return zstd_frames.content_of(record_dictionary.decompressor(),
                                      stored)
    except zstd_frames.FrameDamage as exc:
        raise BaseDamage(f"base record {number} {exc}") from None
