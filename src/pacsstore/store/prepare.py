"""Preparing an instance for the committer, in the caller's thread.

Everything about a store that does not touch the segments or the index
transaction happens here, before the instance joins a group commit:
parsing, splitting into blocks, digesting and compressing. hashlib and
zstandard release the GIL, so several threads preparing at once use both
cores, and the committer thread only appends and commits.

A block already named in the index is not compressed again: a digest
lookup in a read transaction is far cheaper than zstd. Blocks are never
removed from the index (a block whose last reference went away keeps its
entry with a count of zero until compaction), so "present" seen here is
still true when the committer applies the instance.

A large file is streamed instead of held (``plan_stream`` and
``prepare_stream``): parsed through a read-only mapping, then read a
chunk of frames at a time with positional reads, each chunk digested,
compressed and written to the instance's own segment files
(segments.StreamSegments) from the same bytes, so that what is stored
is what was digested, in memory bounded by the chunk.
"""

from __future__ import annotations

import functools
import hashlib
import mmap
import os
import struct
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from collections.abc import Callable, Iterator
from typing import Any

import zstandard

from pacsstore import parsing
from pacsstore._digests import sha256_many
from pacsstore._filters import PlanesEncoder
from pacsstore.errors import MalformedDicomError, NotStorableError
from pacsstore.store import blocks, layout
from pacsstore.store.bases import HeaderBases
from pacsstore.store.blocks import Codec, EncodedBlock, Kind
from pacsstore.store.index import Index
from pacsstore.store.records import MAX_KEY_BYTES, dumps
from pacsstore.store.segments import StreamSegments

# A cut in the content digest: offset in the dataset, length, block,
# offset in the block.
_CUT = struct.Struct("<QQQQ")
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
DEFLATED = "1.2.840.10008.1.2.1.99"
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_META_SOP_CLASS = 0x00020002
_META_SOP_INSTANCE = 0x00020003
_SYNTAX_ELEMENT = b"\x02\x00\x10\x00UI"
# A large file's pixel data is read, digested, compressed and written
# this many bytes at a time (whole frames; a larger frame alone), which
# bounds the memory a store of it takes, whatever the file's size.
STREAM_CHUNK = 8 << 20


@dataclass(frozen=True)
class PlacedBlock:
    """A block of a large instance, already written by its stream: what
    the index entry records of it."""

    digest: bytes
    kind: Kind
    codec: int
    raw_length: int
    stored_length: int
    file: int      # the stream's file; its segment number comes at commit
    offset: int

    @property
    def total_length(self) -> int:
        return blocks.HEADER_SIZE + self.stored_length


@dataclass(frozen=True)
class Unnamed:
    """What prepare(code=False) leaves of an instance for
    code_together, which names and codes a chunk of them at once: its
    bytes, split into blocks, and where its dataset starts."""

    buffer: memoryview
    parts: layout.Split
    transfer_syntax: str
    dataset_offset: int


@dataclass
class Prepared:
    """An instance ready to commit: its record (without the index-only
    fields) and the blocks the index did not have: compressed in memory
    (``encoded``), or, for a large instance, already written to its
    ``stream``'s segments (``placed``)."""

    uid: str
    record: dict[str, Any]
    digests: list[bytes]            # header block first, then frames
    raw_lengths: list[int]
    kinds: list[Kind]
    encoded: dict[bytes, EncodedBlock] = field(default_factory=dict)
    placed: dict[bytes, PlacedBlock] = field(default_factory=dict)
    stream: StreamSegments | None = None
    # The record, final once prepared, encoded (records.dumps), and the
    # manifest block of it: made here, on the preparing threads, rather
    # than in the committer, which every instance waits on in turn.
    encoded_record: bytes = b""
    manifest: EncodedBlock | None = None
    # Left by prepare(code=False) for Preparer.code_together: the
    # instance still to name (its digests, and the record's), to code,
    # and to encode with its manifest.
    unnamed: Unnamed | None = None
    # The content of each block coded against a base (the header, or a
    # frame of the same bytes as a header coded so): the committer codes
    # it alone instead if that base is not stored by then
    # (store/bases.py).
    against_base: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.record["size"]

    @property
    def pending_bytes(self) -> int:
        manifest = self.manifest.total_length if self.manifest else 0
        return manifest + sum(b.total_length for b in self.encoded.values())

    @property
    def held_bytes(self) -> int:
        """Memory this instance holds until it commits: its input and
        encoded blocks; a streamed one holds neither."""
        if self.stream is not None:
            return self.pending_bytes
        return self.size + self.pending_bytes


