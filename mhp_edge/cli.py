"""Command line: ``mhp-edge segment``, ``evaluate`` and ``info``.

Exit codes: 0 success, 1 internal failure (a bug: please report it), 2 invalid usage,
3 invalid or unreadable input, 4 invalid or missing model, 5 output cannot be written,
6 a batch finished but some scans failed.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from mhp_edge import __version__
from mhp_edge.errors import (
    ConfigurationError,
    InputImageError,
    LiverMaskError,
    MhpEdgeError,
    ModelError,
    OutputError,
)

EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_MODEL = 4
EXIT_OUTPUT = 5
EXIT_BATCH_FAILURES = 6

_EXIT_CODES = {
    InputImageError: EXIT_INPUT,
    ModelError: EXIT_MODEL,
    OutputError: EXIT_OUTPUT,
    ConfigurationError: EXIT_USAGE,
}

logger = logging.getLogger(__name__)

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
    """Set up logging and signal handling for every command."""
    # SIGTERM unwinds like Ctrl-C, so staged temporary files are removed before the exit.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(scan)s%(message)s",
        stream=sys.stderr,
        force=True,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_ScanPrefix())


# In a batch, log lines start with the name of the scan they are about.
_CURRENT_SCAN: contextvars.ContextVar[str] = contextvars.ContextVar("mhp_edge_scan", default="")


class _ScanPrefix(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        scan = _CURRENT_SCAN.get()
        record.scan = f"{scan}: " if scan else ""
        return True


def _exit_on_signal(number: int, _frame) -> None:
    raise SystemExit(128 + number)


def _exit_code(err: Exception) -> int:
    return next((code for kind, code in _EXIT_CODES.items() if isinstance(err, kind)), EXIT_INTERNAL)


def _fail(err: Exception) -> typer.Exit:
    typer.echo(f"error: {err}", err=True)
    return typer.Exit(_exit_code(err))


@dataclass(frozen=True)
class ScanOutputs:
    """Paths of the files written for one scan."""

    mask: Path
    report: Path
    lesions_csv: Path
    preview: Path | None

    def all(self) -> list[Path]:
        return [p for p in (self.mask, self.report, self.lesions_csv, self.preview) if p is not None]


def scan_stem(scan: Path) -> str:
    """Return a scan's name without its image suffix (a DICOM folder keeps its name)."""
    from mhp_edge.io import image_suffix

    suffix = image_suffix(scan)
    return scan.name[: -len(suffix)] if suffix else scan.name


# -o values with these suffixes name a file the user wants, never a folder to create.
_NOT_A_FOLDER_SUFFIXES = {".png", ".jpg", ".jpeg", ".json", ".csv", ".txt", ".dcm", ".gz", ".zip", ".pdf"}


def outputs_for(
    scan: Path, output: Path, *, preview: bool, mask_file: bool, dicom_seg: bool = False
) -> ScanOutputs:
    """Name the outputs of ``scan`` in the folder ``output``, or beside the mask file ``output``."""
    from mhp_edge.io import image_suffix

    if mask_file:
        stem = output.name[: -len(image_suffix(output))]
        mask, folder = output, output.parent
    else:
        stem = scan_stem(scan)
        mask_name = f"{stem}_seg.dcm" if dicom_seg else f"{stem}_mask.nii.gz"
        mask, folder = output / mask_name, output
    return ScanOutputs(
        mask=mask,
        report=folder / f"{stem}_report.json",
        lesions_csv=folder / f"{stem}_lesions.csv",
        preview=folder / f"{stem}_preview.png" if preview else None,
    )


def collect_scans(source: Path) -> list[Path] | None:
    """Return the scans of a batch, or None when ``source`` is one scan.

    A ``.txt`` file lists one scan per line (blank lines and ``#`` comments are ignored; relative
    paths are relative to the list). A folder that contains image files (.nii, .nii.gz, .nrrd, .mha,
    .mhd) is a batch of those files. Any other folder is one DICOM study.
    """
    from mhp_edge.io import image_suffix

    if source.is_file() and source.suffix.lower() == ".txt":
        scans = []
        for line in source.read_text().splitlines():
            entry = line.strip()
            if entry and not entry.startswith("#"):
                path = Path(entry)
                scans.append(path if path.is_absolute() else source.parent / path)
        return scans
    if source.is_dir():
        images = sorted(p for p in source.iterdir() if p.is_file() and image_suffix(p))
        if images and any(_is_dicom_file(p) for p in source.iterdir() if p.is_file() and not image_suffix(p)):
            raise ConfigurationError(
                f"{source}: contains both image files ({images[0].name}, ...) and DICOM files, so it "
                "is unclear what to segment. Move the DICOM series or the image files to a folder "
                "of their own."
            )
        return images or None
    return None


