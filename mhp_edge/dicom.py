"""Reading a CT series from a DICOM folder as scanners and archives really write them.

A folder may hold several series (phases), localizer images inside a series, duplicate or
missing slices, slice positions with rounding jitter, unsigned pixel data with a negative rescale
intercept and padding values outside the scan circle. The rules, in order:

1. Every file below the folder is read with pydicom. Files that are not DICOM images with a
   position, orientation and pixel spacing (SEG, SR, presentation states) are passed over.
2. Images are grouped into stacks by series UID, orientation and matrix size. A localizer in an
   axial series becomes a stack of its own and is dropped as too small.
3. Among stacks of at least ``MIN_SLICES`` slices: axial before other orientations, then
   ORIGINAL/PRIMARY image type before derived, then the most slices, then the lowest series
   number. ``series_uid`` picks a series by hand.
4. Slices are ordered by position along the slice normal; the spacing is the median step between
   positions, never the SliceThickness tag. Slices at one position are kept once. Up to
   ``MAX_MISSING_SLICES`` missing slices in a row are filled by linear interpolation with a
   warning; larger gaps are an error.
5. HU = stored value x slope + intercept in float32, so unsigned data and negative intercepts
   cannot overflow; pixels equal to PixelPaddingValue become air.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from mhp_edge.errors import InputImageError

logger = logging.getLogger(__name__)

MIN_SLICES = 3
MAX_MISSING_SLICES = 2
AIR_HU = -1024.0

# Steps between slice positions within this fraction of the median step are rounding jitter.
_JITTER_FRACTION = 0.05


@dataclass
class DicomStack:
    """Slices of one series that share orientation and matrix size.

    Attributes
    ----------
    series_uid : str
    series_number : int
    description : str
    orientation : tuple of 6 floats
        ImageOrientationPatient: row cosine then column cosine.
    original : bool
        ImageType starts with ORIGINAL\\PRIMARY.
    files : list of Path
    datasets : list of pydicom.Dataset
        Headers without pixel data, in the order of ``files``.
    """

    series_uid: str
    series_number: int
    description: str
    orientation: tuple[float, ...]
    original: bool
    files: list[Path] = field(default_factory=list)
    datasets: list = field(default_factory=list)

    @property
    def normal(self) -> np.ndarray:
        """Unit normal of the slices: row cosine x column cosine."""
        row, column = np.array(self.orientation[:3]), np.array(self.orientation[3:])
        normal = np.cross(row, column)
        return normal / np.linalg.norm(normal)

    @property
    def axial(self) -> bool:
        """True when the slices are within about 25 degrees of axial."""
        return abs(self.normal[2]) > 0.9

    def describe(self) -> str:
        """Return a one-line description for logs and error messages."""
        kind = "axial" if self.axial else "non-axial"
        return (
            f"series {self.series_number} '{self.description}' ({self.series_uid}): "
            f"{len(self.files)} {kind} slices"
        )


def read_dicom_series(folder: Path, *, series_uid: str | None = None) -> sitk.Image:
    """Read the CT series to segment from a DICOM folder (searched recursively).

    Parameters
    ----------
    folder : Path
        Folder with DICOM files, in any layout.
    series_uid : str, optional
        SeriesInstanceUID to read; by default one is chosen by the rules in the module docstring.

    Returns
    -------
    SimpleITK.Image
        float32 HU, spacing from slice positions, direction from the image orientation.

    Raises
    ------
    InputImageError
        If no stack can be chosen or the chosen one cannot be stacked.
    """
    stacks = find_stacks(folder)
    stack = choose_stack(stacks, folder=folder, series_uid=series_uid)
    return stack_to_image(stack, folder=folder)


def find_stacks(folder: Path) -> list[DicomStack]:
    """Group the DICOM images below ``folder`` into stacks (series, orientation, matrix size)."""
    groups: dict[tuple, DicomStack] = {}
    skipped = 0
    for path in sorted(_files_below(folder)):
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError):
            skipped += 1
            continue
        if not _is_slice(dataset):
            skipped += 1
            continue

        orientation = tuple(round(float(v), 3) for v in dataset.ImageOrientationPatient)
        key = (str(dataset.SeriesInstanceUID), orientation, int(dataset.Rows), int(dataset.Columns))
        if key not in groups:
            image_type = [str(v).upper() for v in dataset.get("ImageType", [])]
            groups[key] = DicomStack(
                series_uid=key[0],
                series_number=int(dataset.get("SeriesNumber") or 0),
                description=str(dataset.get("SeriesDescription", "")),
                orientation=orientation,
                original=image_type[:2] == ["ORIGINAL", "PRIMARY"],
            )
        groups[key].files.append(path)
        groups[key].datasets.append(dataset)

    if skipped:
        logger.info("Passed over %d files that are not DICOM image slices", skipped)
    return list(groups.values())


def choose_stack(stacks: list[DicomStack], *, folder: Path, series_uid: str | None = None) -> DicomStack:
    """Choose the stack to segment by the rules in the module docstring.

    Raises
    ------
    InputImageError
        If no stack has enough slices, or ``series_uid`` matches none.
    """
    if series_uid is not None:
        stacks = [s for s in stacks if s.series_uid == series_uid]
        if not stacks:
            raise InputImageError(
                f"{folder}: no image series with UID {series_uid}. Run with -v to list the series "
                "found, or leave out --series to choose automatically."
            )
    for stack in stacks:
        if len(stack.files) < MIN_SLICES:
            logger.info("Dropped %s (fewer than %d slices: a localizer?)", stack.describe(), MIN_SLICES)
    candidates = [s for s in stacks if len(s.files) >= MIN_SLICES]
    if not candidates:
        raise InputImageError(
            f"{folder}: no DICOM image series with at least {MIN_SLICES} slices found. Point to "
            "the folder that holds the CT series."
        )

    candidates.sort(key=lambda s: (not s.axial, not s.original, -len(s.files), s.series_number))
    chosen = candidates[0]
    logger.info("Chose %s", chosen.describe())
    for other in candidates[1:]:
        logger.info("Not chosen: %s", other.describe())
    ties = [
        s
        for s in candidates[1:]
        if (s.axial, s.original, len(s.files)) == (chosen.axial, chosen.original, len(chosen.files))
    ]
    if ties:
        logger.warning(
            "%d other series tie with the chosen one (%s); the lowest series number won. "
            "Pass --series UID to choose another: %s",
            len(ties),
            chosen.describe(),
            ", ".join(s.series_uid for s in ties),
        )
    return chosen


def stack_to_image(stack: DicomStack, *, folder: Path) -> sitk.Image:
    """Order, check and read the slices of a stack into a float32 HU image."""
    normal = stack.normal
    positions = np.array([np.dot(normal, [float(v) for v in d.ImagePositionPatient]) for d in stack.datasets])
    order = np.argsort(positions, kind="stable")
    positions = positions[order]
    files = [stack.files[i] for i in order]
    datasets = [stack.datasets[i] for i in order]

    steps = np.diff(positions)
    distinct = steps[steps > 1e-3]
    if distinct.size == 0:
        raise InputImageError(
            f"{folder}: all {len(files)} slices of {stack.describe()} share one position; "
            "this is not a 3D stack."
        )
    median_step = float(np.median(distinct))

    duplicate = np.concatenate([[False], steps < _JITTER_FRACTION * median_step])
    if duplicate.any():
        logger.warning("Dropped %d slices that repeat a position", int(duplicate.sum()))
        keep = ~duplicate
        positions = positions[keep]
        files = [f for f, k in zip(files, keep, strict=True) if k]
        datasets = [d for d, k in zip(datasets, keep, strict=True) if k]

    _check_in_plane_geometry(datasets, folder)
    volume = np.stack([_slice_hu(d, f) for d, f in zip(datasets, files, strict=True)])
    volume, spacing_mm = _fill_gaps(volume, positions, median_step, folder)

    first = datasets[0]
    row_spacing_mm, column_spacing_mm = (float(v) for v in first.PixelSpacing)
    row_cosine = np.array(stack.orientation[:3])
    column_cosine = np.array(stack.orientation[3:])
    direction = np.column_stack([row_cosine, column_cosine, normal])

    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((column_spacing_mm, row_spacing_mm, spacing_mm))
    image.SetOrigin(tuple(float(v) for v in first.ImagePositionPatient))
    image.SetDirection(tuple(direction.ravel()))
    logger.info(
        "Stacked %d slices of %s, spacing %.3f x %.3f x %.3f mm",
        volume.shape[0],
        stack.describe(),
        column_spacing_mm,
        row_spacing_mm,
        spacing_mm,
    )
    return image


def _files_below(folder: Path):
    for root, _, names in os.walk(folder):
        for name in names:
            if not name.startswith("."):
                yield Path(root) / name


def _is_slice(dataset) -> bool:
    required = ("SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
    if not all(tag in dataset for tag in required) or "Rows" not in dataset:
        return False
    return int(dataset.get("NumberOfFrames") or 1) == 1


def _check_in_plane_geometry(datasets: list, folder: Path) -> None:
    spacings = {tuple(round(float(v), 4) for v in d.PixelSpacing) for d in datasets}
    if len(spacings) > 1:
        raise InputImageError(
            f"{folder}: slices of one series have different pixel spacings {sorted(spacings)}; "
            "they cannot be stacked. Export the series again or choose another with --series."
        )


def _slice_hu(dataset_header, path: Path) -> np.ndarray:
    dataset = pydicom.dcmread(path)
    try:
        stored = dataset.pixel_array
    except Exception:  # pydicom raises several types when no decoder handles the transfer syntax
        # SimpleITK (GDCM) decodes the compressed syntaxes pydicom cannot and applies the rescale.
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
        return sitk.GetArrayFromImage(image)[0]

    hu = stored.astype(np.float32)
    padding = dataset.get("PixelPaddingValue")
    slope = float(dataset.get("RescaleSlope", 1) or 1)
    intercept = float(dataset.get("RescaleIntercept", 0) or 0)
    hu = hu * np.float32(slope) + np.float32(intercept)
    if padding is not None:
        hu[stored == padding] = AIR_HU
    return hu


def _fill_gaps(
    volume: np.ndarray, positions: np.ndarray, step_mm: float, folder: Path
) -> tuple[np.ndarray, float]:
    """Put slices on a uniform grid; interpolate at most MAX_MISSING_SLICES missing in a row."""
    steps = np.diff(positions)
    ratios = steps / step_mm
    if np.all(np.abs(ratios - 1) <= _JITTER_FRACTION):
        # Rounding jitter only: use the mean step so the stack spans its true extent.
        return volume, float((positions[-1] - positions[0]) / (len(positions) - 1))

    worst = int(np.argmax(ratios))
    missing = int(round(ratios[worst])) - 1
    if missing > MAX_MISSING_SLICES or np.any(np.abs(ratios - np.round(ratios)) > _JITTER_FRACTION):
        raise InputImageError(
            f"{folder}: slice positions are not evenly spaced: a step of {steps[worst]:.2f} mm at "
            f"{positions[worst]:.1f} mm where the usual step is {step_mm:.2f} mm. Export the "
            "complete series, or resample it to even spacing first."
        )

    grid = positions[0] + step_mm * np.arange(int(round((positions[-1] - positions[0]) / step_mm)) + 1)
    upper = np.clip(np.searchsorted(positions, grid, side="left"), 1, len(positions) - 1)
    lower = upper - 1
    weight = ((grid - positions[lower]) / (positions[upper] - positions[lower])).astype(np.float32)
    weight = np.clip(weight, 0, 1)[:, np.newaxis, np.newaxis]
    filled = (1 - weight) * volume[lower] + weight * volume[upper]
    logger.warning(
        "Interpolated %d missing slices (steps up to %.2f mm where the usual step is %.2f mm)",
        len(grid) - len(positions),
        steps.max(),
        step_mm,
    )
    return filled.astype(np.float32), step_mm
