"""Tests of export/: ONNX parity with torch, embedded metadata, cards, loss and patch sampling.

The networks are untrained and exported at a small patch shape, so the whole module runs in
seconds. The layers are the same as at the shipped patch shape.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import SimpleITK as sitk
from scipy import ndimage

torch = pytest.importorskip("torch")

from export.contract import (  # noqa: E402
    INTENDED_USE,
    LIVER_BOUNDARY,
    licences_for,
    liver_metadata,
    tumour_metadata,
)
from export.data import (  # noqa: E402
    IGNORE_LABEL,
    REPO_ROOT,
    Augmentation,
    CaseFiles,
    PatchMix,
    PatchSampler,
    PreparedCase,
    measure_response_scale,
    prepare_case,
)
from export.networks import MHPNet, PlainUNet, count_parameters  # noqa: E402
from export.onnx_export import export_onnx, write_card  # noqa: E402
from export.postprocessing import (  # noqa: E402
    set_liver_accuracy,
    set_liver_boundary,
    set_postprocessing,
    set_tiles,
)
from export.synthetic import insert_lesions, measure_lesions  # noqa: E402
from export.train import (  # noqa: E402
    RECIPES,
    Budget,
    DataOptions,
    dice_bce_loss,
    hold_back_lesions,
    learning_rate_at,
)
from mhp_edge.errors import ModelError  # noqa: E402
from mhp_edge.metadata import METADATA_KEY, card_path_for, parse_metadata, sha256_of_file  # noqa: E402
from mhp_edge.model import load_model  # noqa: E402
from mhp_edge.preprocess import hessian_input  # noqa: E402

# Smallest shape both networks accept: LiverNet halves every axis three times.
SMALL_PATCH_VOX = (16, 32, 32)

# float32 convolutions in torch and onnxruntime sum in different orders. Logits of an
# untrained network are of order 1, so 1e-4 is far above rounding and far below any real bug.
LOGIT_TOLERANCE = 1e-4


def small_metadata(variant: str):
    provenance = {"training_cases": ["ircadb_01"], "seed": 0}
    if variant.startswith("liver"):
        metadata = liver_metadata(provenance)
    else:
        metadata = tumour_metadata(provenance, response_scale=3.3, uses_hessian=variant == "tumour")
    return replace(metadata, patch_shape_vox=SMALL_PATCH_VOX)


NETWORKS = {
    **{name: RECIPES[name].build_network for name in ("liver", "liver-instance-norm", "liver-fine-head")},
    "tumour": MHPNet,
    "tumour-no-hessian": lambda: MHPNet(hessian=False),
    "plain-unet": PlainUNet,
}


def export_with_card(network, metadata, model_path: Path) -> Path:
    """Export a network to ONNX with a card that names one training case, and return the card's path."""
    export_onnx(network, metadata, model_path)
    return write_card(
        model_path,
        metadata,
        architecture=type(network).__name__,
        parameters=count_parameters(network),
        training_cases=["ircadb_01"],
        licences=licences_for(["ircadb_01"]),
        intended_use=INTENDED_USE,
    )


@pytest.fixture(scope="module", params=sorted(NETWORKS))
def exported(request, tmp_path_factory):
    """An untrained network of each kind, exported to ONNX with its card."""
    variant = request.param
    torch.manual_seed(0)
    network = NETWORKS[variant]()
    if any(isinstance(module, torch.nn.BatchNorm3d) for module in network.modules()):
        # Give batch normalisation running statistics other than 0 and 1, as after training.
        network.train()
        with torch.no_grad():
            for _ in range(2):
                network(
                    *[
                        torch.randn(2, 1, *SMALL_PATCH_VOX) * 3 + 1
                        for _ in range(1 + network_uses_hessian(network))
                    ]
                )
    metadata = small_metadata(variant)
    model_path = tmp_path_factory.mktemp(variant) / f"{variant}.onnx"

    card_path = export_with_card(network, metadata, model_path)
    return network, metadata, model_path, card_path