def _is_dicom_file(path: Path) -> bool:
    """Return True when a file carries the DICOM preamble marker 'DICM' at byte 128."""
    try:
        with open(path, "rb") as stream:
            return stream.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _check_batch(scans: list[Path], output: Path) -> None:
    """Reject batches whose outputs would collide or land among the scans themselves."""
    stems: dict[str, Path] = {}
    for scan in scans:
        stem = scan_stem(scan)
        if stem in stems:
            raise ConfigurationError(
                f"{stems[stem]} and {scan} would both write {stem}_mask.nii.gz. Rename one, or run "
                "them as separate batches with different output folders."
            )
        stems[stem] = scan
    folders = {scan.parent.resolve() for scan in scans}
    if output.resolve() in folders:
        raise ConfigurationError(
            f"the output folder {output} contains scans of this batch, so a later run would take the "
            "masks for scans. Choose another output folder."
        )


@app.command()
def segment(
    scan: Annotated[
        Path,
        typer.Argument(
            help="CT scan (.nii, .nii.gz, .nrrd, .mha file or DICOM folder); or, for a batch, a "
            "folder of image files or a .txt list of scans.",
            # The reader reports an unreadable scan with exit code 3. Click's own check exits 2.
            readable=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Output folder (writes <name>_mask.nii.gz, <name>_report.json and "
            "<name>_lesions.csv), or for one scan a mask file name ending in .nii.gz, .nrrd or .mha.",
        ),
    ] = Path("."),
    liver_mask: Annotated[
        Optional[Path],  # noqa: UP045 (typer needs Optional on Python 3.10)
        typer.Option(
            "--liver-mask", help="Liver mask on the scan's grid; skips the liver model.", readable=False
        ),
    ] = None,
    threads: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            "--threads",
            min=1,
            help="CPU threads (default: the CPUs this process may use). With --scheduler: ONNX "
            "Runtime threads of each worker (default: the worker's --nthreads).",
        ),
    ] = None,
    models: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--models", help="Folder with liver_net.onnx and mhp_net.onnx (default: shipped)."),
    ] = None,
    series: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--series", help="SeriesInstanceUID to read from a DICOM folder (default: by rules)."),
    ] = None,
    preview: Annotated[
        bool, typer.Option("--preview", help="Also write <name>_preview.png (axial and coronal view).")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace existing outputs (a batch otherwise skips done scans)."),
    ] = False,
    output_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="Mask format: 'nifti' (<name>_mask.nii.gz) or 'dicom-seg' (<name>_seg.dcm, a DICOM "
            "Segmentation referencing the source series; needs a DICOM folder as input).",
        ),
    ] = "nifti",
    scheduler: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--scheduler",
            help="Dask scheduler address (tcp://HOST:PORT): run a batch on that cluster, one task per "
            "scan. Scans, output folder and --models must be at the same paths on every worker.",
        ),
    ] = None,
    manifest: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--manifest",
            help="With --scheduler: JSON lines file of each scan's status, times, models and output "
            "sha256 (default: OUT/mhp_edge_manifest.jsonl).",
        ),
    ] = None,
) -> None:
    """Segment liver (label 1) and liver tumours (label 2) in one CT scan or a batch of scans."""
    from mhp_edge.io import image_suffix

    try:
        if output_format not in ("nifti", "dicom-seg"):
            raise ConfigurationError(f"--format is {output_format!r}; use 'nifti' or 'dicom-seg'.")
        dicom_seg = output_format == "dicom-seg"
        batch = collect_scans(scan)
        if series is not None and (batch is not None or not scan.is_dir()):
            raise ConfigurationError("--series picks a series in one DICOM folder; give a DICOM folder.")
        if batch is not None:
            _check_batch(batch, output)
        wrong_file_type = output.suffix.lower() in _NOT_A_FOLDER_SUFFIXES and not image_suffix(output)
        if wrong_file_type and not output.is_dir():
            raise ConfigurationError(
                f"-o {output}: {output.suffix} is not a mask file type. Give a folder, or a mask file "
                "name ending in .nii.gz, .nii, .nrrd or .mha."
            )
        if dicom_seg and (batch is not None or not scan.is_dir() or image_suffix(output)):
            raise ConfigurationError(
                "--format dicom-seg needs one DICOM folder as input and an output folder, because "
                "the Segmentation references the source images."
            )
        if batch is not None and (liver_mask is not None or image_suffix(output)):
            raise ConfigurationError(
                "a batch takes an output folder and no --liver-mask; segment scans one by one to "
                "give each its own liver mask or mask file name."
            )
        if scheduler is not None and batch is None:
            raise ConfigurationError(
                f"--scheduler runs a batch, but {scan} is one scan. Give a folder of image files or "
                "a .txt list of scans, or drop --scheduler."
            )
        if manifest is not None and scheduler is None:
            raise ConfigurationError(
                "--manifest applies to cluster runs only. Add --scheduler, or drop --manifest."
            )
    except MhpEdgeError as err:
        raise _fail(err) from err

    if scheduler is not None:
        _run_cluster_batch(
            batch,
            output,
            scheduler=scheduler,
            manifest=manifest,
            models=models,
            threads=threads,
            preview=preview,
            overwrite=overwrite,
        )
        return

    try:
        # Imported here, so a cluster client never loads ONNX Runtime.
        from mhp_edge.pipeline import Segmenter

        started = time.perf_counter()
        segmenter = Segmenter(models, threads=threads)
        load_s = time.perf_counter() - started
    except MhpEdgeError as err:
        raise _fail(err) from err

    if batch is None:
        outputs = outputs_for(
            scan, output, preview=preview, mask_file=bool(image_suffix(output)), dicom_seg=dicom_seg
        )
        # Without -v, the summary prints the report's warnings at the end, so the log does not
        # repeat them. With -v, the log shows them where they happen.
        summary_warnings = logging.getLogger().getEffectiveLevel() > logging.INFO
        try:
            with _warnings_held_from_stderr(summary_warnings) as printed:
                report = segment_scan(
                    segmenter, scan, outputs, liver_mask=liver_mask, series=series, overwrite=overwrite
                )
                if summary_warnings:
                    printed.update(report["warnings"])
        except MhpEdgeError as err:
            raise _fail(err) from err
        except Exception as err:  # the command line ends with a message and exit code 1
            logger.exception("internal failure on %s", scan)
            raise _fail(err) from err
        report["timings_s"] = {"load_models": round(load_s, 3), **report["timings_s"]}
        _print_summary(outputs, report, warnings=summary_warnings)
        return

    _run_batch(segmenter, batch, output, series=series, preview=preview, overwrite=overwrite)