# A caller that waits on one instance (Archive.store, a C-STORE on one
# association) would leave the second core idle while it prepares. From
# this size on, the digests (every block's, and the whole file's) are
# taken on another thread while the caller compresses every block, which
# takes a CT slice from two SHA-256 passes plus zstd to the longer of
# the two. Below it the hand-off costs more than it hides. store_many
# keeps every core busy on its own: its large items digest in place,
# before they compress only what the index lacks, and its small ones a
# chunk at a time (code_together).
DIGEST_ASIDE_BYTES = 256 << 10
# Threads of zstandard's own that code_together compresses on. One: it
# runs while the committer's thread takes the other core.
TOGETHER_THREADS = 1
# The record's digest while it is being taken aside.
_PENDING = "pending"


@dataclass(frozen=True)
class _Names:
    """What the digest thread returns: the whole file's SHA-256 and the
    digest of each block (header block first)."""

    sha256: str
    blocks: list[bytes]


def _names_of(buffer: memoryview, parts: layout.Split) -> _Names:
    digests = [blocks.digest(c) for c in (parts.header, *parts.blocks)]
    # Without cuts the header block is the whole file, so its digest is
    # the file's SHA-256 as well: one pass over the bytes fewer.
    whole = (hashlib.sha256(buffer).hexdigest() if parts.cuts
             else digests[0].hex())
    return _Names(whole, digests)


