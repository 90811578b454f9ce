"""Archive.get_many: a study read in order while the next instances are
read ahead on a thread pool.

The corpus is stored once (policy ``replace``, as in
test_corpus_roundtrip.py: under it the last file stored with a UID is
the one to come back), and every stored instance must come back from
get_many byte for byte, the same bytes as get and the file the manifest
names. The rest checks the contract: the order asked for, an error at
the position it belongs to, a bounded read-ahead, nothing left running
after an early stop, damage found on read, and reads beside a writer.
"""

from __future__ import annotations

import gc
import hashlib
import os
import subprocess
import sys
import textwrap
import struct
import threading
import time
import zlib
from pathlib import Path

import pydicom
import pytest
import zstandard

from corpus import CORPUS_ROOT, corpus_available, corpus_files
from pacsstore import (
    Archive,
    ArchiveClosedError,
    CorruptStoreError,
    NotFoundError,
    QueryError,
)
from pacsstore.store import blocks, filters, readahead, scratch
from pacsstore.store.blocks import Kind
from pacsstore.store.reader import InstanceReader

pytestmark = pytest.mark.skipif(not corpus_available(),
                                reason="../shared/corpus is absent")

SRC = Path(__file__).resolve().parents[1] / "src"
UNKNOWN = "1.2.826.0.1.3680043.8.498.999999999999"


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """(archive, {uid: sha256 of the file the archive must return})."""
    path = tmp_path_factory.mktemp("corpus") / "store"
    entries = corpus_files()
    archive = Archive(path, on_conflict="replace")
    results = archive.store_many([e.path for e in entries],
                                 skip_invalid=True)
    expected: dict[str, str] = {}
    for entry, result in zip(entries, results):
        if result.status in ("stored", "replaced"):
            expected[result.sop_instance_uid] = entry.sha256
    yield archive, expected
    archive.close()


def _count_reads(monkeypatch, delay: float = 0.0) -> list[str]:
    """The UIDs of the instances whose reading started, each read taking
    at least ``delay`` seconds."""
    started: list[str] = []
    read_all = InstanceReader.read_all

    def counted(reader: InstanceReader, *args) -> bytes:
        started.append(reader.record["sop_instance_uid"])
        time.sleep(delay)
        return read_all(reader, *args)

    monkeypatch.setattr(InstanceReader, "read_all", counted)
    return started


@pytest.fixture
def reads(monkeypatch):
    return _count_reads(monkeypatch)


@pytest.fixture
def slow_reads(monkeypatch):
    """Reads slow enough that the read-ahead is still queued when the
    caller stops."""
    return _count_reads(monkeypatch, delay=0.05)


def _read_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t.name.startswith("pacsstore-read")]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_every_corpus_instance_comes_back_byte_exact(stored):
    archive, expected = stored
    uids = list(expected)
    assert len(uids) > 1500
    count = 0
    for uid, data in zip(uids, archive.get_many(uids), strict=True):
        assert _sha(data) == expected[uid], uid
        assert data == archive.get(uid), uid
        count += 1
    assert count == len(uids)


def test_instances_come_in_the_order_asked_for(stored):
    archive, expected = stored
    uids = list(expected)[:40]
    # Reversed, with repeats: each position gets its own instance.
    asked = uids[::-1] + [uids[3], uids[3], uids[0]]
    got = list(archive.get_many(asked))
    assert [_sha(d) for d in got] == [expected[u] for u in asked]


def test_an_empty_list_yields_nothing(stored):
    archive, _ = stored
    assert list(archive.get_many([])) == []


def test_a_generator_of_uids_is_read_lazily(stored):
    archive, expected = stored
    uids = list(expected)[:10]
    got = [_sha(d) for d in archive.get_many(u for u in uids)]
    assert got == [expected[u] for u in uids]


def test_an_unknown_uid_raises_at_its_position(stored, reads):
    archive, expected = stored
    before, after = list(expected)[:5], list(expected)[5:30]
    iterator = archive.get_many(before + [UNKNOWN] + after)
    for uid in before:
        assert _sha(next(iterator)) == expected[uid]
    with pytest.raises(NotFoundError, match=UNKNOWN):
        next(iterator)
    # The error ends the iteration, and nothing past it was read.
    assert next(iterator, None) is None
    assert sorted(reads) == sorted(before)


