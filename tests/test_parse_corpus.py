"""The native parser against pydicom over every file of the corpus.

pydicom 3 is the oracle: what the parser extracts must equal what pydicom
reads from the same file, and a file the parser refuses must be one that
pydicom cannot read either. Each test loops over the corpus and reports
every disagreement at once.
"""

from __future__ import annotations

import warnings

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import get_expected_length
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from corpus import CorpusFile, corpus_available, corpus_files
from pacsstore.errors import MalformedDicomError
from pacsstore.parsing import _VR, read_header

pytestmark = [
    pytest.mark.skipif(not corpus_available(),
                       reason="../shared/corpus is absent"),
    # pydicom warns about every odd value of the corpus while decoding.
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

# Files whose pydicom reading is known to be wrong, with the reason; only
# the named checks skip them.
PYDICOM_LOSES_DATASET = {
    # An undefined-length Pixel Data value runs to the end of the file:
    # pydicom's read_dataset catches the EOFError raised inside its dict
    # comprehension and so returns an empty dataset. The parser keeps the
    # elements and the complete fragments.
    "fo-dicom/TestData/GH1339.dcm",
    "pydicom-data/emri_small_jpeg_2k_lossless_too_short.dcm",
}

KEYWORDS = sorted(_VR) + ["Rows", "Columns", "BitsAllocated", "BitsStored",
                          "SamplesPerPixel", "PixelRepresentation"]


def _read_pydicom(entry: CorpusFile) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(entry.path, force=entry.needs_force)


def _expected(keyword: str, element) -> object:
    """A pydicom value in the shape read_header gives it."""
    value = element.value
    vr = _VR.get(keyword)
    if vr == "IS":
        return _integer(value)
    if keyword in ("ImageType", "SpecificCharacterSet"):
        if isinstance(value, MultiValue):
            return tuple(str(v) for v in value)
        return (str(value),) if value not in (None, "") else ()
    if isinstance(value, MultiValue):
        return tuple(str(v) for v in value)
    if isinstance(value, PersonName):
        return str(value)
    return "" if value is None else value


def _integer(value) -> int | None:
    if isinstance(value, MultiValue) or value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def _attribute_differences(entry: CorpusFile) -> list[str]:
    header = read_header(entry.path.read_bytes())
    dataset = _read_pydicom(entry)
    problems = []
    for keyword in KEYWORDS:
        element = dataset.get(keyword) if keyword in dataset else None
        mine = header.attributes.get(keyword)
        if element is None:
            if mine is not None:
                problems.append(f"{keyword}: pydicom has none, got {mine!r}")
            continue
        expected = _expected(keyword, dataset[keyword])
        if mine != expected:
            problems.append(f"{keyword}: pydicom {expected!r}, got {mine!r}")
    return problems


def test_parse_attributes_equal_pydicom_over_corpus() -> None:
    failures = []
    for entry in corpus_files():
        if not entry.pydicom_reads or entry.relpath in PYDICOM_LOSES_DATASET:
            continue
        problems = _attribute_differences(entry)
        failures.extend(f"{entry.relpath}: {p}" for p in problems)
    assert not failures, "\n".join(failures[:50])


def test_parse_refuses_only_what_pydicom_cannot_read() -> None:
    failures = []
    for entry in corpus_files():
        try:
            read_header(entry.path.read_bytes())
        except MalformedDicomError as error:
            if entry.pydicom_reads:
                failures.append(f"{entry.relpath}: refused ({error})")
            elif error.offset is None:
                failures.append(f"{entry.relpath}: no offset in {error}")
    assert not failures, "\n".join(failures)


def test_parse_keeps_elements_pydicom_loses_on_truncated_pixel_data() -> None:
    for relpath in sorted(PYDICOM_LOSES_DATASET):
        entry = next(e for e in corpus_files() if e.relpath == relpath)
        data = entry.path.read_bytes()
        header = read_header(data)
        assert header.result.truncated
        assert header.sop_instance_uid
        pixel = header.pixel
        assert pixel.encapsulated and pixel.truncated
        assert pixel.end_offset == len(data)
        ends = [o + n for o, n in zip(pixel.fragment_offsets,
                                      pixel.fragment_lengths)]
        assert ends and max(ends) <= len(data)


def _frame_bytes(buffer, pixel) -> list[bytes]:
    return [b"".join(bytes(buffer[pixel.fragment_offsets[i]:
                                  pixel.fragment_offsets[i]
                                  + pixel.fragment_lengths[i]])
                     for i in range(first, first + count))
            for first, count in zip(pixel.frame_first_fragment,
                                    pixel.frame_fragment_count)]


def _announced(dataset: pydicom.Dataset) -> int:
    frames = _integer(dataset.get("NumberOfFrames"))
    return frames if frames and frames > 0 else 1


def _encapsulated_differences(buffer, pixel, dataset) -> list[str]:
    extended = None
    if "ExtendedOffsetTable" in dataset:
        extended = (dataset.ExtendedOffsetTable,
                    dataset.ExtendedOffsetTableLengths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected = list(generate_frames(
                dataset.PixelData, number_of_frames=_announced(dataset),
                extended_offsets=extended))
        except ValueError as error:
            return [f"pydicom cannot split the frames ({error})"]
    mine = _frame_bytes(buffer, pixel)
    if len(mine) != len(expected) or pixel.frame_count != len(expected):
        return [f"{len(expected)} frames in pydicom, {len(mine)} here"]
    return [f"frame {i} differs" for i, (a, b) in
            enumerate(zip(mine, expected)) if a != b]


def _pydicom_frame_bits(dataset) -> int:
    """Bits of one native frame by pydicom's own rule (which knows, for
    example, that YBR_FULL_422 keeps two thirds of three samples)."""
    if dataset.BitsAllocated % 8:
        # Bit-packed: 1-bit data, which pydicom counts in whole bytes for
        # all frames, or an invalid value such as GH340.dcm's 12, which
        # pydicom refuses to decode; the value is then as many bits a
        # pixel as declared (GH340's value is exactly 256 x 256 x 12 bits).
        return (dataset.Rows * dataset.Columns
                * dataset.get("SamplesPerPixel", 1) * dataset.BitsAllocated)
    # A fresh dataset of the geometry alone (a copy would share the
    # original's elements); absent attributes take the parser's defaults.
    one_frame = Dataset()
    one_frame.Rows, one_frame.Columns = dataset.Rows, dataset.Columns
    one_frame.BitsAllocated = dataset.BitsAllocated
    one_frame.SamplesPerPixel = dataset.get("SamplesPerPixel", 1)
    one_frame.PhotometricInterpretation = dataset.get(
        "PhotometricInterpretation", "")
    one_frame.NumberOfFrames = 1
    return get_expected_length(one_frame, "bytes") * 8


def _native_differences(buffer, pixel, dataset) -> list[str]:
    value = dataset.PixelData or b""
    mine = bytes(buffer[pixel.value_offset:pixel.end_offset])
    if mine != value:
        return [f"value of {len(mine)} bytes, pydicom {len(value)}"]
    frame_bits = _pydicom_frame_bits(dataset)
    if pixel.frame_bits != frame_bits:
        return [f"frame_bits {pixel.frame_bits}, expected {frame_bits}"]
    count = min(_announced(dataset), len(value) * 8 // frame_bits)
    if pixel.frame_count != count:
        return [f"frame_count {pixel.frame_count}, expected {count}"]
    if frame_bits % 8:
        return []
    size = frame_bits // 8
    return [f"frame {i} differs" for i in range(count)
            if mine[i * size:(i + 1) * size]
            != value[i * size:(i + 1) * size]]


def test_parse_frames_equal_pydicom_frames_over_corpus() -> None:
    failures = []
    for entry in corpus_files():
        if not entry.pydicom_reads or entry.relpath in PYDICOM_LOSES_DATASET:
            continue
        data = entry.path.read_bytes()
        header = read_header(data)
        dataset = _read_pydicom(entry)
        buffer = header.result.inflated or data
        pixel = header.pixel
        if "PixelData" not in dataset:
            if pixel is not None:
                failures.append(f"{entry.relpath}: pixel data not in pydicom")
            continue
        if pixel is None:
            failures.append(f"{entry.relpath}: no pixel layout")
        elif pixel.encapsulated:
            failures.extend(f"{entry.relpath}: {p}" for p in
                            _encapsulated_differences(buffer, pixel, dataset))
        elif "Rows" in dataset and "BitsAllocated" in dataset:
            failures.extend(f"{entry.relpath}: {p}" for p in
                            _native_differences(buffer, pixel, dataset))
    assert not failures, "\n".join(failures[:50])