class Preparer:
    """Turns bytes into Prepared instances; one per Archive, thread-safe
    (each thread gets its own zstd compressor)."""

    def __init__(self, index: Index, compression_level: int) -> None:
        self._index = index
        self._level = compression_level
        self._bases = HeaderBases(compression_level)
        self._local = threading.local()
        self._aside: ThreadPoolExecutor | None = None
        self._aside_lock = threading.Lock()
        self._aside_busy = False
        self._closed = False

    def close(self) -> None:
        """Stop the thread that takes digests aside; a prepare still
        running afterwards takes its digests in place."""
        with self._aside_lock:
            self._closed = True
            pool, self._aside = self._aside, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _names_aside(self, buffer: memoryview,
                     parts: layout.Split) -> Future[_Names] | None:
        """The digests of ``parts`` and ``buffer``, taken on a thread of
        this preparer's own; None when that thread is already busy with
        another instance (several associations at once keep the cores
        busy without it, and queueing behind one another would only add
        to each one's wait) or the preparer is closed."""
        with self._aside_lock:
            if self._closed or self._aside_busy:
                return None
            if self._aside is None:
                self._aside = ThreadPoolExecutor(
                    1, thread_name_prefix="pacsstore-digest")
            self._aside_busy = True
            return self._aside.submit(self._names_then_free, buffer, parts)

    def _names_then_free(self, buffer: memoryview,
                         parts: layout.Split) -> _Names:
        # Free before the result is set, so that the caller, once it has
        # the result, finds the thread free for its next instance.
        try:
            return _names_of(buffer, parts)
        finally:
            with self._aside_lock:
                self._aside_busy = False

    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(
                level=self._level, write_content_size=True)
            self._local.compressor = compressor
        return compressor

    def _planes_encoder(self) -> PlanesEncoder:
        encoder = getattr(self._local, "planes_encoder", None)
        if encoder is None:
            encoder = blocks.planes16_encoder(self._level)
            self._local.planes_encoder = encoder
        return encoder

    def prepare(self, buffer: bytes | memoryview, *,
                source_ae: str | None = None,
                refuse_truncated: bool = False,
                digest_aside: bool = False,
                code: bool = True) -> Prepared:
        """``digest_aside`` is for a caller that waits on this one
        instance (see DIGEST_ASIDE_BYTES). ``code=False`` stops short of
        the digests and the compression: code_together finishes many
        such instances at once."""
        buffer = _byte_view(buffer)
        header = parsing.read_header(buffer)
        result, attributes = header.result, dict(header.attributes)
        if refuse_truncated and result.truncated:
            raise MalformedDicomError(
                f"the dataset ends inside an element: its last length "
                f"runs past the {len(buffer)} bytes received",
                offset=result.end_offset)
        uid = _require_uid(buffer, result, attributes)
        _require_ascii_syntax(buffer, result)
        deflated = result.transfer_syntax == DEFLATED
        parts = layout.split(buffer, result.pixel, deflated)
        aside = None
        if digest_aside and code and len(buffer) >= DIGEST_ASIDE_BYTES:
            aside = self._names_aside(buffer, parts)
        make_record = functools.partial(_record, buffer, result, attributes,
                                        parts, source_ae)
        if not code:
            return _left_unnamed(uid, make_record(sha256=_PENDING), buffer,
                                 parts, result)
        coded = None
        if aside is None:
            prepared = _named_in_place(uid, make_record, parts)
        else:
            prepared, coded = self._named_while_coding(
                uid, make_record, parts, aside)
        prepared.record["content_sha256"] = _content_digest(
            parts, prepared.digests[1:], result.transfer_syntax,
            result.dataset_offset)
        self._compress_missing(prepared, parts, coded)
        return self._with_manifest(prepared)

    def code_together(self, items: list[Prepared]) -> None:
        """Finish what prepare(code=False) left of ``items``: name them
        (every digest of the chunk in one call, _name_together), compress
        the blocks left to code (a block several of them have, once; a
        frame the index has, not at all), and encode each record and its
        manifest block.

        The digests take one call and the compression two, none of them
        holding the GIL (frames for the planes16 filter aside, one call
        each: blocks.encode_together), so that another thread's Python
        (store_many's committer, committing the chunk before) runs all
        the while."""
        items = [p for p in items if p.unnamed is not None]
        _name_together(items)
        present = self._frames_present(items)
        headers = self._headers_against_bases(items)
        wanted: dict[bytes, blocks.Unencoded] = {}
        for prepared in items:
            for block in _blocks_to_code(prepared):
                if block.name not in present and block.name not in headers:
                    wanted.setdefault(block.name, block)
        manifests = []
        for prepared in items:
            prepared.encoded_record = _record_bytes(prepared)
            manifests.append(blocks.Unencoded(
                Kind.MANIFEST, blocks.digest(prepared.encoded_record),
                prepared.encoded_record))
        encoded = blocks.encode_together(
            [*wanted.values(), *manifests], compressor=self._compressor(),
            threads=TOGETHER_THREADS, planes_encoder=self._planes_encoder())
        by_name = {**headers, **dict(zip(wanted, encoded))}
        for prepared, manifest in zip(items, encoded[len(wanted):]):
            prepared.encoded = {name: by_name[name]
                                for name in prepared.digests
                                if name in by_name}
            _keep_against_base(prepared, _unnamed(prepared).parts)
            prepared.manifest = manifest
            prepared.unnamed = None

    def _headers_against_bases(self, items: list[Prepared]
                               ) -> dict[bytes, EncodedBlock]:
        """The header blocks of ``items`` that their series' bases code
        (store/bases.py), one by one; the rest are coded with the chunk,
        and become bases themselves. In order, so that an instance can
        take the base of one before it in the chunk."""
        coded: dict[bytes, EncodedBlock] = {}
        seen: set[bytes] = set()
        for prepared in items:
            name, content = prepared.digests[0], _unnamed(prepared).parts.header
            if name in seen:
                continue
            seen.add(name)
            found = self._bases.code(prepared.record, name, content,
                                     functools.partial(
                                         blocks.code, Kind.HEADER, content,
                                         compressor=self._compressor()))
            if found is not None:
                coded[name] = blocks.seal(Kind.HEADER, name, len(content),
                                          found)
        return coded

    def _frames_present(self, items: list[Prepared]) -> set[bytes]:
        """The frames of ``items`` that the index has, looked up in one
        read transaction. Only frames: a header block is the index's
        only when its instance was sent before, and compressing it again
        costs less than the lookups would beside the committer's Python,
        each of which waits for the GIL."""
        frames = {name for prepared in items for name in prepared.digests[1:]}
        if not frames:
            return set()
        with self._index.read() as txn:
            return {name for name in frames
                    if self._index.block(txn, name) is not None}

    def _named_while_coding(self, uid: str,
                            make_record: Callable[..., dict[str, Any]],
                            parts: layout.Split, aside: Future[_Names]
                            ) -> tuple[Prepared, list[blocks.Coded]]:
        """The blocks named by the digest thread, and every block coded
        by this one meanwhile."""
        record = make_record(sha256=_PENDING)
        coded = self._code_all(record, parts)
        names = aside.result()
        record["sha256"] = names.sha256
        return _blocks_of(uid, record, parts, names.blocks), coded

    def _with_manifest(self, prepared: Prepared) -> Prepared:
        """Encode the finished record, and its manifest block."""
        prepared.encoded_record = _record_bytes(prepared)
        prepared.manifest = blocks.encode(
            Kind.MANIFEST, prepared.encoded_record,
            compressor=self._compressor())
        return prepared

    def _code_all(self, record: dict[str, Any],
                  parts: layout.Split) -> list[blocks.Coded]:
        """Every block of ``parts`` coded, before it is known which ones
        the index has: compressing a block the index turns out to hold
        costs CPU only, and only when an instance is sent again."""
        compressor = self._compressor()
        planes = self._planes_encoder()
        sample_bytes = _sample_bytes(record)
        kinds = _kinds_of(parts)
        header = self._header_coded(record, blocks.digest(parts.header),
                                    parts.header)
        return [header, *(blocks.code(kind, content, compressor=compressor,
                                      sample_bytes=sample_bytes,
                                      planes_encoder=planes)
                          for kind, content in zip(kinds[1:], parts.blocks))]

    def _header_coded(self, record: dict[str, Any], name: bytes,
                      content: blocks.Buffer) -> blocks.Coded:
        """The header block coded against its series' base, or alone
        (store/bases.py)."""
        alone = functools.partial(blocks.code, Kind.HEADER, content,
                                  compressor=self._compressor())
        return self._bases.code(record, name, content, alone) or alone()

    def code_alone(self, kind: Kind, name: bytes, content: blocks.Buffer,
                   base: bytes) -> EncodedBlock:
        """The block ``name`` (a header) coded alone after all: the
        committer found its base ``base`` not stored (store/bases.py),
        and it is forgotten as a base."""
        self._bases.forget(base)
        return blocks.encode(kind, content, compressor=self._compressor(),
                             name=name)

    def _compress_missing(self, prepared: Prepared, parts: layout.Split,
                          coded: list[blocks.Coded] | None = None, *,
                          bases: bool = True) -> None:
        """Put into ``prepared.encoded`` the blocks the index lacks:
        sealed from ``coded`` when the caller coded them already, else
        compressed now; the header block against its series' base
        unless ``bases`` is false."""
        contents = [parts.header, *parts.blocks]
        with self._index.read() as txn:
            missing = [i for i, d in enumerate(prepared.digests)
                       if self._index.block(txn, d) is None]
        compressor = self._compressor()
        planes = self._planes_encoder()
        sample_bytes = _sample_bytes(prepared.record)
        for i in missing:
            name, kind = prepared.digests[i], prepared.kinds[i]
            if name in prepared.encoded:
                continue
            if coded is not None:
                block = blocks.seal(kind, name, len(contents[i]), coded[i])
            elif kind is Kind.HEADER and bases:
                block = blocks.seal(kind, name, len(contents[i]),
                                    self._header_coded(prepared.record, name,
                                                       contents[i]))
            else:
                block = blocks.encode(kind, contents[i],
                                      compressor=compressor, name=name,
                                      sample_bytes=sample_bytes,
                                      planes_encoder=planes)
            prepared.encoded[name] = block
        _keep_against_base(prepared, parts)

    def plan_stream(self, fd: int, name: str) -> StreamPlan | None:
        """Parse a large file through a read-only mapping, which brings
        in only the pages the walk reads (the elements, not the pixel
        values); None when its layout needs the whole file in memory.
        ``name`` is the file's name for messages."""
        stat = os.fstat(fd)
        try:
            mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            # Empty, or on a file system that cannot map it: read whole.
            return None
        with mapped:
            view = memoryview(mapped)
            try:
                return _plan(view, stat, name)
            finally:
                view.release()

    def prepare_stream(self, fd: int, plan: StreamPlan,
                       stream: StreamSegments) -> Prepared:
        """Prepare a planned file a chunk of frames at a time: each chunk
        is read once, and the same bytes are digested (each frame, and
        the whole file), compressed when the index lacks them and
        written to ``stream``, which is synced before this returns. The
        record is the one ``prepare`` gives for the same bytes."""
        parts = plan.parts
        digests: list[bytes] = [b""] * (len(parts.cuts) + 1)
        placed: dict[bytes, PlacedBlock] = {}
        whole = _WholeFile(parts.header, plan.name)
        for cuts in _chunks(parts.cuts):
            contents = whole.read_frames(fd, cuts)
            for cut, content in zip(cuts, contents):
                digests[cut.block + 1] = blocks.digest(content)
            self._write_new(plan.record, [plan.kind] * len(cuts), contents,
                            [digests[c.block + 1] for c in cuts], placed,
                            stream)
        digests[0] = blocks.digest(parts.header)
        self._write_new(plan.record, [Kind.HEADER], [parts.header],
                        digests[:1], placed, stream)
        sha256 = whole.finish()
        _check_unchanged(fd, plan.stat, plan.name)
        stream.sync()
        return self._with_manifest(
            _streamed(plan, digests, sha256, placed, stream))

    def _write_new(self, record: dict[str, Any], kinds: list[Kind],
                   contents: list[bytes | memoryview], names: list[bytes],
                   placed: dict[bytes, PlacedBlock],
                   stream: StreamSegments) -> None:
        """Compress the blocks of ``contents`` that neither the index nor
        this stream has yet, and append them to the stream."""
        fresh = [i for i, name in enumerate(names) if name not in placed]
        if not fresh:
            return
        # _compress_missing works on a Prepared and its Split: give it
        # this chunk as one, so the index lookup and the codec choice
        # are the same as for an instance held in memory.
        chunk = Prepared("", record, [names[i] for i in fresh],
                         [len(contents[i]) for i in fresh],
                         [kinds[i] for i in fresh])
        picked = [contents[i] for i in fresh]
        # A large instance's header is not coded against a base: it lies
        # in the stream's own segments, and is rarely one of a series.
        self._compress_missing(chunk, layout.Split(
            picked[0], picked[1:], [], record["layout"], len(picked),
            record["frame_bits"]), bases=False)
        for block in chunk.encoded.values():
            file, offset = stream.append(block)
            placed[block.digest] = PlacedBlock(
                block.digest, block.kind, block.codec, block.raw_length,
                len(block.payload), file, offset)


