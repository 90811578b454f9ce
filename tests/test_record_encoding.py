"""The instance record is encoded once, on the preparing thread: the
committer adds the manifest's position to that encoding instead of
encoding the record again. The bytes must be those ``dumps`` gives."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacsstore import Archive
from pacsstore.store.blocks import Kind
from pacsstore.store.index import dumps, with_manifest
from pacsstore.synthetic import write_ct_series
from test_store_support import CT_SMALL, MR_SMALL, corpus_bytes

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)


@given(st.dictionaries(st.text(), _VALUES, min_size=1, max_size=8)
       .filter(lambda record: "manifest" not in record),
       st.integers(0, 2**32), st.integers(0, 2**40))
def test_the_position_added_to_an_encoding_is_dumps_of_the_record(
        record, segment, offset):
    encoded = dumps(record)
    record["manifest"] = [segment, offset]
    assert with_manifest(encoded, segment, offset) == dumps(record)


@pytest.mark.parametrize("encoded", [b"{}", b"[1]", b'"x"', b""])
def test_only_the_encoding_of_a_record_with_keys_takes_a_position(encoded):
    with pytest.raises(ValueError):
        with_manifest(encoded, 1, 2)


def test_stored_records_and_manifests_are_the_prepared_encoding(tmp_path):
    """Each stored instance record is ``dumps`` of itself with the
    manifest's position last, and its manifest block holds the same
    record without that position."""
    paths = write_ct_series(tmp_path / "ct", 2, seed=3)
    with Archive(tmp_path / "store") as archive:
        uids = [archive.store(corpus_bytes(name)).sop_instance_uid
                for name in (CT_SMALL, MR_SMALL)]
        uids += [r.sop_instance_uid for r in archive.store_many(paths)]
        for uid in uids:
            with archive._index.read() as txn:
                raw = txn.get(uid.encode(), db=archive._index.db["instances"])
            record = json.loads(raw)
            assert list(record)[-1] == "manifest"
            assert raw == dumps(record)
            segment, offset = record.pop("manifest")
            header, content = archive._segments.read(segment, offset)
            assert header.kind is Kind.MANIFEST
            assert content == dumps(record)
