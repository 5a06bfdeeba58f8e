"""Writing the label mask as a DICOM Segmentation and reading DICOM Segmentations back.

The written object is a BINARY Segmentation (highdicom) with two segments that may overlap:
segment 1 is the liver including its tumours (labels >= 1) and segment 2 is the tumour
(label 2). Every segment has one frame for each source CT image, empty or not, so the tumour
segment exists even when no tumour was found and viewers that expect a full stack per segment
place the frames right. Frames are matched to source images by physical position, never by
file order.

Reading places frames by their plane positions on a reference image grid and ignores the
referenced SOP instance UIDs, because some archives write wrong per-frame source references.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes

from mhp_edge.errors import InputImageError, OutputError
from mhp_edge.io import write_atomically
from mhp_edge.report import LIVER_LABEL, TUMOUR_LABEL

logger = logging.getLogger(__name__)

SEGMENTATION_STORAGE_UID = "1.2.840.10008.5.1.4.1.1.66.4"
SERIES_DESCRIPTION = "mhp-edge liver and tumour, research use only"
SEG_SERIES_NUMBER = 9901
"""Series number of written Segmentations, high so that they sort after the scanner's series."""

# A position within this fraction of a voxel of a grid point lies on that grid point. The DICOM
# reader accepts slice positions that deviate from an even step by up to 5 % of the step.
GRID_TOLERANCE_VOX = 0.25
ORIENTATION_TOLERANCE = 1e-3

LIVER_CODE = codes.SCT.Liver
TUMOUR_CATEGORY_CODE = codes.cid7150.MorphologicallyAbnormalStructure
TUMOUR_TYPE_CODE = codes.cid7151.Neoplasm
# NOTE: CID 7150 "Segmentation Property Categories" lists "Anatomical Structure" as SCT 91723000
# (pydicom 3.0 code tables). Some SEG writers still use SCT 123037004, which SNOMED CT names
# "Body structure". The reader accepts either, because it identifies the liver by its type code.
LIVER_CATEGORY_CODE = codes.cid7150.AnatomicalStructure

# Type 2 attributes of the Patient and General Study modules: required but allowed to be empty.
# highdicom 0.28 reads them from the first source image and fails when an anonymiser removed one.
_TYPE2_SOURCE_ATTRIBUTES = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


@dataclass(frozen=True)
class _SourceSlice:
    """A source CT image matched to slice ``z_index`` of the label image."""

    z_index: int
    path: Path
    dataset: pydicom.Dataset


def write_dicom_seg(
    labels: sitk.Image,
    source_files: Sequence[Path],
    path: Path,
    *,
    algorithm_version: str,
    overwrite: bool = False,
) -> None:
    """Write a label mask as a DICOM Segmentation that references its source CT series.

    Segment 1 "Liver" (SCT 10200004) contains every voxel with a label >= 1, because tumours
    lie inside the liver. Segment 2 "Tumour" (category Morphologically Abnormal Structure,
    SCT 49755003, type Neoplasm, SCT 108369006) contains the voxels with label 2. Both segments
    are always described and always have one frame per source image, even when they are empty,
    so a result without tumour is a valid object with an empty tumour segment.

    Each mask slice is matched to the source image whose ImagePositionPatient lies on it. Mask
    slices without a source image (slices that the reader interpolated) are left out with a
    warning. Source files in another orientation, such as localizers, are passed over.

    Parameters
    ----------
    labels : SimpleITK.Image
        uint8 labels 0 background, 1 liver, 2 tumour, on the grid that ``mhp_edge.io.read_image``
        built from ``source_files`` (size x, y, z; not reoriented).
    source_files : sequence of Path
        The DICOM files of the CT series the mask was computed from, for example
        ``DicomStack.files``.
    path : Path
        Destination file, usually with the suffix ``.dcm``.
    algorithm_version : str
        Version of mhp-edge and its models, stored as the algorithm and software version.
    overwrite : bool
        Replace an existing file. Without it an existing file is an error.

    Raises
    ------
    OutputError
        If ``path`` exists (without ``overwrite``), the labels are not on the grid of the source
        images or contain values other than 0, 1 and 2, the source images belong to several
        series or have no FrameOfReferenceUID, or the file cannot be written.
    InputImageError
        If ``source_files`` is empty or a source file cannot be read as DICOM.
    """
    path = Path(path)
    label_array_zyx = _label_array(labels, path)

    started = time.perf_counter()
    slices = _match_source_slices(labels, _read_source_headers(source_files), path)
    _warn_about_slices_without_source(label_array_zyx, slices)

    z_indices = [s.z_index for s in slices]
    segments_zyxc = np.stack(
        [label_array_zyx[z_indices] >= LIVER_LABEL, label_array_zyx[z_indices] == TUMOUR_LABEL],
        axis=-1,
    ).astype(np.uint8)
    segmentation = _build_segmentation(
        [s.dataset for s in slices], segments_zyxc, algorithm_version=algorithm_version, path=path
    )
    write_atomically(path, segmentation.save_as, overwrite=overwrite)
    logger.info(
        "Wrote DICOM SEG %s: %d frames for %d source images in %.1f s",
        path,
        int(segmentation.NumberOfFrames),
        len(slices),
        time.perf_counter() - started,
    )


