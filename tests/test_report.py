"""Lesion measurements: RECIST-style diameters, volumes, edge flags and the numpy API."""

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from mhp_edge.report import axial_diameters_mm, lesions_csv, measure_lesions


def labels_image(array, spacing_xyz=(0.5, 0.5, 2.0)):
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing_xyz)
    return image


def test_diameters_of_rectangle():
    lesion = np.zeros((1, 40, 40), dtype=bool)
    lesion[0, 10:16, 5:25] = True  # 6 x 20 pixels
    longest, perpendicular = axial_diameters_mm(lesion, (1.0, 0.5))
    # The long axis is the diagonal of the 10 x 6 mm rectangle; the width across a diagonal is
    # twice the area over the diagonal.
    diagonal = np.hypot(10.0, 6.0)
    assert longest == pytest.approx(diagonal)
    assert perpendicular == pytest.approx(2 * 10.0 * 6.0 / diagonal)


def test_diameters_of_disc_match_radius():
    yy, xx = np.mgrid[-30:31, -30:31]
    disc = (yy**2 + xx**2 <= 20**2)[np.newaxis]
    longest, perpendicular = axial_diameters_mm(disc, (0.5, 0.5))
    assert longest == pytest.approx(20.5, abs=0.6)
    assert perpendicular == pytest.approx(longest, rel=0.05)


def test_measure_two_lesions_largest_first():
    labels = np.ones((10, 40, 40), dtype=np.uint8)
    labels[2:5, 5:10, 5:10] = 2
    labels[4:9, 20:35, 20:35] = 2
    scan = labels_image(labels * 50)
    lesions = measure_lesions(labels_image(labels), scan)
    assert [lesion.lesion_id for lesion in lesions] == [1, 2]
    assert lesions[0].volume_ml == pytest.approx(5 * 15 * 15 * 0.5 * 0.5 * 2.0 / 1000, abs=1e-3)
    assert lesions[0].mean_hu == pytest.approx(100.0)
    assert not lesions[0].touches_scan_edge


def test_lesion_cut_by_first_slice_flagged_and_measured():
    labels = np.ones((10, 40, 40), dtype=np.uint8)
    labels[0:3, 10:20, 10:20] = 2
    lesions = measure_lesions(labels_image(labels), labels_image(labels))
    assert lesions[0].touches_scan_edge
    assert lesions[0].volume_ml > 0


def test_csv_has_one_row_per_lesion():
    labels = np.ones((10, 40, 40), dtype=np.uint8)
    labels[3:6, 10:20, 10:20] = 2
    text = lesions_csv(measure_lesions(labels_image(labels), labels_image(labels)))
    rows = text.splitlines()
    assert len(rows) == 2
    assert rows[1].split(",")[0] == "1"


def brute_force_diameters_mm(cross_section: np.ndarray, spacing_yx_mm) -> tuple[float, float]:
    """Return the maximum distance over all pixel corners and the extent across it, without a hull."""
    rows, columns = np.nonzero(cross_section)
    points = np.array(
        [
            ((r + dy) * spacing_yx_mm[0], (c + dx) * spacing_yx_mm[1])
            for r, c in zip(rows, columns, strict=True)
            for dy in (-0.5, 0.5)
            for dx in (-0.5, 0.5)
        ]
    )
    distances = np.sqrt(((points[:, None] - points[None]) ** 2).sum(axis=-1))
    first, second = np.unravel_index(int(distances.argmax()), distances.shape)
    longest = float(distances[first, second])
    axis = (points[second] - points[first]) / longest
    across = points @ np.array([-axis[1], axis[0]])
    return longest, float(across.max() - across.min())


@pytest.mark.parametrize("seed", range(5))
def test_diameters_match_all_pixel_corners(seed):
    rng = np.random.default_rng(seed)
    blob = ndimage.gaussian_filter(rng.normal(size=(1, 24, 24)), 3)
    components, _ = ndimage.label(blob > np.percentile(blob, 80))
    # The component around the blob's peak: an irregular, sometimes concave lesion.
    lesion = components == components[np.unravel_index(blob.argmax(), blob.shape)]

    longest, across = axial_diameters_mm(lesion, (0.8, 0.7))

    expected_longest, _ = brute_force_diameters_mm(lesion[0], (0.8, 0.7))
    assert longest == pytest.approx(expected_longest)
    assert 0 < across <= longest


@pytest.mark.parametrize("seed", range(6))
def test_axial_diameters_equal_the_best_slice(seed):
    rng = np.random.default_rng(seed)
    lesion = ndimage.gaussian_filter(rng.normal(size=(9, 24, 28)), 1.5) > 0.1
    lesion[4] = False
    lesion[6:8, 3:9, 3:9] = True  # two equal slices
    spacing_yx_mm = (0.7, 0.9)

    best = (0.0, 0.0)
    for z in range(len(lesion)):
        diameters = axial_diameters_mm(lesion[z : z + 1], spacing_yx_mm)
        if diameters[0] > best[0]:
            best = diameters

    assert axial_diameters_mm(lesion, spacing_yx_mm) == best
