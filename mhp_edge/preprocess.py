"""Turn a CT scan into model input: orientation, HU clean-up, resampling, normalisation, crops.

The runtime and the training code in ``export/`` call the same functions, so a model gets at
inference exactly the input it was trained on. Every constant comes from the model's metadata.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from mhp_edge.hessian import multiscale_blob_response
from mhp_edge.metadata import HessianSpec, ModelMetadata
from mhp_edge.model import available_cpu_count

logger = logging.getLogger(__name__)

# Orientation every scan is turned to before it reaches a model: array axes (z, y, x) run to
# superior, posterior and the patient's left, as in an axial DICOM series.
CANONICAL_ORIENTATION = "LPS"

# Values this far below water cannot be tissue or air: they are scanner padding (-2048, -3024,
# -32768) outside the reconstruction circle, and become air.
AIR_HU = -1024.0


@dataclass(frozen=True)
class CleanedScan:
    """A scan in canonical orientation with float32 HU, plus what was repaired.

    Attributes
    ----------
    image : SimpleITK.Image
        HU oriented as ``CANONICAL_ORIENTATION``: integer input keeps its pixel type, float
        input becomes float32.
    non_finite_vox : int
        NaN or infinite voxels that were replaced with air.
    padding_vox : int
        Voxels below air (scanner padding) that were set to air.
    """

    image: sitk.Image
    non_finite_vox: int
    padding_vox: int


def image_spacing_zyx_mm(image: sitk.Image) -> tuple[float, float, float]:
    """Return an image's spacing in (z, y, x) order, in mm."""
    x_mm, y_mm, z_mm = image.GetSpacing()
    return z_mm, y_mm, x_mm


def clean_scan(image: sitk.Image) -> CleanedScan:
    """Reorient a CT scan to the canonical orientation and repair non-finite and padding values.

    Integer scans keep their pixel type, so a long int16 scan is never copied to float32 at full
    size; float scans become float32.

    Parameters
    ----------
    image : SimpleITK.Image
        3D scalar image in HU, any pixel type and any direction.

    Returns
    -------
    CleanedScan
    """
    oriented = to_orientation(image, CANONICAL_ORIENTATION)
    if oriented.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        padding_vox = count_below(sitk.GetArrayViewFromImage(oriented), AIR_HU)
        if padding_vox:
            logger.info("Set %d padding voxels below %.0f HU to air", padding_vox, AIR_HU)
            oriented = sitk.Maximum(oriented, AIR_HU)
        return CleanedScan(oriented, 0, padding_vox)

    hu = sitk.GetArrayFromImage(oriented).astype(np.float32, copy=False)
    non_finite = ~np.isfinite(hu)
    non_finite_vox = int(non_finite.sum())
    hu[non_finite] = AIR_HU
    padding = hu < AIR_HU
    padding_vox = int(padding.sum())
    hu[padding] = AIR_HU

    cleaned = sitk.GetImageFromArray(hu)
    cleaned.CopyInformation(oriented)
    if padding_vox:
        logger.info("Set %d padding voxels below %.0f HU to air", padding_vox, AIR_HU)
    return CleanedScan(cleaned, non_finite_vox, padding_vox)


def to_orientation(image: sitk.Image, orientation: str) -> sitk.Image:
    """Return ``image`` with its axes permuted and flipped to ``orientation`` (such as ``"LPS"``).

    An image already in that orientation is returned itself, not a copy, where
    ``sitk.DICOMOrient`` would copy every voxel: 83 ms for a 512 x 512 x 429 int16 scan on a
    2-vCPU AMD EPYC. (A shallow copy would not help: SimpleITK copies the buffer when a numpy
    view of it is taken.)
    """
    if sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection()) == orientation:
        return image
    return sitk.DICOMOrient(image, orientation)


def count_below(array: np.ndarray, value: float, *, slab_slices: int = 16) -> int:
    """Return how many voxels of a (Z, Y, X) array are below ``value``.

    The comparison runs on slabs of ``slab_slices`` slices, so a long scan gets no full-size
    bool temporary. A fresh 112 MB temporary took 0.28 s on a 512 x 512 x 429 scan, against
    0.02 s when numpy reused freed memory (most likely the cost of first-touch page faults).
    """
    return sum(
        int(np.count_nonzero(array[start : start + slab_slices] < value))
        for start in range(0, array.shape[0], slab_slices)
    )


