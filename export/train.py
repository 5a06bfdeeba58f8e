"""Train the liver and tumour networks under a wall-time budget and export them to ONNX.

Usage::

    python -m export.train --out models/ [--cases DIR] [--task liver|tumour|both]
        [--exclude CASE ...] [--seed 0] [--minutes M | --steps N] [--cache DIR] [--threads 2]
        [--synthetic-copies 2] [--lesion-fraction 1.0]

Each model is trained from a fixed seed for a fixed wall time (or, with ``--steps``, a fixed
number of optimiser steps), then exported with its metadata (``export.contract``) and a model
card. Under a wall-time budget the number of steps, and so the weights, depend on the speed and
load of the machine. The card records the steps taken.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from export.contract import (
    INTENDED_USE,
    LIVER_FILE_STEM,
    TUMOUR_FILE_STEM,
    TUMOUR_HESSIAN_SCALES_MM,
    licences_for,
    liver_metadata,
    tumour_metadata,
)
from export.data import (
    IGNORE_LABEL,
    REPO_ROOT,
    TUMOUR_LABEL,
    Augmentation,
    CaseFiles,
    PatchMix,
    PatchSampler,
    PreparedCase,
    default_cache_dir,
    default_data_dir,
    find_cases,
    measure_response_scale,
    prepare_case,
)
from export.networks import LiverNet, MHPNet, PlainUNet, count_parameters, multiply_accumulates_per_voxel
from export.onnx_export import export_onnx, write_card
from export.synthetic import insert_lesions, measure_lesions
from mhp_edge.metadata import ModelMetadata

logger = logging.getLogger(__name__)

TASKS = ("liver", "tumour")
TUMOUR_ABLATIONS = ("tumour-no-hessian", "tumour-plain-unet")
RESPONSE_PERCENTILE = 99.0


@dataclass(frozen=True)
class Recipe:
    """Settings of one model's training run.

    Attributes
    ----------
    task : str
        ``"liver"`` or ``"tumour"``: the metadata task.
    file_stem : str
        Output file name without ``.onnx``.
    build_network : callable
        Returns an untrained network.
    architecture : str
        One-line description for the model card.
    default_minutes : float
        Training wall time when ``--minutes`` is not given.
    patch_shape_vox : tuple of 3 ints
        (z, y, x) training patch shape.
    mix : PatchMix
    augmentation : Augmentation
    batch_size : int
    learning_rate : float
        Peak AdamW learning rate.
    uses_hessian : bool
        Tumour recipes only: whether the network reads the Hessian input.
    model_name : str
        Name written into the metadata.
    liver_median_hu : float, optional
        Tumour recipes only: the liver median HU that the crop around the liver is shifted to
        (``ModelMetadata.liver_median_hu``). None keeps the HU as scanned.
    hessian_scales_mm : tuple of float
        Tumour recipes only: Gaussian standard deviations of the Hessian input, mm.
    """

    task: str
    file_stem: str
    build_network: Callable[[], nn.Module]
    architecture: str
    default_minutes: float
    patch_shape_vox: tuple[int, int, int]
    mix: PatchMix
    augmentation: Augmentation
    batch_size: int = 2
    learning_rate: float = 3e-3
    uses_hessian: bool = True
    model_name: str = ""
    liver_median_hu: float | None = None
    hessian_scales_mm: tuple[float, ...] = TUMOUR_HESSIAN_SCALES_MM


_TUMOUR_AUGMENTATION = Augmentation(
    flip_axes=(0, 1, 2),
    rotate_in_plane=True,
    zoom=(0.85, 1.15),
    hu_scale=(0.9, 1.1),
    hu_shift=(-20.0, 20.0),
    noise_hu=(0.0, 20.0),
)
_TUMOUR_MIX = PatchMix(lesion=0.5, liver=0.2, surface=0.15, synthetic=0.4)


def _tumour_recipe(**fields: Any) -> Recipe:
    """Return a tumour recipe: the shared budget, patches, sampling and augmentation, plus ``fields``."""
    shared = dict(
        task="tumour",
        # The shipped model's budget: with about 20 s of preprocessing, the tumour model took
        # 8.8 minutes on one thread of a 2-core machine.
        default_minutes=8.5,
        patch_shape_vox=(32, 64, 64),
        mix=_TUMOUR_MIX,
        augmentation=_TUMOUR_AUGMENTATION,
        batch_size=4,
    )
    return Recipe(**{**shared, **fields})


_LIVER_RECIPE = Recipe(
    task="liver",
    file_stem=LIVER_FILE_STEM,
    # Batch norm, unlike instance norm, does not rescale each window, so the liver found does
    # not depend on where the windows fall. Leave-one-case-out liver Dice 0.895 against 0.874
    # (benchmarks/results/liver_loco.md and liver_loco_instance_norm.md).
    build_network=lambda: LiverNet(norm="batch"),
    architecture=(
        "LiverNet: strided 3x3x3 conv stem (16 channels, stride 2), 3-level 3D U-Net of "
        "16/32/64 channels at 8x6x6 mm and coarser, transposed-conv upsampling, concatenated "
        "skips, batch norm, leaky ReLU, 1x1x1 conv to one logit, trilinear upsampling x2"
    ),
    # Leave-one-case-out liver Dice rose from 0.895 at 4 min to 0.913 at 12 min on one thread, and
    # the liver model has no training-time limit of its own (benchmarks/results/liver_loco_12min.md).
    # The shipped model's 2998 steps (12 min on two threads) gave 0.934 with the boundary
    # refinement, folds of 3000 steps (benchmarks/results/liver_loco_steps3000.md).
    default_minutes=12.0,
    patch_shape_vox=(32, 96, 96),
    # No flips: the liver lies on the patient's right, and flipped anatomy would teach the
    # network to accept a liver on either side.
    mix=PatchMix(lesion=0.0, liver=0.5, surface=0.25),
    # Body size, contrast phase and scanner noise vary between hospitals. The median liver
    # HU of the labelled cases ranges from 46 to 112, and their image noise severalfold.
    augmentation=Augmentation(
        zoom=(0.85, 1.15),
        hu_scale=(0.9, 1.1),
        hu_shift=(-30.0, 30.0),
        noise_hu=(0.0, 15.0),
    ),
    batch_size=4,
    model_name="liver-net",
)


_TUMOUR_RECIPE = _tumour_recipe(
    file_stem=TUMOUR_FILE_STEM,
    build_network=MHPNet,
    architecture=(
        "MHPNet: two full-resolution stems (3x3x3 conv, 4 channels each) on the CT and on its "
        "multi-scale Hessian blob response, a strided block (1x2x2) to 16 channels at 2.5 mm, "
        "a 3-level 3D U-Net of 16/32/64 channels there, transposed-conv back to full "
        "resolution, concatenation with the stems, one 3x3x3 block of 8 channels, batch norm, "
        "leaky ReLU, 1x1x1 conv to one logit"
    ),
    model_name="mhp-net",
)


RECIPES = {
    "liver": _LIVER_RECIPE,
    "liver-instance-norm": replace(
        _LIVER_RECIPE,
        build_network=LiverNet,
        architecture=_LIVER_RECIPE.architecture.replace("batch norm", "instance norm"),
        model_name="liver-net-instance-norm",
    ),
    "liver-fine-head": replace(
        _LIVER_RECIPE,
        build_network=lambda: LiverNet(norm="batch", fine_head=True),
        architecture=_LIVER_RECIPE.architecture.replace(
            "trilinear upsampling x2",
            "transposed conv back to 4x3x3 mm (4 channels), concatenated with a full-resolution "
            "3x3x3 conv stem (4 channels), one 3x3x3 block of 8 channels, 1x1x1 conv to one logit",
        ).replace(", 1x1x1 conv to one logit, transposed", ", transposed"),
        model_name="liver-net-fine-head",
    ),
    # Tried and not adopted: a fifth of the patches centred on lesions. Its ircadb_01 fold still
    # left 37 % of the tumour voxels outside the liver (40 % without), and the radctt_0697 fold's
    # liver Dice fell from 0.924 to 0.888 (3000 steps per fold).
    "liver-lesion-patches": replace(
        _LIVER_RECIPE,
        mix=PatchMix(lesion=0.2, liver=0.3, surface=0.25),
        model_name="liver-net-lesion-patches",
    ),
    "tumour": _TUMOUR_RECIPE,
    # The labelled cases' liver medians range from 46 to 113 HU, their lesion medians from 56 to
    # 83 HU. This recipe shows the network each scan as if its liver were at 100 HU. The HU
    # augmentation applies after the shift, so training patches show liver medians of about 70-130 HU.
    "tumour-liver-hu": replace(
        _TUMOUR_RECIPE,
        file_stem="mhp_net_liver_hu",
        model_name="mhp-net-liver-hu",
        liver_median_hu=100.0,
    ),
    # Lesions of the labelled cases reach 54 mm across. The scale-normalised response to a ball of
    # radius r peaks near sigma = r / sqrt(3), 16 mm for a 54 mm lesion, beyond the 12 mm scale.
    "tumour-scale-24": replace(
        _TUMOUR_RECIPE,
        file_stem="mhp_net_scale_24",
        model_name="mhp-net-scale-24",
        hessian_scales_mm=(*TUMOUR_HESSIAN_SCALES_MM, 24.0),
    ),
    "tumour-no-hessian": _tumour_recipe(
        file_stem="mhp_net_no_hessian",
        build_network=lambda: MHPNet(hessian=False),
        architecture="MHPNet without the Hessian input: the CT stem has all 8 channels",
        uses_hessian=False,
        model_name="mhp-net-no-hessian",
    ),
    "tumour-plain-unet": _tumour_recipe(
        file_stem="plain_unet",
        build_network=PlainUNet,
        architecture=(
            "PlainUNet: 3x3x3 conv stem (16 channels) at full resolution, 3-level 3D U-Net of "
            "16/32/64 channels (strides 1x2x2 then 2x2x2) on the CT alone, batch norm"
        ),
        uses_hessian=False,
        model_name="plain-unet",
    ),
}


@dataclass(frozen=True)
class DataOptions:
    """Extra training data beyond the labelled cases: synthetic lesions and held-back lesions.

    Attributes
    ----------
    synthetic_copies : int
        Tumour recipes: copies of each training case with synthetic lesions added
        (``export.synthetic``). 0 trains on the real lesions only.
    synthetic_lesions : int
        Synthetic lesions placed in each copy.
    lesion_fraction : float
        Share of the real training lesions that keep their label; the others become
        ``IGNORE_LABEL`` (no loss, never sampled). 1.0 uses all lesions. The learning-curve
        ablation uses about half.
    hyperdense_share : float, optional
        Share of synthetic lesions made brighter than the liver, whatever the real lesions'
        contrasts are. None copies the sign of a real lesion's contrast.
    surface_share : float
        Share of synthetic lesions placed so that the liver's surface cuts them. 0 keeps every
        lesion at least its radius plus 5 mm deep.
    """

    synthetic_copies: int = 2
    synthetic_lesions: int = 3
    lesion_fraction: float = 1.0
    hyperdense_share: float | None = None
    surface_share: float = 0.0

    def __post_init__(self):
        if self.synthetic_copies < 0 or self.synthetic_lesions < 0:
            raise ValueError(f"Synthetic counts must be >= 0, got {self}.")
        if not 0 < self.lesion_fraction <= 1:
            raise ValueError(f"lesion_fraction must be in (0, 1], got {self.lesion_fraction}.")
        if self.hyperdense_share is not None and not 0 <= self.hyperdense_share <= 1:
            raise ValueError(f"hyperdense_share must be in [0, 1] or None, got {self.hyperdense_share}.")
        if not 0 <= self.surface_share <= 1:
            raise ValueError(f"surface_share must be in [0, 1], got {self.surface_share}.")


@dataclass(frozen=True)
class Budget:
    """How long to train: a wall time in seconds or a number of optimiser steps, not both.

    A wall-time budget keeps training time fixed, so the step count depends on the speed and
    load of the machine. A step budget makes two runs with one seed take the same steps on
    any machine, so it suits comparisons such as leave-one-case-out.
    """

    seconds: float | None = None
    steps: int | None = None

    def __post_init__(self):
        if (self.seconds is None) == (self.steps is None):
            raise ValueError(f"Give exactly one of seconds and steps, got {self}.")
        if (self.seconds is not None and self.seconds <= 0) or (self.steps is not None and self.steps < 1):
            raise ValueError(f"Budget must be positive, got {self}.")

    def fraction(self, step: int, elapsed_s: float) -> float:
        """Return the fraction of the budget used after ``step`` steps and ``elapsed_s`` seconds."""
        if self.steps is not None:
            return step / self.steps
        return elapsed_s / self.seconds

    def describe(self) -> str:
        """Return the budget as text, such as ``"240 s"`` or ``"466 steps"``."""
        return f"{self.steps} steps" if self.steps is not None else f"{self.seconds:g} s"


@dataclass(frozen=True)
class TrainingRecord:
    """Outcome of one training run: steps taken, wall time in seconds, final loss."""

    steps: int
    wall_time_s: float
    final_loss: float


def dice_bce_loss(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Compute binary cross-entropy plus soft Dice loss over the whole batch.

    The Dice term is pooled over all patches of the batch, so a batch that happens to hold
    no foreground still gives a defined loss, and small tumours weigh as much as their overlap.

    Parameters
    ----------
    logits, target : Tensor of shape (N, 1, Z, Y, X), float32
        Network output and 0/1 target.
    weight : Tensor of shape (N, 1, Z, Y, X), float32, optional
        0 on voxels that must not count (ignored lesions), else 1.
    """
    if weight is None:
        weight = torch.ones_like(target)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="sum")
    cross_entropy = cross_entropy / weight.sum().clamp(min=1)
    probability = torch.sigmoid(logits) * weight
    overlap = (probability * target).sum()
    dice = (2 * overlap + 1) / (probability.sum() + (target * weight).sum() + 1)
    return cross_entropy + (1 - dice)


