"""store_many prepares small items in the caller's thread and commits
them a chunk at a time (archive._Pipeline); large items go through the
prepare pool. Whatever path each item takes, the caller's order decides
the re-send policy, and a bad item raises only once every item before
it is durable."""

from __future__ import annotations

import copy
import hashlib
import io
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from corpus import corpus_available, corpus_files
from pacsstore import (Archive, ConflictError, MalformedDicomError,
                       NotStorableError)
from pacsstore.errors import PacsstoreError
from pacsstore.store import archive as archive_module
from pacsstore.store import blocks, commit, prepare
from pacsstore.store.blocks import Kind
from pacsstore.synthetic import ct_series, structured_reports
from test_digest_aside import _same_prepared
from test_store_support import corpus_bytes


def _encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _reports(count: int, *, seed: int = 5, min_bytes: int = 2048,
             max_bytes: int = 4096) -> list[bytes]:
    return [_encoded(ds) for ds in structured_reports(
        count, seed=seed, min_bytes=min_bytes, max_bytes=max_bytes)]


def _conflicting(ds) -> bytes:
    """Other content under the UID of ``ds``."""
    other = copy.deepcopy(ds)
    other.PatientName = "Other^Name"
    return _encoded(other)


def _with_a_conflict(count: int, seed: int, at: int
                     ) -> tuple[list[Dataset], list[bytes], bytes]:
    """``count`` small reports, encoded, and other content under the UID
    of the one at ``at``."""
    reports = list(structured_reports(count, seed=seed, min_bytes=2048,
                                      max_bytes=4096))
    return reports, [_encoded(ds) for ds in reports], \
        _conflicting(reports[at])


def _versions_of_one_uid() -> tuple[bytes, bytes, bytes]:
    """Three contents of one SOP Instance UID: small, large (past
    SMALL_ITEM_BYTES, so prepared in the pool), small again."""
    small = list(structured_reports(2, seed=8, min_bytes=2048,
                                    max_bytes=4096))
    large = next(structured_reports(1, seed=9, min_bytes=200_000,
                                    max_bytes=200_001))
    uid = small[0].SOPInstanceUID
    for ds in (small[1], large):
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
    first, second, third = map(_encoded, (small[0], large, small[1]))
    assert len(first) < archive_module.SMALL_ITEM_BYTES <= len(second)
    assert len(third) < archive_module.SMALL_ITEM_BYTES
    assert len({first, second, third}) == 3
    return first, second, third


def test_small_items_are_committed_a_chunk_per_batch(tmp_path):
    items = _reports(300)
    with Archive(tmp_path / "s") as archive:
        results = archive.store_many(items)
        batches = archive._committer.batches

        assert [r.status for r in results] == ["stored"] * 300
        # 256 and 44: each chunk is handed over whole, after the one
        # before it committed, so it is one batch of its own.
        assert batches == 2
        for data, result in zip(items, results):
            assert archive.get(result.sop_instance_uid) == data


def test_a_chunk_is_coded_while_the_one_before_commits(tmp_path,
                                                      monkeypatch):
    """Each chunk's compression (Preparer.code_together) runs once the
    chunk before it is with the committer, and the chunk before that
    one has settled by then; the first has none before it."""
    handed_on: list[int] = []
    settled: list[int] = []
    seen: list[tuple[int, int, int]] = []
    submit_all = commit.Committer.submit_all
    code_together = prepare.Preparer.code_together

    def submitting(self, items, **kwargs):
        futures = submit_all(self, items, **kwargs)
        handed_on.append(len(items))
        for future in futures:
            future.add_done_callback(lambda _: settled.append(1))
        return futures

    def coding(self, items):
        seen.append((len(items), sum(handed_on), len(settled)))
        return code_together(self, items)

    monkeypatch.setattr(commit.Committer, "submit_all", submitting)
    monkeypatch.setattr(prepare.Preparer, "code_together", coding)
    chunk = archive_module.SMALL_CHUNK_ITEMS
    items = _reports(2 * chunk + 10, seed=21)
    with Archive(tmp_path / "s") as archive:
        results = archive.store_many(items)
        assert [r.status for r in results] == ["stored"] * len(items)
        assert [archive.get(r.sop_instance_uid) for r in results] == items
    # (chunk size, items handed on before, of which settled): the first
    # chunk is coded with nothing handed on, each later one after the
    # chunk before it went to the committer.
    assert [(size, before) for size, before, _ in seen] == \
        [(chunk, 0), (chunk, chunk), (10, 2 * chunk)]
    # The third is coded with the first settled.
    assert seen[2][2] >= chunk


