"""Model input preparation: the tumour crop at the model spacing and the scan around it."""

import dataclasses

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from export.contract import hessian_context_mm
from mhp_edge.preprocess import (
    count_below,
    hessian_input,
    nonzero_box,
    resample_box,
    resample_like,
    resample_to_spacing,
    shift_to_liver_median,
    to_orientation,
    upsample_linear,
    value_box,
)
from model_factory import make_metadata


def random_scan(shape_zyx=(40, 120, 110), spacing_zyx_mm=(2.5, 1.25, 1.25)):
    rng = np.random.default_rng(5)
    hu = ndimage.gaussian_filter(rng.normal(size=shape_zyx), 2.0).astype(np.float32) * 400 + 60
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(tuple(reversed(spacing_zyx_mm)))
    image.SetOrigin((-20.0, 35.0, -110.0))
    return image


def tumour_metadata(context_mm, spacing_zyx_mm=(2.5, 1.25, 1.25)):
    metadata = make_metadata("tumour", spacing_zyx_mm=spacing_zyx_mm)
    return dataclasses.replace(metadata, hessian=dataclasses.replace(metadata.hessian, context_mm=context_mm))


def test_core_is_the_crop_resampled():
    scan = random_scan()
    box = (slice(10, 30), slice(30, 90), slice(25, 85))
    z, y, x = box
    crop = scan[x.start : x.stop, y.start : y.stop, z.start : z.stop]

    metadata = tumour_metadata(30.0, spacing_zyx_mm=(3.0, 2.0, 2.0))
    grid = resample_box(scan, box, metadata)
    expected = resample_to_spacing(crop, metadata.spacing_zyx_mm, default_value=metadata.pad_hu)

    np.testing.assert_array_equal(grid.hu, sitk.GetArrayFromImage(expected))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(grid.crop), sitk.GetArrayFromImage(crop))
    assert grid.crop.GetOrigin() == crop.GetOrigin()
    assert grid.image.GetOrigin() == expected.GetOrigin()
    assert grid.image.GetSize() == expected.GetSize()


@pytest.mark.parametrize(
    ("box", "expected_before", "expected_after"),
    [
        # Room on every side: 30 mm is 10 model voxels in z and 15 in y and x.
        ((slice(30, 50), slice(40, 80), slice(40, 70)), (10, 15, 15), (10, 15, 15)),
        # The box touches the scan's first slice and first rows: no context there.
        ((slice(0, 20), slice(0, 50), slice(40, 70)), (0, 0, 15), (10, 15, 15)),
    ],
)
def test_context_stops_at_the_scan(box, expected_before, expected_after):
    metadata = tumour_metadata(30.0, spacing_zyx_mm=(3.0, 2.0, 2.0))
    scan = random_scan((80, 120, 110), spacing_zyx_mm=(1.5, 1.0, 1.0))

    grid = resample_box(scan, box, metadata)

    before = tuple(part.start for part in grid.core)
    after = tuple(size - part.stop for part, size in zip(grid.core, grid.context_hu.shape, strict=True))
    assert before == expected_before
    assert after == expected_after
    # Context voxels are scan, never padding.
    assert grid.context_hu.min() > metadata.pad_hu


def test_context_keeps_the_hessian_of_a_voxel_fixed():
    # Two boxes around the same voxels, on a scan at the model spacing: with context the Hessian of
    # their shared voxels agrees to float32 rounding, without it the voxels near the faces differ.
    scan = random_scan()
    spacing = (2.5, 1.25, 1.25)
    small = (slice(14, 26), slice(45, 75), slice(40, 70))
    large = (slice(10, 30), slice(35, 85), slice(30, 80))
    shared_in_large = tuple(
        slice(inner.start - outer.start, inner.stop - outer.start)
        for inner, outer in zip(small, large, strict=True)
    )

    def hessian_of(box, context_mm):
        metadata = tumour_metadata(context_mm)
        grid = resample_box(scan, box, metadata)
        return hessian_input(grid.context_hu, spacing, metadata.hessian, core=grid.core)

    context_mm = hessian_context_mm(spacing, make_metadata("tumour").hessian.scales_mm, 4.0)
    with_context = hessian_of(large, context_mm)[shared_in_large]
    np.testing.assert_allclose(hessian_of(small, context_mm), with_context, rtol=1e-5, atol=1e-5)
    difference = np.abs(hessian_of(small, 0.0) - hessian_of(large, 0.0)[shared_in_large])
    assert difference.max() > 0.1


def test_zero_context_is_the_crop_alone():
    scan = random_scan()
    grid = resample_box(scan, (slice(10, 30), slice(30, 90), slice(25, 85)), tumour_metadata(0.0))
    assert grid.context_hu.shape == grid.hu.shape
    assert all(part.start == 0 for part in grid.core)