def _keep_against_base(prepared: Prepared, parts: layout.Split) -> None:
    """Keep a copy of the content of each block coded against a base
    (Prepared.against_base)."""
    for name, content in zip(prepared.digests, [parts.header, *parts.blocks]):
        block = prepared.encoded.get(name)
        if block is not None and block.codec is Codec.ZSTD_BASE:
            prepared.against_base.setdefault(name, bytes(content))


def _record_bytes(prepared: Prepared) -> bytes:
    """The finished record, encoded."""
    if "manifest" in prepared.record:
        raise ValueError("a prepared record has no manifest position "
                         "yet; the committer gives it one")
    return dumps(prepared.record)


def _sample_bytes(record: dict[str, Any]) -> int:
    """The sample size to hint to blocks.encode for the frame blocks: 2
    for native little-endian frames of 16-bit samples, else 1 (no
    filter). Encapsulated fragments are already compressed; big-endian
    samples would put the noisy byte in the wrong plane (the filter would
    still invert exactly, it would only compress worse)."""
    little_endian_native = (record["layout"] == layout.NATIVE
                            and record["transfer_syntax"] != _BIG_ENDIAN)
    bits = record["attributes"].get("BitsAllocated")
    return 2 if little_endian_native and bits == 16 else 1


@dataclass
class StreamPlan:
    """A large file, parsed: its record so far (no digests yet), and its
    header block and cuts (the frame bytes are read while streaming)."""

    name: str
    stat: os.stat_result
    uid: str
    record: dict[str, Any]
    parts: layout.Split
    transfer_syntax: str
    dataset_offset: int
    kind: Kind