def test_onnx_logits_match_torch(exported):
    network, metadata, model_path, _ = exported
    generator = np.random.default_rng(1)
    # Batch 3 differs from the export example batch 2, so this also checks the dynamic batch axis.
    inputs = [
        generator.normal(size=(3, 1, *SMALL_PATCH_VOX)).astype(np.float32) for _ in metadata.input_names
    ]

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, dict(zip(metadata.input_names, inputs, strict=True)))
    with torch.no_grad():
        torch_logits = network.eval()(*(torch.from_numpy(array) for array in inputs)).numpy()

    assert onnx_logits.shape == (3, 1, *SMALL_PATCH_VOX)
    assert onnx_logits.dtype == np.float32
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=LOGIT_TOLERANCE, rtol=0)


def test_onnx_interface_matches_metadata(exported):
    _, metadata, model_path, _ = exported
    model = onnx.load(str(model_path))

    assert [graph_input.name for graph_input in model.graph.input] == list(metadata.input_names)
    assert [graph_output.name for graph_output in model.graph.output] == [metadata.output_name]
    assert max(entry.version for entry in model.opset_import if entry.domain == "") >= 17
    for graph_input in model.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        assert dims[0].dim_param, "batch axis must be dynamic"
        assert dims[1].dim_value == 1
        if metadata.tile_max_vox is None:
            assert [dim.dim_value for dim in dims[2:]] == list(SMALL_PATCH_VOX)
        else:
            assert all(dim.dim_param for dim in dims[2:]), "a tiled model's spatial axes must be dynamic"


def test_tiled_model_larger_tile_parity(exported):
    network, metadata, model_path, _ = exported
    if metadata.tile_max_vox is None:
        pytest.skip(f"{metadata.name} runs windows of its patch shape only")
    tile = tuple(p + 2 * m for p, m in zip(SMALL_PATCH_VOX, metadata.tile_multiple_vox, strict=True))
    rng = np.random.default_rng(2)
    inputs = [rng.normal(size=(1, 1, *tile)).astype(np.float32) for _ in metadata.input_names]

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, dict(zip(metadata.input_names, inputs, strict=True)))
    with torch.no_grad():
        torch_logits = network.eval()(*(torch.from_numpy(batch) for batch in inputs)).numpy()

    assert onnx_logits.shape == (1, 1, *tile)
    np.testing.assert_allclose(onnx_logits, torch_logits, atol=LOGIT_TOLERANCE, rtol=0)


def test_liver_tile_multiple_downsampling():
    from export.networks import LiverNet

    downsampling = np.prod([LiverNet.stem_stride, *LiverNet.strides], axis=0)
    assert tuple(int(n) for n in downsampling) == liver_metadata({}).tile_multiple_vox


def test_tumour_tile_multiple_downsampling():
    downsampling = np.prod([MHPNet.entry_stride, *MHPNet.strides], axis=0)
    assert tuple(int(n) for n in downsampling) == small_metadata("tumour").tile_multiple_vox


def test_embedded_metadata_parses(exported):
    _, metadata, model_path, _ = exported
    properties = {entry.key: entry.value for entry in onnx.load(str(model_path)).metadata_props}

    parsed = parse_metadata(properties[METADATA_KEY], source=str(model_path))

    assert parsed == metadata


def test_card_matches_model(exported):
    network, metadata, model_path, card_path = exported
    card = json.loads(card_path.read_text())

    assert card_path == card_path_for(model_path)
    assert card["sha256"] == sha256_of_file(model_path)
    assert card["model_file"] == model_path.name
    assert card["task"] == metadata.task
    assert card["parameters"] == count_parameters(network)
    assert card["intended_use"] == "Research use only, not for clinical use."
    assert card["licences"] == {"ircadb": licences_for(["ircadb_01"])["ircadb"]}
    assert card["accuracy"] == {}
    assert card["metadata"] == json.loads(metadata.to_json())


def test_runtime_loads_exported_model(exported):
    _, metadata, model_path, _ = exported

    loaded = load_model(model_path, threads=1)
    logits = loaded.predict(
        [np.zeros((1, 1, *SMALL_PATCH_VOX), dtype=np.float32) for _ in metadata.input_names]
    )

    assert loaded.metadata == metadata
    assert logits.shape == (1, 1, *SMALL_PATCH_VOX)
    assert np.isfinite(logits).all()


def network_uses_hessian(network) -> bool:
    return isinstance(network, MHPNet) and network.uses_hessian


@pytest.mark.parametrize("variant", sorted(NETWORKS))
def test_network_size_budget(variant):
    assert count_parameters(NETWORKS[variant]()) < 1_000_000


