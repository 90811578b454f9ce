"""Rebuilding the index from the segments alone: every instance comes back
byte for byte, every query answers as before, the reference counts and
the hierarchy are the same, damage is reported and skipped, and a writer
holding the store keeps the rebuild out."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pydicom
import pytest
import zstandard
from click.testing import CliRunner

from pacsstore import (
    Archive,
    NewerFormatError,
    NotFoundError,
    ReadOnlyStoreError,
    StoreLockedError,
    rebuild_index,
)
from pacsstore.cli import main as cli
from pacsstore.store import blocks, scan
from pacsstore.store.blocks import Kind
from pacsstore.store.index import Index
from pacsstore.store.records import dumps
from pacsstore.store.segments import HEADER_SIZE, segment_path
from pacsstore.store.verify import (
    DAMAGED_BLOCK,
    INCOMPLETE_INSTANCE,
    MISSING_BASE,
    MISSING_SEGMENT,
    SEGMENT,
    UNINDEXED_BLOCK,
    UNLISTED_SEGMENT,
)
from test_store_support import (
    BITPACKED_SEG,
    CT_SMALL,
    DEFLATED,
    EMRI_10_FRAMES,
    JPEG_FRAGMENTED,
    MR_SMALL,
    RLE_2_FRAMES,
    SAME_UID_EXPLICIT,
    SAME_UID_IMPLICIT,
    corpus_bytes,
    corpus_path,
)

SRC = Path(__file__).resolve().parents[1] / "src"
# Two series of one study and one series of another study, all of one
# patient, from a real scanner.
GE_SERIES = ("dcm_qa_nih/20180918GE/mr_0004/"
             "axial_epi_fmri_interleaved_i_to_s-0000{}.dcm",
             "dcm_qa_nih/20180918GE/mr_0005/"
             "axial_epi_fmri_sequential_i_to_s-0000{}.dcm",
             "dcm_qa_nih/20180918Si/mr_0003/epi_pe_ap-0000{}.dcm")
LEVELS = ("patient", "study", "series", "instance")
# Small segments, so that the store spans several of them.
SEGMENT_SIZE = 256 << 10


def _variant(relpath: str, **changes: str) -> bytes:
    """A corpus file with some attributes changed, as a new instance."""
    ds = pydicom.dcmread(corpus_path(relpath))
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _history() -> list[bytes]:
    """What the store receives, in order: several patients, studies and
    series; re-sends; a chain of replaces of one SOP Instance UID (the
    same CT deflated, then explicit, then implicit VR); an instance that
    names another patient for a known study, and one that refreshes a
    study's description (the hierarchy's order-dependent rules)."""
    files = [CT_SMALL, MR_SMALL, EMRI_10_FRAMES, RLE_2_FRAMES,
             JPEG_FRAGMENTED, BITPACKED_SEG, DEFLATED]
    files += [pattern.format(n) for pattern in GE_SERIES for n in (1, 2)]
    items = [corpus_bytes(f) for f in files]
    items.append(corpus_bytes(SAME_UID_EXPLICIT))
    items.append(corpus_bytes(CT_SMALL))             # duplicate
    items.append(_variant(CT_SMALL, SOPInstanceUID="1.2.826.0.1.3680043"
                          ".8.498.77.1", PatientID="SOMEONE-ELSE"))
    items.append(_variant(MR_SMALL, SOPInstanceUID="1.2.826.0.1.3680043"
                          ".8.498.77.2", StudyDescription="corrected"))
    items.append(corpus_bytes(SAME_UID_IMPLICIT))
    return items


def _uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), force=True,
                               stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """A populated store and, per SOP Instance UID, the bytes it holds
    (for a replaced UID, the last ones sent)."""
    store = tmp_path_factory.mktemp("template") / "store"
    expected: dict[str, bytes] = {}
    with Archive(store, on_conflict="replace",
                 segment_size=SEGMENT_SIZE) as archive:
        for data in _history():
            archive.store(data)
            expected[_uid(data)] = data
        # One batch as well, so that a group commit is replayed too.
        archive.store_many([corpus_bytes(SAME_UID_EXPLICIT),
                            corpus_bytes(SAME_UID_IMPLICIT)])
    assert len(list((store / "segments").glob("*.seg"))) >= 3
    return store, expected


@pytest.fixture
def populated(template, tmp_path) -> tuple[Path, dict[str, bytes]]:
    store = tmp_path / "store"
    shutil.copytree(template[0], store)
    return store, template[1]


def _index_contents(store: Path) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every key and value of every database of the index."""
    index = Index(store / "index", readonly=True)
    try:
        with index.read() as txn:
            return {name: list(txn.cursor(db=db))
                    for name, db in index.db.items()}
    finally:
        index.close()


