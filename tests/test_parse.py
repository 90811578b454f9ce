"""Unit tests of the native parser on real files and on real files made
malformed: truncated, mutated, nested too deeply, stripped of their meta.
"""

from __future__ import annotations

import mmap
import struct
import warnings
from pathlib import Path

import pydicom
import pytest

from corpus import CORPUS_ROOT, corpus_available
from pacsstore._parse import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    parse,
)
from pacsstore.errors import MalformedDicomError
from pacsstore.parsing import read_header

pytestmark = pytest.mark.skipif(not corpus_available(),
                                reason="../shared/corpus is absent")

CT_SMALL = "pydicom/test_files/CT_small.dcm"
RTSTRUCT = "pydicom/test_files/rtstruct.dcm"          # no meta, undefined SQ
NESTED_PRIVATE = "pydicom/test_files/nested_priv_SQ.dcm"
UN_SEQUENCE = "pydicom/test_files/UN_sequence.dcm"
JPEG2000 = "pydicom/test_files/JPEG2000.dcm"
BIG_ENDIAN = "pydicom/test_files/MR_small_bigendian.dcm"
DEFLATED = "pydicom/test_files/image_dfl.dcm"
DEFLATED_SQ = "fo-dicom/TestData/Issue1097_FailToOpenDeflatedFileWithSQ.dcm"
NO_META_BIG = "pydicom/test_files/ExplVR_BigEndNoMeta.dcm"
NO_META_LITTLE = "pydicom/test_files/ExplVR_LitEndNoMeta.dcm"
NO_PREAMBLE = "pydicom-data/JLSL_RGB_ILV0.dcm"
SMALL_FILES = (RTSTRUCT, NESTED_PRIVATE, UN_SEQUENCE, JPEG2000,
               "pydicom/test_files/priv_SQ.dcm", DEFLATED_SQ)


def _bytes(relpath: str) -> bytes:
    return (CORPUS_ROOT / relpath).read_bytes()


def _pydicom(relpath: str, force: bool = False) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(CORPUS_ROOT / relpath, force=force)


def _walk_or_refuse(data: bytes) -> None:
    try:
        parse(data)
    except MalformedDicomError as error:
        assert error.offset is not None and 0 <= error.offset <= len(data)


# --- layouts of a file --------------------------------------------------

def test_parse_part10_reports_meta_and_dataset_offset() -> None:
    data = _bytes(CT_SMALL)
    result = parse(data)
    dataset = _pydicom(CT_SMALL)
    assert result.has_preamble
    assert result.transfer_syntax == dataset.file_meta.TransferSyntaxUID
    assert not result.transfer_syntax_inferred
    group_length = struct.unpack("<I", result.meta[0x00020000])[0]
    assert result.dataset_offset == 132 + 12 + group_length
    assert result.meta[0x00020003].rstrip(b"\0 ").decode() == \
        dataset.file_meta.MediaStorageSOPInstanceUID


def test_parse_accepts_every_buffer_type_alike(tmp_path: Path) -> None:
    data = _bytes(CT_SMALL)
    path = tmp_path / "ct.dcm"
    path.write_bytes(data)
    expected = parse(data)
    with path.open("rb") as handle, \
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        results = [parse(bytearray(data)), parse(memoryview(data)),
                   parse(mapped)]
        for result in results:
            assert result.attributes == expected.attributes
            assert result.pixel.value_offset == expected.pixel.value_offset


def test_parse_refuses_non_contiguous_buffer() -> None:
    data = _bytes(CT_SMALL)
    with pytest.raises(BufferError):
        parse(memoryview(data)[::2])


def test_parse_bare_dataset_with_transfer_syntax() -> None:
    data = _bytes(CT_SMALL)
    whole = parse(data)
    bare = parse(data[whole.dataset_offset:], whole.transfer_syntax)
    assert bare.dataset_offset == 0 and bare.meta == {}
    assert not bare.has_preamble and not bare.transfer_syntax_inferred
    assert bare.attributes == whole.attributes
    shift = whole.dataset_offset
    assert bare.pixel.value_offset == whole.pixel.value_offset - shift
    assert bare.pixel.end_offset == whole.pixel.end_offset - shift


