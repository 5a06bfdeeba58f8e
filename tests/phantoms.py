"""Synthetic CT phantoms built in code: a liver-like ellipsoid with a bright spherical lesion."""

from __future__ import annotations

import itertools

import numpy as np
import SimpleITK as sitk

LIVER_HU = 100.0
LESION_HU = 300.0
AIR_HU = -1000.0


def liver_phantom(
    shape_zyx=(24, 40, 48), spacing_zyx_mm=(4.0, 3.0, 3.0), lesion_radius_mm=12.0
) -> sitk.Image:
    """Return an int16 phantom in LPS: air, an off-centre ellipsoid 'liver' and a lesion inside it."""
    spacing = np.array(spacing_zyx_mm)
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape_zyx, spacing, strict=True)), indexing="ij")
    extent = (np.array(shape_zyx) - 1) * spacing
    centre = extent * np.array([0.5, 0.45, 0.4])
    radii = np.maximum(extent * np.array([0.35, 0.3, 0.3]), spacing)
    inside = sum(((c - m) / r) ** 2 for c, m, r in zip((z, y, x), centre, radii, strict=True)) <= 1
    lesion_centre = centre + np.array([0.0, 0.3, 0.4]) * radii
    lesion = sum((c - m) ** 2 for c, m in zip((z, y, x), lesion_centre, strict=True)) <= lesion_radius_mm**2

    hu = np.full(shape_zyx, AIR_HU, dtype=np.int16)
    hu[inside] = LIVER_HU
    hu[lesion & inside] = LESION_HU
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    image.SetOrigin((-60.0, 30.0, -200.0))
    return image


def axis_aligned_directions() -> list[tuple[float, ...]]:
    """Return the 48 axis-aligned direction matrices (axis permutations times flips), row-major."""
    directions = []
    for permutation in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            matrix = np.zeros((3, 3))
            for column, (row, sign) in enumerate(zip(permutation, signs, strict=True)):
                matrix[row, column] = sign
            directions.append(tuple(matrix.ravel()))
    return directions


def reoriented(image: sitk.Image, direction: tuple[float, ...]) -> sitk.Image:
    """Return the same physical object stored with another axis-aligned direction matrix."""
    orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(direction)
    return sitk.DICOMOrient(image, orientation)
