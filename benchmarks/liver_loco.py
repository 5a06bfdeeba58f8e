"""Leave-one-case-out accuracy of the liver model, alone and as the tumour stage's liver.

Run from the repository root::

    python -m benchmarks.liver_loco [--minutes 4 | --steps 1900] [--jobs 2] [--threads 1] [--cases DIR]
        [--work /tmp/mhp-edge-liver] [--tumour-folds DIR] [--out benchmarks/results]
        [--name liver_loco] [--seed 0] [--task liver]

For every labelled case a liver model is trained on the other cases with the shipped liver
recipe (``export.train``) and run on the held-out scan through ``Segmenter.liver_mask``. Its
Dice against the reference liver (label >= 1) is the liver score.

With ``--tumour-folds WORK/VARIANT`` (the fold folders that ``benchmarks.tumour_ablation``
leaves), each held-out case with tumours is also segmented end to end twice with its fold's
tumour model: once with the fold's liver model and once with the reference liver. The tumour
model's own threshold and minimum volume are used in both runs. The difference between the two
tumour Dice values is what the automatic liver costs.

``--boundary on`` or ``off`` overrides, in memory, whether the fold liver models refine their
boundary (``mhp_edge.liver_boundary``); ``model`` (the default) keeps what their metadata says.
``--tiles off`` makes them run overlapping windows of their training patch instead of tiles as
large as the scan (``mhp_edge.windows.tile_shape``). ``--rescore`` trains nothing and scores the
fold models already in ``--work`` again, for example with another ``--boundary`` or ``--tiles``.

Folds run ``--jobs`` at a time, each with ``--threads`` torch and onnxruntime threads; a rerun
only trains the folds whose ``liver.json`` is missing in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import replace
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
from benchmarks.loco import mean_and_sd
from export.contract import LIVER_BOUNDARY
from export.data import REPO_ROOT, CaseFiles, default_cache_dir, default_data_dir, find_cases
from export.train import RECIPES, Budget, configure_logging, export_commit, train_and_export
from mhp_edge.evaluate import dice, evaluate_masks
from mhp_edge.io import read_image
from mhp_edge.metadata import card_path_for
from mhp_edge.pipeline import LIVER_MODEL_FILE, TUMOUR_MODEL_FILE, Segmenter

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def _copy_model(source_dir: Path, target_dir: Path, file_name: str) -> None:
    """Copy an ONNX model and its card between model folders."""
    for name in (file_name, card_path_for(Path(file_name)).name):
        shutil.copy2(source_dir / name, target_dir / name)


def run_fold(
    task: str,
    held_out: CaseFiles,
    all_cases: list[CaseFiles],
    *,
    work_dir: Path,
    cache_dir: Path,
    seed: int,
    minutes: float,
    steps: int | None,
    threads: int,
) -> dict[str, Any]:
    """Train the liver recipe ``task`` without one case and score its liver on that case.

    ``steps``, when given, replaces the ``minutes`` budget by that many optimiser steps.

    Runs in a worker process. Returns the fold record, also written as ``liver.json`` in the
    fold folder beside the fold's ``liver_net.onnx``.
    """
    import torch

    torch.set_num_threads(threads)
    configure_logging()
    folder = Path(work_dir) / held_out.case_id
    folder.mkdir(parents=True, exist_ok=True)
    training = [case for case in all_cases if case.case_id != held_out.case_id]
    model_path = train_and_export(
        RECIPES[task],
        training,
        out_dir=folder,
        cache_dir=cache_dir,
        seed=seed,
        budget=Budget(steps=steps) if steps else Budget(seconds=minutes * 60),
    )
    provenance = json.loads(card_path_for(model_path).read_text())["metadata"]["provenance"]

    # Segmenter loads a tumour model too, but the liver stage does not run it.
    _copy_model(REPO_ROOT / "models", folder, TUMOUR_MODEL_FILE)
    record = {
        "case": held_out.case_id,
        "training_cases": [case.case_id for case in training],
        "training_steps": provenance["training_steps"],
        **score_liver(held_out, folder, threads=threads, overrides={}),
    }
    (folder / "liver.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _fold_commit(folder: Path) -> dict[str, Any]:
    """Return the export commit and tree state recorded in a fold liver model's card."""
    provenance = json.loads(card_path_for(folder / LIVER_MODEL_FILE).read_text())["metadata"]["provenance"]
    return {key: provenance[key] for key in ("export_commit", "export_tree_dirty")}


def liver_overrides(boundary: str, tiles: str) -> dict[str, Any]:
    """Return the liver metadata fields that ``--boundary`` and ``--tiles`` replace in memory."""
    overrides: dict[str, Any] = {}
    if boundary != "model":
        overrides["boundary"] = LIVER_BOUNDARY if boundary == "on" else None
    if tiles == "off":
        overrides["tile_max_vox"] = None
    return overrides


