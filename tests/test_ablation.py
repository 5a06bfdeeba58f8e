"""The ablation benchmark's post-processing choice: chosen on other cases, never the scored one."""

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("torch")

from benchmarks.common import run_folds, write_result_files  # noqa: E402
from benchmarks.liver_loco import render_markdown  # noqa: E402
from benchmarks.tumour_ablation import (  # noqa: E402
    MIN_LESION_MM3,
    THRESHOLDS,
    choose_postprocessing,
    score_case,
    summarise_variant,
)
from export.model_card import render_liver_accuracy  # noqa: E402

# A summarised variant, as ``summarise_variant`` returns it, for the page renderers.
SUMMARY = {
    "tumour_dice": {"mean": 0.5, "sd": 0.1, "n": 2},
    "lesion_dice": {"mean": 0.4, "sd": 0.2, "n": 3},
    "recall_large": {"found": 2, "total": 3, "recall": 0.667},
    "recall_small": {"found": 0, "total": 0, "recall": None},
    "false_positives": {"mean": 1.0, "sd": 0.0, "n": 2},
}


def fake_scores(best: dict[str, tuple[float, float]]) -> dict[str, dict]:
    """Scores where each case reaches Dice 0.9 at its own best pair and 0.1 elsewhere."""
    scores = {}
    for case, pair in best.items():
        scores[case] = {
            (t, m): {
                "tumour_dice": 0.9 if (t, m) == pair else 0.1,
                "false_positive_lesions": 0,
                "lesions": [{"dice": 0.5, "detected": True, "diameter_mm": 20.0}],
                "lesion_recall_large": 1.0,
                "lesion_recall_small": None,
                "reference_lesions": 1,
            }
            for t in THRESHOLDS
            for m in MIN_LESION_MM3
        }
    return scores


def test_choice_ignores_the_scored_case():
    # Case "c" alone prefers (0.8, 500); the two others prefer (0.3, 0).
    scores = fake_scores({"a": (0.3, 0.0), "b": (0.3, 0.0), "c": (0.8, 500.0)})
    folds = {case: {"training_steps": 10, "training_lesions": 5} for case in scores}

    summary = summarise_variant(scores, folds)

    rows = {row["case"]: row for row in summary["cases"]}
    assert (rows["c"]["threshold"], rows["c"]["min_lesion_mm3"]) == (0.3, 0.0)
    assert rows["c"]["tumour_dice"] == pytest.approx(0.1)
    assert rows["a"]["tumour_dice"] == pytest.approx(0.9)
    assert summary["chosen_on_all"] == [0.3, 0.0]


def test_choice_breaks_ties_by_fewer_false_positives():
    scores = fake_scores({"a": (0.5, 100.0)})
    for pair, result in scores["a"].items():
        result["tumour_dice"] = 0.5
        result["false_positive_lesions"] = 0 if pair == (0.7, 250.0) else 3

    assert choose_postprocessing(scores, ["a"]) == (0.7, 250.0)


def test_choice_skips_pairs_over_false_positive_limit():
    # The best-Dice pair gives 2 false positives per scan, above the limit of 1.
    scores = fake_scores({"a": (0.2, 0.0), "b": (0.2, 0.0)})
    for case in scores:
        scores[case][(0.2, 0.0)]["false_positive_lesions"] = 2
        scores[case][(0.4, 100.0)]["tumour_dice"] = 0.6

    assert choose_postprocessing(scores, ["a", "b"]) == (0.4, 100.0)


def test_choice_without_allowed_pair_minimises_false_positives():
    scores = fake_scores({"a": (0.2, 0.0)})
    for pair, result in scores["a"].items():
        result["false_positive_lesions"] = 2 if pair == (0.8, 500.0) else 5

    assert choose_postprocessing(scores, ["a"]) == (0.8, 500.0)


def test_score_case_keeps_tumour_inside_reference_liver():
    label_array = np.zeros((10, 20, 20), dtype=np.uint8)
    label_array[2:8, 4:16, 4:16] = 1
    label_array[4:6, 8:12, 8:12] = 2
    label = sitk.GetImageFromArray(label_array)
    probability = np.zeros(label_array.shape, dtype=np.float16)
    probability[4:6, 8:12, 8:12] = 0.9
    probability[0, 0, 0] = 0.9  # outside the liver: never counted

    result = score_case(probability, label, threshold=0.5, min_mm3=0.0)

    assert result["tumour_dice"] == pytest.approx(1.0)
    assert result["false_positive_lesions"] == 0


def test_run_folds_keeps_fold_order():
    folds = [([("fold", index)],) for index in range(3)]

    records = list(run_folds(dict, folds, jobs=2, extra=True))

    assert records == [{"fold": 0, "extra": True}, {"fold": 1, "extra": True}, {"fold": 2, "extra": True}]


