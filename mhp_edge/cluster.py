"""Segmenting a batch of scans on a Dask distributed cluster.

The client sends one task per scan to the scheduler. Each worker process loads the models once,
through ``SegmenterPlugin``, and every task on that worker reuses its ONNX Runtime sessions. The
worker writes a scan's outputs itself, with the same all-or-nothing staged writer as a local batch,
so the scans and the output folder must be on shared storage mounted at the same path on every
machine. Only the client writes the manifest: one JSON line per scan that ends in this run.

Failure policy:

- A scan that raises inside its task (an unreadable scan, outputs that cannot be written, a bug)
  ends with a ``failed`` record. The task returns normally, so Dask does not retry it and the scan
  is reported once. A later run tries failed scans again.
- A worker that dies (killed, over its memory limit, machine lost) loses its tasks, and the
  scheduler runs them again on another worker. Once workers have died more than
  ``distributed.scheduler.allowed-failures`` times on one task (3 by default, a setting of the
  scheduler), the scheduler raises ``KilledWorker`` instead, and the scan is recorded as failed.

This module needs the ``cluster`` extra (``dask[distributed]``).
"""

from __future__ import annotations

import datetime
import fcntl
import glob
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from distributed import Client, KilledWorker, WorkerPlugin, as_completed, get_worker

from mhp_edge import __version__
from mhp_edge.errors import ConfigurationError, MhpEdgeError, OutputError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "mhp_edge_manifest.jsonl"
PLUGIN_NAME = "mhp-edge-segmenter"

DONE = "done"
FAILED = "failed"


@dataclass(frozen=True)
class ClusterJob:
    """Settings of one batch run on a Dask cluster.

    Attributes
    ----------
    scheduler : str
        Scheduler address, ``tcp://HOST:PORT``.
    output : Path
        Output folder, on storage that every worker mounts at this same path.
    manifest : Path
        JSON lines manifest; this client is its only writer.
    models_dir : Path or None
        Models folder as the workers see it; None for the models installed with mhp-edge on each
        worker.
    threads : int or None
        ONNX Runtime threads per worker process; None for the worker's Dask thread count.
    preview : bool
        Also write ``<name>_preview.png``.
    overwrite : bool
        Run every scan, replacing existing outputs; otherwise done scans are skipped.
    connect_timeout_s : float
        Time to wait for the scheduler, and then for at least one worker, in seconds.
    """

    scheduler: str
    output: Path
    manifest: Path
    models_dir: Path | None = None
    threads: int | None = None
    preview: bool = False
    overwrite: bool = False
    connect_timeout_s: float = 30.0


@dataclass(frozen=True)
class ScanRecord:
    """Outcome of one scan: one line of the manifest.

    Attributes
    ----------
    scan : str
        Absolute path of the scan, as the client and the workers see it.
    status : str
        ``"done"`` or ``"failed"``.
    models : dict of str to str
        sha256 of each model, by model name.
    outputs : dict of str to str
        sha256 of each output file, by absolute path; empty for a failed scan.
    timings_s : dict of str to float
        Seconds per stage as in the report, and ``task`` for the whole task on the worker.
    worker : str
        Address of the worker that ran the task; empty when the scan never ran.
    error : str or None
        Why the scan failed.
    liver_volume_ml, lesion_count : float or None, int or None
        From the report of a done scan.
    finished_at : str
        UTC time the client recorded the outcome, ISO 8601.
    mhp_edge_version : str
        Version of mhp-edge on the worker (on the client when the scan never ran).
    """

    scan: str
    status: str
    models: dict[str, str]
    outputs: dict[str, str] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    worker: str = ""
    error: str | None = None
    liver_volume_ml: float | None = None
    lesion_count: int | None = None
    finished_at: str = ""
    mhp_edge_version: str = __version__


@dataclass
class BatchSummary:
    """Counts of a finished batch, and the failed scans with their messages."""

    done: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


