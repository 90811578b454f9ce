"""Rebuilding the index from the segments alone.

The index is derived data (index.py): every block in a segment carries
its name, kind and lengths in its header, and every stored instance left
a manifest block, its index record, behind its blocks. Manifests in
segment order are the history of the index, because the writer appends
strictly in commit order: a SOP Instance UID's later manifest is a
``replace`` of the earlier one (re-sends that change nothing write none).
So replaying the segments front to back through the same steps the
committer took rebuilds the same index:

- a block gets its entry at its first intact place, with no references;
- a manifest for a UID already replayed first releases the instance it
  replaces (its references, its place in the hierarchy), as the
  committer did;
- the manifest's instance then takes a reference on each of its blocks,
  gets its record (with the manifest's place) and is linked into the
  patient / study / series hierarchy by ``hierarchy.link_instance``
  (records, counts, child links and whatever else it derives), whose
  order-dependent rules (a study's first instance fixes its patient,
  the latest non-empty attribute wins) see the instances in the
  original order;
- every segment gets as its committed length the end of its last intact
  block, and the counters are summed from the result.

Damage is reported and replay goes on. A damaged block is skipped; an
instance whose blocks did not all survive is left out rather than
indexed half (and if it replaced an earlier instance, that one is not
brought back: the segments say it was replaced). A damaged manifest
loses its instance from the index; its blocks stay, unreferenced.

The new index is built in a fresh directory beside ``index/`` and swapped
in by a rename only when complete; the old one is kept as
``index.old-<time>``. The store's write lock is held throughout, so no
writer appends while the segments are read, and readers keep the index
they opened. The segments themselves are never written.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, Union

import lmdb

from pacsstore.errors import (
    CorruptStoreError,
    NewerFormatError,
    NotAStoreError,
    PacsstoreError,
)
from pacsstore.store import scan
from pacsstore.store.archive import (
    STORE_FORMAT_VERSION,
    STORE_MAGIC,
    take_write_lock,
)
from pacsstore.store.bases import usable_base
from pacsstore.store.blocks import Kind
from pacsstore.store.commit import DEDUP_SAVED, LOGICAL_BYTES
from pacsstore.store.hierarchy import link_instance, unlink_instance
from pacsstore.store.index import (
    DEFAULT_MAP_SIZE,
    DEFAULT_MAX_MAP_SIZE,
    BlockEntry,
    Index,
)
from pacsstore.store.records import DamagedRecord, loads, record_defect
from pacsstore.store.segments import HEADER_SIZE, fsync_directory
from pacsstore.store.verify import (
    DAMAGED_BLOCK,
    INCOMPLETE_INSTANCE,
    MISSING_BASE,
    MISSING_SEGMENT,
    RECORD,
    SEGMENT,
    Problem,
)
from pacsstore.wording import counted

log = logging.getLogger(__name__)

# Manifest versions this code can replay (the "v" field of a record).
MANIFEST_VERSION = 1
# Blocks and manifests replayed per index transaction: each transaction
# is a sync, and the batch is held in memory (manifests are small).
_BATCH = 2000
_BUILDING_PREFIX = "index.rebuild-"


@dataclass
class RebuildReport:
    """What the rebuild read, what the new index holds, and where the
    old index was kept (None when there was none)."""

    segments: int = 0
    blocks: int = 0
    instances: int = 0
    problems: list[Problem] = field(default_factory=list)
    old_index: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        count = len(self.problems)
        kept = (f"; the old index is kept as {self.old_index}"
                if self.old_index else "")
        return (f"rebuilt the index from "
                f"{counted(self.segments, 'segment')}: "
                f"{counted(self.blocks, 'block')}, "
                f"{counted(self.instances, 'instance')}, "
                f"{counted(count, 'problem')}{kept}")

    def as_dict(self) -> dict[str, Any]:
        return {"segments": self.segments, "blocks": self.blocks,
                "instances": self.instances,
                "problems": [vars(p) for p in self.problems],
                "old_index": None if self.old_index is None
                else str(self.old_index)}


def rebuild_index(path: str | os.PathLike, *,
                  map_size: int = DEFAULT_MAP_SIZE,
                  max_map_size: int = DEFAULT_MAX_MAP_SIZE
                  ) -> RebuildReport:
    """Build a new index for the store at ``path`` from its segments and
    swap it in; StoreLockedError while a writer has the store open."""
    store = Path(path)
    _check_marker(store)
    with _write_lock(store):
        _remove_unfinished(store)
        recorded = _committed_before(store)
        building = Path(tempfile.mkdtemp(prefix=_BUILDING_PREFIX,
                                         dir=store))
        try:
            report = _build(store, building, map_size, max_map_size,
                            recorded)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        report.old_index = _swap_in(store, building)
    log.info("%s", report.summary())
    return report


def _remove_unfinished(store: Path) -> None:
    """Remove what a rebuild that was killed left behind. With the lock
    held no other rebuild is running, and a half-built index holds
    nothing that is not in the segments."""
    for unfinished in store.glob(f"{_BUILDING_PREFIX}*"):
        log.warning("removing %s, left by an unfinished rebuild",
                    unfinished)
        shutil.rmtree(unfinished)


def _check_marker(store: Path) -> None:
    marker = store / "PACSSTORE"
    if not marker.is_file():
        raise NotAStoreError(f"{store} is not a pacsstore store (no "
                             f"PACSSTORE marker)")
    raw = marker.read_bytes()
    try:
        if not raw.startswith(STORE_MAGIC):
            raise ValueError
        version = json.loads(raw[len(STORE_MAGIC):])["format_version"]
    except (ValueError, KeyError, TypeError):
        raise NotAStoreError(f"{marker} is not a pacsstore marker or is "
                             f"damaged") from None
    if version > STORE_FORMAT_VERSION:
        raise NewerFormatError(
            f"{store} has store format version {version}; this pacsstore "
            f"reads up to {STORE_FORMAT_VERSION}")
    if not (store / "segments").is_dir():
        raise CorruptStoreError(f"{store} has no segments/ folder; there "
                                f"is nothing to rebuild the index from")


@contextlib.contextmanager
def _write_lock(store: Path) -> Iterator[None]:
    """The lock a writing Archive holds (archive.py), so that no writer
    appends to the segments while they are read."""
    fd = take_write_lock(
        store,
        unwritable="rebuild-index writes a new index beside the old one, "
                   "so it needs the store writable",
        locked="stop it (such as `pacsstore serve`) before rebuilding the "
               "index")
    try:
        yield
    finally:
        os.close(fd)


def _committed_before(store: Path) -> dict[int, int] | None:
    """The committed segment lengths the old index records, when it can
    be read: the one record of what the segments held before, against
    which the rebuild reports what it could not find. None when there is
    no old index, or it cannot be opened (often why it is rebuilt)."""
    try:
        old = Index(store / "index", readonly=True)
    except (PacsstoreError, lmdb.Error, OSError) as exc:
        log.info("the old index is not compared with: %s", exc)
        return None
    try:
        with old.read() as txn:
            return old.segments(txn)
    except (PacsstoreError, lmdb.Error) as exc:
        log.info("the old index is not compared with: %s", exc)
        return None
    finally:
        old.close()


def _build(store: Path, building: Path, map_size: int,
           max_map_size: int, recorded: dict[int, int] | None
           ) -> RebuildReport:
    index = Index(building, readonly=False, map_size=map_size,
                  max_map_size=max_map_size)
    try:
        replay = _Replay(index)
        found = scan.segment_files(store / "segments")
        for number, path in found:
            replay.segment(number, path, newest=number == found[-1][0])
        if recorded is not None:
            replay.compare(recorded)
        replay.finish()
    finally:
        index.close()
    fsync_directory(building)
    return replay.report


class _Block(NamedTuple):
    digest: bytes
    entry: BlockEntry
    base: bytes | None      # what a header compressed against one names


# In segment order: a block's entry, a manifest (whole), or damage.
_Event = Union[_Block, scan.Intact, scan.Damaged]


class _Replay:
    """The segments, replayed into a fresh index."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.report = RebuildReport()
        self.batch: list[_Event] = []
        self.next_number = 1
        # Each segment's committed length in the new index, and the
        # numbers already reported (a gap, a damaged header).
        self.lengths: dict[int, int] = {}
        self.reported: set[int] = set()

    def segment(self, number: int, path: Path, *, newest: bool) -> None:
        self.note_gap(number)
        reason = scan.check_header(path, number)
        if reason is not None:
            self.reported.add(number)
            # A writer sets aside only segments past the newest it
            # lists (segments.SegmentWriter._recover).
            fate = ("as the newest segment, the next writer sets it "
                    "aside into recovered/, which nothing reads"
                    if newest else "it stays in segments/ for repair")
            self.report.problems.append(Problem(
                SEGMENT, number, 0, None,
                f"{reason}; the segment is left out of the index, and "
                f"{fate}"))
            return
        self.report.segments += 1
        length = HEADER_SIZE
        for found in scan.walk(path, number, path.stat().st_size):
            if isinstance(found, scan.Intact):
                length = found.end
                self.report.blocks += 1
            self.batch.append(_event(found))
            if len(self.batch) >= _BATCH:
                self.apply({})
        self.apply({number: length})
        self.lengths[number] = length
        log.info("replayed segment %d (%d bytes)", number, length)

    def compare(self, recorded: dict[int, int]) -> None:
        """Report what the old index recorded committed and the segments
        no longer hold: a newest segment deleted, or one cut short at a
        block boundary, leave no trace in the segments themselves."""
        for number, length in sorted(recorded.items()):
            if number in self.reported:
                continue
            if number not in self.lengths:
                self.report.problems.append(Problem(
                    MISSING_SEGMENT, number, None, None,
                    f"segment {number} is missing, and the old index "
                    f"recorded {length} committed bytes in it: the "
                    f"instances stored there are lost"))
            elif self.lengths[number] < length:
                end = self.lengths[number]
                self.report.problems.append(Problem(
                    SEGMENT, number, end, None,
                    f"segment {number} ends at offset {end} with its "
                    f"last intact block, but the old index recorded "
                    f"{length} committed bytes: the blocks after offset "
                    f"{end} are lost"))

    def note_gap(self, number: int) -> None:
        if number > self.next_number:
            self.reported.update(range(self.next_number, number))
            missing = (f"{self.next_number}" if number == self.next_number + 1
                       else f"{self.next_number}-{number - 1}")
            self.report.problems.append(Problem(
                MISSING_SEGMENT, self.next_number, None, None,
                f"segment files {missing} are missing: instances stored "
                f"there are lost, and a replace recorded there is not "
                f"replayed"))
        self.next_number = number + 1

    def apply(self, lengths: dict[int, int]) -> None:
        events, self.batch = self.batch, []

        def work(txn: lmdb.Transaction) -> list[Problem]:
            # Run again from scratch when LMDB grows its map, so the
            # problems are collected per attempt.
            problems: list[Problem] = []
            for event in events:
                if isinstance(event, _Block):
                    self.add_block(txn, event, problems)
                elif isinstance(event, scan.Damaged):
                    problems.append(_damage_problem(event))
                else:
                    self.replay_manifest(txn, event, problems)
            self.index.put_segments(txn, lengths)
            return problems

        self.report.problems += self.index.write(work)

    def add_block(self, txn: lmdb.Transaction, block: _Block,
                  problems: list[Problem]) -> None:
        """A block keeps its first intact place: the one the writer
        recorded (a digest is written once, dedup sees to that). A
        header compressed against a base comes after its base in the
        segments (the committer appends or finds the base first), so a
        base not replayed before it is lost, and the header with it."""
        if self.index.block(txn, block.digest) is not None:
            return
        if block.base is not None and \
                not usable_base(self.index.block(txn, block.base)):
            problems.append(Problem(
                MISSING_BASE, block.entry.segment, block.entry.offset, None,
                f"header block {block.digest.hex()} is compressed against "
                f"block {block.base.hex()}, which no segment before it "
                f"holds intact: it cannot be read, and the instance that "
                f"uses it is left out"))
            return
        self.index.put_block(txn, block.digest, block.entry)

    def replay_manifest(self, txn: lmdb.Transaction, found: scan.Intact,
                        problems: list[Problem]) -> None:
        record = _manifest_record(found, problems)
        if record is None:
            return
        uid = record["sop_instance_uid"]
        replaced = self.index.record(txn, "instance", uid)
        if replaced is not None:
            self.release(txn, replaced)
        names = [bytes.fromhex(n) for n in [record["header"],
                                            *record["blocks"]]]
        missing = [n for n in names if self.index.block(txn, n) is None]
        if missing:
            problems.append(_incomplete(found, uid, names, missing,
                                        replaced is not None))
            return
        for name in names:
            self.reference(txn, name, +1)
        record["manifest"] = [found.segment, found.offset]
        self.index.put_record(txn, "instance", uid, record)
        link_instance(self.index, txn, record)

    def release(self, txn: lmdb.Transaction,
                replaced: dict[str, Any]) -> None:
        """Undo an instance that a later manifest replaces, as the
        committer's release did."""
        for name in [replaced["header"], *replaced["blocks"]]:
            self.reference(txn, bytes.fromhex(name), -1)
        unlink_instance(self.index, txn, replaced)
        self.index.delete_record(txn, "instance",
                                 replaced["sop_instance_uid"])

    def reference(self, txn: lmdb.Transaction, name: bytes,
                  delta: int) -> None:
        entry = self.index.block(txn, name)
        if entry is not None and entry.refcount + delta >= 0:
            self.index.put_block(txn, name,
                                 entry.with_refcount(entry.refcount + delta))

    def finish(self) -> None:
        """The counters, summed over what the replay left: the bytes of
        the instances, and the bytes each shared block saved."""
        def work(txn: lmdb.Transaction) -> int:
            logical = sum(r["size"] for _, r in
                          self.index.records(txn, "instance"))
            saved = 0
            for _, raw in txn.cursor(db=self.index.db["blocks"]):
                entry = BlockEntry.decode(raw)
                saved += entry.raw_length * max(entry.refcount - 1, 0)
            self.index.add_counter(txn, LOGICAL_BYTES, logical)
            self.index.add_counter(txn, DEDUP_SAVED, saved)
            return self.index.count(txn, "instance")

        self.report.instances = self.index.write(work)