def test_a_frame_two_items_of_a_chunk_lack_is_stored_once(tmp_path):
    """Instances with a frame in common, in one chunk and in the next:
    the frame is written once, and each instance reads back whole."""
    chunk = archive_module.SMALL_CHUNK_ITEMS
    slices = list(ct_series(3, seed=22, rows=64, columns=64))
    for later in slices[1:]:
        later.PixelData = slices[0].PixelData
    first, same_chunk, next_chunk = map(_encoded, slices)
    fillers = _reports(chunk - 2, seed=23)
    items = [first, same_chunk, *fillers, next_chunk]
    with Archive(tmp_path / "s") as archive:
        results = archive.store_many(items)
        assert archive._committer.batches == 2
        assert [archive.get(r.sop_instance_uid) for r in results] == items
        frame = len(slices[0].PixelData)
        assert results[0].bytes_deduplicated == 0
        assert results[1].bytes_deduplicated == frame
        assert results[-1].bytes_deduplicated == frame
        # A header block for each item, and the one frame.
        assert archive.stats().blocks == len(items) + 1


def test_a_frame_the_index_has_is_not_compressed_again(tmp_path,
                                                       monkeypatch):
    stored, again = ct_series(2, seed=25, rows=64, columns=64)
    again.PixelData = stored.PixelData
    coded: list[list] = []
    encode_together = blocks.encode_together

    def encoding(unencoded, **kwargs):
        coded.append([(block.kind, block.name) for block in unencoded])
        return encode_together(unencoded, **kwargs)

    monkeypatch.setattr(blocks, "encode_together", encoding)
    with Archive(tmp_path / "s") as archive:
        archive.store(_encoded(stored))
        result, = archive.store_many([_encoded(again)])
        assert result.bytes_deduplicated == len(stored.PixelData)
        assert archive.get(result.sop_instance_uid) == _encoded(again)
    frame = blocks.digest(stored.PixelData)
    # The header is coded against the series' base, the first's header,
    # apart from the chunk (store/bases.py).
    assert [kind for kind, _ in coded[0]] == [Kind.MANIFEST]
    assert frame not in {name for _, name in coded[0]}


def test_the_committer_refuses_an_instance_never_coded(tmp_path):
    with Archive(tmp_path / "s") as archive:
        uncoded = archive._prepare(_reports(1, seed=24)[0], code=False)
        with pytest.raises(ValueError, match="never coded"):
            archive._committer.submit(uncoded)
        archive._preparer.code_together([uncoded])
        assert archive._committer.submit(uncoded).result().status == \
            "stored"


@pytest.mark.parametrize("ending", ["end", "bad item", "iterable fails"])
def test_a_conflict_in_a_chunk_stores_nothing_of_the_next(tmp_path,
                                                         ending):
    """The chunk before a partial last chunk settles before that one is
    handed on, however the input ends, as every chunk did when each
    committed before the next was prepared."""
    chunk = archive_module.SMALL_CHUNK_ITEMS
    reports, items, conflicting = _with_a_conflict(chunk + 44, seed=26, at=10)

    def iterate():
        yield from items[:10]
        yield conflicting
        yield from items[11:]
        if ending == "bad item":
            yield b"DICM is not where a file starts"
        elif ending == "iterable fails":
            raise RuntimeError("the source of the items failed")

    with Archive(tmp_path / "s") as archive:
        archive.store(items[10])
        with pytest.raises((ConflictError, RuntimeError)) as raised:
            archive.store_many(iterate())
        if ending == "iterable fails":
            # The iterable's own error, with the conflict noted on it.
            assert raised.type is RuntimeError
            assert "ConflictError" in "".join(raised.value.__notes__)
        else:
            assert raised.type is ConflictError
        later = [ds.SOPInstanceUID for ds in reports[chunk:]]
        assert not [uid for uid in later if uid in archive]
        assert archive.get(reports[10].SOPInstanceUID) == items[10]


