"""The model contract: metadata that an ONNX model carries about its own preprocessing.

Every constant that turns a scan into network input, and network output into a mask, is read
from here. The metadata is a JSON document stored in the ONNX file's ``metadata_props`` under
``METADATA_KEY``. A card file beside the model (``<stem>.card.json``) records the model's sha256
and its provenance and accuracy. The runtime checks the sha256 before it builds a session.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mhp_edge.errors import ModelError
from mhp_edge.windows import tile_shape

METADATA_KEY = "mhp_edge.metadata"
# Version 2 added the Hessian's context_mm and pyramid_min_sigma_vox. Runtimes that read only
# version 1 would ignore them and feed such a model inputs it was not trained on, so they must
# reject it. Version 1 documents still load, with the defaults of those keys.
SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
TASKS = ("liver", "tumour")


@dataclass(frozen=True)
class HessianSpec:
    """Settings of the multi-scale Hessian blob enhancement fed as the second input.

    Attributes
    ----------
    scales_mm : tuple of float
        Gaussian standard deviations in millimetres, smallest first.
    hu_clip : tuple of float
        (low, high) HU range the CT is clipped to before the Hessian is computed.
    response_scale : float
        The enhanced volume is divided by this value so its typical magnitude is about 1.
    context_mm : float
        Scan around the tumour crop, per side, that the Hessian reads, so the response near the
        crop's faces does not depend on where the crop ends. 0 (models exported before this key
        existed) computes the Hessian on the crop alone.
    pyramid_min_sigma_vox : float
        Large scales are computed on a grid subsampled per axis as long as this many coarse
        voxels per standard deviation remain (``mhp_edge.hessian.pyramid_factors``). Models
        exported before this key existed used 4.
    """

    scales_mm: tuple[float, ...]
    hu_clip: tuple[float, float]
    response_scale: float
    context_mm: float = 0.0
    pyramid_min_sigma_vox: float = 4.0


@dataclass(frozen=True)
class BoundarySpec:
    """Settings of the liver boundary refinement (``mhp_edge.liver_boundary``).

    Attributes
    ----------
    smooth_mm : float
        In-plane Gaussian standard deviation applied to the HU before they are compared, mm.
    core_mm : float
        Depth inside the model's liver surface beyond which voxels count as the liver's core.
    core_percentiles : tuple of float
        (low, high) percentiles of the core's HU: outside voxels within this range may join.
    reach_mm : float
        Half-width of the band around the model's surface where voxels may join or leave.
    tissue_hu : tuple of float
        (low, high) HU outside which a band voxel cannot be liver and leaves the mask.
    grid_mm : float
        In-plane spacing the refinement works at, mm. Finer scans are refined on every n-th row
        and column, n the whole number nearest to grid_mm / spacing (2 for a 0.57 mm scan and grid_mm 1).
    """

    smooth_mm: float
    core_mm: float
    core_percentiles: tuple[float, float]
    reach_mm: float
    tissue_hu: tuple[float, float]
    grid_mm: float


@dataclass(frozen=True)
class ModelMetadata:
    """Preprocessing and post-processing settings of one exported model.

    Attributes
    ----------
    name : str
        Model identifier, for example ``"mhp-net-tumour"``.
    task : str
        ``"liver"`` (liver probability over the whole scan) or ``"tumour"`` (tumour
        probability inside a liver region).
    input_names : tuple of str
        Graph input names in order; the first is the normalised CT, the second (tumour models
        only) the Hessian-enhanced CT.
    output_name : str
        Graph output holding one logit per voxel, shape (batch, 1, z, y, x).
    patch_shape_vox : tuple of int
        (z, y, x) patch shape the graph was exported for.
    spacing_zyx_mm : tuple of float
        Voxel spacing the model works at, in millimetres.
    hu_clip : tuple of float
        (low, high) HU range applied before normalisation.
    hu_mean, hu_std : float
        Normalisation: ``(clip(hu) - hu_mean) / hu_std``.
    pad_hu : float
        HU value used for padding outside the scan.
    overlap : float
        Fraction of the patch shared by neighbouring windows, in [0, 1).
    threshold : float
        Probability above which a voxel is foreground.
    min_component_mm3 : float
        Connected components smaller than this are dropped.
    roi_margin_mm : float
        Margin added around the liver before cropping (tumour models) in millimetres.
    hessian : HessianSpec or None
        Present for models with a Hessian input.
    boundary : BoundarySpec or None
        Liver models only: refine the liver's boundary on the full-resolution CT when present.
    tile_max_vox : tuple of int or None
        Fully convolutional models whose graph takes any spatial shape: the largest (z, y, x)
        tile the runtime feeds them, so a small scan runs as one tile instead of overlapping
        patches. None (the default, and models exported before this key existed) runs windows of
        ``patch_shape_vox``.
    tile_multiple_vox : tuple of int
        Each tile axis is a multiple of this, the network's total downsampling per axis.
    liver_median_hu : float or None
        Tumour models only: the HU of the crop around the liver are shifted so that their median
        inside the liver equals this value, before both inputs are computed. A liver is then
        at one level whatever the contrast phase. None (the default, and models exported
        before this key existed) leaves the HU as they are.
    labels : dict
        Output label values and their meaning, e.g. ``{0: "background", 1: "liver", 2: "tumour"}``.
    provenance : dict
        Training cases, seed, export commit and framework versions, kept as written.
    """

    name: str
    task: str
    input_names: tuple[str, ...]
    output_name: str
    patch_shape_vox: tuple[int, int, int]
    spacing_zyx_mm: tuple[float, float, float]
    hu_clip: tuple[float, float]
    hu_mean: float
    hu_std: float
    pad_hu: float
    overlap: float
    threshold: float
    min_component_mm3: float
    roi_margin_mm: float
    hessian: HessianSpec | None
    labels: dict[int, str]
    provenance: dict[str, Any]
    boundary: BoundarySpec | None = None
    tile_max_vox: tuple[int, int, int] | None = None
    tile_multiple_vox: tuple[int, int, int] = (1, 1, 1)
    liver_median_hu: float | None = None

    def window_shape(self, volume_shape_vox: tuple[int, ...]) -> tuple[int, int, int]:
        """Return the (z, y, x) window this model runs on a volume: a tile, or its patch without tiles."""
        return tile_shape(
            volume_shape_vox, self.patch_shape_vox, self.tile_max_vox, self.tile_multiple_vox, self.overlap
        )

    def to_json(self) -> str:
        """Serialise to the JSON document stored in the ONNX file."""
        document = {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "task": self.task,
            "input_names": list(self.input_names),
            "output_name": self.output_name,
            "patch_shape_vox": list(self.patch_shape_vox),
            "spacing_zyx_mm": list(self.spacing_zyx_mm),
            "hu_clip": list(self.hu_clip),
            "hu_mean": self.hu_mean,
            "hu_std": self.hu_std,
            "pad_hu": self.pad_hu,
            "overlap": self.overlap,
            "threshold": self.threshold,
            "min_component_mm3": self.min_component_mm3,
            "roi_margin_mm": self.roi_margin_mm,
            "hessian": None
            if self.hessian is None
            else {
                "scales_mm": list(self.hessian.scales_mm),
                "hu_clip": list(self.hessian.hu_clip),
                "response_scale": self.hessian.response_scale,
                "context_mm": self.hessian.context_mm,
                "pyramid_min_sigma_vox": self.hessian.pyramid_min_sigma_vox,
            },
            "boundary": None
            if self.boundary is None
            else {
                "smooth_mm": self.boundary.smooth_mm,
                "core_mm": self.boundary.core_mm,
                "core_percentiles": list(self.boundary.core_percentiles),
                "reach_mm": self.boundary.reach_mm,
                "tissue_hu": list(self.boundary.tissue_hu),
                "grid_mm": self.boundary.grid_mm,
            },
            "labels": {str(value): meaning for value, meaning in self.labels.items()},
            "provenance": self.provenance,
        }
        if self.tile_max_vox is not None:
            document["tile_max_vox"] = list(self.tile_max_vox)
            document["tile_multiple_vox"] = list(self.tile_multiple_vox)
        if self.liver_median_hu is not None:
            document["liver_median_hu"] = self.liver_median_hu
        return json.dumps(document, indent=1, sort_keys=True)


def parse_metadata(text: str, *, source: str) -> ModelMetadata:
    """Parse and validate the metadata JSON of a model.

    Parameters
    ----------
    text : str
        The JSON document.
    source : str
        File the document came from, named in error messages.

    Raises
    ------
    ModelError
        If a key is missing or a value is out of range.
    """
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise ModelError(f"{source}: model metadata is not valid JSON ({err}).") from err

    def require(key: str) -> Any:
        if key not in document:
            raise ModelError(f"{source}: model metadata lacks '{key}'. Re-export the model with export/.")
        return document[key]

    version = require("schema_version")
    if version not in READABLE_SCHEMA_VERSIONS:
        raise ModelError(
            f"{source}: metadata schema_version is {version}, this mhp-edge reads "
            f"{', '.join(str(v) for v in READABLE_SCHEMA_VERSIONS)}. Use the mhp-edge release the "
            "model was exported for."
        )

    try:
        hessian_document = require("hessian")
        hessian = None
        if hessian_document is not None:
            hessian = HessianSpec(
                scales_mm=tuple(float(s) for s in hessian_document["scales_mm"]),
                hu_clip=_pair(hessian_document["hu_clip"]),
                response_scale=float(hessian_document["response_scale"]),
                context_mm=float(hessian_document.get("context_mm", 0.0)),
                pyramid_min_sigma_vox=float(hessian_document.get("pyramid_min_sigma_vox", 4.0)),
            )
        # Models exported before the boundary refinement existed have no "boundary" key.
        boundary_document = document.get("boundary")
        boundary = None
        if boundary_document is not None:
            boundary = BoundarySpec(
                smooth_mm=float(boundary_document["smooth_mm"]),
                core_mm=float(boundary_document["core_mm"]),
                core_percentiles=_pair(boundary_document["core_percentiles"]),
                reach_mm=float(boundary_document["reach_mm"]),
                tissue_hu=_pair(boundary_document["tissue_hu"]),
                grid_mm=float(boundary_document["grid_mm"]),
            )
        # Models exported before tiling existed have no tile keys. Runtimes that ignore the keys
        # still run such a model correctly, with windows of its patch shape.
        tile_max = document.get("tile_max_vox")
        liver_median = document.get("liver_median_hu")
        metadata = ModelMetadata(
            name=str(require("name")),
            task=str(require("task")),
            input_names=tuple(str(n) for n in require("input_names")),
            output_name=str(require("output_name")),
            patch_shape_vox=tuple(int(n) for n in require("patch_shape_vox")),
            spacing_zyx_mm=tuple(float(s) for s in require("spacing_zyx_mm")),
            hu_clip=_pair(require("hu_clip")),
            hu_mean=float(require("hu_mean")),
            hu_std=float(require("hu_std")),
            pad_hu=float(require("pad_hu")),
            overlap=float(require("overlap")),
            threshold=float(require("threshold")),
            min_component_mm3=float(require("min_component_mm3")),
            roi_margin_mm=float(require("roi_margin_mm")),
            hessian=hessian,
            labels={int(value): str(meaning) for value, meaning in require("labels").items()},
            provenance=dict(require("provenance")),
            boundary=boundary,
            tile_max_vox=None if tile_max is None else tuple(int(n) for n in tile_max),
            tile_multiple_vox=tuple(int(n) for n in document.get("tile_multiple_vox", (1, 1, 1))),
            liver_median_hu=None if liver_median is None else float(liver_median),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise ModelError(f"{source}: model metadata has an invalid value ({err!r}).") from err

    _validate(metadata, source=source)
    return metadata


def _pair(values: Any) -> tuple[float, float]:
    low, high = (float(v) for v in values)
    return low, high


def _validate(metadata: ModelMetadata, *, source: str) -> None:
    problems = []
    not_finite = [name for name, value in _numbers(metadata) if not math.isfinite(value)]
    if not_finite:
        problems.append(f"{', '.join(not_finite)} must be finite, not NaN or infinity")
    if metadata.task not in TASKS:
        problems.append(f"task is {metadata.task!r}, expected one of {TASKS}")
    # A tumour model reads the CT and, when it has Hessian settings, the blob response too
    # (models without it are the ablation baselines of the training benchmark).
    expected_inputs = 1 if metadata.hessian is None else 2
    if len(metadata.input_names) != expected_inputs:
        problems.append(
            f"a {metadata.task} model {'without' if metadata.hessian is None else 'with'} Hessian "
            f"settings takes {expected_inputs} input(s), metadata lists {list(metadata.input_names)}"
        )
    if metadata.task == "liver" and metadata.hessian is not None:
        problems.append("liver models take no hessian settings")
    if len(metadata.patch_shape_vox) != 3 or min(metadata.patch_shape_vox) < 1:
        problems.append(f"patch_shape_vox is {metadata.patch_shape_vox}, expected 3 positive ints")
    if len(metadata.spacing_zyx_mm) != 3 or min(metadata.spacing_zyx_mm) <= 0:
        problems.append(f"spacing_zyx_mm is {metadata.spacing_zyx_mm}, expected 3 positive mm")
    if not metadata.hu_clip[0] < metadata.hu_clip[1]:
        problems.append(f"hu_clip {metadata.hu_clip} is not an increasing pair")
    if metadata.hu_std <= 0:
        problems.append(f"hu_std is {metadata.hu_std}, expected > 0")
    if not 0 <= metadata.overlap < 1:
        problems.append(f"overlap is {metadata.overlap}, expected in [0, 1)")
    if not 0 < metadata.threshold < 1:
        problems.append(f"threshold is {metadata.threshold}, expected in (0, 1)")
    if metadata.min_component_mm3 < 0 or metadata.roi_margin_mm < 0:
        problems.append("min_component_mm3 and roi_margin_mm must be >= 0")
    if metadata.boundary is not None:
        problems.extend(_boundary_problems(metadata.boundary, task=metadata.task))
    if metadata.tile_max_vox is not None:
        problems.extend(_tile_problems(metadata))
    if metadata.liver_median_hu is not None:
        problems.extend(_liver_median_problems(metadata))
    if metadata.hessian is not None:
        scales = metadata.hessian.scales_mm
        if not scales or min(scales) <= 0 or list(scales) != sorted(scales):
            problems.append(f"hessian scales_mm {scales} must be positive and increasing")
        if metadata.hessian.response_scale <= 0:
            problems.append("hessian response_scale must be > 0")
        if metadata.hessian.context_mm < 0:
            problems.append(f"hessian context_mm is {metadata.hessian.context_mm}, expected >= 0")
        if metadata.hessian.pyramid_min_sigma_vox < 1:
            problems.append(
                f"hessian pyramid_min_sigma_vox is {metadata.hessian.pyramid_min_sigma_vox}, expected >= 1"
            )
    if problems:
        raise ModelError(f"{source}: inconsistent model metadata: " + "; ".join(problems) + ".")


def _numbers(metadata: ModelMetadata) -> list[tuple[str, float]]:
    """Return (name, value) for every number of the metadata that preprocessing uses."""
    numbers = [
        *(("spacing_zyx_mm", v) for v in metadata.spacing_zyx_mm),
        *(("hu_clip", v) for v in metadata.hu_clip),
        ("hu_mean", metadata.hu_mean),
        ("hu_std", metadata.hu_std),
        ("pad_hu", metadata.pad_hu),
        ("overlap", metadata.overlap),
        ("threshold", metadata.threshold),
        ("min_component_mm3", metadata.min_component_mm3),
        ("roi_margin_mm", metadata.roi_margin_mm),
    ]
    if metadata.hessian is not None:
        numbers += [("hessian scales_mm", v) for v in metadata.hessian.scales_mm]
        numbers += [("hessian hu_clip", v) for v in metadata.hessian.hu_clip]
        numbers.append(("hessian response_scale", metadata.hessian.response_scale))
        numbers.append(("hessian context_mm", metadata.hessian.context_mm))
        numbers.append(("hessian pyramid_min_sigma_vox", metadata.hessian.pyramid_min_sigma_vox))
    if metadata.liver_median_hu is not None:
        numbers.append(("liver_median_hu", metadata.liver_median_hu))
    if metadata.boundary is not None:
        boundary = metadata.boundary
        numbers += [
            (f"boundary {name}", getattr(boundary, name))
            for name in ("smooth_mm", "core_mm", "reach_mm", "grid_mm")
        ]
        numbers += [("boundary core_percentiles", v) for v in boundary.core_percentiles]
        numbers += [("boundary tissue_hu", v) for v in boundary.tissue_hu]
    return numbers


def _boundary_problems(boundary: BoundarySpec, *, task: str) -> list[str]:
    problems = []
    if task != "liver":
        problems.append("only liver models take boundary settings")
    if boundary.smooth_mm < 0 or min(boundary.core_mm, boundary.reach_mm, boundary.grid_mm) <= 0:
        problems.append(
            f"boundary smooth_mm {boundary.smooth_mm} must be >= 0, core_mm {boundary.core_mm}, "
            f"reach_mm {boundary.reach_mm} and grid_mm {boundary.grid_mm} > 0"
        )
    low, high = boundary.core_percentiles
    if not 0 <= low < high <= 100:
        problems.append(f"boundary core_percentiles {boundary.core_percentiles} must rise within 0-100")
    if not boundary.tissue_hu[0] < boundary.tissue_hu[1]:
        problems.append(f"boundary tissue_hu {boundary.tissue_hu} is not an increasing pair")
    return problems


def _liver_median_problems(metadata: ModelMetadata) -> list[str]:
    # A liver median at or beyond a clip bound saturates the liver in that input.
    median = metadata.liver_median_hu
    if metadata.task != "tumour":
        return ["liver_median_hu applies to tumour models only, which run inside a liver mask"]
    windows = [("hu_clip", metadata.hu_clip)]
    if metadata.hessian is not None:
        windows.append(("hessian hu_clip", metadata.hessian.hu_clip))
    return [
        f"liver_median_hu {median} must lie inside {name} {window}"
        for name, window in windows
        if math.isfinite(median) and not window[0] < median < window[1]
    ]


def _tile_problems(metadata: ModelMetadata) -> list[str]:
    tile, multiple, patch = metadata.tile_max_vox, metadata.tile_multiple_vox, metadata.patch_shape_vox
    if len(patch) != 3:
        return []  # already reported
    if len(tile) != 3 or len(multiple) != 3 or min(multiple) < 1:
        return [f"tile_max_vox {tile} and tile_multiple_vox {multiple} must be 3 positive ints each"]
    problems = []
    if any(t < p for t, p in zip(tile, patch, strict=True)):
        problems.append(f"tile_max_vox {tile} must be at least patch_shape_vox {patch} on every axis")
    if any(n % m for n, m in zip((*tile, *patch), multiple * 2, strict=True)):
        problems.append(f"tile_max_vox {tile} and patch_shape_vox {patch} must be multiples of {multiple}")
    return problems


def sha256_of_file(path: Path) -> str:
    """Return the hex sha256 digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def card_path_for(model_path: Path) -> Path:
    """Return the card file that sits beside a model: ``<stem>.card.json``."""
    return model_path.with_name(model_path.stem + ".card.json")
