"""The generated CT series: geometry, Hounsfield units, determinism."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from pacsstore.synthetic import (HU_AIR, HU_SOFT_TISSUE, NOISE_HU,
                                 SLICE_THICKNESS_MM, ct_series,
                                 phantom_slice, write_ct_series)


def test_synthetic_series_shares_study_and_series_uids():
    slices = list(ct_series(6, rows=64, columns=64))
    assert len({ds.StudyInstanceUID for ds in slices}) == 1
    assert len({ds.SeriesInstanceUID for ds in slices}) == 1
    assert len({ds.SOPInstanceUID for ds in slices}) == 6
    assert all(len(ds.SOPInstanceUID) <= 64 for ds in slices)


def test_synthetic_series_geometry_steps_by_slice_thickness():
    slices = list(ct_series(5, rows=32, columns=32))
    z = [float(ds.ImagePositionPatient[2]) for ds in slices]
    assert np.allclose(np.diff(z), -SLICE_THICKNESS_MM)
    assert [float(ds.SliceLocation) for ds in slices] == z
    assert [ds.InstanceNumber for ds in slices] == [1, 2, 3, 4, 5]


def test_synthetic_default_slice_is_512_signed_hu(tmp_path):
    path = write_ct_series(tmp_path, 1)[0]
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    assert pixels.shape == (512, 512) and pixels.dtype == np.int16
    assert ds.PixelRepresentation == 1 and ds.BitsAllocated == 16
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


def test_synthetic_phantom_has_air_tissue_and_noise():
    rng = np.random.default_rng(3)
    image = phantom_slice(0.3, rng=rng).astype(np.float64)
    corner = image[:40, :40]
    centre = image[236:276, 236:276]
    assert abs(corner.mean() - HU_AIR) < 10  # clipped at -1024 below
    assert abs(centre.mean() - HU_SOFT_TISSUE) < 5
    assert 0.7 * NOISE_HU < centre.std() < 1.3 * NOISE_HU


def test_synthetic_upper_slices_have_lungs():
    low = phantom_slice(0.1)
    high = phantom_slice(0.9)
    assert (high < -600).sum() > (low < -600).sum() + 1000


def test_synthetic_series_is_deterministic(tmp_path):
    first = write_ct_series(tmp_path / "a", 3, rows=64, columns=64)
    again = write_ct_series(tmp_path / "b", 3, rows=64, columns=64)
    other = write_ct_series(tmp_path / "c", 3, rows=64, columns=64, seed=1)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert first[0].read_bytes() != other[0].read_bytes()


def test_synthetic_rejects_empty_series():
    with pytest.raises(ValueError, match="at least 1"):
        list(ct_series(0))
