"""Training data: labelled cases preprocessed exactly as the runtime does, cached, and sampled.

Each case is a CT (``<case>_ct.nii.gz``, HU) and a label (``<case>_label.nii.gz``: 0 background,
1 liver, 2 tumour) on one grid. Preprocessing calls the ``mhp_edge.preprocess`` functions in the
order the runtime calls them:

1. ``clean_scan`` (orientation and HU repair);
2. for the tumour model, the crop to the reference liver's bounding box plus margin
   (``bounding_box_with_margin``) on the scan's own grid, resampled to the model spacing with
   the scan around it (``resample_box``), shifted to the model's liver median HU when it sets
   one (``shift_to_liver_median``, with the reference liver);
3. for the liver model, ``resample_to_spacing`` of the whole scan;
4. for the tumour model, ``hessian_input`` on the crop and its context.

Labels are reoriented the same way and resampled onto the CT's grid by nearest neighbour.

Preprocessed arrays are cached as ``.npz`` files keyed by the input files' sha256, the settings
that shape them and the source of the preprocessing modules, so a change to any of them
recomputes the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

import mhp_edge.hessian
import mhp_edge.preprocess
from mhp_edge.io import read_image
from mhp_edge.metadata import ModelMetadata, sha256_of_file
from mhp_edge.preprocess import (
    bounding_box_with_margin,
    clean_scan,
    hessian_input,
    image_spacing_zyx_mm,
    normalise_hu,
    resample_box,
    resample_like,
    resample_to_spacing,
    shift_to_liver_median,
)

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
TUMOUR_LABEL = 2

# Bump when this module changes what it stores in the cache.
CACHE_FORMAT = 3


@dataclass(frozen=True)
class CaseFiles:
    """The CT and label files of one labelled case."""

    case_id: str
    ct_path: Path
    label_path: Path


@dataclass(frozen=True)
class PreparedCase:
    """One case at a model's spacing, cropped as the runtime crops it.

    Attributes
    ----------
    case_id : str
    hu : ndarray of shape (Z, Y, X), float32
        CT in HU after ``clean_scan`` and resampling.
    label : ndarray of shape (Z, Y, X), uint8
        0 background, 1 liver, 2 tumour.
    blob_response : ndarray of shape (Z, Y, X), float32, or None
        Hessian blob response before division by the response scale (tumour model only).
    spacing_zyx_mm : tuple of 3 floats
    context_hu : ndarray, float32, or None
        ``hu`` with the scan around it that the Hessian reads (``TumourGrid.context_hu``);
        None when the model's Hessian reads the crop alone.
    core : tuple of 3 slices, or None
        Where ``hu`` sits inside ``context_hu``.
    """

    case_id: str
    hu: np.ndarray
    label: np.ndarray
    blob_response: np.ndarray | None
    spacing_zyx_mm: tuple[float, float, float]
    context_hu: np.ndarray | None = None
    core: tuple[slice, slice, slice] | None = None


def default_data_dir() -> Path:
    """Return the data folder: ``$MHP_EDGE_DATA``, else ``../shared/data`` beside the repo."""
    configured = os.environ.get("MHP_EDGE_DATA")
    if configured:
        return Path(configured).expanduser()
    return (REPO_ROOT.parent / "shared" / "data").resolve()


def default_cache_dir() -> Path:
    """Return the cache folder: ``$MHP_EDGE_CACHE``, else ``~/.cache/mhp-edge``."""
    configured = os.environ.get("MHP_EDGE_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "mhp-edge"


def find_cases(cases_dir: Path, *, exclude: Sequence[str] = ()) -> list[CaseFiles]:
    """List the labelled cases in a folder, sorted by case id.

    Parameters
    ----------
    cases_dir : Path
        Folder with ``<case>_ct.nii.gz`` and ``<case>_label.nii.gz`` pairs.
    exclude : sequence of str
        Case ids to leave out.

    Raises
    ------
    FileNotFoundError
        If the folder does not exist, a CT has no label, an excluded id is unknown, or no case
        is left.
    """
    cases_dir = Path(cases_dir)
    if not cases_dir.is_dir():
        raise FileNotFoundError(
            f"Cases folder {cases_dir} not found. Pass --cases or set MHP_EDGE_DATA to the "
            "folder that contains cases/."
        )

    cases = []
    for ct_path in sorted(cases_dir.glob("*_ct.nii.gz")):
        case_id = ct_path.name[: -len("_ct.nii.gz")]
        label_path = cases_dir / f"{case_id}_label.nii.gz"
        if not label_path.is_file():
            raise FileNotFoundError(f"Case {case_id}: label {label_path} not found.")
        cases.append(CaseFiles(case_id, ct_path, label_path))

    unknown = sorted(set(exclude) - {case.case_id for case in cases})
    if unknown:
        raise FileNotFoundError(
            f"Excluded case(s) {unknown} not found in {cases_dir}; "
            f"known cases are {[case.case_id for case in cases]}."
        )
    cases = [case for case in cases if case.case_id not in set(exclude)]
    if not cases:
        raise FileNotFoundError(f"No <case>_ct.nii.gz with a label left in {cases_dir}.")
    return cases


def read_case(case: CaseFiles) -> tuple[sitk.Image, sitk.Image]:
    """Read a case and orient CT and label as ``clean_scan`` orients scans.

    Returns
    -------
    scan : SimpleITK.Image
        float32 HU from ``clean_scan``.
    label : SimpleITK.Image
        uint8 label on the same grid as ``scan``.
    """
    scan = clean_scan(read_image(case.ct_path)).image
    label = sitk.DICOMOrient(
        sitk.Cast(read_image(case.label_path), sitk.sitkUInt8),
        mhp_edge.preprocess.CANONICAL_ORIENTATION,
    )
    if label.GetSize() != scan.GetSize():
        raise ValueError(
            f"Case {case.case_id}: label size {label.GetSize()} differs from CT size "
            f"{scan.GetSize()}. CT and label must share one grid."
        )
    label.CopyInformation(scan)
    return scan, label


def resample_case(
    scan: sitk.Image, label: sitk.Image, metadata: ModelMetadata
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a scan to the model spacing as the runtime does, and its label onto that grid.

    Returns
    -------
    hu : ndarray of shape (Z, Y, X), float32
        Linear interpolation, ``metadata.pad_hu`` outside the scan.
    label : ndarray of shape (Z, Y, X), uint8
        Nearest-neighbour interpolation.
    """
    resampled = resample_to_spacing(scan, metadata.spacing_zyx_mm, default_value=metadata.pad_hu)
    resampled_label = resample_like(label, resampled, interpolator=sitk.sitkNearestNeighbor)
    hu = sitk.GetArrayFromImage(resampled).astype(np.float32, copy=False)
    return hu, sitk.GetArrayFromImage(resampled_label)