def test_a_uid_that_is_not_a_string_raises_at_its_position(stored):
    archive, expected = stored
    first = next(iter(expected))
    iterator = archive.get_many([first, 12345])
    assert _sha(next(iterator)) == expected[first]
    with pytest.raises(QueryError, match="12345"):
        next(iterator)


def test_an_error_of_the_callers_iterable_comes_at_its_position(stored):
    archive, expected = stored
    uids = list(expected)[:3]

    def source():
        yield from uids
        raise OSError("the list of UIDs could not be read")

    iterator = archive.get_many(source())
    assert [_sha(next(iterator)) for _ in uids] == \
        [expected[u] for u in uids]
    with pytest.raises(OSError, match="could not be read"):
        next(iterator)


@pytest.mark.parametrize("bad", ["1.2.3.4", b"1.2.3.4"])
def test_one_uid_instead_of_a_list_is_refused_at_once(stored, bad):
    archive, _ = stored
    with pytest.raises(QueryError, match="iterable of SOP Instance UIDs"):
        archive.get_many(bad)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "64M"])
def test_a_bad_read_ahead_is_refused_at_once(stored, bad):
    archive, expected = stored
    with pytest.raises(QueryError, match="read_ahead"):
        archive.get_many(list(expected)[:2], read_ahead=bad)


def test_read_ahead_is_bounded_by_bytes(stored, reads):
    archive, expected = stored
    uids = list(expected)[:30]
    # A window of one byte: the next instance is read only once the
    # caller has taken the one before.
    for position, data in enumerate(archive.get_many(uids, read_ahead=1)):
        assert _sha(data) == expected[uids[position]]
        assert len(reads) == position + 1
    assert reads == uids


def _small(archive: Archive, uids) -> list[str]:
    return [u for u in uids if archive.record(u)["size"] < 1 << 20]


def test_read_ahead_reads_ahead_while_the_caller_waits(stored, reads):
    archive, expected = stored
    uids = _small(archive, expected)[:30]
    iterator = archive.get_many(uids)
    next(iterator)
    # The caller holds the first; the pool goes on with the next ones,
    # as many as the window and the count limit allow, and no more.
    deadline = time.monotonic() + 10
    while len(reads) < readahead._MAX_AHEAD and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    assert sorted(reads) == sorted(uids[:readahead._MAX_AHEAD])
    iterator.close()


def test_closing_early_cancels_and_leaves_no_thread(stored, slow_reads):
    archive, expected = stored
    uids = list(expected)
    iterator = archive.get_many(uids)
    assert _sha(next(iterator)) == expected[uids[0]]
    iterator.close()
    # What had started is finished, what had not never starts.
    assert _read_threads() == []
    started = len(slow_reads)
    assert started < readahead._MAX_AHEAD
    time.sleep(0.2)
    assert len(slow_reads) == started
    # The archive is unaffected.
    assert _sha(archive.get(uids[1])) == expected[uids[1]]


def test_dropping_the_iterator_leaves_no_thread(stored, slow_reads):
    archive, expected = stored
    iterator = archive.get_many(list(expected))
    next(iterator)
    del iterator
    gc.collect()
    assert _read_threads() == []


def test_an_iterator_never_started_starts_no_thread(stored):
    archive, expected = stored
    archive.get_many(list(expected))
    assert _read_threads() == []


def _small_store(path: Path, count: int) -> tuple[Archive, list[str],
                                                   list[bytes]]:
    """A store of the first ``count`` corpus files with distinct UIDs and
    distinct pixel data (no block shared), and their bytes."""
    archive = Archive(path, on_conflict="keep-first")
    uids, contents, seen = [], [], set()
    for entry in corpus_files():
        if len(uids) == count:
            break
        if entry.transfer_syntax != "1.2.840.10008.1.2.1" or \
                entry.path.stat().st_size < 20_000:
            continue
        result = archive.store(entry.path)
        if result.status != "stored" or not result.frames:
            continue
        names = set(archive.record(result.sop_instance_uid)["blocks"])
        if names & seen:
            continue
        seen |= names
        uids.append(result.sop_instance_uid)
        contents.append(entry.path.read_bytes())
    assert len(uids) == count
    return archive, uids, contents


