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
- against a base (0x02, index format 4): the segment and offset, the
  number (u32) of a base record of its series (record_bases.py), then
  the record as a zstd frame compressed against that base; or, when the
  record is the base's content itself, the CRC32 of that content.

A record is about 2 KB of JSON: in its JSON form it took a page of
overflow of its own in LMDB (4 KiB, often two), and the corpus's 1,778
records took 7.2 MB of the index's 9.5; compact, they fit in the leaf
pages beside their keys.

A record read back is checked field by field (``record_defect``, which
verify and a rebuild apply as well) before anything takes a field from
it, so that a damaged value is a DamagedRecord naming its instance, not
a KeyError or TypeError somewhere in a reader.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from typing import Any

from pacsstore.errors import CorruptStoreError
from pacsstore.store import record_dictionary, zstd_frames
from pacsstore.store.blocks import Codec, EncodedBlock
from pacsstore.store.record_bases import BaseDamage, BaseLookup

COMPACT = 0x01
AGAINST_BASE = 0x02
_JSON = ord("{")
_POSITION = struct.Struct("<BIQ")   # the form, segment, offset
_AGAINST = struct.Struct("<BIQI")   # ... and the base's number
_CRC = struct.Struct("<I")          # a reference's CRC32 of its content


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
        return compact(segment, offset, manifest.payload)
    # A manifest zstd did not shrink is kept raw (blocks.code); so is
    # its record.
    return with_manifest(encoded_record, segment, offset)


def against_base(segment: int, offset: int, base: int,
                 frame: bytes) -> bytes:
    """The index value of a record written against base ``base`` as
    ``frame``, a zstd frame."""
    return _AGAINST.pack(AGAINST_BASE, segment, offset, base) + frame


def reference_to_base(segment: int, offset: int, base: int,
                      content: bytes) -> bytes:
    """The index value of a record that is the content of base ``base``:
    the base's number, then the CRC32 of ``content``, so that a base
    number changed by damage, or given to another base since, is not
    read as this record (a frame carries zstd's checksum instead)."""
    return _AGAINST.pack(AGAINST_BASE, segment, offset, base) + \
        _CRC.pack(zlib.crc32(content))


def compact(segment: int, offset: int, frame: bytes) -> bytes:
    """The compact index value of a record whose frame against the
    record dictionary is ``frame``."""
    return _POSITION.pack(COMPACT, segment, offset) + frame


def encode_instance(record: dict[str, Any]) -> bytes:
    """The compact index value of ``record``, which names its manifest."""
    segment, offset = record["manifest"]
    return compact(segment, offset,
                   record_dictionary.compress(without_manifest(record)))


def without_manifest(record: dict[str, Any]) -> bytes:
    """``dumps`` of ``record`` without its manifest's place: what the
    manifest block holds."""
    return dumps({k: v for k, v in record.items() if k != "manifest"})


def decode_instance(raw: bytes, where: str,
                    bases: BaseLookup | None = None) -> dict[str, Any]:
    """The record an index value holds, in any form (``bases`` gives
    the bases of form 0x02); DamagedRecord naming ``where`` when it
    holds none."""
    form = raw[0] if raw else None
    if form == _JSON:
        record = loads(raw, where)
        if not isinstance(record, dict):
            raise DamagedRecord(where, "it does not hold a record")
        return _checked(record, where)
    if form == COMPACT:
        if len(raw) <= _POSITION.size:
            raise DamagedRecord(where, f"{len(raw)} bytes are too few")
        _, segment, offset = _POSITION.unpack_from(raw)
        content = _decompress(memoryview(raw)[_POSITION.size:], where)
    elif form == AGAINST_BASE:
        if len(raw) < _AGAINST.size:
            raise DamagedRecord(where, f"{len(raw)} bytes are too few")
        _, segment, offset, number = _AGAINST.unpack_from(raw)
        content = _against_base(number, memoryview(raw)[_AGAINST.size:],
                                bases, where)
    else:
        raise DamagedRecord(where, f"it is neither JSON nor compact "
                                   f"(first byte {raw[:1]!r})")
    record = loads(content, where)
    if not isinstance(record, dict) or "manifest" in record:
        raise DamagedRecord(where, "it does not hold a record without "
                                   "its manifest's place")
    record["manifest"] = [segment, offset]
    return _checked(record, where)


def instance_record(raw: bytes, uid: str,
                    bases: BaseLookup | None = None) -> dict[str, Any]:
    """The record of instance ``uid`` that the index value ``raw`` holds;
    DamagedRecord when it holds none, or the record of another instance
    (identity is not taken on trust: a damaged value must not give
    another patient's instance)."""
    where = f"instance {uid}"
    record = decode_instance(raw, where, bases)
    if record["sop_instance_uid"] != uid:
        raise DamagedRecord(where, f"it names SOP Instance UID "
                                   f"{record['sop_instance_uid']}")
    return record


