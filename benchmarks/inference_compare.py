"""Time the tumour inference and the whole pipeline against PyTorch eager with MONAI, side by side.

Run from the repository root:

    python -m benchmarks.inference_compare [--repeat 3] [--threads 2] [--case ircadb_01]
        [--skip-pipeline]

Both sides run the same network with the same weights. The torch network is the
``export.networks`` class that the model card's architecture names, and its weights are the
ONNX file's initialisers loaded by parameter name. Batch normalisations that the exporter folded
into their convolution are rebuilt as the identity plus the folded bias. The weights may not
load, or both engines may then differ by more than ``LOGIT_TOLERANCE`` on a random batch (an
architecture changed without a re-export). Then a seeded, untrained network of that class is
exported to a temporary ONNX file, and both sides use that instead. Patch shape and overlap come
from the model metadata.

Part 1 runs the tumour network on the liver region of ``--case``, cropped around the reference
liver and resampled as the pipeline does. The product's ``sliding_window_probability`` with its
ONNX Runtime session runs twice: skipping windows without liver, as the pipeline does, and over
every window. The reference is ``monai.inferers.sliding_window_inference`` with the torch
network in eager mode under ``torch.inference_mode``. It uses Gaussian blending (sigma 0.125 of
the patch) and the same patch, overlap and batch of 2.

Part 2, the whole ``Segmenter.segment`` against a reference pipeline with the same
pre-processing and post-processing: the pipeline's Hessian stage replaced by SimpleITK recursive
Gaussian derivatives (``benchmarks.hessian_compare``) and both sliding windows replaced by MONAI
with the torch networks.

Runs are interleaved in one process; the tables give medians and ratios. ONNX Runtime and torch
both get ``--threads`` intra-op threads.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from unittest import mock

import numpy as np
import onnx
import onnxruntime as ort
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference
from onnx import numpy_helper

from benchmarks.hessian_compare import liver_grid, print_table, sitk_recursive_response
from export import networks
from export.onnx_export import export_onnx
from mhp_edge import pipeline
from mhp_edge.evaluate import dice
from mhp_edge.metadata import HessianSpec, ModelMetadata
from mhp_edge.model import LoadedModel, session_options
from mhp_edge.preprocess import hessian_input, normalise_hu
from mhp_edge.windows import sliding_window_probability

REPO_ROOT = Path(__file__).resolve().parents[1]
MODELS = REPO_ROOT / "models"
DATA = Path(os.environ.get("MHP_EDGE_DATA", REPO_ROOT.parent / "shared" / "data"))

# MONAI's Gaussian importance map uses this fraction of the patch as sigma, as the product does.
GAUSSIAN_SIGMA_FRACTION = 0.125
BATCH_SIZE = 2

# ONNX Runtime and torch agree to about 1e-5 in float32; a larger logit difference means the
# weights did not load as the ONNX graph uses them.
LOGIT_TOLERANCE = 1e-3

# Logit bias of an untrained twin's output layer: a probability of about 1e-13.
UNTRAINED_LOGIT_BIAS = -30.0


# --- one network, two engines ----------------------------------------------------------------


@dataclasses.dataclass
class TorchModel:
    """A torch network with the metadata of the ONNX model it mirrors."""

    metadata: ModelMetadata
    network: torch.nn.Module

    def predict(self, batches: Sequence[torch.Tensor]) -> torch.Tensor:
        """Run the network on one (N, 1, z, y, x) tensor per input; return logits (N, 1, z, y, x)."""
        return self.network(*batches)


def network_class(model: LoadedModel) -> type[torch.nn.Module]:
    """Return the ``export.networks`` class named at the start of the card's architecture text."""
    name = str(model.card.get("architecture", "")).split(":", 1)[0].strip()
    found = getattr(networks, name, None)
    if not (isinstance(found, type) and issubclass(found, torch.nn.Module)):
        raise SystemExit(
            f"{model.path}: the card's architecture starts with {name!r}, which is not a network "
            "class in export/networks.py. Re-export the model with export/."
        )
    return found


