"""A PNG preview of a segmentation: axial and coronal slice with outlines, lesion ids and scale.

Both panels go through the centroid of the largest lesion, or through the centre of the liver
when there is no lesion. The scan is first reoriented to LPS so that the axial panel shows the
patient from the feet with anterior up and the patient's right on the left (the radiological
convention), and the coronal panel shows superior up. Each panel is resampled to square pixels
of one common size, so a single scale bar fits both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from mhp_edge import __version__
from mhp_edge.errors import InputImageError, OutputError
from mhp_edge.io import same_grid, write_atomically
from mhp_edge.report import LIVER_LABEL, TUMOUR_LABEL, Lesion

logger = logging.getLogger(__name__)

LIVER_WINDOW_WIDTH_HU = 350.0
LIVER_WINDOW_LEVEL_HU = 50.0
PANEL_MAX_PX = 512
"""Length in pixels of the longest side of the larger panel."""

# Blue and orange stay distinct for the common forms of colour blindness.
LIVER_OUTLINE_RGB = (0, 170, 255)
TUMOUR_OUTLINE_RGB = (255, 150, 0)
TEXT_RGB = (255, 255, 255)
OUTLINE_WIDTH_PX = 2

HEADER_HEIGHT_PX = 24
CAPTION_HEIGHT_PX = 28
GAP_PX = 8
FONT_SIZE_PX = 14
SCALE_BAR_LENGTHS_MM = (200, 100, 50, 20, 10, 5, 2, 1)


@dataclass(frozen=True)
class _LesionBox:
    """A lesion's id and its bounding box in voxel indices of the LPS-oriented scan."""

    lesion_id: int
    low_xyz: np.ndarray
    high_xyz: np.ndarray


@dataclass(frozen=True)
class _SliceView:
    """One 2D panel before drawing: arrays in display order (row 0 at the top)."""

    title: str
    hu: np.ndarray
    labels: np.ndarray
    row_spacing_mm: float
    column_spacing_mm: float
    lesion_regions: list[tuple[int, slice, slice]]
    top_letter: str


def write_preview(
    scan: sitk.Image,
    labels: sitk.Image,
    lesions: Sequence[Lesion],
    path: Path,
    *,
    overwrite: bool = False,
) -> None:
    """Write a PNG with an axial and a coronal slice through the largest lesion.

    The slices are shown in a liver window (width 350 HU, level 50 HU) with the liver outline
    (labels >= 1) in blue, tumour outlines (label 2) in orange, the id of every lesion that the
    slice cuts, a scale bar in mm, and a caption with the mhp-edge version and "research use only".
    Without lesions the slices go through the centroid of the liver, and without liver through
    the centre of the scan.

    Parameters
    ----------
    scan : SimpleITK.Image
        CT in HU, any pixel type and orientation.
    labels : SimpleITK.Image
        uint8 labels 0 background, 1 liver, 2 tumour, on the scan's grid.
    lesions : sequence of Lesion
        Lesions measured on ``scan`` by ``mhp_edge.report.measure_lesions``.
    path : Path
        Destination ``.png`` file.
    overwrite : bool
        Replace an existing file. Without it an existing file is an error.

    Raises
    ------
    InputImageError
        If ``labels`` is not on the grid of ``scan``.
    OutputError
        If ``path`` exists (without ``overwrite``), does not end in ``.png``, or cannot be
        written.
    """
    path = Path(path)
    _check_destination(path, overwrite=overwrite)
    _check_same_grid(scan, labels)

    scan_lps = sitk.DICOMOrient(sitk.Cast(scan, sitk.sitkFloat32), "LPS")
    labels_lps = sitk.DICOMOrient(sitk.Cast(labels, sitk.sitkUInt8), "LPS")
    centre_xyz = _centre_index(scan_lps, labels_lps, lesions)
    boxes = [_lesion_box(lesion, scan, scan_lps) for lesion in lesions]
    views = [
        _axial_view(scan_lps, labels_lps, centre_xyz, boxes),
        _coronal_view(scan_lps, labels_lps, centre_xyz, boxes),
    ]

    mm_per_px = _display_pixel_mm(scan_lps)
    font = ImageFont.load_default(size=FONT_SIZE_PX)
    panels = [_render_panel(view, mm_per_px, font) for view in views]
    canvas = _compose(views, panels, mm_per_px, font)
    write_atomically(path, lambda temporary: canvas.save(temporary, format="PNG"), overwrite=overwrite)
    logger.info("Wrote preview %s (%d x %d pixels, %.2f mm per pixel)", path, *canvas.size, mm_per_px)


