"""Generated DICOM, for demonstrations, benchmarks and for tests the
corpus cannot serve (many slices of one series, large volumes, many small
reports).

The CT series looks like what a scanner sends: 512 x 512 slices of signed
16-bit Hounsfield units, a body-like phantom (air, skin and fat, soft
tissue, two lungs, a spine and a table) with noise of about the strength
of a routine abdominal CT, and the geometry a viewer needs to stack the
slices (ImagePositionPatient, SliceLocation, PixelSpacing). The noise is
white by default; ``noise=SCANNER_NOISE`` gives it the texture of a
filtered back-projection instead (see :func:`scanner_noise`), which is
what decides how well real slices compress.

:func:`write_multiframe` writes a multi-frame object of any size (1 GB
and more) one frame at a time, never holding the pixel data in memory;
:func:`structured_reports` makes Basic Text SR documents of a chosen
encoded size, the many small instances an archive receives besides
images.

Everything is a pure function of ``seed`` and the sizes asked for: the
same arguments give the same UIDs and the same bytes, so sending a
generated series twice is a true re-send, not a conflict.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import math
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (BasicTextSRStorage, CTImageStorage,
                         ExplicitVRLittleEndian,
                         MultiFrameGrayscaleWordSecondaryCaptureImageStorage)

from pacsstore import (IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME,
                       UID_ROOT)

logger = logging.getLogger(__name__)

# Hounsfield units of the phantom's materials (textbook values).
HU_AIR = -1000
HU_FAT = -100
HU_SOFT_TISSUE = 40
HU_LUNG = -800
HU_BONE = 700
HU_TABLE = 200

# Standard deviation of the noise in HU; routine abdominal CT at a
# standard dose shows 10-20 HU in soft tissue.
NOISE_HU = 15.0

SLICE_THICKNESS_MM = 2.5
PIXEL_SPACING_MM = 0.7  # a 358 mm field of view at 512 columns

# Noise kinds: independent Gaussian pixels, or the correlated texture of
# a reconstructed slice.
WHITE_NOISE = "white"
SCANNER_NOISE = "scanner"
NOISE_KINDS = (WHITE_NOISE, SCANNER_NOISE)


def synthetic_uid(*parts: object) -> str:
    """A UID under pacsstore's root derived from ``parts``.

    Derived rather than random so that a series generated twice with the
    same arguments carries the same UIDs (PS3.5 9.1: at most 64 chars).
    """
    digest = hashlib.sha256(repr(parts).encode()).digest()
    tail = str(int.from_bytes(digest[:12], "big"))
    return f"{UID_ROOT}.9.{tail}"[:64].rstrip(".")


def phantom_slice(z: float, rows: int = 512, columns: int = 512,
                  rng: np.random.Generator | None = None,
                  noise: str = WHITE_NOISE) -> np.ndarray:
    """One axial slice of the phantom at relative height ``z`` in [0, 1].

    Returns int16 HU. The body narrows towards both ends and the lungs
    appear only in the upper half, so the slices of a series differ.
    Noise of the given kind is added when ``rng`` is given.
    """
    image = _phantom_hu(z, rows, columns)
    if rng is not None:
        image += _noise(noise, image.shape, rng)
    return _to_stored_hu(image)


def _phantom_hu(z: float, rows: int, columns: int) -> np.ndarray:
    """The noiseless phantom, float32 HU."""
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    cy, cx = rows * 0.48, columns / 2
    taper = 0.85 + 0.15 * np.sin(np.pi * z)
    ry, rx = rows * 0.30 * taper, columns * 0.42 * taper

    image = np.full((rows, columns), HU_AIR, dtype=np.float32)
    _fill_ellipse(image, x, y, cx, cy, rx, ry, HU_FAT)
    _fill_ellipse(image, x, y, cx, cy, rx * 0.92, ry * 0.88,
                  HU_SOFT_TISSUE)
    if z > 0.5:
        lung = (z - 0.5) * 2
        for side in (-1, 1):
            _fill_ellipse(image, x, y, cx + side * rx * 0.45, cy - ry * 0.05,
                          rx * 0.30 * lung + 1, ry * 0.60 * lung + 1,
                          HU_LUNG)
    _fill_ellipse(image, x, y, cx, cy + ry * 0.62, rx * 0.09, ry * 0.16,
                  HU_BONE)
    image[int(cy + ry + rows * 0.06):int(cy + ry + rows * 0.08), :] = \
        HU_TABLE
    return image


def _to_stored_hu(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)


def _noise(kind: str, shape: tuple[int, ...],
           rng: np.random.Generator) -> np.ndarray:
    if kind == WHITE_NOISE:
        return rng.normal(0.0, NOISE_HU, shape).astype(np.float32)
    if kind == SCANNER_NOISE:
        return scanner_noise(shape, NOISE_HU, rng)
    raise ValueError(f"noise must be one of {', '.join(NOISE_KINDS)}; "
                     f"got {kind!r}")


def scanner_noise(shape: tuple[int, ...], sigma: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with the texture of a filtered back-projection.

    A reconstructed CT slice does not have independent pixels: the ramp
    filter of filtered back-projection suppresses low spatial frequencies
    and the reconstruction kernel rolls off the highest, so the noise
    power spectrum rises with frequency and falls again towards Nyquist
    (Hanson, Med. Phys. 1979; Boedeker et al., Phys. Med. Biol. 2007).
    White noise shaped by that spectrum (ramp times a Hann window) and
    scaled to ``sigma`` has the grain of a real slice, and compresses as
    one does. Returns float32 with standard deviation ``sigma``.
    """
    rows, columns = shape
    white = rng.standard_normal((rows, columns), dtype=np.float32)
    shaped = np.fft.irfft2(np.fft.rfft2(white) * _fbp_amplitude(rows,
                                                               columns),
                           s=(rows, columns))
    return (shaped * (sigma / shaped.std())).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _fbp_amplitude(rows: int, columns: int) -> np.ndarray:
    """The square root of the noise power spectrum |f| W(f)^2, W a Hann
    window reaching zero at Nyquist (0.5 cycles per pixel)."""
    fy = np.fft.fftfreq(rows)[:, None]
    fx = np.fft.rfftfreq(columns)[None, :]
    f = np.hypot(fy, fx)
    window = np.where(f < 0.5, 0.5 + 0.5 * np.cos(2 * np.pi * f), 0.0)
    amplitude = (np.sqrt(f) * window).astype(np.float32)
    amplitude.flags.writeable = False
    return amplitude


