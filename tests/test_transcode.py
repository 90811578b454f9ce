"""Transcoding on retrieve: choose_syntax never picks a lossy syntax for
lossless data, and transcode gives datasets whose pixels are what
pydicom decodes from the stored instance (pydicom is the oracle), or the
stored dataset bytes themselves when the peer takes the stored syntax."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings, strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

from corpus import CORPUS_ROOT, CorpusFile, corpus_available, corpus_files
from pacsstore import Archive
from pacsstore._parse import parse
from pacsstore.errors import FrameDecodeError, TranscodeError
from pacsstore.filemeta import build_file_meta
from pacsstore.pixels.transcode import (LOSSLESS_SYNTAXES,
                                        UNCOMPRESSED_TARGETS,
                                        available_lossless_encoders,
                                        choose_syntax, transcode)

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_SPECTRAL = "1.2.840.10008.1.2.4.53"  # retired; no decoder
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
MPEG2 = "1.2.840.10008.1.2.4.100"
HEVC = "1.2.840.10008.1.2.4.107"
RLE = "1.2.840.10008.1.2.5"
LOSSY = (JPEG_BASELINE, JPEG_EXTENDED, JPEG_LS_NEAR, J2K, HTJ2K)
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"

needs_corpus = pytest.mark.skipif(not corpus_available(),
                                  reason="../shared/corpus is absent")


# choose_syntax ------------------------------------------------------------

CHOICES = [
    # stored, accepted, chosen
    (RLE, [RLE, EXPLICIT], RLE),
    (MPEG2, [MPEG2], MPEG2),
    (J2K, [J2K, EXPLICIT], J2K),
    (RLE, [IMPLICIT, EXPLICIT], EXPLICIT),
    (JPEG_LOSSLESS_SV1, [JPEG_BASELINE, IMPLICIT], IMPLICIT),
    (RLE, [JPEG_BASELINE, J2K, JPEG_LS_NEAR, HTJ2K], None),
    (EXPLICIT, [JPEG_BASELINE, JPEG_EXTENDED], None),
    (JPEG_BASELINE, [IMPLICIT], IMPLICIT),
    (JPEG_BASELINE, [JPEG_EXTENDED, J2K], None),
    (JPEG_BASELINE, [RLE, JPEG_LS, J2K_LOSSLESS], None),
    (JPEG_LS_NEAR, [JPEG_LS], None),
    (J2K, [J2K_LOSSLESS, EXPLICIT], EXPLICIT),
    (HTJ2K, [HTJ2K_LOSSLESS], None),
    (MPEG2, [EXPLICIT, IMPLICIT], None),
    (HEVC, [EXPLICIT], None),
    (JPEG_SPECTRAL, [EXPLICIT], None),
    (DEFLATED, [IMPLICIT], IMPLICIT),
    (BIG_ENDIAN, [EXPLICIT, IMPLICIT], EXPLICIT),
    (EXPLICIT, [IMPLICIT], IMPLICIT),
    (IMPLICIT, [EXPLICIT], EXPLICIT),
    (EXPLICIT, [], None),
    (EXPLICIT, [EXPLICIT + "\0"], EXPLICIT),
]


@pytest.mark.parametrize(("stored", "accepted", "chosen"), CHOICES)
def test_transcode_choose_syntax_table(stored, accepted, chosen):
    assert choose_syntax(stored, accepted) == chosen


@pytest.mark.parametrize(("stored", "accepted", "chosen"), [
    (JPEG_LOSSLESS_SV1, [J2K_LOSSLESS, JPEG_LS, RLE], RLE),
    (HTJ2K_RPCL, [J2K_LOSSLESS, JPEG_LS], JPEG_LS),
    (EXPLICIT, [J2K_LOSSLESS, JPEG_BASELINE], J2K_LOSSLESS),
])
def test_transcode_choose_syntax_lossless_compressed(stored, accepted,
                                                     chosen):
    if chosen not in available_lossless_encoders():
        pytest.skip(f"pydicom has no {chosen} encoder here")
    assert choose_syntax(stored, accepted) == chosen


SYNTAXES = sorted({*LOSSLESS_SYNTAXES, *LOSSY, MPEG2, HEVC, JPEG_SPECTRAL,
                   "1.2.840.10008.1.2.4.112"})


@settings(max_examples=300, deadline=None)
@given(stored=st.sampled_from(SYNTAXES),
       accepted=st.lists(st.sampled_from(SYNTAXES), max_size=6))
def test_transcode_choose_syntax_never_adds_loss(stored, accepted):
    chosen = choose_syntax(stored, accepted)
    if chosen is None:
        return
    assert chosen in accepted
    if chosen == stored:
        return
    if stored in LOSSLESS_SYNTAXES:
        assert chosen in LOSSLESS_SYNTAXES
    else:
        assert chosen in UNCOMPRESSED_TARGETS


# Helpers ------------------------------------------------------------------

def sent_dataset(data: bytes, syntax: str) -> Dataset:
    """What a peer reads from the bytes of a C-STORE in ``syntax``."""
    ds = read_dataset(io.BytesIO(data), is_implicit_VR=syntax == IMPLICIT,
                      is_little_endian=True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def stored_pixels(data: bytes) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), force=True).pixel_array


def sent_pixels(data: bytes, syntax: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sent_dataset(data, syntax).pixel_array


def corpus_bytes(relpath: str) -> bytes:
    path = CORPUS_ROOT / relpath
    if not path.is_file():
        pytest.skip(f"{relpath} is not in the corpus")
    return path.read_bytes()


def part10(ds: Dataset, syntax: str) -> bytes:
    """``ds`` as a Part 10 file in ``syntax``, as pydicom writes it."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def small_ct(frames: int = 2) -> Dataset:
    """A 16-bit signed monochrome image, ``frames`` frames of 8 x 6."""
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = 8, 6, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 1
    values = np.arange(frames * 48, dtype="<i2").reshape(frames, 8, 6)
    ds.PixelData = (values * 37 - 900).astype("<i2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT
    return ds


# Decoding the corpus ------------------------------------------------------

FILES_PER_SYNTAX = 3
LARGEST_FILE = 1_500_000
DECODED_SYNTAXES = (DEFLATED, BIG_ENDIAN, JPEG_BASELINE, JPEG_EXTENDED,
                    JPEG_LOSSLESS, JPEG_LOSSLESS_SV1, JPEG_LS, JPEG_LS_NEAR,
                    J2K_LOSSLESS, J2K, HTJ2K_LOSSLESS, HTJ2K_RPCL, HTJ2K,
                    RLE)


def _sample() -> list[CorpusFile]:
    """A few files of each syntax, multi-frame ones first."""
    by_syntax: dict[str, list[CorpusFile]] = defaultdict(list)
    for entry in corpus_files():
        if entry.transfer_syntax in DECODED_SYNTAXES and \
                entry.pydicom_reads and entry.frames not in ("", "0") and \
                entry.path.stat().st_size <= LARGEST_FILE:
            by_syntax[entry.transfer_syntax].append(entry)
    chosen = []
    for entries in by_syntax.values():
        entries.sort(key=lambda e: ("multiframe" not in e.flags,
                                    e.path.stat().st_size))
        chosen.extend(entries[:FILES_PER_SYNTAX])
    return chosen


SAMPLE = _sample() if corpus_available() else []


def _oracle(data: bytes) -> np.ndarray | None:
    try:
        return stored_pixels(data)
    except (RuntimeError, NotImplementedError, ValueError, AttributeError,
            TypeError):
        return None  # pydicom cannot decode it: no oracle


@needs_corpus
@pytest.mark.parametrize("entry", SAMPLE, ids=lambda e: e.relpath)
def test_transcode_to_explicit_vr_gives_pydicom_pixels(entry):
    data = entry.path.read_bytes()
    expected = _oracle(data)
    if expected is None:
        pytest.skip("pydicom does not decode this file here")
    sent = transcode(data, EXPLICIT)
    np.testing.assert_array_equal(sent_pixels(sent, EXPLICIT), expected)
    ds = sent_dataset(sent, EXPLICIT)
    original = pydicom.dcmread(io.BytesIO(data), force=True,
                               stop_before_pixels=True)
    assert ds.SOPInstanceUID == original.SOPInstanceUID
    assert ds["PixelData"].VR == ("OW" if ds.BitsAllocated > 8 else "OB")
    assert not ds["PixelData"].is_undefined_length
    assert "ExtendedOffsetTable" not in ds


@needs_corpus
def test_transcode_covers_every_decodable_syntax_of_the_corpus():
    sampled = {entry.transfer_syntax for entry in SAMPLE}
    present = {entry.transfer_syntax for entry in corpus_files()}
    assert sampled == present & set(DECODED_SYNTAXES)


@needs_corpus
@pytest.mark.parametrize("relpath", [
    "pydicom/test_files/MR_small_RLE.dcm",
    "pydicom/test_files/SC_rgb_jpeg_gdcm.dcm",
    "pydicom-data/emri_small_jpeg_2k_lossless.dcm",
    "pydicom/test_files/examples_ybr_color.dcm",
])
def test_transcode_to_implicit_vr_gives_pydicom_pixels(relpath):
    data = corpus_bytes(relpath)
    sent = transcode(data, IMPLICIT)
    np.testing.assert_array_equal(sent_pixels(sent, IMPLICIT),
                                  stored_pixels(data))


@needs_corpus
@pytest.mark.parametrize("target", [RLE, JPEG_LS, J2K_LOSSLESS])
@pytest.mark.parametrize("relpath", [
    "pydicom/test_files/MR_small.dcm",
    "pydicom/test_files/SC_rgb_rle_2frame.dcm",
    "pydicom/test_files/SC_rgb_jpeg_gdcm.dcm",
    "pydicom-data/emri_small_jpeg_2k_lossless.dcm",
    "pydicom/test_files/ExplVR_BigEnd.dcm",
])
def test_transcode_to_lossless_compressed_gives_the_same_pixels(target,
                                                                relpath):
    if target not in available_lossless_encoders():
        pytest.skip(f"pydicom has no {target} encoder here")
    data = corpus_bytes(relpath)
    sent = transcode(data, target)
    np.testing.assert_array_equal(sent_pixels(sent, target),
                                  stored_pixels(data))
    assert sent_dataset(sent, target)["PixelData"].is_undefined_length


# What decoding changes ----------------------------------------------------

@needs_corpus
def test_transcode_ybr_full_422_jpeg_becomes_rgb():
    data = corpus_bytes("cornerstone3D/testImages/"
                        "TestPattern_JPEG-Baseline_YBR422.dcm")
    ds = sent_dataset(transcode(data, EXPLICIT), EXPLICIT)
    assert ds.PhotometricInterpretation == "RGB"
    assert ds.PlanarConfiguration == 0
    assert ds.LossyImageCompression == "01"


@needs_corpus
def test_transcode_marks_decoded_baseline_jpeg_as_lossy():
    ds = pydicom.dcmread(io.BytesIO(corpus_bytes(
        "pydicom/test_files/SC_rgb_jpeg_dcmtk.dcm")))
    for keyword in ("LossyImageCompression", "LossyImageCompressionMethod",
                    "LossyImageCompressionRatio"):
        ds.pop(keyword, None)
    sent = sent_dataset(transcode(part10(ds, JPEG_BASELINE), EXPLICIT),
                        EXPLICIT)
    assert sent.LossyImageCompression == "01"
    assert sent.LossyImageCompressionMethod == "ISO_10918_1"


@needs_corpus
def test_transcode_one_bit_jpeg_2000_is_packed_again():
    # Dataset.decompress keeps one byte a pixel under Bits Allocated 1.
    data = corpus_bytes("pydicom-data/liver_j2k.dcm")
    sent = transcode(data, EXPLICIT)
    ds = sent_dataset(sent, EXPLICIT)
    assert ds.BitsAllocated == 1
    pixels = ds.NumberOfFrames * ds.Rows * ds.Columns
    assert len(ds.PixelData) == (pixels + 15) // 16 * 2
    np.testing.assert_array_equal(sent_pixels(sent, EXPLICIT),
                                  stored_pixels(data))


@needs_corpus
def test_transcode_decodes_an_encapsulated_icon_image():
    data = corpus_bytes("nibabel/nicom/tests/data/"
                        "slicethickness_empty_string.dcm")
    stored_icon = pydicom.dcmread(io.BytesIO(data)).IconImageSequence[0]
    stored_icon.file_meta = FileMetaDataset()
    stored_icon.file_meta.TransferSyntaxUID = J2K_LOSSLESS
    icon = sent_dataset(transcode(data, EXPLICIT),
                        EXPLICIT).IconImageSequence[0]
    assert not icon["PixelData"].is_undefined_length
    icon.file_meta = FileMetaDataset()
    icon.file_meta.TransferSyntaxUID = EXPLICIT
    np.testing.assert_array_equal(icon.pixel_array, stored_icon.pixel_array)


@needs_corpus
def test_transcode_big_endian_swaps_palette_lookup_tables():
    data = corpus_bytes("pydicom-data/OBXXXX1A_expb.dcm")
    stored = pydicom.dcmread(io.BytesIO(data))
    ds = sent_dataset(transcode(data, EXPLICIT), EXPLICIT)
    for colour in ("Red", "Green", "Blue"):
        keyword = f"{colour}PaletteColorLookupTableData"
        np.testing.assert_array_equal(
            np.frombuffer(ds[keyword].value, "<u2"),
            np.frombuffer(stored[keyword].value, ">u2"))


@needs_corpus
@pytest.mark.parametrize("relpath", [
    # dataset in implicit VR under an explicit VR transfer syntax
    "pydicom/test_files/SC_rgb_jpeg.dcm",
    # a stray item tag inside a sequence item
    "fo-dicom/TestData/GH364.dcm",
    # Curve Data, "OB or OW", read from implicit VR
    "fo-dicom/TestData/RI6XDosiGap.dcm",
])
def test_transcode_writes_datasets_pydicom_alone_cannot(relpath):
    data = corpus_bytes(relpath)
    sent = transcode(data, EXPLICIT)
    ds = sent_dataset(sent, EXPLICIT)
    assert ds.SOPInstanceUID == pydicom.dcmread(io.BytesIO(data),
                                                force=True).SOPInstanceUID
    np.testing.assert_array_equal(sent_pixels(sent, EXPLICIT),
                                  stored_pixels(data))


def test_transcode_drops_the_extended_offset_table():
    ds = small_ct(frames=3)
    expected = ds.pixel_array.copy()
    ds.compress(RLE, encapsulate_ext=True, generate_instance_uid=False)
    sent = sent_dataset(transcode(part10(ds, RLE), EXPLICIT), EXPLICIT)
    assert "ExtendedOffsetTable" not in sent
    assert "ExtendedOffsetTableLengths" not in sent
    np.testing.assert_array_equal(sent.pixel_array, expected)


def test_transcode_keeps_bits_stored_and_signed_pixels():
    ds = small_ct()
    expected = ds.pixel_array.copy()
    ds.compress(RLE, generate_instance_uid=False)
    sent = sent_dataset(transcode(part10(ds, RLE), IMPLICIT), IMPLICIT)
    assert (sent.BitsStored, sent.PixelRepresentation) == (12, 1)
    np.testing.assert_array_equal(sent.pixel_array, expected)


# Identity -----------------------------------------------------------------

def test_transcode_to_the_stored_syntax_returns_the_stored_bytes(tmp_path):
    ds = small_ct()
    ds.compress(RLE, generate_instance_uid=False)
    dataset = part10(ds, RLE)[parse(part10(ds, RLE)).dataset_offset:]
    with Archive(tmp_path / "store") as archive:
        archive.store_received(dataset, RLE, sop_class_uid=CT_IMAGE,
                               sop_instance_uid=ds.SOPInstanceUID)
        stored = archive.get(ds.SOPInstanceUID)
    assert transcode(stored, RLE) == dataset


@needs_corpus
@pytest.mark.parametrize("entry", SAMPLE[::4], ids=lambda e: e.relpath)
def test_transcode_identity_is_the_file_after_its_meta_group(entry):
    data = entry.path.read_bytes()
    meta = pydicom.dcmread(io.BytesIO(data), force=True,
                           stop_before_pixels=True).file_meta
    if "FileMetaInformationGroupLength" not in meta:
        pytest.skip("no group length to find the meta's end by")
    end = 132 + 12 + meta.FileMetaInformationGroupLength
    assert transcode(data, entry.transfer_syntax) == data[end:]


# Errors -------------------------------------------------------------------

def _zero_first_fragment(data: bytes) -> bytes:
    pixel = parse(data).pixel
    start, length = pixel.fragment_offsets[0], pixel.fragment_lengths[0]
    return data[:start] + bytes(length) + data[start + length:]


@needs_corpus
@pytest.mark.parametrize("relpath", [
    "pydicom/test_files/MR_small_jpeg_ls_lossless.dcm",
    "pydicom/test_files/MR_small_jp2klossless.dcm",
    "pydicom/test_files/SC_rgb_jpeg_gdcm.dcm",
])
def test_transcode_corrupted_fragment_is_a_transcode_error(relpath):
    data = _zero_first_fragment(corpus_bytes(relpath))
    uid = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    with pytest.raises(TranscodeError, match=f"instance {uid} .*does not "
                                             f"transcode to Explicit VR"):
        transcode(data, EXPLICIT)


def test_transcode_corrupted_rle_fragment_is_a_transcode_error():
    ds = small_ct()
    ds.compress(RLE, generate_instance_uid=False)
    with pytest.raises(TranscodeError, match="RLE Lossless"):
        transcode(_zero_first_fragment(part10(ds, RLE)), EXPLICIT)


def test_transcode_undecodable_syntax_is_a_transcode_error():
    ds = small_ct(frames=1)
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    with pytest.raises(TranscodeError, match="cannot be decoded here"):
        transcode(part10(ds, MPEG2), EXPLICIT)


@needs_corpus
def test_transcode_retired_jpeg_process_is_a_transcode_error():
    data = corpus_bytes("cornerstone3D/examplesOld/test-images/CTImage.dcm_"
                        "JPEGProcess6_8TransferSyntax_1.2.840.10008.1.2.4."
                        "53.dcm")
    with pytest.raises(TranscodeError, match="cannot be decoded here"):
        transcode(data, EXPLICIT)


def test_transcode_refuses_a_lossy_target():
    data = part10(small_ct(), EXPLICIT)
    with pytest.raises(TranscodeError, match="not a syntax pacsstore"):
        transcode(data, JPEG_BASELINE)


@needs_corpus
def test_transcode_refuses_to_compress_lossy_pixels_again():
    data = corpus_bytes("pydicom/test_files/SC_rgb_jpeg_dcmtk.dcm")
    with pytest.raises(TranscodeError, match="may be lossy"):
        transcode(data, RLE)


@needs_corpus
def test_transcode_encoder_refusal_is_a_transcode_error():
    data = corpus_bytes("pydicom/test_files/rtdose.dcm")  # 32-bit samples
    with pytest.raises(TranscodeError, match="JPEG-LS Lossless"):
        transcode(data, JPEG_LS)


@needs_corpus
def test_transcode_float_pixel_data_is_not_compressed():
    data = corpus_bytes("pydicom-data/parametric_map_float.dcm")
    with pytest.raises(TranscodeError, match="FloatPixelData"):
        transcode(data, RLE)


def test_transcode_big_endian_unknown_vr_is_a_transcode_error():
    ds = small_ct(frames=1)
    ds.add_new(0x00091010, "LO", "PACSSTORE TEST")
    ds.add_new(0x00091001, "UN", b"\x01\x02\x03\x04")
    ds.PixelData = np.frombuffer(ds.PixelData, "<i2").astype(">i2").tobytes()
    ds["PixelData"].VR = "OW"
    with pytest.raises(TranscodeError, match=r"\(0009,1001\) has VR UN"):
        transcode(part10(ds, BIG_ENDIAN), EXPLICIT)


# Inputs that once transcoded wrong ----------------------------------------

REGRESSIONS = Path(__file__).parent / "data" / "regressions"


def _encapsulated_items(fragments: list[bytes], table: bytes = b"") -> bytes:
    items = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(table)) + table
    for fragment in fragments:
        items += b"\xfe\xff\x00\xe0" + struct.pack("<I", len(fragment))
        items += fragment
    return items + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def test_transcode_of_a_file_ending_inside_its_pixel_data_is_refused():
    """pydicom reads such a file (kept as received) as an empty dataset,
    without an error: it went out as a C-STORE of no bytes, counted as
    sent (a C-GET's final status 0x0000)."""
    ds = small_ct(frames=4)
    ds.compress(RLE, generate_instance_uid=False)
    cut = part10(ds, RLE)[:-8]   # without its sequence delimiter
    assert len(pydicom.dcmread(io.BytesIO(cut), force=True)) == 0
    for target in (EXPLICIT, IMPLICIT):
        with pytest.raises(TranscodeError, match="does not read whole"):
            transcode(cut, target)