# LMDB refuses keys above 511 bytes; UIDs and patient IDs are at most 64
# characters when conformant, so this leaves room and fails clearly.
MAX_KEY_BYTES = 400


def _are_hex_digests(values: list[Any]) -> bool:
    """Whether each of ``values`` is a SHA-256 in hex, as readers take
    it (bytes.fromhex); one C pass over them all, since a large record
    names thousands (a regular expression each took 0.8 ms for 2,048)."""
    if not all(type(v) is str and len(v) == 64 for v in values):
        return False
    try:
        named = bytes.fromhex("".join(values))
    except ValueError:
        return False
    return len(named) == 32 * len(values)   # fromhex skips whitespace


def _is_hex_digest(value: Any) -> bool:
    return _are_hex_digests([value])


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


# What each field readers take must be, in every record pacsstore has
# written.
_EXPECTATIONS: dict[str, Callable[[Any], bool]] = {
    "sop_instance_uid": lambda v: isinstance(v, str) and v != "",
    "patient": _is_text,
    "study": _is_text,
    "series": _is_text,
    "transfer_syntax": _is_text,
    "size": lambda v: isinstance(v, int) and not isinstance(v, bool)
    and v >= 0,
    "sha256": _is_hex_digest,
    "header": _is_hex_digest,
    "blocks": lambda v: isinstance(v, list) and _are_hex_digests(v),
    "attributes": lambda v: isinstance(v, dict),
}


def record_defect(record: Any) -> str | None:
    """Why an instance record (or manifest) cannot be used, or None.
    Records are written by pacsstore, but they are read back from disk
    and checked like any other input before their fields index
    anything."""
    if not isinstance(record, dict):
        return f"expected a JSON object, found {type(record).__name__}"
    for name, fits in _EXPECTATIONS.items():
        if not fits(record.get(name)):
            return f"field {name!r} is missing or malformed"
    for name in ("sop_instance_uid", "patient", "study", "series"):
        if len(record[name].encode("utf-8", "replace")) > MAX_KEY_BYTES:
            return f"field {name!r} is longer than an index key may be"
    return _cuts_defect(record.get("cuts"), len(record["blocks"]))


def _cuts_defect(cuts: Any, block_count: int) -> str | None:
    if not isinstance(cuts, list):
        return "field 'cuts' is missing or malformed"
    for cut in cuts:
        # Spelt out: a large record has a cut a frame, and a generator a
        # cut took 0.57 ms for 2,048 of them (this, 0.2 ms).
        if type(cut) is not list or len(cut) != 4:
            return f"cut {cut!r} is malformed or names a missing block"
        offset, length, block, within = cut
        if not (type(offset) is int and type(length) is int
                and type(block) is int and type(within) is int
                and offset >= 0 and length >= 0 and within >= 0
                and 0 <= block < block_count):
            return f"cut {cut!r} is malformed or names a missing block"
    return None


def _checked(record: dict[str, Any], where: str) -> dict[str, Any]:
    """``record``, once its fields are what readers take them to be: a
    damaged value must not surface as a KeyError or TypeError far from
    here."""
    defect = record_defect(record)
    if defect is not None:
        raise DamagedRecord(where, f"its {defect}")
    return record


def _decompress(frame: memoryview, where: str) -> bytes:
    try:
        return zstd_frames.content_of(record_dictionary.decompressor(),
                                      frame)
    except zstd_frames.FrameDamage as exc:
        raise DamagedRecord(where, f"it {exc}") from None


def _against_base(number: int, rest: memoryview,
                  bases: BaseLookup | None, where: str) -> bytes:
    """The content of a record of form 0x02 whose bytes after the struct
    are ``rest``: a reference's CRC32, or a frame against the base."""
    if bases is None:
        raise DamagedRecord(where, "it is written against a base record, "
                                   "and no base records were given")
    if len(rest) < _CRC.size:
        raise DamagedRecord(where, f"{_AGAINST.size + len(rest)} bytes "
                                   f"are too few")
    try:
        base = bases(number)
        if len(rest) > _CRC.size:
            return base.decompress(rest)
    except BaseDamage as exc:
        raise DamagedRecord(where, f"its {exc}") from None
    except zstd_frames.FrameDamage as exc:
        raise DamagedRecord(where, f"it {exc}") from None
    if _CRC.unpack(rest)[0] != base.content_crc:
        raise DamagedRecord(where, f"its base record {number} is not the "
                                   f"record it refers to (CRC32 differs)")
    return base.content


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