def _fill_ellipse(image: np.ndarray, x: np.ndarray, y: np.ndarray,
                  cx: float, cy: float, rx: float, ry: float,
                  value: float) -> None:
    inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
    image[inside] = value


def ct_series(slices: int = 100, *, seed: int = 0, rows: int = 512,
              columns: int = 512,
              noise: str = WHITE_NOISE) -> Iterator[Dataset]:
    """Yield the ``slices`` instances of one CT series, head first."""
    if slices < 1:
        raise ValueError(f"slices must be at least 1, got {slices}")
    # White noise keeps the UIDs it always had; another kind of noise is
    # other content, so it gets UIDs of its own.
    shape = (slices, rows, columns) if noise == WHITE_NOISE else \
        (slices, rows, columns, noise)
    study_uid = synthetic_uid("study", seed, *shape)
    series_uid = synthetic_uid("series", seed, *shape)
    rng = np.random.default_rng(seed)
    for index in range(slices):
        z = index / max(slices - 1, 1)
        pixels = phantom_slice(z, rows, columns, rng, noise)
        uid = synthetic_uid("instance", seed, *shape, index)
        ds = _ct_header(study_uid, series_uid, uid, seed, index)
        _set_geometry(ds, index, rows, columns)
        ds.PixelData = pixels.tobytes()
        yield ds