def build_network(model: LoadedModel) -> torch.nn.Module:
    """Construct the model's network class in eval mode, as the card describes it.

    Without a Hessian stem if the metadata has none, and with batch normalisation if the card's
    architecture names it (``LiverNet`` uses instance normalisation by default).
    """
    cls = network_class(model)
    parameters = inspect.signature(cls).parameters
    options = {}
    if "hessian" in parameters:
        options["hessian"] = model.metadata.hessian is not None
    if "norm" in parameters and "batch norm" in str(model.card.get("architecture", "")):
        options["norm"] = "batch"
    return cls(**options).eval()


def torch_twin(model: LoadedModel) -> torch.nn.Module | None:
    """Build the torch network of an ONNX model and load its initialisers by parameter name.

    Integer buffers that inference does not read (batch normalisation's ``num_batches_tracked``)
    may be absent from the ONNX file. So may batch normalisations that the exporter folded into
    the convolution before them: see ``unfold_batch_norms``.

    Returns
    -------
    torch.nn.Module or None
        None when a float parameter or buffer has no initialiser of that name and shape.
    """
    network = build_network(model)
    proto = onnx.load(str(model.path))
    weights = {tensor.name: numpy_helper.to_array(tensor) for tensor in proto.graph.initializer}
    loaded = unfold_batch_norms(network, proto, weights)
    for key, value in network.state_dict().items():
        if key in loaded:
            continue
        if key in weights and weights[key].shape == tuple(value.shape):
            loaded[key] = torch.from_numpy(weights[key].copy())
        elif value.is_floating_point():
            return None
    network.load_state_dict(loaded, strict=False)
    return network


def unfold_batch_norms(
    network: torch.nn.Module, proto: onnx.ModelProto, weights: dict[str, np.ndarray]
) -> dict[str, torch.Tensor]:
    """Return state entries that make folded batch normalisations the identity plus the folded bias.

    In eval mode the exporter folds a batch normalisation into the convolution before it: the
    ONNX ``Conv`` gets the scaled weight under the convolution's name and a bias input, and the
    normalisation's own tensors disappear. Loading that weight into the convolution and giving
    the normalisation mean 0, variance ``1 - eps``, scale 1 and the folded bias as shift gives
    the same function. Normalisations whose tensors are in the file are left alone.
    """
    convolutions = {node.input[1]: node for node in proto.graph.node if node.op_type == "Conv"}
    modules = dict(network.named_modules())
    state = {}
    for name, module in modules.items():
        if not isinstance(module, torch.nn.modules.batchnorm._BatchNorm) or f"{name}.weight" in weights:
            continue
        parent, _, index = name.rpartition(".")
        previous = f"{parent}.{int(index) - 1}" if index.isdigit() and int(index) > 0 else ""
        node = convolutions.get(f"{previous}.weight")
        if not isinstance(modules.get(previous), torch.nn.Conv3d) or node is None:
            continue
        channels = module.num_features
        bias = np.zeros(channels, np.float32)
        if len(node.input) > 2 and node.input[2] in weights:
            bias = weights[node.input[2]]
        state[f"{name}.weight"] = torch.ones(channels)
        state[f"{name}.bias"] = torch.from_numpy(np.asarray(bias, np.float32).copy())
        state[f"{name}.running_mean"] = torch.zeros(channels)
        state[f"{name}.running_var"] = torch.full((channels,), 1.0 - module.eps)
    return state


def exported_twin(model: LoadedModel, folder: Path, threads: int) -> tuple[LoadedModel, torch.nn.Module]:
    """Export a seeded, untrained network of the model's class to ``folder``; return both sides.

    The bias of the last one-channel convolution is set to ``UNTRAINED_LOGIT_BIAS``, so the
    network predicts background everywhere. Without it, random weights give thousands of noise
    lesions, and post-processing them would dominate the pipeline's time. The bias costs no time.
    """
    torch.manual_seed(0)
    network = build_network(model)
    heads = [
        module
        for module in network.modules()
        if isinstance(module, torch.nn.Conv3d) and module.out_channels == 1 and module.bias is not None
    ]
    if heads:
        with torch.no_grad():
            heads[-1].bias.fill_(UNTRAINED_LOGIT_BIAS)
    path = folder / model.path.name
    export_onnx(network, model.metadata, path)
    session = ort.InferenceSession(
        str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
    )
    return LoadedModel(path, model.metadata, model.card, session), network