def _plan(view: memoryview, stat: os.stat_result,
          name: str) -> StreamPlan | None:
    header = parsing.read_header(view)
    result, attributes = header.result, dict(header.attributes)
    uid = _require_uid(view, result, attributes)
    _require_ascii_syntax(view, result)
    if result.transfer_syntax == DEFLATED or \
            not _streamable_pixel(result.pixel):
        return None
    parts = layout.split(view, result.pixel, False)
    by_block = {cut.block for cut in parts.cuts if not cut.block_offset}
    streamable = len(by_block) == len(parts.cuts) == len(parts.blocks)
    for block in parts.blocks:
        if isinstance(block, memoryview):
            block.release()
    parts.blocks = []
    if not streamable:
        return None
    record = _record(view, result, attributes, parts, None, sha256="")
    return StreamPlan(name, stat, uid, record, parts,
                      result.transfer_syntax, result.dataset_offset,
                      Kind.FRAME)


def _streamable_pixel(pixel: Any) -> bool:
    """Whether every frame block is one range of the file: native frames
    that are byte aligned, or encapsulated frames of one fragment each.
    (A bit-packed value is one block; a frame of several fragments is
    their concatenation: both are held whole.)"""
    if pixel is None:
        return False
    if pixel.encapsulated:
        return all(count == 1 for count in pixel.frame_fragment_count)
    return not pixel.frame_bits % 8


def _chunks(cuts: list[layout.Cut]) -> Iterator[list[layout.Cut]]:
    """The cuts, in file order, in runs of about STREAM_CHUNK bytes."""
    run: list[layout.Cut] = []
    size = 0
    for cut in cuts:
        run.append(cut)
        size += cut.length
        if size >= STREAM_CHUNK:
            yield run
            run, size = [], 0
    if run:
        yield run


class _WholeFile:
    """The SHA-256 of the whole file, fed in file order: the runs between
    cuts from the header block (the bytes stored), the cuts from the
    frame bytes read (the bytes stored)."""

    def __init__(self, header: bytes, name: str) -> None:
        self._header = memoryview(header)
        self._name = name
        self._sha = hashlib.sha256()
        self._position = 0     # file offset of the next byte to hash
        self._consumed = 0     # header block bytes hashed

    def read_frames(self, fd: int, cuts: list[layout.Cut]
                    ) -> list[memoryview]:
        """Read the span of ``cuts`` once; hash it in order; return each
        cut's bytes. The header runs inside the span (item tags) must
        read as the header block holds them, or the file changed."""
        start = cuts[0].file_offset
        end = cuts[-1].file_offset + cuts[-1].length
        data = memoryview(_read_exactly(fd, start, end - start, self._name))
        contents = []
        for cut in cuts:
            before = self._position
            run = self._header_run(cut.file_offset)
            if before >= start and data[before - start:
                                        cut.file_offset - start] != run:
                raise _changed(self._name, f"the bytes at offset {before}")
            content = data[cut.file_offset - start:
                           cut.file_offset - start + cut.length]
            self._sha.update(content)
            self._position = cut.file_offset + cut.length
            contents.append(content)
        return contents

    def _header_run(self, up_to: int) -> memoryview:
        gap = up_to - self._position
        run = self._header[self._consumed:self._consumed + gap]
        self._sha.update(run)
        self._consumed += gap
        return run

    def finish(self) -> str:
        self._sha.update(self._header[self._consumed:])
        return self._sha.hexdigest()