def prepare_case(case: CaseFiles, metadata: ModelMetadata, *, cache_dir: Path) -> PreparedCase:
    """Preprocess one case for a model, from the cache when possible.

    Liver models get the whole scan at the model spacing. Tumour models get the crop to the
    reference liver's bounding box grown by ``metadata.roi_margin_mm``, resampled to the model
    spacing with the Hessian's context, and the raw Hessian blob response (``hessian_input``
    with response scale 1) of the crop, as the runtime computes them.

    Parameters
    ----------
    case : CaseFiles
    metadata : ModelMetadata
        Supplies the spacing, padding HU, margin and Hessian settings. Its response scale is
        not used.
    cache_dir : Path
        Folder for the ``.npz`` cache, created if missing.
    """
    spacing = tuple(float(s) for s in metadata.spacing_zyx_mm)
    cache_path = Path(cache_dir) / f"{case.case_id}-{metadata.task}-{_cache_key(case, metadata)}.npz"
    if cache_path.is_file():
        with np.load(cache_path) as stored:
            logger.debug("Case %s loaded from cache %s", case.case_id, cache_path)
            return _prepared_from_arrays(case.case_id, dict(stored), spacing)

    scan, label = read_case(case)
    if metadata.task == "tumour":
        arrays = _tumour_arrays(scan, label, metadata, case_id=case.case_id)
    else:
        hu, label_array = resample_case(scan, label, metadata)
        arrays = {"hu": hu, "label": label_array}

    _save_atomic(cache_path, arrays)
    prepared = _prepared_from_arrays(case.case_id, arrays, spacing)
    shape = prepared.hu.shape
    logger.info("Case %s preprocessed for %s, shape %s, cached", case.case_id, metadata.task, shape)
    return prepared