def test_parse_bare_encapsulated_dataset_keeps_fragments() -> None:
    data = _bytes(JPEG2000)
    whole = parse(data)
    bare = parse(data[whole.dataset_offset:], whole.transfer_syntax)
    shift = whole.dataset_offset
    assert bare.pixel.encapsulated
    assert bare.pixel.fragment_offsets == [
        o - shift for o in whole.pixel.fragment_offsets]
    assert bare.pixel.frame_count == whole.pixel.frame_count


def test_parse_big_endian_file() -> None:
    data = _bytes(BIG_ENDIAN)
    result = parse(data)
    dataset = _pydicom(BIG_ENDIAN)
    assert result.transfer_syntax == EXPLICIT_VR_BIG_ENDIAN
    assert result.attributes["Rows"] == dataset.Rows
    assert result.attributes["Columns"] == dataset.Columns
    pixel = result.pixel
    assert data[pixel.value_offset:pixel.end_offset] == dataset.PixelData


@pytest.mark.parametrize("relpath", [DEFLATED, DEFLATED_SQ])
def test_parse_deflated_offsets_refer_to_inflated(relpath: str) -> None:
    result = parse(_bytes(relpath))
    dataset = _pydicom(relpath)
    assert result.transfer_syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    assert result.inflated is not None
    assert result.attributes["SOPInstanceUID"].rstrip(b"\0 ").decode() == \
        dataset.SOPInstanceUID
    if "PixelData" in dataset:
        pixel = result.pixel
        inflated = result.inflated
        assert inflated[pixel.value_offset:pixel.end_offset] == \
            dataset.PixelData