def _changed(name: str, what: str) -> NotStorableError:
    return NotStorableError(
        f"{name} changed while it was being stored ({what} differ from "
        f"what was read before); nothing was stored, store it again once "
        f"it is complete")


def _read_exactly(fd: int, offset: int, length: int, name: str) -> bytearray:
    data = bytearray(length)
    view = memoryview(data)
    done = 0
    while done < length:
        got = os.preadv(fd, [view[done:]], offset + done)
        if not got:
            raise _changed(name, f"it ends at offset {offset + done}, "
                                 f"inside the {length} bytes from offset "
                                 f"{offset} that it held; the size and "
                                 f"contents")
        done += got
    return data


def _check_unchanged(fd: int, before: os.stat_result, name: str) -> None:
    """No writer touched the file while it was read: its size and
    modification and change times are the ones it was opened with."""
    now = os.fstat(fd)
    fields = ("st_size", "st_mtime_ns", "st_ctime_ns")
    if any(getattr(now, f) != getattr(before, f) for f in fields):
        raise _changed(name, "its size or modification time")


def _streamed(plan: StreamPlan, digests: list[bytes], sha256: str,
              placed: dict[bytes, PlacedBlock],
              stream: StreamSegments) -> Prepared:
    record, parts = plan.record, plan.parts
    record["sha256"] = sha256
    record["header"] = digests[0].hex()
    record["blocks"] = [d.hex() for d in digests[1:]]
    record["content_sha256"] = _content_digest(
        parts, digests[1:], plan.transfer_syntax, plan.dataset_offset)
    lengths = [0] * len(parts.cuts)
    for cut in parts.cuts:
        lengths[cut.block] = cut.length
    kinds = [Kind.HEADER] + [plan.kind] * len(parts.cuts)
    return Prepared(plan.uid, record, digests, [len(parts.header), *lengths],
                    kinds, placed=placed, stream=stream)


def _byte_view(buffer: bytes | memoryview) -> memoryview:
    """The input as a flat view of bytes. The parser's offsets count
    bytes, while a memoryview of another format or shape (a numpy array,
    ``cast("H")``) indexes and measures in items: sliced as it is, it
    would cut the wrong bytes and record the wrong size."""
    view = memoryview(buffer)
    if view.format == "B" and view.ndim == 1 and view.c_contiguous:
        return view
    if not view.c_contiguous:
        raise NotStorableError(
            "store() needs a contiguous buffer; this memoryview has "
            f"strides {view.strides} (copy it with bytes() first)")
    return view.cast("B")


def _meta_text(result: Any, tag: int) -> str:
    raw = result.meta.get(tag, b"")
    return raw.rstrip(b"\x00 ").decode("ascii", "replace")


def _require_ascii_syntax(buffer: memoryview, result: Any) -> None:
    """Refuse a Transfer Syntax UID (0002,0010) with bytes outside ASCII
    (the walker reads them as U+FFFD): no UID has them, and the content
    digest names the syntax in ASCII. Any other unknown syntax is read
    as explicit VR little endian, as the walker reads it."""
    if result.transfer_syntax.isascii():
        return
    meta = bytes(buffer[:result.dataset_offset])
    found = meta.find(_SYNTAX_ELEMENT)  # the meta is explicit VR LE
    raise MalformedDicomError(
        f"the Transfer Syntax UID of the file meta is not a UID: "
        f"{result.transfer_syntax!r} holds bytes outside ASCII",
        tag=0x00020010, offset=found if found >= 0 else 0)


def _require_uid(buffer: memoryview, result: Any,
                 attributes: dict[str, Any]) -> str:
    """The UID to file the instance under: the dataset's own (0008,0018).

    The file meta's Media Storage SOP Instance UID (0002,0003) is not
    enough. It says what the file claims to hold; filed under it, an
    empty dataset, a meta group followed by noise, or the first bytes of
    a file cut short would be acknowledged as that instance, and under
    ``reject`` would keep the real one out for good.
    """
    if _meta_text(result, _META_SOP_CLASS) == MEDIA_STORAGE_DIRECTORY:
        raise NotStorableError(
            "a DICOMDIR (Media Storage Directory Storage) indexes a file "
            "set and is not an instance; the archive stores the instances "
            "it lists, not the directory")
    uid = attributes.get("SOPInstanceUID")
    if isinstance(uid, tuple):
        values = "\\".join(uid)
        raise NotStorableError(
            f"the dataset's SOP Instance UID (0008,0018) has {len(uid)} "
            f"values ({values}); an instance has exactly one")
    if isinstance(uid, str) and uid:
        if len(uid.encode()) > MAX_KEY_BYTES:
            raise NotStorableError(
                f"SOP Instance UID (0008,0018) is {len(uid)} characters; "
                f"a UID has at most 64")
        return uid
    _refuse_not_dicom(buffer, result, attributes)
    raise NotStorableError(_no_uid_reason(buffer, result, attributes))


