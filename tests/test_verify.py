"""verify: a sound store verifies clean, and each kind of damage to the
segments or the index is reported with the instance and the segment
place it touches."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import lmdb
import pydicom
import pytest
import zstandard
from click.testing import CliRunner

from pacsstore import Archive, CorruptStoreError
from pacsstore.cli import main as cli
from pacsstore.store import blocks, verify
from pacsstore.store.index import BlockEntry, Index
from pacsstore.store.segments import segment_path
from test_store_support import (
    CT_SMALL,
    EMRI_10_FRAMES,
    JPEG_FRAGMENTED,
    MR_SMALL,
    RLE_2_FRAMES,
    corpus_bytes,
    corpus_path,
)

SRC = Path(__file__).resolve().parents[1] / "src"
SEGMENT_SIZE = 64 << 10
# A second CT that shares CT_SMALL's pixel data: a block with two
# references.
CT_COPY_UID = "1.2.826.0.1.3680043.8.498.78.1"


def _copy_of_ct() -> bytes:
    ds = pydicom.dcmread(corpus_path(CT_SMALL))
    ds.SOPInstanceUID = CT_COPY_UID
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data),
                               stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("template") / "store"
    items = [corpus_bytes(f) for f in (CT_SMALL, MR_SMALL, EMRI_10_FRAMES,
                                       JPEG_FRAGMENTED, RLE_2_FRAMES)]
    with Archive(store, segment_size=SEGMENT_SIZE) as archive:
        archive.store_many([*items, _copy_of_ct()])
    return store


@pytest.fixture
def store(template, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(template, copy)
    return copy


def _verify(store: Path) -> verify.VerifyReport:
    with Archive(store, readonly=True) as archive:
        return archive.verify()


def _block(store: Path, uid: str, position: int) -> tuple[bytes,
                                                          BlockEntry]:
    """Name and index entry of block ``position`` of an instance (0 its
    header block, 1.. its frame blocks)."""
    with Archive(store, readonly=True) as archive:
        record = archive.record(uid)
        name = bytes.fromhex([record["header"], *record["blocks"]][position])
        with archive._index.read() as txn:
            return name, archive._index.block(txn, name)


def _edit_index(store: Path,
                work: Callable[[Index, lmdb.Transaction], None]) -> None:
    index = Index(store / "index", readonly=False)
    try:
        index.write(lambda txn: work(index, txn))
    finally:
        index.close()


def _flip(store: Path, segment: int, offset: int) -> None:
    with open(segment_path(store / "segments", segment), "r+b") as handle:
        handle.seek(offset)
        value = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([value ^ 0xFF]))


def _touching(report: verify.VerifyReport, kind: str) -> set[tuple]:
    return {(p.segment, p.offset, p.sop_instance_uid)
            for p in report.problems if p.kind == kind}


def test_verify_finds_nothing_wrong_with_a_sound_store(store):
    report = _verify(store)

    assert report.problems == []
    assert report.ok
    assert report.instances == 6
    assert report.segments >= 3
    # Every block and manifest the instances wrote was read.
    with Archive(store, readonly=True) as archive:
        stats = archive.stats()
    assert report.blocks == stats.blocks + stats.instances
    assert report.summary() == (
        f"verified {report.segments} segments, {report.blocks} blocks "
        f"(manifests included), 6 instances: 0 problems")


@pytest.mark.parametrize("where", [blocks.HEADER_SIZE + 100, 0, 4, 8, 48],
                         ids=["payload", "magic", "version", "digest",
                              "length"])
def test_verify_reports_a_damaged_block_with_its_instance(store, where):
    uid = _uid(corpus_bytes(EMRI_10_FRAMES))
    _, entry = _block(store, uid, 3)
    _flip(store, entry.segment, entry.offset + where)

    report = _verify(store)

    damaged = [p for p in report.problems if p.kind == verify.DAMAGED_BLOCK]
    assert [(p.segment, p.offset) for p in damaged] == [
        (entry.segment, entry.offset)]
    assert _touching(report, verify.UNREADABLE_INSTANCE) == {
        (entry.segment, entry.offset, uid)}
    assert damaged[0].sop_instance_uid == uid
    # The blocks after the damaged one were found again and are sound.
    assert {p.kind for p in report.problems} == {
        verify.DAMAGED_BLOCK, verify.UNREADABLE_INSTANCE}


def test_verify_reports_a_truncated_segment_and_what_it_lost(store):
    uid = _uid(corpus_bytes(JPEG_FRAGMENTED))
    _, entry = _block(store, uid, 0)
    path = segment_path(store / "segments", entry.segment)
    os.truncate(path, entry.offset + 10)

    report = _verify(store)

    # The segment is too short, the block the cut runs through is
    # damaged, and the instance that used it cannot be read.
    assert [(p.kind, p.segment, p.offset, p.sop_instance_uid)
            for p in report.problems] == [
        (verify.SEGMENT, entry.segment, entry.offset + 10, None),
        (verify.DAMAGED_BLOCK, entry.segment, entry.offset, uid),
        (verify.UNREADABLE_INSTANCE, entry.segment, entry.offset, uid)]


def test_verify_reports_a_reference_count_off_by_one(store):
    name, entry = _block(store, _uid(corpus_bytes(MR_SMALL)), 1)
    _edit_index(store, lambda index, txn: index.put_block(
        txn, name, entry.with_refcount(entry.refcount + 1)))

    report = _verify(store)

    (problem,) = report.problems
    assert problem.kind == verify.REFCOUNT
    assert (problem.segment, problem.offset, problem.sop_instance_uid) == (
        entry.segment, entry.offset, _uid(corpus_bytes(MR_SMALL)))
    assert f"reference count {entry.refcount + 1}" in problem.message


def test_verify_counts_references_of_a_shared_block(store):
    uid = _uid(corpus_bytes(CT_SMALL))
    name, entry = _block(store, uid, 1)
    assert entry.refcount == 2  # CT_SMALL and its copy share the frame
    _edit_index(store, lambda index, txn: index.put_block(
        txn, name, entry.with_refcount(1)))

    (problem,) = _verify(store).problems

    assert problem.kind == verify.REFCOUNT
    assert problem.sop_instance_uid in (uid, CT_COPY_UID)
    assert "the instance records make 2" in problem.message


def test_verify_reports_a_block_place_pointing_elsewhere(store):
    uid = _uid(corpus_bytes(RLE_2_FRAMES))
    name, entry = _block(store, uid, 2)
    _, other = _block(store, _uid(corpus_bytes(MR_SMALL)), 0)
    moved = BlockEntry(other.segment, other.offset, entry.raw_length,
                       entry.stored_length, entry.kind, entry.codec,
                       entry.refcount)
    _edit_index(store, lambda index, txn: index.put_block(txn, name, moved))

    report = _verify(store)

    assert _touching(report, verify.MISPLACED_BLOCK) == {
        (other.segment, other.offset, uid)}
    (misplaced,) = [p for p in report.problems
                    if p.kind == verify.MISPLACED_BLOCK]
    assert f"lies at segment {entry.segment} offset {entry.offset}" in \
        misplaced.message
    assert _touching(report, verify.UNREADABLE_INSTANCE) == {
        (other.segment, other.offset, uid)}


def test_verify_reports_an_instance_whose_digest_was_changed(store):
    uid = _uid(corpus_bytes(EMRI_10_FRAMES))
    with Archive(store, readonly=True) as archive:
        record = archive.record(uid)
    record["sha256"] = "0" * 64
    _edit_index(store, lambda index, txn: index.put_record(
        txn, "instance", uid, record))

    report = _verify(store)

    manifest = tuple(record["manifest"])
    assert _touching(report, verify.INSTANCE_DIGEST) == {(*manifest, uid)}
    (differs,) = [p for p in report.problems if p.kind == verify.MANIFEST]
    assert (differs.segment, differs.offset) == manifest
    assert "in sha256;" in differs.message
    assert len(report.problems) == 2


def test_verify_reports_a_missing_block_entry_where_the_block_lies(store):
    uid = _uid(corpus_bytes(JPEG_FRAGMENTED))
    name, entry = _block(store, uid, 1)
    _edit_index(store, lambda index, txn: txn.delete(
        name, db=index.db["blocks"]))

    report = _verify(store)

    (problem,) = report.problems
    assert problem.kind == verify.MISSING_BLOCK_ENTRY
    assert (problem.segment, problem.offset, problem.sop_instance_uid) == (
        entry.segment, entry.offset, uid)
    assert name.hex() in problem.message


def test_verify_reports_an_intact_block_the_index_does_not_know(store):
    orphan = blocks.encode(blocks.Kind.FRAME, b"no instance names this",
                           compressor=zstandard.ZstdCompressor())
    with Archive(store, readonly=True) as archive:
        with archive._index.read() as txn:
            lengths = archive._index.segments(txn)
    last = max(lengths)
    with open(segment_path(store / "segments", last), "ab") as handle:
        handle.write(orphan.header + orphan.payload)
    _edit_index(store, lambda index, txn: index.put_segments(
        txn, {last: lengths[last] + orphan.total_length}))

    (problem,) = _verify(store).problems

    assert (problem.kind, problem.segment, problem.offset) == (
        verify.UNINDEXED_BLOCK, last, lengths[last])
    assert orphan.digest.hex() in problem.message


def test_verify_reports_a_damaged_instance_record(store):
    uid = _uid(corpus_bytes(MR_SMALL))
    _edit_index(store, lambda index, txn: txn.put(
        uid.encode(), b"{not json", db=index.db["instances"]))

    report = _verify(store)

    # The record is unusable and its blocks lose a reference.
    assert {p.kind for p in report.problems} == {verify.RECORD,
                                                 verify.REFCOUNT}
    (record,) = [p for p in report.problems if p.kind == verify.RECORD]
    assert record.sop_instance_uid == uid


def test_verify_reports_a_damaged_block_entry(store):
    uid = _uid(corpus_bytes(MR_SMALL))
    name, _ = _block(store, uid, 1)
    _edit_index(store, lambda index, txn: txn.put(
        name, b"cut short", db=index.db["blocks"]))

    (problem,) = _verify(store).problems

    assert (problem.kind, problem.sop_instance_uid) == (
        verify.BLOCK_ENTRY, uid)
    assert name.hex() in problem.message


def test_verify_reports_a_wrong_counter(store):
    _edit_index(store, lambda index, txn: index.add_counter(
        txn, "logical_bytes", 1))

    (problem,) = _verify(store).problems

    assert problem.kind == verify.COUNTER
    assert "logical_bytes" in problem.message


def test_verify_reports_a_missing_segment_file(store):
    path = segment_path(store / "segments", 2)
    path.rename(path.with_suffix(".moved"))

    report = _verify(store)

    (missing,) = [p for p in report.problems if p.kind == verify.SEGMENT]
    assert missing.segment == 2
    # Then each instance it held a block or a manifest of, and nothing
    # about the blocks themselves (the segment problem covers them).
    assert report.problems[1:]
    assert {p.kind for p in report.problems[1:]} <= {
        verify.UNREADABLE_INSTANCE, verify.MANIFEST}
    assert all(p.segment == 2 and p.sop_instance_uid
               for p in report.problems[1:])


def test_cli_verify_exits_zero_on_a_sound_store(store):
    result = CliRunner().invoke(cli, ["--store", str(store), "verify"])

    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith("6 instances: 0 problems")


def test_cli_verify_exits_non_zero_and_names_the_damage(store):
    uid = _uid(corpus_bytes(MR_SMALL))
    _, entry = _block(store, uid, 1)
    _flip(store, entry.segment, entry.offset + blocks.HEADER_SIZE + 3)

    table = CliRunner().invoke(cli, ["--store", str(store), "verify"])
    as_json = CliRunner().invoke(cli, ["--store", str(store), "verify",
                                       "--json"])

    assert table.exit_code == 1
    assert verify.DAMAGED_BLOCK in table.output and uid in table.output
    assert table.output.strip().endswith("6 instances: 2 problems")
    assert as_json.exit_code == 1
    report = json.loads(as_json.output)
    assert {(p["kind"], p["segment"], p["offset"], p["sop_instance_uid"])
            for p in report["problems"]} == {
        (verify.DAMAGED_BLOCK, entry.segment, entry.offset, uid),
        (verify.UNREADABLE_INSTANCE, entry.segment, entry.offset, uid)}


WRITER = textwrap.dedent("""
    import io, sys
    import pydicom
    from pacsstore import Archive
    ds = pydicom.dcmread(sys.argv[2])
    with Archive(sys.argv[1], on_conflict="replace",
                 segment_size=64 << 10) as archive:
        print("ready", flush=True)
        for number in range(1, 400):
            # New instances, and replaces of earlier ones.
            ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.79.{number // 2}"
            ds.InstanceNumber = number
            out = io.BytesIO()
            ds.save_as(out)
            archive.store(out.getvalue())
""")


def test_verify_is_clean_beside_a_process_that_stores(store):
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(store),
         str(corpus_path(MR_SMALL))],
        stdout=subprocess.PIPE, text=True, env={"PYTHONPATH": str(SRC)})
    try:
        assert writer.stdout.readline() == "ready\n"
        reports = []
        while writer.poll() is None or not reports:
            result = CliRunner().invoke(cli, ["--store", str(store),
                                              "verify"])
            reports.append(result)
            assert result.exit_code == 0, result.output
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0
    final = _verify(store)
    assert final.ok
    # At least one run saw the store in the middle of the writes.
    seen = [int(r.output.split(" instances")[0].rsplit(" ", 1)[1])
            for r in reports]
    assert min(seen) < final.instances, seen


def test_verify_reports_an_instance_key_that_is_not_utf8(store):
    """One damaged byte in an LMDB key: find raised UnicodeDecodeError
    and verify died with a traceback."""
    uid = _uid(corpus_bytes(MR_SMALL))

    def rekey(index: Index, txn: lmdb.Transaction) -> None:
        raw = txn.get(uid.encode(), db=index.db["instances"])
        txn.delete(uid.encode(), db=index.db["instances"])
        txn.put(b"1.\xb7" + uid.encode()[3:], raw, db=index.db["instances"])
    _edit_index(store, rekey)

    report = _verify(store)

    (record,) = [p for p in report.problems if p.kind == verify.RECORD]
    assert "not UTF-8" in record.message
    with Archive(store, readonly=True) as archive:
        with pytest.raises(CorruptStoreError, match="not UTF-8"):
            archive.find("instance")


def test_verify_and_reads_name_a_directory_where_a_segment_should_be(
        store):
    path = segment_path(store / "segments", 1)
    path.unlink()
    path.mkdir()

    report = _verify(store)

    (segment,) = [p for p in report.problems if p.kind == verify.SEGMENT]
    assert segment.segment == 1
    assert "is not a file" in segment.message
    with Archive(store, readonly=True) as archive:
        uid = _uid(corpus_bytes(CT_SMALL))
        with pytest.raises(CorruptStoreError, match="is not a file"):
            archive.get(uid)


def test_verify_reports_segments_an_empty_index_does_not_list(store):
    """An index made afresh beside segments that hold blocks (as a
    writer did once after the index was lost) verified clean."""
    shutil.rmtree(store / "index")
    Index(store / "index", readonly=False).close()

    report = _verify(store)

    unlisted = {p.segment for p in report.problems
                if p.kind == verify.UNLISTED_SEGMENT}
    on_disk = {int(p.stem) for p in (store / "segments").glob("*.seg")}
    assert unlisted == on_disk and len(on_disk) > 1


def test_verify_leaves_alone_segments_past_the_newest_listed(store):
    """Batches in flight fill them, several at once, and a crash leaves
    them for the next writer to set aside: verify beside a writer with
    small segments reported them as unlisted."""
    segments = store / "segments"
    newest = max(int(p.stem) for p in segments.glob("*.seg"))
    for number in (newest + 1, newest + 2):
        shutil.copyfile(segment_path(segments, newest),
                        segment_path(segments, number))

    assert _verify(store).problems == []
