"""Export a trained network to ONNX with its metadata, and write its model card."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
import torch
from torch import nn

from mhp_edge.metadata import METADATA_KEY, ModelMetadata, card_path_for, sha256_of_file
from mhp_edge.model import tile_problem

logger = logging.getLogger(__name__)

OPSET_VERSION = 18
EXAMPLE_BATCH = 2


def export_onnx(network: nn.Module, metadata: ModelMetadata, path: Path) -> None:
    """Export a network in eval mode to ONNX and embed its metadata.

    The batch axis is dynamic and the spatial axes are fixed to ``metadata.patch_shape_vox``, or
    dynamic when ``metadata.tile_max_vox`` is set (``free_spatial_axes``). The metadata JSON is
    stored in ``metadata_props`` under ``METADATA_KEY``, and the result passes
    ``onnx.checker.check_model`` before it is written.

    Parameters
    ----------
    network : torch.nn.Module
        Takes one (N, 1, Z, Y, X) float32 tensor per name in ``metadata.input_names``.
    metadata : ModelMetadata
    path : Path
        Destination ``.onnx`` file, replaced if it exists.
    """
    network = network.eval()
    shape = (EXAMPLE_BATCH, 1, *metadata.patch_shape_vox)
    example = tuple(torch.zeros(shape, dtype=torch.float32) for _ in metadata.input_names)
    batch = torch.export.Dim("batch", min=1)
    # Positional, so the export does not depend on the names of the forward() arguments.
    dynamic_shapes = tuple({0: batch} for _ in metadata.input_names)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch, warnings.catch_warnings():
        # Known torch 2.13 exporter notices that do not affect the graph: a deprecated pytree
        # check inside torch, and the rename of the shared "batch" axis of both inputs.
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")
        warnings.filterwarnings("ignore", message=".*axis name: batch will not be used")
        raw_path = Path(scratch) / path.name
        torch.onnx.export(
            network,
            example,
            str(raw_path),
            input_names=list(metadata.input_names),
            output_names=[metadata.output_name],
            opset_version=OPSET_VERSION,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            verbose=False,
        )
        model = onnx.load(str(raw_path))

    _check_interface(model, metadata, path)
    if metadata.tile_max_vox is not None:
        free_spatial_axes(model, metadata)
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = metadata.to_json()
    onnx.checker.check_model(model, full_check=True)
    _save_atomic(model.SerializeToString(), path)
    logger.info("Exported %s (%d bytes)", path, path.stat().st_size)


def free_spatial_axes(model: onnx.ModelProto, metadata: ModelMetadata) -> None:
    """Make the z, y and x axes of a fully convolutional graph's inputs and output dynamic, in place.

    The exporter fixes them to the example's shape. Dropping the inferred intermediate shapes lets
    onnxruntime infer them per call. The graph is then run on a shape one tile multiple larger
    than the patch on every axis, and must return logits of that shape.

    Raises
    ------
    ValueError
        If the graph does not run on that shape or returns another shape: a size in it was
        fixed by the export example, so it cannot take tiles.
    """
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        for dim, axis_name in zip(dims[2:], ("z", "y", "x"), strict=True):
            dim.dim_param = axis_name
    del model.graph.value_info[:]

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    problem = tile_problem(session, metadata)
    if problem:
        raise ValueError(f"{metadata.name}: {problem}.")


def _check_interface(model: onnx.ModelProto, metadata: ModelMetadata, path: Path) -> None:
    inputs = [graph_input.name for graph_input in model.graph.input]
    outputs = [graph_output.name for graph_output in model.graph.output]
    if inputs != list(metadata.input_names) or outputs != [metadata.output_name]:
        raise RuntimeError(
            f"{path}: exported graph has inputs {inputs} and outputs {outputs}, metadata "
            f"expects {list(metadata.input_names)} and {[metadata.output_name]}."
        )


def _save_atomic(content: bytes, path: Path) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
        # mkstemp creates the file readable by its owner only, but models and cards are shared.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_card(
    model_path: Path,
    metadata: ModelMetadata,
    *,
    architecture: str,
    parameters: int,
    training_cases: list[str],
    licences: dict[str, str],
    intended_use: str,
) -> Path:
    """Write the model card beside an exported model and return its path.

    The card stores the sha256 of the ``.onnx`` file as it is now, so it must be written after
    the export. ``accuracy`` starts empty and is filled by the leave-one-case-out benchmark.

    Parameters
    ----------
    model_path : Path
        The exported ``.onnx`` file.
    metadata : ModelMetadata
        The metadata embedded in the model, copied into the card.
    architecture : str
        Plain-text description of the network.
    parameters : int
        Trainable parameter count.
    training_cases : list of str
    licences : dict
        Licence text per data source of the training cases.
    intended_use : str
    """
    model_path = Path(model_path)
    card: dict[str, Any] = {
        "model_file": model_path.name,
        "sha256": sha256_of_file(model_path),
        "name": metadata.name,
        "task": metadata.task,
        "architecture": architecture,
        "parameters": parameters,
        "training_cases": training_cases,
        "licences": licences,
        "intended_use": intended_use,
        "accuracy": {},
        "metadata": json.loads(metadata.to_json()),
    }
    card_path = card_path_for(model_path)
    _save_atomic((json.dumps(card, indent=2) + "\n").encode(), card_path)
    return card_path
