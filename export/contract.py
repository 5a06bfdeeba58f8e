"""Metadata of the two shipped models, as the runtime in ``mhp_edge`` reads it.

Changing a value here changes what the runtime does with the exported model, so each value must
also be what training used. ``export.data`` and ``export.train`` take every preprocessing
constant from the ``ModelMetadata`` built here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mhp_edge.hessian import context_vox, pyramid_factors
from mhp_edge.metadata import BoundarySpec, HessianSpec, ModelMetadata

LIVER_FILE_STEM = "liver_net"
TUMOUR_FILE_STEM = "mhp_net"

# Sources of the labelled cases, keyed by the case id prefix before the first underscore.
LICENCES = {
    "ircadb": "3D-IRCADb-01 (IRCAD): CC BY-NC-ND 3.0 (attribution, non-commercial, no derivatives).",
    "radctt": "RadCTTACEomics HCC samples: no licence stated, all rights reserved, local use only.",
    "totalseg": "TotalSegmentator example CT and reference segmentation: Apache-2.0.",
}

INTENDED_USE = "Research use only, not for clinical use."

# Hessian settings of the tumour model. The response scale is measured on the training cases.
TUMOUR_HESSIAN_SCALES_MM = (3.0, 6.0, 12.0)
TUMOUR_HESSIAN_HU_CLIP = (-50.0, 200.0)
TUMOUR_SPACING_ZYX_MM = (2.5, 1.25, 1.25)
# Scales keep at least 3 coarse voxels per standard deviation on the subsampled grids, so the
# 12 mm scale runs on every third row and column. On the ircadb_01 liver crop with its context the
# Hessian stage took 0.52 s instead of 0.61 s at 4 (multiscale_blob_response on 2 threads of the
# 2-core development machine). Against a float64 full-resolution
# reference the response stayed within 1.7 % at the 99th percentile of the liver's voxels (0.8 %
# at 4) and within 2.9 % over the demo scan's crop (2.1 % at 4). At 2 the stage took 0.38 s but
# the demo crop's error grew to 11 %.
TUMOUR_HESSIAN_PYRAMID_MIN_SIGMA_VOX = 3.0

# The tumour model is trained on (32, 64, 64) patches and run on larger (32, 96, 96) windows.
# With batch normalisation its output barely depends on the window (see export.networks), so
# bigger windows with a quarter overlap compute each voxel fewer times.
TUMOUR_WINDOW_VOX = (32, 96, 96)

# Post-processing of the tumour model, chosen by benchmarks/tumour_ablation.py on out-of-fold
# probabilities of the leave-one-case-out run of the shipped recipe
# (benchmarks/results/tumour_loco.md). export.postprocessing writes them into a trained model.
TUMOUR_THRESHOLD = 0.3
TUMOUR_MIN_COMPONENT_MM3 = 500.0


# Boundary refinement of the liver model's mask (mhp_edge.liver_boundary). The values were chosen
# once from anatomy and not fitted to the labelled cases. Liver lies between -30 HU (fat is below)
# and 300 HU (bone and dense contrast are above). Smoothing of 1 mm tames noise. The core starts
# 4 mm inside, and the 5 mm band is about the liver model's 3-4 mm voxel plus its typical 2-3 mm
# boundary error. Below a 1 mm grid, finer voxels only cost time, because the HU are smoothed at
# 1 mm anyway.
LIVER_BOUNDARY = BoundarySpec(
    smooth_mm=1.0,
    core_mm=4.0,
    core_percentiles=(5.0, 95.0),
    reach_mm=5.0,
    tissue_hu=(-30.0, 300.0),
    grid_mm=1.0,
)


# The liver network is fully convolutional with a total downsampling of 8 per axis, so the
# runtime feeds it the whole coarse scan as one tile when it fits. The largest tile, 96 slices
# of 4 mm and 192 x 192 voxels of 3 mm, covers 384 x 576 x 576 mm. On ircadb_01 (52 x 98 x 98
# coarse voxels) one 56 x 104 x 104 tile replaces eight 32 x 96 x 96 windows (2.36 M voxels).
LIVER_TILE_MAX_VOX = (96, 192, 192)
LIVER_TILE_MULTIPLE_VOX = (8, 8, 8)
# The tumour network downsamples by 4 in z and 8 in-plane, so it takes tiles too. One tile covers
# 160 x 240 x 240 mm, and ircadb_01's 175 mm crop takes two tiles of 40 slices. They took 1.2 s
# against 2.2 s for 32 x 96 x 96 windows (2 threads): the windows overlap and cover the crop about
# three times. On leave-one-case-out folds, the same fold models gave tumour Dice 0.201 on tiles and
# 0.195 on windows (500 steps), and 0.374 and 0.380 (819 steps, where windows found one more of
# the 11 lesions >= 10 mm and 0.2 fewer false positives per scan). Five cases cannot tell these apart.
TUMOUR_TILE_MAX_VOX = (64, 192, 192)
TUMOUR_TILE_MULTIPLE_VOX = (4, 8, 8)
TILES = {
    "liver": (LIVER_TILE_MAX_VOX, LIVER_TILE_MULTIPLE_VOX),
    "tumour": (TUMOUR_TILE_MAX_VOX, TUMOUR_TILE_MULTIPLE_VOX),
}


def hessian_context_mm(
    spacing_zyx_mm: tuple[float, float, float], scales_mm: tuple[float, ...], pyramid_min_sigma_vox: float
) -> float:
    """Return the farthest any scale's filters read beyond a voxel, in whole mm (the Hessian's context)."""
    spacing = np.asarray(spacing_zyx_mm, dtype=np.float64)
    reach_mm = 0.0
    for sigma_mm in scales_mm:
        factors = pyramid_factors(spacing, sigma_mm, pyramid_min_sigma_vox)
        reach_vox = np.asarray(context_vox(spacing, sigma_mm, factors))
        reach_mm = max(reach_mm, float(np.max(reach_vox * spacing)))
    return float(np.ceil(reach_mm))


def liver_metadata(provenance: dict[str, Any]) -> ModelMetadata:
    """Build the metadata of the liver model (``liver_net.onnx``).

    Parameters
    ----------
    provenance : dict
        Training cases, seed, commit, versions, date and wall time, stored as given.
    """
    return ModelMetadata(
        name="liver-net",
        task="liver",
        input_names=("ct",),
        output_name="logits",
        patch_shape_vox=(32, 96, 96),
        spacing_zyx_mm=(4.0, 3.0, 3.0),
        hu_clip=(-250.0, 250.0),
        hu_mean=0.0,
        hu_std=150.0,
        pad_hu=-1024.0,
        overlap=0.25,
        threshold=0.5,
        min_component_mm3=0.0,
        roi_margin_mm=0.0,
        hessian=None,
        labels={0: "background", 1: "liver"},
        provenance=provenance,
        boundary=LIVER_BOUNDARY,
        tile_max_vox=LIVER_TILE_MAX_VOX,
        tile_multiple_vox=LIVER_TILE_MULTIPLE_VOX,
    )


def tumour_metadata(
    provenance: dict[str, Any],
    *,
    response_scale: float,
    threshold: float = TUMOUR_THRESHOLD,
    min_component_mm3: float = TUMOUR_MIN_COMPONENT_MM3,
    uses_hessian: bool = True,
    name: str = "mhp-net",
    liver_median_hu: float | None = None,
    scales_mm: tuple[float, ...] = TUMOUR_HESSIAN_SCALES_MM,
) -> ModelMetadata:
    """Build the metadata of the tumour model (``mhp_net.onnx``).

    Parameters
    ----------
    provenance : dict
        Training cases, seed, commit, versions, date and wall time, stored as given.
    response_scale : float
        Divisor of the raw Hessian blob response, measured on the training cases (see
        ``export.data.measure_response_scale``).
    threshold : float
        Tumour probability threshold.
    min_component_mm3 : float
        Smallest tumour component kept, in mm^3.
    uses_hessian : bool
        False for the ablation models that read the CT alone: one input, no Hessian settings.
    name : str
        Model name in the metadata.
    liver_median_hu : float, optional
        Shift the crop around the liver so the liver's median is this HU, before both inputs
        are computed (``ModelMetadata.liver_median_hu``).
    scales_mm : tuple of float
        Gaussian standard deviations of the Hessian input, mm.
    """
    hessian = HessianSpec(
        scales_mm=scales_mm,
        hu_clip=TUMOUR_HESSIAN_HU_CLIP,
        response_scale=response_scale,
        context_mm=hessian_context_mm(TUMOUR_SPACING_ZYX_MM, scales_mm, TUMOUR_HESSIAN_PYRAMID_MIN_SIGMA_VOX),
        pyramid_min_sigma_vox=TUMOUR_HESSIAN_PYRAMID_MIN_SIGMA_VOX,
    )
    return ModelMetadata(
        name=name,
        task="tumour",
        input_names=("ct", "hessian") if uses_hessian else ("ct",),
        output_name="logits",
        patch_shape_vox=TUMOUR_WINDOW_VOX,
        spacing_zyx_mm=TUMOUR_SPACING_ZYX_MM,
        hu_clip=(-150.0, 250.0),
        hu_mean=60.0,
        hu_std=100.0,
        pad_hu=-1024.0,
        overlap=0.25,
        threshold=threshold,
        min_component_mm3=min_component_mm3,
        roi_margin_mm=10.0,
        hessian=hessian if uses_hessian else None,
        labels={0: "background", 1: "liver", 2: "tumour"},
        provenance=provenance,
        tile_max_vox=TUMOUR_TILE_MAX_VOX,
        tile_multiple_vox=TUMOUR_TILE_MULTIPLE_VOX,
        liver_median_hu=liver_median_hu,
    )


def licences_for(case_ids: list[str]) -> dict[str, str]:
    """Return the licence text of each data source that the given cases come from.

    Raises
    ------
    ValueError
        If a case id does not start with a known source prefix.
    """
    licences = {}
    for case_id in case_ids:
        source = case_id.split("_", 1)[0]
        if source not in LICENCES:
            raise ValueError(
                f"Case {case_id!r} comes from unknown source {source!r}; known sources are "
                f"{sorted(LICENCES)}. Add its licence to export.contract.LICENCES."
            )
        licences[source] = LICENCES[source]
    return licences
