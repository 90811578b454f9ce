"""Blocks: the unit of storage, named by the SHA-256 of their content.

A block is a 64-byte header followed by its payload. The header says what
the block holds (an instance's header, a frame, the whole pixel value of a
non byte-aligned image, or an instance manifest), how the payload is coded
(raw, zstd, zstd against another header block, or a pixel pre-filter
then zstd), the SHA-256 of the
*uncompressed* content, both lengths, and a CRC32 over the header and the
payload.

Two checks guard every read, for two different reasons. The CRC32 catches
torn or flipped bytes on disk cheaply, before any decompression is tried
on them. The SHA-256 is the block's identity: content-addressed dedup
shares one frame between instances, so serving a block whose content does
not hash to its name would hand one patient's pixels to another. Readers
therefore recompute it after decompression, every time.

The payload is stored raw when zstd does not make it smaller: encapsulated
JPEG fragments are already compressed and would only cost CPU on read.
Native frames of 16-bit samples go through the ``planes16`` filter
(store/filters.py) and each of its planes is compressed on its own
(planes16_encoder): smaller and faster than zstd alone. The name stays
the digest of the unfiltered content, so a frame is one block whichever
codec stored it. A manifest (an instance record) is compressed against
a frozen dictionary of what records repeat (store/record_dictionary.py).
A header block may be compressed against another header block, its
*base* (store/bases.py): the headers of one series repeat each other.
"""

from __future__ import annotations

import enum
import hashlib
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import zstandard

from pacsstore.errors import (
    CorruptStoreError,
    NewerFormatError,
    NotAStoreError,
)
from pacsstore._assemble import (
    PLANES_BAD_CRC,
    PLANES_BAD_DIGEST,
    PLANES_BAD_LENGTH,
    PLANES_BAD_ZSTD,
    FileAssembly,
    PlanesDecoder,
)
from pacsstore._filters import PlanesEncoder
from pacsstore.store import filters, record_dictionary, zstd_frames
from pacsstore.store.scratch import ThreadScratch

# What a block's bytes may come as: a payload read into a reused buffer
# is a memoryview of it.
Buffer = bytes | bytearray | memoryview

BLOCK_MAGIC = b"PSBK"
# Version 2 added the PLANES16_ZSTD codec, version 3 PLANES16_ZSTD_PER_PLANE,
# version 4 ZSTD_RECORD, version 5 ZSTD_BASE.
# A block carries the lowest version that can read it (see _VERSION_OF),
# so an older reader still reads every block of a store whose codec it
# knows, and refuses a newer one with NewerFormatError rather than
# calling it damaged.
BLOCK_FORMAT_VERSION = 5

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
    # 16-bit samples split into high bytes, high nibbles and low nibbles
    # of the low bytes (filters.planes16), then one zstd frame of the
    # three planes: read, no longer written.
    PLANES16_ZSTD = 2
    # The same planes, each compressed as a zstd frame of its own with
    # the settings that suit it (planes16_encoder), the frames one after
    # another: a zstd stream that decompresses to the planes in order.
    PLANES16_ZSTD_PER_PLANE = 3
    # zstd against the frozen record dictionary (record_dictionary.py):
    # manifest blocks, which are instance records.
    ZSTD_RECORD = 4
    # The name of another header block (its base), then zstd against
    # that block's content as a raw dictionary: header blocks whose
    # series already has a header stored (store/bases.py).
    ZSTD_BASE = 5


# The block format version each codec first appeared in.
_VERSION_OF = {Codec.RAW: 1, Codec.ZSTD: 1, Codec.PLANES16_ZSTD: 2,
               Codec.PLANES16_ZSTD_PER_PLANE: 3, Codec.ZSTD_RECORD: 4,
               Codec.ZSTD_BASE: 5}
# A ZSTD_BASE payload starts with the SHA-256 that names its base.
BASE_NAME_BYTES = 32
# Given a base's name, a decompressor against its verified content
# (decompressor_against); CorruptStoreError when the store cannot provide
# it (store/bases.py, BaseReader).
BaseLookup = Callable[[bytes], zstandard.ZstdDecompressor]
# Codecs whose payload decompresses to the planes16 form of the content.
_PLANES_CODECS = frozenset((Codec.PLANES16_ZSTD,
                            Codec.PLANES16_ZSTD_PER_PLANE))
