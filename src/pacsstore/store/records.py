"""How the index encodes its records.

Every record is compact UTF-8 JSON (``dumps``), but for an instance
record, which the index may keep compressed.

An instance record is the content of its manifest block plus where that
block lies (``"manifest": [segment, offset]``, its last key). The index
keeps it in one of two forms, told apart by the first byte:

- JSON (``{``): ``dumps`` of the whole record. Every index before
  format version 3 holds only these, and they are still read.
- compact (0x01): the manifest's segment (u32) and offset (u64), then
  the record without them as a zstd frame compressed against the record
  dictionary (record_dictionary.py). That frame is byte for byte the
  payload of the manifest block (codec 4), so the committer puts what
  the preparing thread compressed and compresses nothing itself.

A record is about 2 KB of JSON: in its JSON form it took a page of
overflow of its own in LMDB (4 KiB, often two), and the corpus's 1,778
records took 7.2 MB of the index's 9.5; compact, they fit in the leaf
pages beside their keys.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from pacsstore.errors import CorruptStoreError
from pacsstore.store import record_dictionary, zstd_frames
from pacsstore.store.blocks import Codec, EncodedBlock

COMPACT = 0x01
_JSON = ord("{")
_POSITION = struct.Struct("<BIQ")   # the form, segment, offset


class DamagedRecord(CorruptStoreError):
    """An index record that does not decode; ``reason`` says why."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"index record {where} is damaged: {reason}")
        self.reason = reason


def instance_for_commit(encoded_record: bytes, manifest: EncodedBlock,
                        segment: int, offset: int) -> bytes:
    """The index value of a record prepared as ``encoded_record``
    (``dumps`` of it) whose manifest block is ``manifest``, written at
    ``segment`` and ``offset``."""
    if manifest.codec is Codec.ZSTD_RECORD:
        return _POSITION.pack(COMPACT, segment, offset) + manifest.payload
    # A manifest zstd did not shrink is kept raw (blocks.code); so is
    # its record.
    return with_manifest(encoded_record, segment, offset)


def encode_instance(record: dict[str, Any]) -> bytes:
    """The compact index value of ``record``, which names its manifest."""
    segment, offset = record["manifest"]
    rest = {k: v for k, v in record.items() if k != "manifest"}
    return _POSITION.pack(COMPACT, segment, offset) + \
        record_dictionary.compress(dumps(rest))


def decode_instance(raw: bytes, where: str) -> dict[str, Any]:
    """The record an index value holds, in either form; DamagedRecord
    naming ``where`` when it holds none."""
    form = raw[0] if raw else None
    if form == _JSON:
        record = loads(raw, where)
        if not isinstance(record, dict):
            raise DamagedRecord(where, "it does not hold a record")
        return _checked(record, where)
    if form != COMPACT:
        raise DamagedRecord(where, f"it is neither JSON nor compact "
                                   f"(first byte {raw[:1]!r})")
    if len(raw) <= _POSITION.size:
        raise DamagedRecord(where, f"{len(raw)} bytes are too few")
    _, segment, offset = _POSITION.unpack_from(raw)
    frame = memoryview(raw)[_POSITION.size:]
    record = loads(_decompress(frame, where), where)
    if not isinstance(record, dict) or "manifest" in record:
        raise DamagedRecord(where, "it does not hold a record without "
                                   "its manifest's place")
    record["manifest"] = [segment, offset]
    return _checked(record, where)


# The fields every instance record has had, which readers take without
# asking (verify.record_defect checks their values as well).
_FIELDS = frozenset(("sop_instance_uid", "patient", "study", "series",
                     "size", "sha256", "header", "blocks", "attributes",
                     "cuts"))


def _checked(record: dict[str, Any], where: str) -> dict[str, Any]:
    """``record``, once it has every field readers take from it: a
    damaged value must not surface as a KeyError far from here."""
    if not _FIELDS <= record.keys():
        missing = ", ".join(sorted(_FIELDS - record.keys()))
        raise DamagedRecord(where, f"it lacks the field(s) {missing}")
    return record


def _decompress(frame: memoryview, where: str) -> bytes:
    try:
        return zstd_frames.content_of(record_dictionary.decompressor(),
                                      frame,
                                      zstd_frames.MAX_EXPANSION * len(frame))
    except zstd_frames.FrameDamage as exc:
        raise DamagedRecord(where, f"it {exc}") from None


def with_manifest(encoded: bytes, segment: int, offset: int) -> bytes:
    """``dumps`` of a record once ``"manifest": [segment, offset]`` is
    added to it as its last key, from ``encoded``, the ``dumps`` of the
    record before."""
    if not (encoded.startswith(b"{") and encoded.endswith(b"}")) or \
            encoded == b"{}":
        raise ValueError("not the encoding of a record with keys")
    return b'%s,"manifest":[%d,%d]}' % (encoded[:-1], segment, offset)


# What json.dumps(record, separators=(",", ":"), ensure_ascii=False)
# builds on every call, built once; the bytes are the same. Records are
# trees our code builds, so the check for circular references is off.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False,
                            check_circular=False)


def dumps(record: dict[str, Any]) -> bytes:
    return _ENCODER.encode(record).encode("utf-8")


def loads(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise DamagedRecord(where, f"not JSON ({exc})") from None
    except RecursionError:
        # Arrays nested some thousands deep: no record is.
        raise DamagedRecord(where, "JSON nested too deep") from None