def paired_models(model: LoadedModel, folder: Path, threads: int) -> tuple[LoadedModel, TorchModel, str]:
    """Return the ONNX model, its torch twin and where their common weights come from.

    The shipped weights are used when they load by name and both engines then agree to
    ``LOGIT_TOLERANCE`` on a random batch.
    """
    network = torch_twin(model)
    if network is not None:
        twin = TorchModel(model.metadata, network)
        if largest_logit_difference(model, twin) < LOGIT_TOLERANCE:
            return model, twin, "the shipped weights"
    model, network = exported_twin(model, folder, threads)
    return model, TorchModel(model.metadata, network), "untrained weights, exported to a temporary file"


def largest_logit_difference(model: LoadedModel, twin: TorchModel) -> float:
    """Return the largest absolute logit difference between ONNX Runtime and torch on one random batch."""
    rng = np.random.default_rng(0)
    shape = (BATCH_SIZE, 1, *model.metadata.patch_shape_vox)
    batches = [rng.normal(size=shape).astype(np.float32) for _ in model.metadata.input_names]
    with torch.inference_mode():
        expected = twin.predict([torch.from_numpy(batch) for batch in batches]).numpy()
    return float(np.abs(model.predict(batches) - expected).max())


# --- sliding windows -------------------------------------------------------------------------


def monai_probability(
    inputs: Sequence[np.ndarray],
    pad_values: Sequence[float],
    predict: Callable[[Sequence[torch.Tensor]], torch.Tensor],
    *,
    patch_shape_vox: Sequence[int],
    overlap: float,
    region_mask: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Run MONAI's sliding window with Gaussian blending, through the interface of the product's.

    MONAI pads every channel with one value and visits every window. So ``pad_values[0]`` is
    used for all inputs, and ``region_mask`` and ``progress`` are accepted and ignored. The
    volumes measured here are larger than a patch, so nothing is padded.

    Returns
    -------
    ndarray of shape (Z, Y, X), float32
        Sigmoid of the blended logits.
    """
    stacked = torch.from_numpy(
        np.concatenate([np.asarray(array, np.float32) for array in inputs])[np.newaxis]
    )
    channels = [array.shape[0] for array in inputs]
    with torch.inference_mode():
        logits = sliding_window_inference(
            stacked,
            roi_size=tuple(patch_shape_vox),
            sw_batch_size=BATCH_SIZE,
            predictor=lambda batch: predict(torch.split(batch, channels, dim=1)),
            overlap=overlap,
            mode="gaussian",
            sigma_scale=GAUSSIAN_SIGMA_FRACTION,
            padding_mode="constant",
            cval=float(pad_values[0]),
        )
        return torch.sigmoid(logits)[0, 0].numpy()


@dataclasses.dataclass
class TumourInput:
    """The tumour model's inputs on a liver region.

    Attributes
    ----------
    inputs : list of ndarrays of shape (1, Z, Y, X), float32
        One array per model input: the normalised CT, then the Hessian twin if the model reads it.
    pad_values : list of float
        Padding value of each input.
    liver : ndarray of shape (Z, Y, X), bool
    """

    inputs: list[np.ndarray]
    pad_values: list[float]
    liver: np.ndarray


def tumour_input(case: str, metadata: ModelMetadata) -> TumourInput:
    """Prepare the tumour network's inputs on the reference liver region of a case, as the pipeline does."""
    grid, liver = liver_grid(case, metadata)
    inputs = [normalise_hu(grid.hu, metadata)[np.newaxis]]
    pad_values = [float(normalise_hu(np.float32(metadata.pad_hu), metadata))]
    if metadata.hessian is not None:
        enhanced = hessian_input(grid.context_hu, metadata.spacing_zyx_mm, metadata.hessian, core=grid.core)
        inputs.append(enhanced[np.newaxis])
        pad_values.append(0.0)
    return TumourInput(inputs, pad_values, liver)


def interleave(
    runs: dict[str, Callable[[], object]], repeat: int
) -> tuple[dict[str, float], dict[str, object]]:
    """Call each run ``repeat`` times in a rotating order; return median seconds and last results."""
    names = list(runs)
    times = {name: [] for name in names}
    results = {}
    for round_index in range(repeat):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            results[name] = runs[name]()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}, results


