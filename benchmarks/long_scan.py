"""Peak memory and time on a long scan: a real scan padded with extra slices outside the liver.

Run:

    python benchmarks/long_scan.py [--slices 1000] [--scan examples/hcc_006_ct_liver.nii.gz]

The scan is padded above and below with copies of its first and last slices until it has
``--slices`` slices, so the liver is unchanged and the rest of the body grows. The pipeline runs
in a child process whose peak resident memory (ru_maxrss) is reported with the stage times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO_ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys, time
from mhp_edge.io import read_image
from mhp_edge.pipeline import Segmenter
segmenter = Segmenter(threads=int(sys.argv[2]))
started = time.perf_counter()
image = read_image(sys.argv[1])
read_s = time.perf_counter() - started
result = segmenter.segment(image)
print(json.dumps({
    "size": image.GetSize(), "read": read_s, **result.timings_s,
    "liver_ml": result.liver_volume_ml, "lesions": len(result.lesions),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def padded_scan(scan: sitk.Image, slices: int) -> sitk.Image:
    """Return ``scan`` with its end slices repeated until it has ``slices`` slices."""
    array = sitk.GetArrayViewFromImage(scan)
    extra = max(0, slices - array.shape[0])
    before, after = extra // 2, extra - extra // 2
    padded = np.concatenate(
        [np.repeat(array[:1], before, axis=0), array, np.repeat(array[-1:], after, axis=0)]
    )
    image = sitk.GetImageFromArray(padded)
    image.SetSpacing(scan.GetSpacing())
    image.SetDirection(scan.GetDirection())
    image.SetOrigin(scan.TransformIndexToPhysicalPoint((0, 0, -before)))
    return image


def run(path: Path, threads: int) -> dict:
    """Segment ``path`` in a child process; return its timings and peak memory."""
    output = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(threads)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", type=Path, default=REPO_ROOT / "examples" / "hcc_006_ct_liver.nii.gz")
    parser.add_argument("--slices", type=int, nargs="+", default=[1000])
    parser.add_argument("--threads", type=int, default=2)
    arguments = parser.parse_args()

    scan = sitk.ReadImage(str(arguments.scan))
    with tempfile.TemporaryDirectory() as folder:
        for slices in [scan.GetSize()[2], *arguments.slices]:
            path = Path(folder) / f"padded_{slices}.nii"
            sitk.WriteImage(padded_scan(scan, slices), str(path))
            result = run(path, arguments.threads)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