def resample_to_spacing(
    image: sitk.Image,
    target_spacing_zyx_mm: Sequence[float],
    *,
    interpolator: int = sitk.sitkLinear,
    default_value: float = 0.0,
) -> sitk.Image:
    """Resample an image onto a grid with the same origin and direction and a new spacing.

    The new grid covers the old one: its size is ``ceil(old_extent / new_spacing)`` per axis.

    Parameters
    ----------
    image : SimpleITK.Image
        Any 3D image.
    target_spacing_zyx_mm : sequence of 3 floats
        New spacing in mm, (z, y, x) order.
    interpolator : int
        A SimpleITK interpolator constant, linear by default. Linear output is float32, so
        interpolated HU are not rounded; nearest-neighbour output keeps the pixel type.
    default_value : float
        Value for points outside the input.
    """
    new_spacing_xyz = tuple(float(s) for s in reversed(target_spacing_zyx_mm))
    old_size = np.array(image.GetSize(), dtype=np.float64)
    old_spacing = np.array(image.GetSpacing(), dtype=np.float64)
    new_size = np.maximum(1, np.ceil(old_size * old_spacing / new_spacing_xyz - 1e-6)).astype(int)

    return _resample(
        image,
        [int(n) for n in new_size],
        interpolator,
        image.GetOrigin(),
        new_spacing_xyz,
        image.GetDirection(),
        default_value,
        image.GetPixelID() if interpolator == sitk.sitkNearestNeighbor else sitk.sitkFloat32,
    )


def upsample_linear(
    values: np.ndarray,
    values_spacing_zyx_mm: Sequence[float],
    values_start_mm: Sequence[float],
    points_spacing_zyx_mm: Sequence[float],
    points_start_mm: Sequence[float],
    points_shape: Sequence[int],
    *,
    outside: float | None = 0.0,
    threshold: float | None = None,
) -> np.ndarray:
    """Linearly interpolate a map onto another axis-aligned grid of the same orientation.

    Trilinear interpolation is separable, so it runs one axis at a time, x and y on the map's
    own slices and z last, one output slice at a time, with no full-size temporaries. The result
    equals SimpleITK's linear ``Resample`` between the two grids: a point within half a voxel
    beyond the map's first or last voxel centre takes that edge value, and a point farther out
    takes ``outside``. With ``outside=None`` every point beyond the map takes the edge value.

    Parameters
    ----------
    values : ndarray of shape (Z, Y, X)
        The map, float32.
    values_spacing_zyx_mm, points_spacing_zyx_mm : sequences of 3 floats
        Voxel spacing of the map and of the points, mm.
    values_start_mm, points_start_mm : sequences of 3 floats
        (z, y, x) position of the first voxel centre of each grid, mm from a shared origin.
    points_shape : sequence of 3 ints
        (z, y, x) shape of the result.
    outside : float or None
        Value of points beyond the map. None extends the map's edge values.
    threshold : float or None
        When given, return a bool mask of the points whose interpolated value is greater than
        ``threshold``, one slice at a time, with no float result kept. Points beyond the map take
        ``outside > threshold``.

    Returns
    -------
    ndarray of shape points_shape, float32 (bool with ``threshold``)
    """
    axes = [
        _linear_axis(
            values.shape[axis],
            values_spacing_zyx_mm[axis],
            values_start_mm[axis],
            points_spacing_zyx_mm[axis],
            points_start_mm[axis],
            points_shape[axis],
        )
        for axis in range(3)
    ]

    partial = values.astype(np.float32, copy=False)
    for axis in (2, 1):
        low, high, fraction, _ = axes[axis]
        shape = [1, 1, 1]
        shape[axis] = -1
        fraction = fraction.reshape(shape)
        lower = np.take(partial, low, axis=axis)
        lower *= 1 - fraction
        upper = np.take(partial, high, axis=axis)
        upper *= fraction
        lower += upper
        partial = lower

    low, high, fraction, _ = axes[0]
    result = np.empty(tuple(points_shape), dtype=np.float32 if threshold is None else bool)
    lower = np.empty(tuple(points_shape[1:]), dtype=np.float32)
    upper = np.empty_like(lower)
    for index in range(points_shape[0]):
        np.multiply(partial[low[index]], 1 - fraction[index], out=lower)
        np.multiply(partial[high[index]], fraction[index], out=upper)
        if threshold is None:
            np.add(lower, upper, out=result[index])
        else:
            lower += upper
            np.greater(lower, threshold, out=result[index])

    if outside is None:
        return result
    fill = outside if threshold is None else bool(np.float32(outside) > threshold)
    inside_z, inside_y, inside_x = (inside for *_, inside in axes)
    result[~inside_z] = fill
    result[:, ~inside_y] = fill
    result[:, :, ~inside_x] = fill
    return result


