"""Segments: append-only files of blocks.

A segment is a 32-byte header (magic, format version, segment number)
followed by blocks, written strictly at the end and never rewritten. Its
committed length lives in the index: bytes past it were appended by a
batch whose index transaction never committed (a crash between the
segment fsync and the LMDB commit, or a failed batch), so they are garbage
by definition, and the writer cuts them off when it opens the store. The
same goes for a segment file the index has never heard of.

Appends are staged in memory and written by ``flush``, which fdatasyncs
every segment it touched (and the directory, when it created a file),
because the caller acknowledges a store only after this returns and the
index commit that follows it. A batch that fails rolls its segments back
to their committed lengths, so a failure leaves nothing behind.

A segment is sealed, and a new one started, when the next block would
take it past ``max_size``; a block larger than that gets a segment of its
own rather than being refused.

An instance too large to hold in memory (see prepare.py) writes its
blocks as it reads them, in the caller's thread, into files of its own
(``StreamSegments``, named ``*.stream``, with a placeholder segment
number) and fdatasyncs them. Its batch gives them the next segment
numbers (header rewritten, file renamed: ``SegmentWriter.take_stream``),
records them in the instance's transaction, and continues in the last of
them, so that its manifest lies behind its blocks and manifests stay in
commit order. Numbers are only ever given in the committer's order, so a
stream that is not stored leaves no gap in them. A crash leaves either
``*.stream`` files or segments past every committed one; recovery sets
both aside.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import shutil
import stat
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pacsstore.errors import (
    ArchiveClosedError,
    CorruptStoreError,
    NewerFormatError,
    OutOfSpaceError,
)
from pacsstore._assemble import FileAssembly
from pacsstore.store import blocks
from pacsstore.store.blocks import BlockHeader, EncodedBlock
from pacsstore.store.faults import crash_point
from pacsstore.store.scratch import ThreadScratch

log = logging.getLogger(__name__)

SEGMENT_MAGIC = b"PSSEG\x00\r\n"
SEGMENT_FORMAT_VERSION = 1
# magic, version, flags, segment number, creation time (ns), reserved,
# crc32 of the preceding 28 bytes.
_HEADER = struct.Struct("<8sHHIQI")
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size + _CRC.size
assert HEADER_SIZE == 32

# About 1 GiB: large enough that a store of millions of instances keeps a
# few thousand files, small enough that a sealed segment is a convenient
# object to copy off site.
DEFAULT_MAX_SIZE = 1 << 30


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:08d}.seg"


def _segment_header(number: int) -> bytes:
    head = _HEADER.pack(SEGMENT_MAGIC, SEGMENT_FORMAT_VERSION, 0, number,
                        time.time_ns(), 0)
    return head + _CRC.pack(zlib.crc32(head))


def check_segment_header(raw: bytes, number: int, where: str) -> None:
    """Validate a segment header: ours, not newer, undamaged, the right
    number."""
    blocks.check_magic(raw, SEGMENT_MAGIC, where)
    if len(raw) < HEADER_SIZE:
        raise CorruptStoreError(f"{where}: segment header is truncated")
    _magic, version, _flags, found, _created, _res = _HEADER.unpack_from(raw)
    if version > SEGMENT_FORMAT_VERSION:
        raise NewerFormatError(
            f"{where}: segment format version {version}; this pacsstore "
            f"reads up to {SEGMENT_FORMAT_VERSION}")
    (crc,) = _CRC.unpack_from(raw, _HEADER.size)
    if crc != zlib.crc32(raw[:_HEADER.size]):
        raise CorruptStoreError(f"{where}: segment header fails its CRC32")
    if found != number:
        raise CorruptStoreError(
            f"{where}: segment header says number {found}, expected "
            f"{number}")


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _raise_for_os_error(exc: OSError, what: str) -> None:
    if exc.errno == 28:  # ENOSPC
        raise OutOfSpaceError(
            28, f"no space left on the disk while {what}; nothing of "
                f"this batch was acknowledged") from exc
    raise exc


@dataclass
class _Pending:
    """Bytes staged for one segment in the current batch."""

    start: int
    chunks: list[bytes] = field(default_factory=list)
    created: bool = False


def _segment_files(directory: Path) -> dict[int, Path]:
    """The segment files of ``directory`` by number. Other files are left
    alone (and said so): they are not the store's to judge or remove."""
    found = {}
    for path in directory.glob("*.seg"):
        # The names readers open (segment_path), and only those: a
        # writer that took ``1.seg`` for segment 1 would store beside a
        # segment no reader finds.
        if path.stem.isdigit() and \
                path == segment_path(directory, int(path.stem)):
            found[int(path.stem)] = path
        else:
            log.warning("ignoring %s: not a segment file name", path)
    return found


