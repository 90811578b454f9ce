"""Generated CT series, for demonstrations and for tests the corpus cannot
serve (many slices of one series, large volumes).

The series looks like what a scanner sends: 512 x 512 slices of signed
16-bit Hounsfield units, a body-like phantom (air, skin and fat, soft
tissue, two lungs, a spine and a table) with Gaussian noise of about the
strength of a routine abdominal CT, and the geometry a viewer needs to
stack the slices (ImagePositionPatient, SliceLocation, PixelSpacing).

Everything is a pure function of ``seed`` and the slice count: the same
arguments give the same UIDs and the same bytes, so sending a generated
series twice is a true re-send, not a conflict.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

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


def synthetic_uid(*parts: object) -> str:
    """A UID under pacsstore's root derived from ``parts``.

    Derived rather than random so that a series generated twice with the
    same arguments carries the same UIDs (PS3.5 9.1: at most 64 chars).
    """
    digest = hashlib.sha256(repr(parts).encode()).digest()
    tail = str(int.from_bytes(digest[:12], "big"))
    return f"{UID_ROOT}.9.{tail}"[:64].rstrip(".")


def phantom_slice(z: float, rows: int = 512, columns: int = 512,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """One axial slice of the phantom at relative height ``z`` in [0, 1].

    Returns int16 HU. The body narrows towards both ends and the lungs
    appear only in the upper half, so the slices of a series differ.
    """
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

    if rng is not None:
        image += rng.normal(0.0, NOISE_HU, image.shape).astype(np.float32)
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)


def _fill_ellipse(image: np.ndarray, x: np.ndarray, y: np.ndarray,
                  cx: float, cy: float, rx: float, ry: float,
                  value: float) -> None:
    inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
    image[inside] = value


def ct_series(slices: int = 100, *, seed: int = 0, rows: int = 512,
              columns: int = 512) -> Iterator[Dataset]:
    """Yield the ``slices`` instances of one CT series, head first."""
    if slices < 1:
        raise ValueError(f"slices must be at least 1, got {slices}")
    study_uid = synthetic_uid("study", seed, slices, rows, columns)
    series_uid = synthetic_uid("series", seed, slices, rows, columns)
    rng = np.random.default_rng(seed)
    for index in range(slices):
        z = index / max(slices - 1, 1)
        pixels = phantom_slice(z, rows, columns, rng)
        uid = synthetic_uid("instance", seed, slices, rows, columns, index)
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


def _file_meta(instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
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
                    rows: int = 512, columns: int = 512) -> list[Path]:
    """Write the series as Part 10 files ``CT000001.dcm``... in ``folder``.

    Files already present are rewritten with identical bytes.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in ct_series(slices, seed=seed, rows=rows, columns=columns):
        path = folder / f"CT{ds.InstanceNumber:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.info("wrote %d synthetic CT slices to %s", len(paths), folder)
    return paths