def test_licences_reject_unknown_source():
    with pytest.raises(ValueError, match="unknown source 'lits'"):
        licences_for(["lits_001"])


def test_dice_bce_loss_orders_predictions():
    target = torch.zeros(1, 1, 4, 4, 4)
    target[..., 1:3, 1:3, 1:3] = 1
    good = torch.where(target > 0, 10.0, -10.0)
    bad = -good

    good_loss = float(dice_bce_loss(good, target))
    bad_loss = float(dice_bce_loss(bad, target))
    empty_loss = float(dice_bce_loss(torch.full_like(target, -10.0), torch.zeros_like(target)))

    assert good_loss < 0.01
    assert bad_loss > 5
    assert empty_loss < 0.01


def test_dice_bce_loss_ignores_zero_weight_voxels():
    target = torch.zeros(1, 1, 4, 4, 4)
    target[..., :2, :, :] = 1
    logits = torch.where(target > 0, 10.0, -10.0)
    weight = torch.ones_like(target)
    # The network "misses" an ignored lesion in the other half: no loss there.
    target_with_ignored = target.clone()
    target_with_ignored[..., 2:, :2, :2] = 1
    weight[..., 2:, :2, :2] = 0

    assert float(dice_bce_loss(logits, target_with_ignored, weight)) < 0.01
    assert float(dice_bce_loss(logits, target_with_ignored)) > 0.1


def test_learning_rate_schedule_bounds():
    assert learning_rate_at(0.0, 1.0) == pytest.approx(0.1)
    assert learning_rate_at(0.05, 1.0) == pytest.approx(1.0)
    assert learning_rate_at(1.0, 1.0) == pytest.approx(0.02)
    assert learning_rate_at(2.0, 1.0) == pytest.approx(0.02)


def test_budget_fraction_by_steps_or_time():
    assert Budget(steps=200).fraction(50, elapsed_s=1000.0) == pytest.approx(0.25)
    assert Budget(seconds=100.0).fraction(50, elapsed_s=25.0) == pytest.approx(0.25)


@pytest.mark.parametrize(
    "arguments",
    [{}, {"seconds": 60.0, "steps": 10}, {"seconds": 0.0}, {"steps": 0}],
)
def test_budget_rejects_invalid(arguments):
    with pytest.raises(ValueError, match="Budget|exactly one"):
        Budget(**arguments)