class SegmenterPlugin(WorkerPlugin):
    """Dask worker plugin that loads the models once per worker process.

    All tasks on a worker share its ``Segmenter``, which keeps no per-scan state, so concurrent
    tasks share its two ONNX Runtime sessions and their thread pools. Each pool gets ``threads``
    threads, or the worker's Dask thread count, which ``dask worker`` sizes to the process's share
    of the machine's cores. Dask's nanny also sets OMP_NUM_THREADS and OPENBLAS_NUM_THREADS to 1.

    Parameters
    ----------
    models_dir : str or None
        Models folder path on the worker; None for the shipped models.
    threads : int or None
        ONNX Runtime threads; None for the worker's Dask thread count.
    """

    def __init__(self, models_dir: str | None, threads: int | None) -> None:
        self.models_dir = models_dir
        self.threads = threads
        self.segmenter = None

    def setup(self, worker) -> None:
        from mhp_edge.pipeline import Segmenter

        threads = self.threads or worker.state.nthreads
        models_dir = Path(self.models_dir) if self.models_dir is not None else None
        self.segmenter = Segmenter(models_dir, threads=threads)
        logger.info("worker %s loaded the models with %d ONNX Runtime threads", worker.address, threads)

    def teardown(self, worker) -> None:
        self.segmenter = None


def run_cluster_batch(
    scans: list[Path], job: ClusterJob, *, echo: Callable[[str], None] | None = None
) -> BatchSummary:
    """Segment a batch on a Dask cluster, one task per scan, and record each outcome.

    Unless ``job.overwrite``, a scan is skipped when the manifest records it as done with the
    workers' models and its outputs still have the recorded sha256. As in a local batch, it is also
    skipped when all its outputs exist without such a record, and then recorded as done if its
    report names the workers' models. A scan with only some of its outputs is reported as failed.

    Parameters
    ----------
    scans : list of Path
        Scans on shared storage; relative paths are taken from the current folder.
    job : ClusterJob
        Scheduler, output folder, manifest and options.
    echo : callable, optional
        Called with one status line per scan.

    Returns
    -------
    BatchSummary

    Raises
    ------
    ConfigurationError
        If the scheduler cannot be reached, no worker joins in time, workers run different models
        or mhp-edge versions, or another run has locked the manifest.
    ModelError
        If a worker cannot load the models.
    OutputError
        If the manifest cannot be written.
    """
    echo = echo or (lambda line: None)
    # Workers run in folders of their own, so they get absolute paths.
    scans = [Path(os.path.abspath(scan)) for scan in scans]
    job = replace(job, output=Path(os.path.abspath(job.output)))
    summary = BatchSummary()

    with Manifest(job.manifest) as manifest, _connect(job) as client:
        models = _load_models_on_workers(client, job)
        futures = {}
        for scan in scans:
            outputs = _outputs(scan, job)
            record = manifest.latest(str(scan), models)
            action, message = _plan(outputs, record, models, overwrite=job.overwrite)
            if action == "skip":
                summary.skipped += 1
                echo(f"skipped  {scan} ({message})")
            elif action == "adopt":
                summary.skipped += 1
                manifest.append(_adopted(scan, outputs, models))
                echo(f"skipped  {scan} ({message})")
            elif action == "fail":
                _finish(_failed(scan, models, message), manifest, summary, echo)
            else:
                future = client.submit(
                    segment_scan_task,
                    str(scan),
                    str(job.output),
                    preview=job.preview,
                    key=_task_key(scan, job, models),
                    retries=0,
                )
                futures[future] = scan
        logger.info(
            "sent %d of %d scans to %s, %d skipped", len(futures), len(scans), job.scheduler, summary.skipped
        )

        for future in as_completed(futures, loop=client.loop):
            record = _record_from(future, futures[future], models)
            future.release()
            _finish(record, manifest, summary, echo)

    _remove_stale_temporaries([_outputs(scan, job) for scan in scans])
    return summary


