"""Seed ensembles scored on the folds of tumour leave-one-case-out runs.

Run from the repository root, after ``benchmarks.tumour_ablation`` trained the same variant with
different ``--seed`` values into different ``--work`` folders::

    python -m benchmarks.ensemble --folds WORK_SEED0/mhp-net WORK_SEED1/mhp-net [...]
        [--cases DIR] [--out benchmarks/results] [--name tumour_ensemble]

Each fold stored its model's tumour probability on the held-out scan (inside the reference
liver). This script scores every run alone and the mean of their probabilities, which is what
an ensemble of the runs' models would output. Post-processing is chosen on the other held-out
cases, as in the ablation. No model runs again, so it takes a minute.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import write_result_files
from benchmarks.tumour_ablation import (
    RESULTS_DIR,
    Fold,
    find_folds,
    grid_scores,
    rescore_folds,
    rescored_page,
    summarise_variant,
)
from export.data import CaseFiles, default_data_dir
from mhp_edge.io import read_image

MEAN = "mean"


def stored_probability(folder: Path) -> np.ndarray:
    """Return a fold's held-out tumour probability, float32 (z, y, x) on the label's grid."""
    with np.load(folder / "probability.npz") as stored:
        return stored["probability"].astype(np.float32)


def matched_folds(runs: list[list[Fold]], run_names: list[str]) -> list[list[Fold]]:
    """Group the folds of several runs by held-out case, one fold per run in each group.

    Raises
    ------
    ValueError
        If the runs did not hold out the same cases.
    """
    cases = [sorted(fold.case.case_id for fold in folds) for folds in runs]
    for name, held_out in zip(run_names[1:], cases[1:], strict=True):
        if held_out != cases[0]:
            raise ValueError(
                f"{name} held out {', '.join(held_out)}, but {run_names[0]} held out "
                f"{', '.join(cases[0])}. Pass runs of the same cases."
            )
    by_case = [{fold.case.case_id: fold for fold in folds} for folds in runs]
    return [[folds[case_id] for folds in by_case] for case_id in cases[0]]


def score_group(group: list[Fold], run_names: list[str], case: CaseFiles) -> dict[str, dict]:
    """Return the grid scores of one held-out case for every run alone and for their mean."""
    label = read_image(case.label_path)
    probabilities = [stored_probability(fold.folder) for fold in group]
    scores = {
        name: grid_scores(probability, label)
        for name, probability in zip(run_names, probabilities, strict=True)
    }
    scores[MEAN] = grid_scores(np.mean(probabilities, axis=0), label)
    print(f"{case.case_id}: {len(group)} runs and their mean scored", flush=True)
    return scores


def render_markdown(document: dict) -> str:
    """Return the results page: one row per run and one for the ensemble."""
    return rescored_page(
        "Seed ensembles (tumour stage, leave-one-case-out folds)",
        document["command"],
        ["run"],
        [([name], result) for name, result in document["variants"].items()],
        note="The ensemble's probability is the mean of the runs' probabilities.",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ensemble", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--folds", type=Path, nargs="+", required=True, help="variant folders of two or more runs"
    )
    parser.add_argument("--cases", type=Path, default=None, help="labelled cases (default: the shared data)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default="tumour_ensemble")
    arguments = parser.parse_args(argv)

    cases_dir = arguments.cases or default_data_dir() / "cases"
    run_names = [str(folder) for folder in arguments.folds]
    resolved = [folder.resolve() for folder in arguments.folds]
    if len(set(resolved)) != len(resolved) or len(run_names) < 2:
        parser.error(f"pass two or more different run folders, got {', '.join(run_names)}")
    if MEAN in run_names:
        parser.error(
            f"a run folder named {MEAN!r} would share its row with the ensemble; pass it by another path"
        )
    try:
        runs = [find_folds(folder, cases_dir) for folder in arguments.folds]
        groups = matched_folds(runs, run_names)
    except ValueError as error:
        parser.error(str(error))
    missing = [
        str(fold.folder)
        for group in groups
        for fold in group
        if not (fold.folder / "probability.npz").is_file()
    ]
    if missing:
        parser.error(
            f"no probability.npz in {', '.join(missing)}. Let benchmarks.tumour_ablation finish those folds."
        )

    by_folder = {group[0].folder: group for group in groups}
    scores, records = rescore_folds(
        [group[0] for group in groups], lambda folder, case: score_group(by_folder[folder], run_names, case)
    )
    # The document has a tumour_ablation result's keys, so export.postprocessing --from and
    # export.model_card read it too. Its variant "mean" is the ensemble.
    steps = {fold.record.get("training_steps") for group in groups for fold in group}
    document = {
        "command": "python -m benchmarks.ensemble " + " ".join(argv if argv is not None else sys.argv[1:]),
        "steps": steps.pop() if len(steps) == 1 else None,
        "variants": {name: summarise_variant(scores[name], records) for name in [*run_names, MEAN]},
    }
    markdown_path = write_result_files(arguments.out, arguments.name, document, render_markdown(document))
    print(f"Wrote {markdown_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
