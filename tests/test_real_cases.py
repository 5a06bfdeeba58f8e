"""End-to-end runs with the shipped models: the demo scan, a labelled case, repeatability.

The shipped models were trained on every labelled case, so Dice on a labelled case here guards
against regressions, because a broken pipeline scores near 0. It is not an accuracy estimate. The
leave-one-case-out accuracy is in models/MODEL_CARD.md.
"""

import json

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from conftest import DEMO_SCAN
from mhp_edge.cli import app
from mhp_edge.evaluate import evaluate_masks
from mhp_edge.io import read_image
from mhp_edge.pipeline import Segmenter

# Floors for a training case: far below what the models reach on it, far above a broken run.
LIVER_DICE_FLOOR = 0.85
TUMOUR_DICE_FLOOR = 0.4


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter(threads=2)


def assert_same_grid(mask: sitk.Image, scan: sitk.Image) -> None:
    assert mask.GetSize() == scan.GetSize()
    assert mask.GetSpacing() == scan.GetSpacing()
    assert mask.GetOrigin() == scan.GetOrigin()
    assert mask.GetDirection() == scan.GetDirection()
    assert mask.GetPixelID() == sitk.sitkUInt8


def test_demo_scan_from_command_line(tmp_path):
    result = CliRunner().invoke(app, ["segment", str(DEMO_SCAN), "-o", str(tmp_path), "--preview"])
    assert result.exit_code == 0, result.output

    scan = sitk.ReadImage(str(DEMO_SCAN))
    mask = sitk.ReadImage(str(tmp_path / "hcc_006_ct_liver_mask.nii.gz"))
    report = json.loads((tmp_path / "hcc_006_ct_liver_report.json").read_text())
    assert_same_grid(mask, scan)
    # The demo is cropped to the liver's slices, so the whole liver is in it: an adult liver.
    assert 800 < report["liver_volume_ml"] < 3000
    assert (tmp_path / "hcc_006_ct_liver_preview.png").stat().st_size > 10_000


def test_repeatable_across_runs_and_threads(segmenter):
    scan = sitk.ReadImage(str(DEMO_SCAN))
    first = segmenter.segment(scan).mask_array
    second = segmenter.segment(scan).mask_array
    single = Segmenter(threads=1).segment(scan).mask_array
    assert np.array_equal(first, second)
    assert np.array_equal(first, single)


def test_labelled_case_end_to_end(cases_dir, segmenter):
    scan = sitk.ReadImage(str(cases_dir / "radctt_2144_ct.nii.gz"))
    reference = sitk.ReadImage(str(cases_dir / "radctt_2144_label.nii.gz"))
    result = segmenter.segment(scan)
    assert_same_grid(result.mask, scan)

    metrics = evaluate_masks(result.mask, reference)
    assert metrics["liver_dice"] > LIVER_DICE_FLOOR
    assert metrics["tumour_dice"] > TUMOUR_DICE_FLOOR
    assert metrics["lesion_recall"] == 1.0


def test_labelled_case_with_reference_liver(cases_dir, segmenter):
    scan = sitk.ReadImage(str(cases_dir / "radctt_1720_ct.nii.gz"))
    reference = sitk.ReadImage(str(cases_dir / "radctt_1720_label.nii.gz"))
    liver = sitk.Cast(reference > 0, sitk.sitkUInt8)
    result = segmenter.segment(scan, liver_mask=liver)
    metrics = evaluate_masks(result.mask, reference)
    assert result.liver_source == "mask"
    assert metrics["liver_dice"] > 0.99
    assert metrics["tumour_dice"] > TUMOUR_DICE_FLOOR


def test_dicom_folder_matches_nifti(cases_dir, segmenter):
    folder = cases_dir.parent / "dicom" / "radctt_2022"
    from_dicom = segmenter.segment(read_image(folder)).mask_array
    from_nifti = segmenter.segment(sitk.ReadImage(str(cases_dir / "radctt_2022_ct.nii.gz"))).mask_array
    assert np.array_equal(from_dicom, from_nifti)


def test_liver_mask_last_slice_on_grid_boundary(cases_dir, segmenter):
    # 100 slices of 1.6 mm are exactly 40 of the liver model's 4 mm voxels, so the last slice
    # lies more than half a coarse voxel past the coarse grid. The liver crosses it.
    scan = read_image(cases_dir / "ircadb_01_ct.nii.gz")[:, :, :100]
    reference = sitk.GetArrayFromImage(read_image(cases_dir / "ircadb_01_label.nii.gz")[:, :, :100]) > 0
    assert reference[-1].sum() > 10_000

    liver = sitk.GetArrayFromImage(segmenter.liver_mask(scan)) > 0

    assert liver[-1].sum() > 0.5 * reference[-1].sum()