def _check_destination(path: Path, *, overwrite: bool) -> None:
    if path.suffix.lower() != ".png":
        raise OutputError(f"{path}: the preview is a PNG image. Give a file name ending in .png.")


def _check_same_grid(scan: sitk.Image, labels: sitk.Image) -> None:
    if not same_grid(scan, labels):
        raise InputImageError(
            f"The label image (size {labels.GetSize()}, spacing {labels.GetSpacing()}) is not on the "
            f"scan's grid (size {scan.GetSize()}, spacing {scan.GetSpacing()}). Pass the mask that was "
            "computed on this scan."
        )


def _centre_index(scan_lps: sitk.Image, labels_lps: sitk.Image, lesions: Sequence[Lesion]) -> np.ndarray:
    """Return the (x, y, z) voxel index the panels go through, in the LPS-oriented scan."""
    if lesions:
        largest = max(lesions, key=lambda lesion: lesion.volume_ml)
        point_mm = largest.centroid_lps_mm
    else:
        liver = sitk.Cast(labels_lps >= LIVER_LABEL, sitk.sitkUInt8)
        statistics = sitk.LabelShapeStatisticsImageFilter()
        statistics.Execute(liver)
        if not statistics.HasLabel(1):
            logger.info("The mask has no liver, so the preview goes through the centre of the scan")
            return np.array(scan_lps.GetSize()) // 2
        point_mm = statistics.GetCentroid(1)

    index_xyz = np.array(scan_lps.TransformPhysicalPointToIndex(tuple(float(v) for v in point_mm)))
    size_xyz = np.array(scan_lps.GetSize())
    if np.any(index_xyz < 0) or np.any(index_xyz >= size_xyz):
        logger.warning(
            "The preview centre %s mm lies outside the scan, so the nearest voxel inside is used", point_mm
        )
    return np.clip(index_xyz, 0, size_xyz - 1)


def _lesion_box(lesion: Lesion, scan: sitk.Image, scan_lps: sitk.Image) -> _LesionBox:
    """Map a lesion's bounding box from voxel indices of ``scan`` to those of ``scan_lps``."""
    x, y, z, size_x, size_y, size_z = lesion.bounding_box_xyz_vox
    corners = [
        (cx, cy, cz) for cx in (x, x + size_x - 1) for cy in (y, y + size_y - 1) for cz in (z, z + size_z - 1)
    ]
    mapped = np.array(
        [scan_lps.TransformPhysicalPointToIndex(scan.TransformIndexToPhysicalPoint(c)) for c in corners]
    )
    mapped = np.clip(mapped, 0, np.array(scan_lps.GetSize()) - 1)
    return _LesionBox(lesion.lesion_id, mapped.min(axis=0), mapped.max(axis=0))


