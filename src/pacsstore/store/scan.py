"""Walking a segment block by block, trusting none of its bytes.

``verify`` and ``rebuild-index`` both read segments front to back rather
than through the index, because they exist for the day the index and the
segments disagree. The walk checks every block as a read does (magic,
version, CRC32, decompression, SHA-256 against the block's name) and
yields either the verified block or the damaged stretch it had to skip.
A header block compressed against a base (store/bases.py) is checked up
to its CRC32 and yielded with its base's name: its content needs the
base, which the index locates; verify reads it back whole with its
instance.

Every length read from the segment is hostile: a block's stated size is
checked against the end of the walk before it sizes a read. After a
damaged block the walk finds the next one again: at the damaged block's
stated end when a block header starts there (a flipped payload byte
leaves the framing intact), else by searching forward for the block
magic and taking the first candidate whose block passes every check. So
one damaged block costs that block and not the rest of the segment.

Memory is one block at a time, whatever the size of the segment.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pacsstore.errors import (
    CorruptStoreError,
    NewerFormatError,
    NotAStoreError,
)
from pacsstore.store import blocks, segments
from pacsstore.store.blocks import BlockHeader, Codec

log = logging.getLogger(__name__)

# Bytes read at a time while searching for the next block magic.
_SEARCH_CHUNK = 1 << 20
# Offsets of the stored length and the CRC32 in a block header
# (docs/format.md), read here only to tell a newer block from a damaged
# one, which blocks.parse_header refuses before it gets that far.
_STORED_LENGTH_AT = 48
_CRC_AT = 60
_U64, _U32 = struct.Struct("<Q"), struct.Struct("<I")


@dataclass(frozen=True)
class Intact:
    """A block that passed every check, with its content; for a block
    compressed against a base, the base's name instead (``base``) and no
    content."""

    segment: int
    offset: int
    header: BlockHeader
    content: bytes
    base: bytes | None = None

    @property
    def end(self) -> int:
        return self.offset + self.header.total_length


@dataclass(frozen=True)
class Damaged:
    """Bytes where a block should be that are not a valid block.

    ``header`` is the block header when it could be parsed (its digest
    says which block was lost, unless the damage is in the digest)."""

    segment: int
    offset: int
    length: int
    message: str
    header: BlockHeader | None


def segment_files(directory: Path) -> list[tuple[int, Path]]:
    """The segment files of ``directory`` by number. Only the names the
    store reads (``00000001.seg``: eight digits) count; other files are
    not the store's and are left alone."""
    found = []
    for path in directory.glob("*.seg"):
        if path.stem.isdigit() and \
                path == segments.segment_path(directory, int(path.stem)):
            found.append((int(path.stem), path))
        else:
            log.warning("ignoring %s: not a segment file name", path)
    return sorted(found)


def check_header(path: Path, number: int) -> str | None:
    """Why the segment header of ``path`` is unusable, or None when it is
    sound. A newer format version is raised, not returned: this version
    cannot judge what such a segment holds."""
    if not path.is_file():
        return f"{path} is not a file"
    with open(path, "rb") as handle:
        raw = handle.read(segments.HEADER_SIZE)
    try:
        segments.check_segment_header(raw, number, str(path))
    except (CorruptStoreError, NotAStoreError) as exc:
        return str(exc)
    return None


def walk(path: Path, number: int, end: int) -> Iterator[Intact | Damaged]:
    """Every block of segment ``number`` from its header up to ``end``
    (its committed length, or its size), in order."""
    fd = os.open(path, os.O_RDONLY)
    try:
        position = segments.HEADER_SIZE
        while position < end:
            found = _read_block(fd, number, position, end)
            if isinstance(found, Intact):
                yield found
                position = found.end
                continue
            resume = _resume_after(fd, number, found, end)
            yield Damaged(number, position, resume - position,
                          found.message, found.header)
            position = resume
    finally:
        os.close(fd)


@dataclass(frozen=True)
class _Failure:
    offset: int
    message: str
    header: BlockHeader | None


def _read_block(fd: int, number: int, offset: int,
                end: int) -> Intact | _Failure:
    where = f"segment {number} offset {offset}"
    raw = os.pread(fd, blocks.HEADER_SIZE, offset)
    try:
        header = blocks.parse_header(raw, where)
    except CorruptStoreError as exc:
        return _Failure(offset, str(exc), None)
    except NewerFormatError as exc:
        return _newer_or_damaged(fd, raw, offset, end, where, exc)
    if offset + header.total_length > end:
        return _Failure(
            offset, f"block at {where} claims {header.stored_length} "
                    f"payload bytes, past the segment's end at {end}",
            header)
    payload = os.pread(fd, header.stored_length,
                       offset + blocks.HEADER_SIZE)
    try:
        if header.codec is Codec.ZSTD_BASE:
            blocks.check_stored(header, raw, payload, where)
            return Intact(number, offset, header, b"",
                          blocks.base_name(header, payload, where))
        content = blocks.decode(header, raw, payload, where)
    except CorruptStoreError as exc:
        return _Failure(offset, str(exc), header)
    return Intact(number, offset, header, content)


def _newer_or_damaged(fd: int, raw: bytes, offset: int, end: int,
                      where: str, newer: NewerFormatError) -> _Failure:
    """A version byte above ours is a newer block only if the block's
    CRC32 holds; otherwise it is a damaged one. Raises the former: this
    version cannot judge the rest of such a store."""
    (stored_length,) = _U64.unpack_from(raw, _STORED_LENGTH_AT)
    (crc,) = _U32.unpack_from(raw, _CRC_AT)
    stated_end = offset + blocks.HEADER_SIZE + stored_length
    if stated_end <= end:
        payload = os.pread(fd, stored_length, offset + blocks.HEADER_SIZE)
        if zlib.crc32(payload, zlib.crc32(raw[:_CRC_AT])) == crc:
            raise newer
    return _Failure(offset, f"block at {where} is damaged: its version "
                            f"byte reads {raw[4]} and it fails its CRC32",
                    None)


def _resume_after(fd: int, number: int, failure: _Failure,
                  end: int) -> int:
    """Where the next block after a damaged one starts (``end`` when no
    intact block follows)."""
    if failure.header is not None:
        stated = failure.offset + failure.header.total_length
        if stated == end or (stated < end and os.pread(
                fd, len(blocks.BLOCK_MAGIC), stated) == blocks.BLOCK_MAGIC):
            return stated
    return _search(fd, number, failure.offset + 1, end)


def _search(fd: int, number: int, start: int, end: int) -> int:
    """The first offset from ``start`` holding an intact block."""
    magic = blocks.BLOCK_MAGIC
    position = start
    while position < end:
        chunk = os.pread(fd, min(_SEARCH_CHUNK, end - position), position)
        if not chunk:
            break
        hit = chunk.find(magic)
        while hit != -1:
            candidate = position + hit
            if isinstance(_read_block(fd, number, candidate, end), Intact):
                return candidate
            hit = chunk.find(magic, hit + 1)
        # A magic split across two chunks is found in the next one.
        position += max(len(chunk) - (len(magic) - 1), 1)
    return end
