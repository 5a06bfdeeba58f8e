"""Render ``models/MODEL_CARD.md`` from the card JSON files and the leave-one-case-out results.

Usage::

    python -m export.model_card [--models models] [--loco benchmarks/results/loco.json]
        [--tumour-loco benchmarks/results/tumour_loco_steps819.json]
        [--ablation benchmarks/results/tumour_ablation.json]
        [--liver-loco benchmarks/results/liver_loco_steps3000.json]
        [--automatic-liver benchmarks/results/liver_loco_whole_lesions.json]

The runtime reads the JSON cards beside the ONNX files, so they are the source of truth. This page
is their human-readable form and is rewritten whole.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from export.data import REPO_ROOT
from mhp_edge.metadata import card_path_for

MODEL_FILES = ("liver_net.onnx", "mhp_net.onnx")


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _spread(summary: dict[str, Any], key: str) -> str:
    value = summary.get(key)
    if isinstance(value, dict) and "mean" in value:
        return f"{_number(value['mean'])} ± {_number(value.get('sd'))} (n = {value.get('n', '?')})"
    if isinstance(value, dict) and "detected" in value:
        return f"{value['detected']} of {value['lesions']} lesions ({_number(value.get('recall'), 2)})"
    return _number(value)


def render_model_section(card: dict[str, Any]) -> list[str]:
    """Return the Markdown lines that describe one model."""
    metadata = card.get("metadata", {})
    provenance = metadata.get("provenance", {})
    hessian = metadata.get("hessian")
    lines = [
        f"## {card['name']} (`{card['model_file']}`)",
        "",
        f"- Task: {card['task']}. {card['architecture']}",
        f"- Parameters: {card['parameters']:,}.",
        f"- Input: patches of {tuple(metadata.get('patch_shape_vox', ()))} voxels (z, y, x) at "
        f"{tuple(metadata.get('spacing_zyx_mm', ()))} mm; CT clipped to "
        f"{tuple(metadata.get('hu_clip', ()))} HU, then "
        f"(HU - {metadata.get('hu_mean')}) / {metadata.get('hu_std')}.",
    ]
    if metadata.get("liver_median_hu") is not None:
        lines.append(
            f"- Before both inputs are computed, the crop's HU are shifted so that the liver's median "
            f"is {metadata['liver_median_hu']} HU."
        )
    if metadata.get("tile_max_vox"):
        region = "whole resampled scan" if card["task"] == "liver" else "resampled liver crop"
        lines.append(
            f"- Fully convolutional: the runtime feeds it the {region} as one tile, rounded up to "
            f"multiples of {tuple(metadata['tile_multiple_vox'])} voxels, up to "
            f"{tuple(metadata['tile_max_vox'])} voxels per tile; larger regions take overlapping tiles."
        )
    if hessian:
        context_mm = hessian.get("context_mm", 0.0)
        context = (
            f", computed with {context_mm} mm of scan around the crop"
            if context_mm
            else ", computed on the crop alone"
        )
        lines.append(
            f"- Hessian twin: scales {tuple(hessian['scales_mm'])} mm on CT clipped to "
            f"{tuple(hessian['hu_clip'])} HU{context}, divided by {hessian['response_scale']}."
        )
    boundary = metadata.get("boundary")
    if boundary:
        lines.append(
            f"- Boundary refinement on the full-resolution CT: within {boundary['reach_mm']} mm of the "
            f"model's surface, voxels join when their HU (smoothed {boundary['smooth_mm']} mm in-plane) "
            f"lie within the {tuple(boundary['core_percentiles'])} percentiles of the liver deeper than "
            f"{boundary['core_mm']} mm, and leave when outside {tuple(boundary['tissue_hu'])} HU; "
            f"scans finer than about {boundary['grid_mm']} mm in-plane are refined on a subsampled grid."
        )
    lines += [
        f"- Output: one logit per voxel; probability threshold {metadata.get('threshold')}, "
        f"windows overlap {metadata.get('overlap')}, components under "
        f"{metadata.get('min_component_mm3')} mm³ dropped.",
        *_training_data_lines(provenance),
        f"- Trained on: {', '.join(card['training_cases'])}; seed {provenance.get('seed')}; "
        f"{provenance.get('training_steps')} steps in {provenance.get('training_wall_time_s')} s on "
        f"{provenance.get('threads')} CPU threads; torch {provenance.get('torch_version')}; "
        f"export commit {provenance.get('export_commit')}.",
        f"- sha256: `{card['sha256']}`",
        "",
    ]
    return lines


def _training_data_lines(provenance: dict[str, Any]) -> list[str]:
    """Return the card line on training patches, lesions and synthetic lesions, if recorded."""
    if "training_patch_vox" not in provenance:
        return []
    text = f"- Training patches of {tuple(provenance['training_patch_vox'])} voxels"
    if "training_lesions" in provenance:
        text += (
            f"; {provenance['training_lesions']} real lesions, plus "
            f"{provenance.get('synthetic_copies', 0)} copies of each case with "
            f"{provenance.get('synthetic_lesions_per_copy', 0)} synthetic lesions each"
        )
    return [text + "."]


def render_tumour_accuracy(results: dict[str, Any] | None, *, title: str, note: str) -> list[str]:
    """Return the Markdown lines of a ``benchmarks.tumour_ablation`` result: one row per variant."""
    if results is None:
        return [f"## {title}", "", "Not measured yet: run `python -m benchmarks.tumour_ablation`.", ""]
    if results.get("steps"):
        budget = f"{results['steps']} optimiser steps"
    elif results.get("minutes"):
        budget = f"{results['minutes']:g} min"
    else:
        budget = "the budget of its run"
    lines = [
        f"## {title}",
        "",
        f"Command: `{results['command']}`. Each fold trained for {budget} on "
        f"{results.get('threads', 1)} thread(s) of the 2-core machine. {note} Threshold and minimum",
        "lesion volume were chosen on the other held-out cases, never on the scored one. The",
        "held-out scan is segmented inside its reference liver, so these numbers measure the",
        "tumour stage alone.",
        "",
        "| variant | tumour Dice | per-lesion Dice | recall >= 10 mm | recall < 10 mm "
        "| false positives per scan | steps per fold |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in results["variants"].items():
        summary = result["summary"]
        lines.append(
            f"| {name} | {_spread(summary, 'tumour_dice')} | {_spread(summary, 'lesion_dice')} | "
            f"{_recall(summary['recall_large'])} | {_recall(summary['recall_small'])} | "
            f"{_spread(summary, 'false_positives')} | {_spread(summary, 'training_steps')} |"
        )
    lines += ["", "Per case and the variants' definitions: `benchmarks/results/`.", ""]
    return lines


def _recall(entry: dict[str, Any]) -> str:
    if entry.get("recall") is None:
        return "n/a"
    return f"{entry['found']} of {entry['total']} ({entry['recall']:.2f})"


def render_accuracy(loco: dict[str, Any] | None, tumour_card: dict[str, Any]) -> list[str]:
    """Return the Markdown lines with the whole pipeline's leave-one-case-out accuracy."""
    if loco is None:
        return ["## Accuracy", "", "Not measured yet: run `python -m benchmarks.loco`.", ""]
    summary = loco.get("summary", {})
    trained = tumour_card.get("metadata", {}).get("provenance", {}).get("date", "")
    stale = bool(trained) and str(loco.get("date", "")) < trained
    lines = [
        "## Whole pipeline (leave-one-case-out, liver model included)",
        "",
        *(
            [
                f"**Older than the shipped models:** this run ({loco.get('date')}) used the recipes",
                f"of that date; the shipped tumour model was trained on {trained}. The liver section",
                "above and the tumour sections describe the current recipes. Re-run",
                "`python -m benchmarks.loco` to update this one.",
                "",
            ]
            if stale
            else []
        ),
        "Each case was segmented by models trained on the other cases with the same recipe and",
        "budget; no number here comes from a case the model was trained on.",
        f"Command: `{loco.get('command')}` ({loco.get('date')}).",
        *(
            []
            if loco.get("complete")
            else [
                "",
                f"**Incomplete run:** only {', '.join(c['case'] for c in loco.get('cases', []))} were "
                "held out so far; the other cases are not in these numbers.",
            ]
        ),
        "",
        "| measure (model_liver: liver from the liver model; reference_liver: reference liver mask) "
        "| mean ± sd over cases |",
        "|---|---|",
    ]
    for key in summary:
        lines.append(f"| {key.replace('_', ' ')} | {_spread(summary, key)} |")
    lines += [
        "",
        "| held-out case | lesions | liver Dice | tumour Dice (liver model) | tumour Dice (reference "
        "liver) | lesions found | false-positive lesions |",
        "|---|---|---|---|---|---|---|",
    ]
    for case in loco.get("cases", []):
        model, reference = case.get("model_liver", {}), case.get("reference_liver", {})
        found = sum(lesion["detected"] for lesion in model.get("lesions", []))
        lines.append(
            f"| {case['case']} | {case.get('reference_lesions')} | {_number(case.get('liver_dice'))} | "
            f"{_number(model.get('tumour_dice'))} | {_number(reference.get('tumour_dice'))} | "
            f"{found} | {model.get('false_positive_lesions')} |"
        )
    lines += ["", "More detail per lesion: `benchmarks/results/loco.md`.", ""]
    return lines