def fold_segmenter(models_dir: Path, *, threads: int, overrides: dict[str, Any]) -> Segmenter:
    """Load a fold's models, with ``overrides`` replacing fields of the liver model's metadata."""
    segmenter = Segmenter(models_dir=models_dir, threads=threads)
    liver_model = segmenter.liver_model
    segmenter.liver_model = replace(liver_model, metadata=replace(liver_model.metadata, **overrides))
    return segmenter


def score_liver(case: CaseFiles, folder: Path, *, threads: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """Run a fold's liver stage on its held-out case and return Dice, volumes and wall time."""
    image = read_image(case.ct_path)
    reference = sitk.GetArrayFromImage(read_image(case.label_path)) >= 1
    segmenter = fold_segmenter(folder, threads=threads, overrides=overrides)
    start = time.monotonic()
    predicted = sitk.GetArrayFromImage(segmenter.liver_mask(image)) > 0
    liver_time_s = time.monotonic() - start
    return {
        "liver_dice": round(float(dice(predicted, reference)), 4),
        "predicted_ml": round(float(predicted.sum()) * _voxel_ml(image), 1),
        "reference_ml": round(float(reference.sum()) * _voxel_ml(image), 1),
        "liver_stage_s": round(liver_time_s, 2),
    }


def _voxel_ml(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing())) / 1000.0


def tumour_with_both_livers(
    case: CaseFiles, liver_fold: Path, tumour_fold: Path, *, threads: int, overrides: dict[str, Any]
) -> dict:
    """Segment a case end to end with its fold's liver and tumour models, and with the reference liver.

    Returns
    -------
    dict
        ``model_liver`` and ``reference_liver``: tumour Dice, lesions found of the reference
        lesions, and false-positive lesions of each run.
    """
    image = read_image(case.ct_path)
    label = read_image(case.label_path)
    with tempfile.TemporaryDirectory(prefix="mhp-edge-pair-") as pair:
        _copy_model(liver_fold, Path(pair), LIVER_MODEL_FILE)
        _copy_model(tumour_fold, Path(pair), TUMOUR_MODEL_FILE)
        segmenter = fold_segmenter(Path(pair), threads=threads, overrides=overrides)
        runs = {}
        for run_name, liver_mask in (("model_liver", None), ("reference_liver", label)):
            scores = evaluate_masks(segmenter.segment(image, liver_mask=liver_mask).mask, label)
            runs[run_name] = {
                "tumour_dice": scores["tumour_dice"],
                "lesions_found": sum(lesion["detected"] for lesion in scores["lesions"]),
                "reference_lesions": scores["reference_lesions"],
                "false_positive_lesions": scores["false_positive_lesions"],
            }
    return runs


def _rescored_note(scored_at: dict[str, Any] | None) -> str:
    if scored_at is None:
        return ""
    return f", scored again (`--rescore`) with the runtime of commit `{scored_at['export_commit'][:12]}`"


_BOUNDARY_SETTINGS = {
    "model": "as each fold model's metadata says",
    "on": "on for every fold (`--boundary on`)",
    "off": "off for every fold (`--boundary off`)",
}


_TILE_SETTINGS = {
    "model": "tiles as the fold model's metadata says",
    "off": "overlapping windows of the training patch (`--tiles off`)",
}


def _threads_note(document: dict[str, Any]) -> str:
    # A --rescore run trains nothing, so its --threads is the scoring thread count, not the training one.
    if document.get("scored_at_commit"):
        return f", scored with {document['threads']} thread(s)"
    return f" with {document['threads']} thread(s), {document['jobs']} fold(s) at a time"


