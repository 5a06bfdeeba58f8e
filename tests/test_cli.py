"""The command line: outputs, exit codes and messages, with small linear models."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from dicom_factory import write_series
from mhp_edge import __version__
from mhp_edge.cli import (
    EXIT_BATCH_FAILURES,
    EXIT_INPUT,
    EXIT_MODEL,
    EXIT_OUTPUT,
    EXIT_USAGE,
    _warnings_held_from_stderr,
    app,
)
from mhp_edge.pipeline import LIVER_MODEL_FILE, TUMOUR_MODEL_FILE
from model_factory import make_metadata, write_linear_model
from phantoms import liver_phantom

runner = CliRunner()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    write_linear_model(folder, LIVER_MODEL_FILE, make_metadata("liver"))
    tumour = make_metadata("tumour", hu_mean=200.0, hu_clip=(-250.0, 400.0))
    write_linear_model(folder, TUMOUR_MODEL_FILE, tumour)
    return folder


@pytest.fixture
def scan(tmp_path):
    path = tmp_path / "phantom.nii.gz"
    sitk.WriteImage(liver_phantom(), str(path))
    return path


def segment(*arguments):
    return runner.invoke(app, ["segment", *map(str, arguments)])


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_segment_writes_mask_and_report(tmp_path, scan, models_dir):
    result = segment(scan, "-o", tmp_path / "out", "--models", models_dir, "--threads", 1)
    assert result.exit_code == 0, result.output
    mask = sitk.ReadImage(str(tmp_path / "out" / "phantom_mask.nii.gz"))
    report = json.loads((tmp_path / "out" / "phantom_report.json").read_text())
    assert mask.GetSize() == liver_phantom().GetSize()
    assert len(report["lesions"]) == 1
    assert report["timings_s"]["inference"] >= 0
    assert "1 lesion(s)" in result.output


def test_summary_prints_each_warning_once(tmp_path, scan, models_dir):
    result = segment(scan, "-o", tmp_path / "out", "--models", models_dir)

    # The phantom's liver is far below a real liver's volume, so the run warns about it.
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "phantom_report.json").read_text())
    assert report["warnings"]
    for warning in report["warnings"]:
        assert result.output.count(warning) == 1, result.output
        assert f"warning: {warning}" in result.stderr


def test_verbose_logs_each_warning_once(tmp_path, scan, models_dir):
    result = runner.invoke(
        app, ["-v", "segment", str(scan), "-o", str(tmp_path / "out"), "--models", str(models_dir)]
    )

    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "phantom_report.json").read_text())
    for warning in report["warnings"]:
        assert result.output.count(warning) == 1, result.output
        assert f"WARNING mhp_edge.pipeline: {warning}" in result.stderr


def test_embedder_handler_gets_each_warning_once(tmp_path, scan, models_dir):
    messages = []

    class _Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = _Collect(level=logging.WARNING)
    logging.getLogger("mhp_edge").addHandler(handler)
    try:
        result = segment(scan, "-o", tmp_path / "out", "--models", models_dir)
    finally:
        logging.getLogger("mhp_edge").removeHandler(handler)

    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "phantom_report.json").read_text())
    assert sorted(messages) == sorted(report["warnings"])


def test_held_warnings_logged_once_each():
    class _Collect(logging.Handler):
        def __init__(self):
            super().__init__(level=logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    root_handler, package_handler = _Collect(), _Collect()
    logging.getLogger().addHandler(root_handler)
    logging.getLogger("mhp_edge").addHandler(package_handler)
    try:
        with _warnings_held_from_stderr() as printed:
            for message in ("same text", "same text", "other"):
                logging.getLogger("mhp_edge.pipeline").warning(message)
            assert root_handler.messages == []
            printed.update(["same text"])
    finally:
        logging.getLogger().removeHandler(root_handler)
        logging.getLogger("mhp_edge").removeHandler(package_handler)

    # The summary printed one "same text", so the root handler gets the second one and "other".
    # A handler on the package logger is not held and receives every record once.
    assert root_handler.messages == ["same text", "other"]
    assert package_handler.messages == ["same text", "same text", "other"]


def test_liver_mask_on_other_grid_names_the_mask(tmp_path, scan, models_dir):
    mask_path = tmp_path / "other_grid_liver.nii.gz"
    mask = sitk.Image([16, 16, 8], sitk.sitkUInt8)
    sitk.WriteImage(mask, str(mask_path))

    result = segment(scan, "-o", tmp_path / "out", "--models", models_dir, "--liver-mask", mask_path)

    assert result.exit_code == EXIT_INPUT
    assert f"{mask_path}: liver mask grid" in result.output
    # The output folder did not exist before, so a failed run leaves none behind.
    assert not (tmp_path / "out").exists()


def test_segment_to_mask_file_name(tmp_path, scan, models_dir):
    result = segment(scan, "-o", tmp_path / "result.nrrd", "--models", models_dir)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "result.nrrd").is_file()
    assert (tmp_path / "result_report.json").is_file()


def test_output_with_a_picture_suffix_is_refused(tmp_path, scan, models_dir):
    result = segment(scan, "-o", tmp_path / "result.png", "--models", models_dir)
    assert result.exit_code == EXIT_USAGE
    assert ".png is not a mask file type" in result.output
    assert not (tmp_path / "result.png").exists()


def test_missing_scan_is_input_error(tmp_path, models_dir):
    result = segment(tmp_path / "absent.nii.gz", "-o", tmp_path, "--models", models_dir)
    assert result.exit_code == EXIT_INPUT
    assert "absent.nii.gz: file not found" in result.output
    assert list(tmp_path.iterdir()) == []


def test_label_mask_as_scan_rejected(tmp_path, models_dir):
    labels = np.zeros((20, 40, 40), dtype=np.uint8)
    labels[5:15, 10:30, 10:30] = 1
    labels[8:12, 15:20, 15:20] = 2
    label_path = tmp_path / "case_label.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(label_path))

    result = segment(label_path, "-o", tmp_path / "out", "--models", models_dir)

    assert result.exit_code == EXIT_INPUT
    assert f"{label_path}: the image has only the values 0, 1, 2, like a label mask" in result.output
    assert not (tmp_path / "out").exists()


def test_existing_output_is_output_error(tmp_path, scan, models_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "phantom_mask.nii.gz").write_bytes(b"earlier result")
    result = segment(scan, "-o", out, "--models", models_dir)
    assert result.exit_code == EXIT_OUTPUT
    assert "--overwrite" in result.output
    assert (out / "phantom_mask.nii.gz").read_bytes() == b"earlier result"
    assert not (out / "phantom_report.json").exists()


def test_output_equal_to_input_refused(scan, models_dir):
    result = segment(scan, "-o", scan, "--models", models_dir, "--overwrite")
    assert result.exit_code == EXIT_OUTPUT
    assert "is the input scan" in result.output
    assert sitk.ReadImage(str(scan)).GetSize() == liver_phantom().GetSize()


def test_missing_model_is_model_error(tmp_path, scan):
    result = segment(scan, "-o", tmp_path / "out", "--models", tmp_path)
    assert result.exit_code == EXIT_MODEL
    assert "model file not found" in result.output
    assert not (tmp_path / "out").exists()


def test_evaluate_identical_masks(tmp_path):
    mask = tmp_path / "mask.nii.gz"
    labels = sitk.Cast(sitk.Clamp(liver_phantom(), lowerBound=0, upperBound=2), sitk.sitkUInt8)
    sitk.WriteImage(labels, str(mask))
    result = runner.invoke(app, ["evaluate", str(mask), str(mask)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["liver_dice"] == 1.0
    assert metrics["tumour_dice"] == 1.0
    assert metrics["false_positive_lesions"] == 0


def test_info_prints_cards(models_dir):
    result = runner.invoke(app, ["info", "--models", str(models_dir)])
    assert result.exit_code == 0, result.output
    assert "test-liver" in result.output


def test_segment_writes_lesion_csv(tmp_path, scan, models_dir):
    result = segment(scan, "-o", tmp_path, "--models", models_dir)
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "phantom_lesions.csv").read_text().splitlines()
    assert rows[0].startswith("lesion_id,volume_ml,longest_axial_diameter_mm")
    assert len(rows) == 2


def test_batch_folder_skips_done_and_reports_failures(tmp_path, models_dir):
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("a", "b"):
        sitk.WriteImage(liver_phantom(), str(scans / f"{name}.nii.gz"))
    (scans / "broken.nii.gz").write_bytes(b"not a scan")
    out = tmp_path / "out"

    first = segment(scans, "-o", out, "--models", models_dir)
    assert first.exit_code == EXIT_BATCH_FAILURES
    assert "2 segmented, 0 skipped, 1 failed of 3 scans" in first.output
    assert "broken.nii.gz" in first.output
    assert (out / "a_mask.nii.gz").is_file()
    assert not (out / "broken_mask.nii.gz").exists()

    (scans / "broken.nii.gz").unlink()
    second = segment(scans, "-o", out, "--models", models_dir)
    assert second.exit_code == 0, second.output
    assert "0 segmented, 2 skipped, 0 failed of 2 scans" in second.output


def test_batch_from_list_file(tmp_path, models_dir):
    sitk.WriteImage(liver_phantom(), str(tmp_path / "one.nrrd"))
    listing = tmp_path / "scans.txt"
    listing.write_text("# scans to run\none.nrrd\n\n")
    result = segment(listing, "-o", tmp_path / "out", "--models", models_dir)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "one_mask.nii.gz").is_file()


def test_batch_rejects_liver_mask(tmp_path, scan, models_dir):
    result = segment(scan.parent, "-o", tmp_path / "out", "--models", models_dir, "--liver-mask", scan)
    assert result.exit_code == 2
    assert "a batch takes an output folder" in result.output


def test_batch_with_same_names_rejected(tmp_path, models_dir):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        sitk.WriteImage(liver_phantom(), str(tmp_path / folder / "scan.nii.gz"))
    listing = tmp_path / "scans.txt"
    listing.write_text("a/scan.nii.gz\nb/scan.nii.gz\n")
    result = segment(listing, "-o", tmp_path / "out", "--models", models_dir)
    assert result.exit_code == 2
    assert "would both write scan_mask.nii.gz" in result.output


def test_batch_into_its_own_folder_rejected(tmp_path, scan, models_dir):
    result = segment(scan.parent, "-o", scan.parent, "--models", models_dir)
    assert result.exit_code == 2
    assert "contains scans of this batch" in result.output


def test_folder_with_images_and_dicom_rejected(tmp_path, scan, models_dir):
    (scan.parent / "slice.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    result = segment(scan.parent, "-o", tmp_path / "out", "--models", models_dir)
    assert result.exit_code == 2
    assert "contains both image files" in result.output


def test_mask_name_shadowing_scan_rejected(scan, models_dir):
    result = segment(scan, "-o", scan.with_name("phantom.nii"), "--models", models_dir)
    assert result.exit_code == EXIT_OUTPUT
    assert "same name as the input scan" in result.output
    assert not scan.with_name("phantom.nii").exists()


def test_dicom_series_tie_reaches_report(tmp_path, models_dir):
    hu = sitk.GetArrayFromImage(liver_phantom())
    write_series(tmp_path / "study" / "a", hu, series_number=2)
    write_series(tmp_path / "study" / "b", hu, series_number=3)

    result = segment(tmp_path / "study", "-o", tmp_path / "out", "--models", models_dir)

    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "study_report.json").read_text())
    assert any("1 other series tie with the chosen one" in warning for warning in report["warnings"])


def test_series_option_needs_dicom_folder(tmp_path, scan, models_dir):
    result = segment(scan, "-o", tmp_path / "out", "--models", models_dir, "--series", "1.2.3")
    assert result.exit_code == 2
    assert "--series picks a series" in result.output


def test_evaluate_rejects_ct_as_reference(tmp_path, scan):
    mask = tmp_path / "mask.nii.gz"
    labels = sitk.Image(liver_phantom().GetSize(), sitk.sitkUInt8)
    labels.CopyInformation(liver_phantom())
    sitk.WriteImage(labels, str(mask))
    result = runner.invoke(app, ["evaluate", str(mask), str(scan)])
    assert result.exit_code == EXIT_INPUT
    assert "Was a CT given" in result.output


def test_evaluate_rejects_other_origin(tmp_path):
    labels = sitk.Image(liver_phantom().GetSize(), sitk.sitkUInt8)
    sitk.WriteImage(labels, str(tmp_path / "a.nii.gz"))
    labels.SetOrigin((5.0, 0.0, 0.0))
    sitk.WriteImage(labels, str(tmp_path / "b.nii.gz"))
    result = runner.invoke(app, ["evaluate", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")])
    assert result.exit_code == EXIT_INPUT
    assert "differs from the reference grid" in result.output


def test_batch_log_lines_name_their_scan(tmp_path, models_dir):
    scans = tmp_path / "scans"
    scans.mkdir()
    # The phantom's liver is far below a real liver's volume, so every scan logs a warning.
    sitk.WriteImage(liver_phantom(), str(scans / "first.nii.gz"))
    sitk.WriteImage(liver_phantom(), str(scans / "second.nii.gz"))

    result = segment(scans, "-o", tmp_path / "out", "--models", models_dir)

    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("WARNING")]
    assert any(": first.nii.gz: " in line for line in warnings), warnings
    assert any(": second.nii.gz: " in line for line in warnings), warnings


@pytest.mark.parametrize("module", ["mhp_edge", "mhp_edge.cli"])
def test_python_m_runs_the_command_line(module):
    result = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"mhp-edge {__version__}"