# Sample sizes encode() knows a filter for.
_SAMPLE_BYTES = (1, 2)


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
           name: bytes | None = None,
           sample_bytes: int = 1,
           planes_encoder: PlanesEncoder | None = None,
           ) -> EncodedBlock:
    """Compress (when it pays) and frame ``content`` as a block.

    ``sample_bytes=2`` says that ``content`` is a native frame of 16-bit
    samples: it is filtered (planes16) and its planes compressed one by
    one. Only a frame block of a whole, non-zero number of samples is
    filtered; anything else gets plain zstd. The filter inverts exactly
    on any bytes, so a wrong hint can cost ratio, never content.
    ``planes_encoder`` (see planes16_encoder; this thread's encoder at
    the default level when not given) compresses the planes,
    ``compressor`` everything else.
    """
    name = digest(content) if name is None else name
    return seal(kind, name, len(content),
                code(kind, content, compressor=compressor,
                     sample_bytes=sample_bytes,
                     planes_encoder=planes_encoder))


@dataclass(frozen=True)
class Coded:
    """A block's payload as it will be stored, before the block is
    named: what ``encode`` does apart from the digest, so that a caller
    can compress while another thread takes the digest."""

    codec: Codec
    payload: bytes


def code(kind: Kind, content: bytes | memoryview, *,
         compressor: zstandard.ZstdCompressor,
         sample_bytes: int = 1,
         planes_encoder: PlanesEncoder | None = None) -> Coded:
    """The payload ``encode`` would store for ``content``: compressed
    when that saves enough, else the content itself."""
    if sample_bytes not in _SAMPLE_BYTES:
        raise ValueError(
            f"sample_bytes must be one of {_SAMPLE_BYTES}, not "
            f"{sample_bytes!r}")
    codec, packed = _compress(kind, content, compressor, sample_bytes,
                              planes_encoder)
    return _kept(codec, packed, content)


@dataclass(frozen=True)
class Unencoded:
    """A block for encode_together: what encode() takes for it."""

    kind: Kind
    name: bytes
    content: Buffer
    sample_bytes: int = 1


def encode_together(unencoded: list[Unencoded], *,
                    compressor: zstandard.ZstdCompressor, threads: int,
                    planes_encoder: PlanesEncoder | None = None
                    ) -> list[EncodedBlock]:
    """``encode`` of each block, with those that take plain zstd
    compressed in one call and the manifests in another, each call
    holding the GIL for none of its blocks and using up to ``threads``
    threads of zstandard's own (zstd_frames.compress_together).

    One call rather than one per block matters when another thread holds
    the GIL meanwhile (store_many's committer): each return into Python
    waits for the GIL. Filtered frames are compressed one by one (their
    encoder releases the GIL for each)."""
    coded: dict[int, Coded] = {}
    plain: list[int] = []
    manifests: list[int] = []
    for i, block in enumerate(unencoded):
        if _filtered(block.kind, block.content, block.sample_bytes):
            coded[i] = code(block.kind, block.content, compressor=compressor,
                            sample_bytes=block.sample_bytes,
                            planes_encoder=planes_encoder)
        else:
            (manifests if block.kind is Kind.MANIFEST else plain).append(i)
    for codec, positions, packed in (
            (Codec.ZSTD, plain, zstd_frames.compress_together(
                compressor, [unencoded[i].content for i in plain], threads)),
            (Codec.ZSTD_RECORD, manifests, record_dictionary.compress_together(
                [unencoded[i].content for i in manifests], threads))):
        for i, payload in zip(positions, packed):
            coded[i] = _kept(codec, payload, unencoded[i].content)
    return [seal(block.kind, block.name, len(block.content), coded[i])
            for i, block in enumerate(unencoded)]


def _kept(codec: Codec, packed: bytes, content: Buffer) -> Coded:
    """The payload to store: ``packed`` when it saves enough, else the
    content itself."""
    if len(packed) <= len(content) * (1 - _MIN_SAVING):
        return Coded(codec, packed)
    return Coded(Codec.RAW, bytes(content))


