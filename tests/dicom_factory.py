"""Write synthetic CT series with pydicom, with the faults real folders have."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_slice(
    path: Path,
    stored: np.ndarray,
    *,
    series_uid: str,
    position_mm,
    orientation=(1, 0, 0, 0, 1, 0),
    pixel_spacing_mm=(0.8, 0.8),
    intercept=-1024.0,
    series_number=1,
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    padding_value=None,
    instance=1,
) -> None:
    """Write one CT slice; ``stored`` is int16 or uint16 and sets PixelRepresentation."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    dataset.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    dataset.SeriesInstanceUID = series_uid
    dataset.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
    dataset.SeriesNumber = series_number
    dataset.InstanceNumber = instance
    dataset.SeriesDescription = f"synthetic {series_number}"
    dataset.ImageType = list(image_type)
    dataset.ImagePositionPatient = [float(v) for v in position_mm]
    dataset.ImageOrientationPatient = [float(v) for v in orientation]
    dataset.PixelSpacing = [float(v) for v in pixel_spacing_mm]
    dataset.SliceThickness = 1.0
    dataset.Rows, dataset.Columns = stored.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.BitsAllocated = 16
    dataset.BitsStored = 12 if stored.dtype == np.uint16 else 16
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 0 if stored.dtype == np.uint16 else 1
    dataset.RescaleSlope = 1.0
    dataset.RescaleIntercept = intercept
    if padding_value is not None:
        dataset.PixelPaddingValue = padding_value
    dataset.PixelData = np.ascontiguousarray(stored).tobytes()
    dataset.save_as(path, enforce_file_format=True)


def write_series(
    folder: Path,
    hu: np.ndarray,
    *,
    step_mm=1.25,
    series_number=1,
    unsigned=False,
    drop=(),
    duplicate=(),
    jitter_mm=0.0,
    padding_value=None,
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
) -> str:
    """Write a (z, y, x) HU volume as axial slices; return the series UID.

    ``drop`` removes slice indices, ``duplicate`` writes those slices twice, ``jitter_mm`` adds
    alternating position noise, ``unsigned`` stores uint16 with intercept -1024.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    rng = np.random.default_rng(0)
    for index in range(hu.shape[0]):
        if index in drop:
            continue
        z_mm = -100.0 + index * step_mm + (rng.uniform(-jitter_mm, jitter_mm) if jitter_mm else 0)
        stored = (hu[index] + 1024).astype(np.uint16) if unsigned else hu[index].astype(np.int16)
        intercept = -1024.0 if unsigned else 0.0
        copies = 2 if index in duplicate else 1
        for copy in range(copies):
            write_slice(
                folder / f"s{series_number}_{index:03d}_{copy}.dcm",
                stored,
                series_uid=series_uid,
                position_mm=(-50.0, -40.0, z_mm),
                intercept=intercept,
                series_number=series_number,
                image_type=image_type,
                padding_value=padding_value,
                instance=index + 1,
            )
    return series_uid