def _found_at(buffer: memoryview, offset: int) -> str:
    """What lies at ``offset``, for a message: a few bytes in hex, and as
    text when they are printable."""
    head = bytes(buffer[offset:offset + 8])
    if not head:
        return "nothing (the input ends there)"
    printable = all(0x20 <= b < 0x7F for b in head)
    shown = f" ({head.decode('ascii')!r})" if printable else ""
    return f"{head.hex(' ')}{shown}"


def _refuse_not_dicom(buffer: memoryview, result: Any,
                      attributes: dict[str, Any]) -> None:
    """Refuse input in which the walk found nothing of DICOM: no
    preamble, no file meta, no attribute. The walker reads whatever
    lacks a preamble as a bare Implicit VR dataset, so a text file or
    random bytes would otherwise be reported as a dataset without a SOP
    Instance UID."""
    if result.has_preamble or result.meta or attributes or result.pixel:
        return
    if not len(buffer):
        raise MalformedDicomError("not a DICOM file: the input is empty")
    raise MalformedDicomError(
        f"not a DICOM file: expected a Part 10 preamble ('DICM' at offset "
        f"128) or a dataset starting at offset 0, found "
        f"{_found_at(buffer, 0)}", offset=0)


def _no_uid_reason(buffer: memoryview, result: Any,
                   attributes: dict[str, Any]) -> str:
    reason = ("the dataset has no SOP Instance UID (0008,0018), so it is "
              "not an instance (an empty dataset, a saved query or the "
              "start of a file cut short)")
    meta_uid = _meta_text(result, _META_SOP_INSTANCE)
    if meta_uid:
        reason += (f"; the file meta names {meta_uid} in (0002,0003), but "
                   f"that alone does not make one")
    start = result.dataset_offset
    if start >= len(buffer):
        reason += f"; the dataset is empty (the input ends at offset {start})"
    elif not attributes and result.pixel is None:
        reason += (f"; its {len(buffer) - start} bytes hold none of the "
                   f"attributes of an instance, found "
                   f"{_found_at(buffer, start)} at offset {start}")
    return reason


def _text(attributes: dict[str, Any], keyword: str) -> str:
    value = attributes.get(keyword)
    if isinstance(value, (list, tuple)):
        value = "\\".join(str(v) for v in value)
    return "" if value is None else str(value)


# Values _jsonable returns as they are, by exact type (a subclass, such
# as bool, takes the full test).
_PLAIN = frozenset((str, int, float, type(None)))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (str, int, float)) or value is None:
        return value
    return str(value)


def _record(buffer: bytes | memoryview, result: Any,
            attributes: dict[str, Any], parts: layout.Split,
            source_ae: str | None, *,
            sha256: str | None = None) -> dict[str, Any]:
    """The instance record; ``sha256`` is the whole file's digest when
    the caller takes it (a streamed file is hashed as it is read)."""
    view = memoryview(buffer)
    pixel = result.pixel
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"):
        if len(_text(attributes, keyword).encode()) > MAX_KEY_BYTES:
            raise NotStorableError(
                f"{keyword} is longer than {MAX_KEY_BYTES} bytes; it "
                f"cannot be indexed")
    return {
        "v": 1,
        "sop_instance_uid": _text(attributes, "SOPInstanceUID"),
        "sop_class_uid": (_text(attributes, "SOPClassUID")
                          or _meta_text(result, _META_SOP_CLASS)),
        "transfer_syntax": result.transfer_syntax,
        "patient": _text(attributes, "PatientID"),
        "study": _text(attributes, "StudyInstanceUID"),
        "series": _text(attributes, "SeriesInstanceUID"),
        "size": len(view),
        "sha256": (hashlib.sha256(view).hexdigest() if sha256 is None
                   else sha256),
        "layout": parts.layout,
        "frames": parts.frame_count,
        "frame_bits": parts.frame_bits,
        "pixel_offset": None if pixel is None else pixel.element_offset,
        "cuts": [list(c) for c in parts.cuts],
        "source_ae": source_ae,
        # Most values are plain strings and integers already: they skip
        # the call (an instance's attributes are a few dozen of them).
        "attributes": {k: v if type(v) in _PLAIN else _jsonable(v)
                       for k, v in attributes.items()},
    }


def _content_digest(parts: layout.Split, frame_digests: list[bytes],
                    transfer_syntax: str, dataset_offset: int) -> str:
    """The identity of the dataset as sent, for the re-send test.

    Two sends are the same instance when their datasets are the same
    bytes in the same transfer syntax; the file meta in front does not
    count (the node writes a new one each time). The dataset's bytes are
    exactly its header part (no cut lies in the meta), the cuts relative
    to the dataset's start, and the frame blocks; hashing those, with
    the frame digests already taken, spares the pixel data a third pass
    of SHA-256 on the ingest path."""
    header = memoryview(parts.header)[dataset_offset:]
    return _content_identity(parts, hashlib.sha256(header).digest(),
                             frame_digests, transfer_syntax, dataset_offset)