def _linear_axis(
    size: int,
    spacing_mm: float,
    start_mm: float,
    points_spacing_mm: float,
    points_start_mm: float,
    count: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return, for ``count`` points along one axis, the two map indices, the weight of the second, and
    whether the point lies within half a voxel of the map (SimpleITK's rule)."""
    index = (points_start_mm + np.arange(count) * points_spacing_mm - start_mm) / spacing_mm
    inside = (index >= -0.5) & (index < size - 0.5)
    clamped = np.clip(index, 0, size - 1)
    low = np.minimum(np.floor(clamped).astype(np.intp), max(size - 2, 0))
    high = np.minimum(low + 1, size - 1)
    fraction = (clamped - low).astype(np.float32)
    return low, high, fraction, inside


def resample_like(
    image: sitk.Image, reference: sitk.Image, *, interpolator: int, default_value: float = 0.0
) -> sitk.Image:
    """Resample an image onto the voxel grid of ``reference`` (size, spacing, origin, direction)."""
    return _resample(
        image,
        reference.GetSize(),
        interpolator,
        reference.GetOrigin(),
        reference.GetSpacing(),
        reference.GetDirection(),
        default_value,
        image.GetPixelID(),
    )


def _resample(
    image: sitk.Image,
    size_xyz: Sequence[int],
    interpolator: int,
    origin: Sequence[float],
    spacing_xyz: Sequence[float],
    direction: Sequence[float],
    default_value: float,
    pixel_id: int,
) -> sitk.Image:
    """Resample ``image`` onto a grid (sizes and spacings in x, y, z order) with threads within the CPU quota.

    ``sitk.Resample`` runs on ITK's default thread count, which comes from the CPUs the process
    may run on or from ITK's environment variables, not from a container's CPU quota.
    """
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(n) for n in size_xyz])
    resampler.SetInterpolator(interpolator)
    resampler.SetOutputOrigin(tuple(origin))
    resampler.SetOutputSpacing(tuple(spacing_xyz))
    resampler.SetOutputDirection(tuple(direction))
    resampler.SetDefaultPixelValue(default_value)
    resampler.SetOutputPixelType(pixel_id)
    resampler.SetNumberOfThreads(available_cpu_count())
    return resampler.Execute(image)


def normalise_hu(hu: np.ndarray, metadata: ModelMetadata) -> np.ndarray:
    """Clip HU to the model's window and standardise.

    Parameters
    ----------
    hu : ndarray, float32
        Intensities in HU.
    metadata : ModelMetadata
        Supplies ``hu_clip``, ``hu_mean`` and ``hu_std``.

    Returns
    -------
    ndarray, float32
        ``(clip(hu) - hu_mean) / hu_std``.
    """
    low, high = metadata.hu_clip
    clipped = np.clip(hu, low, high).astype(np.float32, copy=False)
    return (clipped - np.float32(metadata.hu_mean)) / np.float32(metadata.hu_std)


def hessian_input(
    hu: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    spec: HessianSpec,
    *,
    core: tuple[slice, slice, slice] | None = None,
    threads: int = 1,
) -> np.ndarray:
    """Compute the Hessian-enhanced twin of a CT volume as the model expects it.

    Parameters
    ----------
    hu : ndarray of shape (Z, Y, X), float32
        Intensities in HU at the model's spacing.
    spacing_zyx_mm : sequence of 3 floats
        Voxel spacing in mm.
    spec : HessianSpec
        Clip range, scales and response scale from the model metadata.
    core : tuple of 3 slices, optional
        Region of ``hu`` to return; the rest is context the filters read (see
        ``TumourGrid``). The whole volume by default.
    threads : int
        Threads for the filter passes; the result does not depend on it.

    Returns
    -------
    ndarray of the core's shape, float32
        Signed blob response divided by ``spec.response_scale``.
    """
    low, high = spec.hu_clip
    clipped = np.clip(hu, low, high).astype(np.float32, copy=False)
    response = multiscale_blob_response(
        clipped,
        spacing_zyx_mm,
        spec.scales_mm,
        core=core,
        pyramid_min_sigma_vox=spec.pyramid_min_sigma_vox,
        threads=threads,
    )
    response /= np.float32(spec.response_scale)
    return response


