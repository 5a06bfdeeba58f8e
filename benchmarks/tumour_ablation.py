"""Tumour-model ablations under leave-one-case-out, with post-processing chosen by validation.

Run from the repository root::

    python -m benchmarks.tumour_ablation [--variants NAME ...] [--minutes 3 | --steps 800] [--jobs 2]
        [--threads 1] [--cases DIR] [--work DIR] [--out benchmarks/results] [--seed 0]
        [--name tumour_ablation]

For every variant and every labelled case that has tumours, a tumour model is trained on the
other cases (tumour-free ones included) for the same budget: a wall time, or with ``--steps`` a
number of optimiser steps. The held-out scan's tumour probability is then computed through the
runtime (``Segmenter.tumour_probability``) inside the reference liver. So the numbers measure
the tumour stage alone; ``benchmarks/loco.py`` measures the whole pipeline with the liver model.

Post-processing is chosen by validation, never on the case it is scored on. For each held-out
case, the threshold and the minimum lesion volume are those that give the best mean tumour
Dice over the other held-out cases' probabilities among the pairs with at most one false
positive per scan on those cases (ties: fewer false positives). The values
for a model trained on all cases are the best over all held-out cases of its variant
(``chosen_on_all``). ``export.postprocessing`` writes them into that model, and
``export/contract.py`` contains them as the recipe's defaults.

Variants (``--variants``, default all):

- ``mhp-net``: the shipped recipe, CT and Hessian inputs, synthetic lesions;
- ``mhp-net-real-only``: the same without synthetic lesions;
- ``mhp-net-hyperdense``: ``mhp-net`` with 30 % of the synthetic lesions brighter than the liver,
  whatever the real lesions' contrasts;
- ``mhp-net-surface``: ``mhp-net`` with half of the synthetic lesions cut by the liver's surface;
- ``mhp-net-scale-24``: ``mhp-net`` with a fourth Hessian scale of 24 mm;
- ``mhp-net-liver-hu``: ``mhp-net`` with each crop shifted so that its liver median is 100 HU;
- ``no-hessian``: the same network and data without the Hessian input (ablation b);
- ``plain-unet``: a plain small 3D U-Net on the CT (ablation c);
- ``mhp-net-half-lesions``: ``mhp-net`` with half of the real training lesions (ablation d).

Folds run ``--jobs`` at a time, each with one torch thread; every fold keeps its probability
map in ``--work``, so a rerun only trains the folds that are missing. Wall-time budgets give
fewer steps on a loaded machine, so the table lists the steps each fold took.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from benchmarks.common import (
    add_fold_arguments,
    budget_text,
    check_fold_arguments,
    run_folds,
    write_result_files,
)
from export.data import REPO_ROOT, CaseFiles, default_cache_dir, default_data_dir, find_cases
from export.train import RECIPES, Budget, DataOptions, configure_logging, train_and_export
from mhp_edge.evaluate import evaluate_masks
from mhp_edge.io import read_image
from mhp_edge.metadata import card_path_for
from mhp_edge.pipeline import LIVER_MODEL_FILE, TUMOUR_MODEL_FILE, Segmenter, postprocess_tumour

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
# At most 500 mm^3, below the 524 mm^3 of a 10 mm sphere: post-processing may never drop the
# lesions of 10 mm and more that the recall target covers.
MIN_LESION_MM3 = (0.0, 50.0, 100.0, 250.0, 500.0)
# Lower thresholds keep raising Dice a little while adding false positives, so the choice is
# limited to the pairs that keep the validation cases within the product's false-positive target.
MAX_FALSE_POSITIVES_PER_SCAN = 1.0


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: a training recipe and its data options."""

    recipe: str
    options: DataOptions
    description: str


