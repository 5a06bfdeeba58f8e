"""Time two versions of the Hessian stage alone in one process, with their page faults.

Run from the repository root:

    git show COMMIT:mhp_edge/hessian.py > /tmp/hessian_before.py
    python -m benchmarks.hessian_versions --baseline /tmp/hessian_before.py [--repeat 9]

``benchmarks.hessian_compare`` times the stage beside scikit-image and SimpleITK, whose large
arrays leave the process's heap grown, so the stage rarely faults in new pages there. Here only
the two versions run, alternating, on one thread, as a process that computes nothing else
would run them. Volumes: the ircadb_01 liver region alone and with the tumour model's context.
The first round is a warm-up and is not counted.
"""

from __future__ import annotations

import argparse
import inspect
import resource
import statistics
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.hessian_compare import liver_grid, load_baseline, tumour_metadata
from mhp_edge import hessian


def minor_page_faults() -> int:
    """Return the minor page faults of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def accepted_keywords(module: ModuleType, keywords: dict[str, Any]) -> dict[str, Any]:
    """Return the ``keywords`` that the module's ``multiscale_blob_response`` takes.

    Versions older than the context or the pyramid setting do not take those keywords.
    """
    accepted = inspect.signature(module.multiscale_blob_response).parameters
    return {key: value for key, value in keywords.items() if key in accepted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="an earlier mhp_edge/hessian.py")
    parser.add_argument("--repeat", type=int, default=9, help="timed runs per version and volume")
    parser.add_argument("--case", default="ircadb_01", help="labelled case whose liver region is used")
    arguments = parser.parse_args()
    if arguments.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {arguments.repeat}")

    metadata = tumour_metadata()
    spec = metadata.hessian
    grid, _ = liver_grid(arguments.case, metadata)
    volumes = {
        "liver region alone": (np.clip(grid.hu, *spec.hu_clip), None),
        "with context": (np.clip(grid.context_hu, *spec.hu_clip), grid.core),
    }
    versions = {"current": hessian, "baseline": load_baseline(arguments.baseline)}

    print("| volume | version | median ms | minor page faults per run |")
    print("|---|---|---|---|")
    with threadpool_limits(limits=1):
        for label, (volume, core) in volumes.items():
            requested = {"core": core, "pyramid_min_sigma_vox": spec.pyramid_min_sigma_vox}
            keywords = {name: accepted_keywords(module, requested) for name, module in versions.items()}
            times_ms = {name: [] for name in versions}
            faults = {name: [] for name in versions}
            for round_index in range(arguments.repeat + 1):
                order = list(versions) if round_index % 2 else list(versions)[::-1]
                for name in order:
                    before = minor_page_faults()
                    started = time.perf_counter()
                    versions[name].multiscale_blob_response(
                        volume, metadata.spacing_zyx_mm, spec.scales_mm, **keywords[name]
                    )
                    if round_index > 0:
                        times_ms[name].append((time.perf_counter() - started) * 1000)
                        faults[name].append(minor_page_faults() - before)
            for name in versions:
                median_ms = statistics.median(times_ms[name])
                print(f"| {label} | {name} | {median_ms:.1f} | {statistics.median(faults[name]):.0f} |")


if __name__ == "__main__":
    main()
