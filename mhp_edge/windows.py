"""Sliding-window inference over a volume with a fixed patch shape and Gaussian blending.

Window starts are spaced by ``patch * (1 - overlap)`` and the last window sits flush with the
far edge, so every voxel is covered. Volumes smaller than a patch are padded up to it and the
result is cropped back. Every window has the same shape, so the ONNX session runs one plan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)

# Weights fall to this fraction of the centre value at the patch corners and never below, so no
# voxel gets a zero total weight.
_MIN_WEIGHT = 1e-3

PredictBatch = Callable[[list[np.ndarray]], np.ndarray]
"""Function from a list of input batches, each (N, C, Z, Y, X) float32, to logits (N, 1, Z, Y, X)."""


def window_starts(size_vox: int, patch_vox: int, overlap: float) -> list[int]:
    """Return the start indices of windows along one axis.

    Parameters
    ----------
    size_vox : int
        Length of the (padded) axis, at least ``patch_vox``.
    patch_vox : int
        Window length.
    overlap : float
        Fraction of the window shared with its neighbour, in [0, 1).

    Returns
    -------
    list of int
        Increasing starts; the first is 0 and the last is ``size_vox - patch_vox``.
    """
    if patch_vox < 1 or size_vox < patch_vox:
        raise ValueError(f"need 1 <= patch_vox <= size_vox, got patch {patch_vox}, size {size_vox}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")

    step = max(1, int(round(patch_vox * (1 - overlap))))
    last = size_vox - patch_vox
    count = int(np.ceil(last / step)) + 1
    if count == 1:
        return [0]
    # Spread the windows evenly so the last one is flush with the edge.
    return [int(round(i * last / (count - 1))) for i in range(count)]


def tile_shape(
    volume_shape_vox: Sequence[int],
    patch_shape_vox: Sequence[int],
    tile_max_vox: Sequence[int] | None,
    tile_multiple_vox: Sequence[int],
    overlap: float,
) -> tuple[int, int, int]:
    """Return the window shape for a fully convolutional model: the volume rounded up, within bounds.

    Each axis is the volume's length rounded up to a multiple of ``tile_multiple_vox``, at least
    the patch the model was trained on. A volume that fits gets one window, so no voxel is
    computed twice. Along an axis longer than ``tile_max_vox``, the tile is the shortest multiple
    that covers the axis with as many overlapping windows as the largest tile would need, so
    100 voxels take two tiles of 64, not two of 96.

    Parameters
    ----------
    volume_shape_vox : sequence of 3 ints
        (z, y, x) shape of the volume.
    patch_shape_vox : sequence of 3 ints
        (z, y, x) training patch, a multiple of ``tile_multiple_vox``.
    tile_max_vox : sequence of 3 ints, or None
        Largest (z, y, x) window, a multiple of ``tile_multiple_vox``.
    tile_multiple_vox : sequence of 3 ints
        The network's total downsampling per axis.
    overlap : float
        Fraction of a window shared with its neighbour, in [0, 1).

    Returns
    -------
    tuple of 3 ints
    """
    if tile_max_vox is None:
        return tuple(int(p) for p in patch_shape_vox)
    shape = []
    for size, patch, largest, multiple in zip(
        volume_shape_vox, patch_shape_vox, tile_max_vox, tile_multiple_vox, strict=True
    ):
        length = int(size)
        if length > largest:
            count = len(window_starts(length, int(largest), overlap))
            length = int(np.ceil(length / (1 + (count - 1) * (1 - overlap))))
        rounded = -(-length // multiple) * multiple
        shape.append(max(int(patch), min(int(largest), rounded)))
    return tuple(shape)


def gaussian_weights(patch_shape_vox: Sequence[int], sigma_fraction: float = 0.125) -> np.ndarray:
    """Return a blending weight map that peaks at the patch centre.

    Parameters
    ----------
    patch_shape_vox : sequence of 3 ints
        (z, y, x) patch shape.
    sigma_fraction : float
        Gaussian standard deviation as a fraction of the patch length per axis.

    Returns
    -------
    ndarray of shape patch_shape_vox, float32
        Weights in [_MIN_WEIGHT, 1], 1 at the centre.
    """
    weights = np.ones(tuple(patch_shape_vox), dtype=np.float64)
    for axis, length in enumerate(patch_shape_vox):
        centre = (length - 1) / 2
        sigma = max(length * sigma_fraction, 1e-6)
        profile = np.exp(-0.5 * ((np.arange(length) - centre) / sigma) ** 2)
        shape = [1, 1, 1]
        shape[axis] = length
        weights = weights * profile.reshape(shape)
    weights /= weights.max()
    return np.maximum(weights, _MIN_WEIGHT).astype(np.float32)


def pad_to_patch(
    volume: np.ndarray, patch_shape_vox: Sequence[int], pad_value: float
) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Pad the trailing side of each axis of a (C, Z, Y, X) array up to at least the patch shape.

    Returns
    -------
    padded : ndarray
        The padded array, or the input itself when no axis is short.
    crop : tuple of slices
        Slices that take the original (Z, Y, X) region back out of the padded array.
    """
    spatial = volume.shape[1:]
    widths = [(0, 0)] + [(0, max(0, p - s)) for s, p in zip(spatial, patch_shape_vox, strict=True)]
    crop = tuple(slice(0, s) for s in spatial)
    if all(after == 0 for _, after in widths):
        return volume, crop
    return np.pad(volume, widths, mode="constant", constant_values=pad_value), crop