def _ct_header(study_uid: str, series_uid: str, instance_uid: str,
               seed: int, index: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = _file_meta(instance_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240315"
    ds.StudyTime = ds.SeriesTime = "101500"
    ds.ContentTime = f"1015{index % 60:02d}"
    ds.AccessionNumber = f"SYN{seed:06d}"
    ds.Modality = "CT"
    ds.Manufacturer = "pacsstore synthetic"
    ds.StudyDescription = "Synthetic CT phantom"
    ds.SeriesDescription = "Axial 2.5 mm"
    ds.PatientName = f"Phantom^Synthetic^{seed}"
    ds.PatientID = f"SYNTH-{seed:04d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = SLICE_THICKNESS_MM
    ds.KVP = 120
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    return ds


def _file_meta(instance_uid: str,
               sop_class_uid: str = CTImageStorage) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


def _set_geometry(ds: Dataset, index: int, rows: int, columns: int) -> None:
    z_mm = -index * SLICE_THICKNESS_MM
    ds.ImagePositionPatient = [-columns * PIXEL_SPACING_MM / 2,
                               -rows * PIXEL_SPACING_MM / 2, z_mm]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = synthetic_uid("frame", ds.SeriesInstanceUID)
    ds.SliceLocation = z_mm
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.PixelSpacing = [PIXEL_SPACING_MM, PIXEL_SPACING_MM]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    ds.RescaleType = "HU"


def write_ct_series(folder: str | Path, slices: int = 100, *, seed: int = 0,
                    rows: int = 512, columns: int = 512,
                    noise: str = WHITE_NOISE) -> list[Path]:
    """Write the series as Part 10 files ``CT000001.dcm``... in ``folder``.

    Files already present are rewritten with identical bytes.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in ct_series(slices, seed=seed, rows=rows, columns=columns,
                        noise=noise):
        path = folder / f"CT{ds.InstanceNumber:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.info("wrote %d synthetic CT slices to %s", len(paths), folder)
    return paths


# Multi-frame objects ---------------------------------------------------------

# Distinct noiseless phantoms a multi-frame object cycles through: the
# phantom costs more to draw than the noise, and fresh noise on every
# frame already makes every frame different content.
MULTIFRAME_PHANTOMS = 16

# (7FE0,0010) in Explicit VR Little Endian: tag, "OW", two reserved
# bytes, then the 32-bit value length (PS3.5 7.1.2).
_PIXEL_DATA_OW = struct.Struct("<HH2s2xI")


def multiframe_frames(frames: int, *, rows: int = 512, columns: int = 512,
                      seed: int = 0) -> Iterator[np.ndarray]:
    """The frames of :func:`write_multiframe`, one int16 array at a time:
    phantom slices from head to foot with fresh scanner noise each."""
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    rng = np.random.default_rng(seed)
    phantoms = min(frames, MULTIFRAME_PHANTOMS)
    bases = [_phantom_hu(k / max(phantoms - 1, 1), rows, columns)
             for k in range(phantoms)]
    for index in range(frames):
        base = bases[index * phantoms // frames]
        yield _to_stored_hu(base + scanner_noise(base.shape, NOISE_HU, rng))


def multiframe_uid(frames: int, *, rows: int = 512, columns: int = 512,
                   seed: int = 0) -> str:
    """The SOP Instance UID :func:`write_multiframe` gives the object."""
    return synthetic_uid("multiframe", seed, frames, rows, columns)


def write_multiframe(path: str | Path, frames: int, *, rows: int = 512,
                     columns: int = 512, seed: int = 0) -> Path:
    """Write a Multi-frame Grayscale Word Secondary Capture object of
    ``frames`` 16-bit frames to ``path``, streaming.

    pydicom writes the attributes in front of the pixel data; the Pixel
    Data element header and the frames follow one frame at a time, so an
    object of several gigabytes is written in the memory of one frame.
    The value length is 32 bits: at most about 4 GiB of pixel data.
    """
    frame_bytes = rows * columns * 2
    length = frames * frame_bytes
    if length > 0xFFFFFFFE:
        raise ValueError(f"{frames} frames of {frame_bytes} bytes exceed "
                         f"the 32-bit length of a native Pixel Data value")
    path = Path(path)
    ds = _multiframe_header(frames, rows, columns, seed)
    with open(path, "wb") as handle:
        pydicom.dcmwrite(handle, ds, enforce_file_format=True)
        handle.write(_PIXEL_DATA_OW.pack(0x7FE0, 0x0010, b"OW", length))
        for frame in multiframe_frames(frames, rows=rows, columns=columns,
                                       seed=seed):
            handle.write(frame.tobytes())
    logger.info("wrote a %d-frame object of %.1f MB to %s", frames,
                path.stat().st_size / 1e6, path)
    return path


def _multiframe_header(frames: int, rows: int, columns: int,
                       seed: int) -> Dataset:
    uid = multiframe_uid(frames, rows=rows, columns=columns, seed=seed)
    sop_class = MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    ds = Dataset()
    ds.file_meta = _file_meta(uid, sop_class)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid
    ds.StudyDate = ds.ContentDate = "20240315"
    ds.StudyTime = ds.ContentTime = "101500"
    ds.AccessionNumber = f"SYNMF{seed:05d}"
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Manufacturer = "pacsstore synthetic"
    ds.StudyDescription = "Synthetic multi-frame volume"
    ds.PatientName = f"Phantom^Multiframe^{seed}"
    ds.PatientID = f"SYNTH-MF-{seed:04d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = synthetic_uid("multiframe-study", uid)
    ds.SeriesInstanceUID = synthetic_uid("multiframe-series", uid)
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00182005  # Slice Location Vector
    ds.SliceLocationVector = [round(-i * SLICE_THICKNESS_MM, 2)
                              for i in range(frames)]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    return ds


# Structured reports ----------------------------------------------------------

REPORT_PATIENTS = 100  # reports cycle through this many patients

# Words of the findings text: a report's text is natural language, which
# compresses as such, not random bytes.
_REPORT_WORDS = (
    "no", "acute", "abnormality", "stable", "mild", "moderate", "small",
    "nodule", "lesion", "the", "right", "left", "lower", "upper", "lobe",
    "liver", "kidney", "within", "normal", "limits", "compared", "with",
    "prior", "study", "unchanged", "measuring", "mm", "effusion",
    "pleural", "consolidation", "there", "is", "are", "of", "and",
    "evidence", "fracture", "degenerative", "changes", "spine", "contrast",
    "enhancement", "recommend", "follow-up", "months", "impression",
)


def report_sizes(count: int, *, seed: int = 0, min_bytes: int = 2048,
                 max_bytes: int = 40960) -> list[int]:
    """Target encoded sizes of :func:`structured_reports`: spread
    log-uniformly between the bounds, so that short reports are as
    common as in a real feed and long ones still occur."""
    if not 0 < min_bytes <= max_bytes:
        raise ValueError(f"need 0 < min_bytes <= max_bytes, got "
                         f"{min_bytes} and {max_bytes}")
    rng = np.random.default_rng([seed, min_bytes, max_bytes])
    low, high = math.log(min_bytes), math.log(max_bytes)
    return [min(max(round(math.exp(v)), min_bytes), max_bytes)
            for v in rng.uniform(low, high, count)]


def structured_reports(count: int, *, seed: int = 0, min_bytes: int = 2048,
                       max_bytes: int = 40960) -> Iterator[Dataset]:
    """Yield ``count`` Basic Text SR documents, each of its own study,
    whose Part 10 encoding has the size :func:`report_sizes` drew, or one
    byte less where that size is odd (DICOM values have even lengths).
    ``min_bytes`` must leave room for the attributes, about 1.3 KB."""
    sizes = report_sizes(count, seed=seed, min_bytes=min_bytes,
                         max_bytes=max_bytes)
    words = np.random.default_rng([seed, count, 7])
    for index, size in enumerate(sizes):
        parts = ("report", seed, min_bytes, max_bytes, index)
        ds = _report(parts, index, seed)
        ds.ContentSequence[0].TextValue = _report_text(
            size - _encoded_size(ds), words)
        yield ds


def write_structured_reports(folder: str | Path, count: int, *,
                             seed: int = 0, min_bytes: int = 2048,
                             max_bytes: int = 40960) -> list[Path]:
    """Write the reports as ``SR000001.dcm``... in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in structured_reports(count, seed=seed, min_bytes=min_bytes,
                                 max_bytes=max_bytes):
        path = folder / f"SR{ds.InstanceNumber:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.info("wrote %d synthetic reports to %s", len(paths), folder)
    return paths


def _encoded_size(ds: Dataset) -> int:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.tell()


def _report_text(length: int, rng: np.random.Generator) -> str:
    """Sentences of exactly ``length`` characters (even, as a UT value's
    length must be; odd lengths lose one), at least two."""
    length = max(2, length - length % 2)
    picks = rng.integers(0, len(_REPORT_WORDS), length // 3 + 2)
    text = " ".join(_REPORT_WORDS[i] for i in picks)
    while len(text) < length:
        text += " " + text
    return text[:length - 1] + "."


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _report(parts: tuple, index: int, seed: int) -> Dataset:
    uid = synthetic_uid(*parts)
    patient = index % REPORT_PATIENTS
    ds = Dataset()
    ds.file_meta = _file_meta(uid, BasicTextSRStorage)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = uid
    ds.StudyDate = ds.ContentDate = "20240315"
    ds.StudyTime = ds.ContentTime = f"{10 + index % 8:02d}{index % 60:02d}00"
    ds.AccessionNumber = f"SYNSR{index:07d}"[:16]
    ds.Modality = "SR"
    ds.Manufacturer = "pacsstore synthetic"
    ds.ReferringPhysicianName = "Referrer^Synthetic"
    ds.StudyDescription = "Synthetic report"
    ds.SeriesDescription = "Radiology report"
    ds.PatientName = f"Reported^Patient^{seed}-{patient}"
    ds.PatientID = f"SYNTH-SR-{seed}-{patient:04d}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = synthetic_uid("report-study", *parts)
    ds.SeriesInstanceUID = synthetic_uid("report-series", *parts)
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = index + 1
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    ds.PerformedProcedureCodeSequence = Sequence()
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = Sequence(
        [_code("18748-4", "LN", "Diagnostic Imaging Report")])
    finding = Dataset()
    finding.RelationshipType = "CONTAINS"
    finding.ValueType = "TEXT"
    finding.ConceptNameCodeSequence = Sequence(
        [_code("121071", "DCM", "Finding")])
    finding.TextValue = ""
    ds.ContentSequence = Sequence([finding])
    return ds
