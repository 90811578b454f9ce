"""Header blocks stored against another header of their series (their
base, store/bases.py): smaller, read byte for byte, and never relied on
when the base is not stored intact."""

from __future__ import annotations

import io
import threading

import pydicom
import pytest
import zstandard

from pacsstore import (
    Archive,
    CorruptStoreError,
    DamagedCopyError,
    rebuild_index,
)
from pacsstore.store import bases, blocks
from pacsstore.store.blocks import Codec, Kind
from pacsstore.store.verify import UNREADABLE_INSTANCE
from test_dedup import _damage_block
from test_store_support import corpus_bytes

# One MR series of the pydicom test files (MIT): seven instances of
# about 2.3 KB whose headers differ in a few fields.
SERIES = [f"pydicom/test_files/dicomdirtests/98892003/MR700/{name}"
          for name in ("4467", "4528", "4558", "4588", "4618", "4648",
                       "4678")]


def _series() -> list[bytes]:
    return [corpus_bytes(path) for path in SERIES]


def _uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data),
                               stop_before_pixels=True).SOPInstanceUID)


def _header(archive: Archive, uid: str):
    """The index entry of the instance's header block, and its name."""
    name = bytes.fromhex(archive.record(uid)["header"])
    with archive._index.read() as txn:
        return archive._index.block(txn, name), name


def _base_of(archive: Archive, uid: str) -> bytes | None:
    entry, name = _header(archive, uid)
    if entry.codec != Codec.ZSTD_BASE:
        return None
    return archive._segments.check_intact(entry.segment, entry.offset, name,
                                          entry.stored_length)