def seal(kind: Kind, name: bytes, raw_length: int,
         coded: Coded) -> EncodedBlock:
    """The block of a coded payload: its header, named ``name`` (the
    SHA-256 of the ``raw_length`` bytes of content)."""
    head = _HEADER.pack(BLOCK_MAGIC, _VERSION_OF[coded.codec], kind,
                        coded.codec, 0, name, raw_length,
                        len(coded.payload), 0)
    crc = zlib.crc32(coded.payload, zlib.crc32(head))
    return EncodedBlock(kind, coded.codec, name, raw_length,
                        head + _CRC.pack(crc), coded.payload)


def _compress(kind: Kind, content: bytes | memoryview,
              compressor: zstandard.ZstdCompressor, sample_bytes: int,
              planes_encoder: PlanesEncoder | None
              ) -> tuple[Codec, bytes]:
    if _filtered(kind, content, sample_bytes):
        encoder = planes_encoder or _default_planes_encoder()
        return Codec.PLANES16_ZSTD_PER_PLANE, encoder.encode(content)
    if kind is Kind.MANIFEST:
        return Codec.ZSTD_RECORD, record_dictionary.compress(content)
    return Codec.ZSTD, compressor.compress(content)


def _filtered(kind: Kind, content: Buffer, sample_bytes: int) -> bool:
    """Whether ``content`` goes through planes16: a frame of a whole,
    non-zero number of 16-bit samples."""
    return (sample_bytes == 2 and kind is Kind.FRAME
            and len(content) >= 2 and len(content) % 2 == 0)


# Archive's compression_level unless told, and the level of the planes
# encoder a caller of encode() gets without its own.
DEFAULT_LEVEL = 3
# Upper plane: cut into zstd blocks of 16 KiB, each with Huffman tables of
# its own (see planes16_encoder).
_NIBBLE_BLOCK = 16 << 10
# Lower plane: 32 KiB blocks, so that a region of it that is not noise (a
# flat background) gets Huffman codes of its own. Without them it took
# about 100 µs less a CT slice, where it is all noise, and kept 1.2 MB
# more of the corpus's frames.
_NOISE_BLOCK = 32 << 10
# The hash table of a plane's match search: 2**14 entries of 4 bytes stay
# in the L2 cache, where level 3's 2**17 do not.
_PLANES_HASH_LOG = 14
# From this level up a caller asked for a deeper search: every plane gets
# zstd's own parameters for the level.
_DEEP_LEVEL = 5


def planes16_encoder(level: int) -> PlanesEncoder:
    """An encoder of planes16 payloads at zstd ``level`` (one per thread).

    The three planes of a frame differ, and each gets the search that
    pays on it. Measured on the benchmarks' CT study (400 slices of
    512 KiB, per slice) at level 3:

    - the high bytes are smooth: level 3's parameters with one search a
      position (the fast strategy) and a hash table that fits in cache,
      85 µs, 2.8 KB;
    - the high nibbles of the low bytes are noise over anatomy, where
      matches are rare and short and the literals' statistics change
      from region to region (air, soft tissue, bone). Huffman tables of
      their own for each 16 KiB gain more than a deep search does:
      matches of 7 bytes or more from a table of 2**10 entries, in 16 KiB
      blocks, 147 µs and 69.6 KB, against 448 µs and 71.8 KB for level
      3's search in zstd's 128 KiB blocks;
    - the low nibbles are close to random: a short search, 32 KiB blocks.

    In all, 440 µs and 203.4 KB a slice against 796 µs and 205.6 KB for
    one zstd frame of the three planes (codec PLANES16_ZSTD); the native
    16-bit frames of the benchmarks' corpus keep 0.6% fewer bytes in the
    same time. From level 5 up
    each plane is compressed with zstd's parameters for the level.
    Every payload is an ordinary sequence of zstd frames.
    """
    params = zstandard.ZstdCompressionParameters.from_level(level)
    search = {"window_log": params.window_log,
              "chain_log": params.chain_log,
              "hash_log": params.hash_log,
              "search_log": params.search_log,
              "min_match": params.min_match,
              "target_length": params.target_length,
              "strategy": params.strategy}
    if level >= _DEEP_LEVEL:
        return PlanesEncoder([search, dict(search, block_size=_NIBBLE_BLOCK),
                              search])
    smooth = dict(search, strategy=zstandard.STRATEGY_FAST,
                  hash_log=min(params.hash_log, _PLANES_HASH_LOG))
    nibbles = {"strategy": zstandard.STRATEGY_FAST, "window_log": 19,
               "hash_log": 10, "min_match": 7, "block_size": _NIBBLE_BLOCK}
    noise = {"strategy": zstandard.STRATEGY_FAST, "window_log": 19,
             "hash_log": 8, "min_match": 7, "block_size": _NOISE_BLOCK}
    return PlanesEncoder([smooth, nibbles, noise])