class SegmentWriter:
    """Appends blocks to the open segment; one instance per store."""

    def __init__(self, directory: Path, committed: dict[int, int], *,
                 max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.directory = directory
        self.max_size = max_size
        self.committed = dict(committed)
        self._pending: dict[int, _Pending] = {}
        # Stream segments numbered by this batch: their length when taken,
        # which is where the batch's appends to them start.
        self._adopted: dict[int, int] = {}
        self._recover()
        self._current = max(self.committed, default=0)
        self._end = self.committed.get(self._current, 0)

    def _recover(self) -> None:
        """Set aside what no commit covers: uncommitted tails and the
        segments a crashed batch started.

        Those bytes were never acknowledged, so the store does not need
        them; but they are moved to ``recovered/`` beside the segments
        rather than deleted, because the same picture arises when the
        index is older than the segments (restored from a backup), and
        then they hold acknowledged data that a rebuild of the index
        from the segments can still find. A segment the index does not
        list below its newest is no crash's: it stays where it is."""
        on_disk = _segment_files(self.directory)
        self._check_unknown_segments(on_disk)
        for path in sorted(self.directory.glob(f"*{STREAM_SUFFIX}")):
            self._set_aside(path, 0)
            path.unlink()
        newest = max(self.committed, default=0)
        for number, path in sorted(on_disk.items()):
            if number not in self.committed and number < newest:
                # No crash leaves this (a batch only starts segments past
                # the newest): a segment a rebuild left out for a damaged
                # header. It stays for repair; verify reports it.
                log.warning("leaving %s alone: the index does not list "
                            "it, and it is older than the newest segment",
                            path)
                continue
            if number not in self.committed:
                self._set_aside(path, 0)
                path.unlink()
                continue
            size = path.stat().st_size
            length = self.committed[number]
            if size < length:
                raise CorruptStoreError(
                    f"{path}: {size} bytes on disk, but {length} were "
                    f"committed")
            if size > length:
                self._set_aside(path, length)
                crash_point("recovery.set_aside")
                os.truncate(path, length)
        missing = set(self.committed) - set(on_disk)
        if missing:
            raise CorruptStoreError(
                f"segments {sorted(missing)} are in the index but missing "
                f"from {self.directory}")

    def _set_aside(self, path: Path, start: int) -> None:
        """Copy the bytes of ``path`` from ``start`` on into recovered/
        and make the copy durable before the caller cuts them off."""
        aside = self.directory.parent / "recovered"
        target = aside / f"{path.stem}.{start}.{time.time_ns()}.seg-tail"
        size = path.stat().st_size - start
        log.warning("setting %d uncommitted bytes of %s aside in %s",
                    size, path, target)
        try:
            aside.mkdir(exist_ok=True)
            with open(path, "rb") as source, open(target, "xb") as copy:
                source.seek(start)
                shutil.copyfileobj(source, copy)
                copy.flush()
                os.fsync(copy.fileno())
            fsync_directory(aside)
        except OSError as exc:
            # Nothing is cut off without its copy; a partial copy only
            # takes space that the next attempt needs.
            target.unlink(missing_ok=True)
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise OutOfSpaceError(
                exc.errno, f"no space left on the disk to set the {size} "
                           f"uncommitted bytes of {path} aside before "
                           f"cutting them off; nothing was changed, the "
                           f"store opens with readonly=True, and opens "
                           f"for writing once there is space") from exc

    def _check_unknown_segments(self, on_disk: dict[int, Path]) -> None:
        """A store is registered with its first segment before any block
        is written (``start_first_segment``), so an index that knows no
        segment while segments hold blocks is not the index of these
        segments (lost, or replaced): refuse and change nothing."""
        unknown = sorted(n for n in on_disk if n not in self.committed)
        if self.committed or not unknown:
            return
        if any(on_disk[n].stat().st_size > HEADER_SIZE for n in unknown):
            raise CorruptStoreError(
                f"{self.directory} holds segments {unknown} but the index "
                f"knows none; the index does not belong to these segments "
                f"and nothing was changed (the index must be rebuilt from "
                f"the segments)")

    @property
    def needs_first_segment(self) -> bool:
        return not self.committed

    def start_first_segment(self) -> dict[int, int]:
        """Create segment 1 of a new store and make it durable; the
        caller records the returned length in the index before any
        batch runs, so that an unknown segment always means a crash."""
        self._start_segment()
        lengths = self.flush()
        self.committed_as(lengths)
        return lengths

    def reserve(self, length: int) -> tuple[int, int]:
        """Where a block of ``length`` bytes will go: (segment, offset)."""
        used = self._end - HEADER_SIZE
        if self._current == 0 or (
                used > 0 and self._end + length > self.max_size):
            self._start_segment()
        position = (self._current, self._end)
        self._end += length
        return position

    def append(self, segment: int, data: bytes) -> None:
        """Stage bytes at the position ``reserve`` gave out."""
        self._pending_for(segment).chunks.append(data)

    def _pending_for(self, segment: int) -> _Pending:
        if segment not in self._pending:
            start = self.committed.get(
                segment, self._adopted.get(segment, HEADER_SIZE))
            self._pending[segment] = _Pending(start)
        return self._pending[segment]

    def open_stream(self) -> StreamSegments:
        return StreamSegments(self.directory, self.max_size)

    def take_stream(self, stream: StreamSegments) -> None:
        """Give the stream's files the next segment numbers, and continue
        the batch in the last of them: appends then lie behind the
        stream's blocks, and numbers stay in commit order."""
        if not stream.files:
            return
        lengths = stream.number(self._current + 1)
        self._adopted.update(lengths)
        self._current = max(lengths)
        self._end = lengths[self._current]

    def _start_segment(self) -> None:
        number = self._current + 1
        path = segment_path(self.directory, number)
        try:
            with open(path, "xb") as handle:
                # Registered before the header is written: a file whose
                # header did not fit is the batch's, and rollback removes
                # it (left behind, it would fail every later "xb" open).
                self._pending_for(number).created = True
                handle.write(_segment_header(number))
        except OSError as exc:
            _raise_for_os_error(exc, f"creating {path}")
        crash_point("segment.created")
        self._current, self._end = number, HEADER_SIZE

    @property
    def has_pending(self) -> bool:
        return any(p.chunks or p.created for p in self._pending.values())

    def flush(self) -> dict[int, int]:
        """Write and fdatasync the staged bytes; return the new lengths
        to record in the index (the caller then calls ``committed_as``)."""
        lengths: dict[int, int] = {}
        created = False
        for number, pending in sorted(self._pending.items()):
            lengths[number] = self._write(number, pending)
            created = created or pending.created
        if created:
            fsync_directory(self.directory)
        return lengths

    def _write(self, number: int, pending: _Pending) -> int:
        path = segment_path(self.directory, number)
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.lseek(fd, pending.start, os.SEEK_SET)
                for chunk in pending.chunks:
                    _write_all(fd, chunk)
                crash_point("segment.written")
                os.fdatasync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            _raise_for_os_error(exc, f"appending to {path}")
        return pending.start + sum(len(c) for c in pending.chunks)

    def committed_as(self, lengths: dict[int, int]) -> None:
        """The index transaction recording ``lengths`` has committed."""
        self.committed.update(lengths)
        self._pending.clear()
        self._adopted.clear()

    def rollback(self) -> None:
        """Forget the batch and cut whatever it wrote off the disk. A
        stream segment it numbered is cut back to the stream's own bytes;
        the committer then removes it or gives it back its stream name."""
        for number, pending in self._pending.items():
            path = segment_path(self.directory, number)
            kept = self.committed.get(number, self._adopted.get(number))
            if kept is None:
                path.unlink(missing_ok=True)
            elif path.exists():
                os.truncate(path, kept)
        self._pending.clear()
        self._adopted.clear()
        self._current = max(self.committed, default=0)
        self._end = self.committed.get(self._current, 0)


STREAM_SUFFIX = ".stream"
_stream_names = itertools.count()


class StreamSegments:
    """The files one large instance writes its blocks into while it is
    read, in the caller's thread, before it joins a batch.

    They are files of their own, never the committer's open segment:
    a batch committing meanwhile records that segment's new length, and
    this instance's bytes would count as committed before they are
    synced or indexed. Each starts with a segment header whose number is
    a placeholder (0) until ``number`` gives it its own; blocks are
    placed by (file, offset). A stream that is not stored is removed
    (``discard``); one left by a crash is set aside by recovery."""

    def __init__(self, directory: Path, max_size: int) -> None:
        self._directory = directory
        self._max_size = max_size
        self.files: list[Path] = []
        self._lengths: list[int] = []
        self._numbers: list[int] = []
        self._fd: int | None = None
        self._cancelled = False

    @property
    def lengths(self) -> dict[int, int]:
        """Segment number -> length, once numbered."""
        return dict(zip(self._numbers, self._lengths))

    def segment_of(self, file: int) -> int:
        return self._numbers[file]

    def cancel(self) -> None:
        """Make the next append fail: the store is closing."""
        self._cancelled = True

    def append(self, block: EncodedBlock) -> tuple[int, int]:
        """Write ``block`` at the end; returns (file, offset)."""
        if self._cancelled:
            raise ArchiveClosedError(
                f"the store at {self._directory.parent} was closed while "
                f"a large instance was being stored; it was not stored")
        length = block.total_length
        if self._fd is None or (self._lengths[-1] > HEADER_SIZE and
                                self._lengths[-1] + length > self._max_size):
            self._start()
        offset = self._lengths[-1]
        try:
            _write_all(self._fd, block.header)
            _write_all(self._fd, block.payload)
        except OSError as exc:
            _raise_for_os_error(exc, f"appending to {self.files[-1]}")
        self._lengths[-1] = offset + length
        return len(self.files) - 1, offset

    def _start(self) -> None:
        self._close_fd()
        name = f"{os.getpid()}-{next(_stream_names)}{STREAM_SUFFIX}"
        path = self._directory / name
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                               0o644)
            self.files.append(path)
            self._lengths.append(HEADER_SIZE)
            _write_all(self._fd, _segment_header(0))
        except OSError as exc:
            _raise_for_os_error(exc, f"creating {path}")

    def sync(self) -> None:
        """fdatasync every file of the stream. Their names need not
        survive a crash: the commit renames them, and syncs that."""
        self._close_fd()
        for path in self.files:
            try:
                fd = os.open(path, os.O_WRONLY)
                try:
                    crash_point("segment.written")
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                _raise_for_os_error(exc, f"syncing {path}")

    def number(self, first: int) -> dict[int, int]:
        """Make the files segments ``first``, ``first + 1``, ...: the
        header with the number, synced, then the name, and the
        directory synced. Returns their lengths by number."""
        for offset, path in enumerate(self.files):
            number = first + offset
            target = segment_path(self._directory, number)
            try:
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.pwrite(fd, _segment_header(number), 0)
                    os.fdatasync(fd)
                finally:
                    os.close(fd)
                os.rename(path, target)
            except OSError as exc:
                _raise_for_os_error(exc, f"numbering {path} as {target}")
            self.files[offset] = target
            self._numbers.append(number)
            crash_point("segment.created")
        fsync_directory(self._directory)
        return self.lengths

    def unnumber(self) -> None:
        """Give the files stream names again (their batch runs again,
        and numbers them afresh)."""
        for offset, path in enumerate(self.files):
            if offset < len(self._numbers):
                name = self._directory / \
                    f"{os.getpid()}-{next(_stream_names)}{STREAM_SUFFIX}"
                os.rename(path, name)
                self.files[offset] = name
        self._numbers.clear()

    def committed(self) -> None:
        """The index now lists the segments: they are the store's."""
        self._close_fd()

    def discard(self) -> None:
        """Remove the files: the instance was not stored. One that cannot
        be removed holds nothing acknowledged, and the next writer to
        open the store sets it aside."""
        self._close_fd()
        for path in self.files:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("cannot remove %s: %s", path, exc)
        self.files.clear()
        self._lengths.clear()
        self._numbers.clear()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# A block's payload is read into a reused per-thread buffer: it is only
