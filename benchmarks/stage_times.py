"""Wall time per stage and peak memory of ``mhp-edge segment`` on real scans.

Each scan runs in a fresh process so that its peak resident memory (ru_maxrss) is its own. Run:

    python benchmarks/stage_times.py [SCAN ...] [--threads 2] [--repeat 3] [--out FILE | --out -]

Without SCAN it runs the demo scan and every case in $MHP_EDGE_DATA/cases (default
../shared/data/cases). Prints the table and writes it to ``--out`` (default
benchmarks/results/stage_times.md, which it replaces whole; ``-`` writes no file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = REPO_ROOT / "benchmarks" / "results"

_CHILD = r"""
import json, resource, sys, time
import SimpleITK as sitk
from mhp_edge.io import read_image
from mhp_edge.pipeline import Segmenter

path, threads, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
started = time.perf_counter()
segmenter = Segmenter(threads=threads)
load_s = time.perf_counter() - started
runs = []
for _ in range(repeat):
    started = time.perf_counter()
    image = read_image(path)
    read_s = time.perf_counter() - started
    result = segmenter.segment(image)
    started = time.perf_counter()
    sitk.WriteImage(result.mask, "/tmp/mhp_edge_stage_times_mask.nii.gz", useCompression=True)
    write_s = time.perf_counter() - started
    runs.append({"read": read_s, **result.timings_s, "write": write_s})
print(json.dumps({
    "load_models": load_s, "runs": runs, "size": image.GetSize(),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "lesions": len(result.lesions), "liver_ml": result.liver_volume_ml,
}))
"""


def default_scans() -> list[Path]:
    data = Path(os.environ.get("MHP_EDGE_DATA", REPO_ROOT.parent / "shared" / "data"))
    return [REPO_ROOT / "examples" / "hcc_006_ct_liver.nii.gz", *sorted((data / "cases").glob("*_ct.nii.gz"))]


def measure(scan: Path, threads: int, repeat: int) -> dict:
    """Run the pipeline on one scan in a child process; return its timings and peak memory."""
    output = subprocess.run(
        [sys.executable, "-c", _CHILD, str(scan), str(threads), str(repeat)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scans", nargs="*", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "stage_times.md"), help="Markdown file, or - for none")
    arguments = parser.parse_args()
    scans = arguments.scans or default_scans()

    rows = []
    for scan in scans:
        result = measure(scan, arguments.threads, arguments.repeat)
        stages = list(result["runs"][0])
        medians = {s: statistics.median(run[s] for run in result["runs"]) for s in stages}
        total = sum(medians.values())
        rows.append((scan.name, result, medians, total))
        print(f"{scan.name}: total {total:.2f} s, peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)

    stages = list(rows[0][2])
    lines = [
        "# Stage times and peak memory",
        "",
        f"Command: `python benchmarks/stage_times.py --threads {arguments.threads} --repeat "
        f"{arguments.repeat}`; medians of {arguments.repeat} runs after loading the models once; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible.",
        "",
        "| scan | size (x, y, z) | "
        + " | ".join(stages)
        + " | total s | liver share | peak RSS MB | lesions |",
        "|---" * (len(stages) + 6) + "|",
    ]
    for name, result, medians, total in rows:
        cells = " | ".join(f"{medians[s]:.2f}" for s in stages)
        lines.append(
            f"| {name} | {tuple(result['size'])} | {cells} | {total:.2f} | "
            f"{100 * medians.get('liver', 0.0) / total:.1f} % | "
            f"{result['peak_rss_mb']:.0f} | {result['lesions']} |"
        )
    print("\n".join(lines))
    if arguments.out != "-":
        Path(arguments.out).parent.mkdir(parents=True, exist_ok=True)
        Path(arguments.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
