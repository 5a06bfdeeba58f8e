"""Leave-one-case-out accuracy of the training recipe, measured through the runtime.

Run from the repository root::

    python -m benchmarks.loco [--cases DIR] [--out benchmarks/results] [--seed 0]
        [--liver-minutes 2 | --liver-steps N] [--tumour-minutes 4 | --tumour-steps N]
        [--only CASE ...] [--update-cards models]

For each held-out case a liver model and a tumour model are trained on the other cases with
the shipped recipe (``export.train``) into a temporary folder. The held-out scan is then
segmented by ``mhp_edge.pipeline.Segmenter`` twice: with the liver model, and with the
reference liver given as ``liver_mask``, and each mask is scored by
``mhp_edge.evaluate.evaluate_masks``. Liver Dice is averaged over every case. Tumour Dice,
lesion recall and false positives are averaged over the cases with tumours, and the table also
lists the false positives on tumour-free cases.

Writes ``loco.json`` and ``loco.md`` to ``--out``. Both are rewritten after every case, so an
interrupted run keeps the cases it finished. One case takes about 7 to 8 minutes on 2 cores
with the default budgets (6 cases: about 45 minutes). Wall-time budgets give fewer steps when
other programs load the machine, so for numbers that do not depend on load pass the step counts
of the shipped models (their cards record ``training_steps``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from export.data import REPO_ROOT, CaseFiles, default_cache_dir, default_data_dir, find_cases
from export.train import RECIPES, Budget, configure_logging, export_commit, train_and_export
from mhp_edge.evaluate import evaluate_masks
from mhp_edge.io import read_image
from mhp_edge.metadata import card_path_for
from mhp_edge.pipeline import Segmenter

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"

# Columns of the markdown table: (JSON key inside a case record, heading, digits).
TABLE_COLUMNS = (
    ("liver_dice", "liver Dice (liver model)", 3),
    ("model_liver.tumour_dice", "tumour Dice (liver model)", 3),
    ("model_liver.lesion_recall", "lesion recall (liver model)", 2),
    ("model_liver.false_positive_lesions", "false-positive lesions (liver model)", 0),
    ("reference_liver.tumour_dice", "tumour Dice (reference liver)", 3),
    ("reference_liver.lesion_recall", "lesion recall (reference liver)", 2),
    ("reference_liver.false_positive_lesions", "false-positive lesions (reference liver)", 0),
)


def evaluate_held_out(case: CaseFiles, models_dir: Path, *, threads: int) -> dict[str, Any]:
    """Segment a held-out case with the fold's models and score both runs.

    Returns
    -------
    dict
        ``liver_dice`` of the liver model, and ``model_liver`` / ``reference_liver``: the
        ``evaluate_masks`` result of the run with the predicted and with the reference liver,
        plus the run's stage timings in seconds.
    """
    image = read_image(case.ct_path)
    label = read_image(case.label_path)
    segmenter = Segmenter(models_dir=models_dir, threads=threads)

    runs = {}
    for run_name, liver_mask in (("model_liver", None), ("reference_liver", label)):
        start = time.monotonic()
        result = segmenter.segment(image, liver_mask=liver_mask)
        scores = evaluate_masks(result.mask, label)
        scores["segment_wall_time_s"] = round(time.monotonic() - start, 1)
        scores["warnings"] = result.warnings
        runs[run_name] = scores
        print(
            f"  {run_name}: liver Dice {_format(scores['liver_dice'], 3)}, tumour Dice "
            f"{_format(scores['tumour_dice'], 3)}, recall {_format(scores['lesion_recall'], 2)}, "
            f"false positives {scores['false_positive_lesions']}",
            flush=True,
        )
    return {"liver_dice": runs["model_liver"]["liver_dice"], **runs}


def run_fold(
    held_out: CaseFiles,
    all_cases: Sequence[CaseFiles],
    *,
    work_dir: Path,
    cache_dir: Path,
    seed: int,
    budgets: dict[str, Budget],
    threads: int,
) -> dict[str, Any]:
    """Train both models without one case and evaluate that case."""
    training = [case for case in all_cases if case.case_id != held_out.case_id]
    models_dir = Path(work_dir) / held_out.case_id
    fold_start = time.monotonic()
    training_steps = {}
    for task in ("liver", "tumour"):
        model_path = train_and_export(
            RECIPES[task],
            training,
            out_dir=models_dir,
            cache_dir=cache_dir,
            seed=seed,
            budget=budgets[task],
        )
        card = json.loads(card_path_for(model_path).read_text())
        training_steps[task] = card["metadata"]["provenance"]["training_steps"]

    record = {
        "case": held_out.case_id,
        "training_cases": [case.case_id for case in training],
        "training_steps": training_steps,
    }
    record.update(evaluate_held_out(held_out, models_dir, threads=threads))
    record["reference_lesions"] = record["reference_liver"]["reference_lesions"]
    record["fold_wall_time_s"] = round(time.monotonic() - fold_start, 1)
    return record


def lookup(record: dict[str, Any], dotted_key: str) -> Any:
    """Return ``record["a"]["b"]`` for the key ``"a.b"``."""
    value: Any = record
    for part in dotted_key.split("."):
        value = value[part]
    return value


def mean_and_sd(values: Sequence[float | None]) -> dict[str, Any]:
    """Return mean, sample standard deviation and count of the values that are not None."""
    present = np.array([value for value in values if value is not None], dtype=np.float64)
    if present.size == 0:
        return {"mean": None, "sd": None, "n": 0}
    sd = float(present.std(ddof=1)) if present.size > 1 else None
    return {"mean": float(present.mean()), "sd": sd, "n": int(present.size)}


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-case records: liver Dice over all cases, tumour scores over tumour cases.

    Pooled lesion recall counts detected lesions over all reference lesions of all cases, so
    each lesion weighs the same whatever case it is in.
    """
    tumour_records = [record for record in records if record["reference_lesions"] > 0]
    summary: dict[str, Any] = {}
    for key, _, _ in TABLE_COLUMNS:
        chosen = records if key == "liver_dice" else tumour_records
        summary[key] = mean_and_sd([lookup(record, key) for record in chosen])

    for run_name in ("model_liver", "reference_liver"):
        lesions = [lesion for record in records for lesion in record[run_name]["lesions"]]
        detected = sum(lesion["detected"] for lesion in lesions)
        summary[f"{run_name}.pooled_lesion_recall"] = {
            "detected": detected,
            "lesions": len(lesions),
            "recall": detected / len(lesions) if lesions else None,
        }
    return summary


