"""Plausibility warnings: spacing, values that are not HU, anatomy that contradicts the header."""

import numpy as np
import pytest
import SimpleITK as sitk

from mhp_edge.plausibility import (
    anatomy_warnings,
    intensity_percentiles,
    intensity_sample,
    intensity_warnings,
    label_map_values,
    liver_volume_warnings,
    spacing_warnings,
)
from mhp_edge.preprocess import clean_scan, image_spacing_zyx_mm

SPACING_ZYX_MM = (5.0, 1.0, 1.0)


def torso_phantom():
    """Return (hu, liver) in LPS: a body with the spine posterior and the liver on the right."""
    z, y, x = np.mgrid[0:8, 0:160, 0:200]
    hu = np.full(z.shape, -1000.0, dtype=np.float32)
    body = ((y - 80) / 60.0) ** 2 + ((x - 100) / 90.0) ** 2 <= 1
    hu[body] = 40.0
    spine = ((y - 125) / 12.0) ** 2 + ((x - 100) / 12.0) ** 2 <= 1  # posterior: larger y
    hu[spine] = 700.0
    liver = body & (((y - 70) / 35.0) ** 2 + ((x - 55) / 35.0) ** 2 <= 1)  # right: smaller x
    hu[liver] = 100.0
    return hu, liver


def test_torso_phantom_passes():
    hu, liver = torso_phantom()
    assert anatomy_warnings(hu, liver, SPACING_ZYX_MM) == []


def test_front_back_flip_warns():
    hu, liver = torso_phantom()
    warnings = anatomy_warnings(hu[:, ::-1].copy(), liver[:, ::-1], SPACING_ZYX_MM)
    assert any("spine lies anterior" in w for w in warnings)


def test_left_right_flip_warns():
    hu, liver = torso_phantom()
    warnings = anatomy_warnings(hu[:, :, ::-1].copy(), liver[:, :, ::-1], SPACING_ZYX_MM)
    assert any("liver lies on the patient's left" in w for w in warnings)


def test_values_without_rescale_warn():
    hu, _ = torso_phantom()
    warnings = intensity_warnings(intensity_percentiles(hu + 1024))
    assert any("do not look like CT in HU" in w for w in warnings)


def test_constant_image_warns():
    assert "nearly constant" in intensity_warnings(intensity_percentiles(np.zeros((4, 8, 8), np.float32)))[0]


@pytest.mark.parametrize(
    ("liver_ml", "touches_edge", "expected"),
    [
        (1500.0, False, None),
        (1500.0, True, "reaches the edge of the scan"),
        (300.0, False, "outside the usual adult range"),
        (300.0, True, "may be outside"),
        (0.0, True, None),
    ],
)
def test_liver_volume_and_edge_warnings(liver_ml, touches_edge, expected):
    warnings = liver_volume_warnings(liver_ml, touches_edge=touches_edge)

    if expected is None:
        assert warnings == []
    else:
        assert len(warnings) == 1
        assert expected in warnings[0]


@pytest.mark.parametrize(
    ("spacing_xyz", "expected"),
    [
        ((0.7, 0.7, 2.5), 0),
        ((1.0, 1.0, 1.0), 1),
        ((1.0, 1.0, 2.0), 0),
        ((2.0, 2.0, 2.5), 1),
        ((0.7, 0.7, 10.0), 1),
    ],
)
def test_spacing_ranges(spacing_xyz, expected):
    image = sitk.Image(4, 4, 4, sitk.sitkFloat32)
    image.SetSpacing(spacing_xyz)
    assert len(spacing_warnings(image)) == expected


def test_real_cases_pass_and_flips_warn(cases_dir):
    for ct_path in sorted(cases_dir.glob("*_ct.nii.gz")):
        scan = clean_scan(sitk.ReadImage(str(ct_path))).image
        hu = sitk.GetArrayFromImage(scan)
        label_path = ct_path.with_name(ct_path.name.replace("_ct.", "_label."))
        liver = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(label_path)), "LPS")) > 0
        spacing = image_spacing_zyx_mm(scan)
        assert anatomy_warnings(hu, liver, spacing) == [], ct_path.name
        assert len(anatomy_warnings(hu[:, ::-1].copy(), liver[:, ::-1], spacing)) == 1, ct_path.name
        assert len(anatomy_warnings(hu[:, :, ::-1].copy(), liver[:, :, ::-1], spacing)) == 1, ct_path.name


def test_intensity_sample_long_scan():
    # A 1000-slice scan as a broadcast view, so the test allocates nothing large.
    long_scan = np.broadcast_to(np.zeros((1, 512, 512), dtype=np.int16), (1000, 512, 512))

    sample = intensity_sample(long_scan)

    assert sample.size <= 2_100_000
    assert sample.shape[1:] == (128, 128)


def test_label_map_values_of_masks_only():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(10, 40, 40)).astype(np.uint8)
    ct_hu = rng.normal(40.0, 300.0, size=(10, 40, 40)).astype(np.float32)
    raw_ct = rng.integers(0, 4096, size=(10, 40, 40)).astype(np.uint16)

    assert label_map_values(labels).tolist() == [0, 1, 2]
    assert label_map_values(ct_hu) is None
    assert label_map_values(raw_ct) is None
    assert label_map_values(np.zeros((4, 8, 8), dtype=np.uint8)) is None
    assert label_map_values(labels + np.float32(0.5)) is None
