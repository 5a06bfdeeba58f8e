"""Time the Hessian stage against scikit-image and SimpleITK side by side, and count its floor.

Run from the repository root:

    python -m benchmarks.hessian_compare [--repeat 3] [--threads 2] [--case ircadb_01]
        [--skip-synthetic]

Volumes: the liver region of a labelled case (the reference liver's bounding box plus the tumour
model's margin, resampled to the model's spacing, as the pipeline crops it) and a synthetic
256 x 256 x 128 volume at 1 mm. Scales: the tumour model's Hessian scales in mm, read from
``models/mhp_net.onnx``, and sigma = 2, 4, 8 voxels with every voxel taken as 1 x 1 x 1.

Every method computes the same thing: sigma**2-normalised second derivatives per scale, the
eigenvalues, Li's signed blob measure and its maximum over scales. SimpleITK's objectness
measure is the exception, a different blob measure timed for comparison. Methods run interleaved
in one process, in a rotating order, and the table gives medians with ratios to the product.
``mhp-edge`` (the stage as the pipeline calls it) and scikit-image run on one thread, while
SimpleITK and the ``mhp-edge, N threads`` row use ``--threads``.

The second part checks the product's float32 response against a float64 reference (float64
Gaussian derivative passes at full resolution, eigenvalues from ``numpy.linalg.eigvalsh``). The
third part counts the FLOPs and bytes of the product's algorithm on the liver region and turns
them into a floor time at this machine's measured single-thread FLOP/s and copy bandwidth.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import inspect
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from export.contract import TUMOUR_HESSIAN_HU_CLIP, TUMOUR_HESSIAN_SCALES_MM
from mhp_edge.hessian import (
    blob_response,
    gaussian_derivative_kernel,
    multiscale_blob_response,
    pyramid_factors,
    symmetric_eigenvalues,
)
from mhp_edge.metadata import HessianSpec, ModelMetadata
from mhp_edge.model import load_model
from mhp_edge.preprocess import (
    TumourGrid,
    bounding_box_with_margin,
    clean_scan,
    hessian_input,
    image_spacing_zyx_mm,
    resample_box,
    resample_like,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MHP_EDGE_DATA", REPO_ROOT.parent / "shared" / "data"))
VOXEL_SCALES = (2.0, 4.0, 8.0)
SYNTHETIC_SHAPE_ZYX = (128, 256, 256)

# The order of the six Hessian entries in every method: Hzz, Hyy, Hxx, Hzy, Hzx, Hyx.
HESSIAN_ORDERS_ZYX = ((2, 0, 0), (0, 2, 0), (0, 0, 2), (1, 1, 0), (1, 0, 1), (0, 1, 1))

Method = Callable[[np.ndarray, tuple[float, float, float], Sequence[float]], np.ndarray]


# --- volumes ---------------------------------------------------------------------------------


def tumour_metadata() -> ModelMetadata:
    """Return the metadata of the shipped tumour model (checked against its card)."""
    return load_model(REPO_ROOT / "models" / "mhp_net.onnx", threads=1).metadata


def liver_grid(case: str, metadata: ModelMetadata) -> tuple[TumourGrid, np.ndarray]:
    """Return ``resample_box`` of a case's reference liver box, and that liver on the box's grid, bool."""
    scan = clean_scan(sitk.ReadImage(str(DATA / "cases" / f"{case}_ct.nii.gz"))).image
    labels = sitk.DICOMOrient(sitk.ReadImage(str(DATA / "cases" / f"{case}_label.nii.gz")), "LPS")
    liver = sitk.Cast(labels >= 1, sitk.sitkUInt8)
    liver.CopyInformation(scan)

    box = bounding_box_with_margin(
        sitk.GetArrayViewFromImage(liver), image_spacing_zyx_mm(scan), metadata.roi_margin_mm
    )
    z, y, x = box
    grid = resample_box(scan, box, metadata)
    liver_crop = liver[x.start : x.stop, y.start : y.stop, z.start : z.stop]
    work_liver = resample_like(liver_crop, grid.image, interpolator=sitk.sitkNearestNeighbor)
    return grid, sitk.GetArrayFromImage(work_liver) > 0


def synthetic_hu(shape_zyx: Sequence[int], seed: int = 0) -> np.ndarray:
    """Return smoothed noise around 100 HU with 40 dark and bright Gaussian blobs, float32 (z, y, x)."""
    rng = np.random.default_rng(seed)
    volume = ndimage.gaussian_filter(rng.normal(0, 150, size=shape_zyx).astype(np.float32), 1.5) + 100
    grids = np.ogrid[tuple(slice(0, n) for n in shape_zyx)]
    for _ in range(40):
        centre = rng.uniform(0, 1, 3) * np.array(shape_zyx)
        radius_vox = rng.uniform(2, 12)
        distance2 = sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True))
        volume += rng.choice([-60.0, 60.0]) * np.exp(-distance2 / (2 * radius_vox**2)).astype(np.float32)
    return volume


# --- the compared methods --------------------------------------------------------------------


def product_response(
    hu: np.ndarray, spacing_zyx_mm, scales_mm, spec: HessianSpec, core: tuple[slice, ...] | None = None
) -> np.ndarray:
    """Run the product's Hessian stage as the pipeline calls it, with response scale 1."""
    stage_spec = dataclasses.replace(spec, scales_mm=tuple(scales_mm), response_scale=1.0)
    return hessian_input(hu, spacing_zyx_mm, stage_spec, core=core)