def _edited(data: bytes, **changes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("how", ["store_many", "store"])
def test_a_series_after_its_first_header_is_stored_against_it(tmp_path,
                                                              how):
    series = _series()
    with Archive(tmp_path / "s") as archive:
        if how == "store_many":
            archive.store_many(series)
        else:
            for data in series:
                archive.store(data)
        uids = [_uid(data) for data in series]
        first = bytes.fromhex(archive.record(uids[0])["header"])
        assert _header(archive, uids[0])[0].codec == Codec.ZSTD
        assert [_base_of(archive, uid) for uid in uids[1:]] == \
            [first] * (len(uids) - 1)
        for uid, data in zip(uids, series):
            assert archive.get(uid) == data
        assert archive.verify().ok
        kept = sum(_header(archive, uid)[0].stored_length
                   for uid in uids[1:])
    compressor = zstandard.ZstdCompressor(level=blocks.DEFAULT_LEVEL)
    alone = sum(len(blocks.encode(Kind.HEADER, data,
                                  compressor=compressor).payload)
                for data in series[1:])
    assert kept < alone / 3


def test_a_rebuilt_index_reads_the_headers_against_their_base(tmp_path):
    series = _series()
    with Archive(tmp_path / "s") as archive:
        archive.store_many(series)
    report = rebuild_index(tmp_path / "s")
    assert report.problems == []
    with Archive(tmp_path / "s", readonly=True) as archive:
        for data in series:
            assert archive.get(_uid(data)) == data
        assert archive.verify().ok


def test_a_new_series_of_a_known_study_starts_from_the_study_s_base(
        tmp_path):
    """Its first header is compressed against the study's base when that
    halves it, and the rest of the series follows."""
    series = _series()
    moved = [_edited(data, SeriesInstanceUID="1.2.826.0.1.3680043.8.498.91")
             for data in series[3:]]
    with Archive(tmp_path / "s") as archive:
        archive.store_many(series[:3] + moved)
        base = bytes.fromhex(archive.record(_uid(series[0]))["header"])
        assert {_base_of(archive, _uid(data)) for data in moved} == {base}
        for data in series[:3] + moved:
            assert archive.get(_uid(data)) == data


def test_a_base_refused_with_its_instance_is_not_relied_on(tmp_path):
    """The first header of the series in this process is made the base
    while it is prepared; its instance is then refused (a conflict), so
    the headers of the chunk coded against it are stored alone, and the
    base is forgotten."""
    series = _series()
    conflicting = _edited(series[0], PatientComments="edited")
    with Archive(tmp_path / "s") as archive:
        archive.store(series[0])
    with Archive(tmp_path / "s", on_conflict="reject") as archive:
        results = archive.store_many([conflicting, *series[1:4]],
                                     skip_invalid=True)
        assert [r.status for r in results] == ["rejected"] + ["stored"] * 3
        assert [_base_of(archive, _uid(d)) for d in series[1:4]] == \
            [None] * 3
        # Forgotten: the next instance is a base, the one after uses it.
        archive.store_many(series[4:])
        base = bytes.fromhex(archive.record(_uid(series[4]))["header"])
        assert [_base_of(archive, _uid(d)) for d in series[4:]] == \
            [None, base, base]
        for data in series:
            assert archive.get(_uid(data)) == data
        assert archive.verify().ok


def test_a_damaged_base_is_reported_and_not_relied_on(tmp_path):
    series = _series()
    with Archive(tmp_path / "s") as archive:
        archive.store_many(series[:3])
        uids = [_uid(data) for data in series]
        base = bytes.fromhex(archive.record(uids[0])["header"])
        _damage_block(archive, base)

        # Those already stored against it cannot be read, and say why.
        with pytest.raises(CorruptStoreError, match="fails its CRC32"):
            archive.get(uids[1])
        problems = archive.verify().problems
        assert {(p.kind, p.sop_instance_uid) for p in problems
                if p.kind == UNREADABLE_INSTANCE} == \
            {(UNREADABLE_INSTANCE, uid) for uid in uids[:3]}
        # A re-send is not acknowledged onto the unreadable copy.
        with pytest.raises(DamagedCopyError, match=base.hex()):
            archive.store(series[1])
        # A new header of the series is stored alone, and reads.
        archive.store(series[3])
        assert _base_of(archive, uids[3]) is None
        assert archive.get(uids[3]) == series[3]


def test_each_process_starts_its_own_bases(tmp_path):
    """Bases are remembered in memory: a writer opened anew makes the
    next header of a series a base of its own."""
    series = _series()
    with Archive(tmp_path / "s") as archive:
        archive.store_many(series[:2])
    with Archive(tmp_path / "s") as archive:
        archive.store_many(series[2:4])
        second_base = bytes.fromhex(archive.record(_uid(series[2]))["header"])
        assert [_base_of(archive, _uid(d)) for d in series[2:4]] == \
            [None, second_base]
        for data in series[:4]:
            assert archive.get(_uid(data)) == data


def test_concurrent_stores_of_one_series_all_read_back(tmp_path):
    """Several callers at once: a header may be coded against a base
    whose instance commits in a later batch; it is then stored alone."""
    series = _series()
    with Archive(tmp_path / "s") as archive:
        threads = [threading.Thread(target=archive.store, args=(data,))
                   for data in series]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for data in series:
            assert archive.get(_uid(data)) == data
        assert archive.verify().ok


def _against_a_base(kind: Kind = Kind.HEADER):
    base, content = _series()[:2]
    name = blocks.digest(base)
    coded = blocks.code_against(content, name, blocks.raw_dictionary(base),
                                blocks.DEFAULT_LEVEL)
    block = blocks.seal(kind, blocks.digest(content), len(content), coded)
    return block, base, content


def _decode(block, lookup):
    header = blocks.parse_header(block.header, "segment 1 offset 32")
    return blocks.decode(header, block.header, block.payload,
                         "segment 1 offset 32", lookup)


def test_a_header_against_a_base_reads_only_with_that_base():
    block, base, content = _against_a_base()
    assert block.codec == Codec.ZSTD_BASE
    def against(content):
        return lambda name: blocks.decompressor_against(content)
    with pytest.raises(CorruptStoreError):
        _decode(block, against(b"another base" * 100))
    assert _decode(block, against(base)) == content
    with pytest.raises(CorruptStoreError, match="cannot look up"):
        _decode(block, None)
    frame, _, _ = _against_a_base(Kind.FRAME)
    with pytest.raises(CorruptStoreError, match="only header blocks"):
        _decode(frame, against(base))


def test_a_base_stored_against_a_base_is_refused(tmp_path):
    """Bases are one level deep; a store that says otherwise is damaged,
    not followed."""
    series = _series()
    with Archive(tmp_path / "s") as archive:
        archive.store_many(series[:2])
        entry, name = _header(archive, _uid(series[1]))
        reader = bases.BaseReader(lambda _: entry, archive._segments)
        with pytest.raises(CorruptStoreError,
                           match="itself compressed against a base"):
            reader(name)
        with pytest.raises(CorruptStoreError, match="does not have"):
            bases.BaseReader(lambda _: None, archive._segments)(name)


def _with_frame(content: bytes) -> bytes:
    """An instance of a series of its own whose one native frame is
    ``content``: 8-bit samples, one row."""
    ds = pydicom.dcmread(io.BytesIO(_series()[0]))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = \
        "1.2.826.0.1.3680043.8.498.93"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.94"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.95"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.Rows, ds.Columns = 1, len(content)
    ds.PixelData = content
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _second_header(tmp_path) -> bytes:
    """The content of the second instance's header block."""
    with Archive(tmp_path / "scratch") as archive:
        uid = archive.store(_series()[1]).sop_instance_uid
        return archive._reader(uid).header()


@pytest.mark.parametrize("order", ["base, header, frame", "one batch",
                                   "frame before the header"])
def test_a_frame_of_the_bytes_of_a_header_against_a_base_reads_back(
        tmp_path, order):
    """Dedup shares the one block: a frame read the header stored
    against a base, and was acknowledged, then unreadable (the frame
    read path refused codec 5) while verify and a rebuild found
    nothing."""
    series = _series()
    header = _second_header(tmp_path)
    assert len(header) % 2 == 0
    sharing = _with_frame(header)
    with Archive(tmp_path / "s") as archive:
        if order == "base, header, frame":
            archive.store(series[0])
            archive.store(series[1])
            results = [archive.store(sharing)]
        elif order == "one batch":
            results = archive.store_many([series[0], series[1], sharing])
        else:
            results = archive.store_many([series[0], sharing, series[1]])
        assert all(r.status == "stored" for r in results)
        uid = _uid(sharing)
        assert archive.record(uid)["blocks"] == [blocks.digest(header).hex()]
        assert archive.get(uid) == sharing
        with archive.open(uid) as stream:
            assert stream.read() == sharing
        assert archive.frame(uid, 0) == header
        assert archive.verify().ok
    assert rebuild_index(tmp_path / "s").problems == []
    with Archive(tmp_path / "s", readonly=True) as archive:
        assert archive.get(uid) == sharing


def test_a_frame_against_a_refused_base_is_stored_alone(tmp_path):
    """The block coded against a base that is then refused is the
    frame of the instance applied first: it is coded alone there."""
    series = _series()
    header = _second_header(tmp_path)
    sharing = _with_frame(header)
    conflicting = _edited(series[0], PatientComments="edited")
    with Archive(tmp_path / "s") as archive:
        archive.store(series[0])
    with Archive(tmp_path / "s", on_conflict="reject") as archive:
        results = archive.store_many([conflicting, sharing, series[1]],
                                     skip_invalid=True)
        assert [r.status for r in results] == ["rejected", "stored",
                                               "stored"]
        entry, _ = _header(archive, _uid(series[1]))
        assert entry.codec == Codec.ZSTD
        for data in (series[0], sharing, series[1]):
            assert archive.get(_uid(data)) == data
        assert archive.verify().ok


@pytest.mark.parametrize("how", ["store", "store_many"])
def test_a_header_onto_a_damaged_frame_of_its_bytes_is_not_stored(
        tmp_path, how):
    """A header block with the bytes of a frame the store holds takes
    that block. Its stored copy was not checked (only a re-send's
    header was), so an instance was acknowledged onto a damaged copy
    and could not be read."""
    series = _series()
    header = _second_header(tmp_path)
    holder = _with_frame(header)
    with Archive(tmp_path / "s") as archive:
        archive.store(holder)
        _damage_block(archive, blocks.digest(header))
        with pytest.raises(DamagedCopyError, match="is damaged"):
            if how == "store":
                archive.store(series[1])
            else:
                archive.store_many([series[1]])
        assert _uid(series[1]) not in archive
