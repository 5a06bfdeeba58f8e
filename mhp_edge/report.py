"""Lesion measurements and the per-scan report, in the scan's physical space.

Diameters follow RECIST practice. The longest diameter of the lesion's cross section is measured
on each axial slice, and the slice with the largest one is kept. The perpendicular diameter is the
lesion's width at right angles to it on that slice. Axial means the slices of the scan turned to
LPS, so an oblique or coronal acquisition is measured in true axial planes of its voxel grid.
"""

from __future__ import annotations

import csv
import io
import platform
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from mhp_edge.preprocess import value_box

TUMOUR_LABEL = 2
LIVER_LABEL = 1
LABEL_NAMES = {0: "background", LIVER_LABEL: "liver", TUMOUR_LABEL: "tumour"}
INTENDED_USE = "Research use only, not for clinical use."

CSV_COLUMNS = (
    "lesion_id",
    "volume_ml",
    "longest_axial_diameter_mm",
    "perpendicular_diameter_mm",
    "equivalent_diameter_mm",
    "centroid_l_mm",
    "centroid_p_mm",
    "centroid_s_mm",
    "mean_hu",
    "std_hu",
    "touches_scan_edge",
)


@dataclass(frozen=True)
class Lesion:
    """One connected tumour component.

    Attributes
    ----------
    lesion_id : int
        1 for the largest lesion, then by decreasing volume.
    volume_ml : float
        Volume in millilitres.
    longest_axial_diameter_mm : float
        Longest diameter on any axial slice (RECIST long axis).
    perpendicular_diameter_mm : float
        Width at right angles to the long axis on the same slice (RECIST short axis).
    equivalent_diameter_mm : float
        Diameter of the sphere with the same volume.
    centroid_lps_mm : tuple of float
        Centre of mass in patient coordinates (LPS, mm), as DICOM and ITK use.
    bounding_box_xyz_vox : tuple of int
        (x, y, z, size_x, size_y, size_z) in voxel indices of the input scan.
    mean_hu, std_hu : float
        Intensity statistics over the lesion.
    touches_scan_edge : bool
        True when the lesion reaches the edge of the scan, so its true size may be larger. The
        measurements are still given.
    """

    lesion_id: int
    volume_ml: float
    longest_axial_diameter_mm: float
    perpendicular_diameter_mm: float
    equivalent_diameter_mm: float
    centroid_lps_mm: tuple[float, float, float]
    bounding_box_xyz_vox: tuple[int, ...]
    mean_hu: float
    std_hu: float
    touches_scan_edge: bool

    def to_dict(self) -> dict:
        """Return the lesion as a JSON-ready dictionary."""
        return asdict(self)


def measure_lesions(label_image: sitk.Image, scan: sitk.Image) -> list[Lesion]:
    """Measure every connected tumour component of a label image.

    Parameters
    ----------
    label_image : SimpleITK.Image
        uint8 labels on the scan's grid; ``TUMOUR_LABEL`` marks tumour.
    scan : SimpleITK.Image
        The CT in HU on the same grid.

    Returns
    -------
    list of Lesion
        Largest first.
    """
    # Work in the box around all tumour voxels: a long scan would otherwise get full-size 32-bit
    # component and float copies here.
    full_size_xyz = np.array(scan.GetSize())
    offset_xyz, label_image, scan = _crop_to_label(label_image, scan, TUMOUR_LABEL)
    if offset_xyz is None:
        return []
    tumour = sitk.Equal(label_image, TUMOUR_LABEL)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(tumour, True), sortByObjectSize=True)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(components)
    intensity = sitk.LabelStatisticsImageFilter()
    # The report uses mean and standard deviation only. The histograms (for medians) took half of
    # this function's time on ircadb_01's seven reference lesions (cProfile, 2-core machine).
    intensity.UseHistogramsOff()
    intensity.Execute(sitk.Cast(scan, sitk.sitkFloat32), components)

    axial_components = sitk.DICOMOrient(components, "LPS")
    axial_labels = sitk.GetArrayFromImage(axial_components)
    axial_spacing_yx_mm = axial_components.GetSpacing()[1], axial_components.GetSpacing()[0]
    boxes = ndimage.find_objects(axial_labels)

    lesions = []
    for label in shape.GetLabels():
        volume_mm3 = shape.GetPhysicalSize(label)
        box = tuple(int(v) for v in shape.GetBoundingBox(label))
        start, extent = np.array(box[:3]) + offset_xyz, np.array(box[3:])
        box = (*(int(v) for v in start), *box[3:])
        touches = bool((start == 0).any() or ((start + extent) == full_size_xyz).any())
        region = boxes[label - 1]
        longest_mm, perpendicular_mm = axial_diameters_mm(axial_labels[region] == label, axial_spacing_yx_mm)
        lesions.append(
            Lesion(
                lesion_id=int(label),
                volume_ml=round(volume_mm3 / 1000.0, 3),
                longest_axial_diameter_mm=round(longest_mm, 1),
                perpendicular_diameter_mm=round(perpendicular_mm, 1),
                equivalent_diameter_mm=round(float((6 * volume_mm3 / np.pi) ** (1 / 3)), 1),
                centroid_lps_mm=tuple(round(float(c), 1) for c in shape.GetCentroid(label)),
                bounding_box_xyz_vox=box,
                mean_hu=round(float(intensity.GetMean(label)), 1),
                std_hu=round(float(intensity.GetSigma(label)), 1),
                touches_scan_edge=touches,
            )
        )
    return lesions