@pytest.mark.parametrize("large", [False, True])
def test_a_conflict_before_a_bad_item_is_the_error_raised(tmp_path, large):
    """A conflict is found only at commit, after later items were read:
    when one of those is bad, the conflict is still the first bad item,
    and is what raises, the later one noted on it. ``large``: the bad
    item goes through the prepare pool (a path that cannot be read)."""
    reports, items, conflicting = _with_a_conflict(12, seed=27, at=5)
    bad = tmp_path / "missing.dcm" if large else b"not DICOM" * 20
    with Archive(tmp_path / "s") as archive:
        archive.store(items[5])
        with pytest.raises(ConflictError) as raised:
            archive.store_many([*items[:5], conflicting,
                                *items[6:10], bad, *items[11:]])
        notes = raised.value.__notes__
        assert notes[0].startswith(
            "item 10 of the input (from 0) was not storable either: ")
        # The pool's read-ahead may have taken the item after it.
        assert notes[1:] in ([], ["item 11 of the input (from 0) was read "
                                  "but not handed on when store_many "
                                  "stopped, and not stored"]), notes
        assert archive.get(reports[5].SOPInstanceUID) == items[5]
        assert archive.stats().instances == 10


def test_a_second_conflict_is_noted_on_the_first(tmp_path):
    first, second = structured_reports(2, seed=30, min_bytes=2048,
                                       max_bytes=4096)
    with Archive(tmp_path / "s") as archive:
        archive.store_many([_encoded(first), _encoded(second)])
        with pytest.raises(ConflictError, match=first.SOPInstanceUID) as \
                raised:
            archive.store_many([_conflicting(first), _conflicting(second)])
        notes = raised.value.__notes__
        assert len(notes) == 1 and notes[0].startswith(
            "item 1 of the input (from 0) was not stored either: "
            "ConflictError(")


@pytest.mark.parametrize("chunk_items", [1, None])
def test_a_bad_item_after_a_chunk_with_a_conflict_is_noted(
        tmp_path, monkeypatch, chunk_items):
    """The conflict is the last item of a full chunk, still held when
    the bad item is read: handing that chunk on raises the conflict,
    with the bad item noted on it."""
    if chunk_items:
        monkeypatch.setattr(archive_module, "SMALL_CHUNK_ITEMS",
                            chunk_items)
    chunk = archive_module.SMALL_CHUNK_ITEMS
    reports = list(structured_reports(chunk, seed=31, min_bytes=2048,
                                      max_bytes=4096))
    items = [*map(_encoded, reports[:-1]), _conflicting(reports[-1]),
             b"DICM is not where a file starts"]
    with Archive(tmp_path / "s") as archive:
        archive.store(_encoded(reports[-1]))
        with pytest.raises(ConflictError) as raised:
            archive.store_many(items)
        assert any(note.startswith(
            f"item {chunk} of the input (from 0) was not storable either: "
            f"MalformedDicomError(") for note in raised.value.__notes__)
        assert archive.stats().instances == chunk


def test_items_handed_on_with_the_one_that_stopped_are_noted(tmp_path):
    """Items handed to the committer before the iterable failed complete;
    one that fails is noted on the iterable's error."""
    reports, items, conflicting = _with_a_conflict(4, seed=29, at=2)

    def iterate():
        yield from items[:2]
        yield conflicting
        raise _Interrupt

    with Archive(tmp_path / "s") as archive:
        archive.store(items[2])
        with pytest.raises(_Interrupt) as raised:
            archive.store_many(iterate())
        assert any("item 2 of the input" in note and "ConflictError" in note
                   for note in raised.value.__notes__)
        assert archive.stats().instances == 3


