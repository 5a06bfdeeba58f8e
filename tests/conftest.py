"""Shared fixtures: where the labelled data lives, and small real ONNX models built with onnx."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_SCAN = REPO_ROOT / "examples" / "hcc_006_ct_liver.nii.gz"


def data_dir() -> Path:
    """Return the folder holding ``cases/``: $MHP_EDGE_DATA, else ../shared/data beside the repo."""
    return Path(os.environ.get("MHP_EDGE_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def cases_dir() -> Path:
    """The labelled cases; skip without them, except under CI=true where that is a failure."""
    folder = data_dir() / "cases"
    if not (folder / "ircadb_01_ct.nii.gz").is_file():
        message = f"labelled cases not found in {folder}; set MHP_EDGE_DATA to the folder holding cases/"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return folder
