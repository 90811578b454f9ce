"""A block header damaged on disk is found out before its lengths are
trusted: the payload length it claims is checked against the index
before a buffer of that size is asked for."""

from __future__ import annotations

import struct

import pytest

from pacsstore import Archive, CorruptStoreError
from test_store_support import CT_SMALL, corpus_bytes

# Offset of the stored (payload) length in a block header.
STORED_LENGTH_AT = 48


@pytest.mark.parametrize("claimed", [1 << 40, (1 << 63) - 1])
def test_block_header_claiming_a_huge_payload_is_corrupt_store(
        tmp_path, claimed):
    data = corpus_bytes(CT_SMALL)
    with Archive(tmp_path / "s") as archive:
        uid = archive.store(data).sop_instance_uid
        name = bytes.fromhex(archive.record(uid)["blocks"][0])
        with archive._index.read() as txn:
            entry = archive._index.block(txn, name)
    segment = next((tmp_path / "s" / "segments").glob("*.seg"))
    raw = bytearray(segment.read_bytes())
    struct.pack_into("<Q", raw, entry.offset + STORED_LENGTH_AT, claimed)
    segment.write_bytes(bytes(raw))
    with Archive(tmp_path / "s", readonly=True) as archive:
        with pytest.raises(CorruptStoreError, match="payload"):
            archive.get(uid)


# Fields of a block entry in the index (format.md): segment, offset,
# raw length, stored length, kind, codec, reference count.
_ENTRY = struct.Struct("<IQQQBBI")
_OFFSET, _STORED_LENGTH = 1, 3


@pytest.mark.parametrize("field, bit, kind", [
    (_STORED_LENGTH, 20, "unreadable-instance"),
    (_STORED_LENGTH, 31, "unreadable-instance"),
    (_STORED_LENGTH, 40, "unreadable-instance"),
    (_STORED_LENGTH, 62, "block-entry"),
    (_OFFSET, 62, "block-entry"),
    (_OFFSET, 63, "block-entry"),
])
@pytest.mark.parametrize("block", ["header", "frame"])
def test_an_index_entry_placing_a_block_past_any_file_is_corrupt_store(
        tmp_path, field, bit, kind, block):
    """The same for the index's entry of the block: its stored length
    sizes the one read of header and payload, so a flipped high bit
    asked for up to exabytes (MemoryError, or 2 GB taken, in get and in
    verify) before the header could say otherwise; a flipped high bit of
    its offset reached preadv as an OverflowError. The segment's size
    bounds the read now, and an entry past any file is damaged."""
    data = corpus_bytes(CT_SMALL)
    store = tmp_path / "s"
    with Archive(store) as archive:
        uid = archive.store(data).sop_instance_uid
        record = archive.record(uid)
        name = bytes.fromhex(record["header"] if block == "header"
                             else record["blocks"][0])
        index = archive._index

        def damage(txn):
            fields = list(_ENTRY.unpack(txn.get(name, db=index.db["blocks"])))
            fields[field] ^= 1 << bit
            txn.put(name, _ENTRY.pack(*fields), db=index.db["blocks"])
        index.write(damage)
    with Archive(store, readonly=True) as archive:
        with pytest.raises(CorruptStoreError):
            archive.get(uid)
        assert kind in {p.kind for p in archive.verify().problems}