def test_small_files_by_path_take_the_same_chunks(tmp_path):
    paths = []
    for number, data in enumerate(_reports(20)):
        path = tmp_path / f"{number}.dcm"
        path.write_bytes(data)
        paths.append(path)
    with Archive(tmp_path / "s") as archive:
        results = archive.store_many(paths)
        assert archive._committer.batches == 1
        assert [archive.get(r.sop_instance_uid) for r in results] == \
            [p.read_bytes() for p in paths]


def test_chunks_are_bounded_by_prepared_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(archive_module, "SMALL_CHUNK_BYTES", 1)
    with Archive(tmp_path / "s") as archive:
        archive.store_many(_reports(5))
        assert archive._committer.batches == 5


@pytest.mark.parametrize("order, kept", [
    ((0, 1, 2), 2), ((1, 0), 0), ((0, 1), 1), ((2, 1, 0, 1), 1)])
def test_the_last_of_mixed_sizes_is_kept_in_the_callers_order(
        tmp_path, order, kept):
    versions = _versions_of_one_uid()
    with Archive(tmp_path / "s", on_conflict="replace") as archive:
        results = archive.store_many([versions[i] for i in order])
        assert [r.status for r in results] == \
            ["stored"] + ["replaced"] * (len(order) - 1)
        assert archive.get(results[0].sop_instance_uid) == versions[kept]
        assert archive.stats().instances == 1


def test_the_first_of_mixed_sizes_is_kept_in_the_callers_order(tmp_path):
    versions = _versions_of_one_uid()
    with Archive(tmp_path / "s", on_conflict="keep-first") as archive:
        results = archive.store_many([versions[1], versions[0]])
        assert [r.status for r in results] == ["stored", "kept-first"]
        assert archive.get(results[0].sop_instance_uid) == versions[1]


def test_a_bad_small_item_raises_once_the_items_before_are_durable(
        tmp_path):
    large = next(structured_reports(1, seed=11, min_bytes=200_000,
                                    max_bytes=200_001))
    good = [_encoded(large), *_reports(3)]
    read = []

    def items():
        for item in (*good, b"DICM is not where a file starts", *_reports(
                2, seed=12)):
            read.append(item)
            yield item

    with Archive(tmp_path / "s") as archive:
        with pytest.raises(MalformedDicomError):
            archive.store_many(items())
        assert len(read) == len(good) + 1, "items after the bad one read"
        stored = {r["SOPInstanceUID"] for r in archive.find("instance")}
        assert len(stored) == len(good)
        assert sorted(archive.get(uid) for uid in stored) == sorted(good)


def test_skip_invalid_reports_a_bad_small_item_in_its_place(tmp_path):
    items = [*_reports(2), b"not DICOM at all", *_reports(2, seed=13)]
    with Archive(tmp_path / "s") as archive:
        results = archive.store_many(items, skip_invalid=True)
        assert [r.status for r in results] == \
            ["stored", "stored", "rejected", "stored", "stored"]
        assert results[2].error
        assert archive.stats().instances == 4


def test_a_bad_pool_item_raises_before_a_chunk_of_later_items_is_read(
        tmp_path):
    """A path that cannot be read goes to the pool; the small items after
    it are read no further ahead of it than the pool path reads."""
    read = []

    def items():
        yield tmp_path / "missing.dcm"
        for item in _reports(300, seed=14):
            read.append(item)
            yield item

    with Archive(tmp_path / "s") as archive:
        with pytest.raises(NotStorableError, match="missing.dcm"):
            archive.store_many(items())
        assert len(read) <= archive_module.READ_AHEAD
        assert archive.stats().instances == 0


@pytest.mark.parametrize("large_first", [False, True])
def test_when_the_iterable_fails_the_items_read_before_are_stored(
        tmp_path, large_first):
    reports = _reports(40, seed=15)
    large = _encoded(next(structured_reports(1, seed=16, min_bytes=200_000,
                                             max_bytes=200_001)))
    before = ([large] if large_first else []) + reports

    def items():
        yield from before
        raise RuntimeError("the source of the items failed")

    with Archive(tmp_path / "s") as archive:
        with pytest.raises(RuntimeError, match="source of the items"):
            archive.store_many(items())
        stored = {r["SOPInstanceUID"] for r in archive.find("instance")}
        assert len(stored) == len(before)
        assert sorted(archive.get(uid) for uid in stored) == sorted(before)


