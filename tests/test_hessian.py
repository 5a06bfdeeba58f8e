"""Multi-scale Hessian blob enhancement: eigenvalues, scale selection, symmetry, units."""

import threading
import time

import numpy as np
import pytest
from scipy import ndimage
from threadpoolctl import threadpool_info

from mhp_edge.hessian import (
    apply_along,
    axis_operators,
    gaussian_derivative_kernel,
    gaussian_smooth,
    multiscale_blob_response,
    symmetric_eigenvalues,
)

SCALES_MM = (2.0, 4.0, 8.0)

# The subsampled (pyramid) response may differ from the full-resolution one by this fraction of
# the response's 99th percentile, at the 99th percentile of voxels.
PYRAMID_TOLERANCE = 0.1


def gaussian_blob(std_mm: float, spacing_zyx_mm=(1.0, 1.0, 1.0), half_extent_mm=40.0, amplitude=-100.0):
    """Return a Gaussian blob centred in a cube; negative amplitude gives a dark blob."""
    axes = [np.arange(-half_extent_mm, half_extent_mm + 1e-6, step) for step in spacing_zyx_mm]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return (amplitude * np.exp(-(x**2 + y**2 + z**2) / (2 * std_mm**2))).astype(np.float32)


def centre_response(volume, spacing_zyx_mm, sigma_mm):
    response = multiscale_blob_response(volume, spacing_zyx_mm, [sigma_mm])
    return response[tuple(n // 2 for n in volume.shape)]


def test_eigenvalues_match_numpy():
    rng = np.random.default_rng(7)
    matrices = rng.normal(size=(2000, 3, 3)).astype(np.float32)
    matrices = matrices + matrices.transpose(0, 2, 1)
    largest, middle, smallest = symmetric_eigenvalues(
        matrices[:, 0, 0],
        matrices[:, 1, 1],
        matrices[:, 2, 2],
        matrices[:, 0, 1],
        matrices[:, 0, 2],
        matrices[:, 1, 2],
    )
    expected = np.linalg.eigvalsh(matrices.astype(np.float64))
    assert np.allclose(smallest, expected[:, 0], atol=1e-4)
    assert np.allclose(middle, expected[:, 1], atol=1e-4)
    assert np.allclose(largest, expected[:, 2], atol=1e-4)


def test_eigenvalues_of_identity_multiple():
    ones = np.full(4, 3.0, dtype=np.float32)
    zeros = np.zeros(4, dtype=np.float32)
    largest, middle, smallest = symmetric_eigenvalues(ones, ones, ones, zeros, zeros, zeros)
    for eigenvalues in (largest, middle, smallest):
        assert np.allclose(eigenvalues, 3.0)


@pytest.mark.parametrize("sigma_mm", SCALES_MM)
def test_blob_peaks_at_matching_scale(sigma_mm):
    # For a Gaussian blob of standard deviation s, the sigma**2-normalised second derivative at its
    # centre peaks at sigma = s * sqrt(2 / 3), so this blob should respond most at sigma_mm.
    blob = gaussian_blob(std_mm=sigma_mm * np.sqrt(1.5))
    responses = [centre_response(blob, (1.0, 1.0, 1.0), scale) for scale in SCALES_MM]
    assert SCALES_MM[int(np.argmax(responses))] == sigma_mm


def test_dark_blob_positive_bright_blob_negative():
    dark = centre_response(gaussian_blob(5.0, amplitude=-100.0), (1.0, 1.0, 1.0), 4.0)
    bright = centre_response(gaussian_blob(5.0, amplitude=100.0), (1.0, 1.0, 1.0), 4.0)
    assert dark > 0
    assert bright < 0
    assert np.isclose(dark, -bright, rtol=1e-4)


def test_flat_image_gives_zero():
    flat = np.full((20, 30, 30), 60.0, dtype=np.float32)
    response = multiscale_blob_response(flat, (2.5, 1.0, 1.0), SCALES_MM)
    assert response.dtype == np.float32
    assert np.abs(response).max() < 1e-4


def blobby_volume(seed: int, shape=(40, 64, 72)) -> np.ndarray:
    """Smoothed noise plus dark and bright blobs of several sizes, in HU-like units."""
    rng = np.random.default_rng(seed)
    volume = ndimage.gaussian_filter(rng.normal(0, 400, size=shape), 2.0) + 80
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    for _ in range(12):
        centre = rng.uniform(0, 1, 3) * shape
        radius = rng.uniform(2, 10)
        contrast = rng.choice([-60.0, 60.0])
        distance2 = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
        volume += contrast * np.exp(-distance2 / (2 * radius**2))
    return volume.astype(np.float32)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_flipping_axis_flips_response_exactly(axis):
    volume = blobby_volume(axis, shape=(24, 28, 32))
    response = multiscale_blob_response(volume, (2.0, 1.0, 1.5), SCALES_MM, pyramid=False)
    flipped = multiscale_blob_response(np.flip(volume, axis), (2.0, 1.0, 1.5), SCALES_MM, pyramid=False)
    assert np.allclose(np.flip(response, axis), flipped, atol=1e-3)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_flipping_axis_flips_pyramid_response(axis):
    # Subsampled grids start at index 0, so a flip moves them by up to one coarse voxel: the
    # responses agree to the pyramid's own tolerance, not exactly.
    volume = blobby_volume(axis)
    response = multiscale_blob_response(volume, (2.0, 1.0, 1.0), SCALES_MM)
    flipped = multiscale_blob_response(np.flip(volume, axis), (2.0, 1.0, 1.0), SCALES_MM)
    difference = np.abs(np.flip(response, axis) - flipped)
    assert np.percentile(difference, 99) < PYRAMID_TOLERANCE * np.percentile(np.abs(response), 99)


@pytest.mark.parametrize("min_sigma_vox", [4.0, 3.0])
def test_pyramid_close_to_float64_reference(min_sigma_vox):
    volume = blobby_volume(7)
    reference = multiscale_blob_response(volume.astype(np.float64), (2.0, 1.0, 1.0), SCALES_MM, pyramid=False)
    fast = multiscale_blob_response(volume, (2.0, 1.0, 1.0), SCALES_MM, pyramid_min_sigma_vox=min_sigma_vox)
    difference = np.abs(fast - reference)
    scale = np.percentile(np.abs(reference), 99)
    assert np.percentile(difference, 99) < PYRAMID_TOLERANCE * scale
    assert np.corrcoef(fast.ravel(), reference.ravel())[0, 1] > 0.98


def test_response_in_physical_units():
    # The same 6 mm blob sampled at 1 mm and at 2 x 1 x 1 mm gives about the same centre response,
    # because scales and derivatives are in millimetres.
    isotropic = centre_response(gaussian_blob(6.0, (1.0, 1.0, 1.0)), (1.0, 1.0, 1.0), 4.0)
    anisotropic = centre_response(gaussian_blob(6.0, (2.0, 1.0, 1.0)), (2.0, 1.0, 1.0), 4.0)
    assert np.isclose(isotropic, anisotropic, rtol=0.05)


def test_rejects_non_3d_volume():
    with pytest.raises(ValueError, match="must be 3D"):
        multiscale_blob_response(np.zeros((4, 4), dtype=np.float32), (1.0, 1.0, 1.0), SCALES_MM)


def test_threads_give_identical_response():
    rng = np.random.default_rng(7)
    volume = ndimage.gaussian_filter(rng.normal(size=(24, 48, 40)), 1.5).astype(np.float32) * 100

    single = multiscale_blob_response(volume, (2.5, 1.25, 1.25), (3.0, 6.0, 12.0), threads=1)
    several = multiscale_blob_response(volume, (2.5, 1.25, 1.25), (3.0, 6.0, 12.0), threads=3)

    np.testing.assert_array_equal(single, several)


@pytest.mark.parametrize("pyramid", [False, True])
def test_core_response_does_not_depend_on_the_cut(pyramid):
    # The response in a core region must be the same whether the volume around it was cut
    # tightly or generously, as long as the filters' context fits. This makes the tumour model's
    # Hessian input independent of where the liver's box ends.
    rng = np.random.default_rng(3)
    volume = ndimage.gaussian_filter(rng.normal(size=(70, 160, 170)), 2.0).astype(np.float32) * 300
    spacing_zyx_mm, scales_mm = (2.5, 1.25, 1.25), (3.0, 6.0, 12.0)
    core = (slice(25, 45), slice(60, 100), slice(64, 104))
    cut = (slice(3, 68), slice(7, 158), slice(10, 166))
    core_in_cut = tuple(slice(c.start - k.start, c.stop - k.start) for c, k in zip(core, cut, strict=True))

    whole = multiscale_blob_response(volume, spacing_zyx_mm, scales_mm, pyramid=pyramid)
    generous = multiscale_blob_response(volume, spacing_zyx_mm, scales_mm, core=core, pyramid=pyramid)
    tight = multiscale_blob_response(
        volume[cut], spacing_zyx_mm, scales_mm, core=core_in_cut, pyramid=pyramid
    )

    assert generous.shape == (20, 40, 40)
    np.testing.assert_array_equal(generous, tight)
    if not pyramid:
        # Without subsampling every voxel of the whole volume is computed the same way, up to
        # float32 rounding: the matrix products group the sums by the block a voxel falls in.
        # The eigenvalues' arccos magnifies that rounding where two eigenvalues nearly agree.
        np.testing.assert_allclose(generous, whole[core], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("slab_slices", "threads", "core_stop"), [(8, 1, 190), (8, 2, 200), (40, 1, 200)])
def test_slabs_agree_with_one_pass(slab_slices, threads, core_stop):
    # At 1 mm slices the 6 mm scale is subsampled along z by 2 (at least 3 voxels per sigma), so
    # slabs must keep its coarse grid. The core starts off that grid and may reach the last slice.
    rng = np.random.default_rng(5)
    volume = ndimage.gaussian_filter(rng.normal(size=(200, 40, 40)), 2.0).astype(np.float32) * 300
    spacing_zyx_mm, scales_mm = (1.0, 2.0, 2.0), (2.0, 6.0)
    core = (slice(5, core_stop), slice(0, 40), slice(0, 40))

    def response(slices: int) -> np.ndarray:
        return multiscale_blob_response(
            volume,
            spacing_zyx_mm,
            scales_mm,
            core=core,
            pyramid_min_sigma_vox=3.0,
            threads=threads,
            slab_slices=slices,
        )

    one_pass = response(1000)
    slabbed = response(slab_slices)

    # A coarse grid shifted by one voxel changes the response by percents of its 99th percentile.
    scale = np.percentile(np.abs(one_pass), 99)
    assert np.abs(slabbed - one_pass).max() <= 1e-3 * scale


def test_rejects_empty_slabs():
    with pytest.raises(ValueError, match="slab_slices"):
        multiscale_blob_response(
            np.zeros((4, 4, 4), dtype=np.float32), (1.0, 1.0, 1.0), SCALES_MM, slab_slices=0
        )


def test_core_without_context_differs_near_its_faces():
    # The same core computed with no context around it depends on the cut, so the check above can fail.
    rng = np.random.default_rng(3)
    volume = ndimage.gaussian_filter(rng.normal(size=(40, 80, 80)), 2.0).astype(np.float32) * 300
    core = (slice(10, 30), slice(20, 60), slice(20, 60))

    with_context = multiscale_blob_response(volume, (2.5, 1.25, 1.25), (3.0, 6.0, 12.0), core=core)
    alone = multiscale_blob_response(volume[core], (2.5, 1.25, 1.25), (3.0, 6.0, 12.0))

    assert np.abs(with_context - alone).max() > 0.1 * np.abs(with_context).max()


@pytest.mark.parametrize("core", [(slice(0, 0), slice(0, 4), slice(0, 4)), (slice(0, 4, 2),) * 3])
def test_rejects_empty_or_strided_core(core):
    with pytest.raises(ValueError, match="core must be non-empty"):
        multiscale_blob_response(np.zeros((4, 4, 4), dtype=np.float32), (1.0, 1.0, 1.0), SCALES_MM, core=core)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_axis_operator_equals_filter_steps(order):
    # The matrix must equal the steps it replaces, run one after another: blur by the factor,
    # keep every factor-th voxel, filter with the rest of the blur, interpolate back to the core.
    line = np.random.default_rng(order).normal(size=60)
    spacing_mm, sigma_mm, factor, core = 1.5, 9.0, 2, slice(10, 47)
    nearest = {"axis": 0, "mode": "nearest"}

    coarse = ndimage.correlate1d(line, gaussian_derivative_kernel(float(factor), 0), **nearest)[::factor]
    rest_vox = np.sqrt(sigma_mm**2 - (factor * spacing_mm) ** 2) / (factor * spacing_mm)
    derivative = ndimage.correlate1d(coarse, gaussian_derivative_kernel(rest_vox, order), **nearest)
    derivative /= (factor * spacing_mm) ** order
    fine = np.arange(core.start, core.stop)
    expected = np.interp(fine, np.arange(coarse.size) * factor, derivative)

    operator = axis_operators(line.size, core, spacing_mm, sigma_mm, factor).composed(order)
    np.testing.assert_allclose(operator @ line, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_apply_along_equals_dense_product(axis):
    # 140 output rows take several blocks, and each block reads only its band of columns.
    shape = [12, 14, 16]
    shape[axis] = 150
    volume = np.random.default_rng(axis).normal(size=shape).astype(np.float32)
    matrix = axis_operators(150, slice(5, 145), 1.0, 3.0, 1).derivatives[2]

    dense = np.moveaxis(np.tensordot(matrix, volume, axes=([1], [axis])), 0, axis)
    np.testing.assert_allclose(apply_along(matrix, volume, axis), dense, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["nearest", "reflect"])
@pytest.mark.parametrize("sigma_vox", [(0.0, 0.9, 2.5), (0.28, 0.0, 0.2)])
def test_gaussian_smooth_equals_scipy(mode, sigma_vox):
    # Sigmas below 0.3 voxel still blur, as scipy's do: a scan coarser than 3.3 mm in-plane gets
    # them from the liver boundary's 1 mm smoothing.
    volume = np.random.default_rng(3).normal(0.0, 50.0, size=(6, 90, 70)).astype(np.int16)

    expected = ndimage.gaussian_filter(volume.astype(np.float32), sigma_vox, mode=mode)

    np.testing.assert_allclose(gaussian_smooth(volume, sigma_vox, mode=mode), expected, atol=1e-3)


def test_rejects_non_finite_voxels():
    volume = np.zeros((8, 8, 8), dtype=np.float32)
    volume[4, 4, 4] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite voxels"):
        multiscale_blob_response(volume, (1.0, 1.0, 1.0), SCALES_MM)


def test_overlapping_stages_restore_blas_threads():
    # The BLAS limit is process-wide. A stage that starts while another runs and ends after it
    # must still leave the limit as it was before both.
    before = [entry["num_threads"] for entry in threadpool_info() if entry["user_api"] == "blas"]
    rng = np.random.default_rng(5)
    shorter, longer = (rng.normal(size=shape).astype(np.float32) for shape in ((24, 64, 64), (48, 128, 128)))
    spacing_zyx_mm, scales_mm = (2.5, 1.25, 1.25), (3.0, 6.0, 12.0)
    first = threading.Thread(target=multiscale_blob_response, args=(shorter, spacing_zyx_mm, scales_mm))
    second = threading.Thread(target=multiscale_blob_response, args=(longer, spacing_zyx_mm, scales_mm))

    first.start()
    time.sleep(0.02)
    second.start()
    first.join()
    second.join()

    after = [entry["num_threads"] for entry in threadpool_info() if entry["user_api"] == "blas"]
    assert after == before