@pytest.mark.parametrize("outside", [0.0, -7.0])
def test_upsample_linear_equals_simpleitk_resample(outside):
    # The fine grid starts before the coarse map and ends beyond it, as in the liver stage, which
    # interpolates its probability and distance maps this way.
    values = np.random.default_rng(0).random((13, 20, 17)).astype(np.float32)
    coarse_spacing, fine_spacing = (4.0, 3.0, 3.0), (1.6, 0.57, 0.57)
    coarse_start_mm, fine_start_mm = (4.0, 6.0, 15.0), (1.0, 9.99, 13.0)
    fine_shape = (40, 110, 100)
    coarse = sitk.GetImageFromArray(values)
    coarse.SetSpacing(coarse_spacing[::-1])
    coarse.SetOrigin(coarse_start_mm[::-1])
    fine = sitk.Image(list(fine_shape[::-1]), sitk.sitkFloat32)
    fine.SetSpacing(fine_spacing[::-1])
    fine.SetOrigin(fine_start_mm[::-1])

    expected = sitk.GetArrayFromImage(
        resample_like(coarse, fine, interpolator=sitk.sitkLinear, default_value=outside)
    )
    result = upsample_linear(
        values, coarse_spacing, coarse_start_mm, fine_spacing, fine_start_mm, fine_shape, outside=outside
    )

    assert (expected == outside).any()
    assert (expected != outside).any()
    np.testing.assert_allclose(result, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("outside", [None, 0.0, 1.0])
def test_upsample_linear_threshold_equals_comparison(outside):
    values = np.random.default_rng(1).random((13, 20, 17)).astype(np.float32)
    grids = ((4.0, 3.0, 3.0), (4.0, 6.0, 15.0), (1.6, 0.57, 0.57), (1.0, 9.99, 13.0), (40, 110, 100))

    probability = upsample_linear(values, *grids, outside=outside)
    mask = upsample_linear(values, *grids, outside=outside, threshold=0.5)

    assert mask.dtype == bool
    assert (mask == (probability > 0.5)).all()


@pytest.mark.parametrize("interpolator", [sitk.sitkLinear, sitk.sitkNearestNeighbor])
def test_resampling_equals_simpleitk_resample(interpolator):
    scan = sitk.Cast(random_scan(), sitk.sitkInt16)
    scan.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    spacing_zyx_mm = (4.0, 2.1, 1.7)
    spacing_xyz_mm = spacing_zyx_mm[::-1]
    size_xyz = [
        int(np.ceil(n * old / new - 1e-6))
        for n, old, new in zip(scan.GetSize(), scan.GetSpacing(), spacing_xyz_mm, strict=True)
    ]
    pixel_id = scan.GetPixelID() if interpolator == sitk.sitkNearestNeighbor else sitk.sitkFloat32
    grid = sitk.Resample(
        scan, size_xyz, sitk.Transform(), interpolator, scan.GetOrigin(), spacing_xyz_mm,
        scan.GetDirection(), -1024.0, pixel_id,
    )  # fmt: skip
    same_type = sitk.Resample(scan, grid, sitk.Transform(), interpolator, -1024.0, scan.GetPixelID())

    resampled = resample_to_spacing(scan, spacing_zyx_mm, interpolator=interpolator, default_value=-1024.0)
    like = resample_like(scan, grid, interpolator=interpolator, default_value=-1024.0)

    for result, expected in ((resampled, grid), (like, same_type)):
        assert result.GetPixelID() == expected.GetPixelID()
        assert result.GetSize() == expected.GetSize()
        assert result.GetDirection() == expected.GetDirection()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(result), sitk.GetArrayFromImage(expected))


def test_liver_median_shift_moves_whole_grid():
    metadata = dataclasses.replace(tumour_metadata(20.0), liver_median_hu=100.0)
    grid = resample_box(random_scan(), (slice(10, 30), slice(30, 90), slice(25, 85)), metadata)
    liver = np.zeros(grid.hu.shape, dtype=bool)
    liver[2:6, 10:20, 10:20] = True

    shifted, offset_hu = shift_to_liver_median(grid, liver, metadata)

    assert np.median(shifted.hu[liver]) == pytest.approx(100.0, abs=1e-3)
    np.testing.assert_allclose(shifted.context_hu - grid.context_hu, offset_hu, atol=1e-3)
    assert shifted.core == grid.core


def test_no_liver_or_no_setting_keeps_grid():
    metadata = tumour_metadata(20.0)
    grid = resample_box(random_scan(), (slice(10, 30), slice(30, 90), slice(25, 85)), metadata)
    liver = np.ones(grid.hu.shape, dtype=bool)

    with_setting = dataclasses.replace(metadata, liver_median_hu=100.0)
    for liver_mask, model in ((liver, metadata), (np.zeros_like(liver), with_setting)):
        result, offset_hu = shift_to_liver_median(grid, liver_mask, model)
        assert result is grid
        assert offset_hu == 0.0


def test_to_orientation_keeps_canonical_image():
    scan = random_scan()
    assert to_orientation(scan, "LPS") is scan


def test_to_orientation_reorients_others():
    scan = random_scan()
    flipped = sitk.DICOMOrient(scan, "RAS")
    restored = to_orientation(flipped, "LPS")

    assert restored.GetDirection() == scan.GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(restored), sitk.GetArrayViewFromImage(scan))


@pytest.mark.parametrize("slices", [1, 15, 16, 17, 40])
def test_count_below_equals_full_count(slices):
    hu = np.random.default_rng(slices).integers(-2048, 500, size=(slices, 9, 7)).astype(np.int16)
    assert count_below(hu, -1024) == np.count_nonzero(hu < -1024)


@pytest.mark.parametrize(
    "box",
    [
        None,
        (slice(0, 1), slice(0, 1), slice(0, 1)),
        (slice(15, 18), slice(2, 9), slice(3, 4)),
        (slice(30, 40),) * 3,
    ],
)
def test_value_box_equals_nonzero_box(box):
    labels = np.zeros((40, 45, 50), dtype=np.uint8)
    labels[5:30, 4:40, 6:44] = 1
    if box is not None:
        labels[box] = 2
    assert value_box(labels, 2) == nonzero_box(labels == 2)