def _axial_view(
    scan_lps: sitk.Image, labels_lps: sitk.Image, centre_xyz: np.ndarray, boxes: list[_LesionBox]
) -> _SliceView:
    # In LPS index order rows run anterior to posterior and columns from the patient's right to
    # left, which is already the radiological display of an axial slice.
    z = int(centre_xyz[2])
    spacing_x_mm, spacing_y_mm, _ = scan_lps.GetSpacing()
    regions = [
        (
            box.lesion_id,
            slice(box.low_xyz[1], box.high_xyz[1] + 1),
            slice(box.low_xyz[0], box.high_xyz[0] + 1),
        )
        for box in boxes
        if box.low_xyz[2] <= z <= box.high_xyz[2]
    ]
    z_mm = scan_lps.TransformIndexToPhysicalPoint((0, 0, z))[2]
    return _SliceView(
        title=f"Axial, z = {z_mm:.1f} mm",
        hu=sitk.GetArrayViewFromImage(scan_lps)[z],
        labels=sitk.GetArrayViewFromImage(labels_lps)[z],
        row_spacing_mm=spacing_y_mm,
        column_spacing_mm=spacing_x_mm,
        lesion_regions=regions,
        top_letter="A",
    )


def _coronal_view(
    scan_lps: sitk.Image, labels_lps: sitk.Image, centre_xyz: np.ndarray, boxes: list[_LesionBox]
) -> _SliceView:
    # Rows are flipped so that superior (high z index in LPS) is at the top.
    y = int(centre_xyz[1])
    size_z = scan_lps.GetSize()[2]
    spacing_x_mm, _, spacing_z_mm = scan_lps.GetSpacing()
    regions = [
        (
            box.lesion_id,
            slice(size_z - 1 - box.high_xyz[2], size_z - box.low_xyz[2]),
            slice(box.low_xyz[0], box.high_xyz[0] + 1),
        )
        for box in boxes
        if box.low_xyz[1] <= y <= box.high_xyz[1]
    ]
    y_mm = scan_lps.TransformIndexToPhysicalPoint((0, y, 0))[1]
    return _SliceView(
        title=f"Coronal, y = {y_mm:.1f} mm",
        hu=sitk.GetArrayViewFromImage(scan_lps)[::-1, y, :],
        labels=sitk.GetArrayViewFromImage(labels_lps)[::-1, y, :],
        row_spacing_mm=spacing_z_mm,
        column_spacing_mm=spacing_x_mm,
        lesion_regions=regions,
        top_letter="S",
    )


def _display_pixel_mm(scan_lps: sitk.Image) -> float:
    """Return the display pixel size that fits the longest extent of the scan in PANEL_MAX_PX."""
    extent_mm = np.array(scan_lps.GetSize()) * np.array(scan_lps.GetSpacing())
    return float(extent_mm.max()) / PANEL_MAX_PX


def _render_panel(view: _SliceView, mm_per_px: float, font: ImageFont.FreeTypeFont) -> Image.Image:
    """Draw one slice in the liver window with outlines and lesion ids, at square pixels."""
    rows, columns = view.hu.shape
    width_px = max(1, round(columns * view.column_spacing_mm / mm_per_px))
    height_px = max(1, round(rows * view.row_spacing_mm / mm_per_px))
    scale_rows = height_px / rows
    scale_columns = width_px / columns

    low_hu = LIVER_WINDOW_LEVEL_HU - LIVER_WINDOW_WIDTH_HU / 2
    grey = np.clip((view.hu - low_hu) / LIVER_WINDOW_WIDTH_HU * 255.0, 0, 255).astype(np.uint8)
    panel = Image.fromarray(grey).resize((width_px, height_px), Image.Resampling.BILINEAR).convert("RGB")

    pixels = np.array(panel)
    for mask, colour in (
        (view.labels >= LIVER_LABEL, LIVER_OUTLINE_RGB),
        (view.labels == TUMOUR_LABEL, TUMOUR_OUTLINE_RGB),
    ):
        pixels[_outline(mask, (width_px, height_px))] = colour
    panel = Image.fromarray(pixels)

    draw = ImageDraw.Draw(panel)
    for lesion_id, row_range, column_range in view.lesion_regions:
        cut_rows, cut_columns = np.nonzero(view.labels[row_range, column_range] == TUMOUR_LABEL)
        if cut_rows.size == 0:
            continue
        # Right of the lesion's cut, level with its top edge.
        x_px = (column_range.start + cut_columns.max() + 1) * scale_columns + 3
        y_px = (row_range.start + cut_rows.min()) * scale_rows - 2
        _draw_text(draw, (x_px, y_px), str(lesion_id), font)
    _draw_text(draw, (width_px / 2 - 4, 2), view.top_letter, font)
    _draw_text(draw, (3, height_px / 2 - FONT_SIZE_PX / 2), "R", font)
    _draw_text(draw, (width_px - 12, height_px / 2 - FONT_SIZE_PX / 2), "L", font)
    return panel


