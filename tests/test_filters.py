"""The planes16 pre-filter and its codecs (PLANES16_ZSTD_PER_PLANE
written, PLANES16_ZSTD read): exact inversion on any bytes, the
per-plane encoder, real frames through a store, old stores, unknown
codecs."""

from __future__ import annotations

import shutil
import struct
import threading
import time
import zlib

import numpy as np
import pydicom
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from pacsstore import Archive, CorruptStoreError, NewerFormatError, \
    rebuild_index, synthetic
from pacsstore._filters import PlanesEncoder
from pacsstore.store import blocks, filters, prepare
from pacsstore.store.blocks import Codec, Kind
from pacsstore.store.segments import segment_path
from test_store_support import (
    CT_SMALL,
    EMRI_10_FRAMES,
    JPEG_FRAGMENTED,
    MR_SMALL,
    corpus_bytes,
    corpus_path,
    frame_codecs,
)

COMPRESSOR = zstandard.ZstdCompressor(level=3, write_content_size=True)
BIG_ENDIAN_16 = "dcm_qa_ts/3.dcm"
RGB_8_BITS = "pydicom-data/SC_rgb.dcm"
# Native 16-bit little-endian files of several sizes and modalities.
NATIVE_16 = (CT_SMALL, MR_SMALL, EMRI_10_FRAMES,
             "dicomParser/testImages/CT1_UNC.implicit_little_endian.dcm")
VERSION_AT, CODEC_AT = 4, 6


def _roundtrip(content: bytes) -> bytes:
    block = blocks.encode(Kind.FRAME, content, compressor=COMPRESSOR,
                          sample_bytes=2)
    header = blocks.parse_header(block.header, "test")
    return blocks.decode(header, block.header, block.payload, "test")


@given(st.binary(max_size=4099))
def test_planes16_inverts_any_bytes(content):
    filtered = filters.planes16(content)
    assert len(filtered) == filters.planes16_length(len(content))
    assert filters.unplanes16(filtered, len(content)) == content


def _reference_planes16(content: bytes) -> bytes:
    """planes16 written another way (numpy, whole arrays), as the oracle
    of the native filter."""
    samples = len(content) // 2
    words = np.frombuffer(content, dtype="<u2", count=samples)
    low = (words & 0xFF).astype(np.uint8)
    if samples % 2:
        low = np.append(low, np.uint8(0))
    even, odd = low[0::2], low[1::2]
    upper = (even >> 4) | (odd & 0xF0)
    lower = (even & 0x0F) | ((odd & 0x0F) << 4)
    tail = content[-1:] if len(content) % 2 else b""
    return ((words >> 8).astype(np.uint8).tobytes() + upper.tobytes()
            + lower.tobytes() + tail)


@given(st.binary(max_size=4099))
def test_native_planes16_equals_the_reference(content):
    assert filters.planes16(content) == _reference_planes16(content)


@given(st.binary(max_size=4099))
def test_unplanes16_accepts_any_buffer_of_bytes(content):
    filtered = bytearray(filters.planes16(content))
    assert filters.unplanes16(memoryview(filtered), len(content)) == content


@given(st.binary(max_size=4099))
def test_block_with_sample_hint_reads_back_any_bytes(content):
    assert _roundtrip(content) == content


