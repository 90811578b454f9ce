"""Opening a store after a crash or with a damaged index: recovery cuts
only what was never acknowledged, and refuses to touch segments that an
index does not account for."""

from __future__ import annotations

import shutil

import pytest

from pacsstore import Archive, CorruptStoreError
from pacsstore.store.segments import HEADER_SIZE, segment_path
from test_store_support import CT_SMALL, MR_SMALL, corpus_bytes


def _segment_bytes(store) -> dict[str, bytes]:
    return {p.name: p.read_bytes()
            for p in sorted((store / "segments").glob("*.seg"))}


def test_recovery_refuses_to_open_a_writer_over_a_lost_index(tmp_path):
    store = tmp_path / "store"
    with Archive(store) as archive:
        uid = archive.store(corpus_bytes(CT_SMALL)).sop_instance_uid
    before = _segment_bytes(store)
    shutil.rmtree(store / "index")

    with pytest.raises(CorruptStoreError, match="index knows none"):
        Archive(store)

    assert _segment_bytes(store) == before
    assert uid is not None


def test_recovery_sets_aside_segments_an_older_index_does_not_know(
        tmp_path):
    store = tmp_path / "store"
    with Archive(store, segment_size=HEADER_SIZE + 1) as archive:
        first = archive.store(corpus_bytes(CT_SMALL)).sop_instance_uid
        old_index = tmp_path / "old-index"
        shutil.copytree(store / "index", old_index)
        archive.store(corpus_bytes(MR_SMALL))
    before = _segment_bytes(store)
    shutil.rmtree(store / "index")
    shutil.copytree(old_index, store / "index")

    with Archive(store) as archive:
        assert archive.get(first) == corpus_bytes(CT_SMALL)
    after = _segment_bytes(store)
    aside = b"".join(p.read_bytes() for p in
                     sorted((store / "recovered").iterdir()))
    # Every byte the old index does not cover is kept, none is lost.
    unknown = [name for name in before if name not in after]
    assert unknown
    assert all(before[name] in aside for name in unknown)


def test_recovery_cuts_a_torn_tail_and_keeps_what_was_stored(tmp_path):
    store = tmp_path / "store"
    data = corpus_bytes(CT_SMALL)
    with Archive(store) as archive:
        uid = archive.store(data).sop_instance_uid
    path = segment_path(store / "segments", 1)
    committed = path.stat().st_size
    with open(path, "ab") as handle:  # a batch that never committed
        handle.write(b"\x5a" * 1000)

    with Archive(store) as archive:
        assert path.stat().st_size == committed
        assert archive.get(uid) == data
        archive.store(corpus_bytes(MR_SMALL))
    (tail,) = (store / "recovered").iterdir()
    assert tail.read_bytes() == b"\x5a" * 1000


def test_recovery_drops_a_segment_started_by_an_uncommitted_batch(
        tmp_path):
    store = tmp_path / "store"
    data = corpus_bytes(CT_SMALL)
    with Archive(store) as archive:
        uid = archive.store(data).sop_instance_uid
    orphan = segment_path(store / "segments", 2)
    orphan.write_bytes(segment_path(store / "segments", 1)
                       .read_bytes()[:HEADER_SIZE] + b"\x00" * 64)

    with Archive(store) as archive:
        assert not orphan.exists()
        assert archive.get(uid) == data


def test_recovery_leaves_files_that_are_not_segments_alone(tmp_path):
    store = tmp_path / "store"
    data = corpus_bytes(CT_SMALL)
    with Archive(store) as archive:
        uid = archive.store(data).sop_instance_uid
    stranger = store / "segments" / "notes.seg"
    stranger.write_bytes(b"kept by someone else")

    with Archive(store) as archive:
        assert archive.get(uid) == data
        archive.store(corpus_bytes(MR_SMALL))
    assert stranger.read_bytes() == b"kept by someone else"
