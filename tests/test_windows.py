"""Sliding windows: starts, weights and coverage for awkward volume sizes."""

import itertools

import numpy as np
import pytest

from mhp_edge.windows import gaussian_weights, sliding_window_probability, tile_shape, window_starts
from model_factory import make_metadata

PATCH = (4, 6, 8)
OVERLAPS = (0.0, 0.25, 0.5, 0.75)


@pytest.mark.parametrize("overlap", OVERLAPS)
@pytest.mark.parametrize("patch", [1, 5, 64])
def test_window_starts_cover_axis(patch, overlap):
    for size in (patch, patch + 1, 2 * patch + 3, 5 * patch):
        starts = window_starts(size, patch, overlap)
        covered = np.zeros(size, dtype=int)
        for start in starts:
            covered[start : start + patch] += 1
        assert starts[0] == 0
        assert starts[-1] == size - patch
        assert covered.min() >= 1
        assert starts == sorted(set(starts))


def test_window_starts_rejects_bad_overlap():
    with pytest.raises(ValueError, match="overlap"):
        window_starts(10, 4, 1.0)


def test_gaussian_weights_positive():
    weights = gaussian_weights((1, 5, 64))
    assert weights.dtype == np.float32
    assert weights.min() > 0
    assert weights.max() == pytest.approx(1.0)


def _sizes(patch):
    return sorted({1, patch - 1, patch, patch + 1, 2 * patch + 3} - {0})


@pytest.mark.parametrize("overlap", [0.0, 0.5])
def test_every_voxel_covered_for_awkward_sizes(overlap):
    calls = []

    def predict(batches):
        calls.append(batches[0].shape)
        return np.ones((batches[0].shape[0], 1, *PATCH), dtype=np.float32)

    for shape in itertools.product(*(_sizes(p) for p in PATCH)):
        volume = np.zeros((1, *shape), dtype=np.float32)
        probability = sliding_window_probability(
            [volume], [0.0], predict, patch_shape_vox=PATCH, overlap=overlap, batch_size=3
        )
        assert probability.shape == shape
        assert np.isfinite(probability).all()
        # Logit 1 everywhere blends to sigmoid(1) everywhere only if every voxel was covered.
        assert np.allclose(probability, 1 / (1 + np.exp(-1)))
    assert all(call[2:] == PATCH for call in calls)


def test_blending_reproduces_smooth_function():
    # A model that returns its input as logits must give back sigmoid(input): seams would show.
    zz, yy, xx = np.meshgrid(*(np.linspace(-2, 2, n) for n in (11, 17, 21)), indexing="ij")
    volume = (zz + yy * xx).astype(np.float32)[np.newaxis]

    def predict(batches):
        return batches[0]

    probability = sliding_window_probability([volume], [0.0], predict, patch_shape_vox=PATCH, overlap=0.5)
    assert np.allclose(probability, 1 / (1 + np.exp(-volume[0])), atol=1e-5)


def test_region_mask_skips_empty_windows():
    seen = []

    def predict(batches):
        seen.append(len(batches[0]))
        return np.full((len(batches[0]), 1, *PATCH), 3.0, dtype=np.float32)

    volume = np.zeros((1, 16, 24, 32), dtype=np.float32)
    region = np.zeros((16, 24, 32), dtype=bool)
    region[1, 1, 1] = True
    probability = sliding_window_probability(
        [volume], [0.0], predict, patch_shape_vox=PATCH, overlap=0.0, region_mask=region
    )
    assert sum(seen) == 1
    assert probability[1, 1, 1] > 0.9
    assert probability[-1, -1, -1] == 0.0


@pytest.mark.parametrize(
    ("volume", "expected"),
    [
        ((52, 98, 98), (56, 104, 104)),  # fits: one tile, rounded up to multiples of 8
        ((10, 20, 20), (32, 96, 96)),  # smaller than the training patch: the patch
        ((300, 250, 98), (96, 144, 104)),  # longer than the largest tile: even overlapping tiles
        ((100, 98, 98), (64, 104, 104)),  # just over: two tiles of 64, not two of 96
    ],
)
def test_tile_shape_bounds(volume, expected):
    tile = tile_shape(volume, (32, 96, 96), (96, 192, 192), (8, 8, 8), 0.25)
    assert tile == expected
    for size, length, largest in zip(volume, tile, (96, 192, 192), strict=True):
        if size > length:
            # As many windows as the largest tile would need, and they cover the axis.
            starts = window_starts(size, length, 0.25)
            assert len(starts) == len(window_starts(size, largest, 0.25))
            assert starts[-1] + length == size


def test_tile_shape_without_tiles():
    assert tile_shape((52, 98, 98), (32, 96, 96), None, (1, 1, 1), 0.25) == (32, 96, 96)


def test_sliding_window_single_tile():
    # A tile covering the volume runs the model once, on the volume padded to the tile shape.
    volume = np.random.default_rng(0).normal(size=(1, 13, 21, 30)).astype(np.float32)
    tile = tile_shape(volume.shape[1:], (8, 8, 8), (16, 32, 32), (8, 8, 8), 0.25)
    calls = []

    def predict(batches):
        calls.append(batches[0].shape)
        return batches[0] * 2

    probability = sliding_window_probability([volume], [0.0], predict, patch_shape_vox=tile, overlap=0.25)
    assert calls == [(1, 1, 16, 24, 32)]
    np.testing.assert_allclose(probability, 1 / (1 + np.exp(-2 * volume[0])), atol=1e-6)


def test_window_shape_follows_tile_settings():
    # The ircadb_01 tumour crop: 70 slices exceed the 64-slice tile, so two tiles of 40 cover them.
    tiled = make_metadata("tumour", (32, 96, 96), tile_max_vox=(64, 192, 192), tile_multiple_vox=(4, 8, 8))
    assert tiled.window_shape((70, 141, 173)) == (40, 144, 176)


def test_window_shape_without_tiles_is_patch():
    assert make_metadata("tumour", (32, 96, 96)).window_shape((70, 141, 173)) == (32, 96, 96)
