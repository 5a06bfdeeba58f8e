"""PNG preview: size, outline colours, orientation, anisotropic voxels and output checks."""

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from mhp_edge.errors import InputImageError, OutputError
from mhp_edge.preview import (
    CAPTION_HEIGHT_PX,
    GAP_PX,
    HEADER_HEIGHT_PX,
    LIVER_OUTLINE_RGB,
    PANEL_MAX_PX,
    TUMOUR_OUTLINE_RGB,
    write_preview,
)
from mhp_edge.report import measure_lesions

# (z, y, x) voxels of 1 mm: extents 40, 48 and 64 mm, so 0.125 mm per display pixel.
SHAPE = (40, 48, 64)
MARKER_HU = 1000.0


def phantom(shape=SHAPE, spacing_xyz_mm=(1.0, 1.0, 1.0), tumour_radius_mm=6.0):
    """Return (scan, labels): a liver block with one spherical tumour and two bright markers.

    One marker runs along z at the patient's anterior right (low x and y indices in LPS), the
    other fills the top slices (superior), so the panels show which way is up and left.
    """
    z, y, x = np.indices(shape)
    centre_zyx = np.array(shape) // 2
    spacing_zyx_mm = np.array(spacing_xyz_mm[::-1])
    distance_mm = np.sqrt(
        sum(((axis - c) * s) ** 2 for axis, c, s in zip((z, y, x), centre_zyx, spacing_zyx_mm, strict=True))
    )

    hu = np.full(shape, 40.0, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    liver = (np.abs(x - centre_zyx[2]) < shape[2] // 3) & (np.abs(y - centre_zyx[1]) < shape[1] // 3)
    liver &= np.abs(z - centre_zyx[0]) < shape[0] // 3
    labels[liver] = 1
    hu[liver] = 100.0
    tumour = distance_mm <= tumour_radius_mm
    labels[tumour] = 2
    hu[tumour] = 20.0
    hu[:, : shape[1] // 8, : shape[2] // 8] = MARKER_HU
    hu[-2:] = MARKER_HU

    scan = sitk.GetImageFromArray(hu)
    scan.SetSpacing(spacing_xyz_mm)
    scan.SetOrigin((-30.0, -20.0, -100.0))
    mask = sitk.GetImageFromArray(labels)
    mask.CopyInformation(scan)
    return scan, mask


def flip_x_and_y(image):
    """Return the same voxels at the same physical points, stored with x and y reversed."""
    flipped = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[:, ::-1, ::-1].copy())
    flipped.SetSpacing(image.GetSpacing())
    size_x, size_y, _ = image.GetSize()
    flipped.SetOrigin(image.TransformIndexToPhysicalPoint((size_x - 1, size_y - 1, 0)))
    flipped.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    return flipped


def panel_pixels(png):
    """Return the RGB pixels between the title header and the caption row."""
    pixels = np.array(Image.open(png).convert("RGB"))
    return pixels[HEADER_HEIGHT_PX : pixels.shape[0] - CAPTION_HEIGHT_PX]


def has_colour(pixels, rgb):
    return bool(np.all(pixels == rgb, axis=-1).any())


def test_preview_size_and_colours(tmp_path):
    scan, labels = phantom()
    png = tmp_path / "preview.png"

    write_preview(scan, labels, measure_lesions(labels, scan), png)
    image = Image.open(png)
    panels = panel_pixels(png)

    assert image.format == "PNG"
    # Axial panel 512 x 384 and coronal 512 x 320 pixels at 0.125 mm per pixel.
    assert image.size == (2 * PANEL_MAX_PX + 3 * GAP_PX, HEADER_HEIGHT_PX + 384 + CAPTION_HEIGHT_PX)
    assert has_colour(panels, LIVER_OUTLINE_RGB)
    assert has_colour(panels, TUMOUR_OUTLINE_RGB)


def test_preview_without_lesions(tmp_path):
    scan, labels = phantom()
    liver_only = sitk.Cast(labels >= 1, sitk.sitkUInt8)
    png = tmp_path / "preview.png"

    write_preview(scan, liver_only, [], png)
    panels = panel_pixels(png)

    assert has_colour(panels, LIVER_OUTLINE_RGB)
    assert not has_colour(panels, TUMOUR_OUTLINE_RGB)


def test_preview_of_empty_mask(tmp_path):
    scan, labels = phantom()
    empty = sitk.Image(labels.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(labels)
    png = tmp_path / "preview.png"

    write_preview(scan, empty, [], png)
    panels = panel_pixels(png)

    assert not has_colour(panels, LIVER_OUTLINE_RGB)
    assert not has_colour(panels, TUMOUR_OUTLINE_RGB)


def test_anisotropic_slices_shown_square(tmp_path):
    # 0.8 mm pixels and 5 mm slices: 102.4 x 102.4 x 150 mm, so 150/512 mm per display pixel.
    scan, labels = phantom(shape=(30, 128, 128), spacing_xyz_mm=(0.8, 0.8, 5.0), tumour_radius_mm=20.0)
    png = tmp_path / "preview.png"

    write_preview(scan, labels, measure_lesions(labels, scan), png)
    image = Image.open(png)
    panels = panel_pixels(png)
    coronal = panels[:, 350 + 2 * GAP_PX :]
    rows, columns = np.nonzero(np.all(coronal == TUMOUR_OUTLINE_RGB, axis=-1))
    height_px = rows.max() - rows.min() + 1
    width_px = columns.max() - columns.min() + 1

    assert image.size == (2 * 350 + 3 * GAP_PX, HEADER_HEIGHT_PX + PANEL_MAX_PX + CAPTION_HEIGHT_PX)
    # A 40 mm sphere cut through its centre: the 5 mm slices allow one slice of error.
    assert height_px == pytest.approx(width_px, rel=0.15)


def test_axial_anterior_right_at_top_left(tmp_path):
    scan, labels = phantom()
    png = tmp_path / "preview.png"

    write_preview(scan, labels, measure_lesions(labels, scan), png)
    axial = panel_pixels(png)[:384, GAP_PX : GAP_PX + PANEL_MAX_PX].mean(axis=-1)

    assert axial[:40, :40].mean() > 250
    assert axial[-40:, -40:].mean() < 200
    assert axial[:40, -40:].mean() < 200


def test_coronal_superior_at_top(tmp_path):
    scan, labels = phantom()
    png = tmp_path / "preview.png"

    write_preview(scan, labels, measure_lesions(labels, scan), png)
    coronal = panel_pixels(png)[:320, 2 * GAP_PX + PANEL_MAX_PX :].mean(axis=-1)

    assert coronal[:8, 100:400].mean() > 250
    assert coronal[-8:, 100:400].mean() < 200


def test_any_orientation_gives_same_preview(tmp_path):
    scan, labels = phantom()
    lesions = measure_lesions(labels, scan)
    write_preview(scan, labels, lesions, tmp_path / "lps.png")

    # The same voxels stored with x and y flipped (RAS-like index order) describe the same
    # patient, so the preview must not change.
    flipped_scan = flip_x_and_y(scan)
    flipped_labels = flip_x_and_y(labels)
    write_preview(
        flipped_scan, flipped_labels, measure_lesions(flipped_labels, flipped_scan), tmp_path / "ras.png"
    )

    assert flipped_scan.GetDirection() != scan.GetDirection()
    assert np.array_equal(panel_pixels(tmp_path / "lps.png"), panel_pixels(tmp_path / "ras.png"))


def test_lesion_id_drawn_beside_lesion(tmp_path):
    scan, labels = phantom()
    write_preview(scan, labels, measure_lesions(labels, scan), tmp_path / "with_ids.png")
    # Without lesions the panels go through the liver centre, which is the tumour centre here,
    # so the two previews differ only by the ids.
    write_preview(scan, labels, [], tmp_path / "without_ids.png")

    with_ids = panel_pixels(tmp_path / "with_ids.png")[:384, GAP_PX : GAP_PX + PANEL_MAX_PX]
    without_ids = panel_pixels(tmp_path / "without_ids.png")[:384, GAP_PX : GAP_PX + PANEL_MAX_PX]
    rows, columns = np.nonzero(np.any(with_ids != without_ids, axis=-1))

    assert rows.size > 0
    # The tumour is 6 mm = 48 display pixels in radius around column 256, row 192.
    assert columns.min() > 256 + 40
    assert abs(int(np.median(rows)) - 192) < 64


def test_existing_preview_rejected(tmp_path):
    scan, labels = phantom()
    png = tmp_path / "preview.png"
    png.write_bytes(b"keep")

    with pytest.raises(OutputError, match="already exists"):
        write_preview(scan, labels, [], png)
    assert png.read_bytes() == b"keep"

    write_preview(scan, labels, [], png, overwrite=True)
    assert Image.open(png).format == "PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["preview.png"]


def test_non_png_name_rejected(tmp_path):
    scan, labels = phantom()

    with pytest.raises(OutputError, match="ending in .png"):
        write_preview(scan, labels, [], tmp_path / "preview.jpg")


def test_labels_on_other_grid_rejected(tmp_path):
    scan, labels = phantom()
    labels.SetSpacing((2.0, 2.0, 2.0))

    with pytest.raises(InputImageError, match="not on the scan's grid"):
        write_preview(scan, labels, [], tmp_path / "preview.png")
