"""Blocks: the unit of storage, named by the SHA-256 of their content.

A block is a 64-byte header followed by its payload. The header says what
the block holds (an instance's header, a frame, the whole pixel value of a
non byte-aligned image, or an instance manifest), how the payload is coded
(raw or zstd), the SHA-256 of the *uncompressed* content, both lengths, and
a CRC32 over the header and the payload.

Two checks guard every read, for two different reasons. The CRC32 catches
torn or flipped bytes on disk cheaply, before any decompression is tried
on them. The SHA-256 is the block's identity: content-addressed dedup
shares one frame between instances, so serving a block whose content does
not hash to its name would hand one patient's pixels to another. Readers
therefore recompute it after decompression, every time.

The payload is stored raw when zstd does not make it smaller: encapsulated
JPEG fragments are already compressed and would only cost CPU on read.
"""

from __future__ import annotations

import enum
import hashlib
import struct
import zlib
from dataclasses import dataclass

import zstandard

from pacsstore.errors import (
    CorruptStoreError,
    NewerFormatError,
    NotAStoreError,
)

BLOCK_MAGIC = b"PSBK"
BLOCK_FORMAT_VERSION = 1

# magic, version, kind, codec, flags, sha256, raw length, stored length,
# reserved, crc32. The CRC covers the first 60 bytes and the payload.
_HEADER = struct.Struct("<4sBBBB32sQQI")
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size + _CRC.size
assert HEADER_SIZE == 64

# A payload must shrink by at least this fraction to be kept compressed:
# below that the saving does not pay for decompressing on every read.
_MIN_SAVING = 1 / 64


class Kind(enum.IntEnum):
    HEADER = 1     # the instance file with its frame bytes cut out
    FRAME = 2      # one frame (native) or the fragments of one frame
    PIXELS = 3     # a whole pixel value whose frames are not byte aligned
    MANIFEST = 4   # the instance record, for rebuilding the index


class Codec(enum.IntEnum):
    RAW = 0
    ZSTD = 1
    # Room for pre-filters (byte shuffle, delta) in front of zstd.


@dataclass(frozen=True)
class BlockHeader:
    kind: Kind
    codec: Codec
    digest: bytes
    raw_length: int
    stored_length: int
    crc32: int

    @property
    def total_length(self) -> int:
        return HEADER_SIZE + self.stored_length


@dataclass(frozen=True)
class EncodedBlock:
    """A block ready to append: its header bytes and payload."""

    kind: Kind
    codec: Codec
    digest: bytes
    raw_length: int
    header: bytes
    payload: bytes

    @property
    def total_length(self) -> int:
        return len(self.header) + len(self.payload)


def digest(content: bytes | memoryview) -> bytes:
    """The block name: SHA-256 of the uncompressed content."""
    return hashlib.sha256(content).digest()


def encode(kind: Kind, content: bytes | memoryview, *,
           compressor: zstandard.ZstdCompressor,
           name: bytes | None = None) -> EncodedBlock:
    """Compress (when it pays) and frame ``content`` as a block."""
    name = digest(content) if name is None else name
    packed = compressor.compress(content)
    if len(packed) <= len(content) * (1 - _MIN_SAVING):
        codec, payload = Codec.ZSTD, packed
    else:
        codec, payload = Codec.RAW, bytes(content)
    head = _HEADER.pack(BLOCK_MAGIC, BLOCK_FORMAT_VERSION, kind, codec, 0,
                        name, len(content), len(payload), 0)
    crc = zlib.crc32(payload, zlib.crc32(head))
    return EncodedBlock(kind, codec, name, len(content),
                        head + _CRC.pack(crc), payload)


def parse_header(raw: bytes, where: str) -> BlockHeader:
    """Validate a 64-byte block header read from disk."""
    if len(raw) < HEADER_SIZE:
        raise CorruptStoreError(
            f"block header at {where} is truncated: expected "
            f"{HEADER_SIZE} bytes, found {len(raw)}")
    (magic, version, kind, codec, _flags, name, raw_length,
     stored_length, _reserved) = _HEADER.unpack_from(raw)
    if magic != BLOCK_MAGIC:
        raise CorruptStoreError(
            f"no block magic at {where}: expected {BLOCK_MAGIC!r}, "
            f"found {magic!r}")
    if version > BLOCK_FORMAT_VERSION:
        raise NewerFormatError(
            f"block at {where} has format version {version}; this "
            f"pacsstore reads up to {BLOCK_FORMAT_VERSION}")
    try:
        kind, codec = Kind(kind), Codec(codec)
    except ValueError:
        raise CorruptStoreError(
            f"block at {where} has unknown kind {kind} or codec "
            f"{codec}") from None
    (crc,) = _CRC.unpack_from(raw, _HEADER.size)
    return BlockHeader(kind, codec, name, raw_length, stored_length, crc)


def decode(header: BlockHeader, raw_header: bytes, payload: bytes,
           where: str) -> bytes:
    """Check the CRC, decompress, check the SHA-256; return the content."""
    if len(payload) != header.stored_length:
        raise CorruptStoreError(
            f"block at {where} is truncated: expected "
            f"{header.stored_length} payload bytes, found {len(payload)}")
    crc = zlib.crc32(payload, zlib.crc32(raw_header[:_HEADER.size]))
    if crc != header.crc32:
        raise CorruptStoreError(
            f"block at {where} fails its CRC32: stored "
            f"{header.crc32:08x}, computed {crc:08x}")
    content = _decompress(header, payload, where)
    if hashlib.sha256(content).digest() != header.digest:
        raise CorruptStoreError(
            f"block at {where} does not match its SHA-256 "
            f"{header.digest.hex()}")
    return content


def _decompress(header: BlockHeader, payload: bytes, where: str) -> bytes:
    if header.codec is Codec.RAW:
        content = payload
    else:
        try:
            content = zstandard.ZstdDecompressor().decompress(
                payload, max_output_size=header.raw_length)
        except zstandard.ZstdError as exc:
            raise CorruptStoreError(
                f"block at {where} does not decompress: {exc}") from None
    if len(content) != header.raw_length:
        raise CorruptStoreError(
            f"block at {where} decodes to {len(content)} bytes; its "
            f"header says {header.raw_length}")
    return content


def check_magic(raw: bytes, magic: bytes, what: str) -> None:
    """Distinguish "not ours" from "damaged" for file headers."""
    if raw[:len(magic)] != magic:
        raise NotAStoreError(
            f"{what} does not start with the pacsstore magic {magic!r}")
