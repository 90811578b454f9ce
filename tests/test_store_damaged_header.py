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


@pytest.mark.parametrize("bit", [20, 31, 40, 62])
def test_an_index_entry_claiming_a_huge_payload_is_corrupt_store(
        tmp_path, bit):
    """The same for the index's entry of the block: its stored length
    sizes the one read of header and payload, so a flipped high bit
    asked for up to exabytes (MemoryError, or 2 GB taken, in get and in
    verify) before the header could say otherwise. The segment's size
    bounds that read now."""
    data = corpus_bytes(CT_SMALL)
    entry_layout = struct.Struct("<IQQQBBI")
    store = tmp_path / "s"
    with Archive(store) as archive:
        uid = archive.store(data).sop_instance_uid
        name = bytes.fromhex(archive.record(uid)["blocks"][0])
        index = archive._index

        def damage(txn):
            fields = list(entry_layout.unpack(
                txn.get(name, db=index.db["blocks"])))
            fields[3] ^= 1 << bit   # the stored length
            txn.put(name, entry_layout.pack(*fields), db=index.db["blocks"])
        index.write(damage)
    with Archive(store, readonly=True) as archive:
        with pytest.raises(CorruptStoreError, match="stated length|payload"):
            archive.get(uid)
        assert "unreadable-instance" in {p.kind for p in
                                         archive.verify().problems}