def test_write_result_files_writes_json_and_markdown(tmp_path):
    markdown_path = write_result_files(tmp_path / "out", "run", {"a": 1}, "# Run\n")

    assert markdown_path.read_text() == "# Run\n"
    assert (tmp_path / "out" / "run.json").read_text() == '{\n  "a": 1\n}\n'


@pytest.mark.parametrize(
    ("scored_at", "expected"), [(None, "1 thread(s), 2 fold(s)"), ("abc", "scored with 1")]
)
def test_liver_results_name_training_or_scoring(scored_at, expected):
    row = {"case": "a", "liver_dice": 0.9, "predicted_ml": 1.0, "reference_ml": 1.0, "liver_stage_s": 0.1}
    document = {
        "command": "python -m benchmarks.liver_loco",
        "machine": "x86_64",
        "task": "liver",
        "minutes": 12.0,
        "steps": 3000,
        "threads": 1,
        "jobs": 2,
        "commit": {"export_commit": "0" * 40, "export_tree_dirty": False},
        "scored_at_commit": None
        if scored_at is None
        else {"export_commit": scored_at, "export_tree_dirty": False},
        "cases": [{**row, "training_steps": 3000}],
        "summary": {"liver_dice": {"mean": 0.9, "sd": 0.0, "n": 1}},
    }

    assert expected in render_markdown(document)


def test_model_card_uses_rescored_tumour_cost():
    def result(command, model_dice):
        runs = {"model_liver": {"tumour_dice": model_dice}, "reference_liver": {"tumour_dice": 0.5}}
        return {
            "command": command,
            "task": "liver",
            "steps": 3000,
            "cases": [{"case": "a", "liver_dice": 0.9, "predicted_ml": 1.0, "reference_ml": 1.0}],
            "tumour": {"a": runs},
            "summary": {
                "liver_dice": {"mean": 0.9, "sd": 0.0, "n": 1},
                "tumour_dice_model_liver": {"mean": model_dice, "sd": 0.0, "n": 1},
                "tumour_dice_reference_liver": {"mean": 0.5, "sd": 0.0, "n": 1},
            },
        }

    page = "\n".join(render_liver_accuracy(result("trained", 0.2), result("rescored", 0.45)))

    assert "0.450 with the liver model" in page
    assert "`rescored`" in page
    assert "0.200" not in page


def test_flip_average_undoes_each_flip():
    from benchmarks.flip_tta import FLIP_SETS, averaged_over_flips

    rng = np.random.default_rng(0)
    batch = rng.normal(size=(2, 1, 4, 6, 8)).astype(np.float32)

    # A flip-equivariant model (identity) gives its own output for every flip set. A model that
    # is not (a running sum along x) gives the mean of the forward and the backward sums.
    for flips in FLIP_SETS.values():
        np.testing.assert_allclose(averaged_over_flips(lambda b: b[0], flips)([batch]), batch, atol=1e-6)
    running_sum = averaged_over_flips(lambda b: np.cumsum(b[0], axis=4), FLIP_SETS["x"])([batch])
    backward = np.flip(np.cumsum(np.flip(batch, 4), axis=4), 4)
    np.testing.assert_allclose(running_sum, (np.cumsum(batch, axis=4) + backward) / 2, atol=1e-5)


def test_shifted_scan_keeps_its_geometry():
    from benchmarks.hu_shift import shifted

    image = sitk.GetImageFromArray(np.array([[[-1024, 0, 57]]], dtype=np.int16))
    image.SetSpacing((0.8, 0.7, 2.5))
    image.SetOrigin((-10.0, 20.0, 30.0))

    result = shifted(image, -40.0)

    np.testing.assert_array_equal(sitk.GetArrayFromImage(result), [[[-1064.0, -40.0, 17.0]]])
    assert result.GetSpacing() == image.GetSpacing()
    assert result.GetOrigin() == image.GetOrigin()


def test_finding_folds_in_an_empty_folder_names_it(tmp_path):
    from benchmarks.tumour_ablation import find_folds

    with pytest.raises(ValueError, match=f"{tmp_path}: no fold.json"):
        find_folds(tmp_path, tmp_path)


def test_finding_folds_rejects_bad_folders(tmp_path):
    from benchmarks.tumour_ablation import find_folds

    cases = tmp_path / "cases"
    cases.mkdir()
    for case_id in ("case_a", "case_b"):
        for kind in ("ct", "label"):
            (cases / f"{case_id}_{kind}.nii.gz").write_bytes(b"")
    variant = tmp_path / "work" / "mhp-net"
    for case_id in ("case_a", "case_c"):
        (variant / case_id).mkdir(parents=True)
        (variant / case_id / "fold.json").write_text("{}")

    with pytest.raises(ValueError, match="folder not found"):
        find_folds(tmp_path / "missing", cases)
    with pytest.raises(ValueError, match="variant folders mhp-net: pass one of them"):
        find_folds(tmp_path / "work", cases)
    with pytest.raises(ValueError, match="held-out case case_c is not in"):
        find_folds(variant, cases)
    (variant / "case_a" / "fold.json").write_text("")
    with pytest.raises(ValueError, match="case_a/fold.json: invalid fold record"):
        find_folds(variant, cases)