def test_parse_deflated_bare_dataset() -> None:
    data = _bytes(DEFLATED)
    whole = parse(data)
    bare = parse(data[whole.dataset_offset:],
                 DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
    assert bare.inflated == whole.inflated
    assert bare.attributes == whole.attributes


def test_parse_refuses_damaged_deflate_stream() -> None:
    data = bytearray(_bytes(DEFLATED))
    start = parse(bytes(data)).dataset_offset
    with pytest.raises(MalformedDicomError, match="deflate"):
        parse(bytes(data[:start + 200]))
    data[start:start + 16] = b"\xff" * 16
    with pytest.raises(MalformedDicomError, match="deflate"):
        parse(bytes(data))


@pytest.mark.parametrize("relpath, syntax", [
    (NO_META_BIG, EXPLICIT_VR_BIG_ENDIAN),
    (NO_META_LITTLE, EXPLICIT_VR_LITTLE_ENDIAN),
    (RTSTRUCT, IMPLICIT_VR_LITTLE_ENDIAN),
])
def test_parse_infers_syntax_without_meta(relpath: str, syntax: str) -> None:
    result = parse(_bytes(relpath))
    dataset = _pydicom(relpath, force=True)
    assert result.transfer_syntax == syntax
    assert result.transfer_syntax_inferred
    assert not result.has_preamble and result.meta == {}
    assert result.attributes["SOPInstanceUID"].rstrip(b"\0 ").decode() == \
        dataset.SOPInstanceUID


def test_parse_meta_without_preamble() -> None:
    result = parse(_bytes(NO_PREAMBLE))
    dataset = _pydicom(NO_PREAMBLE, force=True)
    assert not result.has_preamble
    assert result.meta and result.dataset_offset > 0
    assert result.transfer_syntax == dataset.file_meta.TransferSyntaxUID
    assert result.pixel.encapsulated and result.pixel.frame_count == 1


def test_parse_no_meta_with_stray_leading_byte_reads_like_pydicom() -> None:
    # pydicom reads the whole file as one implicit element (0820,0500)
    # whose length runs past the end: nothing the index wants.
    header = read_header(_bytes("pydicom/test_files/no_meta.dcm"))
    assert header.result.transfer_syntax_inferred
    assert header.result.truncated
    assert header.sop_instance_uid is None
    assert "SOPInstanceUID" not in _pydicom("pydicom/test_files/no_meta.dcm",
                                            force=True)


def test_parse_un_sequence_values_stay_out_of_top_level() -> None:
    # The only top-level element is a private UN sequence of undefined
    # length holding implicit VR items with a Study Instance UID; the walk
    # must come out of it at the end and take nothing from inside.
    data = _bytes(UN_SEQUENCE)
    result = parse(data)
    assert "StudyInstanceUID" in _pydicom(UN_SEQUENCE)[0x4453100C][0]
    assert result.end_offset == len(data) and not result.truncated
    assert result.attributes == {}


# --- malformed inputs -------------------------------------------------------

@pytest.mark.parametrize("relpath", SMALL_FILES)
def test_parse_truncated_at_every_offset(relpath: str) -> None:
    data = _bytes(relpath)
    for size in range(len(data) + 1):
        _walk_or_refuse(data[:size])


def test_parse_truncated_inside_undefined_sequence_names_offset() -> None:
    data = _bytes(RTSTRUCT)
    result = parse(data)
    # Cut in the middle of the data: rtstruct's content lies in nested
    # undefined-length sequences.
    with pytest.raises(MalformedDicomError) as caught:
        parse(data[:len(data) - 40])
    assert caught.value.offset is not None
    assert "end of the data" in str(caught.value)
    assert result.end_offset == len(data)


def test_parse_absurd_item_length_is_refused() -> None:
    data = bytearray(_bytes(RTSTRUCT))
    # The first item of an undefined-length sequence: make its length
    # defined and huge.
    item = data.find(b"\xfe\xff\x00\xe0\xff\xff\xff\xff")
    assert item > 0
    data[item + 4:item + 8] = struct.pack("<I", 0x7FFFFFF0)
    with pytest.raises(MalformedDicomError) as caught:
        parse(bytes(data))
    assert caught.value.offset == item
    assert caught.value.tag == 0xFFFEE000
    assert "needs" in str(caught.value) and "remain" in str(caught.value)


def test_parse_absurd_top_level_length_keeps_what_is_there() -> None:
    data = bytearray(_bytes(CT_SMALL))
    result = parse(bytes(data))
    pixel = result.pixel
    # Pixel Data claims 4 GiB - 2: the value runs to the end of the file.
    data[pixel.value_offset - 4:pixel.value_offset] = struct.pack(
        "<I", 0xFFFFFFFE)
    damaged = parse(bytes(data))
    assert damaged.truncated and damaged.pixel.truncated
    assert damaged.pixel.end_offset == len(data)
    assert damaged.pixel.frame_count == pixel.frame_count


def _nested_sequence(depth: int) -> bytes:
    """Implicit VR: (0008,1115) undefined-length sequences nested depth
    deep, each in an undefined-length item."""
    opening = (struct.pack("<HHI", 0x0008, 0x1115, 0xFFFFFFFF)
               + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF))
    closing = (struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
               + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    return opening * depth + closing * depth


def test_parse_deep_nesting_is_refused_with_clear_error() -> None:
    real = _bytes(RTSTRUCT)
    result = parse(real)
    prefix = real[:result.end_offset]
    shallow = parse(prefix + _nested_sequence(40), IMPLICIT_VR_LITTLE_ENDIAN)
    assert shallow.end_offset == len(prefix) + len(_nested_sequence(40))
    with pytest.raises(MalformedDicomError, match="nested too deeply"):
        parse(prefix + _nested_sequence(10_000), IMPLICIT_VR_LITTLE_ENDIAN)


def test_parse_item_delimiter_at_dataset_level_ends_dataset() -> None:
    data = _bytes(CT_SMALL)
    result = parse(data)
    cut = result.pixel.element_offset
    stray = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    damaged = parse(data[:cut] + stray + data[cut:])
    assert damaged.ended_by_delimiter and damaged.pixel is None
    assert damaged.end_offset == cut
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(
            pydicom.filebase.DicomBytesIO(data[:cut] + stray + data[cut:]))
    assert "PixelData" not in dataset


def test_parse_refuses_wrong_type_of_transfer_syntax() -> None:
    with pytest.raises(TypeError):
        parse(_bytes(CT_SMALL), b"1.2.840.10008.1.2")


def test_parse_empty_and_tiny_inputs() -> None:
    for data in (b"", b"\x00", b"DICM", b"\x00" * 132):
        result = parse(data)
        assert result.attributes == {} and result.pixel is None


def test_parse_mutated_bytes_of_small_file() -> None:
    data = _bytes(NESTED_PRIVATE)
    for offset in range(len(data)):
        for value in (0x00, 0xFF):
            mutated = bytearray(data)
            mutated[offset] = value
            _walk_or_refuse(bytes(mutated))
