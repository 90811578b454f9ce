"""Re-sends: the same SOP Instance UID again, with each policy.

The pair used is real: one CT image that the corpus holds in Explicit
and in Implicit VR Little Endian under the same SOP Instance UID.
"""

from __future__ import annotations

import pytest

from pacsstore import Archive, ConflictError
from test_store_support import (
    SAME_UID_EXPLICIT,
    SAME_UID_IMPLICIT,
    corpus_bytes,
)


@pytest.fixture
def pair():
    first = corpus_bytes(SAME_UID_EXPLICIT)
    second = corpus_bytes(SAME_UID_IMPLICIT)
    assert first != second
    return first, second


def _store_first(path, policy, first):
    archive = Archive(path, on_conflict=policy)
    result = archive.store(first)
    assert result.status == "stored"
    return archive, result.sop_instance_uid


def test_resend_same_bytes_is_an_idempotent_duplicate(tmp_path, pair):
    archive, uid = _store_first(tmp_path / "s", "reject", pair[0])
    with archive:
        before = archive.stats()
        again = archive.store(pair[0])
        assert again.status == "duplicate"
        assert again.bytes_written == 0
        assert again.bytes_deduplicated == len(pair[0])
        assert archive.stats() == before


def test_resend_reject_raises_and_keeps_the_first(tmp_path, pair):
    archive, uid = _store_first(tmp_path / "s", "reject", pair[0])
    with archive:
        before = archive.stats()
        with pytest.raises(ConflictError, match=uid):
            archive.store(pair[1])
        assert archive.get(uid) == pair[0]
        assert archive.stats() == before


def test_resend_keep_first_acknowledges_and_keeps_it(tmp_path, pair):
    archive, uid = _store_first(tmp_path / "s", "keep-first", pair[0])
    with archive:
        before = archive.stats()
        result = archive.store(pair[1])
        assert result.status == "kept-first"
        assert result.bytes_written == 0
        assert archive.get(uid) == pair[0]
        assert archive.stats() == before


def test_resend_replace_swaps_and_releases_old_blocks(tmp_path, pair):
    archive, uid = _store_first(tmp_path / "s", "replace", pair[0])
    with archive:
        old = archive.record(uid)
        result = archive.store(pair[1])
        assert result.status == "replaced"
        assert archive.get(uid) == pair[1]
        stats = archive.stats()
        assert stats.instances == 1
        assert stats.logical_bytes == len(pair[1])
        new = archive.record(uid)
        kept = [new["header"], *new["blocks"]]
        index = archive._index
        with index.read() as txn:
            for name in [old["header"], *old["blocks"]]:
                entry = index.block(txn, bytes.fromhex(name))
                # The pixel bytes of both encodings are the same block.
                assert entry.refcount == kept.count(name)
        assert old["header"] not in kept


def test_resend_store_many_skip_invalid_reports_conflicts(tmp_path, pair):
    with Archive(tmp_path / "s") as archive:
        results = archive.store_many([pair[0], pair[1], pair[0]],
                                     skip_invalid=True)
        assert [r.status for r in results] == ["stored", "rejected",
                                               "duplicate"]
        assert "already stored" in results[1].error


def test_resend_store_many_raises_after_the_items_before(tmp_path, pair):
    with Archive(tmp_path / "s") as archive:
        with pytest.raises(ConflictError):
            archive.store_many([pair[0], pair[1]])
        uid = archive.find("instance")[0]["SOPInstanceUID"]
        assert archive.get(uid) == pair[0]
        assert archive.stats().instances == 1
