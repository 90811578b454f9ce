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