VARIANTS = {
    "mhp-net": Variant("tumour", DataOptions(), "MHP-Net, CT + Hessian, synthetic lesions (shipped recipe)"),
    "mhp-net-real-only": Variant(
        "tumour", DataOptions(synthetic_copies=0), "MHP-Net without synthetic lesions"
    ),
    "mhp-net-hyperdense": Variant(
        "tumour",
        DataOptions(hyperdense_share=0.3),
        "MHP-Net, synthetic lesions of either sign, 30 % brighter than the liver",
    ),
    "mhp-net-surface": Variant(
        "tumour",
        DataOptions(surface_share=0.5),
        "MHP-Net, half of the synthetic lesions cut by the liver's surface",
    ),
    "mhp-net-scale-24": Variant(
        "tumour-scale-24", DataOptions(), "MHP-Net with a fourth Hessian scale of 24 mm, for large lesions"
    ),
    "mhp-net-liver-hu": Variant(
        "tumour-liver-hu",
        DataOptions(),
        "MHP-Net with the CT shifted so its liver median is 100 HU, in training and at run time",
    ),
    "no-hessian": Variant("tumour-no-hessian", DataOptions(), "(b) same network and data, no Hessian input"),
    "plain-unet": Variant("tumour-plain-unet", DataOptions(), "(c) plain small 3D U-Net on the CT"),
    "mhp-net-half-lesions": Variant(
        "tumour", DataOptions(lesion_fraction=0.5), "(d) MHP-Net with half of the real training lesions"
    ),
}


def has_tumour(case: CaseFiles) -> bool:
    """Return whether a case's label contains tumour voxels (label 2)."""
    return bool((sitk.GetArrayFromImage(read_image(case.label_path)) == 2).any())


def fold_dir(work_dir: Path, variant: str, case_id: str) -> Path:
    """Return the folder of one variant's fold."""
    return Path(work_dir) / variant / case_id


