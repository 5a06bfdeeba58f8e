"""List every labelled tumour of the cases: size, slices, contrast and depth below the liver's surface.

Run from the repository root:

    python -m benchmarks.lesions [--cases DIR] [--out FILE | --out -]

The leave-one-case-out tables report Dice per case, and this page describes the lesions behind
those numbers, on each scan's own grid. Per lesion: the equivalent-sphere diameter, the slices it
spans and their spacing, the median HU of the lesion and of the liver 1-5 mm around it, that
liver's standard deviation, and how deep the lesion reaches below the liver's surface. Writes
``benchmarks/results/lesions.md`` by default.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from export.data import REPO_ROOT, TUMOUR_LABEL, CaseFiles, default_data_dir, find_cases, read_case

RING_MM = (1.0, 5.0)


def lesion_rows(case: CaseFiles) -> list[str]:
    """Return one Markdown row per tumour component of a case, largest first."""
    scan, label_image = read_case(case)
    hu = sitk.GetArrayViewFromImage(scan)
    label = sitk.GetArrayFromImage(label_image)
    spacing_zyx_mm = np.asarray(scan.GetSpacing()[::-1])
    liver = label > 0
    tumour = label == TUMOUR_LABEL

    components, count = ndimage.label(tumour)
    depth_mm = ndimage.distance_transform_edt(liver, sampling=spacing_zyx_mm)
    healthy = liver & ~tumour
    rows = []
    sizes = ndimage.sum_labels(tumour, components, index=range(1, count + 1))
    found_boxes = ndimage.find_objects(components)
    for index in np.argsort(sizes)[::-1] + 1:
        lesion = components == index
        volume_mm3 = lesion.sum() * np.prod(spacing_zyx_mm)
        diameter_mm = (6 * volume_mm3 / np.pi) ** (1 / 3)
        slices = np.flatnonzero(lesion.any(axis=(1, 2)))

        # The ring lies within RING_MM[1] of the lesion, so a box that wide around it contains it.
        margin_vox = np.ceil(RING_MM[1] / spacing_zyx_mm).astype(int) + 1
        box = tuple(
            slice(max(found.start - margin, 0), found.stop + margin)
            for found, margin in zip(found_boxes[index - 1], margin_vox, strict=True)
        )
        distance_mm = ndimage.distance_transform_edt(~lesion[box], sampling=spacing_zyx_mm)
        ring = healthy[box] & (distance_mm >= RING_MM[0]) & (distance_mm <= RING_MM[1])
        lesion_hu = float(np.median(hu[lesion]))
        ring_hu = float(np.median(hu[box][ring])) if ring.any() else float("nan")
        ring_sd_hu = float(np.std(hu[box][ring])) if ring.any() else float("nan")

        rows.append(
            f"| {case.case_id} | {diameter_mm:.1f} | {slices.size} | {spacing_zyx_mm[0]:.2g} | "
            f"{lesion_hu:.0f} | {ring_hu:.0f} | {ring_sd_hu:.0f} | {lesion_hu - ring_hu:+.0f} | "
            f"{abs(lesion_hu - ring_hu) / ring_sd_hu:.2f} | {depth_mm[lesion].max():.1f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=Path, default=None, help="labelled cases (default: the shared data)")
    parser.add_argument(
        "--out",
        default=str(REPO_ROOT / "benchmarks" / "results" / "lesions.md"),
        help="Markdown file to write, or - to print only",
    )
    arguments = parser.parse_args()

    cases = find_cases(arguments.cases or default_data_dir() / "cases")
    lines = [
        "# Labelled tumours of the cases",
        "",
        "Command: `python -m benchmarks.lesions`. One row per tumour component, largest first. "
        f"Surrounding liver: healthy liver {RING_MM[0]:g}-{RING_MM[1]:g} mm from the lesion, its "
        "standard deviation a measure of noise and texture. Depth: the largest distance from a "
        "lesion voxel to the nearest voxel outside the liver.",
        "",
        "| case | diameter mm | slices | slice spacing mm | lesion median HU | "
        "surrounding liver median HU | surrounding liver SD HU | contrast HU | "
        "abs(contrast) / SD | depth below surface mm |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in cases:
        lines += lesion_rows(case)
    text = "\n".join(lines) + "\n"

    print(text)
    if arguments.out != "-":
        Path(arguments.out).write_text(text)


if __name__ == "__main__":
    main()