def read_dicom_seg(path: Path, reference: sitk.Image) -> sitk.Image:
    """Read a DICOM Segmentation into a label image on the grid of a reference image.

    Frames are placed by their plane position and orientation, and referenced SOP instance UIDs
    are ignored. A segment whose type is Liver (SCT 10200004) becomes label 1, and a segment whose
    category is Morphologically Abnormal Structure (SCT 49755003) becomes label 2, drawn over
    the liver. Other segments are passed over with a warning.

    Parameters
    ----------
    path : Path
        A BINARY or FRACTIONAL DICOM Segmentation file. Fractional values of at least half the
        maximum count as inside.
    reference : SimpleITK.Image
        The image to place the segmentation on, normally ``read_image`` of the source series.
        The frames must lie on its grid: same orientation and pixel spacing, and each frame's
        first pixel at a voxel of the reference.

    Returns
    -------
    SimpleITK.Image
        uint8 labels 0, 1, 2 with the reference's size, spacing, origin and direction.

    Raises
    ------
    InputImageError
        If the file is not a readable BINARY or FRACTIONAL Segmentation, has no liver or tumour
        segment, or a frame with segmented pixels does not lie on the reference grid.
    """
    path = Path(path)
    dataset = _read_segmentation_dataset(path)
    labels_by_segment = _labels_by_segment(dataset, path)
    frames = _frame_masks(dataset, path)

    size_x, size_y, size_z = reference.GetSize()
    masks_zyx = {
        label: np.zeros((size_z, size_y, size_x), dtype=bool) for label in (LIVER_LABEL, TUMOUR_LABEL)
    }
    for frame_index, frame in enumerate(frames):
        segment_number = _frame_segment_number(dataset, frame_index, path)
        label = labels_by_segment.get(segment_number)
        if label is None or not frame.any():
            continue
        _paste_frame(masks_zyx[label], frame, dataset, frame_index, reference, path)

    label_array_zyx = np.zeros((size_z, size_y, size_x), dtype=np.uint8)
    label_array_zyx[masks_zyx[LIVER_LABEL]] = LIVER_LABEL
    label_array_zyx[masks_zyx[TUMOUR_LABEL]] = TUMOUR_LABEL
    image = sitk.GetImageFromArray(label_array_zyx)
    image.CopyInformation(reference)
    return image


def _label_array(labels: sitk.Image, path: Path) -> np.ndarray:
    """Return the labels as a (z, y, x) uint8 array after checking their values."""
    if labels.GetDimension() != 3:
        raise OutputError(f"{path}: the label image is {labels.GetDimension()}D, expected 3D (z, y, x).")
    array_zyx = sitk.GetArrayFromImage(labels)
    unexpected = sorted(set(np.unique(array_zyx).tolist()) - {0, LIVER_LABEL, TUMOUR_LABEL})
    if unexpected:
        raise OutputError(
            f"{path}: the label image contains the values {unexpected[:5]}, expected only 0 "
            f"(background), {LIVER_LABEL} (liver) and {TUMOUR_LABEL} (tumour). Pass the mask that "
            "the segmentation produced."
        )
    return array_zyx.astype(np.uint8)


def _read_source_headers(source_files: Sequence[Path]) -> list[tuple[Path, pydicom.Dataset]]:
    headers = []
    for source in source_files:
        try:
            dataset = pydicom.dcmread(source, stop_before_pixels=True)
        except (InvalidDicomError, OSError) as err:
            raise InputImageError(
                f"{source}: cannot be read as a DICOM file ({err}). Pass the files of the CT series "
                "that the mask was computed from."
            ) from err
        headers.append((Path(source), dataset))
    if not headers:
        raise InputImageError(
            "No source DICOM files were given, but a DICOM SEG must reference its CT series."
        )
    return headers


