"""Scans per minute of a cluster batch with 1 and 2 Dask workers on this machine.

Starts a scheduler and one-thread workers as separate processes on 127.0.0.1, runs
``mhp_edge.cluster.run_cluster_batch`` on the same scans into a fresh output folder for each worker
count, and times the whole batch, including loading the models on the workers. Run:

    python benchmarks/dask_throughput.py [SCAN ...] [--workers 1 2]

Without SCAN it runs the demo scan and three small cases from $MHP_EDGE_DATA/cases (default
../shared/data/cases). Writes benchmarks/results/dask_throughput.md and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mhp_edge.cluster import MANIFEST_NAME, ClusterJob, read_manifest, run_cluster_batch

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"
DEFAULT_CASES = ("radctt_0697_ct.nii.gz", "radctt_2022_ct.nii.gz", "totalseg_example_ct.nii.gz")

# ONNX Runtime 1.32 looks up a Microsoft telemetry host when it loads on Linux, unless this is
# set before the import, so the workers get it.
PROCESS_ENV = {**os.environ, "ORT_DISABLE_TELEMETRY": "1"}


def default_scans() -> list[Path]:
    data = Path(os.environ.get("MHP_EDGE_DATA", REPO_ROOT.parent / "shared" / "data"))
    cases = [data / "cases" / name for name in DEFAULT_CASES]
    return [REPO_ROOT / "examples" / "hcc_006_ct_liver.nii.gz", *cases]


def start_processes(folder: Path, workers: int) -> tuple[str, list[subprocess.Popen]]:
    """Start a scheduler and ``workers`` one-thread workers on 127.0.0.1; return the address and processes."""
    scheduler_file = folder / "scheduler.json"
    processes = [
        _spawn(
            ["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
            + ["--scheduler-file", str(scheduler_file)],
            folder / "scheduler.log",
        )
    ]
    deadline = time.monotonic() + 60
    while not scheduler_file.exists():
        if time.monotonic() > deadline:
            stop_processes(processes)
            raise RuntimeError(f"the scheduler did not start; see {folder / 'scheduler.log'}")
        time.sleep(0.2)
    address = json.loads(scheduler_file.read_text())["address"]
    for number in range(workers):
        processes.append(
            _spawn(
                ["distributed.cli.dask_worker", address, "--host", "127.0.0.1", "--nthreads", "1"]
                + ["--no-dashboard", "--local-directory", str(folder / f"worker-{number}")],
                folder / f"worker-{number}.log",
            )
        )
    return address, processes


def _spawn(arguments: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as stream:
        return subprocess.Popen(
            [sys.executable, "-m", *arguments],
            stdout=stream,
            stderr=subprocess.STDOUT,
            env=PROCESS_ENV,
            start_new_session=True,
        )


def stop_processes(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        process.wait(timeout=30)


def measure(scans: list[Path], workers: int) -> dict:
    """Run one batch on a fresh cluster of ``workers`` workers; return its wall time and task times."""
    from distributed import Client

    with tempfile.TemporaryDirectory(prefix="mhp_edge_dask_") as temporary:
        folder = Path(temporary)
        address, processes = start_processes(folder, workers)
        try:
            with Client(address, timeout=60, set_as_default=False) as client:
                client.wait_for_workers(workers, timeout=120)
            output = folder / "out"
            job = ClusterJob(scheduler=address, output=output, manifest=output / MANIFEST_NAME)
            load_before = os.getloadavg()[0]
            started = time.perf_counter()
            summary = run_cluster_batch(scans, job)
            wall_s = time.perf_counter() - started
            records = read_manifest(job.manifest)
        finally:
            stop_processes(processes)
    if summary.failures:
        raise RuntimeError(f"scans failed: {summary.failures}")
    return {
        "workers": workers,
        "scans": len(scans),
        "wall_s": wall_s,
        "scans_per_minute": 60.0 * len(scans) / wall_s,
        "median_task_s": statistics.median(record.timings_s["task"] for record in records),
        "load_average_1min": load_before,
    }


def render(rows: list[dict], command: str, scans: list[Path], note: str) -> str:
    lines = [
        "# Cluster batch throughput (Dask)",
        "",
        f"Command: `{command}`; {platform.machine()}, {os.cpu_count()} CPUs visible, "
        f"Python {platform.python_version()}.",
        f"Scans: {', '.join(scan.name for scan in scans)}.",
        "Each worker is a separate process with one Dask thread and one ONNX Runtime thread. Scheduler,",
        "workers and client run on this one machine, on 127.0.0.1. Wall time covers the whole batch,",
        "including loading the models on each worker. The table gives the 1-minute load average before",
        "each batch: when it exceeds the CPU count, other jobs share the cores and a second worker",
        "mostly splits the same cores.",
        *([note] if note else []),
        "",
        "| workers | scans | wall s | scans per minute | median task s | load average before |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['workers']} | {row['scans']} | {row['wall_s']:.1f} | {row['scans_per_minute']:.2f} | "
            f"{row['median_task_s']:.1f} | {row['load_average_1min']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scans", nargs="*", type=Path)
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--note", default="", help="Sentence for the results page, such as what else ran.")
    arguments = parser.parse_args()
    scans = arguments.scans or default_scans()

    rows = [measure(scans, workers) for workers in arguments.workers]
    command = shlex.join(["python", "benchmarks/dask_throughput.py", *sys.argv[1:]])
    page = render(rows, command, scans, arguments.note)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dask_throughput.md").write_text(page)
    print(page)


if __name__ == "__main__":
    main()