def segment_scan(
    segmenter,
    scan: Path,
    outputs: ScanOutputs,
    *,
    liver_mask: Path | None,
    series: str | None,
    overwrite: bool,
) -> dict:
    """Segment one scan and write its outputs together; return the report.

    The outputs are staged as temporary files beside their destinations and moved into place only
    after all of them are written, so a failure or a killed process leaves no partial output
    under the final names. Batches on one machine and tasks on a Dask worker both call this.

    Raises
    ------
    MhpEdgeError
        On an unreadable scan or liver mask, a model failure, or outputs that cannot be written.
    """
    from mhp_edge.dicom import choose_stack, find_stacks, stack_to_image
    from mhp_edge.io import read_image, staged_outputs
    from mhp_edge.report import build_report, lesions_csv

    for path in outputs.all():
        if path.resolve() == scan.resolve():
            raise OutputError(f"{path}: is the input scan; choose another output name.")
        # ITK reads x.nii when asked for x.nii.gz, so a mask beside its scan with the same stem
        # would later be read in place of the scan.
        if path.parent.resolve() == scan.parent.resolve() and scan_stem(path) == scan_stem(scan):
            raise OutputError(
                f"{path}: has the same name as the input scan apart from the suffix, and image readers "
                "may then open one for the other. Choose another output name."
            )
    dicom_seg = outputs.mask.suffix == ".dcm"
    with staged_outputs(outputs.all(), overwrite=overwrite) as temporaries:
        started = time.perf_counter()
        source_files, stack = None, None
        # The readers log their warnings (a tie between DICOM series, for example), and the
        # report must list them beside the pipeline's own.
        with _warnings_logged() as read_warnings:
            if scan.is_dir():
                stack = choose_stack(find_stacks(scan), folder=scan, series_uid=series)
                image = stack_to_image(stack, folder=scan)
                source_files = stack.files if dicom_seg else None
            else:
                image = read_image(scan)
            reference = read_image(liver_mask) if liver_mask is not None else None
        read_s = time.perf_counter() - started

        try:
            result = segmenter.segment(image, liver_mask=reference)
        except LiverMaskError as err:
            raise LiverMaskError(f"{liver_mask}: {err}") from err
        except InputImageError as err:
            raise InputImageError(f"{scan}: {err}") from err

        started = time.perf_counter()
        report = build_report(
            result, models=segmenter.model_ids(), scan_name=str(scan), mask_name=str(outputs.mask)
        )
        report["warnings"] = [*read_warnings, *report["warnings"]]
        if source_files is not None:
            from mhp_edge.dicom_seg import write_dicom_seg

            version = f"{__version__} ({', '.join(segmenter.model_ids())})"
            write_dicom_seg(
                result.mask, source_files, temporaries[0], algorithm_version=version, overwrite=True
            )
        else:
            _write_mask(result.mask, temporaries[0])
        temporaries[2].write_text(lesions_csv(result.lesions))
        if outputs.preview is not None:
            from mhp_edge.preview import write_preview

            write_preview(image, result.mask, result.lesions, temporaries[3], overwrite=True)
        if stack is not None:
            report["dicom_series"] = {
                "series_instance_uid": stack.series_uid,
                "series_number": stack.series_number,
                "series_description": stack.description,
                "slices": len(stack.files),
            }
        report["timings_s"] = {"read": round(read_s, 3), **report["timings_s"]}
        report["timings_s"]["write"] = round(time.perf_counter() - started, 3)
        temporaries[1].write_text(json.dumps(report, indent=2))
    return report


