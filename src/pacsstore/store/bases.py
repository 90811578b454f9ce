"""Header blocks compressed against another header of their series.

The headers of one series repeat each other: the same patient, study and
equipment, the same protocol, and (Siemens) private CSA headers of tens
of kilobytes that change in a few fields from slice to slice. Compressed
on its own each keeps all of that; compressed with zstd against an
earlier header of its series as a raw dictionary (codec ZSTD_BASE,
docs/format.md) it keeps little more than what changed. On the
corpus's 1,778 instances the header blocks keep 6.8 MB instead of 14.2.

Which header a new one is compressed against is the writer's choice and
nothing a reader has to know: the payload names its base by digest.
Bases are one level deep. A base is a header stored on its own, never
one stored against a base, so a read needs at most one other block.

The writer (``HeaderBases``) remembers, in memory, a base for each of
the last series and studies it stored: the first header of a series,
stored on its own, is the base of the rest of the series. The first
header of a new series in a known study is compressed against the
study's base as well, and kept so only when that halves it (series of
one study from one scanner); otherwise it is stored on its own and
becomes its series' base. A process that starts anew, or has forgotten
a series, stores the next header of it on its own, as a new base:
nothing is lost but some ratio.

The committer has the last word (commit.py): a base prepared beside
the header but refused (a conflict, a damaged copy), or one whose
stored copy is not intact, is not used; the header is then stored on
its own. A block whose base is in the store stays readable whatever
happens to the instance that brought the base: reference counts count
instances, and a compaction (which does not exist yet) must keep every
block that a kept block names as its base.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

import zstandard

from pacsstore.errors import CorruptStoreError
from pacsstore.store import blocks
from pacsstore.store.blocks import Codec, Coded
from pacsstore.store.index import BlockEntry
from pacsstore.store.lru import keep, recall
from pacsstore.store.segments import SegmentReader

# Headers above this size are not made bases: a base is held in memory
# (and its zstd tables, about 1 MB at level 3) for as long as its series
# may send more.
MAX_BASE_BYTES = 1 << 20
# Series and studies whose base the writer keeps: enough for the series
# that several modalities send at once, few enough that the zstd tables
# of the bases stay small.
REMEMBERED = 16
# The first header of a series is compressed against its study's base
# only when that keeps at most this fraction of what it keeps alone; a
# series bound to a poor base would pay for it on every instance.
STUDY_BASE_GAIN = 0.5
# Bases a reader keeps decoded, and their decompression contexts a
# reading thread keeps.
READ_CACHE = 32
THREAD_CONTEXTS = 8
_DEFLATED = "1.2.840.10008.1.2.1.99"


class _Base:
    """A stored-to-be header that others are compressed against."""

    def __init__(self, name: bytes, content: bytes, level: int) -> None:
        self.name = name
        self._content = content
        self._level = level
        self._dictionary: zstandard.ZstdCompressionDict | None = None
        self._lock = threading.Lock()

    def code(self, content: blocks.Buffer) -> Coded | None:
        return blocks.code_against(content, self.name, self._tables(),
                                   self._level)

    def _tables(self) -> zstandard.ZstdCompressionDict:
        # Built once, on first use: most bases of small instances (a
        # report per study) never get a header compressed against them.
        with self._lock:
            if self._dictionary is None:
                dictionary = blocks.raw_dictionary(self._content)
                dictionary.precompute_compress(level=self._level)
                self._dictionary = dictionary
            return self._dictionary


class HeaderBases:
    """The writer's choice of base for each new header block; shared by
    the threads that prepare (thread-safe)."""

    def __init__(self, level: int) -> None:
        self._level = level
        self._lock = threading.Lock()
        self._series: collections.OrderedDict[str, _Base] = \
            collections.OrderedDict()
        self._studies: collections.OrderedDict[str, _Base] = \
            collections.OrderedDict()

    def code(self, record: dict[str, Any], name: bytes,
             content: blocks.Buffer,
             alone: Callable[[], Coded]) -> Coded | None:
        """The header block ``content`` (named ``name``) of the instance
        of ``record``, coded against the base its series uses, or alone
        (``alone`` codes it so) when the choice needed that to compare;
        None when the caller is to code it alone (and then, unless its
        series has a base, it is that base from now on)."""
        series, study = record["series"], record["study"]
        if not series or record["transfer_syntax"] == _DEFLATED:
            # No series to share with; a deflated dataset is the whole
            # file, deflated, which no other matches.
            return None
        with self._lock:
            base = recall(self._series, series)
            study_base = None if base else recall(self._studies, study)
        if base is not None:
            # Not against itself: the first instance of a series sent
            # again with other content keeps its header's name.
            return None if base.name == name else base.code(content)
        if study_base is not None:
            against, by_itself = study_base.code(content), alone()
            if against is not None and len(against.payload) <= \
                    STUDY_BASE_GAIN * len(by_itself.payload):
                with self._lock:
                    _remember(self._series, series, study_base)
                return against
            self._offer(series, study, name, content)
            return by_itself
        self._offer(series, study, name, content)
        return None

    def forget(self, name: bytes) -> None:
        """Stop using the base ``name``: the committer found it not
        stored (its instance was refused, or its stored copy is not
        usable), so every header coded against it is coded again."""
        with self._lock:
            for remembered in (self._series, self._studies):
                for key in [k for k, base in remembered.items()
                            if base.name == name]:
                    del remembered[key]

    def _offer(self, series: str, study: str, name: bytes,
               content: blocks.Buffer) -> None:
        if len(content) > MAX_BASE_BYTES:
            return
        # A copy: the content may lie in a buffer its caller releases.
        base = _Base(name, bytes(content), self._level)
        with self._lock:
            _remember(self._series, series, base)
            if study and study not in self._studies:
                _remember(self._studies, study, base)


def _remember(remembered: collections.OrderedDict[str, _Base], key: str,
              base: _Base) -> None:
    keep(remembered, key, base, REMEMBERED)


def usable_base(entry: BlockEntry | None) -> bool:
    """Whether the indexed block ``entry`` can be a base: one stored on
    its own, not against a base of its own (bases are one level deep).
    The writer only makes header blocks bases, but a header's content
    may equal another block's, which dedup stores once."""
    return entry is not None and entry.codec != Codec.ZSTD_BASE