@given(st.integers(0, 2047).map(lambda n: n * 2))
def test_smooth_samples_of_every_even_length_round_trip(length):
    # A ramp compresses, so these take the filtered codec, not RAW.
    content = bytes(i // 7 % 256 for i in range(length))
    block = blocks.encode(Kind.FRAME, content, compressor=COMPRESSOR,
                          sample_bytes=2)
    if length >= 256:
        assert block.codec is Codec.PLANES16_ZSTD_PER_PLANE
    assert _roundtrip(content) == content


def test_planes16_groups_high_bytes_then_nibbles():
    # Samples 0x1234, 0xABCD, 0x0F0E (little-endian), and an odd byte.
    filtered = filters.planes16(bytes.fromhex("3412cdab0e0f") + b"\x99")
    assert filtered.hex() == "12ab0f" "c300" "d40e" "99"


def test_unplanes16_refuses_a_wrong_length():
    # Three samples need one byte more than their six.
    with pytest.raises(ValueError, match="must be 7 bytes long, not 6"):
        filters.unplanes16(b"\0" * 6, 6)


def test_corpus_frame_is_smaller_with_the_filter():
    pixels = corpus_bytes(CT_SMALL)[-128 * 128 * 2:]
    plain = blocks.encode(Kind.FRAME, pixels, compressor=COMPRESSOR)
    filtered = blocks.encode(Kind.FRAME, pixels, compressor=COMPRESSOR,
                             sample_bytes=2)
    assert filtered.codec is Codec.PLANES16_ZSTD_PER_PLANE
    assert plain.codec is Codec.ZSTD
    assert len(filtered.payload) < len(plain.payload)
    assert filtered.digest == plain.digest == blocks.digest(pixels)
    assert _roundtrip(pixels) == pixels


def _frames_of(payload: bytes) -> list[bytes]:
    """The content of each zstd frame of ``payload``, in order."""
    decompressor = zstandard.ZstdDecompressor()
    contents = []
    while payload:
        size = zstandard.frame_content_size(payload)
        frame = decompressor.decompressobj()
        contents.append(frame.decompress(payload))
        assert len(contents[-1]) == size
        payload = frame.unused_data
    return contents


def _native_pixels() -> list[bytes]:
    frames = []
    for relpath in NATIVE_16:
        data = corpus_bytes(relpath)
        frames.append(data[-(len(data) // 4) * 2:])
    return frames


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5, 9])
def test_each_plane_is_a_zstd_frame_of_its_own(level):
    """At every level the payload is three ordinary zstd frames with
    their content sizes: the high bytes, the high nibbles, the rest."""
    encoder = blocks.planes16_encoder(level)
    for pixels in _native_pixels():
        planes = filters.planes16(pixels)
        samples, pairs = len(pixels) // 2, (len(pixels) // 2 + 1) // 2
        assert _frames_of(encoder.encode(pixels)) == [
            planes[:samples], planes[samples:samples + pairs],
            planes[samples + pairs:]]
        block = blocks.encode(Kind.FRAME, pixels, compressor=COMPRESSOR,
                              sample_bytes=2, planes_encoder=encoder)
        assert block.codec is Codec.PLANES16_ZSTD_PER_PLANE
        header = blocks.parse_header(block.header, "test")
        assert blocks.decode(header, block.header, block.payload,
                             "test") == pixels


@given(st.binary(max_size=70_000), st.sampled_from([4096, 5000, 16384]))
def test_planes_cut_into_blocks_read_back_any_bytes(content, block_size):
    encoder = PlanesEncoder([{}, {"block_size": block_size},
                             {"block_size": block_size}])
    payload = encoder.encode(content)
    assert b"".join(_frames_of(payload)) == filters.planes16(content)


def test_a_frame_beyond_the_kept_buffers_encodes_too():
    # 24 MiB of samples: the encoder's buffers for it are its own, for
    # this call only.
    content = np.arange(12 << 20, dtype="<u2").tobytes()
    encoder = blocks.planes16_encoder(3)
    payload = encoder.encode(content)
    assert b"".join(_frames_of(payload)) == filters.planes16(content)
    assert encoder.encode(content[:4096]) == \
        blocks.planes16_encoder(3).encode(content[:4096])


@pytest.mark.parametrize("setting, says", [
    ({"hash_lg": 10}, "no zstd parameter named 'hash_lg'"),
    ({"hash_log": 99}, "zstd refuses hash_log=99"),
    ({"block_size": 1024}, "block_size must be from 4096 to 131072"),
    ({"block_size": 1 << 20}, "block_size must be from 4096 to 131072"),
])
def test_a_setting_zstd_does_not_take_is_refused(setting, says):
    with pytest.raises(ValueError, match=says):
        PlanesEncoder([{}, setting, {}])
    with pytest.raises(ValueError, match="one setting per plane"):
        PlanesEncoder([{}, {}])


def test_a_float_setting_is_refused_rather_than_truncated():
    for setting in ({"window_log": 17.9}, {"block_size": 8192.7},
                    {"min_match": True}):
        with pytest.raises(TypeError, match="takes a whole number"):
            PlanesEncoder([{}, setting, {}])


def test_none_is_not_taken_for_empty_content():
    with pytest.raises(TypeError):
        blocks.planes16_encoder(3).encode(None)
    with pytest.raises(TypeError):
        filters.planes16(None)
    with pytest.raises(TypeError):
        filters.unplanes16(None, 0)


def test_an_encoder_used_by_a_second_thread_at_once_refuses_it():
    """encode() works on its buffers without the GIL; a second thread in
    them at once freed a buffer the first was writing (a segfault, or
    heap-use-after-free under ASan). The second call is now refused."""
    encoder = blocks.planes16_encoder(3)
    large = np.arange(24 << 20, dtype="<u2").tobytes()
    small = large[:4096]
    results = []

    def encode_large() -> None:
        results.append(encoder.encode(large))

    refused = False
    for _attempt in range(20):
        worker = threading.Thread(target=encode_large)
        worker.start()
        time.sleep(0.002)
        try:
            encoder.encode(small)
        except RuntimeError as exc:
            assert "encoding in another thread" in str(exc)
            refused = True
        worker.join()
        if refused:
            break
    assert refused, "a second call never overlapped the first"
    # The first call was not disturbed, and the encoder is usable again.
    assert b"".join(_frames_of(results[-1])) == filters.planes16(large)
    assert b"".join(_frames_of(encoder.encode(small))) == \
        filters.planes16(small)


def test_per_plane_frames_keep_less_of_a_ct_slice_than_one_frame(tmp_path):
    """What the codec was chosen for, on the generator of the benchmarks'
    CT study: fewer bytes than one frame of the planes at level 3 (the
    codec before it), on each slice."""
    one_frame = zstandard.ZstdCompressor(
        compression_params=zstandard.ZstdCompressionParameters.from_level(
            3, strategy=zstandard.STRATEGY_FAST, hash_log=14,
            write_content_size=1))
    encoder = blocks.planes16_encoder(3)
    for path in synthetic.write_ct_series(tmp_path / "ct", 3, seed=5):
        pixels = path.read_bytes()[-512 * 512 * 2:]
        per_plane = len(encoder.encode(pixels))
        assert per_plane < len(one_frame.compress(filters.planes16(pixels)))


@pytest.mark.parametrize("level", [1, 3, 6])
def test_an_archive_compresses_planes_with_the_encoder_of_its_level(
        tmp_path, level):
    path = synthetic.write_ct_series(tmp_path / "ct", 1, seed=21)[0]
    pixels = path.read_bytes()[-512 * 512 * 2:]
    expected = blocks.planes16_encoder(level).encode(pixels)
    with Archive(tmp_path / "store", compression_level=level) as archive:
        uid = archive.store(path).sop_instance_uid
        [name] = archive.record(uid)["blocks"]
        with archive._index.read() as txn:
            entry = archive._index.block(txn, bytes.fromhex(name))
    with segment_path(tmp_path / "store" / "segments",
                      entry.segment).open("rb") as segment:
        segment.seek(entry.offset + blocks.HEADER_SIZE)
        payload = segment.read(entry.stored_length)
    assert entry.codec == Codec.PLANES16_ZSTD_PER_PLANE
    assert payload == expected


@pytest.mark.parametrize("content", [b"", b"\x01", b"\x01\x02\x03"])
def test_empty_and_odd_frames_are_not_filtered(content):
    block = blocks.encode(Kind.FRAME, content, compressor=COMPRESSOR,
                          sample_bytes=2)
    assert block.codec not in (Codec.PLANES16_ZSTD,
                               Codec.PLANES16_ZSTD_PER_PLANE)
    assert _roundtrip(content) == content


def test_only_frame_blocks_are_filtered():
    content = bytes(range(256)) * 64
    for kind, codec in ((Kind.HEADER, Codec.ZSTD), (Kind.PIXELS, Codec.ZSTD),
                        (Kind.MANIFEST, Codec.ZSTD_RECORD)):
        block = blocks.encode(kind, content, compressor=COMPRESSOR,
                              sample_bytes=2)
        assert block.codec is codec
        header = blocks.parse_header(block.header, "test")
        assert blocks.decode(header, block.header, block.payload,
                             "test") == content


def test_an_unknown_sample_size_is_refused():
    with pytest.raises(ValueError, match="sample_bytes must be one of"):
        blocks.encode(Kind.FRAME, b"\0" * 8, compressor=COMPRESSOR,
                      sample_bytes=4)


def _one_frame_block(content: bytes) -> blocks.EncodedBlock:
    """A block of ``content`` as writers of block version 2 made it: the
    planes16 filter, then one zstd frame of the three planes."""
    coded = blocks.Coded(Codec.PLANES16_ZSTD,
                         COMPRESSOR.compress(filters.planes16(content)))
    return blocks.seal(Kind.FRAME, blocks.digest(content), len(content),
                       coded)


def test_filtered_blocks_carry_the_version_of_their_codec():
    pixels = corpus_bytes(CT_SMALL)[-128 * 128 * 2:]
    filtered = blocks.encode(Kind.FRAME, pixels, compressor=COMPRESSOR,
                             sample_bytes=2)
    plain = blocks.encode(Kind.FRAME, pixels, compressor=COMPRESSOR)
    manifest = blocks.encode(Kind.MANIFEST, b'{"v":1}' * 20,
                             compressor=COMPRESSOR)
    assert manifest.header[VERSION_AT] == 4
    assert filtered.header[VERSION_AT] == 3
    assert _one_frame_block(pixels).header[VERSION_AT] == 2
    assert plain.header[VERSION_AT] == 1


@pytest.mark.parametrize("reader_version", [1, 2, 3])
def test_an_older_reader_calls_a_record_dictionary_block_newer(
        monkeypatch, reader_version):
    block = blocks.encode(Kind.MANIFEST, b'{"v":1}' * 20,
                          compressor=COMPRESSOR)
    monkeypatch.setattr(blocks, "BLOCK_FORMAT_VERSION", reader_version)
    with pytest.raises(NewerFormatError, match="format version 4"):
        blocks.parse_header(block.header, "test")


@pytest.mark.parametrize("reader_version", [1, 2])
def test_an_older_reader_calls_a_per_plane_block_newer(monkeypatch,
                                                       reader_version):
    pixels = corpus_bytes(CT_SMALL)[-128 * 128 * 2:]
    block = blocks.encode(Kind.FRAME, pixels, compressor=COMPRESSOR,
                          sample_bytes=2)
    # What a reader of an older block format checks first.
    monkeypatch.setattr(blocks, "BLOCK_FORMAT_VERSION", reader_version)
    with pytest.raises(NewerFormatError, match="format version 3"):
        blocks.parse_header(block.header, "test")


def test_a_one_frame_planes_block_still_reads():
    pixels = corpus_bytes(CT_SMALL)[-128 * 128 * 2:]
    block = _one_frame_block(pixels)
    header = blocks.parse_header(block.header, "test")
    assert header.codec is Codec.PLANES16_ZSTD
    assert blocks.decode(header, block.header, block.payload,
                         "test") == pixels


def _with_header_bytes(block, version: int, codec: int) -> bytes:
    head = bytearray(block.header)
    head[VERSION_AT], head[CODEC_AT] = version, codec
    crc = zlib.crc32(block.payload, zlib.crc32(bytes(head[:60])))
    return bytes(head[:60]) + struct.pack("<I", crc)


def test_an_unknown_codec_from_a_newer_writer_is_newer_format():
    block = blocks.encode(Kind.FRAME, b"frame" * 100, compressor=COMPRESSOR)
    header = _with_header_bytes(block, blocks.BLOCK_FORMAT_VERSION + 1, 9)
    with pytest.raises(NewerFormatError, match="reads up to 5"):
        blocks.parse_header(header, "segment 1 offset 32")


def test_an_unknown_codec_under_a_known_version_is_corruption():
    block = blocks.encode(Kind.FRAME, b"frame" * 100, compressor=COMPRESSOR)
    header = _with_header_bytes(block, blocks.BLOCK_FORMAT_VERSION, 9)
    with pytest.raises(CorruptStoreError,
                       match="segment 1 offset 32 has unknown kind 2 or "
                             "codec 9 for its format version 5"):
        blocks.parse_header(header, "segment 1 offset 32")


@pytest.mark.parametrize("version, codec", [(4, 5), (3, 4), (2, 3), (1, 2)])
def test_a_codec_its_block_version_does_not_have_is_corruption(version,
                                                               codec):
    block = blocks.encode(Kind.FRAME, b"frame" * 100, compressor=COMPRESSOR)
    header = _with_header_bytes(block, version, codec)
    with pytest.raises(CorruptStoreError,
                       match=f"has codec {codec}, which format version "
                             f"{version} does not have"):
        blocks.parse_header(header, "segment 1 offset 32")


def test_filtered_payload_of_the_wrong_length_is_corruption():
    # A zstd frame that is intact but holds one byte too few for the
    # filtered form of the stated content.
    content = bytes(range(256)) * 8
    block = blocks.encode(Kind.FRAME, content, compressor=COMPRESSOR,
                          sample_bytes=2)
    short = COMPRESSOR.compress(filters.planes16(content)[:-1])
    head = _with_payload(block.header, short)
    header = blocks.parse_header(head, "test")
    with pytest.raises(CorruptStoreError, match="filtered samples"):
        blocks.decode(header, head, short, "test")


def _with_payload(header: bytes, payload: bytes) -> bytes:
    """``header`` with the stored length and CRC32 of ``payload``."""
    head = header[:48] + struct.pack("<Q", len(payload)) + header[56:60]
    return head + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))