def _match_source_slices(
    labels: sitk.Image, headers: list[tuple[Path, pydicom.Dataset]], path: Path
) -> list[_SourceSlice]:
    """Match source images to label slices by position and return them ordered by slice index."""
    direction = np.array(labels.GetDirection()).reshape(3, 3)
    size_x, size_y, size_z = labels.GetSize()
    by_slice: dict[int, _SourceSlice] = {}
    passed_over = 0
    for source, dataset in headers:
        if not _has_image_plane(dataset):
            passed_over += 1
            continue
        orientation = np.array([float(v) for v in dataset.ImageOrientationPatient])
        if not np.allclose(orientation, direction[:, :2].T.ravel(), atol=ORIENTATION_TOLERANCE):
            passed_over += 1
            continue

        _check_source_matrix(dataset, source, labels, path)
        position_mm = tuple(float(v) for v in dataset.ImagePositionPatient)
        index_xyz = np.array(labels.TransformPhysicalPointToContinuousIndex(position_mm))
        z_index = int(round(index_xyz[2]))
        off_grid = np.abs(index_xyz - [0.0, 0.0, z_index]) > GRID_TOLERANCE_VOX
        if off_grid.any() or not 0 <= z_index < size_z:
            raise OutputError(
                f"{path}: source image {source} at {_format_mm(position_mm)} is not on a slice of "
                f"the mask grid (voxel index {_format_index(index_xyz)}, mask size "
                f"{size_x} x {size_y} x {size_z}). Pass the files of the series the mask was "
                "computed from, and the mask on that series' grid."
            )
        if z_index in by_slice:
            logger.info(
                "Source image %s repeats the position of %s, so it was passed over",
                source,
                by_slice[z_index].path,
            )
            continue
        by_slice[z_index] = _SourceSlice(z_index=z_index, path=source, dataset=dataset)

    if passed_over:
        logger.info(
            "Passed over %d source files that are not single-frame images in the orientation of the mask "
            "(localizers?)",
            passed_over,
        )
    if not by_slice:
        raise OutputError(
            f"{path}: none of the {len(headers)} source files has the orientation of the mask. "
            "Pass the files of the series the mask was computed from."
        )
    slices = [by_slice[z] for z in sorted(by_slice)]
    _check_source_series(slices, path)
    return slices


def _has_image_plane(dataset: pydicom.Dataset) -> bool:
    required = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")
    return all(tag in dataset for tag in required) and int(dataset.get("NumberOfFrames") or 1) == 1


def _check_source_matrix(dataset: pydicom.Dataset, source: Path, labels: sitk.Image, path: Path) -> None:
    size_x, size_y, _ = labels.GetSize()
    spacing_x_mm, spacing_y_mm, _ = labels.GetSpacing()
    row_spacing_mm, column_spacing_mm = (float(v) for v in dataset.PixelSpacing)
    same_matrix = (int(dataset.Columns), int(dataset.Rows)) == (size_x, size_y)
    same_spacing = np.allclose([column_spacing_mm, row_spacing_mm], [spacing_x_mm, spacing_y_mm], rtol=1e-3)
    if not (same_matrix and same_spacing):
        raise OutputError(
            f"{path}: source image {source} has {dataset.Columns} x {dataset.Rows} pixels of "
            f"{column_spacing_mm:.4g} x {row_spacing_mm:.4g} mm, but the mask has {size_x} x {size_y} "
            f"voxels of {spacing_x_mm:.4g} x {spacing_y_mm:.4g} mm. Pass the mask on the grid of the "
            "series it was computed from."
        )


def _check_source_series(slices: list[_SourceSlice], path: Path) -> None:
    series_uids = sorted({str(s.dataset.SeriesInstanceUID) for s in slices})
    if len(series_uids) > 1:
        raise OutputError(
            f"{path}: the source files belong to {len(series_uids)} series ({', '.join(series_uids)}), "
            "but a DICOM SEG references one. Pass the files of one series."
        )
    first = slices[0]
    if "FrameOfReferenceUID" not in first.dataset:
        raise OutputError(
            f"{path}: source image {first.path} has no FrameOfReferenceUID, so viewers could not "
            "place a DICOM SEG on it. Write the mask as NIfTI instead."
        )


def _warn_about_slices_without_source(label_array_zyx: np.ndarray, slices: list[_SourceSlice]) -> None:
    matched = np.zeros(label_array_zyx.shape[0], dtype=bool)
    matched[[s.z_index for s in slices]] = True
    if matched.all():
        return
    lost_vox = int(np.count_nonzero(label_array_zyx[~matched]))
    logger.warning(
        "Left %d mask slices out of the DICOM SEG because no source image lies on them "
        "(interpolated slices); they contain %d labelled voxels: slice indices %s",
        int((~matched).sum()),
        lost_vox,
        np.flatnonzero(~matched).tolist(),
    )