def _tumour_arrays(
    scan: sitk.Image, label: sitk.Image, metadata: ModelMetadata, *, case_id: str
) -> dict[str, np.ndarray]:
    """Crop a case to its reference liver as the runtime crops the predicted one; return arrays to cache."""
    liver = sitk.GetArrayViewFromImage(label) > 0
    box = bounding_box_with_margin(liver, image_spacing_zyx_mm(scan), metadata.roi_margin_mm)
    if box is None:
        raise ValueError(f"Case {case_id}: the label has no liver voxels to crop to.")
    grid = resample_box(scan, box, metadata)
    z, y, x = box
    label_crop = label[x.start : x.stop, y.start : y.stop, z.start : z.stop]
    label_array = sitk.GetArrayFromImage(
        resample_like(label_crop, grid.image, interpolator=sitk.sitkNearestNeighbor)
    )

    # The runtime shifts by the median in its liver mask, which takes in the lesions too.
    grid, _ = shift_to_liver_median(grid, label_array > 0, metadata)
    raw_spec = dataclasses.replace(metadata.hessian, response_scale=1.0)
    response = hessian_input(grid.context_hu, metadata.spacing_zyx_mm, raw_spec, core=grid.core)
    core_bounds = np.array([[part.start, part.stop] for part in grid.core], dtype=np.int64)
    return {
        "context_hu": grid.context_hu,
        "core": core_bounds,
        "label": label_array,
        "blob_response": response,
    }


def _prepared_from_arrays(
    case_id: str, arrays: dict[str, np.ndarray], spacing: tuple[float, float, float]
) -> PreparedCase:
    if "context_hu" not in arrays:
        return PreparedCase(case_id, arrays["hu"], arrays["label"], None, spacing)
    core = tuple(slice(int(start), int(stop)) for start, stop in arrays["core"])
    context_hu = arrays["context_hu"]
    return PreparedCase(
        case_id,
        context_hu[core],
        arrays["label"],
        arrays["blob_response"],
        spacing,
        context_hu=context_hu,
        core=core,
    )


def _cache_key(case: CaseFiles, metadata: ModelMetadata) -> str:
    preprocessing_sources = [Path(mhp_edge.preprocess.__file__), Path(mhp_edge.hessian.__file__)]
    settings = {
        "format": CACHE_FORMAT,
        "ct_sha256": sha256_of_file(case.ct_path),
        "label_sha256": sha256_of_file(case.label_path),
        "code_sha256": [sha256_of_file(path) for path in preprocessing_sources],
        "task": metadata.task,
        "spacing_zyx_mm": list(metadata.spacing_zyx_mm),
        "pad_hu": metadata.pad_hu,
    }
    if metadata.task == "tumour":
        settings["roi_margin_mm"] = metadata.roi_margin_mm
        settings["hessian_scales_mm"] = list(metadata.hessian.scales_mm)
        settings["hessian_hu_clip"] = list(metadata.hessian.hu_clip)
        settings["hessian_context_mm"] = metadata.hessian.context_mm
        settings["hessian_pyramid_min_sigma_vox"] = metadata.hessian.pyramid_min_sigma_vox
        if metadata.liver_median_hu is not None:
            settings["liver_median_hu"] = metadata.liver_median_hu
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _save_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
    os.close(handle)
    try:
        np.savez(temporary, **arrays)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def measure_response_scale(cases: Sequence[PreparedCase], *, percentile: float = 99.0) -> float:
    """Measure the Hessian response scale: a percentile of |blob response| inside the liver.

    Parameters
    ----------
    cases : sequence of PreparedCase
        Tumour-model cases with ``blob_response``.
    percentile : float
        Percentile of the absolute response over the liver voxels (label > 0) of all cases.

    Returns
    -------
    float
        The percentile rounded to 2 significant digits, so the metadata shows a readable
        number. Never below 1e-3.
    """
    inside = [np.abs(case.blob_response[case.label > 0]) for case in cases]
    value = float(np.percentile(np.concatenate(inside), percentile))
    if value <= 0:
        raise ValueError(
            f"The {percentile}th percentile of the blob response inside the liver is {value}; "
            "check the labels and Hessian settings."
        )
    rounded = float(f"{value:.2g}")
    return max(rounded, 1e-3)