def test_model_card_names_the_liver_median():
    import json

    from export.model_card import render_model_section
    from model_factory import make_metadata

    def card(metadata):
        return {
            "name": "test-tumour",
            "model_file": "mhp_net.onnx",
            "task": "tumour",
            "architecture": "A test network.",
            "parameters": 10,
            "training_cases": ["case_01"],
            "sha256": "0" * 64,
            "metadata": json.loads(metadata.to_json()),
        }

    shifted = "\n".join(render_model_section(card(make_metadata("tumour", liver_median_hu=100.0))))
    plain = "\n".join(render_model_section(card(make_metadata("tumour"))))

    assert "the liver's median is 100.0 HU" in shifted
    assert "median" not in plain


def test_shift_page_lists_each_case():
    from benchmarks.hu_shift import render_markdown as render_shift_page

    summary = SUMMARY
    cases = [
        {"case": "case_a", "tumour_dice": 0.6, "false_positives": 1, "threshold": 0.3},
        {"case": "case_b", "tumour_dice": 0.4, "false_positives": 1, "threshold": 0.2},
    ]
    document = {
        "command": "python -m benchmarks.hu_shift",
        "variants": {"mhp-net": {"-20": {"summary": summary, "cases": cases}}},
    }

    page = render_shift_page(document)

    assert "| mhp-net | -20 HU | 0.500 +- 0.100 |" in page
    assert "- mhp-net, -20 HU: case_a 0.600 / 1 / 0.3, case_b 0.400 / 1 / 0.2" in page


def test_ensemble_rejects_runs_of_other_cases(tmp_path):
    from benchmarks.ensemble import matched_folds
    from benchmarks.tumour_ablation import find_folds

    cases = tmp_path / "cases"
    cases.mkdir()
    for case_id in ("case_a", "case_b", "case_c"):
        for kind in ("ct", "label"):
            (cases / f"{case_id}_{kind}.nii.gz").write_bytes(b"")
    runs = {"seed0": ("case_a", "case_b"), "seed1": ("case_b", "case_a"), "seed2": ("case_a", "case_c")}
    for run, held_out in runs.items():
        for case_id in held_out:
            (tmp_path / run / case_id).mkdir(parents=True)
            (tmp_path / run / case_id / "fold.json").write_text("{}")
    found = {run: find_folds(tmp_path / run, cases) for run in runs}

    groups = matched_folds([found["seed0"], found["seed1"]], ["seed0", "seed1"])
    assert [[fold.folder.parent.name for fold in group] for group in groups] == [["seed0", "seed1"]] * 2
    assert [group[0].case.case_id for group in groups] == ["case_a", "case_b"]
    with pytest.raises(ValueError, match="seed2 held out case_a, case_c, but seed0 held out case_a, case_b"):
        matched_folds([found["seed0"], found["seed2"]], ["seed0", "seed2"])


def test_ensemble_rejects_repeated_or_unfinished_runs(tmp_path, capsys):
    from benchmarks.ensemble import main as ensemble_main

    cases = tmp_path / "cases"
    cases.mkdir()
    for case_id in ("case_a", "case_b"):
        for kind in ("ct", "label"):
            (cases / f"{case_id}_{kind}.nii.gz").write_bytes(b"")
    for run in ("seed0", "seed1"):
        for case_id in ("case_a", "case_b"):
            (tmp_path / run / case_id).mkdir(parents=True)
            (tmp_path / run / case_id / "fold.json").write_text("{}")
    same_run = str(tmp_path / "seed1" / ".." / "seed0")

    with pytest.raises(SystemExit):
        ensemble_main(["--folds", str(tmp_path / "seed0"), same_run, "--cases", str(cases)])
    assert "pass two or more different run folders" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ensemble_main(["--folds", str(tmp_path / "seed0"), str(tmp_path / "seed1"), "--cases", str(cases)])
    assert "no probability.npz in" in capsys.readouterr().err


def test_model_card_reads_results_without_budget():
    from export.model_card import render_tumour_accuracy

    summary = {**SUMMARY, "training_steps": {"mean": 800.0, "sd": 20.0, "n": 2}}
    results = {
        "command": "python -m benchmarks.ensemble",
        "steps": None,
        "variants": {"mean": {"summary": summary}},
    }

    lines = render_tumour_accuracy(results, title="Ensemble", note="")

    assert any("Each fold trained for the budget of its run" in line for line in lines)
