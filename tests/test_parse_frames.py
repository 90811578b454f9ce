"""Pixel data layouts: native frames (padding, truncation, 1-bit), and
encapsulated frames mapped from fragments by the offset tables or, without
them, the way pydicom.encaps splits them."""

from __future__ import annotations

import struct
import warnings

import pydicom
import pytest
from pydicom.encaps import encapsulate_extended, generate_frames

from corpus import CORPUS_ROOT, corpus_available
from pacsstore._parse import parse

pytestmark = pytest.mark.skipif(not corpus_available(),
                                reason="../shared/corpus is absent")

MR_TRUNCATED = "pydicom/test_files/MR_truncated.dcm"
MR_PADDED = "pydicom/test_files/MR_small_padded.dcm"
ONE_BIT = "pydicom-data/liver_nonbyte_aligned.dcm"
NO_BOT_MULTIFRAME = ("dicomParser/testImages/encapsulated/multi-frame/"
                     "IM00001.fragmented_no_bot_jpeg_baseline.50.dcm")
BOT_MULTIFRAME = "fo-dicom/TestData/HasFragmentSequence.dcm"


def _bytes(relpath: str) -> bytes:
    return (CORPUS_ROOT / relpath).read_bytes()


def _dataset(relpath: str) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(CORPUS_ROOT / relpath)


def _frames(buffer: bytes, pixel) -> list[bytes]:
    return [b"".join(buffer[pixel.fragment_offsets[i]:
                            pixel.fragment_offsets[i]
                            + pixel.fragment_lengths[i]]
                     for i in range(first, first + count))
            for first, count in zip(pixel.frame_first_fragment,
                                    pixel.frame_fragment_count)]


def test_parse_native_truncated_value_counts_complete_frames_only() -> None:
    data = _bytes(MR_TRUNCATED)
    pixel = parse(data).pixel
    dataset = _dataset(MR_TRUNCATED)
    assert pixel.truncated and pixel.end_offset == len(data)
    assert pixel.value_length > pixel.end_offset - pixel.value_offset
    assert pixel.frame_size == dataset.Rows * dataset.Columns * 2
    assert pixel.end_offset - pixel.value_offset < pixel.frame_size
    assert pixel.frame_count == 0 and pixel.frames_announced == 1


def test_parse_native_padding_belongs_to_no_frame() -> None:
    pixel = parse(_bytes(MR_PADDED)).pixel
    dataset = _dataset(MR_PADDED)
    assert not pixel.truncated
    assert pixel.frame_count == 1
    assert pixel.value_length > pixel.frame_size
    assert pixel.frame_size == dataset.Rows * dataset.Columns * 2


def test_parse_native_one_bit_frames_are_not_byte_aligned() -> None:
    pixel = parse(_bytes(ONE_BIT)).pixel
    dataset = _dataset(ONE_BIT)
    assert pixel.frame_bits == dataset.Rows * dataset.Columns
    assert pixel.frame_bits % 8 != 0
    assert pixel.frame_count == dataset.NumberOfFrames
    assert pixel.frame_count * pixel.frame_bits <= pixel.value_length * 8


def test_parse_empty_bot_frames_end_at_eoi_marker() -> None:
    data = _bytes(NO_BOT_MULTIFRAME)
    pixel = parse(data).pixel
    dataset = _dataset(NO_BOT_MULTIFRAME)
    assert pixel.basic_offset_table == []
    assert len(pixel.fragment_offsets) > dataset.NumberOfFrames
    expected = list(generate_frames(dataset.PixelData,
                                    number_of_frames=dataset.NumberOfFrames))
    assert _frames(data, pixel) == expected
    for frame in _frames(data, pixel):
        assert b"\xff\xd9" in frame[-10:]


def test_parse_fragment_offsets_lie_inside_the_element() -> None:
    data = _bytes(BOT_MULTIFRAME)
    pixel = parse(data).pixel
    assert pixel.basic_offset_table
    assert pixel.frame_count == len(pixel.basic_offset_table)
    for offset, length in zip(pixel.fragment_offsets,
                              pixel.fragment_lengths):
        assert pixel.value_offset < offset
        assert offset + length <= pixel.end_offset - 8
    assert data[pixel.end_offset - 8:pixel.end_offset] == \
        b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _with_extended_offset_table(relpath: str) -> tuple[bytes, list[bytes]]:
    """A corpus multi-frame file re-encapsulated with an empty Basic
    Offset Table and an Extended Offset Table (the corpus has none)."""
    dataset = _dataset(relpath)
    frames = list(generate_frames(dataset.PixelData,
                                  number_of_frames=dataset.NumberOfFrames))
    value, offsets, lengths = encapsulate_extended(frames)
    dataset.PixelData = value
    dataset.ExtendedOffsetTable = offsets
    dataset.ExtendedOffsetTableLengths = lengths
    buffer = pydicom.filebase.DicomBytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), frames


def test_parse_extended_offset_table_maps_frames() -> None:
    data, frames = _with_extended_offset_table(NO_BOT_MULTIFRAME)
    pixel = parse(data).pixel
    assert pixel.extended_offset_table is not None
    assert len(pixel.extended_offset_table) == len(frames)
    assert pixel.frame_fragment_count == [1] * len(frames)
    assert _frames(data, pixel) == frames


def test_parse_inconsistent_extended_offset_table_is_not_trusted() -> None:
    data, frames = _with_extended_offset_table(NO_BOT_MULTIFRAME)
    pixel = parse(data).pixel
    table = struct.pack(f"<{len(frames)}Q", *pixel.extended_offset_table)
    start = data.find(table)
    assert start > 0
    damaged = bytearray(data)
    damaged[start + 8:start + 16] = struct.pack("<Q", 3)
    pixel = parse(bytes(damaged)).pixel
    # Falls back to the pydicom rules without the table: one fragment per
    # frame here, as the counts match.
    assert _frames(bytes(damaged), pixel) == frames