IGNORE_LABEL = 255
"""Label of voxels that training neither rewards nor penalises (lesions held back in an ablation)."""


@dataclass(frozen=True)
class PatchMix:
    """Fractions of patches centred on a lesion, on the liver, on the liver's surface, or random.

    A lesion is one connected component of tumour voxels. Lesions are drawn with equal
    probability whatever their size, so small tumours are seen as often as large ones. When
    synthetic lesions are present, ``synthetic`` is the share of lesion patches that go to
    them. Surface patches show the network the liver's edge, where bowel and vessels next to the
    liver can look like lesions.
    The random fraction is ``1 - lesion - liver - surface``.
    """

    lesion: float
    liver: float
    surface: float = 0.0
    synthetic: float = 0.0


@dataclass(frozen=True)
class Augmentation:
    """Random changes applied to each patch.

    Attributes
    ----------
    flip_axes : tuple of int
        Array axes (0 = z, 1 = y, 2 = x) that are each flipped with probability 0.5.
    rotate_in_plane : bool
        Rotate by a random multiple of 90 degrees in the (y, x) plane. Only valid when the
        model's y and x spacings are equal, which ``PatchSampler`` checks.
    zoom : tuple of 2 floats
        Range of the isotropic scale factor. The patch is read from a window ``1 / factor``
        times the patch size and resampled (linear for inputs, nearest for the label).
    hu_scale : tuple of 2 floats
        Range of the factor a in ``hu * a + b``. The Hessian input is multiplied by a too,
        because the blob response is linear in intensity inside the Hessian HU window.
    hu_shift : tuple of 2 floats
        Range of the offset b, in HU.
    noise_hu : tuple of 2 floats
        Range of the standard deviation of white Gaussian noise added to the CT after zooming,
        in HU at the model spacing. Scanners differ in noise severalfold: image noise in the
        liver, at the tumour model's spacing, is 1.5-10 HU in the labelled cases and 19 HU in
        the demo scan. A model that never saw noisy liver calls noise texture tumour. The
        Hessian input is left as it is.
    """

    flip_axes: tuple[int, ...] = ()
    rotate_in_plane: bool = False
    zoom: tuple[float, float] = (1.0, 1.0)
    hu_scale: tuple[float, float] = (1.0, 1.0)
    hu_shift: tuple[float, float] = (0.0, 0.0)
    noise_hu: tuple[float, float] = (0.0, 0.0)