def _build_segmentation(
    datasets: list[pydicom.Dataset], segments_zyxc: np.ndarray, *, algorithm_version: str, path: Path
) -> hd.seg.Segmentation:
    """Build the Segmentation from source headers and a (z, y, x, segment) uint8 0/1 array."""
    source_images = [_with_type2_attributes(d) for d in datasets]
    try:
        return hd.seg.Segmentation(
            source_images=source_images,
            pixel_array=segments_zyxc,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_segment_descriptions(algorithm_version),
            series_instance_uid=hd.UID(),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="mhp-edge",
            manufacturer_model_name="mhp-edge",
            software_versions=algorithm_version,
            # The attribute is required, but software has no device serial number.
            device_serial_number="none",
            series_description=SERIES_DESCRIPTION,
            content_description="Automatic liver and liver tumour segmentation, research use only",
            content_label="MHP_EDGE",
            content_qualification=hd.ContentQualificationValues.RESEARCH,
            omit_empty_frames=False,
        )
    except (ValueError, TypeError, AttributeError) as err:
        raise OutputError(
            f"{path}: highdicom could not build the DICOM SEG from the source images ({err}). "
            "Check that the source files are one complete CT series."
        ) from err


def _with_type2_attributes(dataset: pydicom.Dataset) -> pydicom.Dataset:
    missing = [name for name in _TYPE2_SOURCE_ATTRIBUTES if name not in dataset]
    if not missing:
        return dataset
    completed = copy.deepcopy(dataset)
    for name in missing:
        setattr(completed, name, "")
    logger.debug(
        "Source image %s has no %s, so the SEG stores them empty", dataset.get("SOPInstanceUID"), missing
    )
    return completed


def _segment_descriptions(algorithm_version: str) -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name="mhp-edge",
        family=codes.cid7162.ArtificialIntelligence,
        version=algorithm_version,
    )
    liver = hd.seg.SegmentDescription(
        segment_number=LIVER_LABEL,
        segment_label="Liver",
        segmented_property_category=LIVER_CATEGORY_CODE,
        segmented_property_type=LIVER_CODE,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        display_color=hd.color.CIELabColor(65.0, 20.0, 40.0),
    )
    tumour = hd.seg.SegmentDescription(
        segment_number=TUMOUR_LABEL,
        segment_label="Tumour",
        segmented_property_category=TUMOUR_CATEGORY_CODE,
        segmented_property_type=TUMOUR_TYPE_CODE,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[LIVER_CODE],
        display_color=hd.color.CIELabColor(85.0, -10.0, 80.0),
    )
    return [liver, tumour]


def _read_segmentation_dataset(path: Path) -> pydicom.Dataset:
    if not path.is_file():
        raise InputImageError(f"{path}: file not found. Check the path to the DICOM SEG.")
    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, OSError) as err:
        raise InputImageError(f"{path}: cannot be read as a DICOM file ({err}).") from err
    if str(dataset.get("SOPClassUID", "")) != SEGMENTATION_STORAGE_UID:
        raise InputImageError(
            f"{path}: SOP class {dataset.get('SOPClassUID', 'missing')} is not Segmentation Storage "
            f"({SEGMENTATION_STORAGE_UID}). Give a DICOM SEG file."
        )
    segmentation_type = str(dataset.get("SegmentationType", ""))
    if segmentation_type not in ("BINARY", "FRACTIONAL"):
        raise InputImageError(
            f"{path}: SegmentationType {segmentation_type or 'missing'} is not supported. "
            "Give a BINARY or FRACTIONAL Segmentation."
        )
    return dataset


def _labels_by_segment(dataset: pydicom.Dataset, path: Path) -> dict[int, int]:
    """Map segment numbers to labels 1 (liver) and 2 (tumour) by their property codes."""
    labels: dict[int, int] = {}
    for segment in dataset.SegmentSequence:
        number = int(segment.SegmentNumber)
        property_type = _code_of(segment, "SegmentedPropertyTypeCodeSequence")
        category = _code_of(segment, "SegmentedPropertyCategoryCodeSequence")
        if property_type == ("SCT", LIVER_CODE.value):
            labels[number] = LIVER_LABEL
        elif category == ("SCT", TUMOUR_CATEGORY_CODE.value):
            labels[number] = TUMOUR_LABEL
        else:
            logger.warning(
                "%s: passed over segment %d '%s' (type %s, category %s): neither liver nor tumour",
                path,
                number,
                segment.get("SegmentLabel", ""),
                property_type,
                category,
            )
    if not labels:
        raise InputImageError(
            f"{path}: has no liver segment (type SCT {LIVER_CODE.value}) and no tumour segment "
            f"(category SCT {TUMOUR_CATEGORY_CODE.value}), so there is nothing to read."
        )
    return labels