@dataclass(frozen=True)
class TumourGrid:
    """A box of the scan at a tumour model's spacing, with the scan around it for the Hessian.

    Attributes
    ----------
    crop : SimpleITK.Image
        The box on the scan's own grid, where the probability goes back to.
    image : SimpleITK.Image
        The box resampled to the model spacing: the grid the tumour probability lives on.
    context_hu : ndarray of shape (Z', Y', X'), float32
        HU on ``image``'s grid grown by the Hessian's ``context_mm`` on each side, as far as the
        scan reaches.
    core : tuple of 3 slices
        Where ``image`` sits inside ``context_hu``.
    """

    crop: sitk.Image
    image: sitk.Image
    context_hu: np.ndarray
    core: tuple[slice, slice, slice]

    @property
    def hu(self) -> np.ndarray:
        """HU on ``image``'s grid, float32 (z, y, x), as a view into ``context_hu``."""
        return self.context_hu[self.core]


def resample_box(scan: sitk.Image, box: tuple[slice, slice, slice], metadata: ModelMetadata) -> TumourGrid:
    """Crop a box of the scan, resample it to the model spacing and add the Hessian's context.

    Parameters
    ----------
    scan : SimpleITK.Image
        The whole scan in HU, as ``clean_scan`` returns it.
    box : tuple of 3 slices
        (z, y, x) box on the scan's grid, for example the liver's bounding box plus margin.
    metadata : ModelMetadata
        Supplies the spacing, padding HU and, for models with a Hessian input, ``context_mm``.

    Returns
    -------
    TumourGrid
        The context stays inside the scan, so the filters treat the scan's own edge as before.
    """
    z, y, x = box
    crop = scan[x.start : x.stop, y.start : y.stop, z.start : z.stop]
    image = resample_to_spacing(crop, metadata.spacing_zyx_mm, default_value=metadata.pad_hu)
    hu = sitk.GetArrayFromImage(image)
    context_mm = 0.0 if metadata.hessian is None else metadata.hessian.context_mm
    if context_mm == 0:
        return TumourGrid(crop, image, hu, tuple(slice(0, n) for n in hu.shape))

    # Grow the grid by whole model voxels, but only while its voxel centres stay inside the scan.
    ratio = np.asarray(metadata.spacing_zyx_mm) / np.asarray(image_spacing_zyx_mm(scan))
    scan_shape = sitk.GetArrayViewFromImage(scan).shape
    before, after = [], []
    for axis, part in enumerate(box):
        requested_vox = int(np.ceil(context_mm / metadata.spacing_zyx_mm[axis]))
        room_before_vox = part.start / ratio[axis]
        room_after_vox = (scan_shape[axis] - 1 - part.start) / ratio[axis] - (hu.shape[axis] - 1)
        before.append(min(requested_vox, int(np.floor(room_before_vox + 1e-6))))
        after.append(max(0, min(requested_vox, int(np.floor(room_after_vox + 1e-6)))))
    grown_shape_xyz = [int(n + b + a) for n, b, a in zip(hu.shape, before, after, strict=True)][::-1]
    origin = image.TransformContinuousIndexToPhysicalPoint([-float(b) for b in before[::-1]])
    grown = _resample(
        scan,
        grown_shape_xyz,
        sitk.sitkLinear,
        origin,
        image.GetSpacing(),
        image.GetDirection(),
        metadata.pad_hu,
        sitk.sitkFloat32,
    )

    # The core keeps the crop's own resampling, so the CT input is the same with and without context.
    # NOTE: that resampling fills the crop's last slab along an axis with pad_hu when the slab lies
    # more than half a voxel past the crop (the last slice of most 5 mm scans). Real scan follows it
    # in the context. Training does the same, so the model has seen it. Filling that slab from the
    # scan would change the input and needs a retrained model.
    context_hu = sitk.GetArrayFromImage(grown)
    core = tuple(slice(b, b + n) for b, n in zip(before, hu.shape, strict=True))
    context_hu[core] = hu
    return TumourGrid(crop, image, context_hu, core)


