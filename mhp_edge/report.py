"""Lesion measurements from a label mask, in the scan's physical space."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk

TUMOUR_LABEL = 2
LIVER_LABEL = 1


@dataclass(frozen=True)
class Lesion:
    """One connected tumour component.

    Attributes
    ----------
    lesion_id : int
        1 for the largest lesion, then by decreasing volume.
    volume_ml : float
        Volume in millilitres.
    equivalent_diameter_mm : float
        Diameter of the sphere with the same volume.
    centroid_lps_mm : tuple of float
        Centre of mass in patient coordinates (LPS, mm), as DICOM and ITK use.
    bounding_box_xyz_vox : tuple of int
        (x, y, z, size_x, size_y, size_z) in voxel indices of the input scan.
    mean_hu, std_hu : float
        Intensity statistics over the lesion.
    touches_scan_edge : bool
        True when the lesion reaches the edge of the scan, so its true size may be larger.
    """

    lesion_id: int
    volume_ml: float
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
    tumour = sitk.Equal(label_image, TUMOUR_LABEL)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(tumour, True), sortByObjectSize=True)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(components)
    intensity = sitk.LabelStatisticsImageFilter()
    intensity.Execute(sitk.Cast(scan, sitk.sitkFloat32), components)

    size_xyz = np.array(scan.GetSize())
    lesions = []
    for label in shape.GetLabels():
        volume_mm3 = shape.GetPhysicalSize(label)
        box = tuple(int(v) for v in shape.GetBoundingBox(label))
        start, extent = np.array(box[:3]), np.array(box[3:])
        touches = bool((start == 0).any() or ((start + extent) == size_xyz).any())
        lesions.append(
            Lesion(
                lesion_id=int(label),
                volume_ml=round(volume_mm3 / 1000.0, 3),
                equivalent_diameter_mm=round(float((6 * volume_mm3 / np.pi) ** (1 / 3)), 1),
                centroid_lps_mm=tuple(round(float(c), 1) for c in shape.GetCentroid(label)),
                bounding_box_xyz_vox=box,
                mean_hu=round(float(intensity.GetMean(label)), 1),
                std_hu=round(float(intensity.GetSigma(label)), 1),
                touches_scan_edge=touches,
            )
        )
    return lesions


def label_volume_ml(label_image: sitk.Image, labels: tuple[int, ...]) -> float:
    """Return the volume in mL of the voxels whose label is in ``labels``."""
    array = sitk.GetArrayViewFromImage(label_image)
    voxel_mm3 = float(np.prod(label_image.GetSpacing()))
    return float(np.isin(array, labels).sum()) * voxel_mm3 / 1000.0