def test_damage_raises_at_the_damaged_instance(tmp_path):
    archive, uids, contents = _small_store(tmp_path / "s", 3)
    with archive._index.read() as txn:
        frame = archive.record(uids[1])["blocks"][0]
        entry = archive._index.block(txn, bytes.fromhex(frame))
    archive.close()
    segment = tmp_path / "s" / "segments" / f"{entry.segment:08d}.seg"
    raw = bytearray(segment.read_bytes())
    raw[entry.offset + 64 + entry.stored_length // 2] ^= 0x40
    segment.write_bytes(bytes(raw))
    with Archive(tmp_path / "s", readonly=True) as reader:
        iterator = reader.get_many(uids)
        assert next(iterator) == contents[0]
        with pytest.raises(CorruptStoreError, match="CRC32"):
            next(iterator)
        assert next(iterator, None) is None


def test_a_closed_archive_raises_instead_of_hanging(tmp_path):
    archive, uids, contents = _small_store(tmp_path / "s", 4)
    archive.close()
    with pytest.raises(ArchiveClosedError):
        next(archive.get_many(uids))


def test_closing_the_archive_mid_iteration_ends_it_cleanly(tmp_path):
    archive, uids, contents = _small_store(tmp_path / "s", 4)
    iterator = archive.get_many(uids * 10)
    assert next(iterator) == contents[0]
    archive.close()
    served = 1
    with pytest.raises(ArchiveClosedError):
        # What was read and checked before the close may still come.
        for data in iterator:
            assert data == contents[served % len(uids)]
            served += 1
    assert served <= readahead._MAX_AHEAD
    assert _read_threads() == []


def test_reading_beside_a_writer_in_the_same_archive(tmp_path):
    entries = [e for e in corpus_files()
               if e.transfer_syntax == "1.2.840.10008.1.2.1"][:200]
    archive = Archive(tmp_path / "s")
    try:
        first = archive.store_many([e.path for e in entries[:100]],
                                   skip_invalid=True)
        stored = {r.sop_instance_uid: e.sha256
                  for e, r in zip(entries, first) if r.status == "stored"}
        assert len(stored) > 50
        writer = threading.Thread(target=archive.store_many, args=(
            [e.path for e in entries[100:]],), kwargs={"skip_invalid": True})
        writer.start()
        try:
            for _ in range(3):
                got = [_sha(d) for d in archive.get_many(list(stored))]
                assert got == list(stored.values())
        finally:
            writer.join()
        assert archive.stats().instances > len(stored)
    finally:
        archive.close()


READER = textwrap.dedent("""
    import hashlib, sys
    from pacsstore import Archive
    uids = sys.argv[2:]
    with Archive(sys.argv[1], readonly=True) as archive:
        for data in archive.get_many(uids):
            print(hashlib.sha256(data).hexdigest())
""")


def test_readonly_archive_in_another_process_while_writing(tmp_path):
    entries = [e for e in corpus_files()
               if e.transfer_syntax == "1.2.840.10008.1.2.1"][:160]
    with Archive(tmp_path / "s") as writer:
        results = writer.store_many([e.path for e in entries[:80]],
                                    skip_invalid=True)
        stored = {r.sop_instance_uid: e.sha256
                  for e, r in zip(entries, results) if r.status == "stored"}
        reader = subprocess.Popen(
            [sys.executable, "-c", READER, str(tmp_path / "s"), *stored],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # Inherited, so that the sanitizer run's preload reaches it.
            env={**os.environ, "PYTHONPATH": str(SRC)})
        writer.store_many([e.path for e in entries[80:]], skip_invalid=True)
        out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err
    assert out.split() == list(stored.values())


# The block decode every read thread runs ---------------------------------
#
# Each thread decompresses planes16 blocks into a scratch buffer of its
# own and reuses one zstd context; what a decode returns must never be
# that buffer, whatever the threads do at once.

COMPRESSOR = zstandard.ZstdCompressor(level=3, write_content_size=True)
CT_FRAMES = ["pydicom/test_files/CT_small.dcm",
             "pydicom/test_files/MR_small.dcm",
             "pydicom-data/emri_small.dcm"]


def _corpus_frames() -> list[bytes]:
    """Native 16-bit frames of real images, of different sizes."""
    frames = []
    for relpath in CT_FRAMES:
        ds = pydicom.dcmread(CORPUS_ROOT / relpath)
        assert ds.BitsAllocated == 16
        size = ds.Rows * ds.Columns * 2
        frames += [ds.PixelData[i * size:(i + 1) * size]
                   for i in range(min(int(ds.get("NumberOfFrames", 1)), 3))]
    return frames


def _filtered_block(content: bytes) -> tuple[blocks.BlockHeader, bytes,
                                             bytes]:
    block = blocks.encode(Kind.FRAME, content, compressor=COMPRESSOR,
                          sample_bytes=2)
    assert block.codec is blocks.Codec.PLANES16_ZSTD_PER_PLANE
    header = blocks.parse_header(block.header, "test")
    return header, block.header, block.payload


def test_decodes_on_many_threads_at_once_stay_apart():
    frames = _corpus_frames()
    encoded = [_filtered_block(f) for f in frames]
    failures = []

    def decode_all(shift: int) -> None:
        for round_ in range(20):
            index = (round_ + shift) % len(frames)
            header, head, payload = encoded[index]
            content = blocks.decode(header, head, payload, "test")
            # Decode another block before looking: a result that aliased
            # the thread's scratch buffer would change under us.
            other = encoded[(index + 1) % len(frames)]
            blocks.decode(other[0], other[1], other[2], "test")
            if content != frames[index]:
                failures.append(index)

    threads = [threading.Thread(target=decode_all, args=(shift,))
               for shift in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_a_frame_above_the_scratch_limit_decodes_too(monkeypatch):
    frame = _corpus_frames()[0]
    monkeypatch.setattr(scratch, "KEEP_LIMIT", len(frame) // 4)
    header, head, payload = _filtered_block(frame)
    assert blocks.decode(header, head, payload, "test") == frame


def _with_payload(header: bytes, payload: bytes) -> bytes:
    """``header`` with the stored length and CRC32 of ``payload``."""
    head = header[:48] + struct.pack("<Q", len(payload)) + header[56:60]
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))


def test_a_filtered_payload_that_decompresses_to_more_is_corruption():
    # An intact zstd frame (its CRC32 right) holding a byte more than the
    # filtered form of the stated content: refused without decoding the
    # excess into memory.
    frame = _corpus_frames()[0]
    header, head, _ = _filtered_block(frame)
    longer = COMPRESSOR.compress(filters.planes16(frame) + b"\0" * 4096)
    head = _with_payload(head, longer)
    header = blocks.parse_header(head, "segment 3 offset 99")
    with pytest.raises(CorruptStoreError,
                       match="segment 3 offset 99 decompresses to more "
                             f"than {filters.planes16_length(len(frame))} "
                             f"bytes of filtered"):
        blocks.decode(header, head, longer, "segment 3 offset 99")


def test_a_payload_that_is_not_zstd_is_corruption():
    frame = _corpus_frames()[0]
    _, head, payload = _filtered_block(frame)
    garbage = bytes(reversed(payload))
    head = _with_payload(head, garbage)
    header = blocks.parse_header(head, "segment 3 offset 99")
    with pytest.raises(CorruptStoreError,
                       match="segment 3 offset 99 does not decompress"):
        blocks.decode(header, head, garbage, "segment 3 offset 99")
    # The thread's context and scratch buffer still decode a good block.
    header, head, payload = _filtered_block(frame)
    assert blocks.decode(header, head, payload, "test") == frame