def synthetic_case(shape=(20, 40, 40)) -> PreparedCase:
    """A liver block with one 4-voxel tumour cube, HU 100 liver, 40 tumour, -1000 outside."""
    hu = np.full(shape, -1000.0, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    hu[4:16, 8:32, 8:32] = 100.0
    label[4:16, 8:32, 8:32] = 1
    hu[8:12, 18:22, 18:22] = 40.0
    label[8:12, 18:22, 18:22] = 2
    response = np.where(label == 2, np.float32(6.6), np.float32(0.0))
    return PreparedCase("synthetic_01", hu, label, response, (2.5, 1.25, 1.25))


def test_response_scale_is_liver_percentile():
    case = synthetic_case()

    scale = measure_response_scale([case], percentile=100.0)

    assert scale == pytest.approx(6.6)


def test_sampler_lesion_patches_hold_tumour():
    metadata = tumour_metadata({}, response_scale=3.3)
    sampler = PatchSampler(
        [synthetic_case()],
        metadata,
        patch_shape_vox=SMALL_PATCH_VOX,
        mix=PatchMix(lesion=1.0, liver=0.0),
        augmentation=Augmentation(
            flip_axes=(0, 1, 2),
            rotate_in_plane=True,
            zoom=(0.85, 1.15),
            hu_scale=(0.9, 1.1),
            hu_shift=(-20, 20),
            noise_hu=(0.0, 20.0),
        ),
        rng=np.random.default_rng(0),
    )

    (ct, hessian), target, weight = sampler.sample(8)

    assert ct.shape == hessian.shape == target.shape == weight.shape == (8, 1, *SMALL_PATCH_VOX)
    assert ct.dtype == hessian.dtype == target.dtype == np.float32
    assert (target.reshape(8, -1).sum(axis=1) > 0).all()
    # Tumour voxels carry the scaled response 6.6 / 3.3 = 2, times the HU scale factor.
    assert 1.8 <= hessian.max() <= 2.2
    assert set(np.unique(target)) <= {0.0, 1.0}
    assert (weight == 1).all()


def test_sampler_noise_spread_on_ct_only():
    metadata = tumour_metadata({}, response_scale=3.3)
    case = synthetic_case()
    case.hu[case.label == 2] = 100.0
    sampler = PatchSampler(
        [case],
        metadata,
        patch_shape_vox=SMALL_PATCH_VOX,
        mix=PatchMix(lesion=0.0, liver=1.0),
        augmentation=Augmentation(noise_hu=(15.0, 15.0)),
        rng=np.random.default_rng(0),
    )

    (ct, hessian), _, _ = sampler.sample(4)

    # Patches of a flat 100 HU liver block: there the CT spread is the noise alone.
    ct_hu = ct * metadata.hu_std + metadata.hu_mean
    inside = np.abs(ct_hu - 100.0) < 100.0
    assert inside.mean() > 0.3
    assert ct_hu[inside].std() == pytest.approx(15.0, rel=0.1)
    assert np.isin(hessian, [0.0, 2.0]).all()


def test_sampler_surface_patches_hold_liver_edge():
    metadata = tumour_metadata({}, response_scale=3.3)
    sampler = PatchSampler(
        [synthetic_case()],
        metadata,
        patch_shape_vox=(4, 8, 8),
        mix=PatchMix(lesion=0.0, liver=0.0, surface=1.0),
        augmentation=Augmentation(),
        rng=np.random.default_rng(0),
    )

    # The edge of the liver block: liver (100 HU) and air in the patch. The random shift of
    # up to a quarter patch can push the air just outside, so most patches, not all, hold both.
    both = 0
    for _ in range(20):
        (ct, _), _, _ = sampler.sample(1)
        both += bool(ct.max() > 0 and ct.min() < -1)
    assert both >= 14


def test_sampler_rejects_rotation_with_unequal_in_plane_spacing():
    metadata = replace(tumour_metadata({}, response_scale=3.3), spacing_zyx_mm=(2.5, 1.0, 1.25))

    with pytest.raises(ValueError, match="equal y and x spacing"):
        PatchSampler(
            [synthetic_case()],
            metadata,
            patch_shape_vox=SMALL_PATCH_VOX,
            mix=PatchMix(lesion=1.0, liver=0.0),
            augmentation=Augmentation(rotate_in_plane=True),
            rng=np.random.default_rng(0),
        )


def test_sampler_pads_small_volumes():
    metadata = liver_metadata({})
    case = synthetic_case(shape=(20, 40, 40))
    sampler = PatchSampler(
        [case],
        metadata,
        patch_shape_vox=metadata.patch_shape_vox,
        mix=PatchMix(lesion=0.0, liver=0.5),
        augmentation=Augmentation(),
        rng=np.random.default_rng(0),
    )

    (ct,), target, _ = sampler.sample(2)

    assert ct.shape == (2, 1, *metadata.patch_shape_vox)
    # The padding is air: -1024 HU clipped to -250 and divided by 150.
    assert ct.min() == pytest.approx(-250.0 / 150.0)
    assert target.sum() == 2 * 12 * 24 * 24


def two_lesion_case() -> PreparedCase:
    """A 40 x 80 x 80 liver block (100 HU) with two separate tumours (40 HU)."""
    shape = (40, 80, 80)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    hu[2:38, 4:76, 4:76] = 100.0
    label[2:38, 4:76, 4:76] = 1
    for start in (10, 50):
        hu[16:22, start : start + 10, start : start + 10] = 40.0
        label[16:22, start : start + 10, start : start + 10] = 2
    rng = np.random.default_rng(3)
    hu += rng.normal(0, 10, size=shape).astype(np.float32)
    return PreparedCase("synthetic_02", hu, label, np.zeros(shape, np.float32), (2.5, 1.25, 1.25))


def test_lesion_statistics_measure_size_and_contrast():
    statistics = measure_lesions([two_lesion_case()], (2.5, 1.25, 1.25))

    # 6 x 10 x 10 voxels of 3.90625 mm^3 = 2344 mm^3: equivalent diameter 16.5 mm.
    assert statistics.diameters_mm == pytest.approx((16.5, 16.5), abs=0.1)
    assert statistics.contrasts_hu == pytest.approx((-60.0, -60.0), abs=3.0)


def test_synthetic_lesions_go_into_healthy_liver_only():
    case = two_lesion_case()
    statistics = measure_lesions([case], case.spacing_zyx_mm)
    metadata = tumour_metadata({}, response_scale=1.0)

    changed = insert_lesions(case, statistics, metadata, count=2, rng=np.random.default_rng(0))

    new_tumour = (changed.label == 2) & (case.label != 2)
    assert changed.case_id == "synthetic_02+synthetic"
    assert new_tumour.sum() > 100
    assert (case.label[new_tumour] == 1).all()
    assert ((changed.label > 0) == (case.label > 0)).all()
    # HU change only inside the liver, and darker there on average (negative contrast).
    difference = changed.hu - case.hu
    assert (difference[case.label == 0] == 0).all()
    assert difference[new_tumour].mean() < -30
    assert changed.blob_response.shape == case.hu.shape
    assert np.abs(changed.blob_response[new_tumour]).max() > 0


def test_hyperdense_share_sets_lesion_sign():
    case = two_lesion_case()
    statistics = measure_lesions([case], case.spacing_zyx_mm)
    metadata = tumour_metadata({}, response_scale=1.0)

    for share, sign in ((1.0, 1.0), (0.0, -1.0)):
        changed = insert_lesions(
            case, statistics, metadata, count=2, rng=np.random.default_rng(0), hyperdense_share=share
        )

        # The real lesions are 60 HU darker than the liver. A share of 1 paints the synthetic
        # ones about 60 HU brighter, a share of 0 keeps them darker.
        new_tumour = (changed.label == 2) & (case.label != 2)
        assert new_tumour.sum() > 100
        assert sign * (changed.hu - case.hu)[new_tumour].mean() > 30


def test_hyperdense_share_out_of_range_rejected():
    with pytest.raises(ValueError, match="hyperdense_share"):
        DataOptions(hyperdense_share=1.5)


def test_synthetic_lesions_see_the_context_of_the_crop():
    case = two_lesion_case()
    context_hu = np.pad(case.hu, 12, constant_values=100.0)
    core = (slice(12, 52), slice(12, 92), slice(12, 92))
    case = replace(case, hu=context_hu[core], context_hu=context_hu, core=core)
    metadata = tumour_metadata({}, response_scale=1.0)

    changed = insert_lesions(
        case, measure_lesions([case], case.spacing_zyx_mm), metadata, count=2, rng=np.random.default_rng(0)
    )

    # The lesions are painted into a copy of the context, through its core.
    np.testing.assert_array_equal(case.context_hu, context_hu)
    np.testing.assert_array_equal(changed.context_hu[core], changed.hu)
    outside_core = np.ones(context_hu.shape, dtype=bool)
    outside_core[core] = False
    np.testing.assert_array_equal(changed.context_hu[outside_core], context_hu[outside_core])
    expected = hessian_input(changed.context_hu, case.spacing_zyx_mm, metadata.hessian, core=core)
    np.testing.assert_array_equal(changed.blob_response, expected)


def write_block_case(folder: Path) -> CaseFiles:
    """Write a 100 HU liver block with a small tumour in -50 HU surroundings; return its files."""
    hu = np.full((40, 120, 120), -50.0, dtype=np.float32)
    hu[12:28, 40:80, 40:80] = 100.0
    label = np.zeros(hu.shape, dtype=np.uint8)
    label[12:28, 40:80, 40:80] = 1
    label[18:22, 55:62, 55:62] = 2
    paths = []
    for name, array in (("ct", hu), ("label", label)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.25, 1.25, 2.5))
        paths.append(folder / f"case_01_{name}.nii.gz")
        sitk.WriteImage(image, str(paths[-1]))
    return CaseFiles("case_01", *paths)