def _block_versions(store) -> set[int]:
    """The version byte of every block in the store's first segment."""
    data = segment_path(store / "segments", 1).read_bytes()
    versions, at = set(), 32
    while at < len(data):
        assert data[at:at + 4] == blocks.BLOCK_MAGIC
        (stored,) = struct.unpack_from("<Q", data, at + 48)
        versions.add(data[at + VERSION_AT])
        at += blocks.HEADER_SIZE + stored
    return versions


def _native_frame(path, index: int) -> bytes:
    """Frame ``index`` of a native file, as pydicom reads it."""
    ds = pydicom.dcmread(path)
    size = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
    return ds.PixelData[index * size:(index + 1) * size]


def test_corpus_frames_come_back_byte_exact_through_a_store(tmp_path):
    files = {name: corpus_bytes(name) for name in
             (*NATIVE_16, BIG_ENDIAN_16, RGB_8_BITS, JPEG_FRAGMENTED)}
    store = tmp_path / "store"
    with Archive(store) as archive:
        uids = {name: archive.store(data).sop_instance_uid
                for name, data in files.items()}
        for name, data in files.items():
            assert archive.get(uids[name]) == data, name
        for name in NATIVE_16:
            assert set(frame_codecs(archive, uids[name])) == \
                {Codec.PLANES16_ZSTD_PER_PLANE}, name
        # Big-endian samples, 8-bit samples and JPEG fragments keep the
        # codecs they had.
        assert Codec.PLANES16_ZSTD_PER_PLANE not in frame_codecs(
            archive, uids[BIG_ENDIAN_16])
        assert frame_codecs(archive, uids[RGB_8_BITS]) == [Codec.ZSTD]
        assert Codec.PLANES16_ZSTD_PER_PLANE not in frame_codecs(
            archive, uids[JPEG_FRAGMENTED])
        frame = archive.frame(uids[EMRI_10_FRAMES], 3)
        assert frame == _native_frame(corpus_path(EMRI_10_FRAMES), 3)
        assert archive.verify().ok
    assert _block_versions(store) == {1, 3, 4}   # 4: the manifests
    shutil.rmtree(store / "index")
    rebuild_index(store)
    with Archive(store, readonly=True) as archive:
        for name, data in files.items():
            assert archive.get(uids[name]) == data, name
        assert archive.frame(uids[EMRI_10_FRAMES], 3) == frame
        assert archive.verify().ok


