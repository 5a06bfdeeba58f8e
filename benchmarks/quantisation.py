"""Measure whether int8 or fp16 versions of the tumour model change its speed and Dice.

Run from the repository root:

    python -m benchmarks.quantisation [--repeat 3] [--threads 2] [--cases ircadb_01 ...]
        [--calibration-case radctt_0697]

Variants of ``models/mhp_net.onnx``, built with the tools that ship with onnxruntime:

* ``fp32``: the shipped model;
* ``int8 dynamic``: ``quantize_dynamic``, int8 weights, activations quantised per call;
* ``int8 static``: ``quantize_static`` in QDQ format, int8 weights per channel, uint8
  activations calibrated (MinMax) on windows of ``--calibration-case``'s liver region;
* ``fp16``: ``onnxruntime.transformers.float16.convert_float_to_float16`` with float32 inputs
  and outputs.

Speed: the tumour sliding window on the first case's liver region (windows with liver, as the
pipeline runs it), all variants interleaved in one process, medians of ``--repeat`` runs.
Dice: ``Segmenter.segment`` with each variant as the tumour model on each case, scored against
the case's reference tumour (label 2), and the Dice between each variant's tumour mask and the
fp32 one. Nothing is shipped: the variants live in a temporary folder.

All labelled cases are training cases of the shipped models, so the absolute Dice is optimistic.
The difference between variants is the number this script is for.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import SimpleITK as sitk
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from benchmarks.inference_compare import tumour_input
from mhp_edge.evaluate import dice
from mhp_edge.model import LoadedModel, session_options
from mhp_edge.pipeline import Segmenter
from mhp_edge.windows import sliding_window_probability, window_starts

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = REPO_ROOT / "models"
DATA = Path(os.environ.get("MHP_EDGE_DATA", REPO_ROOT.parent / "shared" / "data"))
TUMOUR_LABEL = 2
CALIBRATION_WINDOWS = 24


class WindowReader(CalibrationDataReader):
    """Feed liver-region windows, one per call, to the static quantiser's calibration."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def calibration_feeds(model: LoadedModel, case: str) -> list[dict[str, np.ndarray]]:
    """Return up to ``CALIBRATION_WINDOWS`` windows with liver from a case, as graph feeds of batch 1."""
    metadata = model.metadata
    prepared = tumour_input(case, metadata)
    patch = metadata.patch_shape_vox
    starts = [
        window_starts(size, length, metadata.overlap)
        for size, length in zip(prepared.liver.shape, patch, strict=True)
    ]
    feeds = []
    for z in starts[0]:
        for y in starts[1]:
            for x in starts[2]:
                window = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                if prepared.liver[window].any():
                    feeds.append(
                        {
                            name: np.ascontiguousarray(array[(slice(None), *window)][np.newaxis])
                            for name, array in zip(metadata.input_names, prepared.inputs, strict=True)
                        }
                    )
    step = max(1, len(feeds) // CALIBRATION_WINDOWS)
    return feeds[::step][:CALIBRATION_WINDOWS]


def build_variants(model: LoadedModel, folder: Path, calibration_case: str) -> dict[str, Path | str]:
    """Write the quantised and fp16 variants of ``model`` to ``folder``.

    Returns
    -------
    dict
        Variant name to its ONNX file, or to the error text when the tool failed.
    """
    prepared = folder / "prepared.onnx"
    quant_pre_process(str(model.path), str(prepared))
    variants: dict[str, Path | str] = {"fp32": model.path}

    builders: dict[str, Callable[[Path], None]] = {
        "int8 dynamic": lambda out: quantize_dynamic(prepared, out, weight_type=QuantType.QInt8),
        "int8 static": lambda out: quantize_static(
            prepared,
            out,
            WindowReader(calibration_feeds(model, calibration_case)),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
        ),
        "fp16": lambda out: fp16_model(prepared, out),
    }
    for name, build in builders.items():
        path = folder / (name.replace(" ", "_") + ".onnx")
        try:
            build(path)
            variants[name] = path
        except Exception as err:  # the quantisation tools raise many unrelated types
            variants[name] = f"{type(err).__name__}: {err}"
    return variants


def fp16_model(source: Path, target: Path) -> None:
    """Convert a model's weights and arithmetic to float16, keeping float32 inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(converted, str(target))


def load_variant(model: LoadedModel, path: Path, threads: int) -> LoadedModel:
    """Open a variant with the product's session options and the shipped model's metadata."""
    session = ort.InferenceSession(
        str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
    )
    return LoadedModel(path, model.metadata, model.card, session)


def time_variants(models: dict[str, LoadedModel], case: str, repeat: int) -> dict[str, float]:
    """Time the tumour sliding window of each variant, interleaved; return median seconds."""
    metadata = next(iter(models.values())).metadata
    prepared = tumour_input(case, metadata)
    names = list(models)
    times = {name: [] for name in names}
    for round_index in range(repeat):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            sliding_window_probability(
                prepared.inputs,
                prepared.pad_values,
                models[name].predict,
                patch_shape_vox=metadata.patch_shape_vox,
                overlap=metadata.overlap,
                region_mask=prepared.liver,
            )
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def tumour_masks(segmenter: Segmenter, models: dict[str, LoadedModel], case: str) -> dict[str, np.ndarray]:
    """Segment a case with each variant as the tumour model; return the tumour masks (z, y, x)."""
    image = sitk.ReadImage(str(DATA / "cases" / f"{case}_ct.nii.gz"))
    shipped = segmenter.tumour_model
    masks = {}
    try:
        for name, model in models.items():
            segmenter.tumour_model = model
            masks[name] = sitk.GetArrayFromImage(segmenter.segment(image).mask) == TUMOUR_LABEL
    finally:
        segmenter.tumour_model = shipped
    return masks


def reference_tumour(case: str) -> np.ndarray:
    """Return a case's reference tumour mask (label 2) in its file's array order (z, y, x)."""
    labels = sitk.ReadImage(str(DATA / "cases" / f"{case}_label.nii.gz"))
    return sitk.GetArrayFromImage(labels) == TUMOUR_LABEL


def format_dice(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per variant")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--cases", nargs="+", default=["ircadb_01"], help="labelled cases scored for Dice")
    parser.add_argument(
        "--calibration-case", default="radctt_0697", help="case whose windows calibrate int8 static"
    )
    arguments = parser.parse_args()
    # The per-channel quantiser logs a warning for every one-dimensional normalisation weight.
    logging.getLogger().setLevel(logging.ERROR)

    segmenter = Segmenter(MODELS, threads=arguments.threads)
    shipped = segmenter.tumour_model
    print(f"onnxruntime {ort.__version__}, {arguments.threads} threads, model {shipped.path.name}")
    with tempfile.TemporaryDirectory() as scratch:
        variants = build_variants(shipped, Path(scratch), arguments.calibration_case)
        models = {}
        for name, built in variants.items():
            if isinstance(built, str):
                print(f"{name}: not built ({built})")
                continue
            try:
                models[name] = load_variant(shipped, built, arguments.threads)
            except Exception as err:  # onnxruntime raises its own types without a common base
                print(f"{name}: onnxruntime cannot run it ({type(err).__name__}: {err})")

        medians_s = time_variants(models, arguments.cases[0], arguments.repeat)
        rows = [
            f"| {name} | {seconds:.2f} | {seconds / medians_s['fp32']:.2f} |"
            for name, seconds in medians_s.items()
        ]
        print(
            f"\nTumour sliding window on the {arguments.cases[0]} liver region, medians of {arguments.repeat}"
        )
        print("\n| variant | median s | time / fp32 |\n|---|---|---|\n" + "\n".join(rows), flush=True)

        rows = []
        for case in arguments.cases:
            masks = tumour_masks(segmenter, models, case)
            reference = reference_tumour(case)
            fp32_dice = dice(masks["fp32"], reference)
            for name, mask in masks.items():
                variant_dice = dice(mask, reference)
                change = "n/a" if None in (variant_dice, fp32_dice) else f"{variant_dice - fp32_dice:+.4f}"
                rows.append(
                    f"| {case} | {name} | {format_dice(variant_dice)} | {change} | "
                    f"{format_dice(dice(mask, masks['fp32']))} |"
                )
        print("\nTumour Dice of Segmenter.segment with each variant (liver from the liver model)")
        header = "| case | variant | Dice vs reference | change vs fp32 | Dice vs fp32 mask |"
        print(f"\n{header}\n" + "|---" * 5 + "|\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