def test_prepared_tumour_case_carries_context(tmp_path):
    case = write_block_case(tmp_path)
    metadata = tumour_metadata({}, response_scale=1.0)

    prepared = prepare_case(case, metadata, cache_dir=tmp_path / "cache")
    cached = prepare_case(case, metadata, cache_dir=tmp_path / "cache")

    # The crop is the liver box plus 10 mm. The context (64 mm) is cut by the scan's edges.
    assert prepared.hu.shape == (24, 56, 56)
    assert prepared.context_hu.shape == (40, 120, 120)
    assert prepared.core == (slice(8, 32), slice(32, 88), slice(32, 88))
    assert prepared.label.shape == prepared.hu.shape
    assert prepared.blob_response.shape == prepared.hu.shape
    np.testing.assert_array_equal(cached.context_hu, prepared.context_hu)
    assert cached.core == prepared.core


def test_prepared_case_shifted_to_liver_median(tmp_path):
    case = write_block_case(tmp_path)
    plain = prepare_case(case, tumour_metadata({}, response_scale=1.0), cache_dir=tmp_path / "cache")
    metadata = tumour_metadata({}, response_scale=1.0, liver_median_hu=130.0)

    shifted = prepare_case(case, metadata, cache_dir=tmp_path / "cache")

    # The liver block is 100 HU, so every voxel moves by +30 HU, and the Hessian reads the shifted HU.
    assert np.median(shifted.hu[shifted.label > 0]) == 130.0
    np.testing.assert_allclose(shifted.context_hu, plain.context_hu + 30.0)
    expected = hessian_input(shifted.context_hu, metadata.spacing_zyx_mm, metadata.hessian, core=shifted.core)
    np.testing.assert_allclose(shifted.blob_response, expected, atol=1e-6)


