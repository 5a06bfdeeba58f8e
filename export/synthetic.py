"""Synthetic liver tumours inserted into healthy liver of the training scans.

Five labelled scans contain a dozen tumours, too few to show a network the spread of sizes, shapes
and contrasts it meets. ``insert_lesions`` paints extra lesions into a prepared case. Their
statistics are drawn from the real lesions of the training cases (``measure_lesions``):

* size: equivalent diameter drawn uniformly between the smallest and largest real lesion,
  limited to 6-40 mm;
* shape: an ellipsoid with axes 0.75-1.25 times that diameter, its surface moved by smooth
  noise of up to 15 % of the radius;
* contrast: the HU difference between a real lesion and the liver around it, times 0.7-1.3,
  so hypodense and hyperdense lesions both occur when the training cases have them. With
  ``hyperdense_share``, the sign is drawn instead: that share of lesions is brighter than the
  liver by the drawn contrast's size, the rest darker;
* position: a healthy-liver centre at least the radius plus 5 mm deep. With ``surface_share``,
  that share of lesions is centred 0.3 to 1 radius deep instead, so they reach the liver's
  surface and are cut by it, as subcapsular lesions are;
* texture: smooth noise whose standard deviation is the real lesions' HU spread beyond noise.

The change is added to the scan (``hu + weight * (contrast + texture)``), so the liver's own
noise stays. The weight falls from 1 to 0 over 2 mm at the edge, and the tumour label covers
weight >= 0.5 inside the liver. The Hessian input of a synthetic case is recomputed from its
new HU, so both network inputs agree.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mhp_edge.metadata import ModelMetadata
from mhp_edge.preprocess import hessian_input

logger = logging.getLogger(__name__)

TUMOUR_LABEL = 2
LIVER_LABEL = 1
DIAMETER_LIMITS_MM = (6.0, 40.0)
EDGE_MM = 2.0
SHELL_MM = (2.0, 6.0)


@dataclass(frozen=True)
class LesionStatistics:
    """Ranges of real lesions that synthetic ones are drawn from.

    Attributes
    ----------
    diameters_mm : tuple of float
        Equivalent-sphere diameter of each real lesion.
    contrasts_hu : tuple of float
        Mean lesion HU minus mean HU of the liver shell 2-6 mm around it, per lesion.
    texture_std_hu : float
        Median over lesions of the lesion's HU standard deviation beyond the liver's.
    """

    diameters_mm: tuple[float, ...]
    contrasts_hu: tuple[float, ...]
    texture_std_hu: float


def measure_lesions(cases: Sequence, spacing_zyx_mm: Sequence[float]) -> LesionStatistics:
    """Measure size, contrast and texture of every real lesion of prepared cases.

    Parameters
    ----------
    cases : sequence of PreparedCase
        ``hu`` (Z, Y, X) float32 and ``label`` (Z, Y, X) uint8 at ``spacing_zyx_mm``.
    spacing_zyx_mm : sequence of 3 floats

    Raises
    ------
    ValueError
        If the cases hold no lesion.
    """
    voxel_mm3 = float(np.prod(spacing_zyx_mm))
    diameters, contrasts, textures = [], [], []
    for case in cases:
        liver = case.label == LIVER_LABEL
        components, count = ndimage.label(case.label == TUMOUR_LABEL)
        for component in range(1, count + 1):
            lesion = components == component
            volume_mm3 = lesion.sum() * voxel_mm3
            diameters.append((6 * volume_mm3 / np.pi) ** (1 / 3))
            shell = _shell(lesion, spacing_zyx_mm) & liver
            if shell.sum() < 10:
                continue
            contrasts.append(float(case.hu[lesion].mean() - case.hu[shell].mean()))
            textures.append(max(0.0, float(case.hu[lesion].std() - case.hu[shell].std())))
    if not diameters:
        raise ValueError(
            "The training cases contain no tumour voxels (label 2), so no lesion statistics exist. "
            "Train with --synthetic-copies 0 or add cases with tumours."
        )
    if not contrasts:
        raise ValueError("No real lesion has liver around it to measure its contrast against.")
    return LesionStatistics(tuple(diameters), tuple(contrasts), float(np.median(textures)))


def _shell(mask: np.ndarray, spacing_zyx_mm: Sequence[float]) -> np.ndarray:
    """Return the voxels 2-6 mm outside a mask, bool (Z, Y, X)."""
    distance_mm = ndimage.distance_transform_edt(~mask, sampling=spacing_zyx_mm)
    return (distance_mm >= SHELL_MM[0]) & (distance_mm <= SHELL_MM[1])


def insert_lesions(
    case,
    statistics: LesionStatistics,
    metadata: ModelMetadata,
    *,
    count: int,
    rng: np.random.Generator,
    hyperdense_share: float | None = None,
    surface_share: float = 0.0,
):
    """Return a copy of a prepared case with up to ``count`` synthetic lesions in healthy liver.

    Parameters
    ----------
    case : PreparedCase
        A tumour-model case (``hu``, ``label``, ``blob_response``) at ``metadata.spacing_zyx_mm``.
    statistics : LesionStatistics
        From the real lesions of the training cases.
    metadata : ModelMetadata
        The tumour model's metadata; its Hessian settings recompute the blob response.
    count : int
        Lesions to try to place. A lesion is skipped when no healthy liver voxel is deep
        enough for it.
    rng : numpy.random.Generator
    hyperdense_share : float, optional
        Probability that a lesion is brighter than the liver, whatever the sign of the real
        contrast it copies. None keeps the real lesion's sign.
    surface_share : float
        Probability that a lesion is centred 0.3 to 1 radius below the liver's surface, so the
        surface cuts it. The others lie at least the radius plus 5 mm deep.

    Returns
    -------
    PreparedCase
        ``case_id`` gets the suffix ``+synthetic``. ``blob_response`` is the raw response
        (response scale 1), as ``prepare_case`` stores it.
    """
    spacing = np.asarray(case.spacing_zyx_mm, dtype=float)
    # Lesions are painted into the crop, which is a view into a copy of its context. The
    # recomputed Hessian then reads the same surroundings as the real case's Hessian.
    context_hu = (case.hu if case.context_hu is None else case.context_hu).copy()
    core = case.core if case.context_hu is not None else tuple(slice(0, n) for n in case.hu.shape)
    hu = context_hu[core]
    label = case.label.copy()
    placed = 0
    for _ in range(count):
        diameter_mm = rng.uniform(
            max(min(statistics.diameters_mm), DIAMETER_LIMITS_MM[0]),
            min(max(statistics.diameters_mm), DIAMETER_LIMITS_MM[1]),
        )
        # Drawn only when requested, so runs without surface lesions keep their random stream.
        at_surface = surface_share > 0 and rng.random() < surface_share
        centre = _healthy_centre(label, spacing, diameter_mm / 2, rng, at_surface=at_surface)
        if centre is None:
            continue
        contrast_hu = rng.choice(statistics.contrasts_hu) * rng.uniform(0.7, 1.3)
        if hyperdense_share is not None:
            contrast_hu = abs(contrast_hu) * (1.0 if rng.random() < hyperdense_share else -1.0)
        _paint(hu, label, centre, diameter_mm, contrast_hu, statistics.texture_std_hu, spacing, rng)
        placed += 1
    logger.info("Case %s: %d synthetic lesions placed", case.case_id, placed)

    raw_spec = dataclasses.replace(metadata.hessian, response_scale=1.0)
    response = hessian_input(context_hu, case.spacing_zyx_mm, raw_spec, core=core)
    return dataclasses.replace(
        case,
        case_id=f"{case.case_id}+synthetic",
        hu=hu,
        label=label,
        blob_response=response,
        context_hu=None if case.context_hu is None else context_hu,
    )


def _healthy_centre(
    label: np.ndarray,
    spacing: np.ndarray,
    radius_mm: float,
    rng: np.random.Generator,
    *,
    at_surface: bool = False,
) -> tuple[int, int, int] | None:
    """Pick a healthy-liver voxel for a lesion's centre, or None when there is none.

    The centre keeps the radius plus 5 mm from any tumour, labelled or held back. It lies at
    least that deep below the liver's surface too, or, with ``at_surface``, 0.3 to 1 radius
    deep.
    """
    healthy = label == LIVER_LABEL
    lesion = (label > 0) & ~healthy
    tumour_distance_mm = np.inf
    if lesion.any():
        # For an input without zeros, distance_transform_edt returns finite values, not infinity.
        tumour_distance_mm = ndimage.distance_transform_edt(~lesion, sampling=spacing)
    depth_mm = np.inf
    if (label == 0).any():
        depth_mm = ndimage.distance_transform_edt(label > 0, sampling=spacing)
    if at_surface:
        in_depth = (depth_mm >= 0.3 * radius_mm) & (depth_mm <= radius_mm)
    else:
        in_depth = depth_mm >= radius_mm + 5.0
    candidates = np.flatnonzero(healthy & in_depth & (tumour_distance_mm >= radius_mm + 5.0))
    if candidates.size == 0:
        return None
    return tuple(int(i) for i in np.unravel_index(rng.choice(candidates), label.shape))


def _paint(
    hu: np.ndarray,
    label: np.ndarray,
    centre: tuple[int, int, int],
    diameter_mm: float,
    contrast_hu: float,
    texture_std_hu: float,
    spacing: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Add one lesion to ``hu`` and ``label`` in place, inside a box around ``centre``."""
    radii_mm = diameter_mm / 2 * rng.uniform(0.75, 1.25, size=3)
    half_vox = np.ceil((radii_mm.max() * 1.3 + EDGE_MM) / spacing).astype(int)
    box = tuple(
        slice(max(c - h, 0), min(c + h + 1, n)) for c, h, n in zip(centre, half_vox, hu.shape, strict=True)
    )
    grids = np.meshgrid(
        *[(np.arange(s.start, s.stop) - c) * d for s, c, d in zip(box, centre, spacing, strict=True)],
        indexing="ij",
    )
    radius = np.sqrt(sum((g / r) ** 2 for g, r in zip(grids, radii_mm, strict=True)))
    shape = radius.shape
    surface_noise = ndimage.gaussian_filter(rng.normal(size=shape), sigma=max(shape) / 6)
    surface_noise *= 0.15 / max(np.abs(surface_noise).max(), 1e-6)
    distorted = radius + surface_noise

    edge = EDGE_MM / (diameter_mm / 2)
    weight = np.clip((1 - distorted) / edge + 0.5, 0, 1).astype(np.float32)
    texture = ndimage.gaussian_filter(rng.normal(size=shape), sigma=1.0)
    texture *= texture_std_hu / max(texture.std(), 1e-6)

    inside_liver = label[box] > 0
    weight *= inside_liver
    hu[box] += weight * (np.float32(contrast_hu) + texture.astype(np.float32))
    label[box] = np.where((weight >= 0.5) & inside_liver, np.uint8(TUMOUR_LABEL), label[box])