class BaseReader:
    """Decompressors against bases, for reading the header blocks
    compressed against them; thread-safe. It keeps the content of the
    last bases read (a series' headers share one) and, per thread, their
    decompression contexts, which cost more to make (about 8 µs) than a
    header of a few KB takes to decompress.

    ``locate`` gives a block's index entry (None when the index has
    none): in a read transaction of its own for get(), in verify's
    snapshot for verify, whose reader of its own reads every base from
    the disk once."""

    def __init__(self, locate: Callable[[bytes], BlockEntry | None],
                 segments: SegmentReader) -> None:
        self._locate = locate
        self._segments = segments
        self._lock = threading.Lock()
        self._contents: collections.OrderedDict[bytes, bytes] = \
            collections.OrderedDict()
        self._local = threading.local()

    def __call__(self, name: bytes) -> zstandard.ZstdDecompressor:
        contexts = getattr(self._local, "contexts", None)
        if contexts is None:
            contexts = self._local.contexts = collections.OrderedDict()
        found = recall(contexts, name)
        if found is None:
            found = blocks.decompressor_against(self._content(name))
            keep(contexts, name, found, THREAD_CONTEXTS)
        return found

    def _content(self, name: bytes) -> bytes:
        with self._lock:
            content = recall(self._contents, name)
        if content is not None:
            return content
        entry = self._locate(name)
        if entry is None or not usable_base(entry):
            raise CorruptStoreError(_unusable(name, entry))
        _, content = self._segments.read(
            entry.segment, entry.offset, expect=name,
            stored_length=entry.stored_length)
        with self._lock:
            keep(self._contents, name, content, READ_CACHE)
        return content


def _unusable(name: bytes, entry: BlockEntry | None) -> str:
    why = ("which the index does not have" if entry is None
           else "which is itself compressed against a base")
    return (f"a header block is compressed against block {name.hex()}, "
            f"{why}")
