"""Tumour accuracy when the held-out scan's HU are shifted, scored on leave-one-case-out folds.

Run from the repository root, after ``benchmarks.tumour_ablation`` trained the folds::

    python -m benchmarks.hu_shift --folds WORK/mhp-net WORK/mhp-net-liver-hu [--threads 2]
        [--shifts-hu -40 -20 0 20 40] [--cases DIR] [--out benchmarks/results] [--name hu_shift]

The livers of the labelled cases have median HU from 46 to 113, depending on the contrast
phase, the scanner and the patient. This benchmark measures how much a model's tumour Dice depends
on that level. Each fold's tumour model runs on its held-out scan inside the reference liver,
as in the ablation, once per shift: every voxel of the scan plus the shift in HU. A uniform
shift is a rough stand-in for a brighter or darker phase, in which lesion and liver move
together. Post-processing is chosen on the other held-out cases, as in the ablation.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import SimpleITK as sitk

from benchmarks.common import write_result_files
from benchmarks.tumour_ablation import (
    RESULTS_DIR,
    find_folds,
    grid_scores,
    rescore_folds,
    rescored_page,
    summarise_variant,
)
from export.data import CaseFiles, default_data_dir
from mhp_edge.io import read_image
from mhp_edge.pipeline import Segmenter

DEFAULT_SHIFTS_HU = (-40.0, -20.0, 0.0, 20.0, 40.0)


def shifted(image: sitk.Image, shift_hu: float) -> sitk.Image:
    """Return ``image`` as float32 with ``shift_hu`` added to every voxel, geometry unchanged."""
    return sitk.Cast(image, sitk.sitkFloat32) + float(shift_hu)


def score_fold(folder: Path, case: CaseFiles, shifts_hu: Sequence[float], threads: int) -> dict[str, dict]:
    """Return the grid scores of one fold's held-out scan for every shift, keyed by ``"%+g"`` of it."""
    segmenter = Segmenter(models_dir=folder, threads=threads)
    image, label = read_image(case.ct_path), read_image(case.label_path)
    scores = {}
    for shift_hu in shifts_hu:
        probability = segmenter.tumour_probability(shifted(image, shift_hu), label)
        scores[f"{shift_hu:+g}"] = grid_scores(sitk.GetArrayFromImage(probability), label)
        print(f"{folder.parent.name}/{folder.name}: shift {shift_hu:+g} HU scored", flush=True)
    return scores


def render_markdown(document: dict) -> str:
    """Return the results page: one row per variant and shift."""
    return rescored_page(
        "Tumour accuracy under shifted HU (tumour stage, leave-one-case-out folds)",
        document["command"],
        ["folds", "shift"],
        [
            ([variant, f"{shift} HU"], result)
            for variant, by_shift in document["variants"].items()
            for shift, result in by_shift.items()
        ],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hu_shift", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--folds", type=Path, nargs="+", required=True, help="variant folders of tumour_ablation folds"
    )
    parser.add_argument("--shifts-hu", type=float, nargs="+", default=list(DEFAULT_SHIFTS_HU))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", type=Path, default=None, help="labelled cases (default: the shared data)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default="hu_shift")
    arguments = parser.parse_args(argv)

    cases_dir = arguments.cases or default_data_dir() / "cases"
    names = [folds.name for folds in arguments.folds]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        parser.error(
            f"--folds names the variant {', '.join(repeated)} twice, but results are keyed by "
            "folder name. Rename one of the folders."
        )
    # Check every variant before scoring any, so a bad folder does not discard finished scores.
    try:
        found = {folds.name: find_folds(folds, cases_dir) for folds in arguments.folds}
    except ValueError as error:
        parser.error(str(error))

    variants = {}
    for name, folds in found.items():
        scores, records = rescore_folds(
            folds, lambda folder, case: score_fold(folder, case, arguments.shifts_hu, arguments.threads)
        )
        variants[name] = {shift: summarise_variant(scores[shift], records) for shift in scores}

    document = {
        "command": "python -m benchmarks.hu_shift " + " ".join(argv if argv is not None else sys.argv[1:]),
        "folds": [str(folds) for folds in arguments.folds],
        "variants": variants,
    }
    markdown_path = write_result_files(arguments.out, arguments.name, document, render_markdown(document))
    print(f"Wrote {markdown_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