@contextlib.contextmanager
def _warnings_logged() -> Iterator[list[str]]:
    """Collect the messages that mhp_edge logs at WARNING or above in this thread, in a list."""
    messages: list[str] = []
    thread = threading.get_ident()

    class _Collector(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if threading.get_ident() == thread:
                messages.append(record.getMessage())

    collector = _Collector(level=logging.WARNING)
    package_logger = logging.getLogger("mhp_edge")
    package_logger.addHandler(collector)
    try:
        yield messages
    finally:
        package_logger.removeHandler(collector)


@contextlib.contextmanager
def _warnings_held_from_stderr(enabled: bool = True) -> Iterator[collections.Counter]:
    """Hold back mhp_edge warnings of this thread from the root log handlers until the block ends.

    Yields a counter for the messages the caller prints itself. At the end, each held warning is
    passed to the handlers that held it, unless the counter still has a count of its message, so a
    failure or a warning missing from the summary still reaches the log, once. With ``enabled``
    False nothing is held.
    """
    thread = threading.get_ident()
    held_records: list[tuple[logging.LogRecord, list[logging.Handler]]] = []

    class _Hold(logging.Filter):
        def __init__(self, handler: logging.Handler):
            super().__init__()
            self.handler = handler

        def filter(self, record: logging.LogRecord) -> bool:
            # The caller's thread is compared, not record.thread, which logging.logThreads = False
            # leaves empty.
            if threading.get_ident() != thread or record.levelno < logging.WARNING:
                return True
            if not record.name.startswith("mhp_edge"):
                return True
            for known, holders in held_records:
                if known is record:
                    holders.append(self.handler)
                    return False
            held_records.append((record, [self.handler]))
            return False

    handlers = list(logging.getLogger().handlers) if enabled else []
    filters = [_Hold(handler) for handler in handlers]
    for handler, hold in zip(handlers, filters, strict=True):
        handler.addFilter(hold)
    printed: collections.Counter = collections.Counter()
    try:
        yield printed
    finally:
        for handler, hold in zip(handlers, filters, strict=True):
            handler.removeFilter(hold)
        for record, holders in held_records:
            message = record.getMessage()
            if printed[message] > 0:
                printed[message] -= 1
                continue
            for handler in holders:
                handler.handle(record)


def _write_mask(mask, path: Path) -> None:
    import SimpleITK as sitk

    try:
        sitk.WriteImage(mask, str(path), useCompression=True)
    except RuntimeError as err:
        raise OutputError(f"{path}: writing the mask failed ({err}).") from err


def _run_batch(segmenter, scans: list[Path], output: Path, *, series, preview, overwrite) -> None:
    failures: list[tuple[Path, str]] = []
    counts = {"done": 0, "skipped": 0}

    def run(scan: Path) -> None:
        token = _CURRENT_SCAN.set(scan.name)
        try:
            run_one(scan)
        finally:
            _CURRENT_SCAN.reset(token)

    def run_one(scan: Path) -> None:
        outputs = outputs_for(scan, output, preview=preview, mask_file=False)
        if not overwrite and all(p.exists() for p in outputs.all()):
            counts["skipped"] += 1
            typer.echo(f"skipped  {scan} (outputs exist; --overwrite to redo)")
            return
        try:
            report = segment_scan(
                segmenter, scan, outputs, liver_mask=None, series=series, overwrite=overwrite
            )
        except Exception as err:  # one broken scan must not stop the batch
            if not isinstance(err, MhpEdgeError):
                logger.exception("internal failure on %s", scan)
            failures.append((scan, str(err)))
            typer.echo(f"failed   {err}" if str(scan) in str(err) else f"failed   {scan}: {err}")
            return
        counts["done"] += 1
        typer.echo(
            f"done     {scan}: liver {report['liver_volume_ml']:.0f} mL, "
            f"{report['lesion_count']} lesion(s), {sum(report['timings_s'].values()):.1f} s"
        )

    # The bar goes to stderr and only to a terminal, so logs and piped output stay clean.
    if sys.stderr.isatty():
        with typer.progressbar(scans, label="segmenting", file=sys.stderr, show_pos=True) as bar:
            for scan in bar:
                run(scan)
    else:
        for scan in scans:
            run(scan)

    typer.echo(
        f"{counts['done']} segmented, {counts['skipped']} skipped, {len(failures)} failed "
        f"of {len(scans)} scans"
    )
    if failures:
        typer.echo("failures:", err=True)
        for scan, message in failures:
            typer.echo(f"  {scan}: {message}", err=True)
        raise typer.Exit(EXIT_BATCH_FAILURES)


def _run_cluster_batch(
    scans: list[Path],
    output: Path,
    *,
    scheduler: str,
    manifest: Path | None,
    models: Path | None,
    threads: int | None,
    preview: bool,
    overwrite: bool,
) -> None:
    try:
        from mhp_edge.cluster import MANIFEST_NAME, ClusterJob, run_cluster_batch
    except ImportError as err:
        raise _fail(
            ConfigurationError(
                f"--scheduler needs Dask distributed, which is not installed ({err}). "
                "Install it with: pip install 'mhp-edge[cluster]'"
            )
        ) from err

    job = ClusterJob(
        scheduler=scheduler,
        output=output,
        manifest=manifest if manifest is not None else output / MANIFEST_NAME,
        models_dir=models,
        threads=threads,
        preview=preview,
        overwrite=overwrite,
    )
    try:
        summary = run_cluster_batch(scans, job, echo=typer.echo)
    except MhpEdgeError as err:
        raise _fail(err) from err
    except Exception as err:  # the command line ends with a message and exit code 1
        logger.exception("internal failure of the cluster batch on %s", scheduler)
        raise _fail(err) from err

    typer.echo(
        f"{summary.done} segmented, {summary.skipped} skipped, {len(summary.failures)} failed "
        f"of {len(scans)} scans"
    )
    if summary.failures:
        typer.echo("failures:", err=True)
        for failed_scan, message in summary.failures:
            typer.echo(f"  {message}" if failed_scan in message else f"  {failed_scan}: {message}", err=True)
        raise typer.Exit(EXIT_BATCH_FAILURES)


def _print_summary(outputs: ScanOutputs, report: dict, *, warnings: bool) -> None:
    """Print the outputs, liver, lesions and timings to stdout.

    With ``warnings``, the report's warnings go to stderr, where batches and ``-v`` log them.
    """
    typer.echo(f"mask:    {outputs.mask}")
    typer.echo(f"report:  {outputs.report}")
    typer.echo(f"lesions: {outputs.lesions_csv}")
    if outputs.preview is not None:
        typer.echo(f"preview: {outputs.preview}")
    typer.echo(
        f"liver {report['liver_volume_ml']:.0f} mL ({report['liver_source']}), "
        f"{report['lesion_count']} lesion(s), tumour burden {report['tumour_burden_percent']:.1f} %"
    )
    for lesion in report["lesions"]:
        flag = "  (touches scan edge)" if lesion["touches_scan_edge"] else ""
        typer.echo(
            f"  lesion {lesion['lesion_id']}: {lesion['volume_ml']:.2f} mL, "
            f"{lesion['longest_axial_diameter_mm']:.0f} x {lesion['perpendicular_diameter_mm']:.0f} mm "
            f"axial, centre LPS {tuple(lesion['centroid_lps_mm'])} mm{flag}"
        )
    if warnings:
        for warning in report["warnings"]:
            typer.echo(f"warning: {warning}", err=True)
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


if __name__ == "__main__":
    app()