def learning_rate_at(fraction: float, peak: float) -> float:
    """Return the learning rate at a fraction of the time budget.

    Linear warm-up from 10 % to 100 % of ``peak`` over the first 5 % of the budget, then a
    cosine decay to 2 % of ``peak`` at the end.
    """
    fraction = min(max(fraction, 0.0), 1.0)
    warmup = 0.05
    if fraction < warmup:
        return peak * (0.1 + 0.9 * fraction / warmup)
    progress = (fraction - warmup) / (1 - warmup)
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


def fit(
    network: nn.Module,
    sampler: PatchSampler,
    *,
    budget: Budget,
    batch_size: int,
    learning_rate: float,
    label: str,
) -> TrainingRecord:
    """Train a network on sampled patches until the budget is spent.

    At least one step is taken. Progress is printed about every 15 s.

    Parameters
    ----------
    network : torch.nn.Module
    sampler : PatchSampler
    budget : Budget
        Wall time or step count. The learning-rate schedule follows the fraction used.
    batch_size : int
    learning_rate : float
        Peak AdamW learning rate.
    label : str
        Prefix of the progress lines.
    """
    # Channels-last 3D tensors let oneDNN vectorise over channels: about 25 % faster steps on
    # this CPU (measured on MHPNet, one thread). The network is back in the default layout
    # after training, for export.
    network = network.to(memory_format=torch.channels_last_3d)
    optimiser = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    network.train()
    recent_losses: list[float] = []
    start = time.monotonic()
    last_report = start
    step = 0

    while step == 0 or budget.fraction(step, time.monotonic() - start) < 1:
        fraction = budget.fraction(step, time.monotonic() - start)
        for group in optimiser.param_groups:
            group["lr"] = learning_rate_at(fraction, learning_rate)

        inputs, target, weight = sampler.sample(batch_size)
        logits = network(
            *(torch.from_numpy(array).to(memory_format=torch.channels_last_3d) for array in inputs)
        )
        loss = dice_bce_loss(logits, torch.from_numpy(target), torch.from_numpy(weight))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(network.parameters(), max_norm=5.0)
        optimiser.step()

        step += 1
        recent_losses = (recent_losses + [loss.item()])[-20:]
        now = time.monotonic()
        if now - last_report >= 15:
            print(
                f"[{label}] step {step:5d}  {now - start:6.1f} s  of {budget.describe()}  "
                f"loss {np.mean(recent_losses):.4f}  lr {optimiser.param_groups[0]['lr']:.2e}",
                flush=True,
            )
            last_report = now

    network.to(memory_format=torch.contiguous_format).eval()
    wall_time_s = time.monotonic() - start
    return TrainingRecord(step, wall_time_s, float(np.mean(recent_losses)))