def _event(found: scan.Intact | scan.Damaged) -> _Event:
    """What replay needs of a block: a manifest whole, any other block
    only its entry (its content was checked and is not kept)."""
    if isinstance(found, scan.Damaged):
        return found
    header = found.header
    if header.kind is Kind.MANIFEST:
        return found
    return _Block(header.digest, BlockEntry(
        found.segment, found.offset, header.raw_length,
        header.stored_length, header.kind, header.codec, 0), found.base)


def _manifest_record(found: scan.Intact,
                     problems: list[Problem]) -> dict[str, Any] | None:
    """The instance record a manifest holds, or None (and a problem)."""
    try:
        record = loads(found.content, "of the manifest")
    except DamagedRecord as exc:
        record, defect = None, exc.reason
    else:
        _check_version(record, found)
        defect = record_defect(record)
        if defect is None and "manifest" in record:
            # Only the index adds the manifest's place; a manifest that
            # names one would be told from its record for ever.
            defect = "it names a manifest place of its own"
    if defect is None:
        return record
    problems.append(Problem(
        RECORD, found.segment, found.offset, _uid_of(record),
        f"the manifest at segment {found.segment} offset {found.offset} "
        f"is unusable ({defect}); its instance is left out"))
    return None


def _check_version(record: Any, found: scan.Intact) -> None:
    """A manifest of a newer version may mean something this version
    would replay wrongly: stop, with the old index still in place."""
    version = record.get("v", 1) if isinstance(record, dict) else 1
    if not isinstance(version, int) or version > MANIFEST_VERSION:
        raise NewerFormatError(
            f"the manifest at segment {found.segment} offset "
            f"{found.offset} has version {version!r}; this pacsstore "
            f"replays up to {MANIFEST_VERSION}, and nothing was changed")