_BOUNDARY_SETTINGS = {"model": "as in each fold model's metadata", "on": "on", "off": "off"}
_TILE_SETTINGS = {"model": "as in each fold model's metadata", "off": "windows of the training patch"}


def liver_budget(liver_loco: dict[str, Any]) -> str:
    """Return a liver leave-one-case-out run's training budget per fold, in words."""
    if liver_loco.get("steps"):
        return f"{liver_loco['steps']} optimiser steps"
    return f"{liver_loco['minutes']:g} min on {liver_loco['threads']} thread(s)"


def render_liver_accuracy(
    liver_loco: dict[str, Any] | None, automatic_liver: dict[str, Any] | None = None
) -> list[str]:
    """Return the Markdown lines of a ``benchmarks.liver_loco`` result: liver Dice per held-out
    case, and tumour Dice with each fold's liver model against the reference liver.

    ``automatic_liver``, another ``benchmarks.liver_loco`` result, supplies the tumour Dice
    instead when it has them (for example a rescore with a newer runtime on some of the folds).
    """
    title = "## Liver accuracy and the automatic liver (leave-one-case-out)"
    if liver_loco is None:
        return [title, "", "Not measured yet: run `python -m benchmarks.liver_loco`.", ""]
    summary = liver_loco["summary"]
    lines = [
        title,
        "",
        f"Command: `{liver_loco['command']}`. Each fold trained the `{liver_loco['task']}` recipe for "
        f"{liver_budget(liver_loco)}; boundary refinement: "
        f"{_BOUNDARY_SETTINGS.get(liver_loco.get('boundary', 'model'))}; liver inference: "
        f"{_TILE_SETTINGS.get(liver_loco.get('tiles', 'model'))}.",
        "",
        "| held-out case | liver Dice | predicted mL | reference mL |",
        "|---|---|---|---|",
    ]
    for row in liver_loco["cases"]:
        lines.append(
            f"| {row['case']} | {row['liver_dice']:.3f} | {row['predicted_ml']:.0f} | "
            f"{row['reference_ml']:.0f} |"
        )
    lines += ["", f"Liver Dice: {_spread(summary, 'liver_dice')}.", ""]
    source = automatic_liver if automatic_liver and automatic_liver.get("tumour") else liver_loco
    if source.get("tumour"):
        model = source["summary"]["tumour_dice_model_liver"]["mean"]
        reference = source["summary"]["tumour_dice_reference_liver"]["mean"]
        cases = ", ".join(source["tumour"])
        lines += [
            f"Tumour Dice with each fold's liver and tumour models (held-out {cases}), at the tumour "
            f"model's own post-processing: {model:.3f} with the liver model, {reference:.3f} with the "
            f"reference liver ({reference - model:+.3f} lost to the automatic liver). Command: "
            f"`{source['command']}`. Only that difference is meant: the tumour folds used here may "
            "come from another run than the tumour accuracy above.",
            "",
        ]
    return lines


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def render(
    models_dir: Path,
    loco_path: Path,
    tumour_loco_path: Path,
    ablation_path: Path,
    liver_loco_path: Path,
    automatic_liver_path: Path | None = None,
) -> str:
    """Return the whole model card page."""
    cards = [json.loads(card_path_for(models_dir / name).read_text()) for name in MODEL_FILES]
    loco = _read_json(loco_path)
    licences = cards[0].get("licences", {})

    lines = [
        "# mhp-edge model card",
        "",
        f"**{cards[0].get('intended_use', 'Research use only, not for clinical use.')}** These models",
        "were trained on six scans (five with 12 tumours, one tumour-free). That is far too little to",
        "claim accuracy on scans from other hospitals, phases or scanners.",
        "",
        "## Training data and licences",
        "",
    ]
    lines += [f"- {source}: {text}" for source, text in licences.items()]
    lines += [
        "",
        "The models inherit the terms of their training data: the non-commercial, no-derivatives",
        "terms of 3D-IRCADb-01 and the unstated terms of the RadCTTACEomics samples mean that the",
        "weights are for research use only.",
        "",
    ]
    for card in cards:
        lines += render_model_section(card)
    lines += render_tumour_accuracy(
        _read_json(tumour_loco_path),
        title="Tumour accuracy of the current training recipe (leave-one-case-out)",
        note="This is the recipe that `python -m export.train` trains. The shipped tumour model is "
        "this recipe trained on all six cases, for about the same number of steps as each fold. The "
        "held-out scans ran on tiles, as the shipped model does (the same fold models on windows: "
        "`benchmarks/results/tumour_loco_steps819_windows.md`). These are one run's numbers: "
        "runs of the recipe with other seeds and on another machine scored from 0.307 to 0.377, "
        "and 0.344 on average over three seeds on one machine "
        "(`benchmarks/results/tumour_ablation_seeds.md`).",
    )
    lines += render_tumour_accuracy(
        _read_json(ablation_path.with_name("tumour_ablation_9min.json")),
        title="Tumour ablations at the shipped budget (leave-one-case-out)",
        note="Every variant trained 9 min per fold on one thread, so variants with faster steps "
        "took more of them (see the steps).",
    )
    lines += render_tumour_accuracy(
        _read_json(ablation_path),
        title="Tumour ablations (leave-one-case-out, shorter budget)",
        note="The machine's load changed during the run, so the steps per fold differ between "
        "variants; at this budget every variant is undertrained.",
    )
    automatic_liver = _read_json(automatic_liver_path) if automatic_liver_path else None
    lines += render_liver_accuracy(_read_json(liver_loco_path), automatic_liver)
    lines += render_accuracy(loco, cards[1])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m export.model_card", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--loco", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "loco.json")
    results = REPO_ROOT / "benchmarks" / "results"
    parser.add_argument("--tumour-loco", type=Path, default=results / "tumour_loco_steps819.json")
    parser.add_argument("--ablation", type=Path, default=results / "tumour_ablation.json")
    parser.add_argument("--liver-loco", type=Path, default=results / "liver_loco_steps3000.json")
    parser.add_argument(
        "--automatic-liver",
        type=Path,
        default=results / "liver_loco_whole_lesions.json",
        help="liver_loco result whose tumour Dice the card reports, when it has them",
    )
    arguments = parser.parse_args()
    page = render(
        arguments.models,
        arguments.loco,
        arguments.tumour_loco,
        arguments.ablation,
        arguments.liver_loco,
        arguments.automatic_liver,
    )
    (arguments.models / "MODEL_CARD.md").write_text(page)
    print(f"Wrote {arguments.models / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