def _default_planes_encoder() -> PlanesEncoder:
    found = getattr(_local, "planes_encoder", None)
    if found is None:
        found = _local.planes_encoder = planes16_encoder(DEFAULT_LEVEL)
    return found


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
    # A writer that adds a kind or codec raises the version, so an unknown
    # value under a version this reader knows is damage, not novelty.
    try:
        kind, codec = Kind(kind), Codec(codec)
    except ValueError:
        raise CorruptStoreError(
            f"block at {where} has unknown kind {kind} or codec "
            f"{codec} for its format version {version}") from None
    if _VERSION_OF[codec] > version:
        raise CorruptStoreError(
            f"block at {where} has codec {int(codec)}, which format "
            f"version {version} does not have")
    (crc,) = _CRC.unpack_from(raw, _HEADER.size)
    return BlockHeader(kind, codec, name, raw_length, stored_length, crc)


def decode(header: BlockHeader, raw_header: bytes, payload: Buffer,
           where: str, base: BaseLookup | None = None) -> bytes:
    """Check the CRC, decompress, check the SHA-256; return the content.
    Nothing returned aliases ``payload``. ``base`` gives a decompressor
    against the base a ZSTD_BASE block names; such a block read without
    it is refused."""
    if header.codec in _PLANES_CODECS:
        # Through the one native decoder that get() uses as well, so that
        # both read paths give a damaged block the same verdict.
        _check_planes_fit(header, raw_header, payload, where)
        assembly = FileAssembly(header.raw_length)
        _planes_onto(header, raw_header, payload, where, assembly)
        return assembly.finish()
    _check_payload(header, raw_header, payload, where)
    if header.codec is Codec.ZSTD_BASE:
        content = _against_base(header, payload, where, base)
    else:
        content = _decompress(header, payload, where)
    _check_digest(header, content, where)
    return content


def base_name(header: BlockHeader, payload: Buffer, where: str) -> bytes:
    """The name of the base a ZSTD_BASE block (of kind header) was
    compressed against: the first bytes of its payload. Only a payload
    whose CRC32 held may be asked."""
    if header.kind is not Kind.HEADER:
        raise CorruptStoreError(
            f"block at {where} is a {header.kind.name.lower()} block "
            f"compressed against a base; only header blocks are")
    if len(payload) <= BASE_NAME_BYTES:
        raise CorruptStoreError(
            f"block at {where} is compressed against a base but its "
            f"{len(payload)}-byte payload cannot hold the base's name "
            f"and a zstd frame")
    return bytes(payload[:BASE_NAME_BYTES])


def _against_base(header: BlockHeader, payload: Buffer, where: str,
                  base: BaseLookup | None) -> bytes:
    name = base_name(header, payload, where)
    if base is None:
        raise CorruptStoreError(
            f"block at {where} is compressed against block {name.hex()}, "
            f"which this read cannot look up")
    return _of_stated_length(header, _unzstd(
        base(name), memoryview(payload)[BASE_NAME_BYTES:],
        header.raw_length, where), where)


