"""Accuracy of a predicted label mask against a reference: Dice and lesion-wise detection."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from mhp_edge.errors import InputImageError
from mhp_edge.io import same_grid
from mhp_edge.report import TUMOUR_LABEL

# Lesions are split at this equal-volume diameter for recall, a common cut between small lesions
# that CT often misses and measurable ones (RECIST measures lesions from 10 mm).
SMALL_LESION_MM = 10.0

_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def dice(prediction: np.ndarray, reference: np.ndarray) -> float | None:
    """Return the Dice overlap of two boolean masks, or None when both are empty."""
    total = int(prediction.sum()) + int(reference.sum())
    if total == 0:
        return None
    return 2.0 * int(np.logical_and(prediction, reference).sum()) / total


def evaluate_masks(prediction: sitk.Image, reference: sitk.Image) -> dict:
    """Compare a predicted label image with a reference on the same grid.

    Parameters
    ----------
    prediction, reference : SimpleITK.Image
        Labels 0 background, 1 liver, 2 tumour (tumour counts as liver for liver Dice).

    Returns
    -------
    dict
        ``liver_dice``, ``tumour_dice`` (None when both masks have no tumour), lesion counts,
        ``lesion_recall`` overall and split at ``SMALL_LESION_MM`` (None when there is no lesion of
        that size), ``false_positive_lesions`` (predicted components touching no reference tumour)
        and per-lesion Dice of every reference lesion.

    Raises
    ------
    InputImageError
        If the two images do not share a grid.
    """
    if not same_grid(prediction, reference):
        raise InputImageError(
            f"prediction grid (size {prediction.GetSize()}, origin {prediction.GetOrigin()}) differs "
            f"from the reference grid (size {reference.GetSize()}, origin {reference.GetOrigin()}); "
            "compare masks made on one scan."
        )
    predicted = _label_array(prediction, "prediction")
    expected = _label_array(reference, "reference")
    voxel_mm3 = float(np.prod(reference.GetSpacing()))

    predicted_tumour = predicted == TUMOUR_LABEL
    expected_tumour = expected == TUMOUR_LABEL
    reference_lesions, reference_count = ndimage.label(expected_tumour, _FULL_CONNECTIVITY)
    predicted_lesions, predicted_count = ndimage.label(predicted_tumour, _FULL_CONNECTIVITY)

    lesions = []
    for index in range(1, reference_count + 1):
        lesion = reference_lesions == index
        volume_mm3 = float(lesion.sum()) * voxel_mm3
        touching = np.unique(predicted_lesions[lesion])
        touching = touching[touching > 0]
        matched = np.isin(predicted_lesions, touching)
        lesions.append(
            {
                "diameter_mm": round(float((6 * volume_mm3 / np.pi) ** (1 / 3)), 1),
                "detected": bool(touching.size),
                "dice": round(float(dice(matched, lesion)), 4),
            }
        )
    hit = np.unique(predicted_lesions[expected_tumour])
    false_positives = predicted_count - int((hit > 0).sum())

    return {
        "liver_dice": dice(predicted > 0, expected > 0),
        "tumour_dice": dice(predicted_tumour, expected_tumour),
        "reference_lesions": reference_count,
        "predicted_lesions": predicted_count,
        "lesion_recall": _recall(lesions, lambda d: True),
        "lesion_recall_large": _recall(lesions, lambda d: d >= SMALL_LESION_MM),
        "lesion_recall_small": _recall(lesions, lambda d: d < SMALL_LESION_MM),
        "false_positive_lesions": false_positives,
        "lesions": lesions,
    }


def _label_array(image: sitk.Image, role: str) -> np.ndarray:
    array = sitk.GetArrayFromImage(image)
    values = np.unique(array)
    if not np.all(np.isin(values, (0, 1, 2))):
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if values.size > 6 else "")
        raise InputImageError(
            f"the {role} has values {shown}; expected labels 0 background, 1 liver, 2 tumour. "
            "Was a CT given instead of a mask?"
        )
    return array


def _recall(lesions: list[dict], include) -> float | None:
    chosen = [lesion["detected"] for lesion in lesions if include(lesion["diameter_mm"])]
    if not chosen:
        return None
    return sum(chosen) / len(chosen)
