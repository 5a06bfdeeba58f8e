"""Checks that a scan looks like abdominal CT in HU and that its anatomy agrees with its header.

None of these checks stops a run: each returns warnings for the log and the report. A header
that contradicts the pixels (a flipped axis, a fake spacing, values that are not HU) makes the
result wrong in ways no later stage can see, so it must never pass silently.
"""

from __future__ import annotations

import logging

import numpy as np
import SimpleITK as sitk

from mhp_edge.preprocess import image_spacing_zyx_mm

logger = logging.getLogger(__name__)

# Ranges of clinical abdominal CT.
IN_PLANE_SPACING_MM = (0.3, 1.5)
SLICE_SPACING_MM = (0.5, 7.0)
LIVER_VOLUME_ML = (600.0, 4000.0)

# Voxels this far below water are air; every CT of the abdomen has some around the body.
_AIR_BELOW_HU = -500.0
_BONE_ABOVE_HU = 250.0
_BODY_ABOVE_HU = -300.0


def spacing_warnings(scan: sitk.Image) -> list[str]:
    """Return warnings for voxel spacings outside the ranges of abdominal CT."""
    z_mm, y_mm, x_mm = image_spacing_zyx_mm(scan)
    warnings = []
    low, high = IN_PLANE_SPACING_MM
    if not (low <= y_mm <= high and low <= x_mm <= high):
        warnings.append(
            f"Spacing suspicious: in-plane spacing {y_mm:.2f} x {x_mm:.2f} mm is outside "
            f"{low}-{high} mm, unusual for abdominal CT. Check the header; sizes and volumes in "
            "this report may be wrong."
        )
    if np.allclose((z_mm, y_mm, x_mm), 1.0, atol=1e-6):
        warnings.append(
            "Spacing suspicious: exactly 1 x 1 x 1 mm, a common placeholder written when the real "
            "spacing was lost. Check the header; sizes and volumes in this report may be wrong."
        )
    low, high = SLICE_SPACING_MM
    if not low <= z_mm <= high:
        warnings.append(
            f"Spacing suspicious: slice spacing {z_mm:.2f} mm is outside {low}-{high} mm, unusual "
            "for abdominal CT. Check the header; sizes and volumes in this report may be wrong."
        )
    return warnings


# Percentiles of a scan's intensities come from at most about this many voxels: every 4th row
# and column, and every n-th slice of a long scan.
_SAMPLE_MAX_VOX = 2_000_000


def intensity_sample(hu: np.ndarray) -> np.ndarray:
    """Return a strided view of a (Z, Y, X) scan with at most about ``_SAMPLE_MAX_VOX`` voxels."""
    in_plane = hu[:, ::4, ::4]
    slice_vox = max(1, in_plane.shape[1] * in_plane.shape[2])
    step = max(1, int(np.ceil(in_plane.shape[0] * slice_vox / _SAMPLE_MAX_VOX)))
    return in_plane[::step]


def intensity_percentiles(hu: np.ndarray) -> tuple[float, float] | None:
    """Return the 1st and 99th percentiles of a scan's ``intensity_sample``, None when it has no voxels.

    Parameters
    ----------
    hu : ndarray of shape (Z, Y, X)
        The scan after clean-up (non-finite values already replaced).
    """
    sample = intensity_sample(hu)
    if sample.size == 0:
        return None
    low, high = np.percentile(sample, [1, 99])
    return float(low), float(high)


def label_map_values(hu: np.ndarray, *, max_values: int = 16) -> np.ndarray | None:
    """Return the distinct values of a scan that looks like a label mask, else None.

    A label mask has a few small non-negative integers (0 background, 1 liver, 2 tumour, ...).
    A CT has thousands of values from about -1000 HU, and a CT stored without its rescale still
    spans hundreds of raw values. Only the ``intensity_sample`` is read.

    Parameters
    ----------
    hu : ndarray of shape (Z, Y, X)
        The scan after clean-up (non-finite values already replaced).
    max_values : int
        Largest number of distinct values that a label mask is taken to have.
    """
    sample = intensity_sample(hu)
    if sample.size == 0:
        return None
    low, high = float(sample.min()), float(sample.max())
    if low < 0 or high > 255 or high - low < 1.0:
        return None
    values = np.unique(sample)
    if values.size > max_values or not np.array_equal(values, np.round(values)):
        return None
    return values