def _format(value: float | None, digits: int) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}"


def _format_summary(entry: dict[str, Any], digits: int) -> str:
    if entry["mean"] is None:
        return "n/a"
    sd = "n/a" if entry["sd"] is None else f"{entry['sd']:.{digits}f}"
    return f"{entry['mean']:.{digits}f} ± {sd} (n={entry['n']})"


def render_markdown(document: dict[str, Any]) -> str:
    """Render the results document as a markdown page."""
    records = document["cases"]
    summary = document["summary"]
    headings = ["case", "lesions"] + [heading for _, heading, _ in TABLE_COLUMNS]
    lines = [
        "# Leave-one-case-out accuracy",
        "",
        f"Command: `{document['command']}`",
        "",
        f"Date {document['date']}, commit `{document['commit']['export_commit']}`"
        f"{' (with uncommitted changes)' if document['commit']['export_tree_dirty'] else ''}, "
        f"{document['machine']}. Training budget per model: liver "
        f"{document['budgets']['liver']}, tumour {document['budgets']['tumour']}, "
        f"seed {document['seed']}.",
        "",
        "| " + " | ".join(headings) + " |",
        "|" + "---|" * len(headings),
    ]
    for record in records:
        cells = [record["case"], str(record["reference_lesions"])]
        cells += [_format(lookup(record, key), digits) for key, _, digits in TABLE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    mean_cells = ["mean ± sd", ""]
    mean_cells += [_format_summary(summary[key], max(digits, 2)) for key, _, digits in TABLE_COLUMNS]
    lines.append("| " + " | ".join(mean_cells) + " |")

    lines += ["", "Pooled lesion recall (each lesion counted once):", ""]
    for run_name, label in (("model_liver", "liver model"), ("reference_liver", "reference liver")):
        pooled = summary[f"{run_name}.pooled_lesion_recall"]
        lines.append(
            f"- {label}: {pooled['detected']} of {pooled['lesions']} lesions ({_format(pooled['recall'], 2)})"
        )

    lines += ["", "Per-lesion detection with the reference liver (equal-volume diameter, Dice):", ""]
    for record in records:
        lesions = record["reference_liver"]["lesions"]
        if lesions:
            described = ", ".join(
                f"{lesion['diameter_mm']:.0f} mm {'found' if lesion['detected'] else 'missed'} "
                f"({lesion['dice']:.2f})"
                for lesion in lesions
            )
            lines.append(f"- {record['case']}: {described}")

    lines += [
        "",
        "Liver Dice is averaged over all cases and tumour scores over the cases with tumours, "
        "so false positives on a tumour-free case appear in its row but not in the means. "
        "A lesion counts as found when any predicted tumour component touches it. "
        "The sd is the sample standard deviation over cases. With one held-out scan per fold "
        "and 5 or 6 scans in all, these numbers have wide uncertainty.",
        "",
    ]
    return "\n".join(lines)


def write_results(document: dict[str, Any], out_dir: Path) -> None:
    """Write ``loco.json`` and ``loco.md`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "loco.json").write_text(json.dumps(document, indent=2) + "\n")
    (out_dir / "loco.md").write_text(render_markdown(document))


def update_cards(models_dir: Path, document: dict[str, Any]) -> None:
    """Store the summary in the ``accuracy`` field of the cards in ``models_dir``.

    Only the cards change, so the sha256 of the models recorded in them stays valid.
    """
    summary = document["summary"]
    shared = {
        "method": "leave-one-case-out over the training cases, same recipe and budgets",
        "command": document["command"],
        "date": document["date"],
        "details": "benchmarks/results/loco.md",
    }
    liver = {**shared, "liver_dice": summary["liver_dice"]}
    tumour = {
        **shared,
        **{key: value for key, value in summary.items() if key != "liver_dice"},
    }
    for stem, accuracy in ((RECIPES["liver"].file_stem, liver), (RECIPES["tumour"].file_stem, tumour)):
        card_path = card_path_for(models_dir / f"{stem}.onnx")
        card = json.loads(card_path.read_text())
        card["accuracy"] = accuracy
        card_path.write_text(json.dumps(card, indent=2) + "\n")
        print(f"Updated accuracy in {card_path}", flush=True)


def _budget(steps: int | None, minutes: float) -> Budget:
    return Budget(steps=steps) if steps is not None else Budget(seconds=minutes * 60)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line of ``python -m benchmarks.loco``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loco", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases",
        type=Path,
        default=None,
        help="folder of labelled cases (default: $MHP_EDGE_DATA/cases, else ../shared/data/cases)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for loco.json and loco.md")
    parser.add_argument("--cache", type=Path, default=None, help="preprocessing cache folder")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every fold")
    parser.add_argument(
        "--liver-minutes",
        type=float,
        default=RECIPES["liver"].default_minutes,
        help="liver training wall time per fold, minutes",
    )
    parser.add_argument(
        "--tumour-minutes",
        type=float,
        default=RECIPES["tumour"].default_minutes,
        help="tumour training wall time per fold, minutes",
    )
    parser.add_argument(
        "--liver-steps",
        type=int,
        default=None,
        help="train each liver model for this many steps instead of --liver-minutes",
    )
    parser.add_argument(
        "--tumour-steps",
        type=int,
        default=None,
        help="train each tumour model for this many steps instead of --tumour-minutes",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime CPU threads")
    parser.add_argument("--only", nargs="*", default=None, metavar="CASE", help="hold out only these cases")
    parser.add_argument(
        "--update-cards",
        type=Path,
        default=None,
        metavar="DIR",
        help="write the summary into the accuracy field of the model cards in DIR",
    )

    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    configure_logging()
    torch.set_num_threads(arguments.threads)

    cases = find_cases(arguments.cases or default_data_dir() / "cases")
    held_out = cases
    if arguments.only:
        unknown = sorted(set(arguments.only) - {case.case_id for case in cases})
        if unknown:
            print(f"error: --only names unknown case(s) {unknown}", file=sys.stderr)
            return 2
        held_out = [case for case in cases if case.case_id in arguments.only]

    budgets = {
        "liver": _budget(arguments.liver_steps, arguments.liver_minutes),
        "tumour": _budget(arguments.tumour_steps, arguments.tumour_minutes),
    }
    document: dict[str, Any] = {
        "command": "python -m benchmarks.loco " + shlex.join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": export_commit(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
        f"{arguments.threads} threads",
        "seed": arguments.seed,
        "budgets": {task: budget.describe() for task, budget in budgets.items()},
        "complete": False,
        "cases": [],
    }

    with tempfile.TemporaryDirectory(prefix="mhp-edge-loco-") as work_dir:
        for index, case in enumerate(held_out, start=1):
            print(f"Fold {index}/{len(held_out)}: holding out {case.case_id}", flush=True)
            record = run_fold(
                case,
                cases,
                work_dir=Path(work_dir),
                cache_dir=arguments.cache or default_cache_dir(),
                seed=arguments.seed,
                budgets=budgets,
                threads=arguments.threads,
            )
            document["cases"].append(record)
            document["summary"] = summarise(document["cases"])
            write_results(document, arguments.out)

    document["complete"] = True
    write_results(document, arguments.out)
    print(render_markdown(document), flush=True)
    if arguments.update_cards is not None:
        update_cards(arguments.update_cards, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