def skimage_response(clipped: np.ndarray, spacing_zyx_mm, scales_mm) -> np.ndarray:
    """Blob response from ``skimage.feature.hessian_matrix`` and ``hessian_matrix_eigvals``.

    ``use_gaussian_derivatives=False`` (a Gaussian blur, then ``numpy.gradient`` twice) is
    scikit-image's default and its faster path. Sigma is given per axis in voxels and the
    derivatives are converted to per mm squared.
    """
    from skimage.feature import hessian_matrix, hessian_matrix_eigvals

    spacing = np.asarray(spacing_zyx_mm)
    dark = np.zeros(clipped.shape, np.float32)
    bright = np.zeros(clipped.shape, np.float32)
    for sigma_mm in scales_mm:
        entries = hessian_matrix(
            clipped,
            sigma=tuple(sigma_mm / spacing),
            mode="nearest",
            order="rc",
            use_gaussian_derivatives=False,
        )
        # skimage returns the upper triangle row by row: Hzz, Hzy, Hzx, Hyy, Hyx, Hxx.
        axes = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
        for entry, (a, b) in zip(entries, axes, strict=True):
            entry *= np.float32(sigma_mm**2 / (spacing[a] * spacing[b]))
        largest, middle, smallest = hessian_matrix_eigvals(entries)
        response = blob_response(largest, smallest, middle)
        np.maximum(dark, response, out=dark)
        np.maximum(bright, -response, out=bright)
    return dark - bright


def sitk_image(volume: np.ndarray, spacing_zyx_mm) -> sitk.Image:
    """Wrap a (z, y, x) array as a SimpleITK image with the spacing in (x, y, z) order."""
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx_mm)))
    return image


def sitk_recursive_response(clipped: np.ndarray, spacing_zyx_mm, scales_mm) -> np.ndarray:
    """Blob response from SimpleITK recursive (Deriche IIR) Gaussian derivatives.

    SimpleITK 2.5 wraps no HessianRecursiveGaussianImageFilter, so each entry is built the way
    ITK's filter builds it. That is three ``RecursiveGaussian`` passes per entry (18 per scale):
    derivatives along the derivative axes, smoothing along the rest, each pass normalised across
    scale (sigma**order). The result is converted to per mm squared. SimpleITK wraps no
    eigen-analysis filter either, so the eigenvalues and the blob measure are the product's
    numpy functions.
    """
    image = sitk_image(clipped, spacing_zyx_mm)
    dark = np.zeros(clipped.shape, np.float32)
    bright = np.zeros(clipped.shape, np.float32)
    for sigma_mm in scales_mm:
        # The images stay referenced while their array views are in use.
        entry_images = []
        for orders_zyx in HESSIAN_ORDERS_ZYX:
            entry = image
            for axis_zyx, order in enumerate(orders_zyx):
                entry = sitk.RecursiveGaussian(
                    entry, sigma=sigma_mm, normalizeAcrossScale=True, order=order, direction=2 - axis_zyx
                )
            entry_images.append(entry)
        # With normalizeAcrossScale ITK returns sigma**2 times the derivative per voxel step
        # times the spacing; dividing by spacing**order per axis gives sigma**2 per mm squared.
        spacing = np.asarray(spacing_zyx_mm)
        entries = [
            sitk.GetArrayViewFromImage(entry) * np.float32(1 / np.prod(spacing ** np.array(orders_zyx)))
            for entry, orders_zyx in zip(entry_images, HESSIAN_ORDERS_ZYX, strict=True)
        ]
        largest, middle, smallest = symmetric_eigenvalues(*entries)
        del entries, entry_images
        response = blob_response(largest, smallest, middle)
        np.maximum(dark, response, out=dark)
        np.maximum(bright, -response, out=bright)
    return dark - bright