def _uid_of(record: Any) -> str | None:
    uid = record.get("sop_instance_uid") if isinstance(record, dict) \
        else None
    return uid if isinstance(uid, str) and uid else None


def _incomplete(found: scan.Intact, uid: str, names: list[bytes],
                missing: list[bytes], replacing: bool) -> Problem:
    lost = ("; the instance it replaced is not brought back" if replacing
            else "")
    return Problem(
        INCOMPLETE_INSTANCE, found.segment, found.offset, uid,
        f"instance {uid} (manifest at segment {found.segment} offset "
        f"{found.offset}) is left out of the index because {len(missing)} "
        f"of its {len(names)} blocks did not survive (the first is "
        f"{missing[0].hex()}){lost}")


def _damage_problem(found: scan.Damaged) -> Problem:
    header = found.header
    if header is not None and header.kind is Kind.MANIFEST:
        loses = ("a manifest: the instance it records (or the replace it "
                 "records) is lost from the index")
    else:
        loses = "skipped; instances that use it are left out"
    return Problem(DAMAGED_BLOCK, found.segment, found.offset, None,
                   f"{found.message} ({found.length} bytes up to the next "
                   f"intact block); {loses}")


def _swap_in(store: Path, building: Path) -> Path | None:
    """Make ``building`` the store's index; keep the old index, if any,
    as ``index.old-<time>`` and return where it went."""
    index = store / "index"
    if not os.path.lexists(index):
        os.rename(building, index)
        fsync_directory(store)
        return None
    old = _old_index_name(store)
    if _exchange(building, index):
        os.rename(building, old)  # building now holds the old index
    else:
        os.rename(index, old)
        os.rename(building, index)
    fsync_directory(store)
    return old


def _old_index_name(store: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    candidate, number = store / f"index.old-{stamp}", 1
    while os.path.lexists(candidate):
        candidate, number = store / f"index.old-{stamp}.{number}", number + 1
    return candidate


# Linux renameat2(2): AT_FDCWD and RENAME_EXCHANGE from <fcntl.h> and
# <linux/fs.h>.
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one atomic step, so that a reader opening the
    store at that moment finds the old index or the new one, never
    none. False where the C library, kernel or filesystem cannot (then
    the caller renames twice)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                          ctypes.c_char_p, ctypes.c_uint)
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD,
                 os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(first))