def test_unreadable_paths_and_datasets_are_rejected_in_their_place(
        tmp_path):
    unwritable = Dataset()  # no file meta: pydicom cannot encode it
    unwritable.PatientName = "Doe^Jane"
    reports = _reports(2, seed=17)
    items = [reports[0], str(tmp_path / "a\0b.dcm"), unwritable, reports[1]]
    with Archive(tmp_path / "s") as archive:
        results = archive.store_many(items, skip_invalid=True)
        assert [r.status for r in results] == \
            ["stored", "rejected", "rejected", "stored"]
        assert "null byte" in results[1].error
        assert "Part 10" in results[2].error
        with pytest.raises(NotStorableError, match="null byte"):
            archive.store(str(tmp_path / "a\0b.dcm"))


def test_a_dataset_with_a_value_pydicom_cannot_encode_is_rejected(
        tmp_path):
    """pydicom reports a US value out of range as an OSError, which must
    not pass for a disk error (and drop the items read before it)."""
    reports = list(structured_reports(4, seed=28))
    unencodable = copy.deepcopy(reports[0])
    unencodable.SOPInstanceUID = "1.2.3.4"
    unencodable.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    with pytest.warns(UserWarning, match="between 0 and 65535"):
        unencodable.add_new(0x00280010, "US", 70000)  # Rows
    with Archive(tmp_path / "s") as archive:
        results = archive.store_many([*reports[:2], unencodable,
                                      *reports[2:]], skip_invalid=True)
        assert [r.status for r in results] == \
            ["stored", "stored", "rejected", "stored", "stored"]
        assert "Part 10" in results[2].error
        with pytest.raises(NotStorableError, match="65535"):
            archive.store(unencodable)


def _large_reports(count: int, seed: int) -> list[bytes]:
    return [_encoded(ds) for ds in structured_reports(
        count, seed=seed, min_bytes=200_000, max_bytes=300_000)]


@pytest.mark.parametrize("case", ["clean", "bad item", "skipped bad item",
                                  "iterable fails"])
def test_pool_items_are_announced_and_none_stays_announced(tmp_path, case):
    """Items on the prepare pool are announced to the committer (a batch
    waits a little for them); whatever way store_many ends, none is left
    announced, or every later batch would wait for it."""
    large = _large_reports(6, seed=18)
    items: list = list(large)
    if case in ("bad item", "skipped bad item"):
        items.insert(3, tmp_path / "missing.dcm")

    def iterate():
        yield from items
        if case == "iterable fails":
            raise RuntimeError("the source of the items failed")

    with Archive(tmp_path / "s") as archive:
        if case == "clean":
            archive.store_many(iterate())
        elif case == "skipped bad item":
            results = archive.store_many(iterate(), skip_invalid=True)
            assert [r.status for r in results].count("rejected") == 1
        else:
            with pytest.raises((NotStorableError, RuntimeError)):
                archive.store_many(iterate())
        assert archive._committer._announced == 0
        stored = archive.stats().instances
        assert stored == (3 if case == "bad item" else 6)


class _Interrupt(BaseException):
    """Stands for a KeyboardInterrupt, which would stop pytest itself."""


def test_the_iterables_own_error_is_what_the_caller_gets(tmp_path):
    """An item handed on before the iterable fails may fail too (here a
    conflict); the caller still gets the iterable's error."""
    first, second = _reports(2, seed=19)
    conflicting = next(structured_reports(1, seed=19, min_bytes=2048,
                                          max_bytes=4096))
    conflicting.PatientName = "Other^Name"

    def items():
        yield second
        yield _encoded(conflicting)  # the UID of ``first``, other content
        raise _Interrupt

    with Archive(tmp_path / "s") as archive:
        archive.store(first)
        with pytest.raises(_Interrupt):
            archive.store_many(items())
        # ``second`` was stored; the conflicting one changed nothing.
        assert archive.stats().instances == 2
        assert archive.store(second).status == "duplicate"


