"""Write small but real ONNX models that follow the mhp-edge model contract.

The graphs compute a fixed linear function of their inputs, which is enough to test loading,
checks and the window machinery without a trained network.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mhp_edge.metadata import METADATA_KEY, HessianSpec, ModelMetadata, card_path_for, sha256_of_file


def make_metadata(task: str, patch_shape_vox=(8, 16, 16), **changes) -> ModelMetadata:
    """Return valid metadata for a liver or tumour model, with fields overridden by ``changes``."""
    values = dict(
        name=f"test-{task}",
        task=task,
        input_names=("ct", "hessian") if task == "tumour" else ("ct",),
        output_name="logits",
        patch_shape_vox=tuple(patch_shape_vox),
        spacing_zyx_mm=(4.0, 3.0, 3.0),
        hu_clip=(-250.0, 250.0),
        hu_mean=0.0,
        hu_std=150.0,
        pad_hu=-1024.0,
        overlap=0.25,
        threshold=0.5,
        min_component_mm3=0.0,
        roi_margin_mm=0.0,
        hessian=HessianSpec((3.0, 6.0), (-50.0, 200.0), 10.0) if task == "tumour" else None,
        labels={0: "background", 1: "liver"} if task == "liver" else {0: "background", 2: "tumour"},
        provenance={"training_cases": []},
    )
    values.update(changes)
    return ModelMetadata(**values)


def write_linear_model(
    folder: Path,
    file_name: str,
    metadata: ModelMetadata,
    *,
    graph_input_names=None,
    gain: float = 4.0,
    with_metadata: bool = True,
) -> Path:
    """Write ``logits = gain * first_input`` (+ 0 * other inputs) with its card; return the path."""
    names = list(graph_input_names or metadata.input_names)
    patch = list(metadata.patch_shape_vox)
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 1, *patch]) for name in names]
    output = helper.make_tensor_value_info(metadata.output_name, TensorProto.FLOAT, ["N", 1, *patch])
    gain_tensor = numpy_helper.from_array(np.array(gain, dtype=np.float32), "gain")
    zero_tensor = numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")
    nodes = [helper.make_node("Mul", [names[0], "gain"], ["scaled"])]
    last = "scaled"
    for index, name in enumerate(names[1:]):
        nodes.append(helper.make_node("Mul", [name, "zero"], [f"ignored{index}"]))
        nodes.append(helper.make_node("Add", [last, f"ignored{index}"], [f"sum{index}"]))
        last = f"sum{index}"
    nodes.append(helper.make_node("Identity", [last], [metadata.output_name]))
    graph = helper.make_graph(nodes, "linear", inputs, [output], [gain_tensor, zero_tensor])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if with_metadata:
        helper.set_model_props(model, {METADATA_KEY: metadata.to_json()})
    onnx.checker.check_model(model)

    path = Path(folder) / file_name
    onnx.save(model, str(path))
    card = {"model_file": file_name, "sha256": sha256_of_file(path), "name": metadata.name}
    card_path_for(path).write_text(json.dumps(card))
    return path


def update_card_checksum(path: Path) -> None:
    """Record the model file's current sha256 in its card, as after a legitimate re-export."""
    card_path = card_path_for(path)
    card = json.loads(card_path.read_text())
    card["sha256"] = sha256_of_file(path)
    card_path.write_text(json.dumps(card))
