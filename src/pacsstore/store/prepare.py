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
"""

from __future__ import annotations

import hashlib
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

import zstandard

from pacsstore import parsing
from pacsstore.errors import MalformedDicomError, NotStorableError
from pacsstore.store import blocks, layout
from pacsstore.store.blocks import EncodedBlock, Kind
from pacsstore.store.index import MAX_KEY_BYTES, Index, dumps

# A cut in the content digest: offset in the dataset, length, block,
# offset in the block.
_CUT = struct.Struct("<QQQQ")
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
DEFLATED = "1.2.840.10008.1.2.1.99"
_META_SOP_CLASS = 0x00020002
_META_SOP_INSTANCE = 0x00020003


@dataclass
class Prepared:
    """An instance ready to commit: its record (without the index-only
    fields) and the compressed blocks the index did not have."""

    uid: str
    record: dict[str, Any]
    digests: list[bytes]            # header block first, then frames
    raw_lengths: list[int]
    kinds: list[Kind]
    encoded: dict[bytes, EncodedBlock] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.record["size"]

    @property
    def pending_bytes(self) -> int:
        return sum(b.total_length for b in self.encoded.values())


class Preparer:
    """Turns bytes into Prepared instances; one per Archive, thread-safe
    (each thread gets its own zstd compressor)."""

    def __init__(self, index: Index, compression_level: int) -> None:
        self._index = index
        self._level = compression_level
        self._local = threading.local()

    def _compressor(self) -> zstandard.ZstdCompressor:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(
                level=self._level, write_content_size=True)
            self._local.compressor = compressor
        return compressor

    def prepare(self, buffer: bytes | memoryview, *,
                source_ae: str | None = None,
                refuse_truncated: bool = False) -> Prepared:
        buffer = _byte_view(buffer)
        header = parsing.read_header(buffer)
        result, attributes = header.result, dict(header.attributes)
        if refuse_truncated and result.truncated:
            raise MalformedDicomError(
                f"the dataset ends inside an element: its last length "
                f"runs past the {len(buffer)} bytes received",
                offset=result.end_offset)
        uid = _require_uid(buffer, result, attributes)
        deflated = result.transfer_syntax == DEFLATED
        parts = layout.split(buffer, result.pixel, deflated)
        record = _record(buffer, result, attributes, parts, source_ae)
        prepared = _blocks_of(uid, record, parts)
        record["content_sha256"] = _content_digest(
            parts, prepared.digests[1:], result.transfer_syntax,
            result.dataset_offset)
        self._compress_missing(prepared, parts)
        return prepared

    def _compress_missing(self, prepared: Prepared,
                          parts: layout.Split) -> None:
        contents = [parts.header, *parts.blocks]
        with self._index.read() as txn:
            missing = [i for i, d in enumerate(prepared.digests)
                       if self._index.block(txn, d) is None]
        compressor = self._compressor()
        for i in missing:
            name = prepared.digests[i]
            if name not in prepared.encoded:
                prepared.encoded[name] = blocks.encode(
                    prepared.kinds[i], contents[i], compressor=compressor,
                    name=name)

    def encode_manifest(self, record: dict[str, Any]) -> EncodedBlock:
        return blocks.encode(Kind.MANIFEST, dumps(record),
                             compressor=self._compressor())


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
            source_ae: str | None) -> dict[str, Any]:
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
        "sha256": hashlib.sha256(view).hexdigest(),
        "layout": parts.layout,
        "frames": parts.frame_count,
        "frame_bits": parts.frame_bits,
        "pixel_offset": None if pixel is None else pixel.element_offset,
        "cuts": [list(c) for c in parts.cuts],
        "source_ae": source_ae,
        "attributes": {k: _jsonable(v) for k, v in attributes.items()},
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
    identity = hashlib.sha256(transfer_syntax.encode("ascii") + b"\0")
    header = memoryview(parts.header)[dataset_offset:]
    identity.update(hashlib.sha256(header).digest())
    for cut in parts.cuts:
        identity.update(_CUT.pack(cut.file_offset - dataset_offset,
                                  cut.length, cut.block, cut.block_offset))
    for name in frame_digests:
        identity.update(name)
    return identity.hexdigest()


def _blocks_of(uid: str, record: dict[str, Any],
               parts: layout.Split) -> Prepared:
    contents = [parts.header, *parts.blocks]
    kind = Kind.PIXELS if parts.layout == layout.BITPACKED else Kind.FRAME
    kinds = [Kind.HEADER] + [kind] * len(parts.blocks)
    digests = [blocks.digest(c) for c in contents]
    record["header"] = digests[0].hex()
    record["blocks"] = [d.hex() for d in digests[1:]]
    return Prepared(uid, record, digests, [len(c) for c in contents], kinds)
