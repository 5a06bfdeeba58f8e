"""The pipeline on phantoms with small linear models: geometry, orientation and bad values."""

import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from export.contract import LIVER_BOUNDARY
from mhp_edge.errors import InputImageError
from mhp_edge.evaluate import dice
from mhp_edge.pipeline import (
    LIVER_MODEL_FILE,
    TUMOUR_MODEL_FILE,
    Segmenter,
    _label_volume,
    postprocess_tumour,
)
from model_factory import make_metadata, write_linear_model
from phantoms import LESION_HU, axis_aligned_directions, liver_phantom, reoriented


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    """Linear models: liver where HU > 0, tumour where HU > 200, at the phantom's spacing."""
    folder = tmp_path_factory.mktemp("models")
    write_linear_model(folder, LIVER_MODEL_FILE, make_metadata("liver", patch_shape_vox=(8, 16, 16)))
    tumour = make_metadata("tumour", patch_shape_vox=(8, 16, 16), hu_mean=200.0, hu_clip=(-250.0, 400.0))
    write_linear_model(folder, TUMOUR_MODEL_FILE, tumour)
    return Segmenter(folder, threads=1)


def test_phantom_labels_and_geometry(segmenter):
    phantom = liver_phantom()
    result = segmenter.segment(phantom)
    mask = sitk.GetArrayFromImage(result.mask)
    hu = sitk.GetArrayFromImage(phantom)

    assert result.mask.GetPixelID() == sitk.sitkUInt8
    assert result.mask.GetSize() == phantom.GetSize()
    assert result.mask.GetSpacing() == phantom.GetSpacing()
    assert result.mask.GetOrigin() == phantom.GetOrigin()
    assert result.mask.GetDirection() == phantom.GetDirection()
    assert set(np.unique(mask)) == {0, 1, 2}
    assert (mask[hu == LESION_HU] == 2).mean() > 0.9
    assert len(result.lesions) == 1
    assert result.liver_source == "model"


def test_all_48_orientations_give_one_physical_mask(segmenter):
    phantom = liver_phantom()
    reference = segmenter.segment(phantom).mask
    for direction in axis_aligned_directions():
        image = reoriented(phantom, direction)
        mask = segmenter.segment(image).mask
        assert mask.GetDirection() == image.GetDirection()
        assert mask.GetOrigin() == image.GetOrigin()
        back = sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(reference)), direction


def test_oblique_direction_keeps_physical_position(segmenter):
    phantom = liver_phantom()
    reference = segmenter.segment(phantom)
    angle = np.deg2rad(10.0)
    rotation = (np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0)
    oblique = sitk.Image(phantom)
    oblique.SetDirection(rotation)
    # Put the same object onto the rotated grid, so physical content matches the phantom.
    oblique = sitk.Resample(phantom, oblique, sitk.Transform(), sitk.sitkNearestNeighbor, -1000)
    result = segmenter.segment(oblique)
    assert result.mask.GetDirection() == pytest.approx(rotation)
    assert len(result.lesions) == 1
    shift = np.subtract(result.lesions[0].centroid_lps_mm, reference.lesions[0].centroid_lps_mm)
    assert np.linalg.norm(shift) < 3.0


def test_given_liver_mask_is_used(segmenter):
    phantom = liver_phantom()
    liver = sitk.Cast(phantom > 0, sitk.sitkUInt8)
    result = segmenter.segment(phantom, liver_mask=liver)
    assert result.liver_source == "mask"
    assert len(result.lesions) == 1


