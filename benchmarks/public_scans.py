"""Tumour volume that models mark on the two unlabelled public scans, which no model trained on.

Run from the repository root::

    python -m benchmarks.public_scans MODELS_DIR [MODELS_DIR ...] [--threads 2]
        [--out benchmarks/results/public_scans.md]

Each ``MODELS_DIR`` contains a ``liver_net.onnx`` and an ``mhp_net.onnx`` with their cards, such as
``models/`` or the fold folders that ``benchmarks.tumour_ablation`` leaves in its ``--work``
folder (``WORK/VARIANT/CASE``). The scans are the CC BY 4.0 TCIA HCC-TACE-Seg series in the
data folder's ``public/`` (``$MHP_EDGE_DATA``, else ``../shared/data``):

- ``hcc_006_ct_liver.nii.gz``: one round hypodense tumour of about 27 mm (about 10 mL) in the
  posterior right lobe. Image noise in its liver is two to three times that of the labelled cases.
- ``hcc_048_ct_liver.nii.gz``: no lesion visible by eye.

There are no labels, so this is no accuracy measure. It shows how much a model marks on scans
from another hospital: tens of millilitres on ``hcc_048``, or far more than 10 mL on
``hcc_006``, are false positives.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from export.data import REPO_ROOT, default_data_dir
from mhp_edge.io import read_image
from mhp_edge.pipeline import Segmenter

PUBLIC_SCANS = ("hcc_006_ct_liver.nii.gz", "hcc_048_ct_liver.nii.gz")


def mark_public_scans(models_dir: Path, scans: list[Path], *, threads: int) -> list[dict[str, Any]]:
    """Segment each scan with the models in ``models_dir``.

    Returns
    -------
    list of dict
        Per scan: ``scan``, ``liver_ml``, ``tumour_ml``, ``lesions`` and ``largest_ml``.
    """
    segmenter = Segmenter(models_dir, threads=threads)
    rows = []
    for scan in scans:
        result = segmenter.segment(read_image(scan))
        volumes_ml = sorted((lesion.volume_ml for lesion in result.lesions), reverse=True)
        rows.append(
            {
                "scan": scan.name,
                "liver_ml": result.liver_volume_ml,
                "tumour_ml": result.tumour_volume_ml,
                "lesions": len(volumes_ml),
                "largest_ml": round(volumes_ml[0], 1) if volumes_ml else 0.0,
            }
        )
    return rows


def render_markdown(results: dict[str, list[dict[str, Any]]], command: str) -> str:
    """Return the results page: one row per model folder and scan."""
    lines = [
        "# Tumour models on the unlabelled public scans",
        "",
        f"Command: `{command}`",
        "",
        "hcc_006 has one tumour of about 10 mL; hcc_048 has no lesion visible by eye. Volumes in mL.",
        "",
        "| models | scan | liver | tumour | lesions | largest lesion |",
        "|---|---|---|---|---|---|",
    ]
    for models_dir, rows in results.items():
        for row in rows:
            lines.append(
                f"| `{models_dir}` | {row['scan']} | {row['liver_ml']:.0f} | {row['tumour_ml']:.1f} | "
                f"{row['lesions']} | {row['largest_ml']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models_dirs", nargs="+", type=Path, help="folders with both ONNX models")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "public_scans.md")
    arguments = parser.parse_args(argv)

    public_dir = default_data_dir() / "public"
    scans = [public_dir / name for name in PUBLIC_SCANS]
    missing = [str(scan) for scan in scans if not scan.exists()]
    if missing:
        parser.error(f"missing public scans {missing}; set MHP_EDGE_DATA to the data folder.")

    results = {}
    for models_dir in arguments.models_dirs:
        results[str(models_dir)] = mark_public_scans(models_dir, scans, threads=arguments.threads)
        for row in results[str(models_dir)]:
            print(
                f"{models_dir} {row['scan']}: {row['tumour_ml']} mL in {row['lesions']} lesions", flush=True
            )

    command = "python -m benchmarks.public_scans " + shlex.join(sys.argv[1:] if argv is None else argv)
    arguments.out.write_text(render_markdown(results, command))
    print(f"wrote {arguments.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