def is_nearly_constant(percentiles: tuple[float, float] | None) -> bool:
    """Return True when a scan's 1st and 99th percentiles are less than 1 HU apart or it has no voxels.

    ``percentiles`` comes from ``intensity_percentiles``.
    """
    return percentiles is None or percentiles[1] - percentiles[0] < 1.0


def intensity_warnings(percentiles: tuple[float, float] | None) -> list[str]:
    """Return warnings when a scan's 1st and 99th percentiles do not look like CT in HU.

    ``percentiles`` comes from ``intensity_percentiles``.
    """
    if percentiles is None:
        return []
    low, high = percentiles
    if high - low < 1.0:
        return [f"The image is nearly constant ({low:.0f} to {high:.0f}); there is nothing to segment."]
    if low > _AIR_BELOW_HU:
        return [
            f"Intensities do not look like CT in HU: the 1st percentile is {low:.0f}, but air "
            "around the body should be near -1000 HU. The image may be MR, or CT stored without "
            "its rescale slope and intercept; results are not meaningful."
        ]
    return []


def anatomy_warnings(hu: np.ndarray, liver: np.ndarray, spacing_zyx_mm: tuple[float, ...]) -> list[str]:
    """Return warnings when the anatomy contradicts the header's orientation.

    In LPS orientation the spine lies posterior to the body's centre and the liver on the
    patient's right (lower x). A flipped pixel array with an unchanged header breaks one of these.

    Parameters
    ----------
    hu : ndarray of shape (Z, Y, X), float32
        The scan in LPS orientation.
    liver : ndarray of shape (Z, Y, X), bool
        The liver found on that grid (may be empty).
    spacing_zyx_mm : tuple of 3 floats
    """
    warnings = []
    step = 4
    # Slices are sampled about every 5 mm, so the cost follows the scan's length in mm, not its
    # number of slices.
    z_step = max(1, int(5.0 / spacing_zyx_mm[0]))
    sample = hu[::z_step, ::step, ::step]
    body = sample > _BODY_ABOVE_HU
    if np.count_nonzero(body) < 100:
        return warnings

    body_y, body_x = _mean_index(body, axis=1), _mean_index(body, axis=2)
    spine_band_vox = 30.0 / (spacing_zyx_mm[2] * step)
    bone = (sample > _BONE_ABOVE_HU) & body
    columns = np.arange(sample.shape[2])[np.newaxis, np.newaxis, :]
    bone &= np.abs(columns - body_x) < spine_band_vox
    if np.count_nonzero(bone) >= 20:
        if _mean_index(bone, axis=1) < body_y:
            warnings.append(
                "Anatomy contradicts the header: the spine lies anterior to the body's centre. "
                "The image may be flipped front to back, or the patient was not supine; check "
                "the orientation before using the result."
            )

    liver_sample = liver[::z_step, ::step, ::step]
    if liver_sample.any():
        if _mean_index(liver_sample, axis=2) > body_x:
            warnings.append(
                "Anatomy contradicts the header: the liver lies on the patient's left. The image "
                "may be flipped left to right; check the orientation before using the result."
            )
    return warnings


def _mean_index(mask: np.ndarray, axis: int) -> float:
    """Return the mean index along ``axis`` of a non-empty 3D mask's True voxels."""
    other = tuple(a for a in range(mask.ndim) if a != axis)
    counts = np.count_nonzero(mask, axis=other)
    return float(np.dot(counts, np.arange(counts.size)) / counts.sum())


def liver_volume_warnings(liver_ml: float, *, touches_edge: bool) -> list[str]:
    """Return warnings for a liver volume outside the adult range or a liver cut by the scan's edge."""
    low, high = LIVER_VOLUME_ML
    if liver_ml <= 0:
        return []
    if low <= liver_ml <= high:
        if not touches_edge:
            return []
        return [
            f"The liver ({liver_ml:.0f} mL) reaches the edge of the scan, so part of it may be outside "
            "the field of view and its volume is a lower bound."
        ]
    reason = " It reaches the edge of the scan, so part of it may be outside." if touches_edge else ""
    return [
        f"Liver volume {liver_ml:.0f} mL is outside the usual adult range {low:.0f}-{high:.0f} mL."
        f"{reason} Check the liver outline and the voxel spacing."
    ]