def test_a_store_written_without_filters_still_reads(tmp_path, monkeypatch):
    # Version 1 wrote every frame as zstd or raw; so does a preparer
    # that gets no sample hint. Its manifests were plain zstd too.
    old, new = corpus_bytes(CT_SMALL), corpus_bytes(MR_SMALL)
    store = tmp_path / "store"
    compress = blocks._compress

    def version_1(kind, content, compressor, sample_bytes, encoder):
        if kind is Kind.MANIFEST:
            return Codec.ZSTD, compressor.compress(content)
        return compress(kind, content, compressor, sample_bytes, encoder)

    with monkeypatch.context() as patch:
        patch.setattr(prepare, "_sample_bytes", lambda record: 1)
        patch.setattr(blocks, "_compress", version_1)
        with Archive(store) as archive:
            old_uid = archive.store(old).sop_instance_uid
            assert frame_codecs(archive, old_uid) == [Codec.ZSTD]
    assert _block_versions(store) == {1}
    with Archive(store) as archive:
        assert archive.get(old_uid) == old
        new_uid = archive.store(new).sop_instance_uid
        assert frame_codecs(archive, new_uid) == [
            Codec.PLANES16_ZSTD_PER_PLANE]
        assert archive.get(new_uid) == new
        assert archive.verify().ok


