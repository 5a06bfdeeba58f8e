"""Multi-scale Hessian blob enhancement in physical units.

For each scale sigma (mm) the volume is smoothed with a Gaussian and its six second derivatives
are taken per mm squared, then multiplied by sigma**2 so responses at different scales compare
(Lindeberg's scale normalisation). The eigenvalues of the 3 x 3 Hessian come from the closed form
for symmetric matrices, and Li's dot-enhancement measure (Li, Sone and Doi, Med. Phys. 30(8),
2003) turns them into a blob response:

* all three eigenvalues positive (a dark blob, e.g. a hypodense tumour): ``+ l_min**2 / l_max``;
* all three negative (a bright blob, e.g. an arterial-phase HCC): ``- l_min**2 / l_max`` with the
  magnitudes ordered instead of the values;
* mixed signs (tubes, sheets, edges): 0.

Across scales the response with the largest magnitude wins, keeping its sign.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

# Second-derivative orders (z, y, x) of the six distinct Hessian entries, in the order
# Hzz, Hyy, Hxx, Hzy, Hzx, Hyx.
_HESSIAN_ORDERS = ((2, 0, 0), (0, 2, 0), (0, 0, 2), (1, 1, 0), (1, 0, 1), (0, 1, 1))


def hessian_entries(volume: np.ndarray, spacing_zyx_mm: Sequence[float], sigma_mm: float) -> list[np.ndarray]:
    """Compute the six scale-normalised second derivatives of a Gaussian-smoothed volume.

    Parameters
    ----------
    volume : ndarray of shape (Z, Y, X), float32
        Intensities (HU or normalised).
    spacing_zyx_mm : sequence of 3 floats
        Voxel spacing in mm.
    sigma_mm : float
        Gaussian standard deviation in mm.

    Returns
    -------
    list of 6 ndarrays of shape (Z, Y, X), float32
        ``sigma_mm**2`` times Hzz, Hyy, Hxx, Hzy, Hzx, Hyx, each in intensity per mm squared.
    """
    spacing = np.asarray(spacing_zyx_mm, dtype=np.float64)
    sigma_vox = sigma_mm / spacing

    # Separable passes are shared: the z pass of order k feeds every entry that starts with k.
    after_z = {order: _smooth_along(volume, sigma_vox[0], axis=0, order=order) for order in (0, 1, 2)}
    after_zy: dict[tuple[int, int], np.ndarray] = {}
    for z_order, y_order, _ in _HESSIAN_ORDERS:
        if (z_order, y_order) not in after_zy:
            after_zy[z_order, y_order] = _smooth_along(after_z[z_order], sigma_vox[1], axis=1, order=y_order)
    del after_z

    entries = []
    for z_order, y_order, x_order in _HESSIAN_ORDERS:
        entry = ndimage.gaussian_filter1d(
            after_zy[z_order, y_order],
            sigma_vox[2],
            axis=2,
            order=x_order,
            mode="nearest",
            output=np.float32,
        )
        # Derivatives come per voxel step; divide by the steps to get per mm.
        per_mm2 = np.prod(spacing ** np.array((z_order, y_order, x_order)))
        entry *= np.float32(sigma_mm**2 / per_mm2)
        entries.append(entry)
    return entries


def gaussian_derivative_kernel(sigma_vox: float, order: int) -> np.ndarray:
    """Return correlation weights for a Gaussian derivative of order 0, 1 or 2.

    The sampled kernels are corrected so that they are exact on polynomials: order 0 sums to 1,
    order 1 returns slope 1 on a ramp, order 2 sums to 0 and returns 1 on ``t**2 / 2``. Truncated
    Gaussian derivatives without the correction give a non-zero second derivative of a constant.

    Parameters
    ----------
    sigma_vox : float
        Standard deviation in voxels, > 0.
    order : int
        Derivative order, 0 to 2.

    Returns
    -------
    ndarray of shape (2 * radius + 1,), float64
        Weights for ``scipy.ndimage.correlate1d``; the radius is 4 standard deviations.
    """
    radius = max(1, int(4.0 * sigma_vox + 0.5))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    gaussian = np.exp(-0.5 * (t / sigma_vox) ** 2)
    gaussian /= gaussian.sum()
    if order == 0:
        return gaussian
    if order == 1:
        weights = t * gaussian
        return weights / np.sum(t * weights)
    if order == 2:
        weights = (t**2 / sigma_vox**4 - 1 / sigma_vox**2) * gaussian
        weights -= gaussian * weights.sum()
        return weights / np.sum(t**2 * weights / 2)
    raise ValueError(f"derivative order must be 0, 1 or 2, got {order}")


def _smooth_along(volume: np.ndarray, sigma_vox: float, *, axis: int, order: int) -> np.ndarray:
    weights = gaussian_derivative_kernel(sigma_vox, order)
    return ndimage.correlate1d(volume, weights, axis=axis, mode="nearest", output=np.float32)


def symmetric_eigenvalues(
    hzz: np.ndarray,
    hyy: np.ndarray,
    hxx: np.ndarray,
    hzy: np.ndarray,
    hzx: np.ndarray,
    hyx: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compute the eigenvalues of symmetric 3 x 3 matrices given per voxel, in closed form.

    Uses the trigonometric solution of the characteristic cubic (Smith, Comm. ACM 4(4), 1961).

    Parameters
    ----------
    hzz, hyy, hxx, hzy, hzx, hyx : ndarrays of one shape, float32
        The six distinct entries of each matrix.

    Returns
    -------
    tuple of 3 ndarrays, float32
        Eigenvalues in decreasing order of value: ``largest >= middle >= smallest``.
    """
    mean = (hzz + hyy + hxx) / np.float32(3)
    off_diagonal = hzy * hzy + hzx * hzx + hyx * hyx
    dz, dy, dx = hzz - mean, hyy - mean, hxx - mean
    spread = np.sqrt((dz * dz + dy * dy + dx * dx + 2 * off_diagonal) / np.float32(6))

    # With spread == 0 the matrix is a multiple of the identity and all eigenvalues equal mean.
    safe = np.where(spread > 0, spread, np.float32(1))
    bz, by, bx = dz / safe, dy / safe, dx / safe
    czy, czx, cyx = hzy / safe, hzx / safe, hyx / safe
    half_det = (
        bz * (by * bx - cyx * cyx) - czy * (czy * bx - cyx * czx) + czx * (czy * cyx - by * czx)
    ) / np.float32(2)
    angle = np.arccos(np.clip(half_det, -1, 1)) / np.float32(3)

    largest = mean + 2 * spread * np.cos(angle)
    smallest = mean + 2 * spread * np.cos(angle + np.float32(2 * np.pi / 3))
    middle = 3 * mean - largest - smallest
    return largest.astype(np.float32), middle.astype(np.float32), smallest.astype(np.float32)