def sitk_objectness_response(clipped: np.ndarray, spacing_zyx_mm, scales_mm) -> np.ndarray:
    """SimpleITK's own blob pipeline: ``SmoothingRecursiveGaussian`` then ``ObjectnessMeasure``.

    ``ObjectnessMeasure`` with object dimension 0 is Frangi's measure generalised to blobs, on a
    central-difference Hessian. It is run for dark and for bright blobs at every scale. It is a
    different measure from the product's, so only its time compares.
    """
    image = sitk_image(clipped, spacing_zyx_mm)
    dark = np.zeros(clipped.shape, np.float32)
    bright = np.zeros(clipped.shape, np.float32)
    for sigma_mm in scales_mm:
        smooth = sitk.SmoothingRecursiveGaussian(image, sigma_mm)
        for bright_object, best in ((False, dark), (True, bright)):
            measure = sitk.ObjectnessMeasure(smooth, objectDimension=0, brightObject=bright_object)
            np.maximum(best, sitk.GetArrayViewFromImage(measure), out=best)
    return dark - bright


def load_baseline(path: Path) -> ModuleType:
    """Import an earlier version of ``mhp_edge/hessian.py`` from a file, to time against the current one."""
    spec = importlib.util.spec_from_file_location("hessian_baseline", path)
    module = importlib.util.module_from_spec(spec)
    # Dataclasses look their module up in sys.modules while the module runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def methods_for(
    spec: HessianSpec, baseline: ModuleType | None, threads: int, core: tuple[slice, ...] | None = None
) -> dict[str, Callable]:
    """Return the compared methods by name; each maps (hu, spacing, scales) to a response.

    ``mhp-edge`` is the stage as the pipeline calls it. When ``multiscale_blob_response`` takes a
    ``threads`` argument, ``mhp-edge, N threads`` runs it with ``threads`` threads as well.
    With a ``core``, every method returns the response of the core only. The product's stage reads
    only the context its kernels need, while the other methods filter all of ``hu`` and cut out
    the core. Without the pyramid that is the same result; with it the values differ slightly,
    because the subsampled grids start at different voxels.
    """
    low, high = spec.hu_clip
    whole = tuple(slice(None) for _ in range(3)) if core is None else core

    def clipped_call(function):
        return lambda hu, spacing, scales: function(np.clip(hu, low, high), spacing, scales)[whole]

    methods = {"mhp-edge": lambda hu, spacing, scales: product_response(hu, spacing, scales, spec, core)}
    if threads > 1 and "threads" in inspect.signature(multiscale_blob_response).parameters:
        threaded = functools.partial(
            multiscale_blob_response,
            threads=threads,
            core=core,
            pyramid_min_sigma_vox=spec.pyramid_min_sigma_vox,
        )
        methods[f"mhp-edge, {threads} threads"] = lambda hu, spacing, scales: threaded(
            np.clip(hu, low, high), spacing, scales
        )
    if baseline is not None:
        # The baseline runs with the shipped settings and core when its version takes them.
        accepted = inspect.signature(baseline.multiscale_blob_response).parameters
        settings = {"core": core, "pyramid_min_sigma_vox": spec.pyramid_min_sigma_vox}
        baseline_response = functools.partial(
            baseline.multiscale_blob_response, **{k: v for k, v in settings.items() if k in accepted}
        )

        def baseline_call(hu, spacing, scales):
            return baseline_response(np.clip(hu, low, high), spacing, scales)

        methods["mhp-edge baseline"] = (
            baseline_call if "core" in accepted else clipped_call(baseline_response)
        )
    methods["scikit-image"] = clipped_call(skimage_response)
    methods["SimpleITK recursive"] = clipped_call(sitk_recursive_response)
    methods["SimpleITK objectness"] = clipped_call(sitk_objectness_response)
    return methods


