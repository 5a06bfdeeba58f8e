"""Flip test-time augmentation scored on the folds of a tumour leave-one-case-out run.

Run from the repository root, after ``benchmarks.tumour_ablation`` trained the folds::

    python -m benchmarks.flip_tta --folds /tmp/mhp-edge-ablation/mhp-net [--threads 2]
        [--cases DIR] [--out benchmarks/results] [--name flip_tta]

Each fold's tumour model runs on its held-out scan inside the reference liver, as in the
ablation, once per set of flips: no flip, x, x and y, and all eight combinations of z, y and x.
Every patch is also run flipped, its logits flipped back, and the logits averaged before the
runtime blends the patches. Post-processing is chosen on the other held-out cases, as in the
ablation. The inference time grows with the number of flips (2, 4 and 8 times).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
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

# Batch axes are (N, channel, z, y, x), so the spatial axes are 2, 3 and 4.
FLIP_SETS = {
    "none": [()],
    "x": [(), (4,)],
    "xy": [(), (4,), (3,), (3, 4)],
    "xyz": [axes for count in range(4) for axes in itertools.combinations((2, 3, 4), count)],
}


def averaged_over_flips(
    predict: Callable[[list[np.ndarray]], np.ndarray], flips: Sequence[tuple[int, ...]]
) -> Callable[[list[np.ndarray]], np.ndarray]:
    """Return a predict function that averages ``predict``'s logits over flipped copies of its batches.

    Each entry of ``flips`` names the batch axes to flip (empty: the batches as given). The
    logits of a flipped copy are flipped back before averaging, float32 (N, 1, z, y, x).
    """

    def predict_flipped(batches: list[np.ndarray]) -> np.ndarray:
        total = None
        for axes in flips:
            flipped = [np.ascontiguousarray(np.flip(batch, axes)) for batch in batches]
            logits = np.flip(predict(flipped), axes)
            total = logits if total is None else total + logits
        return (total / len(flips)).astype(np.float32)

    return predict_flipped


def score_fold(folder: Path, case: CaseFiles, threads: int) -> dict[str, dict]:
    """Return the grid scores of one fold's held-out scan for every flip set."""
    segmenter = Segmenter(models_dir=folder, threads=threads)
    image, label = read_image(case.ct_path), read_image(case.label_path)
    predict = segmenter.tumour_model.predict
    scores = {}
    for name, flips in FLIP_SETS.items():
        segmenter.tumour_model.predict = averaged_over_flips(predict, flips)
        probability = sitk.GetArrayFromImage(segmenter.tumour_probability(image, label))
        scores[name] = grid_scores(probability, label)
        print(f"{folder.name}: flips {name} scored", flush=True)
    return scores


def render_markdown(document: dict) -> str:
    """Return the results page: one row per flip set."""
    return rescored_page(
        "Flip test-time augmentation (tumour stage, leave-one-case-out folds)",
        document["command"],
        ["flips", "passes"],
        [([name, str(len(FLIP_SETS[name]))], result) for name, result in document["flip_sets"].items()],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.flip_tta", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--folds", type=Path, required=True, help="a variant's folder of tumour_ablation folds"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", type=Path, default=None, help="labelled cases (default: the shared data)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default="flip_tta")
    arguments = parser.parse_args(argv)

    cases_dir = arguments.cases or default_data_dir() / "cases"
    try:
        folds = find_folds(arguments.folds, cases_dir)
    except ValueError as error:
        parser.error(str(error))
    scores, records = rescore_folds(folds, lambda folder, case: score_fold(folder, case, arguments.threads))

    document = {
        "command": "python -m benchmarks.flip_tta " + " ".join(argv if argv is not None else sys.argv[1:]),
        "folds": str(arguments.folds),
        "flip_sets": {name: summarise_variant(scores[name], records) for name in FLIP_SETS},
    }
    markdown_path = write_result_files(arguments.out, arguments.name, document, render_markdown(document))
    print(f"Wrote {markdown_path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