# checked and decompressed, never kept (store/scratch.py).
_payload_scratch = ThreadScratch()
# Reads longer than this check the segment's size first (one fstat).
_LENGTH_CHECKED_ABOVE = 1 << 20


class SegmentReader:
    """Reads blocks from segments by (segment, offset); thread-safe
    (positional reads on shared descriptors). ``close`` waits for the
    reads in progress: a descriptor closed under a pread could be reused
    by another file before the read runs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fds: dict[int, int] = {}
        self._cond = threading.Condition()
        self._active = 0
        self._closed = False

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        with self._cond:
            if self._closed:
                raise ArchiveClosedError(
                    f"the store at {self.directory.parent} is closed; "
                    f"open a new Archive to read it")
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def _fd(self, number: int) -> int:
        fd = self._fds.get(number)
        if fd is not None:
            return fd
        path = segment_path(self.directory, number)
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            raise CorruptStoreError(
                f"segment {path} is in the index but missing") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise CorruptStoreError(
                    f"segment {path} is in the index but is not a file")
            check_segment_header(os.pread(fd, HEADER_SIZE, 0), number,
                                 str(path))
        except BaseException:
            os.close(fd)
            raise
        # Another thread may have raced us here; keep one descriptor.
        kept = self._fds.setdefault(number, fd)
        if kept != fd:
            os.close(fd)
        return kept

    def read_header(self, number: int, offset: int) -> tuple[BlockHeader,
                                                               bytes]:
        with self._reading():
            raw = os.pread(self._fd(number), blocks.HEADER_SIZE, offset)
        where = f"segment {number} offset {offset}"
        return blocks.parse_header(raw, where), raw

    def read(self, number: int, offset: int,
             expect: bytes | None = None,
             stored_length: int | None = None,
             base: blocks.BaseLookup | None = None
             ) -> tuple[BlockHeader, bytes]:
        """The verified content of the block at (segment, offset);
        ``expect`` and ``stored_length`` are what the index says of it,
        ``base`` looks up the base of a header compressed against one."""
        header, raw, payload, where = self._read_with_base(
            number, offset, expect, stored_length)
        return header, blocks.decode(header, raw, payload, where, base)

    def will_need(self, number: int, offset: int, length: int) -> None:
        """Tell the kernel these bytes will be read soon, so that a read
        ahead of the reader starts fetching them from disk now, while the
        CPU is busy decoding what came before (posix_fadvise WILLNEED:
        an asynchronous hint, which does nothing for cached pages)."""
        with self._reading():
            os.posix_fadvise(self._fd(number), offset, length,
                             os.POSIX_FADV_WILLNEED)

    def check_intact(self, number: int, offset: int, expect: bytes,
                     stored_length: int) -> bytes | None:
        """CorruptStoreError unless the block the index places here is
        there as written: its header as the index says, its CRC32
        holding (blocks.check_stored). Returns the name of its base for
        a header compressed against one, which it needs as well."""
        header, raw, payload, where = self._read_checked(
            number, offset, expect, stored_length)
        blocks.check_stored(header, bytes(raw), payload, where)
        if header.codec is blocks.Codec.ZSTD_BASE:
            return blocks.base_name(header, payload, where)
        return None

    def read_onto(self, number: int, offset: int, expect: bytes,
                  stored_length: int, assembly: FileAssembly,
                  base: blocks.BaseLookup | None = None) -> None:
        """``read``, with the content written next into ``assembly``
        (see blocks.decode_onto)."""
        header, raw, payload, where = self._read_with_base(
            number, offset, expect, stored_length)
        blocks.decode_onto(header, raw, payload, where, assembly, base)

    def _read_with_base(self, number: int, offset: int,
                        expect: bytes | None, stored_length: int | None
                        ) -> tuple[BlockHeader, memoryview, memoryview, str]:
        """_read_checked, with the block copied out of this thread's
        read buffer when it is stored against a base: the base's read
        takes that buffer. A copy of a header block's few KB."""
        header, raw, payload, where = self._read_checked(
            number, offset, expect, stored_length)
        if header.codec is blocks.Codec.ZSTD_BASE:
            raw, payload = memoryview(bytes(raw)), memoryview(bytes(payload))
        return header, raw, payload, where

    def _read_checked(self, number: int, offset: int, expect: bytes | None,
                      stored_length: int | None
                      ) -> tuple[BlockHeader, memoryview, memoryview, str]:
        """The block's header, checked against what the index says, its
        raw bytes and its payload, in this thread's read buffer (valid
        until the thread's next read)."""
        where = f"segment {number} offset {offset}"
        if stored_length is None:
            header, raw = self.read_header(number, offset)
            self._check_entry(header, where, expect, None)
            view = self._pread(number, offset + blocks.HEADER_SIZE,
                               header.stored_length)
            return header, memoryview(raw), view, where
        # The index knows the payload's length: header and payload in one
        # read. The header's own length is checked against it before the
        # payload is used.
        view = self._pread(number, offset, blocks.HEADER_SIZE + stored_length)
        try:
            header = blocks.parse_header(view[:blocks.HEADER_SIZE], where)
        except NewerFormatError:
            # A version byte past this reader's is a newer writer's block
            # only if the CRC32 holds; otherwise it is damage.
            blocks.check_crc_of_raw(view, where)
            raise
        self._check_entry(header, where, expect, stored_length)
        # Short at the end of the file: decode reports the truncation.
        return header, view[:blocks.HEADER_SIZE], \
            view[blocks.HEADER_SIZE:], where

    def _pread(self, number: int, offset: int, length: int) -> memoryview:
        with self._reading():
            fd = self._fd(number)
            if length > _LENGTH_CHECKED_ABOVE:
                # A length from the index or a block header sizes the
                # buffer: a damaged one must not ask for gigabytes.
                size = os.fstat(fd).st_size
                if offset + length > size:
                    raise CorruptStoreError(
                        f"block at segment {number} offset {offset} would "
                        f"end at byte {offset + length}, past the end of "
                        f"its segment ({size} bytes): its stated length "
                        f"is damaged")
            view = _payload_scratch.view(length)
            count = os.preadv(fd, [view], offset)
        return view[:count]

    @staticmethod
    def _check_entry(header: BlockHeader, where: str, expect: bytes | None,
                     stored_length: int | None) -> None:
        if expect is not None and header.digest != expect:
            raise CorruptStoreError(
                f"block at {where} is {header.digest.hex()}, the index "
                f"expected {expect.hex()}")
        # The header's CRC covers the payload, so it can only be checked
        # after the read; a damaged length must not size that read.
        if stored_length is not None and \
                header.stored_length != stored_length:
            raise CorruptStoreError(
                f"block at {where} claims {header.stored_length} payload "
                f"bytes, the index recorded {stored_length}")

    def close(self) -> None:
        with self._cond:
            self._closed = True
            while self._active:
                self._cond.wait()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