def segment_scan_task(scan: str, output: str, *, preview: bool) -> ScanRecord:
    """Segment one scan on a Dask worker and write its outputs into the shared folder.

    Every error is returned as a failed record rather than raised, so Dask never retries a scan
    that fails for a reason of its own. Only the death of a worker makes Dask run it again.
    """
    from mhp_edge.cli import outputs_for, segment_scan

    started = time.perf_counter()
    worker = get_worker()
    plugin = worker.plugins.get(PLUGIN_NAME)
    if plugin is None or plugin.segmenter is None:
        # NOTE: a worker that joins after the batch started and cannot load the models fails every
        # scan it is sent, instead of leaving the cluster.
        message = (
            f"worker {worker.address} failed to load the models (see its log). Fix the cause and "
            "restart the worker."
        )
        return _failed(Path(scan), {}, message, worker=worker.address)
    models = _model_hashes(plugin.segmenter)
    outputs = outputs_for(Path(scan), Path(output), preview=preview, mask_file=False)

    try:
        # The client submits a scan only with --overwrite or when none of its outputs existed,
        # so outputs found here were written by an earlier attempt of this task.
        report = segment_scan(
            plugin.segmenter, Path(scan), outputs, liver_mask=None, series=None, overwrite=True
        )
        checksums = {str(path): file_sha256(path) for path in outputs.all()}
    except MhpEdgeError as err:
        logger.warning("segmenting %s failed: %s", scan, err)
        return _failed(Path(scan), models, str(err), worker=worker.address)
    except Exception as err:  # a bug must fail this scan once, not kill the worker or repeat
        logger.exception("internal failure on %s", scan)
        message = f"internal failure ({type(err).__name__}: {err}). Please report it."
        return _failed(Path(scan), models, message, worker=worker.address)

    timings_s = {**report["timings_s"], "task": round(time.perf_counter() - started, 3)}
    return ScanRecord(
        scan=scan,
        status=DONE,
        models=models,
        outputs=checksums,
        timings_s=timings_s,
        worker=worker.address,
        liver_volume_ml=report["liver_volume_ml"],
        lesion_count=report["lesion_count"],
    )


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of a file's bytes.

    Raises
    ------
    OutputError
        If the file cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise OutputError(f"{path}: cannot be read for its sha256 ({err}). Check the shared folder.") from err
    return digest.hexdigest()


def read_manifest(path: Path) -> list[ScanRecord]:
    """Read every record of a manifest, oldest first. Lines that are not records are logged and skipped."""
    records = []
    if not Path(path).exists():
        return records
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(ScanRecord(**json.loads(line)))
        except (json.JSONDecodeError, TypeError) as err:
            # A client killed while appending leaves a cut last line, and its scan counts as unrecorded.
            logger.warning("%s:%d: skipped a line that is not a manifest record (%s)", path, number, err)
    return records


