"""DICOM folders as scanners write them: phases, localizers, gaps, duplicates, odd pixel data."""

import numpy as np
import pytest
import SimpleITK as sitk

from dicom_factory import write_series, write_slice
from mhp_edge.errors import InputImageError
from mhp_edge.io import read_image

SHAPE = (12, 16, 20)


def ramp_volume():
    """HU that change along z, so slice order and interpolation are visible."""
    z = np.arange(SHAPE[0], dtype=np.float32)[:, None, None]
    return np.broadcast_to(-500 + 40 * z, SHAPE).astype(np.float32).copy()


def test_series_read_with_geometry(tmp_path):
    write_series(tmp_path, ramp_volume())
    image = read_image(tmp_path)
    assert image.GetSize() == (20, 16, 12)
    assert image.GetSpacing() == pytest.approx((0.8, 0.8, 1.25))
    assert image.GetOrigin() == pytest.approx((-50.0, -40.0, -100.0))
    assert np.array_equal(sitk.GetArrayFromImage(image), ramp_volume())


def test_unsigned_with_negative_intercept(tmp_path):
    write_series(tmp_path, ramp_volume(), unsigned=True)
    hu = sitk.GetArrayFromImage(read_image(tmp_path))
    assert hu.min() == -500
    assert np.array_equal(hu, ramp_volume())


def test_padding_value_becomes_air(tmp_path):
    volume = ramp_volume()
    volume[:, 0, 0] = -32768
    write_series(tmp_path, volume, padding_value=-32768)
    hu = sitk.GetArrayFromImage(read_image(tmp_path))
    assert (hu[:, 0, 0] == -1024).all()
    assert hu.max() < 32768


def test_jittered_positions_pass(tmp_path):
    write_series(tmp_path, ramp_volume(), jitter_mm=0.002)
    image = read_image(tmp_path)
    assert image.GetSize()[2] == SHAPE[0]
    assert image.GetSpacing()[2] == pytest.approx(1.25, abs=1e-3)


def test_duplicate_slices_dropped(tmp_path, caplog):
    write_series(tmp_path, ramp_volume(), duplicate=(4, 5))
    image = read_image(tmp_path)
    assert image.GetSize()[2] == SHAPE[0]
    assert np.array_equal(sitk.GetArrayFromImage(image), ramp_volume())
    assert "repeat a position" in caplog.text


def test_missing_slice_interpolated_with_warning(tmp_path, caplog):
    write_series(tmp_path, ramp_volume(), drop=(6,))
    image = read_image(tmp_path)
    assert image.GetSize()[2] == SHAPE[0]
    assert image.GetSpacing()[2] == pytest.approx(1.25)
    assert np.allclose(sitk.GetArrayFromImage(image), ramp_volume(), atol=1e-3)
    assert "Interpolated 1 missing slices" in caplog.text


def test_large_gap_rejected(tmp_path):
    write_series(tmp_path, ramp_volume(), drop=(4, 5, 6, 7))
    with pytest.raises(InputImageError, match="not evenly spaced"):
        read_image(tmp_path)


def test_localizer_in_series_ignored(tmp_path):
    uid = write_series(tmp_path, ramp_volume())
    for index in range(2):
        write_slice(
            tmp_path / f"localizer{index}.dcm",
            np.zeros((16, 16), dtype=np.int16),
            series_uid=uid,
            position_mm=(-50.0, 0.0, 0.0),
            orientation=(1, 0, 0, 0, 0, -1),
            image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
        )
    assert read_image(tmp_path).GetSize() == (20, 16, 12)


def test_two_phases_choose_original_then_largest(tmp_path):
    write_series(tmp_path / "a", ramp_volume()[:8], series_number=2)
    write_series(tmp_path / "b", ramp_volume(), series_number=3)
    write_series(tmp_path / "c", ramp_volume(), series_number=4, image_type=("DERIVED", "SECONDARY", "MPR"))
    assert read_image(tmp_path).GetSize()[2] == SHAPE[0]


def test_series_uid_chooses(tmp_path):
    small = write_series(tmp_path / "a", ramp_volume()[:8], series_number=2)
    write_series(tmp_path / "b", ramp_volume(), series_number=3)
    assert read_image(tmp_path, series_uid=small).GetSize()[2] == 8
    with pytest.raises(InputImageError, match="no image series with UID 9.9"):
        read_image(tmp_path, series_uid="9.9")


def test_folder_of_non_dicom_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputImageError, match="no DICOM image series"):
        read_image(tmp_path)
