"""Opening a store after a crash or with a damaged index: recovery cuts
only what was never acknowledged, and refuses to touch segments that an
index does not account for."""

from __future__ import annotations

import shutil

import pytest

from pacsstore import Archive, CorruptStoreError, NotAStoreError
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

    with pytest.raises(CorruptStoreError, match="index of .* is lost"):
        Archive(store)

    assert _segment_bytes(store) == before
    assert uid is not None
    # Refused before LMDB could make a new, empty index there: one that
    # verify and every reader would then have taken for an empty store.
    assert not (store / "index").exists()
    with pytest.raises(CorruptStoreError, match="rebuild-index"):
        Archive(store, readonly=True)


@pytest.mark.parametrize("damage", ["emptied", "zeroed", "cut short"])
def test_an_index_file_emptied_zeroed_or_cut_short_is_refused(
        tmp_path, damage):
    """Each opened before as a new index, an LMDB error or a SIGBUS (a
    read past the end of the mapped file) that killed the process."""
    store = tmp_path / "store"
    with Archive(store) as archive:
        for name in (CT_SMALL, MR_SMALL):
            archive.store(corpus_bytes(name))
    data = store / "index" / "data.mdb"
    size = data.stat().st_size
    if damage == "emptied":
        data.write_bytes(b"")
    elif damage == "zeroed":
        data.write_bytes(bytes(size))
    else:
        with open(data, "r+b") as handle:
            handle.truncate(size // 2)
    before = _segment_bytes(store)

    for readonly in (True, False):
        with pytest.raises(CorruptStoreError, match="rebuild-index"):
            Archive(store, readonly=readonly)
    assert _segment_bytes(store) == before


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


def test_a_segment_under_a_name_readers_do_not_open_is_not_taken(tmp_path):
    """``1.seg`` is no segment to readers (they open ``00000001.seg``);
    the writer took it for segment 1 and stored beside a segment no
    reader could find."""
    store = tmp_path / "store"
    with Archive(store) as archive:
        archive.store(corpus_bytes(CT_SMALL))
    segment_path(store / "segments", 1).rename(store / "segments" / "1.seg")

    with pytest.raises(CorruptStoreError, match=r"segments \[1\] are in "
                                                r"the index but missing"):
        Archive(store)


@pytest.mark.parametrize("name", ["lock", "PACSSTORE"])
def test_a_directory_in_place_of_a_store_file_is_named(tmp_path, name):
    store = tmp_path / "store"
    Archive(store).close()
    path = store / name
    path.unlink()
    path.mkdir()

    with pytest.raises(NotAStoreError, match=f"{name} is"):
        Archive(store)