def _code_of(segment: pydicom.Dataset, keyword: str) -> tuple[str, str] | None:
    sequence = segment.get(keyword)
    if not sequence:
        return None
    return (str(sequence[0].CodingSchemeDesignator), str(sequence[0].CodeValue))


def _frame_masks(dataset: pydicom.Dataset, path: Path) -> np.ndarray:
    """Return the frames as a (frame, row, column) bool array."""
    try:
        pixels = dataset.pixel_array
    except Exception as err:  # pydicom raises several types when the pixel data cannot be decoded
        raise InputImageError(f"{path}: the pixel data cannot be decoded ({err}).") from err
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    if dataset.SegmentationType == "FRACTIONAL":
        return pixels >= int(dataset.MaximumFractionalValue) / 2
    return pixels > 0


def _frame_segment_number(dataset: pydicom.Dataset, frame_index: int, path: Path) -> int:
    number = _frame_attribute(
        dataset, frame_index, "SegmentIdentificationSequence", "ReferencedSegmentNumber"
    )
    if number is None:
        raise InputImageError(f"{path}: frame {frame_index + 1} has no referenced segment number.")
    return int(number)


def _frame_attribute(dataset: pydicom.Dataset, frame_index: int, sequence: str, keyword: str):
    """Return an attribute from the per-frame functional groups, else from the shared ones."""
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    shared = dataset.get("SharedFunctionalGroupsSequence") or []
    candidates = [per_frame[frame_index]] if frame_index < len(per_frame) else []
    candidates += list(shared[:1])
    for groups in candidates:
        if sequence in groups and groups[sequence] and keyword in groups[sequence][0]:
            return groups[sequence][0][keyword].value
    return None


def _paste_frame(
    mask_zyx: np.ndarray,
    frame: np.ndarray,
    dataset: pydicom.Dataset,
    frame_index: int,
    reference: sitk.Image,
    path: Path,
) -> None:
    """Set the voxels of ``mask_zyx`` that frame ``frame_index`` marks, placed by its position."""
    position = _frame_attribute(dataset, frame_index, "PlanePositionSequence", "ImagePositionPatient")
    orientation = _frame_attribute(
        dataset, frame_index, "PlaneOrientationSequence", "ImageOrientationPatient"
    )
    spacing = _frame_attribute(dataset, frame_index, "PixelMeasuresSequence", "PixelSpacing")
    frame_number = frame_index + 1
    if position is None or orientation is None or spacing is None:
        raise InputImageError(
            f"{path}: frame {frame_number} has no plane position, orientation or pixel spacing, "
            "so it cannot be placed."
        )

    direction = np.array(reference.GetDirection()).reshape(3, 3)
    reference_spacing_mm = reference.GetSpacing()
    row_spacing_mm, column_spacing_mm = (float(v) for v in spacing)
    same_orientation = np.allclose(
        [float(v) for v in orientation], direction[:, :2].T.ravel(), atol=ORIENTATION_TOLERANCE
    )
    same_spacing = np.allclose([column_spacing_mm, row_spacing_mm], reference_spacing_mm[:2], rtol=1e-3)
    position_mm = tuple(float(v) for v in position)
    index_xyz = np.array(reference.TransformPhysicalPointToContinuousIndex(position_mm))
    start_xyz = np.round(index_xyz).astype(int)
    rows, columns = frame.shape
    size_x, size_y, size_z = reference.GetSize()
    fits = (
        np.all(np.abs(index_xyz - start_xyz) <= GRID_TOLERANCE_VOX)
        and 0 <= start_xyz[2] < size_z
        and 0 <= start_xyz[0]
        and start_xyz[0] + columns <= size_x
        and 0 <= start_xyz[1]
        and start_xyz[1] + rows <= size_y
    )
    if not (same_orientation and same_spacing and fits):
        raise InputImageError(
            f"{path}: frame {frame_number} at {_format_mm(position_mm)} ({columns} x {rows} pixels of "
            f"{column_spacing_mm:.4g} x {row_spacing_mm:.4g} mm) does not lie on the reference grid "
            f"(voxel index {_format_index(index_xyz)}, size {size_x} x {size_y} x {size_z}). Read the "
            "SEG against the series it was made from."
        )
    x0, y0, z = (int(v) for v in start_xyz)
    mask_zyx[z, y0 : y0 + rows, x0 : x0 + columns] |= frame


def _format_mm(position_mm: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in position_mm) + ") mm"


def _format_index(index_xyz: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in index_xyz) + ")"