def _crop_to_label(
    label_image: sitk.Image, scan: sitk.Image, label: int
) -> tuple[np.ndarray | None, sitk.Image, sitk.Image]:
    """Crop both images to the box of ``label``; return the box start (x, y, z) or None if absent."""
    box_zyx = value_box(sitk.GetArrayViewFromImage(label_image), label)
    if box_zyx is None:
        return None, label_image, scan
    box = box_zyx[::-1]
    start = np.array([part.start for part in box])
    return start, label_image[box], scan[box]


def axial_diameters_mm(lesion: np.ndarray, spacing_yx_mm: tuple[float, float]) -> tuple[float, float]:
    """Return the RECIST long and short axis of a lesion over its axial slices.

    Parameters
    ----------
    lesion : ndarray of shape (Z, Y, X), bool
        The lesion, in LPS orientation so that each z index is an axial slice.
    spacing_yx_mm : tuple of 2 floats
        In-plane spacing (y, x) in mm.

    Returns
    -------
    tuple of 2 floats
        (longest diameter, perpendicular diameter) in mm, measured on voxel outlines.
    """
    # A slice's longest diameter is at most the diagonal of its box of pixel corners. Slices are
    # measured widest box first, and the rest are skipped once no box can beat the best. Of
    # slices with equal longest diameters the one with the lowest z index is kept.
    spacing_y, spacing_x = spacing_yx_mm
    occupied_rows, occupied_columns = lesion.any(axis=2), lesion.any(axis=1)
    diagonal_mm = np.zeros(len(lesion))
    for z in np.flatnonzero(occupied_rows.any(axis=1)):
        rows, columns = np.flatnonzero(occupied_rows[z]), np.flatnonzero(occupied_columns[z])
        height_mm = (rows[-1] - rows[0] + 1) * spacing_y
        width_mm = (columns[-1] - columns[0] + 1) * spacing_x
        diagonal_mm[z] = np.hypot(height_mm, width_mm)

    # The tolerance keeps a slice whose diameter equals its diagonal up to rounding.
    best, best_z = (0.0, 0.0), len(lesion)
    for z in np.argsort(-diagonal_mm, kind="stable"):
        if diagonal_mm[z] == 0 or diagonal_mm[z] < best[0] * (1 - 1e-9):
            break
        diameters = _slice_diameters_mm(lesion[z], spacing_yx_mm)
        if diameters[0] > best[0] or (diameters[0] == best[0] and z < best_z):
            best, best_z = diameters, z
    return best


def _slice_diameters_mm(cross_section: np.ndarray, spacing_yx_mm: tuple[float, float]) -> tuple[float, float]:
    # Only outline pixels can hold a corner of the convex hull: every corner of an inner pixel
    # lies between corners of its neighbours. This keeps large lesions fast.
    outline = cross_section & ~ndimage.binary_erosion(cross_section)
    rows, columns = np.nonzero(outline)
    spacing_y, spacing_x = spacing_yx_mm
    # The four corners of every pixel, so a one-pixel lesion measures one pixel across.
    corners_y = np.concatenate([(rows + dy) * spacing_y for dy in (-0.5, 0.5) for _ in (0, 1)])
    corners_x = np.concatenate([(columns + dx) * spacing_x for _ in (0, 1) for dx in (-0.5, 0.5)])
    points = np.unique(np.column_stack([corners_y, corners_x]), axis=0)
    try:
        points = points[ConvexHull(points).vertices]
    except QhullError:
        pass  # collinear points: every point is on the hull already

    differences = points[:, np.newaxis, :] - points[np.newaxis, :, :]
    distances = np.sqrt((differences**2).sum(axis=-1))
    first, second = np.unravel_index(int(distances.argmax()), distances.shape)
    longest = float(distances[first, second])
    axis = (points[second] - points[first]) / max(longest, 1e-9)
    across = points @ np.array([-axis[1], axis[0]])
    return longest, float(across.max() - across.min())


def build_report(result, *, models: dict[str, dict], scan_name: str, mask_name: str) -> dict:
    """Return the JSON report of one segmentation.

    Parameters
    ----------
    result : SegmentationResult
        What the pipeline produced.
    models : dict
        Model name to {"file", "sha256"}.
    scan_name, mask_name : str
        Input and output names as the user gave them.
    """
    import onnxruntime

    from mhp_edge import __version__

    return {
        "mhp_edge_version": __version__,
        "versions": {
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "SimpleITK": sitk.Version_VersionString(),
            "numpy": np.__version__,
        },
        "scan": scan_name,
        "mask": mask_name,
        "labels": {str(value): name for value, name in LABEL_NAMES.items()},
        "models": models,
        "liver_source": result.liver_source,
        "liver_volume_ml": result.liver_volume_ml,
        "tumour_volume_ml": result.tumour_volume_ml,
        "tumour_burden_percent": round(result.tumour_burden_percent, 2),
        "lesion_count": len(result.lesions),
        "lesions": [lesion.to_dict() for lesion in result.lesions],
        "warnings": list(result.warnings),
        "timings_s": {stage: round(seconds, 3) for stage, seconds in result.timings_s.items()},
        "intended_use": INTENDED_USE,
    }


def lesions_csv(lesions: list[Lesion]) -> str:
    """Return the lesions as CSV text with a header row, one row per lesion."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for lesion in lesions:
        left, posterior, superior = lesion.centroid_lps_mm
        writer.writerow(
            (
                lesion.lesion_id,
                lesion.volume_ml,
                lesion.longest_axial_diameter_mm,
                lesion.perpendicular_diameter_mm,
                lesion.equivalent_diameter_mm,
                left,
                posterior,
                superior,
                lesion.mean_hu,
                lesion.std_hu,
                lesion.touches_scan_edge,
            )
        )
    return buffer.getvalue()