def peak_traced_memory(method: Callable, hu: np.ndarray, spacing_zyx_mm, scales) -> float:
    """Return the peak memory that numpy allocates during one call, in bytes (``tracemalloc``)."""
    tracemalloc.start()
    try:
        method(hu, spacing_zyx_mm, scales)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- side-by-side timing ---------------------------------------------------------------------


def time_interleaved(
    methods: dict[str, Callable], hu: np.ndarray, spacing_zyx_mm, scales, repeat: int
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Time each method ``repeat`` times, rotating their order each round.

    Returns
    -------
    medians_s : dict
        Median wall time per method, seconds.
    outputs : dict
        The last response of each method, float32 (Z, Y, X).
    """
    names = list(methods)
    times = {name: [] for name in names}
    outputs = {}
    for round_index in range(repeat):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            outputs[name] = methods[name](hu, spacing_zyx_mm, scales)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}, outputs


def comparison_rows(label: str, medians_s: dict[str, float], outputs: dict[str, np.ndarray]) -> list[str]:
    """Format one volume's timings as table rows; ratio = method time / product time."""
    product_s = medians_s["mhp-edge"]
    reference = outputs["mhp-edge"].ravel()
    rows = []
    for name, seconds in medians_s.items():
        correlation = np.corrcoef(outputs[name].ravel(), reference)[0, 1]
        rows.append(f"| {label} | {name} | {seconds:.3f} | {seconds / product_s:.1f} | {correlation:.3f} |")
    return rows


# --- accuracy --------------------------------------------------------------------------------


def float64_reference(clipped: np.ndarray, spacing_zyx_mm, scales_mm) -> np.ndarray:
    """Blob response in float64 at full resolution, eigenvalues from ``numpy.linalg.eigvalsh``.

    The passes use the product's kernels (``gaussian_derivative_kernel``) and border mode, so
    the difference to the product measures float32 rounding, the closed-form eigenvalues and
    the pyramid, not a different definition of the derivative.
    """
    volume = clipped.astype(np.float64)
    spacing = np.asarray(spacing_zyx_mm, dtype=np.float64)
    dark = np.zeros(volume.shape)
    bright = np.zeros(volume.shape)
    for sigma_mm in scales_mm:
        entries = []
        for orders_zyx in HESSIAN_ORDERS_ZYX:
            entry = volume
            for axis, order in enumerate(orders_zyx):
                kernel = gaussian_derivative_kernel(sigma_mm / spacing[axis], order)
                entry = ndimage.correlate1d(entry, kernel, axis=axis, mode="nearest", output=np.float64)
            entries.append(entry * sigma_mm**2 / np.prod(spacing ** np.array(orders_zyx)))
        hzz, hyy, hxx, hzy, hzx, hyx = entries
        matrices = np.stack([hzz, hzy, hzx, hzy, hyy, hyx, hzx, hyx, hxx], axis=-1)
        eigenvalues = np.linalg.eigvalsh(matrices.reshape(*volume.shape, 3, 3))
        smallest, middle, largest = (eigenvalues[..., i] for i in range(3))
        del matrices, eigenvalues
        response = _blob_response64(largest, smallest, middle)
        np.maximum(dark, response, out=dark)
        np.maximum(bright, -response, out=bright)
    return dark - bright


def _blob_response64(largest, smallest, middle):
    dark = (smallest > 0) & (middle > 0)
    bright = (largest < 0) & (middle < 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        dark_value = smallest**2 / largest
        bright_value = -(largest**2) / -smallest
    return np.where(dark, dark_value, np.where(bright, bright_value, 0.0))


def deviation_row(label: str, candidate: np.ndarray, reference: np.ndarray) -> str:
    """Format the deviation of a float32 response from the float64 reference as a table row.

    The relative numbers divide by the 99th percentile of ``|reference|``, the same yardstick as
    the pyramid tolerance in ``tests/test_hessian.py``.
    """
    difference = np.abs(candidate.astype(np.float64) - reference)
    yardstick = np.percentile(np.abs(reference), 99)
    correlation = np.corrcoef(candidate.ravel(), reference.ravel())[0, 1]
    return (
        f"| {label} | {yardstick:.3g} | {np.percentile(difference, 99) / yardstick:.2e} | "
        f"{difference.max() / yardstick:.2e} | {correlation:.6f} |"
    )


# --- floor -----------------------------------------------------------------------------------


@dataclasses.dataclass
class WorkCount:
    """FLOPs and memory traffic of one stage of the algorithm."""

    stage: str
    flops: float
    bytes_moved: float


def pass_flops_per_output(kernel_length: int) -> int:
    """Return FLOPs per output sample of a 1D correlation whose kernel is symmetric or antisymmetric.

    Folding the kernel (w_k * (a_k + a_-k)) leaves r + 1 multiplies and 2r additions for a kernel
    of length 2r + 1.
    """
    radius = kernel_length // 2
    return 3 * radius + 1


def kernel_length_for(sigma_vox: float, order: int) -> int:
    """Return the length of the product's kernel: a sampled Gaussian derivative or a 3-tap difference."""
    if sigma_vox < 0.3:
        return 3
    return gaussian_derivative_kernel(sigma_vox, order).size


def count_hessian_work(
    shape_zyx: Sequence[int], spacing_zyx_mm, scales_mm, pyramid_min_sigma_vox: float
) -> list[WorkCount]:
    """Count the arithmetic and memory traffic of ``multiscale_blob_response``, stage by stage.

    Counted per scale are four steps. The pyramid's blur-and-subsample passes count only the
    kept samples. The 15 shared separable derivative passes run on the coarse grid (3 along z,
    6 along y, 6 along x). Then come the linear upsampling of the 6 entries and the fused
    eigenvalue, blob and maximum step.
    Every pass is counted as streaming its input and output once through memory (float32).
    The eigenvalue step is an estimate: 60 arithmetic operations plus a square root, an arccos
    and two cosines at 20 FLOPs each, then 12 for the blob measure and the maxima.
    """
    spacing = np.asarray(spacing_zyx_mm, dtype=np.float64)
    full = np.array(shape_zyx)
    voxels = float(np.prod(full))
    work = []
    for sigma_mm in scales_mm:
        factors = np.array(pyramid_factors(spacing, sigma_mm, pyramid_min_sigma_vox))
        shape = full.copy()
        flops = bytes_moved = 0.0
        for axis in range(3):
            if factors[axis] == 1:
                continue
            before = float(np.prod(shape))
            shape[axis] = -(-shape[axis] // factors[axis])
            flops += np.prod(shape) * pass_flops_per_output(kernel_length_for(float(factors[axis]), 0))
            bytes_moved += 4 * (before + np.prod(shape))
        work.append(WorkCount(f"{sigma_mm:g} mm: pyramid blur", flops, bytes_moved))

        blur_mm = np.where(factors > 1, factors * spacing, 0.0)
        sigma_vox = np.sqrt(np.maximum(sigma_mm**2 - blur_mm**2, 0.0)) / (spacing * factors)
        coarse = float(np.prod(shape))
        # Passes are shared: one z pass per z order, one y pass per distinct (z, y) order pair.
        passes = {
            0: sorted({orders[0] for orders in HESSIAN_ORDERS_ZYX}),
            1: [y for _, y in sorted({orders[:2] for orders in HESSIAN_ORDERS_ZYX})],
            2: [orders[2] for orders in HESSIAN_ORDERS_ZYX],
        }
        flops = sum(
            coarse * pass_flops_per_output(kernel_length_for(sigma_vox[axis], order))
            for axis, orders in passes.items()
            for order in orders
        )
        work.append(WorkCount(f"{sigma_mm:g} mm: 15 derivative passes", flops, 15 * 8 * coarse))

        upsampled_axes = int(np.sum(factors > 1))
        work.append(
            WorkCount(
                f"{sigma_mm:g} mm: upsample 6 entries",
                6 * 3 * voxels * upsampled_axes,
                6 * 8 * voxels * upsampled_axes,
            )
        )
        work.append(
            WorkCount(f"{sigma_mm:g} mm: eigenvalues, blob, max", voxels * (60 + 80 + 12), voxels * 40)
        )
    return work


def measure_copy_bandwidth(megabytes: int = 512) -> float:
    """Return single-thread copy bandwidth in bytes per second, counting the read and the write."""
    source = np.ones(megabytes * 2**20 // 4, dtype=np.float32)
    target = np.empty_like(source)
    np.copyto(target, source)
    best = np.inf
    for _ in range(5):
        started = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return 2 * source.nbytes / best


_MATMUL_CHILD = r"""
import time, numpy as np
a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
b = a.T.copy()
a @ b
best = min(
    (lambda t0: (a @ b, time.perf_counter() - t0)[1])(time.perf_counter()) for _ in range(7)
)
print(2 * 2048**3 / best)
"""


def measure_matmul_flops(threads: int) -> float:
    """Return float32 matrix-multiply FLOP/s with ``threads`` BLAS threads, measured in a child process.

    A child process is used because the BLAS thread count is fixed when numpy loads.
    """
    environment = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    output = subprocess.run(
        [sys.executable, "-c", _MATMUL_CHILD], env=environment, check=True, capture_output=True, text=True
    ).stdout
    return float(output.strip().splitlines()[-1])


def floor_rows(work: list[WorkCount], flops_per_s: float, bytes_per_s: float) -> tuple[list[str], float]:
    """Format the work counts as rows and return them with the floor time in seconds.

    Each stage's floor is the larger of its arithmetic time and its memory time (a roofline).
    """
    rows = []
    total_s = 0.0
    for item in work:
        floor_s = max(item.flops / flops_per_s, item.bytes_moved / bytes_per_s)
        total_s += floor_s
        rows.append(
            f"| {item.stage} | {item.flops / 1e9:.3f} | {item.bytes_moved / 1e9:.3f} | {1000 * floor_s:.1f} |"
        )
    flops = sum(item.flops for item in work) / 1e9
    bytes_moved = sum(item.bytes_moved for item in work) / 1e9
    rows.append(f"| total | {flops:.3f} | {bytes_moved:.3f} | {1000 * total_s:.1f} |")
    return rows, total_s


# --- main ------------------------------------------------------------------------------------


def print_table(title: str, header: str, rows: list[str]) -> None:
    columns = header.count("|") - 1
    print(f"\n{title}\n\n{header}\n" + "|---" * columns + "|")
    print("\n".join(rows), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per method and volume")
    parser.add_argument(
        "--threads", type=int, default=2, help="threads of SimpleITK and of the threaded mhp-edge row"
    )
    parser.add_argument("--case", default="ircadb_01", help="labelled case whose liver region is used")
    parser.add_argument("--skip-synthetic", action="store_true", help="time only the liver region")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="an earlier mhp_edge/hessian.py (for example from git show) timed beside the current one",
    )
    arguments = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(arguments.threads)

    metadata = tumour_metadata()
    spec = metadata.hessian
    if spec is None:
        spec = HessianSpec(TUMOUR_HESSIAN_SCALES_MM, TUMOUR_HESSIAN_HU_CLIP, response_scale=1.0)
        print("The shipped tumour model reads no Hessian input; the scales come from export.contract.")
    model_scales = tuple(spec.scales_mm)
    grid, _ = liver_grid(arguments.case, metadata)
    region = grid.hu
    spacing = metadata.spacing_zyx_mm
    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs visible, numpy {np.__version__}, "
        f"SimpleITK {sitk.Version.VersionString()} with {arguments.threads} threads"
    )
    print(f"liver region of {arguments.case}: {region.shape} voxels (z, y, x) at {spacing} mm")

    # (label, volume, spacing, scales, core): with a core, methods return the core's response.
    volumes = [
        (f"{arguments.case} liver, model scales {model_scales} mm", region, spacing, model_scales, None),
        (f"{arguments.case} liver, sigma {VOXEL_SCALES} vox", region, (1.0, 1.0, 1.0), VOXEL_SCALES, None),
    ]
    if spec.context_mm > 0:
        print(f"the same region with {spec.context_mm} mm of context: {grid.context_hu.shape} voxels")
        volumes.append(
            (
                f"{arguments.case} liver with {spec.context_mm} mm context, model scales",
                grid.context_hu,
                spacing,
                model_scales,
                grid.core,
            )
        )
    if not arguments.skip_synthetic:
        synthetic = synthetic_hu(SYNTHETIC_SHAPE_ZYX)
        volumes.append(
            (
                f"synthetic {SYNTHETIC_SHAPE_ZYX}, sigma {VOXEL_SCALES} vox",
                synthetic,
                (1.0,) * 3,
                VOXEL_SCALES,
                None,
            )
        )

    baseline = None if arguments.baseline is None else load_baseline(arguments.baseline)
    methods = methods_for(spec, baseline, arguments.threads)
    rows = []
    product_s = {}
    for label, hu, volume_spacing, scales, core in volumes:
        volume_methods = methods if core is None else methods_for(spec, baseline, arguments.threads, core)
        medians_s, outputs = time_interleaved(volume_methods, hu, volume_spacing, scales, arguments.repeat)
        product_s[label] = medians_s["mhp-edge"]
        rows.extend(comparison_rows(label, medians_s, outputs))
        print(f"timed {label}", flush=True)
    print_table(
        f"Hessian stage, medians of {arguments.repeat} interleaved runs; ratio = method time / mhp-edge time",
        "| volume and scales | method | median s | ratio | correlation with mhp-edge |",
        rows,
    )

    memory_rows = []
    for name in [name for name in methods if name.startswith("mhp-edge")]:
        peak = peak_traced_memory(methods[name], region, spacing, model_scales)
        memory_rows.append(f"| {name} | {peak / 2**20:.0f} | {peak / region.nbytes:.1f} |")
    print_table(
        f"Peak memory allocated by numpy during the Hessian stage on the {arguments.case} liver region",
        "| method | peak MB | peak / float32 volume |",
        memory_rows,
    )

    clipped = np.clip(region, *spec.hu_clip)
    reference = float64_reference(clipped, spacing, model_scales)
    print_table(
        f"Accuracy on the {arguments.case} liver region at the model scales, against the float64 reference",
        "| float32 response | p99 of abs(reference) | p99 of abs(difference) / p99 ref | "
        "max abs(difference) / p99 ref | correlation |",
        [
            deviation_row(
                "mhp-edge (pyramid, as shipped)",
                multiscale_blob_response(
                    clipped, spacing, model_scales, pyramid_min_sigma_vox=spec.pyramid_min_sigma_vox
                ),
                reference,
            ),
            deviation_row(
                "mhp-edge without pyramid",
                multiscale_blob_response(clipped, spacing, model_scales, pyramid=False),
                reference,
            ),
        ],
    )

    flops_1 = measure_matmul_flops(1)
    flops_2 = measure_matmul_flops(2)
    bandwidth = measure_copy_bandwidth()
    print(
        f"\nmeasured: float32 matmul {flops_1 / 1e9:.0f} GFLOP/s on 1 thread, {flops_2 / 1e9:.0f} on 2; "
        f"copy {bandwidth / 1e9:.1f} GB/s on 1 thread (read + write)"
    )
    # NOTE: the count covers the liver region alone. With context the filters also read the
    # scan around it (the row "with ... context" above), so the stage does more than this floor.
    work = count_hessian_work(region.shape, spacing, model_scales, spec.pyramid_min_sigma_vox)
    rows, floor_s = floor_rows(work, flops_1, bandwidth)
    print_table(
        f"Floor of the Hessian stage on the {arguments.case} liver region {region.shape}, model scales",
        "| stage | GFLOP | GB moved | floor ms (1 thread) |",
        rows,
    )
    achieved_s = product_s[volumes[0][0]]
    floor_2_s = floor_rows(work, flops_2, bandwidth)[1]
    print(
        f"\nmhp-edge took {achieved_s:.3f} s. Floor at the 1-thread rates: {floor_s:.4f} s, achieved / "
        f"floor = {achieved_s / floor_s:.1f}. Floor at the 2-thread matmul rate: {floor_2_s:.4f} s, "
        f"achieved / floor = {achieved_s / floor_2_s:.1f}."
    )


if __name__ == "__main__":
    main()
