"""Cluster batches on a real Dask scheduler and workers, started as separate processes on 127.0.0.1."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from distributed import Client
from typer.testing import CliRunner

from conftest import DEMO_SCAN
from mhp_edge.cli import EXIT_BATCH_FAILURES, EXIT_MODEL, app
from mhp_edge.cluster import (
    MANIFEST_NAME,
    ClusterJob,
    Manifest,
    ScanRecord,
    file_sha256,
    read_manifest,
    run_cluster_batch,
)
from mhp_edge.errors import ConfigurationError
from mhp_edge.io import read_image
from mhp_edge.pipeline import LIVER_MODEL_FILE, TUMOUR_MODEL_FILE, Segmenter
from model_factory import make_metadata, write_linear_model
from phantoms import liver_phantom

runner = CliRunner()

# ONNX Runtime 1.32 looks up a Microsoft telemetry host when it loads on Linux, unless this is
# set before the import, so every process started here gets it.
PROCESS_ENV = {**os.environ, "ORT_DISABLE_TELEMETRY": "1"}

# Small cases keep the killed-worker test to about two minutes on 2 cores.
REAL_CASES = ("radctt_0697_ct.nii.gz", "totalseg_example_ct.nii.gz")


@dataclass
class LocalDaskCluster:
    """A scheduler and workers, each in its own process group so a test can kill one whole."""

    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            _signal_group(process, signal.SIGTERM)
        for process in [*self.workers, self.scheduler]:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout=20)


def _signal_group(process: subprocess.Popen, number: int) -> None:
    try:
        os.killpg(process.pid, number)
    except ProcessLookupError:
        pass  # the group has ended, for example after a test killed it


def start_cluster(folder: Path, *, workers: int) -> LocalDaskCluster:
    """Start a scheduler and ``workers`` one-thread workers with nannies, bound to 127.0.0.1."""
    folder.mkdir(parents=True, exist_ok=True)
    scheduler_file = folder / "scheduler.json"
    scheduler = _spawn(
        [
            *("-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0"),
            *("--no-dashboard", "--scheduler-file", str(scheduler_file)),
        ],
        folder / "scheduler.log",
    )
    deadline = time.monotonic() + 60
    while not scheduler_file.exists() and scheduler.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    if not scheduler_file.exists():
        scheduler.kill()
        pytest.fail(f"the Dask scheduler did not start; see {folder / 'scheduler.log'}")
    address = json.loads(scheduler_file.read_text())["address"]

    cluster = LocalDaskCluster(address=address, scheduler=scheduler)
    for number in range(workers):
        cluster.workers.append(
            _spawn(
                [
                    *("-m", "distributed.cli.dask_worker", address, "--host", "127.0.0.1"),
                    *("--nthreads", "1", "--no-dashboard", "--name", f"worker-{number}"),
                    *("--local-directory", str(folder / f"worker-{number}")),
                ],
                folder / f"worker-{number}.log",
            )
        )
    with Client(address, timeout=60, set_as_default=False) as client:
        client.wait_for_workers(workers, timeout=120)
    return cluster


def _spawn(arguments: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as stream:
        return subprocess.Popen(
            [sys.executable, *arguments],
            stdout=stream,
            stderr=subprocess.STDOUT,
            env=PROCESS_ENV,
            start_new_session=True,
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    started = start_cluster(tmp_path_factory.mktemp("dask"), workers=2)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    write_linear_model(folder, LIVER_MODEL_FILE, make_metadata("liver"))
    tumour = make_metadata("tumour", hu_mean=200.0, hu_clip=(-250.0, 400.0))
    write_linear_model(folder, TUMOUR_MODEL_FILE, tumour)
    return folder


def phantom_scans(folder: Path, names: tuple[str, ...] = ("a", "b")) -> Path:
    folder.mkdir()
    for name in names:
        sitk.WriteImage(liver_phantom(), str(folder / f"{name}.nii.gz"))
    return folder


def segment_on(cluster: LocalDaskCluster, *arguments):
    return runner.invoke(app, ["segment", *map(str, arguments), "--scheduler", cluster.address])


def records_by_scan(manifest: Path) -> dict[str, list]:
    rows: dict[str, list] = {}
    for record in read_manifest(manifest):
        rows.setdefault(Path(record.scan).name, []).append(record)
    return rows


def test_cluster_batch_records_and_skips(tmp_path, cluster, models_dir):
    scans = phantom_scans(tmp_path / "scans")
    (scans / "broken.nii.gz").write_bytes(b"not a scan")
    out = tmp_path / "out"
    manifest = out / MANIFEST_NAME

    first = segment_on(cluster, scans, "-o", out, "--models", models_dir, "--threads", 1)
    assert first.exit_code == EXIT_BATCH_FAILURES, first.output
    assert "2 segmented, 0 skipped, 1 failed of 3 scans" in first.output
    rows = records_by_scan(manifest)
    assert sorted(rows) == ["a.nii.gz", "b.nii.gz", "broken.nii.gz"]
    assert [record.status for record in rows["a.nii.gz"]] == ["done"]
    assert [record.status for record in rows["broken.nii.gz"]] == ["failed"]
    assert "not gzip data" in rows["broken.nii.gz"][0].error
    done = rows["a.nii.gz"][0]
    with Client(cluster.address, set_as_default=False) as client:
        assert done.worker in client.scheduler_info()["workers"]
    assert set(done.models) == {"test-liver", "test-tumour"}
    assert done.timings_s["task"] > 0
    for path, sha256 in done.outputs.items():
        assert file_sha256(Path(path)) == sha256
    assert first.output.count("failed   ") == 1

    (scans / "broken.nii.gz").unlink()
    second = segment_on(cluster, scans, "-o", out, "--models", models_dir)
    assert second.exit_code == 0, second.output
    assert "0 segmented, 2 skipped, 0 failed of 2 scans" in second.output
    assert "done in the manifest" in second.output
    assert len(read_manifest(manifest)) == 3

    third = segment_on(cluster, scans, "-o", out, "--models", models_dir, "--overwrite")
    assert third.exit_code == 0, third.output
    assert "2 segmented, 0 skipped, 0 failed of 2 scans" in third.output
    assert [record.status for record in records_by_scan(manifest)["a.nii.gz"]] == ["done", "done"]


def test_cluster_adopts_outputs_of_same_models(tmp_path, cluster, models_dir):
    scans = phantom_scans(tmp_path / "scans", ("a", "b"))
    out = tmp_path / "out"
    local = runner.invoke(app, ["segment", str(scans), "-o", str(out), "--models", str(models_dir)])
    assert local.exit_code == 0, local.output
    report = json.loads((out / "b_report.json").read_text())
    report["models"]["test-tumour"]["sha256"] = "0" * 64
    (out / "b_report.json").write_text(json.dumps(report))

    result = segment_on(cluster, scans, "-o", out, "--models", models_dir)
    assert result.exit_code == 0, result.output
    assert "0 segmented, 2 skipped, 0 failed of 2 scans" in result.output
    assert "their report names these models; recorded in the manifest" in result.output
    assert "outputs exist but the manifest has no done run with these models" in result.output
    rows = records_by_scan(out / MANIFEST_NAME)
    assert sorted(rows) == ["a.nii.gz"]
    assert rows["a.nii.gz"][0].outputs[str(out / "a_mask.nii.gz")] == file_sha256(out / "a_mask.nii.gz")

    again = segment_on(cluster, scans, "-o", out, "--models", models_dir)
    assert "done in the manifest" in again.output
    assert len(read_manifest(out / MANIFEST_NAME)) == 1


def test_cluster_partial_outputs_fail_once(tmp_path, cluster, models_dir):
    scans = phantom_scans(tmp_path / "scans", ("a",))
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_mask.nii.gz").write_bytes(b"earlier result")

    result = segment_on(cluster, scans, "-o", out, "--models", models_dir)
    assert result.exit_code == EXIT_BATCH_FAILURES, result.output
    assert "a_mask.nii.gz: already exists, but other outputs of this scan are missing" in result.output
    assert (out / "a_mask.nii.gz").read_bytes() == b"earlier result"
    assert not (out / "a_report.json").exists()
    assert [record.status for record in read_manifest(out / MANIFEST_NAME)] == ["failed"]


def test_cluster_missing_models_is_model_error(tmp_path, cluster):
    scans = phantom_scans(tmp_path / "scans", ("a",))
    result = segment_on(cluster, scans, "-o", tmp_path / "out", "--models", tmp_path / "no_models")
    assert result.exit_code == EXIT_MODEL, result.output
    assert "model file not found" in result.output
    assert not (tmp_path / "out" / "a_mask.nii.gz").exists()


def test_scheduler_needs_batch(tmp_path):
    sitk.WriteImage(liver_phantom(), str(tmp_path / "one.nii.gz"))
    result = runner.invoke(app, ["segment", str(tmp_path / "one.nii.gz"), "--scheduler", "tcp://127.0.0.1:1"])
    assert result.exit_code == 2
    assert "--scheduler runs a batch" in result.output


def test_manifest_needs_scheduler(tmp_path):
    scans = phantom_scans(tmp_path / "scans", ("a",))
    result = runner.invoke(app, ["segment", str(scans), "-o", str(tmp_path / "out"), "--manifest", "m.jsonl"])
    assert result.exit_code == 2
    assert "--manifest applies to cluster runs only" in result.output


def test_unreachable_scheduler_is_configuration_error(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    job = ClusterJob(
        scheduler=f"tcp://127.0.0.1:{port}",
        output=tmp_path / "out",
        manifest=tmp_path / "out" / MANIFEST_NAME,
        connect_timeout_s=2,
    )
    with pytest.raises(ConfigurationError, match="cannot connect to the Dask scheduler at tcp://127.0.0.1"):
        run_cluster_batch([tmp_path / "a.nii.gz"], job)


def test_manifest_held_by_other_run_rejected(tmp_path):
    manifest = tmp_path / MANIFEST_NAME
    job = ClusterJob(scheduler="tcp://127.0.0.1:1", output=tmp_path, manifest=manifest)
    with open(manifest, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ConfigurationError, match="the manifest is locked by another mhp-edge run"):
            run_cluster_batch([tmp_path / "a.nii.gz"], job)


def test_manifest_cut_last_line_skipped(tmp_path, caplog):
    manifest = tmp_path / MANIFEST_NAME
    record = {"scan": "/data/a.nii.gz", "status": "done", "models": {"liver-net": "ab"}}
    manifest.write_text(json.dumps(record) + "\n" + json.dumps(record)[:20])
    records = read_manifest(manifest)
    assert [r.scan for r in records] == ["/data/a.nii.gz"]
    assert ":2: skipped a line" in caplog.text


def test_record_after_cut_line_starts_new_line(tmp_path):
    manifest = tmp_path / MANIFEST_NAME
    record = ScanRecord(scan="/data/a.nii.gz", status="done", models={"liver-net": "ab"})
    manifest.write_text('{"scan": "/data/b.nii.gz", "sta')
    with Manifest(manifest) as opened:
        opened.append(record)
    assert read_manifest(manifest) == [record]


@pytest.mark.real_data
def test_cluster_survives_killed_worker(tmp_path, cases_dir):
    scans = [DEMO_SCAN, *(cases_dir / name for name in REAL_CASES)]
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a scan")
    listing = tmp_path / "scans.txt"
    listing.write_text("".join(f"{path}\n" for path in [*scans, broken]))
    out = tmp_path / "out"
    manifest = out / MANIFEST_NAME
    local_cluster = start_cluster(tmp_path / "dask", workers=2)
    command = [
        *(sys.executable, "-c", "from mhp_edge.cli import app; app()", "segment", str(listing)),
        *("-o", str(out), "--scheduler", local_cluster.address, "--threads", "1"),
    ]
    try:
        with Client(local_cluster.address, set_as_default=False) as client:
            run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=PROCESS_ENV)
            killed, lost_keys = _kill_a_busy_worker_after_first_scan(client, manifest, run)
            output = run.communicate(timeout=900)[0].decode()
            survivor = next(iter(client.scheduler_info()["workers"]))

        assert run.returncode == EXIT_BATCH_FAILURES, output
        assert "3 segmented, 0 skipped, 1 failed of 4 scans" in output
        rows = records_by_scan(manifest)
        assert sorted(rows) == sorted(path.name for path in [*scans, broken])
        assert all(len(records) == 1 for records in rows.values()), rows
        assert rows["broken.nii.gz"][0].status == "failed"
        assert output.count("failed   ") == 1
        for name in (path.name for path in scans):
            assert rows[name][0].status == "done", rows[name][0].error
        for key in lost_keys:
            name = next(path.name for path in scans if f"-{path.name}-" in key)
            assert rows[name][0].worker == survivor != killed
        assert not [path.name for path in out.iterdir() if path.name.startswith(".")]

        segmenter = Segmenter(threads=1)
        for scan in scans:
            local = segmenter.segment(read_image(scan))
            name = scan.name.removesuffix(".nii.gz")
            cluster_mask = sitk.ReadImage(str(out / f"{name}_mask.nii.gz"))
            assert np.array_equal(sitk.GetArrayFromImage(cluster_mask), local.mask_array), scan.name
            assert cluster_mask.GetOrigin() == local.mask.GetOrigin()
            assert rows[scan.name][0].lesion_count == len(local.lesions)

        listing.write_text("".join(f"{path}\n" for path in scans))
        rerun = subprocess.run(command, capture_output=True, text=True, env=PROCESS_ENV, timeout=300)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "0 segmented, 3 skipped, 0 failed of 3 scans" in rerun.stdout
        assert len(read_manifest(manifest)) == 4
    finally:
        local_cluster.stop()


def _kill_a_busy_worker_after_first_scan(client: Client, manifest: Path, run: subprocess.Popen):
    """SIGKILL a worker with scans in progress once one scan is done; return its address and keys."""
    deadline = time.monotonic() + 600
    while not any(record.status == "done" for record in read_manifest(manifest)):
        if run.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"no scan finished before the batch ended: {run.communicate()[0].decode()}")
        time.sleep(0.5)

    busy = {address: keys for address, keys in client.processing().items() if keys}
    if not busy:
        pytest.fail("every scan finished before a worker could be killed; add scans to the test")
    # The worker that finished a scan has just started its next one, so that scan is lost for
    # certain. Another worker started with it and may finish its own scan before the kill lands.
    finished_on = [record.worker for record in read_manifest(manifest) if record.status == "done"]
    address = next((worker for worker in finished_on if worker in busy), next(iter(busy)))
    keys = busy[address]
    pid = client.run(os.getpid, workers=[address])[address]
    # The group contains the nanny and its worker, so the nanny cannot restart the worker in place.
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    return address, [str(key) for key in keys]