def export_commit() -> dict[str, Any]:
    """Return the git commit of the repository and whether export/ or mhp_edge/ has changes.

    The commit is ``"uncommitted"`` when the repository has no commit or git is unavailable.
    """

    def git(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "-C", str(REPO_ROOT), *arguments], capture_output=True, text=True, check=False
        )

    try:
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--", "export", "mhp_edge")
    except OSError:
        return {"export_commit": "uncommitted", "export_tree_dirty": True}
    commit = head.stdout.strip() if head.returncode == 0 else "uncommitted"
    dirty = status.returncode != 0 or bool(status.stdout.strip())
    return {"export_commit": commit, "export_tree_dirty": dirty}


def base_provenance(case_ids: list[str], seed: int) -> dict[str, Any]:
    """Collect the provenance fields known before training."""
    return {
        "training_cases": case_ids,
        "seed": seed,
        **export_commit(),
        "torch_version": torch.__version__,
        "onnx_version": onnx.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def build_metadata(recipe: Recipe, cases: Sequence[CaseFiles], cache_dir: Path) -> tuple[ModelMetadata, list]:
    """Preprocess the cases for a recipe and build the metadata that training uses.

    For tumour models the Hessian response scale is measured on these cases first.

    Returns
    -------
    metadata : ModelMetadata
        With empty provenance.
    prepared : list of PreparedCase
    """
    if recipe.task == "liver":
        metadata = liver_metadata({})
        return metadata, [prepare_case(case, metadata, cache_dir=cache_dir) for case in cases]

    unscaled = tumour_metadata(
        {}, response_scale=1.0, liver_median_hu=recipe.liver_median_hu, scales_mm=recipe.hessian_scales_mm
    )
    prepared = [prepare_case(case, unscaled, cache_dir=cache_dir) for case in cases]
    scale = measure_response_scale(prepared, percentile=RESPONSE_PERCENTILE)
    logger.info("Hessian response scale: %.3g (%gth percentile in the liver)", scale, RESPONSE_PERCENTILE)
    metadata = tumour_metadata(
        {},
        response_scale=scale,
        uses_hessian=recipe.uses_hessian,
        name=recipe.model_name,
        liver_median_hu=recipe.liver_median_hu,
        scales_mm=recipe.hessian_scales_mm,
    )
    return metadata, prepared


def hold_back_lesions(
    prepared: Sequence[PreparedCase], fraction: float, rng: np.random.Generator
) -> tuple[list[PreparedCase], int, int]:
    """Relabel all but a random share of the lesions as ``IGNORE_LABEL``.

    Returns
    -------
    cases : list of PreparedCase
        Copies where a label changed, the originals elsewhere.
    kept, total : int
        Lesions that keep their label, and lesions in all.
    """
    components = [ndimage.label(case.label == TUMOUR_LABEL) for case in prepared]
    lesions = [
        (index, lesion) for index, (_, count) in enumerate(components) for lesion in range(1, count + 1)
    ]
    kept = set()
    if lesions:
        keep_count = max(1, int(round(fraction * len(lesions))))
        kept = {lesions[i] for i in rng.choice(len(lesions), size=keep_count, replace=False)}

    cases = []
    for index, case in enumerate(prepared):
        labelled, count = components[index]
        dropped = [lesion for lesion in range(1, count + 1) if (index, lesion) not in kept]
        if not dropped:
            cases.append(case)
            continue
        label = case.label.copy()
        label[np.isin(labelled, dropped)] = IGNORE_LABEL
        cases.append(replace(case, label=label))
    return cases, len(kept), len(lesions)


def add_synthetic_copies(
    prepared: Sequence[PreparedCase], metadata: ModelMetadata, options: DataOptions, rng: np.random.Generator
) -> list[PreparedCase]:
    """Return ``options.synthetic_copies`` copies of each case with synthetic lesions added."""
    if options.synthetic_copies == 0 or options.synthetic_lesions == 0:
        return []
    spec = metadata.hessian or tumour_metadata({}, response_scale=1.0).hessian
    hessian_metadata = replace(metadata, hessian=spec)
    statistics = measure_lesions(prepared, metadata.spacing_zyx_mm)
    logger.info(
        "Synthetic lesions from %d real ones: diameters %.0f-%.0f mm, contrasts %.0f to %.0f HU",
        len(statistics.diameters_mm),
        min(statistics.diameters_mm),
        max(statistics.diameters_mm),
        min(statistics.contrasts_hu),
        max(statistics.contrasts_hu),
    )
    return [
        insert_lesions(
            case,
            statistics,
            hessian_metadata,
            count=options.synthetic_lesions,
            rng=rng,
            hyperdense_share=options.hyperdense_share,
            surface_share=options.surface_share,
        )
        for _ in range(options.synthetic_copies)
        for case in prepared
    ]


def train_and_export(
    recipe: Recipe,
    cases: Sequence[CaseFiles],
    *,
    out_dir: Path,
    cache_dir: Path,
    seed: int,
    budget: Budget,
    options: DataOptions = DataOptions(),
) -> Path:
    """Train one model from a fixed seed, export it to ``out_dir`` and write its card.

    Returns
    -------
    Path
        The exported ``.onnx`` file.
    """
    case_ids = [case.case_id for case in cases]
    provenance = base_provenance(case_ids, seed)
    prepare_start = time.monotonic()
    metadata, prepared = build_metadata(recipe, cases, cache_dir)
    rng = np.random.default_rng(seed)
    data_notes: dict[str, Any] = {}
    if recipe.task == "tumour":
        prepared, kept, total = hold_back_lesions(prepared, options.lesion_fraction, rng)
        synthetic = add_synthetic_copies(prepared, metadata, options, rng)
        prepared = [*prepared, *synthetic]
        data_notes = {
            "training_lesions": kept,
            "lesions_held_back": total - kept,
            "synthetic_copies": options.synthetic_copies if synthetic else 0,
            "synthetic_lesions_per_copy": options.synthetic_lesions if synthetic else 0,
        }
        if synthetic and options.hyperdense_share is not None:
            data_notes["synthetic_hyperdense_share"] = options.hyperdense_share
        if synthetic and options.surface_share:
            data_notes["synthetic_surface_share"] = options.surface_share
    preprocessing_s = time.monotonic() - prepare_start
    print(f"[{recipe.task}] {len(prepared)} volumes ready in {preprocessing_s:.1f} s", data_notes, flush=True)

    torch.manual_seed(seed)
    sampler = PatchSampler(
        prepared,
        metadata,
        patch_shape_vox=recipe.patch_shape_vox,
        mix=recipe.mix,
        augmentation=recipe.augmentation,
        rng=rng,
    )
    network = recipe.build_network()
    record = fit(
        network,
        sampler,
        budget=budget,
        batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        label=recipe.model_name,
    )
    print(
        f"[{recipe.model_name}] trained {record.steps} steps in {record.wall_time_s:.1f} s, "
        f"final loss {record.final_loss:.4f}",
        flush=True,
    )

    provenance.update(
        training_budget=budget.describe(),
        training_wall_time_s=round(record.wall_time_s, 1),
        preprocessing_wall_time_s=round(preprocessing_s, 1),
        training_steps=record.steps,
        batch_size=recipe.batch_size,
        final_training_loss=round(record.final_loss, 4),
        threads=torch.get_num_threads(),
        training_patch_vox=list(recipe.patch_shape_vox),
        **data_notes,
    )
    if metadata.hessian is not None:
        provenance["hessian_response_scale_rule"] = (
            f"{RESPONSE_PERCENTILE:g}th percentile of |blob response| inside the reference "
            "liver of the training cases, 2 significant digits"
        )
    metadata = replace(metadata, provenance=provenance)

    model_path = Path(out_dir) / f"{recipe.file_stem}.onnx"
    export_onnx(network, metadata, model_path)
    write_card(
        model_path,
        metadata,
        architecture=describe(recipe, network, metadata),
        parameters=count_parameters(network),
        training_cases=case_ids,
        licences=licences_for(case_ids),
        intended_use=INTENDED_USE,
    )
    print(f"[{recipe.task}] wrote {model_path}", flush=True)
    return model_path


def describe(recipe: Recipe, network: nn.Module, metadata: ModelMetadata) -> str:
    """Return the card's architecture text with parameter and multiply-accumulate counts."""
    example = [torch.zeros(1, 1, *metadata.patch_shape_vox) for _ in metadata.input_names]
    macs = multiply_accumulates_per_voxel(network, *example)
    return (
        f"{recipe.architecture}. {count_parameters(network):,} parameters, "
        f"{macs / 1000:.1f} k convolution multiply-accumulates per voxel."
    )


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line of ``python -m export.train``."""
    parser = argparse.ArgumentParser(prog="python -m export.train", description=__doc__.split("\n\n")[0])

    parser.add_argument(
        "--cases",
        type=Path,
        default=None,
        help="folder of <case>_ct.nii.gz and <case>_label.nii.gz files "
        "(default: $MHP_EDGE_DATA/cases, else ../shared/data/cases beside the repo)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder for .onnx and cards")
    parser.add_argument(
        "--task",
        choices=(*TASKS, "both", *TUMOUR_ABLATIONS),
        default="both",
        help="model(s) to train; the tumour-* choices are the ablation baselines",
    )
    parser.add_argument(
        "--synthetic-copies",
        type=int,
        default=DataOptions().synthetic_copies,
        help="tumour models: copies of each case with synthetic lesions (0 = real lesions only)",
    )
    parser.add_argument(
        "--lesion-fraction",
        type=float,
        default=1.0,
        help="tumour models: share of the real lesions that keep their label (learning curve)",
    )
    parser.add_argument("--exclude", nargs="*", default=[], metavar="CASE", help="case ids to leave out")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and patch sampling")
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training wall time per model in minutes (default: 2 for liver, 6 for tumour)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train each model for this many optimiser steps instead of a wall time",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="cache folder for preprocessed cases (default: $MHP_EDGE_CACHE, else ~/.cache/mhp-edge)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")

    arguments = parser.parse_args(argv)
    if arguments.minutes is not None and arguments.minutes <= 0:
        parser.error(f"--minutes must be > 0, got {arguments.minutes}")
    if arguments.steps is not None and arguments.steps < 1:
        parser.error(f"--steps must be >= 1, got {arguments.steps}")
    if arguments.steps is not None and arguments.minutes is not None:
        parser.error("give --minutes or --steps, not both")
    if arguments.threads < 1:
        parser.error(f"--threads must be >= 1, got {arguments.threads}")
    if arguments.synthetic_copies < 0:
        parser.error(f"--synthetic-copies must be >= 0, got {arguments.synthetic_copies}")
    if not 0 < arguments.lesion_fraction <= 1:
        parser.error(f"--lesion-fraction must be in (0, 1], got {arguments.lesion_fraction}")
    return arguments


def configure_logging() -> None:
    """Log INFO from mhp-edge and this package, and only warnings from torch and onnxscript."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("export", "mhp_edge", "__main__"):
        logging.getLogger(name).setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    configure_logging()
    torch.set_num_threads(arguments.threads)

    cases_dir = arguments.cases or default_data_dir() / "cases"
    cache_dir = arguments.cache or default_cache_dir()
    try:
        cases = find_cases(cases_dir, exclude=arguments.exclude)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Training on {len(cases)} cases: {', '.join(case.case_id for case in cases)}", flush=True)

    tasks = TASKS if arguments.task == "both" else (arguments.task,)
    options = DataOptions(
        synthetic_copies=arguments.synthetic_copies, lesion_fraction=arguments.lesion_fraction
    )
    total_start = time.monotonic()
    for task in tasks:
        recipe = RECIPES[task]
        if arguments.steps is not None:
            budget = Budget(steps=arguments.steps)
        else:
            minutes = arguments.minutes if arguments.minutes is not None else recipe.default_minutes
            budget = Budget(seconds=minutes * 60)
        train_and_export(
            recipe,
            cases,
            out_dir=arguments.out,
            cache_dir=cache_dir,
            seed=arguments.seed,
            budget=budget,
            options=options,
        )
    print(f"Done in {time.monotonic() - total_start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