class _WaitInterrupted:
    """A commit's future whose first wait is interrupted (a second
    Ctrl-C while store_many waits), once the commit itself is done."""

    def __init__(self, future) -> None:
        self.future = future
        self.interrupted = False

    def result(self, timeout=None):
        if not self.interrupted:
            self.interrupted = True
            self.future.result()
            raise _Interrupt("the wait")
        return self.future.result(timeout)

    def __getattr__(self, name):
        return getattr(self.future, name)


def _interrupted_twice(archive: Archive, monkeypatch,
                       reports: list[bytes]) -> BaseException:
    """store_many of ``reports`` from an iterable that then stops (the
    first interrupt), with the first wait for a commit interrupted (the
    second): what store_many raises, which must be the second."""
    submit_all = commit.Committer.submit_all

    def submitting(self, items, **kwargs):
        futures = submit_all(self, items, **kwargs)
        return [_WaitInterrupted(futures[0]), *futures[1:]]

    def items():
        yield from reports
        raise _Interrupt("the first")

    monkeypatch.setattr(commit.Committer, "submit_all", submitting)
    with pytest.raises(_Interrupt) as raised:
        archive.store_many(items())
    assert raised.value.args == ("the wait",)
    return raised.value


def test_a_second_interrupt_stops_the_wait_and_blames_no_item(
        tmp_path, monkeypatch):
    """Interrupted while it waits for the items handed on before the
    first interrupt, store_many stops waiting and raises the second; the
    item it was waiting for is not called a failure (it was stored)."""
    reports = _reports(3, seed=30)
    with Archive(tmp_path / "s") as archive:
        raised = _interrupted_twice(archive, monkeypatch, reports)
        assert str(raised.__context__) == "the first"
        notes = getattr(raised, "__notes__", [])
        assert len(notes) == 1 and "stopped waiting at item 0" in notes[0]
        assert "and the 2 handed on after it" in notes[0]
        assert not getattr(raised.__context__, "__notes__", [])
    monkeypatch.undo()
    with Archive(tmp_path / "s") as archive:
        assert [archive.store(r).status for r in reports] == \
            ["duplicate"] * 3


def test_a_second_interrupt_names_the_items_read_and_not_stored(
        tmp_path, monkeypatch):
    """The iterable stops (an interrupt) with a full chunk held and a
    partial one read; a second interrupt lands while the held chunk's
    commit is waited for. The partial chunk is dropped, and the note
    says so: its items were read, and a caller would otherwise take
    them for stored."""
    chunk = archive_module.SMALL_CHUNK_ITEMS
    with Archive(tmp_path / "s") as archive:
        raised = _interrupted_twice(archive, monkeypatch,
                                    _reports(chunk + 44, seed=38))
        assert f"items {chunk} to {chunk + 43} of the input (from 0) were " \
            f"read but not handed on" in "".join(raised.__notes__)
        assert archive.stats().instances == chunk


def _named_in_a_chunk(archive: Archive, items: list[bytes]
                      ) -> list[prepare.Prepared]:
    """``items`` as store_many's small path prepares them: each without
    digests or compression, then the chunk named and coded at once."""
    chunk = [archive._preparer.prepare(data, code=False) for data in items]
    archive._preparer.code_together(chunk)
    return chunk


def _same_with_manifest(a: prepare.Prepared, b: prepare.Prepared) -> None:
    _same_prepared(a, b)
    assert a.encoded_record == b.encoded_record
    assert (a.manifest.header, a.manifest.payload) == \
        (b.manifest.header, b.manifest.payload)


def _small_corpus_files() -> list[tuple[str, str]]:
    """(path, transfer syntax) of the first corpus file below
    SMALL_ITEM_BYTES for each transfer syntax and modality."""
    seen: dict[tuple[str, str], str] = {}
    for entry in corpus_files():
        if entry.path.stat().st_size < archive_module.SMALL_ITEM_BYTES:
            seen.setdefault((entry.transfer_syntax, entry.modality),
                            entry.relpath)
    return sorted((path, key[0]) for key, path in seen.items())