def test_transcode_refuses_frames_other_than_number_of_frames():
    """A Basic Offset Table four bytes off, or each frame in two
    fragments without one: pydicom's decoder gives 3 or 1 frames of the
    4, and the dataset went out shorter, NumberOfFrames rewritten, under
    the same SOP Instance UID."""
    ds = small_ct(frames=4)
    ds.compress(RLE, generate_instance_uid=False)
    frames = list(generate_frames(ds.PixelData, number_of_frames=4))
    starts = [0]
    for frame in frames[:-1]:
        starts.append(starts[-1] + 8 + len(frame))
    off_by_four = struct.pack("<4I", 0, *(s + 4 for s in starts[1:]))
    halves = [part for f in frames
              for part in (f[:len(f) // 2 & ~1], f[len(f) // 2 & ~1:])]
    for pixel_data in (_encapsulated_items(frames, off_by_four),
                       _encapsulated_items(halves)):
        ds.PixelData = pixel_data
        ds["PixelData"].is_undefined_length = True
        with pytest.raises(TranscodeError, match="Number of Frames is 4"):
            transcode(part10(ds, RLE), EXPLICIT)


@pytest.mark.parametrize("stored", [RLE, JPEG_LS])
def test_transcode_keeps_ybr_samples_of_a_lossless_syntax(stored):
    """YBR_FULL in RLE or JPEG-LS lossless was made RGB, which 8-bit
    samples cannot come back from; only JPEG's YBR is a codec's colour
    transform."""
    ds = small_ct(frames=1)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "YBR_FULL"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    samples = np.random.default_rng(2).integers(
        0, 256, (8, 6, 3), dtype=np.uint8)
    ds.PixelData = samples.tobytes()
    ds.compress(stored, generate_instance_uid=False)

    sent = sent_dataset(transcode(part10(ds, stored), EXPLICIT), EXPLICIT)

    assert sent.PhotometricInterpretation == "YBR_FULL"
    assert sent.PixelData == samples.tobytes()


def test_transcode_of_a_panicking_rle_segment_is_a_transcode_error():
    data = (REGRESSIONS / "rle-segment-panics-decoder.dcm").read_bytes()
    with pytest.raises(TranscodeError, match="PanicException"):
        transcode(data, EXPLICIT)


def test_a_panicking_rle_segment_is_a_frame_decode_error(tmp_path):
    data = (REGRESSIONS / "rle-segment-panics-decoder.dcm").read_bytes()
    with Archive(tmp_path / "store") as archive:
        uid = archive.store(data).sop_instance_uid
        failures = 0
        for index in range(archive.record(uid)["frames"]):
            try:
                archive.frame(uid, index, decode=True)
            except FrameDecodeError:
                failures += 1
        assert failures >= 1


def test_an_odd_deflated_dataset_goes_out_with_its_padding(tmp_path):
    """PS3.5 A.5: an odd deflate stream takes a trailing NUL. Stored as
    it came without one, it made DCMTK abort the association, and the
    rest of a C-MOVE with it. get() still returns the file as stored."""
    ds = small_ct(frames=1)
    for length in range(1, 64):
        ds.PatientComments = "x" * length
        plain = DicomBytesIO()
        plain.is_implicit_VR, plain.is_little_endian = False, True
        write_dataset(plain, ds)
        packer = zlib.compressobj(6, zlib.DEFLATED, -15)
        stream = packer.compress(plain.getvalue()) + packer.flush()
        if len(stream) % 2:
            break
    meta = build_file_meta(sop_class_uid=ds.SOPClassUID,
                           sop_instance_uid=ds.SOPInstanceUID,
                           transfer_syntax=DEFLATED)
    data = meta + stream

    assert transcode(data, DEFLATED) == stream + b"\0"
    with Archive(tmp_path / "store") as archive:
        assert archive.get(archive.store(data).sop_instance_uid) == data