def raw_dictionary(content: bytes) -> zstandard.ZstdCompressionDict:
    """``content`` as zstd takes a base: history before the first byte of
    what is compressed, not a trained dictionary."""
    return zstandard.ZstdCompressionDict(
        content, dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def decompressor_against(base: bytes) -> zstandard.ZstdDecompressor:
    """A decompression context for payloads compressed against the base
    whose content is ``base``; not to be shared by threads at once."""
    return zstandard.ZstdDecompressor(dict_data=raw_dictionary(base))


def code_against(content: Buffer, name: bytes,
                 dictionary: zstandard.ZstdCompressionDict,
                 level: int) -> Coded | None:
    """``content`` compressed against the base ``name`` whose
    ``dictionary`` (raw_dictionary) is given; None when that does not
    save enough to be worth the base's read."""
    packed = name + zstandard.ZstdCompressor(
        level=level, dict_data=dictionary, write_content_size=True,
        write_dict_id=False).compress(content)
    if len(packed) <= len(content) * (1 - _MIN_SAVING):
        return Coded(Codec.ZSTD_BASE, packed)
    return None


def _check_planes_fit(header: BlockHeader, raw_header: bytes,
                      payload: Buffer, where: str) -> None:
    """A planes16 block whose stated length its payload cannot decompress
    to is damaged, and must not size an allocation: the checks in order
    (the CRC first), then that refusal."""
    length = filters.planes16_length(header.raw_length)
    if length > zstd_frames.MAX_EXPANSION * len(payload):
        _check_payload(header, raw_header, payload, where)
        raise CorruptStoreError(
            f"block at {where} states {header.raw_length} content bytes, "
            f"more than its {len(payload)}-byte payload can decompress to")


def decode_onto(header: BlockHeader, raw_header: bytes, payload: Buffer,
                where: str, assembly: FileAssembly,
                base: BaseLookup | None = None) -> None:
    """``decode``, with the content written next into ``assembly``
    instead of returned: a planes16 frame is checked and inverted
    straight into it by one native call. The SHA-256 is checked on the
    bytes where they now lie; on damage the assembly holds a part of the
    content, and must be dropped. A frame may be a header block stored
    against a base: dedup stores equal bytes once, whatever their role
    in each instance."""
    if header.codec in _PLANES_CODECS:
        _planes_onto(header, raw_header, payload, where, assembly)
        return
    _check_payload(header, raw_header, payload, where)
    if header.codec is Codec.ZSTD_BASE:
        content = _against_base(header, payload, where, base)
    else:
        content = _decompress(header, payload, where)
    written = assembly.append(content)
    _check_digest(header, written, where)


def _planes_onto(header: BlockHeader, raw_header: bytes, payload: Buffer,
                 where: str, assembly: FileAssembly) -> None:
    _check_stored_length(header, payload, where)
    if header.raw_length > assembly.size - assembly.filled:
        # The header's length is only trusted once its CRC32 holds, and
        # the scratch buffer is sized by it: a damaged length must not
        # size an allocation. A block that cannot fit takes the checks
        # in order (the CRC first) and fails there, or when it does not
        # fit.
        _check_payload(header, raw_header, payload, where)
        raise OverflowError(
            f"block at {where} holds {header.raw_length} bytes; "
            f"{assembly.size - assembly.filled} are left to fill")
    length = filters.planes16_length(header.raw_length)
    outcome, detail = assembly.append_planes16_block(
        _planes_decoder(), payload, zlib.crc32(raw_header[:_HEADER.size]),
        header.crc32, header.raw_length, header.digest,
        _filtered_scratch.view(length + 1))
    if outcome == PLANES_BAD_CRC:
        raise _crc_error(header.crc32, detail, where)
    if outcome == PLANES_BAD_ZSTD:
        raise _zstd_error(detail, where)
    if outcome == PLANES_BAD_LENGTH:
        raise _planes_length_error(header, detail, length, where)
    if outcome == PLANES_BAD_DIGEST:
        raise _digest_error(header, where)


def _check_stored_length(header: BlockHeader, payload: Buffer,
                         where: str) -> None:
    if len(payload) != header.stored_length:
        raise CorruptStoreError(
            f"block at {where} is truncated: expected "
            f"{header.stored_length} payload bytes, found {len(payload)}")


def _check_payload(header: BlockHeader, raw_header: bytes, payload: Buffer,
                   where: str) -> None:
    _check_stored_length(header, payload, where)
    crc = zlib.crc32(payload, zlib.crc32(raw_header[:_HEADER.size]))
    if crc != header.crc32:
        raise _crc_error(header.crc32, crc, where)


def check_stored(header: BlockHeader, raw_header: bytes, payload: Buffer,
                 where: str) -> None:
    """CorruptStoreError unless the payload is as long as the header says
    and the CRC32 over both holds: the bytes on disk are the bytes
    written, without the cost of decompressing and hashing them."""
    _check_payload(header, raw_header, payload, where)


def check_crc_of_raw(raw: Buffer, where: str) -> None:
    """CorruptStoreError unless the CRC32 at the end of the header of the
    block ``raw`` (its header and payload, read together) holds: for a
    header that cannot be parsed, to tell damage from a newer writer."""
    view = memoryview(raw)
    (stored,) = _CRC.unpack_from(view, _HEADER.size)
    computed = zlib.crc32(view[HEADER_SIZE:], zlib.crc32(view[:_HEADER.size]))
    if computed != stored:
        raise _crc_error(stored, computed, where)


def _check_digest(header: BlockHeader, content: Buffer, where: str) -> None:
    if hashlib.sha256(content).digest() != header.digest:
        raise _digest_error(header, where)


def _crc_error(stored: int, computed: int,
               where: str) -> CorruptStoreError:
    return CorruptStoreError(
        f"block at {where} fails its CRC32: stored {stored:08x}, "
        f"computed {computed:08x}")


def _digest_error(header: BlockHeader, where: str) -> CorruptStoreError:
    return CorruptStoreError(
        f"block at {where} does not match its SHA-256 "
        f"{header.digest.hex()}")


def _zstd_error(reason: object, where: str) -> CorruptStoreError:
    return CorruptStoreError(f"block at {where} does not decompress: "
                             f"{reason}")


def _planes_length_error(header: BlockHeader, found: int, length: int,
                         where: str) -> CorruptStoreError:
    shown = f"more than {length}" if found > length else f"{found}"
    return CorruptStoreError(
        f"block at {where} decompresses to {shown} bytes of filtered "
        f"samples; {header.raw_length} content bytes make {length}")


def _decompress(header: BlockHeader, payload: Buffer, where: str) -> bytes:
    """The content of a raw or zstd block (planes16 blocks are decoded
    natively, _planes_onto)."""
    if header.codec is Codec.RAW:
        # A copy: the payload may be a reused read buffer.
        content = bytes(payload)
    elif header.codec is Codec.ZSTD_RECORD:
        content = _unzstd(record_dictionary.decompressor(), payload,
                          header.raw_length, where)
    else:
        content = _unzstd(_decompressor(), payload, header.raw_length,
                          where)
    return _of_stated_length(header, content, where)


def _of_stated_length(header: BlockHeader, content: bytes,
                      where: str) -> bytes:
    if len(content) != header.raw_length:
        raise CorruptStoreError(
            f"block at {where} decodes to {len(content)} bytes; its "
            f"header says {header.raw_length}")
    return content


# Per thread: one decompression context and one default planes encoder (a
# context must not be shared by threads using it at once, and
# Archive.get_many reads on a pool).
_local = threading.local()
# The filtered samples of a planes16 block are only an intermediate.
_filtered_scratch = ThreadScratch()


def _decompressor() -> zstandard.ZstdDecompressor:
    found = getattr(_local, "decompressor", None)
    if found is None:
        found = _local.decompressor = zstandard.ZstdDecompressor()
    return found


def _planes_decoder() -> PlanesDecoder:
    found = getattr(_local, "planes_decoder", None)
    if found is None:
        found = _local.planes_decoder = PlanesDecoder()
    return found


def _unzstd(decompressor: zstandard.ZstdDecompressor, payload: Buffer,
            limit: int, where: str) -> bytes:
    """Decompress a payload of one zstd frame, refusing more than
    ``limit`` bytes (zstd_frames.py)."""
    try:
        return zstd_frames.content_of(decompressor, payload, limit)
    except zstd_frames.FrameDamage as exc:
        raise CorruptStoreError(f"block at {where} {exc}") from None


def check_magic(raw: bytes, magic: bytes, what: str) -> None:
    """Distinguish "not ours" from "damaged" for file headers."""
    if raw[:len(magic)] != magic:
        raise NotAStoreError(
            f"{what} does not start with the pacsstore magic {magic!r}")