def run_fold(
    variant_name: str,
    held_out: CaseFiles,
    all_cases: list[CaseFiles],
    *,
    work_dir: Path,
    cache_dir: Path,
    seed: int,
    minutes: float,
    steps: int | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """Train one variant without one case and store the held-out tumour probability.

    ``steps``, when given, replaces the ``minutes`` budget by that many optimiser steps, so a
    slower machine trains as much as the run it is compared with.

    Runs in a worker process with ``threads`` torch and onnxruntime threads. Returns the fold
    record, also written as ``fold.json`` beside ``probability.npz`` in the fold folder.
    """
    import torch

    torch.set_num_threads(threads)
    configure_logging()
    variant = VARIANTS[variant_name]
    folder = fold_dir(work_dir, variant_name, held_out.case_id)
    folder.mkdir(parents=True, exist_ok=True)

    # The runtime looks for mhp_net.onnx, so every variant is exported under that name.
    recipe = replace(RECIPES[variant.recipe], file_stem=Path(TUMOUR_MODEL_FILE).stem)
    training = [case for case in all_cases if case.case_id != held_out.case_id]
    start = time.monotonic()
    model_path = train_and_export(
        recipe,
        training,
        out_dir=folder,
        cache_dir=cache_dir,
        seed=seed,
        budget=Budget(steps=steps) if steps else Budget(seconds=minutes * 60),
        options=variant.options,
    )
    provenance = json.loads(card_path_for(model_path).read_text())["metadata"]["provenance"]

    # The liver model is not run (the reference liver is given), but Segmenter loads one.
    shipped = REPO_ROOT / "models"
    for name in (LIVER_MODEL_FILE, card_path_for(Path(LIVER_MODEL_FILE)).name):
        shutil.copy2(shipped / name, folder / name)
    image = read_image(held_out.ct_path)
    label = read_image(held_out.label_path)
    probability = Segmenter(models_dir=folder, threads=threads).tumour_probability(image, label)
    np.savez_compressed(
        folder / "probability.npz",
        probability=sitk.GetArrayFromImage(probability).astype(np.float16),
    )

    record = {
        "variant": variant_name,
        "case": held_out.case_id,
        "training_cases": [case.case_id for case in training],
        "training_steps": provenance["training_steps"],
        "training_lesions": provenance.get("training_lesions"),
        "fold_wall_time_s": round(time.monotonic() - start, 1),
    }
    (folder / "fold.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def score_case(probability: np.ndarray, label: sitk.Image, threshold: float, min_mm3: float) -> dict:
    """Post-process a probability map inside the reference liver and score it against the label.

    Parameters
    ----------
    probability : ndarray of shape (Z, Y, X)
        Tumour probability on the label's grid.
    label : SimpleITK.Image
        Reference labels (0, 1, 2).
    """
    reference = sitk.GetArrayFromImage(label)
    liver = reference > 0
    box = _bounding_box(liver)
    tumour = postprocess_tumour(
        probability[box].astype(np.float32),
        liver[box],
        voxel_mm3=float(np.prod(label.GetSpacing())),
        threshold=threshold,
        min_component_mm3=min_mm3,
    )
    predicted = np.where(tumour, np.uint8(2), liver[box].astype(np.uint8))
    return evaluate_masks(_image_like(predicted, label), _image_like(reference[box], label))


def _bounding_box(mask: np.ndarray, margin_vox: int = 4) -> tuple[slice, ...]:
    indices = np.argwhere(mask)
    low = np.maximum(indices.min(axis=0) - margin_vox, 0)
    high = np.minimum(indices.max(axis=0) + margin_vox + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))


def _image_like(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(reference.GetSpacing())
    return image


def grid_scores(probability: np.ndarray, label: sitk.Image) -> dict[tuple[float, float], dict]:
    """Score one case at every (threshold, minimum lesion volume) pair of the search grid."""
    return {
        (threshold, min_mm3): score_case(probability, label, threshold, min_mm3)
        for threshold, min_mm3 in product(THRESHOLDS, MIN_LESION_MM3)
    }


def choose_postprocessing(scores: dict[str, dict], cases: list[str]) -> tuple[float, float]:
    """Return the grid pair with the best mean tumour Dice over ``cases`` among those with at most
    ``MAX_FALSE_POSITIVES_PER_SCAN`` false positives per scan (ties: fewer false positives).

    When no pair is within that limit, the pair with the fewest false positives is returned.
    """

    def dice(pair: tuple[float, float]) -> float:
        return round(float(np.mean([scores[case][pair]["tumour_dice"] or 0.0 for case in cases])), 4)

    def false_positives(pair: tuple[float, float]) -> float:
        return float(np.mean([scores[case][pair]["false_positive_lesions"] for case in cases]))

    pairs = list(product(THRESHOLDS, MIN_LESION_MM3))
    allowed = [pair for pair in pairs if false_positives(pair) <= MAX_FALSE_POSITIVES_PER_SCAN]
    if not allowed:
        return min(pairs, key=lambda pair: (false_positives(pair), -dice(pair)))
    return max(allowed, key=lambda pair: (dice(pair), -false_positives(pair)))


def summarise_variant(scores: dict[str, dict], folds: dict[str, dict]) -> dict[str, Any]:
    """Score every held-out case at post-processing chosen on the other cases.

    Returns
    -------
    dict
        ``cases``: per-case metrics with the chosen pair; ``summary``: means and standard
        deviations; ``chosen_on_all``: the pair chosen on every case (the value to ship).
    """
    case_ids = sorted(scores)
    per_case = []
    for case in case_ids:
        others = [other for other in case_ids if other != case]
        pair = choose_postprocessing(scores, others)
        result = scores[case][pair]
        lesion_dice = [lesion["dice"] for lesion in result["lesions"]]
        per_case.append(
            {
                "case": case,
                "threshold": pair[0],
                "min_lesion_mm3": pair[1],
                "tumour_dice": result["tumour_dice"],
                "lesion_dice": lesion_dice,
                "recall_large": result["lesion_recall_large"],
                "recall_small": result["lesion_recall_small"],
                "false_positives": result["false_positive_lesions"],
                "reference_lesions": result["reference_lesions"],
                "training_steps": folds[case]["training_steps"],
                "training_lesions": folds[case]["training_lesions"],
            }
        )
    all_lesion_dice = [d for row in per_case for d in row["lesion_dice"]]
    summary = {
        "tumour_dice": _mean_sd([row["tumour_dice"] for row in per_case]),
        "lesion_dice": _mean_sd(all_lesion_dice),
        "recall_large": _pooled_recall(per_case, "recall_large", large=True, scores=scores),
        "recall_small": _pooled_recall(per_case, "recall_small", large=False, scores=scores),
        "false_positives": _mean_sd([row["false_positives"] for row in per_case]),
        "training_steps": _mean_sd([row["training_steps"] for row in per_case]),
    }
    chosen = choose_postprocessing(scores, case_ids)
    return {"cases": per_case, "summary": summary, "chosen_on_all": list(chosen)}


@dataclass(frozen=True)
class Fold:
    """One trained fold: its folder, held-out case and ``fold.json`` record."""

    folder: Path
    case: CaseFiles
    record: dict[str, Any]


def find_folds(folds: Path, cases_dir: Path) -> list[Fold]:
    """Find the folds below one variant's folder and check them before any scoring.

    Parameters
    ----------
    folds : Path
        One variant's folder of folds, each holding ``fold.json`` and the fold's models.
    cases_dir : Path
        Labelled cases.

    Raises
    ------
    ValueError
        If ``folds`` is not a folder, contains fewer than 2 folds (post-processing is chosen on the
        other held-out cases), a ``fold.json`` cannot be read, or a held-out case is not in
        ``cases_dir``.
    """
    if not folds.is_dir():
        raise ValueError(f"{folds}: folder not found. Pass a variant folder of benchmarks.tumour_ablation.")
    folders = sorted(path.parent for path in folds.glob("*/fold.json"))
    if not folders:
        variants = sorted({path.parent.parent.name for path in folds.glob("*/*/fold.json")})
        hint = (
            f"It contains the variant folders {', '.join(variants)}: pass one of them."
            if variants
            else "Train the folds with benchmarks.tumour_ablation."
        )
        raise ValueError(f"{folds}: no fold.json in its subfolders. {hint}")
    if len(folders) < 2:
        raise ValueError(
            f"{folds}: only the fold {folders[0].name} was found, but post-processing is chosen on "
            "the other held-out cases, so at least 2 folds are needed."
        )
    try:
        cases = {case.case_id: case for case in find_cases(cases_dir)}
    except FileNotFoundError as error:
        raise ValueError(str(error)) from error

    found = []
    for folder in folders:
        record_path = folder / "fold.json"
        try:
            record = json.loads(record_path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{record_path}: invalid fold record ({error}).") from error
        if folder.name not in cases:
            raise ValueError(
                f"{folder}: its held-out case {folder.name} is not in {cases_dir}. Pass --cases "
                "with the cases the folds were trained on."
            )
        found.append(Fold(folder, cases[folder.name], record))
    return found


def rescore_folds(
    folds: Sequence[Fold], score_fold: Callable[[Path, CaseFiles], dict[str, dict]]
) -> tuple[dict[str, dict[str, dict]], dict[str, dict]]:
    """Score the held-out case of every fold under several settings.

    Parameters
    ----------
    folds : sequence of Fold
        As ``find_folds`` returns them.
    score_fold : callable
        ``score_fold(fold_folder, case)`` returns ``{setting: grid_scores(...)}``.

    Returns
    -------
    scores : dict
        ``scores[setting][case_id]``: grid scores, ready for ``summarise_variant``.
    records : dict
        ``records[case_id]``: the fold's ``fold.json``.
    """
    scores: dict[str, dict[str, dict]] = {}
    records = {}
    for fold in folds:
        for setting, case_scores in score_fold(fold.folder, fold.case).items():
            scores.setdefault(setting, {})[fold.folder.name] = case_scores
        records[fold.folder.name] = fold.record
    return scores, records


def _mean_sd(values: list) -> dict[str, Any]:
    present = [float(v) for v in values if v is not None]
    if not present:
        return {"mean": None, "sd": None, "n": 0}
    mean, sd = round(float(np.mean(present)), 3), round(float(np.std(present)), 3)
    return {"mean": mean, "sd": sd, "n": len(present)}


def _pooled_recall(per_case: list[dict], key: str, *, large: bool, scores: dict) -> dict[str, Any]:
    """Pool lesion detections over cases: detected lesions / all lesions in the size class."""
    found = total = 0
    for row in per_case:
        result = scores[row["case"]][(row["threshold"], row["min_lesion_mm3"])]
        for lesion in result["lesions"]:
            if (lesion["diameter_mm"] >= 10) == large:
                total += 1
                found += int(lesion["detected"])
    return {"found": found, "total": total, "recall": round(found / total, 3) if total else None}


def render_markdown(document: dict[str, Any]) -> str:
    """Render the results as a markdown page."""
    lines = [
        "# Tumour model ablations (leave-one-case-out, tumour stage only)",
        "",
        f"Command: `{document['command']}`",
        "",
        f"{document['machine']}. Each fold trains for {budget_text(document)} with "
        f"{document.get('threads', 1)} torch thread(s), {document['jobs']} fold(s) at a time. "
        "Held-out cases: "
        f"{', '.join(document['held_out_cases'])}. The held-out scan is segmented inside its reference "
        "liver. Threshold and minimum lesion volume are chosen for each held-out case on the other "
        "cases' probabilities (grid: thresholds "
        f"{', '.join(f'{t:g}' for t in THRESHOLDS)}; minimum volumes "
        f"{', '.join(f'{m:g}' for m in MIN_LESION_MM3)} mm^3): the best mean Dice on those cases "
        f"among the pairs with at most {MAX_FALSE_POSITIVES_PER_SCAN:g} false positive(s) per scan there.",
        "",
        "| variant | tumour Dice | per-lesion Dice | recall >= 10 mm | recall < 10 mm | false positives "
        "per scan | steps per fold | post-processing chosen on all cases |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in document["variants"].items():
        summary = result["summary"]
        threshold, min_mm3 = result["chosen_on_all"]
        lines.append(
            f"| {name} | {summary_cells(summary)} | {_fmt(summary['training_steps'], 0)} | "
            f"threshold {threshold:g}, min {min_mm3:g} mm^3 |"
        )
    lines += ["", "Variants:", ""]
    lines += [f"- `{name}`: {VARIANTS[name].description}." for name in document["variants"]]
    lines += ["", "## Per case", ""]
    lines.append(
        "| variant | case | tumour Dice | lesions found / reference | false positives | threshold | "
        "min mm^3 | training lesions | steps |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for name, result in document["variants"].items():
        for row in result["cases"]:
            found = sum(1 for d in row["lesion_dice"] if d > 0)
            dice = "n/a" if row["tumour_dice"] is None else f"{row['tumour_dice']:.3f}"
            lines.append(
                f"| {name} | {row['case']} | {dice} | {found} / {row['reference_lesions']} | "
                f"{row['false_positives']} | {row['threshold']:g} | {row['min_lesion_mm3']:g} | "
                f"{row['training_lesions']} | {row['training_steps']} |"
            )
    lines += [
        "",
        "Mean and standard deviation are over held-out cases (per-lesion Dice: over lesions). "
        "Recall pools the lesions of all held-out cases; a lesion counts as found when a predicted "
        "tumour voxel touches it. A lesion's size is its equivalent-sphere diameter.",
        "",
    ]
    return "\n".join(lines)


def rescored_page(
    title: str,
    command: str,
    label_columns: Sequence[str],
    rows: Sequence[tuple[Sequence[str], dict[str, Any]]],
    *,
    note: str = "",
) -> str:
    """Return the Markdown page of folds scored again under several settings.

    Parameters
    ----------
    title, command : str
        The page's title and the command that wrote it.
    label_columns : sequence of str
        Headers of the columns that name a setting, before the score columns.
    rows : sequence of (labels, result)
        Per setting: one text per label column, and the setting's ``summarise_variant`` result.
    note : str
        A paragraph under the command, if any.
    """
    lines = [f"# {title}", "", f"Command: `{command}`", ""]
    if note:
        lines += [note, ""]
    lines += [
        f"| {' | '.join(label_columns)} | tumour Dice | per-lesion Dice | recall >= 10 mm | "
        "recall < 10 mm | false positives per scan |",
        "|" + "---|" * (len(label_columns) + 5),
    ]
    lines += [f"| {' | '.join(labels)} | {summary_cells(result['summary'])} |" for labels, result in rows]
    lines += ["", "Per case (tumour Dice, false positives, threshold chosen on the other cases):", ""]
    lines += [f"- {', '.join(labels)}: {per_case_cells(result)}" for labels, result in rows]
    return "\n".join(lines) + "\n"


def per_case_cells(result: dict[str, Any]) -> str:
    """Return one summarised variant's cases as text: case, tumour Dice, false positives, threshold."""
    return ", ".join(
        f"{row['case']} {row['tumour_dice']:.3f} / {row['false_positives']} / {row['threshold']:g}"
        for row in result["cases"]
    )


def summary_cells(summary: dict[str, Any]) -> str:
    """Return a summary's Markdown cells: tumour Dice, per-lesion Dice, both recalls, false positives."""
    return (
        f"{_fmt(summary['tumour_dice'])} | {_fmt(summary['lesion_dice'])} | "
        f"{_fmt_recall(summary['recall_large'])} | {_fmt_recall(summary['recall_small'])} | "
        f"{_fmt(summary['false_positives'], 1)}"
    )


def _fmt(entry: dict[str, Any], digits: int = 3) -> str:
    if entry["mean"] is None:
        return "n/a"
    return f"{entry['mean']:.{digits}f} +- {entry['sd']:.{digits}f}"


def _fmt_recall(entry: dict[str, Any]) -> str:
    if entry["recall"] is None:
        return "n/a"
    return f"{entry['recall']:.2f} ({entry['found']}/{entry['total']})"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line of ``python -m benchmarks.tumour_ablation``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tumour_ablation", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--variants", nargs="*", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--minutes", type=float, default=3.0, help="training wall time per fold")
    add_fold_arguments(parser, work=Path("/tmp/mhp-edge-ablation"), out=RESULTS_DIR)
    parser.add_argument("--name", default="tumour_ablation", help="stem of the .json and .md results")
    arguments = parser.parse_args(argv)
    check_fold_arguments(parser, arguments)
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    configure_logging()
    cases = find_cases(arguments.cases or default_data_dir() / "cases")
    held_out = [case for case in cases if has_tumour(case)]
    cache_dir = default_cache_dir()

    pending = [
        (name, case)
        for name in arguments.variants
        for case in held_out
        if not (fold_dir(arguments.work, name, case.case_id) / "probability.npz").is_file()
    ]
    print(f"{len(pending)} folds to train, {arguments.jobs} at a time", flush=True)
    records = run_folds(
        run_fold,
        [(name, case, cases) for name, case in pending],
        jobs=arguments.jobs,
        work_dir=arguments.work,
        cache_dir=cache_dir,
        seed=arguments.seed,
        minutes=arguments.minutes,
        steps=arguments.steps,
        threads=arguments.threads,
    )
    for record in records:
        print(
            f"fold done: {record['variant']} / {record['case']}, {record['training_steps']} steps",
            flush=True,
        )

    labels = {case.case_id: read_image(case.label_path) for case in held_out}
    variants = {}
    for name in arguments.variants:
        scores, folds = {}, {}
        for case in held_out:
            folder = fold_dir(arguments.work, name, case.case_id)
            with np.load(folder / "probability.npz") as stored:
                probability = stored["probability"]
            scores[case.case_id] = grid_scores(probability, labels[case.case_id])
            folds[case.case_id] = json.loads((folder / "fold.json").read_text())
        variants[name] = summarise_variant(scores, folds)
        print(name, json.dumps(variants[name]["summary"]), flush=True)

    document = {
        "command": "python -m benchmarks.tumour_ablation "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} CPUs visible",
        "minutes": arguments.minutes,
        "steps": arguments.steps,
        "jobs": arguments.jobs,
        "threads": arguments.threads,
        "held_out_cases": [case.case_id for case in held_out],
        "options": {name: asdict(VARIANTS[name].options) for name in arguments.variants},
        "variants": variants,
    }
    markdown_path = write_result_files(arguments.out, arguments.name, document, render_markdown(document))
    print(f"Wrote {markdown_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
