"""The generated CT series: geometry, Hounsfield units, determinism."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from pydicom.uid import BasicTextSRStorage

from pacsstore.synthetic import (HU_AIR, HU_SOFT_TISSUE, NOISE_HU,
                                 SCANNER_NOISE, SLICE_THICKNESS_MM,
                                 WHITE_NOISE, ct_series, multiframe_frames,
                                 multiframe_uid, phantom_slice,
                                 report_sizes, scanner_noise,
                                 structured_reports, write_ct_series,
                                 write_multiframe,
                                 write_structured_reports)


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


def _power_by_frequency(image, low, high):
    """Mean power of ``image``'s spectrum between two radial frequencies
    (cycles per pixel)."""
    power = np.abs(np.fft.rfft2(image)) ** 2
    fy = np.fft.fftfreq(image.shape[0])[:, None]
    fx = np.fft.rfftfreq(image.shape[1])[None, :]
    f = np.hypot(fy, fx)
    return power[(f > low) & (f < high)].mean()


def test_synthetic_scanner_noise_has_sigma_and_a_ramp_spectrum():
    noise = scanner_noise((256, 256), 15.0, np.random.default_rng(1))
    assert noise.dtype == np.float32
    assert noise.std() == pytest.approx(15.0, rel=1e-3)
    # Filtered back-projection suppresses the lowest frequencies and the
    # kernel rolls off towards Nyquist; white noise is flat.
    low = _power_by_frequency(noise, 0.0, 0.03)
    middle = _power_by_frequency(noise, 0.15, 0.25)
    top = _power_by_frequency(noise, 0.45, 0.5)
    assert low < 0.3 * middle and top < 0.3 * middle


def test_synthetic_scanner_noise_correlates_neighbours():
    noise = scanner_noise((256, 256), 15.0, np.random.default_rng(2))
    white = np.random.default_rng(2).normal(0, 15.0, (256, 256))

    def neighbour_correlation(image):
        return np.corrcoef(image[:, :-1].ravel(), image[:, 1:].ravel())[0, 1]

    assert neighbour_correlation(noise) > 0.3
    assert abs(neighbour_correlation(white)) < 0.05


def test_synthetic_noise_kind_changes_content_and_uids():
    white = next(ct_series(2, rows=32, columns=32))
    scanner = next(ct_series(2, rows=32, columns=32, noise=SCANNER_NOISE))
    assert white.SOPInstanceUID != scanner.SOPInstanceUID
    assert white.StudyInstanceUID != scanner.StudyInstanceUID
    assert white.PixelData != scanner.PixelData
    again = next(ct_series(2, rows=32, columns=32, noise=WHITE_NOISE))
    assert again.SOPInstanceUID == white.SOPInstanceUID


def test_synthetic_rejects_unknown_noise():
    with pytest.raises(ValueError, match="noise must be one of"):
        list(ct_series(1, rows=16, columns=16, noise="pink"))


def test_synthetic_multiframe_reads_back_frame_by_frame(tmp_path):
    path = write_multiframe(tmp_path / "mf.dcm", 5, rows=48, columns=40,
                            seed=3)
    ds = pydicom.dcmread(path)
    assert ds.SOPInstanceUID == multiframe_uid(5, rows=48, columns=40,
                                               seed=3)
    assert ds.NumberOfFrames == 5 and len(ds.SliceLocationVector) == 5
    assert ds.pixel_array.shape == (5, 48, 40)
    expected = np.stack(list(multiframe_frames(5, rows=48, columns=40,
                                               seed=3)))
    assert np.array_equal(ds.pixel_array, expected)
    # The pixel data is the last element: the file ends with its value.
    assert path.read_bytes().endswith(expected.tobytes())


def test_synthetic_multiframe_frames_differ_and_repeat_with_the_seed():
    frames = list(multiframe_frames(4, rows=32, columns=32))
    assert len({f.tobytes() for f in frames}) == 4
    again = list(multiframe_frames(4, rows=32, columns=32))
    assert all(np.array_equal(a, b) for a, b in zip(frames, again))


def test_synthetic_multiframe_refuses_more_than_a_32_bit_length(tmp_path):
    with pytest.raises(ValueError, match="32-bit length"):
        write_multiframe(tmp_path / "huge.dcm", 8193)
    assert not (tmp_path / "huge.dcm").exists()


def test_synthetic_reports_have_their_drawn_sizes(tmp_path):
    paths = write_structured_reports(tmp_path, 30, min_bytes=2048,
                                     max_bytes=40960)
    sizes = [p.stat().st_size for p in paths]
    drawn = report_sizes(30, min_bytes=2048, max_bytes=40960)
    assert all(0 <= d - s <= 1 for d, s in zip(drawn, sizes))
    assert 2048 <= min(sizes) and max(sizes) <= 40960
    assert max(sizes) > 4 * min(sizes)  # spread, not one size


def test_synthetic_reports_are_basic_text_sr_of_their_own_studies(tmp_path):
    paths = write_structured_reports(tmp_path, 4, min_bytes=4096,
                                     max_bytes=4096)
    reports = [pydicom.dcmread(p) for p in paths]
    assert {r.SOPClassUID for r in reports} == {BasicTextSRStorage}
    assert len({r.StudyInstanceUID for r in reports}) == 4
    assert len({r.SOPInstanceUID for r in reports}) == 4
    assert all(p.stat().st_size == 4096 for p in paths)
    finding = reports[0].ContentSequence[0]
    assert finding.ValueType == "TEXT" and finding.TextValue.endswith(".")


def test_synthetic_reports_are_deterministic():
    def texts(seed):
        return [(ds.SOPInstanceUID, ds.ContentSequence[0].TextValue)
                for ds in structured_reports(3, seed=seed)]

    assert texts(0) == texts(0)
    assert texts(0) != texts(1)