def test_hold_back_lesions_marks_the_rest_ignored():
    case = two_lesion_case()

    cases, kept, total = hold_back_lesions([case], 0.5, np.random.default_rng(0))

    assert (kept, total) == (1, 2)
    label = cases[0].label
    assert (label == 2).sum() == 600
    assert (label == IGNORE_LABEL).sum() == 600
    assert (case.label == 2).sum() == 1200


def copy_model(exported, folder, task):
    """Copy an exported model of ``task`` and its card into ``folder``; skip for the other task."""
    _, metadata, model_path, _ = exported
    if metadata.task != task:
        pytest.skip(f"this post-processing applies to {task} models")
    copy = folder / model_path.name
    copy.write_bytes(model_path.read_bytes())
    card_path_for(copy).write_bytes(card_path_for(model_path).read_bytes())
    return copy


def test_postprocessing_update_keeps_model_loadable(exported, tmp_path):
    copy = copy_model(exported, tmp_path, "tumour")

    set_postprocessing(copy, threshold=0.4, min_component_mm3=250.0, source="a test")

    loaded = load_model(copy, threads=1)
    assert loaded.metadata.threshold == 0.4
    assert loaded.metadata.min_component_mm3 == 250.0
    assert loaded.metadata.provenance["postprocessing_source"] == "a test"
    assert json.loads(card_path_for(copy).read_text())["metadata"]["threshold"] == 0.4


def test_postprocessing_update_rejects_invalid_threshold(exported, tmp_path):
    copy = copy_model(exported, tmp_path, "tumour")
    original = copy.read_bytes()

    with pytest.raises(ModelError, match="threshold"):
        set_postprocessing(copy, threshold=1.5, min_component_mm3=0.0, source="a test")

    assert copy.read_bytes() == original


def test_liver_boundary_update_keeps_model_loadable(exported, tmp_path):
    copy = copy_model(exported, tmp_path, "liver")

    set_liver_boundary(copy, None)
    assert load_model(copy, threads=1).metadata.boundary is None

    set_liver_boundary(copy, LIVER_BOUNDARY)
    loaded = load_model(copy, threads=1)
    assert loaded.metadata.boundary == LIVER_BOUNDARY
    assert json.loads(card_path_for(copy).read_text())["metadata"]["boundary"]["reach_mm"] == 5.0


def test_liver_accuracy_goes_into_card_only(exported, tmp_path):
    _, metadata, model_path, _ = exported
    copy = tmp_path / model_path.name
    copy.write_bytes(model_path.read_bytes())
    card_path_for(copy).write_bytes(card_path_for(model_path).read_bytes())
    results_dir = REPO_ROOT / "benchmarks" / "results"
    results = json.loads((results_dir / "liver_loco_steps3000.json").read_text())

    if metadata.task != "liver":
        with pytest.raises(ValueError, match="Give --liver-loco a liver model"):
            set_liver_accuracy(copy, results, results_name="liver_loco_steps3000.json")
        return
    set_liver_accuracy(copy, results, results_name="liver_loco_steps3000.json")

    card = json.loads(card_path_for(copy).read_text())
    entry = card["accuracy"]["liver_loco"]
    assert entry["liver_dice"]["mean"] == pytest.approx(0.934, abs=5e-4)
    assert entry["liver_dice_per_case"]["ircadb_01"] == pytest.approx(0.93, abs=0.01)
    assert entry["budget_per_fold"] == "3000 optimiser steps"
    assert copy.read_bytes() == model_path.read_bytes()
    assert load_model(copy, threads=1).metadata.task == "liver"