@pytest.mark.skipif(not corpus_available(), reason="no corpus")
def test_corpus_files_named_in_a_chunk_prepare_as_alone(tmp_path):
    """The digests a chunk takes in one call make the instance a
    prepare of its own makes, byte for byte: the record with its
    digests (the whole file's and the content's), the blocks and the
    manifest, over the corpus's syntaxes (frames and cuts, encapsulated
    fragments, deflated datasets, none at all), all in one chunk."""
    files = _small_corpus_files()
    assert len(files) > 20
    alone, contents = [], []
    # Each way in a store of its own: both start with no bases, and
    # choose the same ones in the same order (store/bases.py).
    with Archive(tmp_path / "alone") as archive:
        for relpath, _syntax in files:
            data = corpus_bytes(relpath)
            try:
                alone.append(archive._preparer.prepare(data))
            except PacsstoreError as exc:
                with pytest.raises(type(exc)):
                    archive._preparer.prepare(data, code=False)
                continue
            contents.append(data)
    assert len(contents) > 20
    with Archive(tmp_path / "chunk") as archive:
        named = _named_in_a_chunk(archive, contents)
        for data, a, b in zip(contents, named, alone):
            _same_with_manifest(a, b)
            assert a.record["sha256"] == hashlib.sha256(data).hexdigest()
    layouts = {p.record["layout"] for p in named}
    assert {"native", "encapsulated", "none"} <= layouts, layouts
    assert prepare.DEFLATED in {p.record["transfer_syntax"] for p in named}


def test_a_chunk_names_each_instance_apart(tmp_path):
    """One call digests the whole chunk; each instance gets its own
    names: two reports and a slice with its frame, in either order."""
    slice_ = _encoded(next(ct_series(1, seed=27, rows=64, columns=64)))
    items = [*_reports(2, seed=28), slice_]
    with Archive(tmp_path / "s") as archive:
        for order in (items, items[::-1]):
            alone = [archive._preparer.prepare(data) for data in order]
            for a, b in zip(_named_in_a_chunk(archive, order), alone):
                _same_with_manifest(a, b)


def test_code_together_refuses_an_instance_named_already(tmp_path):
    with Archive(tmp_path / "s") as archive:
        report = _reports(1, seed=29)[0]
        coded, = _named_in_a_chunk(archive, [report])
        with pytest.raises(ValueError, match="not prepared with code=False"):
            prepare._name_together([coded])
        archive._preparer.code_together([coded])  # left as it is
        assert coded.manifest is not None
        assert archive._committer.submit(coded).result().status == "stored"


REGRESSIONS = Path(__file__).resolve().parent / "data" / "regressions"
HOSTILE = ("syntax-uid-not-ascii.dcm",
           "iso2022-name-escape-before-empty-component.dcm")


@pytest.mark.parametrize("skip_invalid", [False, True])
def test_hostile_files_in_a_chunk_are_refused_or_stored_in_their_place(
        tmp_path, skip_invalid):
    """Two files that once raised bare errors (tests/data/regressions):
    in the middle of a second chunk, one is refused in its place and the
    other stored; every good item before them is stored."""
    syntax, name = ((REGRESSIONS / f).read_bytes() for f in HOSTILE)
    chunk = archive_module.SMALL_CHUNK_ITEMS
    good = _reports(chunk + 40, seed=32)
    items = [*good[:chunk + 30], syntax, name, *good[chunk + 30:]]
    with Archive(tmp_path / "s") as archive:
        if skip_invalid:
            results = archive.store_many(items, skip_invalid=True)
            statuses = [r.status for r in results]
            assert statuses[chunk + 30:chunk + 32] == ["rejected", "stored"]
            assert statuses.count("stored") == len(items) - 1
        else:
            with pytest.raises(MalformedDicomError, match="Transfer Syntax"):
                archive.store_many(items)
            assert archive.stats().instances == chunk + 30
        assert archive.verify().ok