def shift_to_liver_median(
    grid: TumourGrid, liver: np.ndarray, metadata: ModelMetadata
) -> tuple[TumourGrid, float]:
    """Shift a grid's HU so its liver median is the model's ``liver_median_hu``.

    Parameters
    ----------
    grid : TumourGrid
    liver : ndarray, bool (z, y, x)
        Liver voxels (lesions included) on ``grid.image``'s grid.
    metadata : ModelMetadata

    Returns
    -------
    grid : TumourGrid
        A copy with ``context_hu`` shifted, or ``grid`` itself when the model sets no
        ``liver_median_hu`` or ``liver`` is empty. The pixels of ``grid.image`` stay as read,
        because callers use it for its geometry alone.
    offset_hu : float
        The HU added to every voxel, 0.0 when unchanged.
    """
    if metadata.liver_median_hu is None or not liver.any():
        return grid, 0.0
    offset_hu = metadata.liver_median_hu - float(np.median(grid.hu[liver]))
    return dataclasses.replace(grid, context_hu=grid.context_hu + np.float32(offset_hu)), offset_hu


def nonzero_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Return the (z, y, x) slices of the bounding box of a 3D mask's nonzero voxels, or None if empty.

    The in-plane extent is read from the mask's occupied slices only, so a small mask in a long
    scan costs one pass over the scan.
    """
    along_z = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if along_z.size == 0:
        return None
    z = slice(int(along_z[0]), int(along_z[-1]) + 1)
    in_plane = mask[z].any(axis=0)
    along_y = np.flatnonzero(in_plane.any(axis=1))
    along_x = np.flatnonzero(in_plane.any(axis=0))
    return z, slice(int(along_y[0]), int(along_y[-1]) + 1), slice(int(along_x[0]), int(along_x[-1]) + 1)


def value_box(array: np.ndarray, value: float, *, slab_slices: int = 16) -> tuple[slice, slice, slice] | None:
    """Return the (z, y, x) slices of the box of a 3D array's voxels equal to ``value``, or None.

    Like ``nonzero_box(array == value)``, but compared on slabs of ``slab_slices`` slices, so a
    long scan gets no full-size temporary.
    """
    slabs = [array[start : start + slab_slices] for start in range(0, array.shape[0], slab_slices)]
    occupied = np.concatenate([(slab == value).any(axis=(1, 2)) for slab in slabs])
    along_z = np.flatnonzero(occupied)
    if along_z.size == 0:
        return None
    z = slice(int(along_z[0]), int(along_z[-1]) + 1)

    in_plane = np.zeros(array.shape[1:], dtype=bool)
    for start in range(z.start, z.stop, slab_slices):
        in_plane |= (array[start : min(start + slab_slices, z.stop)] == value).any(axis=0)
    along_y = np.flatnonzero(in_plane.any(axis=1))
    along_x = np.flatnonzero(in_plane.any(axis=0))
    return z, slice(int(along_y[0]), int(along_y[-1]) + 1), slice(int(along_x[0]), int(along_x[-1]) + 1)


def bounding_box_with_margin(
    mask: np.ndarray, spacing_zyx_mm: Sequence[float], margin_mm: float
) -> tuple[slice, slice, slice] | None:
    """Return the (z, y, x) slices of a mask's bounding box grown by a margin, or None if empty.

    Parameters
    ----------
    mask : ndarray of shape (Z, Y, X), bool or uint8
    spacing_zyx_mm : sequence of 3 floats
        Voxel spacing in mm.
    margin_mm : float
        Margin added on every side, clipped to the array.
    """
    box = nonzero_box(mask)
    if box is None:
        return None

    grown = []
    for axis, part in enumerate(box):
        margin_vox = int(np.ceil(margin_mm / spacing_zyx_mm[axis]))
        grown.append(slice(max(0, part.start - margin_vox), min(mask.shape[axis], part.stop + margin_vox)))
    return grown[0], grown[1], grown[2]