@pytest.mark.parametrize(
    "results",
    [
        [],
        {"task": "tumour"},
        {"task": "liver", "summary": {"liver_dice": 0.93}, "cases": [], "command": "x", "steps": 1},
    ],
    ids=["list", "tumour-result", "dice-not-summary"],
)
def test_invalid_liver_result_leaves_card(exported, tmp_path, results):
    copy = copy_model(exported, tmp_path, "liver")
    card_before = card_path_for(copy).read_bytes()

    with pytest.raises(ValueError, match="is not a liver leave-one-case-out result"):
        set_liver_accuracy(copy, results, results_name="given.json")

    assert card_path_for(copy).read_bytes() == card_before


@pytest.mark.parametrize("task", ["liver", "tumour"])
def test_set_tiles_windowed_model(task, tmp_path):
    torch.manual_seed(0)
    network = NETWORKS[task]().eval()
    metadata = replace(small_metadata(task), tile_max_vox=None)
    model_path = tmp_path / f"{task}.onnx"
    export_with_card(network, metadata, model_path)

    tile_max_vox, _ = set_tiles(model_path)

    loaded = load_model(model_path, threads=1)
    assert loaded.metadata.tile_max_vox == tile_max_vox == small_metadata(task).tile_max_vox
    rng = np.random.default_rng(3)
    inputs = [rng.normal(size=(1, 1, 24, 40, 48)).astype(np.float32) for _ in metadata.input_names]
    with torch.no_grad():
        expected = network(*(torch.from_numpy(batch) for batch in inputs)).numpy()
    np.testing.assert_allclose(loaded.predict(inputs), expected, atol=LOGIT_TOLERANCE, rtol=0)


def test_tiled_model_wrong_multiples_rejected(exported, tmp_path):
    _, metadata, model_path, _ = exported
    if metadata.tile_max_vox is None:
        pytest.skip("tiled models only")
    model = onnx.load(str(model_path))
    wrong = replace(metadata, tile_multiple_vox=(1, 1, 1), tile_max_vox=(97, 193, 193))
    next(entry for entry in model.metadata_props if entry.key == METADATA_KEY).value = wrong.to_json()
    copy = tmp_path / model_path.name
    onnx.save(model, str(copy))
    card = json.loads(card_path_for(model_path).read_text())
    card_path_for(copy).write_text(json.dumps({**card, "sha256": sha256_of_file(copy)}))

    with pytest.raises(ModelError, match="does not run on a"):
        load_model(copy, threads=1)


def test_surface_share_places_lesions_at_surface():
    case = two_lesion_case()
    statistics = measure_lesions([case], case.spacing_zyx_mm)
    metadata = tumour_metadata({}, response_scale=1.0)
    liver = case.label > 0
    depth_mm = ndimage.distance_transform_edt(liver, sampling=case.spacing_zyx_mm)

    for share in (0.0, 1.0):
        changed = insert_lesions(
            case, statistics, metadata, count=2, rng=np.random.default_rng(0), surface_share=share
        )

        # Surface lesions reach the outermost liver voxels, deep ones stay about 5 mm below them.
        new_tumour = (changed.label == 2) & (case.label != 2)
        assert new_tumour.sum() > 50
        shallowest_mm = depth_mm[new_tumour].min()
        assert shallowest_mm < 2.0 if share else shallowest_mm > 4.0
        assert ((changed.label > 0) == liver).all()


def test_surface_share_out_of_range_rejected():
    with pytest.raises(ValueError, match="surface_share"):
        DataOptions(surface_share=-0.1)


def test_scale_recipe_widens_hessian_context():
    default = tumour_metadata({}, response_scale=1.0).hessian
    wider = tumour_metadata({}, response_scale=1.0, scales_mm=(*default.scales_mm, 24.0)).hessian

    assert wider.scales_mm == (3.0, 6.0, 12.0, 24.0)
    assert wider.context_mm > default.context_mm
    assert RECIPES["tumour-scale-24"].hessian_scales_mm == wider.scales_mm