class _Defect(Exception):
    """Stands for a defect of pacsstore's that one input brings out."""


@pytest.mark.parametrize("where", ["prepare", "coding"])
@pytest.mark.parametrize("skip_invalid", [False, True])
def test_an_unexpected_error_raises_after_every_item_before_it(
        tmp_path, monkeypatch, where, skip_invalid):
    """An error of no item's own kind, from one item's prepare or from
    its coding in the chunk, is raised whatever skip_invalid says, once
    the items read before it (a full chunk held among them) are durable;
    the items after it are not stored."""
    chunk = archive_module.SMALL_CHUNK_ITEMS
    items = _reports(chunk + 40, seed=33)
    bad_at = chunk + 30
    doomed = items[bad_at]
    if where == "prepare":
        prepare_ = prepare.Preparer.prepare

        def preparing(self, buffer, **kwargs):
            if bytes(buffer) == doomed:
                raise _Defect("a defect")
            return prepare_(self, buffer, **kwargs)

        monkeypatch.setattr(prepare.Preparer, "prepare", preparing)
    else:
        record_bytes = prepare._record_bytes

        def encoding(prepared):
            if prepared.record["size"] == len(doomed) and \
                    prepared.unnamed.buffer == doomed:
                raise _Defect("a defect")
            return record_bytes(prepared)

        monkeypatch.setattr(prepare, "_record_bytes", encoding)
    with Archive(tmp_path / "s") as archive:
        with pytest.raises(_Defect) as raised:
            archive.store_many(items, skip_invalid=skip_invalid)
        assert f"item {bad_at} of the input" in raised.value.__notes__[0]
        assert archive.stats().instances == bad_at
        monkeypatch.undo()
        assert [archive.store(data).status for data in items[:bad_at]] == \
            ["duplicate"] * bad_at
        assert archive.verify().ok


def test_a_view_the_caller_releases_after_yielding_is_stored(tmp_path):
    """A memoryview over bytes, released by the caller once the next item
    is asked for: small items and large ones (the prepare pool reads
    those later) are all stored as yielded."""
    small = _reports(3, seed=34)
    large = [_encoded(ds) for ds in structured_reports(
        3, seed=35, min_bytes=300_000, max_bytes=300_010)]
    items = [*small, *large]

    def views():
        for data in items:
            with memoryview(data) as view:
                yield view

    with Archive(tmp_path / "s") as archive:
        results = archive.store_many(views())
        assert [archive.get(r.sop_instance_uid) for r in results] == items
        released = memoryview(items[0])
        released.release()
        with pytest.raises(NotStorableError, match="released"):
            archive.store(released)


@pytest.mark.parametrize("one", ["path", "bytes", "dataset"])
def test_store_many_refuses_one_instance_for_its_iterable(tmp_path, one):
    ds = next(structured_reports(1, seed=36, min_bytes=2048, max_bytes=4096))
    path = tmp_path / "one.dcm"
    ds.save_as(path, enforce_file_format=True)
    item = {"path": str(path), "bytes": path.read_bytes(), "dataset": ds}[one]
    with Archive(tmp_path / "s") as archive:
        with pytest.raises(NotStorableError, match="not one instance"):
            archive.store_many(item)
        assert archive.stats().instances == 0


def test_a_dataset_pydicom_cannot_write_is_not_storable(tmp_path):
    """pydicom raises NotImplementedError for a VR it does not know."""
    good, bad = structured_reports(2, seed=37, min_bytes=2048,
                                   max_bytes=4096)
    bad.add_new(0x00091010, "XX", "a")
    with Archive(tmp_path / "s") as archive:
        with pytest.raises(NotStorableError, match="cannot be written") \
                as raised:
            archive.store(bad)
        # pydicom's message carries a traceback of its own: one line kept.
        assert "\n" not in str(raised.value)
        results = archive.store_many([good, bad], skip_invalid=True)
        assert [r.status for r in results] == ["stored", "rejected"]
