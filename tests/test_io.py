"""Reading scans in every supported format and writing masks atomically."""

import gzip
import os

import numpy as np
import pytest
import SimpleITK as sitk

from mhp_edge.errors import InputImageError, OutputError
from mhp_edge.io import read_image, write_image_atomic
from phantoms import liver_phantom


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_formats_round_trip(tmp_path, suffix):
    phantom = liver_phantom()
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(phantom, str(path))
    image = read_image(path)
    assert image.GetSize() == phantom.GetSize()
    assert np.allclose(image.GetSpacing(), phantom.GetSpacing())
    assert np.allclose(image.GetOrigin(), phantom.GetOrigin(), atol=1e-4)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(phantom))


def test_dicom_folder_read(tmp_path):
    phantom = liver_phantom(shape_zyx=(6, 20, 24))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1"
    for index in range(phantom.GetDepth()):
        slice_image = phantom[:, :, index]
        origin = phantom.TransformIndexToPhysicalPoint((0, 0, index))
        for tag, value in (
            ("0020|000e", series_uid),
            ("0008|0060", "CT"),
            ("0020|0032", "\\".join(f"{v:.4f}" for v in origin)),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0020|0013", str(index + 1)),
            ("0028|0030", "3\\3"),
            ("0018|0050", "4"),
        ):
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(tmp_path / f"slice{index:03d}.dcm"))
        writer.Execute(slice_image)

    image = read_image(tmp_path)
    assert image.GetSize() == phantom.GetSize()
    assert np.allclose(image.GetSpacing(), phantom.GetSpacing(), atol=1e-3)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(phantom))


def test_missing_file(tmp_path):
    with pytest.raises(InputImageError, match="not found"):
        read_image(tmp_path / "absent.nii.gz")


def test_empty_folder(tmp_path):
    with pytest.raises(InputImageError, match="no DICOM image series"):
        read_image(tmp_path)


def test_unknown_suffix(tmp_path):
    path = tmp_path / "scan.txt"
    path.write_text("not an image")
    with pytest.raises(InputImageError, match="unknown image type"):
        read_image(path)


def test_truncated_gzip(tmp_path):
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(liver_phantom(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputImageError, match="truncated or corrupt"):
        read_image(path)


def test_corrupt_byte_in_gzip(tmp_path):
    # ITK reads this file without an error and returns wrong voxels, so the CRC check must catch it.
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(liver_phantom(), str(path))
    data = bytearray(path.read_bytes())
    data[-12] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(InputImageError, match="truncated or corrupt"):
        read_image(path)


def test_uncompressed_nifti_named_gz(tmp_path):
    plain = tmp_path / "scan.nii"
    sitk.WriteImage(liver_phantom(), str(plain))
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(plain.read_bytes())
    with pytest.raises(InputImageError, match="rename it to .nii"):
        read_image(path)


def test_nifti2_named_in_error(tmp_path):
    # A NIfTI-2 header (540 bytes, magic n+2) for a 4 x 4 x 4 int16 volume, then its voxels.
    header = bytearray(544)
    header[0:4] = (540).to_bytes(4, "little")
    header[4:12] = b"n+2\x00\r\n\x1a\n"
    header[12:14] = (4).to_bytes(2, "little")  # datatype int16
    header[14:16] = (16).to_bytes(2, "little")  # bits per voxel
    for index, value in enumerate((3, 4, 4, 4, 1, 1, 1, 1)):
        header[16 + 8 * index : 24 + 8 * index] = value.to_bytes(8, "little")
    header[168:176] = (544).to_bytes(8, "little")  # voxel offset
    path = tmp_path / "scan.nii"
    path.write_bytes(bytes(header) + bytes(2 * 64))
    with pytest.raises(InputImageError, match="NIfTI-2"):
        read_image(path)


def test_not_gzip_data(tmp_path):
    path = tmp_path / "scan.nii.gz"
    path.write_bytes(gzip.compress(b"garbage" * 100))
    with pytest.raises(InputImageError, match="scan.nii.gz"):
        read_image(path)


def test_2d_image_rejected(tmp_path):
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkInt16), str(path))
    with pytest.raises(InputImageError, match="2D"):
        read_image(path)


def test_vector_image_rejected(tmp_path):
    path = tmp_path / "rgb.nii.gz"
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkVectorFloat32, 3), str(path))
    with pytest.raises(InputImageError, match="components"):
        read_image(path)


def test_write_refuses_existing(tmp_path):
    path = tmp_path / "mask.nii.gz"
    path.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="already exists"):
        write_image_atomic(liver_phantom(), path)
    assert path.read_bytes() == b"keep me"


def test_write_overwrite_replaces(tmp_path):
    path = tmp_path / "mask.nii.gz"
    path.write_bytes(b"old")
    write_image_atomic(liver_phantom(), path, overwrite=True)
    assert read_image(path).GetSize() == liver_phantom().GetSize()
    assert [p.name for p in tmp_path.iterdir()] == ["mask.nii.gz"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_write_unwritable_folder(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    with pytest.raises(OutputError, match="cannot be written"):
        write_image_atomic(liver_phantom(), folder / "mask.nii.gz")


def test_write_into_file_parent_fails(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="cannot be written"):
        write_image_atomic(liver_phantom(), blocker / "mask.nii.gz")


def test_4d_image_rejected(tmp_path):
    path = tmp_path / "series.nii.gz"
    sitk.WriteImage(sitk.Image([8, 8, 8, 2], sitk.sitkInt16), str(path))
    with pytest.raises(InputImageError, match="4D"):
        read_image(path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_non_finite_voxels_kept_as_nan(tmp_path, suffix):
    array = np.full((4, 5, 6), 50.0, dtype=np.float32)
    array[0, 0, 0] = np.nan
    array[1, 2, 3] = np.inf
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    values = sitk.GetArrayFromImage(read_image(path))
    assert np.isnan(values[0, 0, 0])
    assert np.isnan(values[1, 2, 3])
    assert np.isfinite(values).sum() == array.size - 2


def test_truncated_uncompressed_nifti(tmp_path):
    path = tmp_path / "scan.nii"
    sitk.WriteImage(liver_phantom(), str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputImageError, match="the file is truncated"):
        read_image(path)