def render_markdown(document: dict[str, Any]) -> str:
    """Return the results page."""
    summary = document["summary"]
    lines = [
        "# Liver model, leave-one-case-out",
        "",
        f"Command: `{document['command']}`",
        "",
        f"{document['machine']}. Each fold trains the `{document['task']}` recipe for "
        f"{budget_text(document)}{_threads_note(document)}. "
        f"Recipe of commit `{document['commit']['export_commit'][:12]}`"
        f"{' with uncommitted changes' if document['commit']['export_tree_dirty'] else ''}"
        f"{_rescored_note(document.get('scored_at_commit'))}. "
        f"Liver boundary refinement: {_BOUNDARY_SETTINGS[document.get('boundary', 'model')]}. "
        f"Liver inference: {_TILE_SETTINGS[document.get('tiles', 'model')]}.",
        "",
        "| case | liver Dice | predicted mL | reference mL | liver stage s | steps |",
        "|---|---|---|---|---|---|",
    ]
    for row in document["cases"]:
        lines.append(
            f"| {row['case']} | {row['liver_dice']:.3f} | {row['predicted_ml']:.0f} | "
            f"{row['reference_ml']:.0f} | {row['liver_stage_s']:.2f} | {row['training_steps']} |"
        )
    dice_summary = summary["liver_dice"]
    lines.append(f"| mean +- sd | {dice_summary['mean']:.3f} +- {dice_summary['sd']:.3f} | | | | |")

    if document.get("tumour"):
        lines += [
            "",
            f"## Tumour stage with the automatic liver (tumour folds: `{document['tumour_folds']}`)",
            "",
            "| case | tumour Dice, liver model | tumour Dice, reference liver | found, liver model | "
            "found, reference liver | false positives, liver model | false positives, reference liver |",
            "|---|---|---|---|---|---|---|",
        ]
        for case, runs in document["tumour"].items():
            model, reference = runs["model_liver"], runs["reference_liver"]
            lines.append(
                f"| {case} | {model['tumour_dice']:.3f} | {reference['tumour_dice']:.3f} | "
                f"{model['lesions_found']} / {model['reference_lesions']} | "
                f"{reference['lesions_found']} / {reference['reference_lesions']} | "
                f"{model['false_positive_lesions']} | {reference['false_positive_lesions']} |"
            )
        model_mean = summary["tumour_dice_model_liver"]["mean"]
        reference_mean = summary["tumour_dice_reference_liver"]["mean"]
        lines.append(f"| mean | {model_mean:.3f} | {reference_mean:.3f} | | | | |")
        lines += ["", f"Tumour Dice lost to the automatic liver: {reference_mean - model_mean:+.3f}."]
    return "\n".join(lines) + "\n"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.liver_loco", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--task", default="liver", choices=[name for name in RECIPES if name.startswith("liver")]
    )
    parser.add_argument("--minutes", type=float, default=RECIPES["liver"].default_minutes)
    add_fold_arguments(parser, work=Path("/tmp/mhp-edge-liver"), out=RESULTS_DIR)
    parser.add_argument("--tumour-folds", type=Path, default=None, help="WORK/VARIANT of tumour_ablation")
    parser.add_argument("--name", default="liver_loco", help="stem of the .json and .md results")
    parser.add_argument(
        "--boundary", default="model", choices=("model", "on", "off"), help="liver boundary refinement"
    )
    parser.add_argument("--tiles", default="model", choices=("model", "off"), help="liver inference tiles")
    parser.add_argument("--rescore", action="store_true", help="score the existing folds, train nothing")
    arguments = parser.parse_args(argv)
    check_fold_arguments(parser, arguments)
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    configure_logging()
    cases = find_cases(arguments.cases or default_data_dir() / "cases")

    pending = [case for case in cases if not (arguments.work / case.case_id / "liver.json").is_file()]
    if arguments.rescore and pending:
        missing = [case.case_id for case in pending]
        raise SystemExit(
            f"--rescore: trained folds missing in {arguments.work} for {missing}; run without --rescore."
        )
    print(f"{len(pending)} liver folds to train, {arguments.jobs} at a time", flush=True)
    records = run_folds(
        run_fold,
        [(arguments.task, case, cases) for case in pending],
        jobs=arguments.jobs,
        work_dir=arguments.work,
        cache_dir=default_cache_dir(),
        seed=arguments.seed,
        minutes=arguments.minutes,
        steps=arguments.steps,
        threads=arguments.threads,
    )
    for record in records:
        print(f"fold done: {record['case']}, liver Dice {record['liver_dice']:.3f}", flush=True)

    rows = [json.loads((arguments.work / case.case_id / "liver.json").read_text()) for case in cases]
    overrides = liver_overrides(arguments.boundary, arguments.tiles)
    if arguments.rescore or overrides:
        for case, row in zip(cases, rows, strict=True):
            folder = arguments.work / case.case_id
            row.update(score_liver(case, folder, threads=arguments.threads, overrides=overrides))
    summary: dict[str, Any] = {"liver_dice": mean_and_sd([row["liver_dice"] for row in rows])}
    tumour = {}
    if arguments.tumour_folds is not None:
        for case in cases:
            tumour_fold = arguments.tumour_folds / case.case_id
            if (tumour_fold / TUMOUR_MODEL_FILE).is_file():
                tumour[case.case_id] = tumour_with_both_livers(
                    case,
                    arguments.work / case.case_id,
                    tumour_fold,
                    threads=arguments.threads,
                    overrides=overrides,
                )
                print(case.case_id, json.dumps(tumour[case.case_id]), flush=True)
        for run_name in ("model_liver", "reference_liver"):
            summary[f"tumour_dice_{run_name}"] = mean_and_sd(
                [runs[run_name]["tumour_dice"] for runs in tumour.values()]
            )

    document = {
        "command": "python -m benchmarks.liver_loco "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} CPUs visible",
        "commit": _fold_commit(arguments.work / cases[0].case_id) if arguments.rescore else export_commit(),
        "scored_at_commit": export_commit() if arguments.rescore else None,
        "task": arguments.task,
        "minutes": arguments.minutes,
        "steps": arguments.steps,
        "jobs": arguments.jobs,
        "threads": arguments.threads,
        "boundary": arguments.boundary,
        "tiles": arguments.tiles,
        "tumour_folds": str(arguments.tumour_folds) if arguments.tumour_folds else None,
        "cases": rows,
        "tumour": tumour,
        "summary": summary,
    }
    markdown_path = write_result_files(arguments.out, arguments.name, document, render_markdown(document))
    print(f"Wrote {markdown_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