def _outline(mask: np.ndarray, size_px: tuple[int, int]) -> np.ndarray:
    """Return the inner border, OUTLINE_WIDTH_PX wide, of a mask resized to ``size_px`` (w, h)."""
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize(size_px, Image.Resampling.NEAREST)
    eroded = resized.filter(ImageFilter.MinFilter(2 * OUTLINE_WIDTH_PX + 1))
    return (np.array(resized) > 0) & (np.array(eroded) == 0)


def _draw_text(
    draw: ImageDraw.ImageDraw, position: tuple[float, float], text: str, font: ImageFont.FreeTypeFont
) -> None:
    draw.text(position, text, fill=TEXT_RGB, font=font, stroke_width=2, stroke_fill=(0, 0, 0))


def _compose(
    views: list[_SliceView], panels: list[Image.Image], mm_per_px: float, font: ImageFont.FreeTypeFont
) -> Image.Image:
    """Place the panels side by side under their titles, above the scale bar and caption."""
    scale_mm = _scale_bar_mm(panels[0].width * mm_per_px)
    caption_items = _caption_items(scale_mm)
    measure = ImageDraw.Draw(panels[0])
    caption_width_px = round(scale_mm / mm_per_px) + sum(
        int(measure.textlength(text, font=font)) + 2 * GAP_PX for text, _ in caption_items
    )
    panels_width_px = sum(p.width for p in panels) + GAP_PX * (len(panels) + 1)
    width_px = max(panels_width_px, caption_width_px + GAP_PX)
    height_px = HEADER_HEIGHT_PX + max(p.height for p in panels) + CAPTION_HEIGHT_PX

    canvas = Image.new("RGB", (width_px, height_px), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    x_px = GAP_PX
    for view, panel in zip(views, panels, strict=True):
        canvas.paste(panel, (x_px, HEADER_HEIGHT_PX))
        draw.text((x_px, 4), view.title, fill=TEXT_RGB, font=font)
        x_px += panel.width + GAP_PX

    top_px = height_px - CAPTION_HEIGHT_PX + 6
    scale_px = round(scale_mm / mm_per_px)
    draw.rectangle((GAP_PX, top_px + 6, GAP_PX + scale_px - 1, top_px + 9), fill=TEXT_RGB)
    x_px = GAP_PX + scale_px + GAP_PX
    for text, colour in caption_items:
        draw.text((x_px, top_px), text, fill=colour, font=font)
        x_px += int(draw.textlength(text, font=font)) + 2 * GAP_PX
    return canvas


def _caption_items(scale_mm: float) -> list[tuple[str, tuple[int, int, int]]]:
    # NOTE: Pillow's default font has no em dash glyph, so the caption uses a hyphen.
    return [
        (f"{scale_mm:g} mm", TEXT_RGB),
        ("liver", LIVER_OUTLINE_RGB),
        ("tumour", TUMOUR_OUTLINE_RGB),
        (f"W {LIVER_WINDOW_WIDTH_HU:g} / L {LIVER_WINDOW_LEVEL_HU:g} HU", TEXT_RGB),
        (f"mhp-edge {__version__} - research use only", TEXT_RGB),
    ]


def _scale_bar_mm(panel_width_mm: float) -> float:
    """Return the longest round length in mm that takes at most a quarter of the panel width."""
    for length_mm in SCALE_BAR_LENGTHS_MM:
        if length_mm <= panel_width_mm / 4:
            return float(length_mm)
    return float(SCALE_BAR_LENGTHS_MM[-1])