def test_a_store_of_one_frame_planes_blocks_still_reads(tmp_path,
                                                       monkeypatch):
    # Block version 2 wrote 16-bit frames as one zstd frame of the
    # planes; a store of them reads, verifies, rebuilds, and takes new
    # frames in the per-plane codec beside them.
    old, new = corpus_bytes(EMRI_10_FRAMES), corpus_bytes(MR_SMALL)
    store = tmp_path / "store"

    def one_frame(kind, content, compressor, sample_bytes, encoder):
        if sample_bytes == 2 and kind is Kind.FRAME and len(content) % 2 == 0:
            return Codec.PLANES16_ZSTD, compressor.compress(
                filters.planes16(content))
        return Codec.ZSTD, compressor.compress(content)

    with monkeypatch.context() as patch:
        patch.setattr(blocks, "_compress", one_frame)
        with Archive(store) as archive:
            old_uid = archive.store(old).sop_instance_uid
            assert set(frame_codecs(archive, old_uid)) == {
                Codec.PLANES16_ZSTD}
    assert _block_versions(store) == {1, 2}
    with Archive(store) as archive:
        assert archive.get(old_uid) == old
        assert archive.frame(old_uid, 3) == _native_frame(
            corpus_path(EMRI_10_FRAMES), 3)
        new_uid = archive.store(new).sop_instance_uid
        assert frame_codecs(archive, new_uid) == [
            Codec.PLANES16_ZSTD_PER_PLANE]
        assert archive.verify().ok
    assert _block_versions(store) == {1, 2, 3, 4}
    shutil.rmtree(store / "index")
    rebuild_index(store)
    with Archive(store, readonly=True) as archive:
        assert archive.get(old_uid) == old
        assert archive.get(new_uid) == new


def test_the_same_frame_is_one_block_whichever_codec_stored_it(
        tmp_path, monkeypatch):
    data = corpus_bytes(CT_SMALL)
    with monkeypatch.context() as patch:
        patch.setattr(prepare, "_sample_bytes", lambda record: 1)
        with Archive(tmp_path / "store") as archive:
            first = archive.store(data).sop_instance_uid
    with Archive(tmp_path / "store") as archive:
        before = archive.stats()
        assert archive.store(corpus_path(CT_SMALL)).status == "duplicate"
        assert archive.stats().blocks == before.blocks
        assert archive.get(first) == data