class PatchSampler:
    """Draw training patches from prepared cases.

    Parameters
    ----------
    cases : sequence of PreparedCase
        Real cases, and synthetic variants whose ``case_id`` contains ``"+synthetic"``.
    metadata : ModelMetadata
        Supplies the HU normalisation, padding HU and (tumour models) the Hessian response scale.
    patch_shape_vox : tuple of 3 ints
        (z, y, x) training patch shape. It may differ from the exported window
        ``metadata.patch_shape_vox``.
    mix : PatchMix
    augmentation : Augmentation
    rng : numpy.random.Generator
    """

    def __init__(
        self,
        cases: Sequence[PreparedCase],
        metadata: ModelMetadata,
        *,
        patch_shape_vox: tuple[int, int, int],
        mix: PatchMix,
        augmentation: Augmentation,
        rng: np.random.Generator,
    ):
        if not 0 <= mix.lesion + mix.liver + mix.surface <= 1:
            raise ValueError(f"PatchMix fractions {mix} must sum to at most 1.")
        spacing = metadata.spacing_zyx_mm
        if augmentation.rotate_in_plane and spacing[1] != spacing[2]:
            raise ValueError(
                f"In-plane rotation needs equal y and x spacing, got {spacing} mm. Turn "
                "rotate_in_plane off for this model spacing."
            )
        self.metadata = metadata
        self.patch_shape_vox = tuple(patch_shape_vox)
        self.mix = mix
        self.augmentation = augmentation
        self.rng = rng
        # Windows are read up to 1 / min zoom times the patch, so volumes are padded to that.
        smallest_zoom = min(augmentation.zoom)
        self.read_shape_vox = tuple(int(np.ceil(size / smallest_zoom)) for size in self.patch_shape_vox)
        self.volumes = [self._padded(case) for case in cases]
        self.synthetic = [("+synthetic" in case.case_id) for case in cases]
        self.liver_indices = [np.flatnonzero(volume["label"] == 1) for volume in self.volumes]
        self.surface_indices = [_surface_indices(volume["label"]) for volume in self.volumes]
        self.lesions = self._find_lesions()
        logger.info(
            "Sampling from %d volumes with %d real and %d synthetic lesions",
            len(self.volumes),
            sum(not synthetic for synthetic, _, _ in self.lesions),
            sum(synthetic for synthetic, _, _ in self.lesions),
        )

    def _padded(self, case: PreparedCase) -> dict[str, np.ndarray]:
        # Volumes smaller than a window are padded on both sides: CT with pad_hu, like the
        # outside of the scan, and the Hessian input with 0, meaning "no blob".
        missing = np.maximum(0, np.array(self.read_shape_vox) - np.array(case.hu.shape))
        widths = [(int(m) // 2, int(m) - int(m) // 2) for m in missing]
        volume = {
            "hu": np.pad(case.hu, widths, constant_values=self.metadata.pad_hu),
            "label": np.pad(case.label, widths, constant_values=0),
        }
        if self.metadata.hessian is not None:
            if case.blob_response is None:
                raise ValueError(
                    f"Case {case.case_id} has no blob response, but {self.metadata.name} takes a "
                    "Hessian input. Prepare the case with the tumour model's metadata."
                )
            scaled = case.blob_response / np.float32(self.metadata.hessian.response_scale)
            volume["hessian"] = np.pad(scaled, widths, constant_values=0)
        return volume

    def _find_lesions(self) -> list[tuple[bool, int, np.ndarray]]:
        lesions = []
        for index, volume in enumerate(self.volumes):
            components, count = ndimage.label(volume["label"] == TUMOUR_LABEL)
            for component in range(1, count + 1):
                lesions.append((self.synthetic[index], index, np.flatnonzero(components == component)))
        return lesions

    def sample(self, batch_size: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Draw a batch of patches.

        Returns
        -------
        inputs : list of ndarray of shape (B, 1, Z, Y, X), float32
            Normalised CT, then the scaled Hessian input for tumour models.
        target : ndarray of shape (B, 1, Z, Y, X), float32
            1 where the label is the model's foreground (liver and tumour for liver models,
            tumour for tumour models), else 0.
        weight : ndarray of shape (B, 1, Z, Y, X), float32
            0 on ``IGNORE_LABEL`` voxels, else 1.
        """
        patches = [self._sample_one() for _ in range(batch_size)]
        input_count = len(patches[0][0])
        inputs = [np.stack([p[0][i] for p in patches])[:, None] for i in range(input_count)]
        target = np.stack([p[1] for p in patches])[:, None]
        weight = np.stack([p[2] for p in patches])[:, None]
        return inputs, target, weight

    def _sample_one(self) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        zoom = self.rng.uniform(*self.augmentation.zoom)
        read_shape = tuple(
            min(int(round(size / zoom)), limit)
            for size, limit in zip(self.patch_shape_vox, self.read_shape_vox, strict=True)
        )
        index, start = self._choose_patch(read_shape)
        volume = self.volumes[index]
        window = tuple(slice(s, s + size) for s, size in zip(start, read_shape, strict=True))

        scale = self.rng.uniform(*self.augmentation.hu_scale)
        shift = self.rng.uniform(*self.augmentation.hu_shift)
        inputs = [volume["hu"][window] * np.float32(scale) + np.float32(shift)]
        if "hessian" in volume:
            inputs.append(volume["hessian"][window] * np.float32(scale))
        label = volume["label"][window]
        if read_shape != self.patch_shape_vox:
            factors = [p / r for p, r in zip(self.patch_shape_vox, read_shape, strict=True)]
            inputs = [_zoom_to(array, self.patch_shape_vox, factors, order=1) for array in inputs]
            label = _zoom_to(label, self.patch_shape_vox, factors, order=0)

        noise_sd_hu = self.rng.uniform(*self.augmentation.noise_hu)
        if noise_sd_hu > 0:
            noise = self.rng.standard_normal(inputs[0].shape, dtype=np.float32) * np.float32(noise_sd_hu)
            inputs[0] = inputs[0] + noise
        inputs[0] = normalise_hu(inputs[0], self.metadata)

        if self.metadata.task == "tumour":
            target = (label == TUMOUR_LABEL).astype(np.float32)
        else:
            target = ((label > 0) & (label != IGNORE_LABEL)).astype(np.float32)
        weight = (label != IGNORE_LABEL).astype(np.float32)

        arrays = [*inputs, target, weight]
        for axis in self.augmentation.flip_axes:
            if self.rng.random() < 0.5:
                arrays = [np.flip(array, axis) for array in arrays]
        if self.augmentation.rotate_in_plane:
            turns = int(self.rng.integers(4))
            arrays = [np.rot90(array, turns, axes=(1, 2)) for array in arrays]
        arrays = [np.ascontiguousarray(array, dtype=np.float32) for array in arrays]
        return arrays[:-2], arrays[-2], arrays[-1]

    def _choose_patch(self, read_shape: tuple[int, int, int]) -> tuple[int, tuple[int, int, int]]:
        kind = self.rng.random()
        mix = self.mix
        if kind < mix.lesion and self.lesions:
            pool = self._lesion_pool()
            _, index, flat = pool[self.rng.integers(len(pool))]
            return index, self._start_around(index, flat, read_shape)
        for fraction_end, indices in (
            (mix.lesion + mix.liver, self.liver_indices),
            (mix.lesion + mix.liver + mix.surface, self.surface_indices),
        ):
            if kind < fraction_end:
                index = int(self.rng.integers(len(self.volumes)))
                if indices[index].size:
                    return index, self._start_around(index, indices[index], read_shape)
                break

        index = int(self.rng.integers(len(self.volumes)))
        shape = self.volumes[index]["hu"].shape
        start = tuple(
            int(self.rng.integers(0, n - size + 1)) for n, size in zip(shape, read_shape, strict=True)
        )
        return index, start

    def _lesion_pool(self) -> list[tuple[bool, int, np.ndarray]]:
        real = [lesion for lesion in self.lesions if not lesion[0]]
        synthetic = [lesion for lesion in self.lesions if lesion[0]]
        if synthetic and (not real or self.rng.random() < self.mix.synthetic):
            return synthetic
        return real

    def _start_around(
        self, index: int, flat_indices: np.ndarray, read_shape: tuple[int, int, int]
    ) -> tuple[int, int, int]:
        # The window centre is a random voxel of the region, moved by up to a quarter window so
        # the region is not always in the middle, then the window is kept inside the volume.
        shape = self.volumes[index]["hu"].shape
        centre = np.unravel_index(flat_indices[self.rng.integers(flat_indices.size)], shape)
        start = []
        for axis, size in enumerate(read_shape):
            offset = int(self.rng.integers(-(size // 4), size // 4 + 1))
            first = int(centre[axis]) - size // 2 + offset
            start.append(min(max(first, 0), shape[axis] - size))
        return start[0], start[1], start[2]


def _surface_indices(label: np.ndarray) -> np.ndarray:
    """Return flat indices of liver voxels (label 1 or 2) that touch a non-liver voxel."""
    liver = (label > 0) & (label != IGNORE_LABEL)
    return np.flatnonzero(liver & ~ndimage.binary_erosion(liver))


def _zoom_to(array: np.ndarray, shape: tuple[int, int, int], factors: list[float], order: int) -> np.ndarray:
    """Resample a (Z, Y, X) array by ``factors`` and crop or edge-pad it to exactly ``shape``."""
    zoomed = ndimage.zoom(array, factors, order=order, mode="nearest", grid_mode=True)
    zoomed = zoomed[tuple(slice(0, size) for size in shape)]
    missing = [(0, size - have) for size, have in zip(shape, zoomed.shape, strict=True)]
    if any(after for _, after in missing):
        zoomed = np.pad(zoomed, missing, mode="edge")
    return zoomed
