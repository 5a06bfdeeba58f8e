"""Command line: ``mhp-edge segment``, ``evaluate`` and ``info``.

Exit codes: 0 success, 1 internal failure (a bug: please report it), 2 invalid usage,
3 invalid or unreadable input, 4 invalid or missing model, 5 output cannot be written.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from mhp_edge import __version__
from mhp_edge.errors import (
    ConfigurationError,
    InputImageError,
    MhpEdgeError,
    ModelError,
    OutputError,
)

EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_MODEL = 4
EXIT_OUTPUT = 5

_EXIT_CODES = {
    InputImageError: EXIT_INPUT,
    ModelError: EXIT_MODEL,
    OutputError: EXIT_OUTPUT,
    ConfigurationError: EXIT_USAGE,
}

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="CPU-only liver and liver-tumour segmentation of contrast-enhanced CT. "
    "Research use only, not for clinical use.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mhp-edge {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log each decision (INFO level) to stderr.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Set up logging for every command."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(err: Exception) -> typer.Exit:
    code = next((code for kind, code in _EXIT_CODES.items() if isinstance(err, kind)), EXIT_INTERNAL)
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(code)


def _output_paths(source: Path, output: Path) -> tuple[Path, Path]:
    """Return (mask path, report path) for a scan and an output folder or mask file name."""
    from mhp_edge.io import image_suffix

    if image_suffix(output):
        mask_path = output
        stem = output.name[: -len(image_suffix(output))]
        return mask_path, output.with_name(stem + "_report.json")
    suffix = image_suffix(source)
    stem = source.name[: -len(suffix)] if suffix else source.name.rstrip("/")
    return output / f"{stem}_mask.nii.gz", output / f"{stem}_report.json"


@app.command()
def segment(
    scan: Annotated[
        Path, typer.Argument(help="CT scan: .nii/.nii.gz/.nrrd/.mha file or a DICOM series folder.")
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Output folder (writes <name>_mask.nii.gz and <name>_report.json) or a mask file "
            "name ending in .nii.gz, .nrrd or .mha.",
        ),
    ] = Path("."),
    liver_mask: Annotated[
        Optional[Path],  # noqa: UP045 (typer reads Optional on Python 3.10)
        typer.Option("--liver-mask", help="Liver mask on the scan's grid; skips the liver model."),
    ] = None,
    threads: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--threads", min=1, help="CPU threads (default: the CPUs this process may use)."),
    ] = None,
    models: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--models", help="Folder with liver_net.onnx and mhp_net.onnx (default: shipped)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing mask and report.")
    ] = False,
    series: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--series", help="SeriesInstanceUID to read from a DICOM folder (default: chosen by rules)."
        ),
    ] = None,
) -> None:
    """Segment liver (label 1) and liver tumours (label 2) in one CT scan."""
    from mhp_edge.io import read_image, write_image_atomic
    from mhp_edge.pipeline import Segmenter

    try:
        mask_path, report_path = _output_paths(scan, output)
        _check_output(scan, mask_path, report_path, overwrite=overwrite)

        started = time.perf_counter()
        segmenter = Segmenter(models, threads=threads)
        load_s = time.perf_counter() - started

        started = time.perf_counter()
        image = read_image(scan, series_uid=series)
        reference = read_image(liver_mask) if liver_mask is not None else None
        read_s = time.perf_counter() - started

        result = segmenter.segment(image, liver_mask=reference)

        started = time.perf_counter()
        write_image_atomic(result.mask, mask_path, overwrite=overwrite)
        report = _report_document(scan, mask_path, segmenter, result)
        report["timings_s"] = {
            "load_models": round(load_s, 3),
            "read": round(read_s, 3),
            **{k: round(v, 3) for k, v in result.timings_s.items()},
        }
        report["timings_s"]["write"] = round(time.perf_counter() - started, 3)
        _write_json_atomic(report, report_path, overwrite=overwrite)
    except MhpEdgeError as err:
        raise _fail(err) from err
    except Exception as err:  # the command line must end with a message and exit code 1
        logging.getLogger(__name__).exception("internal failure")
        raise _fail(err) from err

    _print_summary(mask_path, report_path, report)


def _check_output(scan: Path, mask_path: Path, report_path: Path, *, overwrite: bool) -> None:
    for path in (mask_path, report_path):
        if path.resolve() == scan.resolve():
            raise OutputError(f"{path}: is the input scan; choose another output name.")
        if path.exists() and not overwrite:
            raise OutputError(f"{path}: already exists. Remove it or pass --overwrite.")
        if path.is_dir():
            raise OutputError(f"{path}: is a folder, expected a file name.")


def _report_document(scan: Path, mask_path: Path, segmenter, result) -> dict:
    return {
        "mhp_edge_version": __version__,
        "scan": str(scan),
        "mask": str(mask_path),
        "labels": {"0": "background", "1": "liver", "2": "tumour"},
        "models": {
            model.metadata.name: {"file": model.path.name, "sha256": model.card.get("sha256")}
            for model in (segmenter.liver_model, segmenter.tumour_model)
        },
        "liver_source": result.liver_source,
        "liver_volume_ml": result.liver_volume_ml,
        "tumour_volume_ml": result.tumour_volume_ml,
        "tumour_burden_percent": round(result.tumour_burden_percent, 2),
        "lesions": [lesion.to_dict() for lesion in result.lesions],
        "warnings": result.warnings,
        "intended_use": "Research use only, not for clinical use.",
    }


def _write_json_atomic(document: dict, path: Path, *, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists. Remove it or pass --overwrite.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(handle, "w") as stream:
            json.dump(document, stream, indent=2)
        os.replace(temporary, path)
    except OSError as err:
        raise OutputError(f"{path}: writing failed ({err}).") from err


def _print_summary(mask_path: Path, report_path: Path, report: dict) -> None:
    lesions = report["lesions"]
    typer.echo(f"mask:   {mask_path}")
    typer.echo(f"report: {report_path}")
    typer.echo(
        f"liver {report['liver_volume_ml']:.0f} mL ({report['liver_source']}), "
        f"{len(lesions)} lesion(s), tumour burden {report['tumour_burden_percent']:.1f} %"
    )
    for lesion in lesions:
        flag = "  (touches scan edge)" if lesion["touches_scan_edge"] else ""
        typer.echo(
            f"  lesion {lesion['lesion_id']}: {lesion['volume_ml']:.2f} mL, "
            f"{lesion['equivalent_diameter_mm']:.0f} mm equal-volume diameter, "
            f"centre LPS {lesion['centroid_lps_mm']} mm{flag}"
        )
    for warning in report["warnings"]:
        typer.echo(f"warning: {warning}")
    timings = ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in report["timings_s"].items())
    typer.echo(f"time (s): {timings}")


@app.command()
def evaluate(
    prediction: Annotated[Path, typer.Argument(help="Predicted mask (0/1/2).")],
    reference: Annotated[Path, typer.Argument(help="Reference mask on the same grid (0/1/2).")],
) -> None:
    """Report liver Dice, tumour Dice, lesion recall and false-positive lesions as JSON."""
    from mhp_edge.evaluate import evaluate_masks
    from mhp_edge.io import read_image

    try:
        metrics = evaluate_masks(read_image(prediction), read_image(reference))
    except MhpEdgeError as err:
        raise _fail(err) from err
    typer.echo(json.dumps(metrics, indent=2))


@app.command()
def info(
    models: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--models", help="Folder with the models (default: shipped)."),
    ] = None,
) -> None:
    """Print the model cards: architecture, training data, accuracy and intended use."""
    from mhp_edge.metadata import card_path_for
    from mhp_edge.pipeline import LIVER_MODEL_FILE, TUMOUR_MODEL_FILE, default_models_dir

    folder = models if models is not None else default_models_dir()
    for name in (LIVER_MODEL_FILE, TUMOUR_MODEL_FILE):
        card_path = card_path_for(folder / name)
        try:
            card = json.loads(card_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise _fail(ModelError(f"{card_path}: cannot read model card ({err}).")) from err
        card.pop("metadata", None)
        typer.echo(json.dumps(card, indent=2))
