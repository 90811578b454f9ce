"""pytest-benchmark tier: the hot paths of a store and a read, one
instance at a time (and one series read in order with get_many, and a
store_many of small reports, which takes its chunked path).

``pytest benchmarks/test_hot_paths.py`` times them; CI runs them once
each with ``--benchmark-disable`` (scripts/test.sh) so that they cannot
rot. Each test checks what its path produced, so a fast wrong answer
fails.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pydicom
import pytest
import zstandard

from pacsstore import Archive
from pacsstore.parsing import read_header
from pacsstore.store import blocks, filters, layout
from pacsstore.store.archive import SMALL_CHUNK_ITEMS
from pacsstore.synthetic import (SCANNER_NOISE, ct_series,
                                 multiframe_frames, structured_reports,
                                 write_multiframe)

FRAMES = 8
SIDE = 256
SLICES = 12


def _encoded(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def slices() -> list[tuple[str, bytes]]:
    """(SOP Instance UID, Part 10 bytes) of a short CT series."""
    return [(ds.SOPInstanceUID, _encoded(ds))
            for ds in ct_series(SLICES, seed=5, noise=SCANNER_NOISE)]


@pytest.fixture(scope="module")
def multiframe(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("multiframe")
    path = write_multiframe(folder / "mf.dcm", FRAMES, rows=SIDE,
                            columns=SIDE, seed=5)
    return Path(path).read_bytes()


@pytest.fixture(scope="module")
def frame(slices) -> bytes:
    """The pixel data of the first slice: one 512 x 512 frame."""
    header = read_header(slices[0][1])
    pixel = header.pixel
    return slices[0][1][pixel.value_offset:pixel.end_offset]


def test_parse_header(benchmark, slices):
    uid, content = slices[0]
    header = benchmark(read_header, content)
    assert header.sop_instance_uid == uid
    assert header.get("Modality") == "CT"
    assert header.pixel.frame_count == 1


def test_split_frames(benchmark, multiframe):
    pixel = read_header(multiframe).pixel
    parts = benchmark(layout.split, multiframe, pixel, False)
    expected = list(multiframe_frames(FRAMES, rows=SIDE, columns=SIDE,
                                      seed=5))
    assert parts.layout == layout.NATIVE and parts.frame_count == FRAMES
    assert [bytes(b) for b in parts.blocks] == [f.tobytes()
                                                for f in expected]


def test_digest_frame(benchmark, frame):
    name = benchmark(blocks.digest, frame)
    assert name == hashlib.sha256(frame).digest()


# How a 16-bit native frame is kept: plain zstd (the store's codec before
# the pre-filter, and still that of 8-bit frames), the planes16 filter
# then one zstd frame of its planes (block version 2, still read), and
# each plane a zstd frame of its own (what the store now writes).
CODECS = ("zstd", "planes16-one-frame", "planes16")


def _code(codec: str, frame: bytes) -> blocks.EncodedBlock:
    compressor = zstandard.ZstdCompressor(level=3, write_content_size=True)
    if codec == "zstd":
        return blocks.encode(blocks.Kind.FRAME, frame, compressor=compressor)
    if codec == "planes16":
        return blocks.encode(blocks.Kind.FRAME, frame, compressor=compressor,
                             sample_bytes=2,
                             planes_encoder=blocks.planes16_encoder(3))
    coded = blocks.Coded(blocks.Codec.PLANES16_ZSTD,
                         compressor.compress(filters.planes16(frame)))
    return blocks.seal(blocks.Kind.FRAME, blocks.digest(frame), len(frame),
                       coded)


EXPECTED_CODEC = {"zstd": blocks.Codec.ZSTD,
                  "planes16-one-frame": blocks.Codec.PLANES16_ZSTD,
                  "planes16": blocks.Codec.PLANES16_ZSTD_PER_PLANE}


@pytest.mark.parametrize("codec", CODECS)
def test_compress_frame(benchmark, frame, codec):
    block = benchmark(_code, codec, frame)
    assert block.codec is EXPECTED_CODEC[codec]
    assert len(block.payload) < len(frame)
    header = blocks.parse_header(block.header, "memory")
    assert blocks.decode(header, block.header, block.payload,
                         "memory") == frame


@pytest.mark.parametrize("codec", CODECS)
def test_decode_frame(benchmark, frame, codec):
    block = _code(codec, frame)
    header = blocks.parse_header(block.header, "memory")
    assert header.codec is EXPECTED_CODEC[codec]
    content = benchmark(blocks.decode, header, block.header, block.payload,
                        "memory")
    assert content == frame


def test_store_one(benchmark, slices, tmp_path):
    pending = iter(slices)
    with Archive(tmp_path / "store") as archive:
        def store_next():
            return archive.store(next(pending)[1])

        result = benchmark.pedantic(store_next, rounds=len(slices) - 1,
                                    iterations=1)
    assert result.status == "stored"
    assert result.frames == 1


def test_store_many_of_small_reports(benchmark, tmp_path):
    """More than a chunk of small items, so that a chunk is compressed
    while the one before it commits (store.md, "Group commit")."""
    reports = [_encoded(ds) for ds in structured_reports(
        SMALL_CHUNK_ITEMS + 44, seed=5)]
    archives: list[Archive] = []

    def fresh_archive():
        archives.append(Archive(tmp_path / f"store{len(archives)}"))
        return (archives[-1],), {}

    try:
        results = benchmark.pedantic(lambda archive: archive.store_many(
            reports), setup=fresh_archive, rounds=3)
        assert [r.status for r in results] == ["stored"] * len(reports)
        assert [archives[-1].get(r.sop_instance_uid) for r in results] == \
            reports
    finally:
        for archive in archives:
            archive.close()


def test_get_one(benchmark, slices, tmp_path):
    uid, content = slices[0]
    with Archive(tmp_path / "store") as archive:
        archive.store(content)
        got = benchmark(archive.get, uid)
    assert got == content


def test_get_many_of_a_series(benchmark, slices, tmp_path):
    uids = [uid for uid, _ in slices]
    with Archive(tmp_path / "store") as archive:
        archive.store_many([content for _, content in slices])
        got = benchmark(lambda: list(archive.get_many(uids)))
    assert got == [content for _, content in slices]


def test_frame_of_a_multiframe(benchmark, multiframe, tmp_path):
    uid = read_header(multiframe).sop_instance_uid
    with Archive(tmp_path / "store") as archive:
        archive.store(multiframe)
        got = benchmark(archive.frame, uid, FRAMES // 2)
    frames = list(multiframe_frames(FRAMES, rows=SIDE, columns=SIDE,
                                    seed=5))
    assert got == frames[FRAMES // 2].tobytes()