class Manifest:
    """JSON lines manifest of cluster batches, open for appending by one client at a time.

    A context manager: entering takes an exclusive ``flock`` on the file and reads its records, so a
    second run on the same manifest is rejected rather than interleaving lines. The latest record
    of a scan and its models wins.

    Raises
    ------
    OutputError
        If the file cannot be opened or written.
    ConfigurationError
        If another process holds the lock.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._latest: dict[tuple[str, str], ScanRecord] = {}
        self._stream = None

    def __enter__(self) -> Manifest:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._stream = open(self.path, "a")
        except OSError as err:
            raise OutputError(f"{self.path}: the manifest cannot be written ({err}).") from err
        try:
            fcntl.flock(self._stream, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            self._stream.close()
            raise ConfigurationError(
                f"{self.path}: the manifest is locked by another mhp-edge run ({err}). Wait for it to "
                "finish, or give this run its own output folder or --manifest."
            ) from err
        for record in read_manifest(self.path):
            self._latest[_manifest_key(record.scan, record.models)] = record
        text = self.path.read_text()
        if text and not text.endswith("\n"):
            self._stream.write("\n")  # so the next record does not extend a cut last line
        return self

    def __exit__(self, *exc_info) -> None:
        self._stream.close()

    def latest(self, scan: str, models: dict[str, str]) -> ScanRecord | None:
        """Return the newest record of ``scan`` with these model hashes, or None."""
        return self._latest.get(_manifest_key(scan, models))

    def append(self, record: ScanRecord) -> None:
        """Write one record as a line and flush it to disk."""
        try:
            self._stream.write(json.dumps(asdict(record), sort_keys=True) + "\n")
            self._stream.flush()
            os.fsync(self._stream.fileno())
        except OSError as err:
            raise OutputError(f"{self.path}: writing the manifest failed ({err}).") from err
        self._latest[_manifest_key(record.scan, record.models)] = record


def _manifest_key(scan: str, models: dict[str, str]) -> tuple[str, str]:
    return scan, json.dumps(models, sort_keys=True)


@contextmanager
def _connect(job: ClusterJob) -> Iterator[Client]:
    try:
        client = Client(job.scheduler, timeout=job.connect_timeout_s, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as err:
        raise ConfigurationError(
            f"cannot connect to the Dask scheduler at {job.scheduler} ({err}). Check that the "
            "scheduler runs and that the address has the form tcp://HOST:PORT."
        ) from err
    try:
        yield client
    finally:
        client.close()


def _load_models_on_workers(client: Client, job: ClusterJob) -> dict[str, str]:
    """Load the models on every worker and return their sha256 by model name, checked equal on all."""
    try:
        client.wait_for_workers(1, timeout=job.connect_timeout_s)
    except TimeoutError as err:
        raise ConfigurationError(
            f"no worker joined the scheduler at {job.scheduler} within {job.connect_timeout_s:.0f} s. "
            f"Start workers with: dask worker {job.scheduler}"
        ) from err

    models_dir = str(job.models_dir) if job.models_dir is not None else None
    try:
        client.register_plugin(SegmenterPlugin(models_dir, job.threads), name=PLUGIN_NAME)
    except ImportError as err:
        raise ConfigurationError(
            f"a worker cannot import mhp-edge ({err}). Install the same mhp-edge version on every worker."
        ) from err

    identities = client.run(_worker_identity)
    distinct = {json.dumps(identity, sort_keys=True) for identity in identities.values()}
    if len(distinct) > 1:
        listing = "; ".join(f"{address}: {identity}" for address, identity in sorted(identities.items()))
        raise ConfigurationError(
            f"the workers run different models or mhp-edge versions ({listing}), so their masks "
            "would differ. Install the same version and models on every worker."
        )
    identity = next(iter(identities.values()))
    logger.info("%d workers loaded models %s", len(identities), identity["models"])
    return identity["models"]


def _worker_identity(dask_worker) -> dict:
    plugin = dask_worker.plugins[PLUGIN_NAME]
    return {"models": _model_hashes(plugin.segmenter), "mhp_edge_version": __version__}


def _model_hashes(segmenter) -> dict[str, str]:
    return {name: ids["sha256"] for name, ids in segmenter.model_ids().items()}


def _outputs(scan: Path, job: ClusterJob):
    from mhp_edge.cli import outputs_for

    return outputs_for(scan, job.output, preview=job.preview, mask_file=False)


def _plan(outputs, record: ScanRecord | None, models: dict[str, str], *, overwrite: bool) -> tuple[str, str]:
    """Decide whether to submit, skip, adopt or fail a scan before it runs, and return the reason too."""
    if overwrite:
        return "submit", ""
    paths = outputs.all()
    if record is not None and record.status == DONE and _outputs_match(record, paths):
        return "skip", "done in the manifest"

    existing = [path for path in paths if path.exists()]
    if len(existing) == len(paths):
        # A client that stopped while its tasks ran, or a local batch, leaves outputs without a
        # record; their report names the models that wrote them.
        if _report_models(outputs.report) == models:
            return "adopt", "outputs exist and their report names these models; recorded in the manifest"
        return "skip", "outputs exist but the manifest has no done run with these models; --overwrite to redo"
    if existing:
        return "fail", (
            f"{existing[0]}: already exists, but other outputs of this scan are missing. Remove it "
            "or pass --overwrite."
        )
    return "submit", ""


def _report_models(report: Path) -> dict[str, str] | None:
    try:
        models = json.loads(report.read_text())["models"]
        return {name: ids["sha256"] for name, ids in models.items()}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None


def _adopted(scan: Path, outputs, models: dict[str, str]) -> ScanRecord:
    report = json.loads(outputs.report.read_text())
    return ScanRecord(
        scan=str(scan),
        status=DONE,
        models=models,
        outputs={str(path): file_sha256(path) for path in outputs.all()},
        timings_s=report.get("timings_s", {}),
        liver_volume_ml=report.get("liver_volume_ml"),
        lesion_count=report.get("lesion_count"),
        finished_at=_utc_now(),
    )


def _outputs_match(record: ScanRecord, paths: list[Path]) -> bool:
    for path in paths:
        recorded = record.outputs.get(str(path))
        if recorded is None or not path.exists() or file_sha256(path) != recorded:
            return False
    return True


def _task_key(scan: Path, job: ClusterJob, models: dict[str, str]) -> str:
    # One key per scan and settings: a second client that sends the same scan to the same
    # scheduler gets the running task instead of a duplicate.
    settings = json.dumps([str(scan), str(job.output), models, job.preview], sort_keys=True)
    return f"mhp-edge-segment-{scan.name}-{hashlib.sha256(settings.encode()).hexdigest()[:16]}"


def _record_from(future, scan: Path, models: dict[str, str]) -> ScanRecord:
    """Turn a finished future into a record, checking that its outputs are where the client looks."""
    if future.status == "finished":
        record = future.result()
    elif future.status == "cancelled":
        return _failed(scan, models, "the task was cancelled on the cluster (scheduler restarted?)")
    else:
        error = future.exception()
        if isinstance(error, KilledWorker):
            message = (
                f"every worker that ran it died ({error}). The scan may need more memory than a worker has."
            )
        else:
            message = f"the task failed on the cluster ({type(error).__name__}: {error})"
        return _failed(scan, models, message)

    if record.status == DONE and record.models != models:
        message = (
            f"worker {record.worker} used models {record.models}, but the batch started with "
            f"{models}. Install the same models on every worker and rerun with --overwrite."
        )
        return replace(record, status=FAILED, error=message)
    missing = [path for path in record.outputs if not Path(path).exists()]
    if missing:
        message = (
            f"worker {record.worker} wrote {missing[0]}, but this machine does not see it. The "
            "output folder must be shared storage at the same path on every machine."
        )
        return replace(record, status=FAILED, error=message)
    return record


def _failed(scan: Path, models: dict[str, str], message: str, *, worker: str = "") -> ScanRecord:
    return ScanRecord(scan=str(scan), status=FAILED, models=models, worker=worker, error=message)


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _finish(record: ScanRecord, manifest: Manifest, summary: BatchSummary, echo) -> None:
    record = replace(record, finished_at=_utc_now())
    manifest.append(record)
    if record.status == DONE:
        summary.done += 1
        echo(
            f"done     {record.scan}: liver {record.liver_volume_ml:.0f} mL, {record.lesion_count} "
            f"lesion(s), {record.timings_s['task']:.1f} s on {record.worker}"
        )
    else:
        summary.failures.append((record.scan, record.error))
        logger.info("scan %s failed on %s: %s", record.scan, record.worker or "the client", record.error)
        message = record.error if record.scan in record.error else f"{record.scan}: {record.error}"
        echo(f"failed   {message}")


def _remove_stale_temporaries(all_outputs) -> None:
    """Delete temporary files that a killed worker left beside the outputs of this batch.

    Runs once every task has ended, when no worker of this batch writes any more. The pattern
    matches the names that ``mhp_edge.io.staged_outputs`` gives its temporary files.
    """
    removed = 0
    for outputs in all_outputs:
        for path in outputs.all():
            for temporary in path.parent.glob(f".{glob.escape(path.name)}.*"):
                temporary.unlink(missing_ok=True)
                removed += 1
    if removed:
        logger.info("removed %d temporary files left by killed workers", removed)
