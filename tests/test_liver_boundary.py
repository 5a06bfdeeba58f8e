"""Liver boundary refinement: a coarse liver surface moves onto the organ's edge in the CT."""

import numpy as np
import pytest
from scipy import ndimage

from export.contract import LIVER_BOUNDARY
from mhp_edge.evaluate import dice
from mhp_edge.liver_boundary import (
    _copy_changed_blocks,
    dilate_once,
    fill_holes,
    in_plane_step,
    largest_component,
    refine_liver_boundary,
    signed_distance_mm,
)

SPACING_ZYX_MM = (2.0, 0.8, 0.8)


def ellipsoid_liver(
    shape=(40, 100, 100), radii_mm=(30.0, 30.0, 25.0), spacing_zyx_mm=SPACING_ZYX_MM
) -> np.ndarray:
    """Return a bool ellipsoid in the middle of a (z, y, x) grid."""
    axes_mm = [(np.arange(n) - n / 2) * s for n, s in zip(shape, spacing_zyx_mm, strict=True)]
    grids = np.meshgrid(*axes_mm, indexing="ij")
    return sum((g / r) ** 2 for g, r in zip(grids, radii_mm, strict=True)) <= 1.0


def phantom_ct(liver: np.ndarray, *, liver_hu=60.0, outside_hu=-100.0, noise_hu=20.0) -> np.ndarray:
    """Return int16 HU of liver tissue in fat, with Gaussian noise of ``noise_hu``."""
    hu = np.where(liver, liver_hu, outside_hu) + np.random.default_rng(0).normal(0, noise_hu, liver.shape)
    return hu.astype(np.int16)


def shifted_surface(liver: np.ndarray, shift_mm: float) -> np.ndarray:
    """Return the liver grown (positive) or shrunk (negative) by ``shift_mm`` along its normal."""
    return signed_distance_mm(liver, SPACING_ZYX_MM) > -shift_mm


@pytest.mark.parametrize(("shift_mm", "min_dice"), [(-3.0, 0.90), (3.0, 0.98)])
def test_boundary_moves_onto_the_edge(shift_mm, min_dice):
    # A surface 3 mm inside the edge ends 1-2 mm inside it, because the smoothing mixes the last
    # millimetre of liver with the fat beyond, so the bar is lower than for a surface outside.
    truth = ellipsoid_liver()
    model = shifted_surface(truth, shift_mm)

    refined = refine_liver_boundary(
        phantom_ct(truth), model, signed_distance_mm(model, SPACING_ZYX_MM), SPACING_ZYX_MM, LIVER_BOUNDARY
    )

    assert dice(model, truth) < 0.87
    assert dice(refined, truth) > min_dice


def test_fine_scan_refined_on_subsampled_grid():
    spacing_zyx_mm = (2.0, 0.5, 0.5)
    truth = ellipsoid_liver(shape=(40, 160, 160), spacing_zyx_mm=spacing_zyx_mm)
    model = signed_distance_mm(truth, spacing_zyx_mm) > 3.0

    distance_mm = signed_distance_mm(model, spacing_zyx_mm)[:, ::2, ::2]

    refined = refine_liver_boundary(phantom_ct(truth), model, distance_mm, spacing_zyx_mm, LIVER_BOUNDARY)

    assert in_plane_step(spacing_zyx_mm, LIVER_BOUNDARY.grid_mm) == 2
    assert refined.shape == truth.shape
    assert dice(model, truth) < 0.87
    assert dice(refined, truth) > 0.90


@pytest.mark.parametrize(("spacing_mm", "step"), [(0.57, 2), (0.7, 1), (0.98, 1), (0.3, 3), (3.0, 1)])
def test_in_plane_step_nearest_to_grid(spacing_mm, step):
    assert in_plane_step((5.0, spacing_mm, spacing_mm), 1.0) == step


def test_distance_on_wrong_grid_rejected():
    spacing_zyx_mm = (2.0, 0.5, 0.5)
    liver = ellipsoid_liver(shape=(40, 160, 160), spacing_zyx_mm=spacing_zyx_mm)

    with pytest.raises(ValueError, match="subsampled by 2"):
        refine_liver_boundary(
            phantom_ct(liver),
            liver,
            signed_distance_mm(liver, spacing_zyx_mm),
            spacing_zyx_mm,
            LIVER_BOUNDARY,
        )


def test_growth_stays_within_reach_of_the_model_surface():
    # An organ of the liver's HU touching the liver: only the band next to the model's surface joins.
    truth = ellipsoid_liver()
    neighbour = np.zeros_like(truth)
    neighbour[:, :, 75:] = True
    model = truth.copy()
    distance_mm = signed_distance_mm(model, SPACING_ZYX_MM)

    refined = refine_liver_boundary(
        phantom_ct(truth | neighbour), model, distance_mm, SPACING_ZYX_MM, LIVER_BOUNDARY
    )

    assert refined[distance_mm < -LIVER_BOUNDARY.reach_mm].sum() == 0
    assert refined[distance_mm > LIVER_BOUNDARY.reach_mm].all()