def compare_tumour_inference(model: LoadedModel, twin: TorchModel, case: str, repeat: int) -> list[str]:
    """Time the tumour network's sliding window on both engines; return table rows."""
    metadata = model.metadata
    prepared = tumour_input(case, metadata)
    inputs = prepared.inputs
    settings = {"patch_shape_vox": metadata.patch_shape_vox, "overlap": metadata.overlap}
    runs = {
        "mhp-edge, windows with liver": lambda: sliding_window_probability(
            inputs, prepared.pad_values, model.predict, region_mask=prepared.liver, **settings
        ),
        "mhp-edge, every window": lambda: sliding_window_probability(
            inputs, prepared.pad_values, model.predict, **settings
        ),
        "torch eager + MONAI, every window": lambda: monai_probability(
            inputs, prepared.pad_values, twin.predict, **settings
        ),
    }
    tile = metadata.window_shape(inputs[0].shape[1:])
    product = "mhp-edge, windows with liver"
    if tile != tuple(metadata.patch_shape_vox):
        # The shipped settings: tiles as large as the region allows, on both engines.
        tiles = {"patch_shape_vox": tile, "overlap": metadata.overlap}
        product = f"mhp-edge, tiles of {tile} with liver"
        runs[product] = lambda: sliding_window_probability(
            inputs, prepared.pad_values, model.predict, region_mask=prepared.liver, **tiles
        )
        runs[f"torch eager + MONAI, tiles of {tile}"] = lambda: monai_probability(
            inputs, prepared.pad_values, twin.predict, **tiles
        )
    medians_s, results = interleave(runs, repeat)

    product_s = medians_s[product]
    reference = results["torch eager + MONAI, every window"]
    inside = prepared.liver
    rows = []
    for name, seconds in medians_s.items():
        probability = results[name]
        agreement = dice(probability[inside] > metadata.threshold, reference[inside] > metadata.threshold)
        difference = float(np.abs(probability[inside] - reference[inside]).max())
        rows.append(
            f"| {name} | {seconds:.2f} | {seconds / product_s:.2f} | {difference:.1e} | "
            f"{'n/a' if agreement is None else f'{agreement:.4f}'} |"
        )
    shape = prepared.liver.shape
    print(f"liver region {shape} voxels, patch {metadata.patch_shape_vox}, overlap {metadata.overlap}")
    return rows


# --- whole pipeline --------------------------------------------------------------------------


def sitk_hessian_input(
    hu: np.ndarray,
    spacing_zyx_mm: Sequence[float],
    spec: HessianSpec,
    *,
    core: tuple[slice, slice, slice] | None = None,
    threads: int = 1,
) -> np.ndarray:
    """Compute the pipeline's ``hessian_input`` with SimpleITK recursive Gaussian derivatives.

    The recursive filters run over the whole of ``hu``, context included, and the core is cut
    out afterwards. ``threads`` is accepted for the pipeline's call and unused: SimpleITK sizes
    its own pool.
    """
    clipped = np.clip(hu, *spec.hu_clip).astype(np.float32, copy=False)
    response = sitk_recursive_response(clipped, spacing_zyx_mm, spec.scales_mm)
    if core is not None:
        response = response[core]
    return response / np.float32(spec.response_scale)