def _answers(store: Path) -> dict[str, object]:
    with Archive(store, readonly=True) as archive:
        answers: dict[str, object] = {
            level: archive.find(level) for level in LEVELS}
        answers["by patient"] = archive.find("study", PatientID="DEV")
        answers["by modality"] = archive.find("series", Modality="CT")
        answers["stats"] = archive.stats()
        return answers


def _place(store: Path, uid: str, position: int) -> tuple[int, int]:
    """(segment, offset) of block ``position`` of an instance: 0 is its
    header block, 1.. its frame blocks, -1 its manifest."""
    with Archive(store, readonly=True) as archive:
        record = archive.record(uid)
        if position == -1:
            return tuple(record["manifest"])
        name = [record["header"], *record["blocks"]][position]
        with archive._index.read() as txn:
            entry = archive._index.block(txn, bytes.fromhex(name))
    return entry.segment, entry.offset


def _flip(store: Path, segment: int, offset: int) -> None:
    with open(segment_path(store / "segments", segment), "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ 0x5A]))


def test_rebuild_after_losing_the_index_brings_back_the_same_store(
        populated):
    store, expected = populated
    contents, answers = _index_contents(store), _answers(store)
    shutil.rmtree(store / "index")

    report = rebuild_index(store)

    assert report.problems == []
    assert report.old_index is None
    assert report.instances == len(expected)
    assert _index_contents(store) == contents  # refcounts, places, links
    assert _answers(store) == answers
    with Archive(store, readonly=True) as archive:
        for uid, data in expected.items():
            assert archive.get(uid) == data


def test_rebuild_keeps_the_old_index_beside_the_new(populated):
    store, expected = populated
    contents = _index_contents(store)

    report = rebuild_index(store)

    assert report.old_index is not None
    assert report.old_index.parent == store
    assert report.old_index.name.startswith("index.old-")
    assert not list(store.glob("index.rebuild-*"))
    shutil.rmtree(store / "index")
    report.old_index.rename(store / "index")
    assert _index_contents(store) == contents


def test_rebuilt_store_takes_new_instances_and_verifies_clean(populated):
    store, expected = populated
    shutil.rmtree(store / "index")
    rebuild_index(store)
    extra = _variant(MR_SMALL, SOPInstanceUID="1.2.826.0.1.3680043.8.498"
                     ".77.3")

    with Archive(store, segment_size=SEGMENT_SIZE) as archive:
        assert archive.store(extra).status == "stored"
        assert archive.store(corpus_bytes(MR_SMALL)).status == "duplicate"
        report = archive.verify()
    assert report.problems == []
    assert report.instances == len(expected) + 1
    assert not (store / "recovered").exists()


def test_rebuild_skips_a_damaged_frame_and_leaves_its_instance_out(
        populated):
    store, expected = populated
    victim = _uid(corpus_bytes(EMRI_10_FRAMES))
    segment, offset = _place(store, victim, 4)
    _flip(store, segment, offset + blocks.HEADER_SIZE + 100)

    report = rebuild_index(store)

    kinds = {(p.kind, p.segment, p.sop_instance_uid) for p in report.problems}
    assert (DAMAGED_BLOCK, segment, None) in kinds
    assert any(p.kind == DAMAGED_BLOCK and p.offset == offset
               for p in report.problems)
    incomplete = [p for p in report.problems
                  if p.kind == INCOMPLETE_INSTANCE]
    assert [p.sop_instance_uid for p in incomplete] == [victim]
    assert len(report.problems) == 2
    with Archive(store, readonly=True) as archive:
        with pytest.raises(NotFoundError):
            archive.get(victim)
        assert victim not in {a["SOPInstanceUID"]
                              for a in archive.find("instance")}
        for uid, data in expected.items():
            if uid != victim:
                assert archive.get(uid) == data


def test_rebuild_does_not_bring_back_what_a_lost_replacement_replaced(
        populated):
    store, expected = populated
    replaced = _uid(corpus_bytes(SAME_UID_IMPLICIT))
    segment, offset = _place(store, replaced, 0)  # the newest header
    _flip(store, segment, offset + blocks.HEADER_SIZE + 10)

    report = rebuild_index(store)

    # Each manifest of the chain that uses that header is incomplete; the
    # last one undoes the replace before it.
    incomplete = [p for p in report.problems
                  if p.kind == INCOMPLETE_INSTANCE]
    assert {p.sop_instance_uid for p in incomplete} == {replaced}
    assert "not brought back" in incomplete[-1].message
    with Archive(store, readonly=True) as archive:
        assert replaced not in archive  # not the older content either


def test_rebuild_loses_only_the_instance_of_a_damaged_manifest(populated):
    store, expected = populated
    victim = _uid(corpus_bytes(MR_SMALL))
    segment, offset = _place(store, victim, -1)
    _flip(store, segment, offset + blocks.HEADER_SIZE + 5)

    report = rebuild_index(store)

    (problem,) = report.problems
    assert (problem.kind, problem.segment, problem.offset) == (
        DAMAGED_BLOCK, segment, offset)
    assert "manifest" in problem.message
    with Archive(store, readonly=True) as archive:
        assert victim not in archive
        assert len(archive.find("instance")) == len(expected) - 1


def test_rebuild_takes_in_a_torn_tail_and_the_writer_sets_it_aside(
        populated):
    store, expected = populated
    last = max((store / "segments").glob("*.seg"))
    committed = last.stat().st_size
    with open(last, "ab") as handle:  # a batch a crash cut short
        handle.write(b"PSBK" + b"\x00" * 40)

    report = rebuild_index(store)

    (problem,) = report.problems
    assert (problem.kind, problem.offset) == (DAMAGED_BLOCK, committed)
    with Archive(store) as archive:
        assert len(archive.find("instance")) == len(expected)
    assert last.stat().st_size == committed
    (aside,) = (store / "recovered").iterdir()
    assert aside.read_bytes() == b"PSBK" + b"\x00" * 40


def test_rebuild_leaves_out_a_segment_with_a_damaged_header(populated):
    store, expected = populated
    path = segment_path(store / "segments", 2)
    _flip(store, 2, 20)  # its creation time, under the header's CRC32
    damaged = path.read_bytes()

    report = rebuild_index(store)

    assert (report.problems[0].kind, report.problems[0].segment) == (
        SEGMENT, 2)
    with Archive(store) as archive:
        kept = {a["SOPInstanceUID"] for a in archive.find("instance")}
        for uid in kept:
            assert archive.get(uid) == expected[uid]
        # Older than the newest segment, so no crash's leftover: the
        # writer leaves it for repair, and verify goes on reporting it.
        unlisted, *unindexed = archive.verify().problems
    assert 0 < len(kept) < len(expected)
    assert {p.sop_instance_uid for p in report.problems[1:]
            if p.kind != MISSING_BASE} <= set(expected) - kept
    assert path.read_bytes() == damaged
    assert not (store / "recovered").exists()
    assert (unlisted.kind, unlisted.segment) == (UNLISTED_SEGMENT, 2)
    # Header blocks compressed against a base the lost segment held are
    # left out with it, and verify finds them unindexed.
    without_base = [(p.segment, p.offset) for p in report.problems
                    if p.kind == MISSING_BASE]
    assert without_base
    assert [(p.kind, p.segment, p.offset) for p in unindexed] == \
        [(UNINDEXED_BLOCK, *place) for place in without_base]


def test_rebuild_reports_a_missing_segment_and_keeps_the_rest(populated):
    store, expected = populated
    path = segment_path(store / "segments", 2)
    path.rename(store / "segment-2-elsewhere")

    report = rebuild_index(store)

    assert (report.problems[0].kind, report.problems[0].segment) == (
        MISSING_SEGMENT, 2)
    with Archive(store, readonly=True) as archive:
        kept = {a["SOPInstanceUID"] for a in archive.find("instance")}
        for uid in kept:
            assert archive.get(uid) == expected[uid]
    assert 0 < len(kept) < len(expected)


def _segment_numbers(store: Path) -> list[int]:
    return sorted(int(p.stem) for p in (store / "segments").glob("*.seg"))


@pytest.mark.parametrize("loss", ["newest deleted", "cut to its header",
                                  "cut at a block boundary"])
def test_rebuild_reports_what_the_old_index_had_and_the_segments_lost(
        populated, loss):
    """Losses that leave no trace in the segments themselves: the old
    index, when it can be read, says what was committed. Before, each
    rebuilt with no problem reported and verify found nothing after."""
    store, expected = populated
    numbers = _segment_numbers(store)
    number = numbers[-1] if loss == "newest deleted" else numbers[1]
    path = segment_path(store / "segments", number)
    if loss == "newest deleted":
        path.unlink()
    elif loss == "cut to its header":
        os.truncate(path, HEADER_SIZE)
    else:
        first = scan.walk(path, number, path.stat().st_size)
        os.truncate(path, next(first).end)  # after its first block

    report = rebuild_index(store)

    # The loss, and the instances it cut from their blocks (or their
    # headers from the bases they are compressed against), if any.
    (problem,) = [p for p in report.problems
                  if p.kind not in (INCOMPLETE_INSTANCE, MISSING_BASE)]
    kind = MISSING_SEGMENT if loss == "newest deleted" else SEGMENT
    assert (problem.kind, problem.segment) == (kind, number)
    assert "the old index recorded" in problem.message
    with Archive(store, readonly=True) as archive:
        assert 0 < len(archive.find("instance")) < len(expected)


def test_rebuild_without_a_readable_old_index_compares_nothing(populated):
    store, expected = populated
    (store / "index" / "data.mdb").write_bytes(b"not an LMDB file" * 512)

    report = rebuild_index(store)

    assert report.problems == []
    assert report.instances == len(expected)


def test_rebuild_removes_what_an_unfinished_rebuild_left(populated):
    store, _ = populated
    unfinished = store / "index.rebuild-x1y2"
    unfinished.mkdir()
    (unfinished / "data.mdb").write_bytes(b"half an index")

    rebuild_index(store)

    assert not unfinished.exists()


def _newer_manifest() -> bytes:
    block = blocks.encode(Kind.MANIFEST, dumps({"v": 2}),
                          compressor=zstandard.ZstdCompressor())
    return block.header + block.payload


def _newer_block() -> bytes:
    """A block whose header says the next format version, with a sound
    CRC32."""
    block = blocks.encode(Kind.FRAME, b"from a newer pacsstore",
                          compressor=zstandard.ZstdCompressor())
    head = bytearray(block.header)
    head[4] = blocks.BLOCK_FORMAT_VERSION + 1
    crc = zlib.crc32(block.payload, zlib.crc32(head[:60]))
    head[60:64] = crc.to_bytes(4, "little")
    return bytes(head) + block.payload


@pytest.mark.parametrize("newer, says", [
    (_newer_manifest, "version 2"),
    (_newer_block, f"version {blocks.BLOCK_FORMAT_VERSION + 1}")],
    ids=["manifest", "block"])
def test_rebuild_refuses_what_a_newer_version_wrote(populated, newer, says):
    store, _ = populated
    contents = _index_contents(store)
    last = max((store / "segments").glob("*.seg"))
    with open(last, "ab") as handle:
        handle.write(newer())

    with pytest.raises(NewerFormatError, match=says):
        rebuild_index(store)

    assert _index_contents(store) == contents
    assert sorted(p.name for p in store.iterdir()) == [
        "PACSSTORE", "index", "lock", "segments"]


def _append_manifest(store: Path, content: bytes) -> None:
    """A sound manifest block of ``content`` at the end of the last
    segment, as a writer would have left it."""
    block = blocks.encode(Kind.MANIFEST, content,
                          compressor=zstandard.ZstdCompressor())
    last = max((store / "segments").glob("*.seg"))
    with open(last, "ab") as handle:
        handle.write(block.header + block.payload)


def test_rebuild_reports_a_manifest_of_json_nested_too_deep(populated):
    """A sound block whose JSON json.loads cannot parse for recursion:
    that raised a bare RecursionError out of the rebuild."""
    store, expected = populated
    _append_manifest(store, b"[" * 100_000 + b"]" * 100_000)

    report = rebuild_index(store)

    (problem,) = report.problems
    assert "nested too deep" in problem.message
    with Archive(store, readonly=True) as archive:
        assert len(archive.find("instance")) == len(expected)


@pytest.mark.parametrize("change, says", [
    (lambda record: record.update(manifest=[1, 32]),
     "it names a manifest place of its own"),
    (lambda record: record.pop("transfer_syntax"),
     "field 'transfer_syntax' is missing or malformed"),
])
def test_rebuild_leaves_out_a_manifest_verify_would_call_wrong(
        populated, change, says):
    """A sound block holding a record that a rebuild would index but
    verify would then find wrong for ever (a place of its own, or no
    transfer syntax, which find takes): rebuild leaves it out."""
    store, expected = populated
    uid = _uid(corpus_bytes(MR_SMALL))
    with Archive(store, readonly=True) as archive:
        record = dict(archive.record(uid))
    record.pop("manifest")
    change(record)
    _append_manifest(store, dumps(record))

    report = rebuild_index(store)

    (problem,) = report.problems
    assert says in problem.message
    with Archive(store, readonly=True) as archive:
        assert archive.get(uid) == expected[uid]
        assert archive.verify().ok


HOLDER = textwrap.dedent("""
    import sys
    from pacsstore import Archive
    with Archive(sys.argv[1]):
        print("ready", flush=True)
        sys.stdin.read()
""")


def test_rebuild_refuses_while_another_process_writes(populated):
    store, _ = populated
    contents = _index_contents(store)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(store)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": str(SRC)})
    try:
        assert holder.stdout.readline() == "ready\n"
        with pytest.raises(StoreLockedError, match="stop it"):
            rebuild_index(store)
        result = CliRunner().invoke(cli, ["--store", str(store),
                                          "rebuild-index"])
        assert result.exit_code == 1
        assert "open for writing by another process" in result.output
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert holder.returncode == 0
    assert _index_contents(store) == contents
    assert not list(store.glob("index.*"))


def test_cli_rebuild_index_reports_and_the_store_reads_again(populated):
    store, expected = populated
    shutil.rmtree(store / "index")

    result = CliRunner().invoke(cli, ["--store", str(store),
                                      "rebuild-index"])

    assert result.exit_code == 0, result.output
    assert f"{len(expected)} instances, 0 problems" in result.output
    uid, data = next(iter(expected.items()))
    got = CliRunner().invoke(cli, ["--store", str(store), "get", uid])
    assert got.stdout_bytes == data


def test_cli_rebuild_index_exits_non_zero_on_damage(populated):
    store, _ = populated
    victim = _uid(corpus_bytes(CT_SMALL))
    segment, offset = _place(store, victim, 1)
    _flip(store, segment, offset + blocks.HEADER_SIZE + 1)

    result = CliRunner().invoke(cli, ["--store", str(store),
                                      "rebuild-index", "--json"])

    assert result.exit_code == 1
    report = json.loads(result.output)
    assert {p["kind"] for p in report["problems"]} == {
        DAMAGED_BLOCK, INCOMPLETE_INSTANCE}
    assert victim in {p["sop_instance_uid"] for p in report["problems"]}


def test_rebuild_on_a_read_only_store_says_so(populated, monkeypatch):
    """On a read-only mount the lock file cannot be opened: a traceback
    of OSError before."""
    store, _ = populated
    real_open = os.open

    def read_only(path, flags, *args):
        if Path(path).name == "lock":
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)
    monkeypatch.setattr(os, "open", read_only)

    with pytest.raises(ReadOnlyStoreError, match="needs the store writable"):
        rebuild_index(store)