def blob_response(largest: np.ndarray, smallest: np.ndarray, middle: np.ndarray) -> np.ndarray:
    """Compute Li's signed dot-enhancement measure from eigenvalues.

    Parameters
    ----------
    largest, smallest, middle : ndarrays of one shape, float32
        Eigenvalues per voxel, ``largest >= middle >= smallest``.

    Returns
    -------
    ndarray, float32
        Positive for dark blobs, negative for bright blobs, 0 elsewhere; in the units of the
        eigenvalues.
    """
    tiny = np.float32(1e-12)
    dark = (smallest > 0) & (middle > 0)
    bright = (largest < 0) & (middle < 0)
    dark_value = smallest * smallest / np.maximum(largest, tiny)
    bright_value = -(largest * largest) / np.maximum(-smallest, tiny)
    response = np.where(dark, dark_value, np.float32(0))
    return np.where(bright, bright_value, response).astype(np.float32)


def multiscale_blob_response(
    volume: np.ndarray, spacing_zyx_mm: Sequence[float], scales_mm: Sequence[float]
) -> np.ndarray:
    """Enhance blobs over several scales and keep the strongest response per voxel.

    Parameters
    ----------
    volume : ndarray of shape (Z, Y, X)
        Intensities; converted to float32.
    spacing_zyx_mm : sequence of 3 floats
        Voxel spacing in mm.
    scales_mm : sequence of floats
        Gaussian standard deviations in mm.

    Returns
    -------
    ndarray of shape (Z, Y, X), float32
        Signed blob response (see the module docstring), in intensity units because of the
        sigma**2 normalisation.
    """
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D (z, y, x), got shape {volume.shape}")
    volume = np.asarray(volume, dtype=np.float32)

    best = np.zeros(volume.shape, dtype=np.float32)
    for sigma_mm in scales_mm:
        largest, middle, smallest = symmetric_eigenvalues(*hessian_entries(volume, spacing_zyx_mm, sigma_mm))
        response = blob_response(largest, smallest, middle)
        stronger = np.abs(response) > np.abs(best)
        best[stronger] = response[stronger]
        logger.debug("Hessian scale %.1f mm done on %s voxels", sigma_mm, volume.shape)
    return best