def _content_identity(parts: layout.Split, header_digest: bytes,
                      frame_digests: list[bytes], transfer_syntax: str,
                      dataset_offset: int) -> str:
    """_content_digest, given the SHA-256 of the header block's bytes
    from the dataset's start (``header_digest``)."""
    identity = hashlib.sha256(transfer_syntax.encode("ascii") + b"\0")
    identity.update(header_digest)
    for cut in parts.cuts:
        identity.update(_CUT.pack(cut.file_offset - dataset_offset,
                                  cut.length, cut.block, cut.block_offset))
    for name in frame_digests:
        identity.update(name)
    return identity.hexdigest()


def _left_unnamed(uid: str, record: dict[str, Any], buffer: memoryview,
                  parts: layout.Split, result: Any) -> Prepared:
    """An instance prepared but for its digests and its compression,
    both left to code_together."""
    contents = [parts.header, *parts.blocks]
    return Prepared(uid, record, [], [len(c) for c in contents],
                    _kinds_of(parts),
                    unnamed=Unnamed(buffer, parts, result.transfer_syntax,
                                    result.dataset_offset))


def _name_together(items: list[Prepared]) -> None:
    """Name every instance of ``items`` (prepared with code=False): its
    blocks, and its record's digests (the whole file's, the content's),
    the SHA-256 passes of them all taken in one call.

    Each instance gives, in order: its blocks, the header block from
    the dataset's start (for the content digest) and, with cuts, the
    whole file; without cuts the header block is the whole file."""
    buffers: list[blocks.Buffer] = []
    for prepared in items:
        unnamed = _unnamed(prepared)
        parts = unnamed.parts
        buffers += [parts.header, *parts.blocks,
                    memoryview(parts.header)[unnamed.dataset_offset:]]
        if parts.cuts:
            buffers.append(unnamed.buffer)
    digests = iter(sha256_many(buffers))
    for prepared in items:
        unnamed = _unnamed(prepared)
        parts = unnamed.parts
        names = [next(digests) for _ in range(1 + len(parts.blocks))]
        header_digest = next(digests)
        whole = next(digests) if parts.cuts else names[0]
        record = prepared.record
        record["sha256"] = whole.hex()
        record["header"] = names[0].hex()
        record["blocks"] = [d.hex() for d in names[1:]]
        record["content_sha256"] = _content_identity(
            parts, header_digest, names[1:], unnamed.transfer_syntax,
            unnamed.dataset_offset)
        prepared.digests = names


def _unnamed(prepared: Prepared) -> Unnamed:
    if prepared.unnamed is None:
        raise ValueError(f"instance {prepared.uid} was not prepared with "
                         f"code=False, or was coded already")
    return prepared.unnamed


def _blocks_to_code(prepared: Prepared) -> Iterator[blocks.Unencoded]:
    """The blocks of an instance _name_together named, as
    encode_together takes them."""
    parts = _unnamed(prepared).parts
    sample_bytes = _sample_bytes(prepared.record)
    for kind, name, content in zip(prepared.kinds, prepared.digests,
                                   [parts.header, *parts.blocks]):
        yield blocks.Unencoded(kind, name, content, sample_bytes)


def _named_in_place(uid: str, make_record: Callable[..., dict[str, Any]],
                    parts: layout.Split) -> Prepared:
    # Without cuts the header block is the whole file, so the digest that
    # names it is the file's SHA-256 as well: one pass over the bytes
    # fewer for an instance without frames.
    known = None if parts.cuts else [blocks.digest(parts.header)]
    record = make_record(sha256=known[0].hex() if known else None)
    return _blocks_of(uid, record, parts, known)


def _kinds_of(parts: layout.Split) -> list[Kind]:
    """The kind of each block of ``parts``, the header block first."""
    kind = Kind.PIXELS if parts.layout == layout.BITPACKED else Kind.FRAME
    return [Kind.HEADER] + [kind] * len(parts.blocks)


def _blocks_of(uid: str, record: dict[str, Any], parts: layout.Split,
               known: list[bytes] | None = None) -> Prepared:
    """The blocks of ``parts``, named; ``known`` holds the first digests
    (the header block's, or every block's) when the caller took them."""
    contents = [parts.header, *parts.blocks]
    known = known or []
    digests = [*known, *(blocks.digest(c) for c in contents[len(known):])]
    record["header"] = digests[0].hex()
    record["blocks"] = [d.hex() for d in digests[1:]]
    return Prepared(uid, record, digests, [len(c) for c in contents],
                    _kinds_of(parts))