def test_liver_mask_on_other_grid_rejected(segmenter):
    phantom = liver_phantom()
    other = liver_phantom(shape_zyx=(24, 40, 50))
    with pytest.raises(InputImageError, match="differs from the scan"):
        segmenter.segment(phantom, liver_mask=other)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_replaced_and_counted(segmenter, value):
    phantom = sitk.Cast(liver_phantom(), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(phantom)
    array[0, :5, :5] = value
    broken = sitk.GetImageFromArray(array)
    broken.CopyInformation(phantom)
    result = segmenter.segment(broken)
    assert any("non-finite" in warning for warning in result.warnings)
    assert len(result.lesions) == 1


@pytest.mark.parametrize("value", [-1024.0, 0.0])
def test_constant_image_gives_empty_mask(segmenter, value):
    image = sitk.Image(liver_phantom())
    constant = sitk.GetImageFromArray(np.full(sitk.GetArrayViewFromImage(image).shape, value, np.float32))
    constant.CopyInformation(image)
    result = segmenter.segment(constant)
    assert sitk.GetArrayViewFromImage(result.mask).max() == 0
    assert any("No liver found" in warning for warning in result.warnings)


@pytest.mark.parametrize(
    ("first_slice", "message"),
    [
        (0, "Only 43 mL of liver found (below 50 mL), at the edge of the scan"),
        (10, "No liver found (at most 43 mL, below 50 mL)"),
    ],
)
def test_small_liver_gives_empty_mask_and_reason(segmenter, first_slice, message):
    # 3 slices of 4 mm, 20 x 20 voxels of 3 mm: 43 mL of liver-like tissue (HU > 0 for the
    # linear liver model), at the scan's first slice or inside the scan.
    hu = np.full((24, 40, 48), -1000, dtype=np.int16)
    hu[first_slice : first_slice + 3, 5:25, 8:28] = 60
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((3.0, 3.0, 4.0))

    result = segmenter.segment(image)

    assert sitk.GetArrayViewFromImage(result.mask).max() == 0
    assert result.liver_volume_ml == 0.0
    assert any(message in warning for warning in result.warnings), result.warnings
    assert not any("usual adult range" in warning for warning in result.warnings), result.warnings


@pytest.mark.parametrize(
    "pixel_type",
    [sitk.sitkInt16, sitk.sitkInt32, sitk.sitkFloat32, sitk.sitkFloat64],
)
def test_pixel_types_give_same_mask(segmenter, pixel_type):
    phantom = liver_phantom()
    reference = sitk.GetArrayFromImage(segmenter.segment(phantom).mask)
    converted = sitk.Cast(phantom, pixel_type)
    assert np.array_equal(sitk.GetArrayFromImage(segmenter.segment(converted).mask), reference)


@pytest.mark.parametrize("shape_zyx", [(1, 40, 48), (3, 40, 48), (2, 3, 4)])
def test_few_slices_and_tiny_images_run(segmenter, shape_zyx):
    phantom = liver_phantom(shape_zyx=shape_zyx)
    result = segmenter.segment(phantom)
    assert result.mask.GetSize() == phantom.GetSize()
    assert np.isfinite(result.liver_volume_ml)


def test_no_network_access(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("mhp-edge attempted a network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    write_linear_model(tmp_path, LIVER_MODEL_FILE, make_metadata("liver"))
    write_linear_model(tmp_path, TUMOUR_MODEL_FILE, make_metadata("tumour", hu_mean=200.0))
    result = Segmenter(tmp_path, threads=1).segment(liver_phantom())
    assert result.liver_volume_ml > 0


def test_numpy_api_matches_image_api(segmenter):
    phantom = liver_phantom()
    from_image = segmenter.segment(phantom)
    z_mm, y_mm, x_mm = reversed(phantom.GetSpacing())
    from_array = segmenter.segment_array(
        sitk.GetArrayFromImage(phantom), (z_mm, y_mm, x_mm), origin_lps_mm=phantom.GetOrigin()
    )
    assert np.array_equal(from_array.mask_array, from_image.mask_array)
    assert from_array.lesions == from_image.lesions


def test_numpy_api_rejects_2d(segmenter):
    with pytest.raises(InputImageError, match="must be 3D"):
        segmenter.segment_array(np.zeros((8, 8), np.float32), (1.0, 1.0, 1.0))


@pytest.mark.parametrize(
    "spacing", [(1.0, 0.0, 1.0), (1.0, float("nan"), 1.0), (1.0, 1.0, float("inf")), (1.0, 1.0)]
)
def test_numpy_api_rejects_invalid_spacing(segmenter, spacing):
    with pytest.raises(InputImageError, match="spacing_zyx_mm must be 3 positive mm values"):
        segmenter.segment_array(np.zeros((8, 8, 8), np.float32), spacing)


def test_threads_share_one_segmenter(segmenter):
    phantom = liver_phantom()
    expected = segmenter.segment(phantom).mask_array
    with ThreadPoolExecutor(max_workers=3) as pool:
        masks = list(pool.map(lambda _: segmenter.segment(phantom).mask_array, range(6)))
    assert all(np.array_equal(mask, expected) for mask in masks)


def test_ct_given_as_liver_mask_rejected(segmenter):
    phantom = liver_phantom()
    with pytest.raises(InputImageError, match="Was a CT given as the mask"):
        segmenter.segment(phantom, liver_mask=phantom)


def test_empty_liver_mask_warns(segmenter):
    phantom = liver_phantom()
    empty = sitk.Image(phantom.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(phantom)
    result = segmenter.segment(phantom, liver_mask=empty)
    assert any("given liver mask covers 0 mL" in warning for warning in result.warnings)


@pytest.mark.parametrize("pixel_type", [sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkUInt32])
def test_other_integer_types_give_defined_result(segmenter, pixel_type):
    # These types cannot hold CT in HU (air is -1000): the result must still be a clean mask.
    # The noise gives the many values of a real scan (a few values alone look like a label mask).
    noisy = sitk.AdditiveGaussianNoise(sitk.Cast(liver_phantom(), sitk.sitkFloat32), 10.0, 0.0, 1)
    phantom = sitk.Cast(sitk.Clamp(noisy, lowerBound=0, upperBound=120), pixel_type)
    result = segmenter.segment(phantom)
    assert result.mask.GetPixelID() == sitk.sitkUInt8
    assert result.mask.GetSize() == phantom.GetSize()
    assert any("do not look like CT in HU" in warning for warning in result.warnings)


def test_scan_of_1000_slices_runs(segmenter):
    phantom = liver_phantom(shape_zyx=(1000, 40, 48), spacing_zyx_mm=(0.8, 3.0, 3.0))
    result = segmenter.segment(phantom)
    assert result.mask.GetSize() == phantom.GetSize()
    assert result.liver_volume_ml > 0


def test_tumour_model_without_hessian_input_runs(tmp_path):
    # The ablation baselines read the CT alone: one input and no Hessian settings.
    write_linear_model(tmp_path, LIVER_MODEL_FILE, make_metadata("liver"))
    tumour = make_metadata(
        "tumour", hu_mean=200.0, hu_clip=(-250.0, 400.0), input_names=("ct",), hessian=None
    )
    write_linear_model(tmp_path, TUMOUR_MODEL_FILE, tumour)
    phantom = liver_phantom()

    result = Segmenter(tmp_path, threads=1).segment(phantom)

    mask = sitk.GetArrayFromImage(result.mask)
    assert (mask[sitk.GetArrayFromImage(phantom) == LESION_HU] == 2).mean() > 0.9
    assert "hessian" not in result.timings_s


def test_tumour_probability_thresholds_to_the_segment_mask(segmenter):
    phantom = liver_phantom()
    result = segmenter.segment(phantom)
    liver = sitk.Cast(result.mask > 0, sitk.sitkUInt8)

    probability = segmenter.tumour_probability(phantom, liver)

    assert probability.GetSize() == phantom.GetSize()
    assert probability.GetPixelID() == sitk.sitkFloat32
    values = sitk.GetArrayFromImage(probability)
    assert values.min() >= 0.0
    assert values.max() <= 1.0
    metadata = segmenter.tumour_model.metadata
    tumour = postprocess_tumour(
        values,
        sitk.GetArrayFromImage(liver) > 0,
        voxel_mm3=float(np.prod(phantom.GetSpacing())),
        threshold=metadata.threshold,
        min_component_mm3=metadata.min_component_mm3,
    )
    np.testing.assert_array_equal(tumour, sitk.GetArrayFromImage(result.mask) == 2)


def test_liver_mask_matches_segment(segmenter):
    image = reoriented(liver_phantom(), (-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0))

    liver = segmenter.liver_mask(image)

    assert liver.GetPixelID() == sitk.sitkUInt8
    assert liver.GetDirection() == image.GetDirection()
    segment_liver = sitk.GetArrayFromImage(segmenter.segment(image).mask) > 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(liver) == 1, segment_liver)
    assert segment_liver.any()


def test_liver_mask_of_a_constant_scan_is_empty(segmenter):
    image = sitk.Image(liver_phantom())
    image = sitk.Multiply(sitk.Cast(image, sitk.sitkFloat32), 0.0)

    assert sitk.GetArrayFromImage(segmenter.liver_mask(image)).max() == 0


def test_postprocess_drops_small_components_and_outside_liver():
    probability = np.zeros((10, 10, 10), dtype=np.float32)
    probability[1:5, 1:5, 1:5] = 0.9  # 64 voxels
    probability[7, 7, 7] = 0.9  # 1 voxel
    liver = np.ones(probability.shape, dtype=bool)
    liver[1:5, 1:5, 1] = False

    tumour = postprocess_tumour(probability, liver, voxel_mm3=2.0, threshold=0.5, min_component_mm3=10.0)

    assert tumour.sum() == 64 - 16
    assert not tumour[7, 7, 7]


@pytest.mark.parametrize("min_component_mm3", [0.0, 6.4, 101.0, 1e30])
def test_postprocess_equals_scipy_labelling(min_component_mm3):
    noise = np.random.default_rng(5).normal(size=(30, 60, 70))
    probability = ndimage.gaussian_filter(noise, 1.2).astype(np.float32) + 0.5
    liver = np.ones(probability.shape, dtype=bool)
    candidates = probability > 0.62
    labelled, _ = ndimage.label(candidates, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(labelled.ravel())
    big_enough = sizes * 2.0 >= min_component_mm3
    big_enough[0] = False

    tumour = postprocess_tumour(
        probability, liver, voxel_mm3=2.0, threshold=0.62, min_component_mm3=min_component_mm3
    )

    np.testing.assert_array_equal(tumour, big_enough[labelled])


def test_postprocess_keeps_lesions_mostly_in_liver():
    probability = np.zeros((10, 10, 16), dtype=np.float32)
    probability[1:5, 1:5, 1:5] = 0.9  # 64 voxels, three quarters of them in the liver
    probability[1:5, 1:5, 10:14] = 0.9  # 64 voxels, a quarter of them in the liver
    probability[6:9, 6:9, 5:8] = 0.9  # 27 voxels, none in the liver
    liver = np.zeros(probability.shape, dtype=bool)
    liver[:, :, 2:11] = True
    liver[6:9, 6:9, :] = False

    whole = postprocess_tumour(
        probability, liver, voxel_mm3=2.0, threshold=0.5, min_component_mm3=10.0, cut_to_liver=False
    )
    cut = postprocess_tumour(probability, liver, voxel_mm3=2.0, threshold=0.5, min_component_mm3=10.0)

    assert whole[1:5, 1:5, 1:5].all()
    assert whole[:, :, 10].sum() == 16
    assert not whole[:, :, 11:].any()
    assert not whole[6:9].any()
    assert cut.sum() == 48 + 16


class _GivenModelLiver(Segmenter):
    """A Segmenter whose liver stage returns a fixed (z, y, x) mask, as a liver model would."""

    model_liver: np.ndarray

    def _find_liver(self, scan, progress):
        return self.model_liver.copy()


def test_bulging_lesion_kept_whole(tmp_path):
    # A bright lesion sits on the liver's surface with about a third of it outside the liver
    # that the "model" found. The linear tumour model calls HU above 200 tumour.
    write_linear_model(tmp_path, LIVER_MODEL_FILE, make_metadata("liver"))
    tumour = make_metadata("tumour", hu_mean=200.0, hu_clip=(-250.0, 400.0), roi_margin_mm=20.0)
    write_linear_model(tmp_path, TUMOUR_MODEL_FILE, tumour)
    z, y, x = np.meshgrid(np.arange(24), np.arange(48), np.arange(48), indexing="ij")
    liver = np.zeros((24, 48, 48), dtype=bool)
    liver[4:20, 8:40, 8:30] = True
    lesion = ((z - 12) * 4.0) ** 2 + ((y - 24) * 3.0) ** 2 + ((x - 28) * 3.0) ** 2 <= 15.0**2
    hu = np.where(liver, 60, -100).astype(np.int16)
    hu[lesion] = 300
    segmenter = _GivenModelLiver(tmp_path, threads=1)
    segmenter.model_liver = liver

    with_model_liver = segmenter.segment_array(hu, (4.0, 3.0, 3.0))
    with_mask = segmenter.segment_array(hu, (4.0, 3.0, 3.0), liver_mask=liver.astype(np.uint8))

    labels = sitk.GetArrayFromImage(with_model_liver.mask)
    assert (labels[lesion] == 2).all()
    assert (labels[lesion & ~liver] == 2).sum() > 0.25 * lesion.sum()
    assert with_model_liver.liver_volume_ml == pytest.approx(np.count_nonzero(labels) * 0.036, abs=0.05)
    assert not sitk.GetArrayFromImage(with_mask.mask)[~liver].any()


def test_liver_boundary_refinement_follows_the_phantom_liver(tmp_path):
    # The liver model works at 4 x 3 x 3 mm and the phantom has 2 x 1.5 x 1.5 mm voxels, so the
    # refinement at the scan's resolution should bring the coarse surface closer to the truth.
    # The liver lies in fat (-100 HU), as in a body, rather than in the phantom's air.
    phantom = liver_phantom(shape_zyx=(40, 72, 80), spacing_zyx_mm=(2.0, 1.5, 1.5))
    truth = sitk.GetArrayFromImage(phantom) > 0
    phantom = sitk.Maximum(phantom, -100)
    dice_by_setting = {}
    for setting, boundary in (("off", None), ("on", LIVER_BOUNDARY)):
        folder = tmp_path / setting
        folder.mkdir()
        write_linear_model(folder, LIVER_MODEL_FILE, make_metadata("liver", boundary=boundary))
        write_linear_model(folder, TUMOUR_MODEL_FILE, make_metadata("tumour"))
        liver = sitk.GetArrayFromImage(Segmenter(folder, threads=1).liver_mask(phantom)) > 0
        dice_by_setting[setting] = dice(liver, truth)

    # With two threads the refinement's distance and smoothing run beside the interpolation.
    two_threads = sitk.GetArrayFromImage(Segmenter(tmp_path / "on", threads=2).liver_mask(phantom)) > 0

    assert dice_by_setting["on"] >= dice_by_setting["off"]
    assert dice_by_setting["on"] > 0.95
    assert (two_threads == liver).all()


def test_liver_median_makes_tumour_input_phase_independent(tmp_path):
    # The same phantom 40 HU brighter, as in a later contrast phase. A model that shifts its
    # input to a fixed liver median returns the same probability for both, a model without it does not.
    phantom = liver_phantom()
    brighter = sitk.Cast(phantom, sitk.sitkInt16) + 40
    liver = sitk.Cast(phantom > 0, sitk.sitkUInt8)

    def probabilities(liver_median_hu):
        folder = tmp_path / str(liver_median_hu)
        folder.mkdir()
        write_linear_model(folder, LIVER_MODEL_FILE, make_metadata("liver"))
        tumour = make_metadata(
            "tumour", hu_mean=200.0, hu_clip=(-250.0, 400.0), liver_median_hu=liver_median_hu
        )
        write_linear_model(folder, TUMOUR_MODEL_FILE, tumour)
        segmenter = Segmenter(folder, threads=1)
        return [
            sitk.GetArrayFromImage(segmenter.tumour_probability(image, liver))
            for image in (phantom, brighter)
        ]

    original, shifted = probabilities(100.0)
    np.testing.assert_allclose(shifted, original, atol=1e-5)
    original, shifted = probabilities(None)
    assert np.abs(shifted - original).max() > 0.1


@pytest.mark.parametrize("empty", [False, True])
def test_label_volume_equals_full_assignment(empty):
    rng = np.random.default_rng(3)
    liver = np.zeros((30, 40, 50), dtype=bool)
    if not empty:
        liver[4:20, 10:30, 5:45] = rng.random((16, 20, 40)) > 0.3
    tumour = liver & (rng.random(liver.shape) > 0.8)

    expected = np.zeros(liver.shape, dtype=np.uint8)
    expected[liver] = 1
    expected[tumour] = 2
    np.testing.assert_array_equal(_label_volume(liver, tumour), expected)