def test_result_is_one_component_without_holes():
    truth = ellipsoid_liver()
    ct = phantom_ct(truth)
    ct[20, 50, 50] = 1000  # a bright speck in the core stays liver: the core is not changed
    ct[
        truth & (signed_distance_mm(truth, SPACING_ZYX_MM) < 2.0) & (np.arange(100)[None, :, None] < 50)
    ] = -200
    distance_mm = signed_distance_mm(truth, SPACING_ZYX_MM)

    refined = refine_liver_boundary(ct, truth, distance_mm, SPACING_ZYX_MM, LIVER_BOUNDARY)

    assert ndimage.label(refined)[1] == 1
    assert (ndimage.binary_fill_holes(refined) == refined).all()
    assert refined[20, 50, 50]


def test_empty_core_returns_the_model_mask():
    model = np.zeros((10, 20, 20), dtype=bool)
    model[5, 10, 10] = True
    distance_mm = signed_distance_mm(model, SPACING_ZYX_MM)

    refined = refine_liver_boundary(phantom_ct(model), model, distance_mm, SPACING_ZYX_MM, LIVER_BOUNDARY)

    assert (refined == model).all()


def random_blobs(shape=(20, 40, 50), seed=0) -> np.ndarray:
    """Return a bool mask of many small components, some with holes and some touching the border."""
    noise = np.random.default_rng(seed).normal(size=shape)
    return ndimage.gaussian_filter(noise, 1.5) > 0.05


def test_fill_holes_equals_scipy():
    mask = random_blobs()
    enclosed = np.ones((5, 5, 5), dtype=bool)
    enclosed[2, 2, 2] = False
    corner_gap = enclosed[2:, 2:, 2:]  # the gap touches the border: no hole

    assert (fill_holes(mask) == ndimage.binary_fill_holes(mask)).all()
    assert (fill_holes(~mask) == ndimage.binary_fill_holes(~mask)).all()
    assert fill_holes(enclosed).all()
    assert fill_holes(corner_gap).sum() == 26
    assert fill_holes(corner_gap) is not corner_gap


def test_dilate_once_equals_scipy():
    mask = random_blobs(seed=4)
    single = np.zeros((1, 1, 3), dtype=bool)
    single[0, 0, 1] = True

    assert (dilate_once(mask) == ndimage.binary_dilation(mask)).all()
    assert dilate_once(single).all()
    assert dilate_once(np.zeros((0, 4, 5), dtype=bool)).shape == (0, 4, 5)


def test_empty_arrays_returned_unchanged():
    empty = np.zeros((0, 4, 5), dtype=bool)

    assert fill_holes(empty).shape == (0, 4, 5)
    assert largest_component(empty).shape == (0, 4, 5)


def test_largest_component_equals_scipy():
    mask = random_blobs(seed=1)
    labelled, _ = ndimage.label(mask)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0

    twins = np.zeros((3, 4, 9), dtype=bool)
    twins[1, 1:3, 1:3] = True
    twins[1, 1:3, 6:8] = True

    assert (largest_component(mask) == (labelled == sizes.argmax())).all()
    assert not largest_component(np.zeros((3, 4, 5), dtype=bool)).any()
    assert largest_component(twins)[:, :, :5].sum() == 4
    assert not largest_component(twins)[:, :, 5:].any()


@pytest.mark.parametrize("step", [2, 3])
def test_changed_blocks_replace_the_fine_mask(step):
    # The fine mask's rows and columns are not whole multiples of step, so the last blocks are cut.
    fine = random_blobs(shape=(4, 31, 29), seed=2)
    grid = random_blobs(shape=(4, 31, 29), seed=3)[:, ::step, ::step]
    expanded = np.repeat(np.repeat(grid, step, axis=1), step, axis=2)[:, :31, :29]
    changed = np.repeat(np.repeat(grid != fine[:, ::step, ::step], step, axis=1), step, axis=2)[:, :31, :29]

    assert (_copy_changed_blocks(grid, fine, step) == np.where(changed, expanded, fine)).all()


def test_signed_distance_equals_exact_transform():
    mask = random_blobs(seed=4)
    spacing_zyx_mm = (2.5, 0.7, 0.9)
    inside = ndimage.distance_transform_edt(mask, sampling=spacing_zyx_mm)
    outside = ndimage.distance_transform_edt(~mask, sampling=spacing_zyx_mm)

    distance_mm = signed_distance_mm(mask, spacing_zyx_mm)

    assert distance_mm.dtype == np.float32
    np.testing.assert_allclose(distance_mm, inside - outside, atol=1e-4)