def sliding_window_probability(
    inputs: Sequence[np.ndarray],
    pad_values: Sequence[float],
    predict: PredictBatch,
    *,
    patch_shape_vox: Sequence[int],
    overlap: float,
    batch_size: int = 2,
    region_mask: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Run a patch model over a volume and blend the window outputs into a probability map.

    Parameters
    ----------
    inputs : sequence of ndarrays of shape (C, Z, Y, X), float32
        One array per model input, all with the same spatial shape.
    pad_values : sequence of float
        Value each input is padded with where the volume is smaller than a patch.
    predict : callable
        Maps a list of batches (one per input, each (N, C, pz, py, px)) to logits (N, 1, pz, py, px).
    patch_shape_vox : sequence of 3 ints
        (z, y, x) window shape.
    overlap : float
        Fraction of a window shared with its neighbour, in [0, 1).
    batch_size : int
        Windows per model call.
    region_mask : ndarray of shape (Z, Y, X), bool, optional
        Windows that contain no True voxel are skipped and their voxels get probability 0.
    progress : callable, optional
        Called as ``progress(done, total)`` after each batch.

    Returns
    -------
    ndarray of shape (Z, Y, X), float32
        Sigmoid probability, finite, in [0, 1].
    """
    spatial_shape = inputs[0].shape[1:]
    padded = []
    for volume, pad_value in zip(inputs, pad_values, strict=True):
        array, crop = pad_to_patch(volume, patch_shape_vox, pad_value)
        padded.append(array)
    padded_shape = padded[0].shape[1:]
    if region_mask is not None:
        region_mask, _ = pad_to_patch(region_mask[np.newaxis], patch_shape_vox, False)
        region_mask = region_mask[0]

    starts = [
        window_starts(size, patch, overlap) for size, patch in zip(padded_shape, patch_shape_vox, strict=True)
    ]
    windows = [
        tuple(slice(s, s + p) for s, p in zip((z, y, x), patch_shape_vox, strict=True))
        for z in starts[0]
        for y in starts[1]
        for x in starts[2]
    ]
    total_windows = len(windows)
    if region_mask is not None:
        windows = [w for w in windows if region_mask[w].any()]
    logger.info(
        "Sliding window: %d of %d patches of %s voxels over %s",
        len(windows),
        total_windows,
        tuple(patch_shape_vox),
        tuple(spatial_shape),
    )

    weights = gaussian_weights(patch_shape_vox)
    logit_sum = np.zeros(padded_shape, dtype=np.float32)
    weight_sum = np.zeros(padded_shape, dtype=np.float32)
    for first in range(0, len(windows), batch_size):
        batch_windows = windows[first : first + batch_size]
        batches = [
            np.stack([array[(slice(None), *w)] for w in batch_windows]).astype(np.float32) for array in padded
        ]
        logits = predict(batches)
        for window, window_logits in zip(batch_windows, logits, strict=True):
            logit_sum[window] += weights * window_logits[0]
            weight_sum[window] += weights
        if progress is not None:
            progress(min(first + batch_size, len(windows)), len(windows))

    # Blending is done on logits; voxels no window visited (skipped windows) get probability 0.
    visited = weight_sum > 0
    probability = np.zeros(padded_shape, dtype=np.float32)
    blended = logit_sum[visited] / weight_sum[visited]
    probability[visited] = 1.0 / (1.0 + np.exp(-np.clip(blended, -60, 60)))
    probability = probability[crop]

    if not np.isfinite(probability).all():
        raise FloatingPointError("model output contains non-finite values after blending")
    return probability