@contextlib.contextmanager
def reference_pipeline(
    segmenter: pipeline.Segmenter, liver: TorchModel, tumour: TorchModel
) -> Iterator[None]:
    """Swap the Hessian stage, both sliding windows and both models of a ``Segmenter`` for the reference ones.

    Everything else (reading, orientation, cropping, resampling, thresholds, post-processing)
    stays the pipeline's own code.
    """
    product_models = segmenter.liver_model, segmenter.tumour_model
    segmenter.liver_model, segmenter.tumour_model = liver, tumour
    try:
        with (
            mock.patch.object(pipeline, "hessian_input", sitk_hessian_input),
            mock.patch.object(pipeline, "sliding_window_probability", monai_probability),
        ):
            yield
    finally:
        segmenter.liver_model, segmenter.tumour_model = product_models


def compare_pipelines(
    segmenter: pipeline.Segmenter, liver: TorchModel, tumour: TorchModel, case: str, repeat: int
) -> list[str]:
    """Time ``Segmenter.segment`` against the reference pipeline on one scan; return table rows."""
    image = sitk.ReadImage(str(DATA / "cases" / f"{case}_ct.nii.gz"))

    def run_reference():
        with reference_pipeline(segmenter, liver, tumour):
            return segmenter.segment(image)

    medians_s, results = interleave(
        {"mhp-edge": lambda: segmenter.segment(image), "reference": run_reference}, repeat
    )
    product = sitk.GetArrayViewFromImage(results["mhp-edge"].mask)
    reference = sitk.GetArrayViewFromImage(results["reference"].mask)
    rows = []
    for name, seconds in medians_s.items():
        stages = ", ".join(f"{stage} {value:.1f}" for stage, value in results[name].timings_s.items())
        rows.append(f"| {name} | {seconds:.2f} | {seconds / medians_s['mhp-edge']:.2f} | {stages} |")
    liver_agreement = dice(product > 0, reference > 0)
    tumour_agreement = dice(product == 2, reference == 2)
    rows.append(
        f"| agreement (Dice of the two masks) | | | liver {liver_agreement:.4f}, tumour "
        f"{'n/a' if tumour_agreement is None else f'{tumour_agreement:.4f}'} |"
    )
    return rows


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per side")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime and torch intra-op threads")
    parser.add_argument("--case", default="ircadb_01", help="labelled case in $MHP_EDGE_DATA/cases")
    parser.add_argument("--skip-pipeline", action="store_true", help="compare only the tumour inference")
    arguments = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(arguments.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(arguments.threads)

    segmenter = pipeline.Segmenter(MODELS, threads=arguments.threads)
    with tempfile.TemporaryDirectory() as scratch:
        tumour_model, tumour_twin, tumour_source = paired_models(
            segmenter.tumour_model, Path(scratch), arguments.threads
        )
        liver_model, liver_twin, liver_source = paired_models(
            segmenter.liver_model, Path(scratch), arguments.threads
        )
        segmenter.tumour_model, segmenter.liver_model = tumour_model, liver_model
        print(
            f"{platform.machine()}, {os.cpu_count()} CPUs visible, {arguments.threads} threads; onnxruntime "
            f"{ort.__version__}, torch {torch.__version__}"
        )
        for name, model, twin, source in (
            ("tumour", tumour_model, tumour_twin, tumour_source),
            ("liver", liver_model, liver_twin, liver_source),
        ):
            print(
                f"{name}: {network_class(model).__name__} with {source}; largest logit difference ONNX "
                f"Runtime vs torch on a random batch: {largest_logit_difference(model, twin):.1e}"
            )

        rows = compare_tumour_inference(tumour_model, tumour_twin, arguments.case, arguments.repeat)
        print_table(
            f"Tumour network on the {arguments.case} liver region, medians of {arguments.repeat} "
            "interleaved runs; ratio = time / mhp-edge as shipped (tiles when the model takes them); "
            "differences inside the liver against MONAI's windows",
            "| engine | median s | ratio | max abs probability difference | Dice of thresholded masks |",
            rows,
        )
        if arguments.skip_pipeline:
            return

        rows = compare_pipelines(segmenter, liver_twin, tumour_twin, arguments.case, arguments.repeat)
        print_table(
            f"Whole segment of {arguments.case}, medians of {arguments.repeat} interleaved runs; "
            "ratio = time / mhp-edge",
            "| pipeline | median s | ratio | stage times of the last run, s |",
            rows,
        )


if __name__ == "__main__":
    main()
