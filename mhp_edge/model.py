"""Loading an ONNX model with its metadata, and running it on the CPU.

A model is refused before any work when its file does not match the sha256 in its card, its
metadata is missing or inconsistent, or its graph inputs and outputs disagree with the metadata.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from mhp_edge.errors import ConfigurationError, ModelError
from mhp_edge.metadata import METADATA_KEY, ModelMetadata, card_path_for, parse_metadata
from mhp_edge.metadata import sha256_of_file as _sha256_of_file

logger = logging.getLogger(__name__)


def available_cpu_count() -> int:
    """Return the number of CPUs this process may use: affinity mask and cgroup quota.

    Containers often see all of the host's cores while their cgroup allows fewer; threads beyond
    the quota only contend with each other.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:
        count = os.cpu_count() or 1

    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, int(quota)))
    return max(1, count)


def _cgroup_cpu_quota() -> float | None:
    # cgroup v2 writes "max 100000" (no limit) or "<quota> <period>".
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return float(text[0]) / float(text[1])
    except (OSError, ValueError, IndexError):
        pass
    # cgroup v1 keeps quota and period in two files; -1 means no limit.
    try:
        quota = float(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = float(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def session_options(threads: int, *, arena: bool = True) -> ort.SessionOptions:
    """Build CPU session options: a fixed intra-op pool, no inter-op pool, no spinning.

    Parameters
    ----------
    threads : int
        Intra-op threads, at least 1.
    arena : bool
        Keep ONNX Runtime's CPU memory arena. Without it, each tensor is allocated and freed
        as the graph runs.
    """
    if threads < 1:
        raise ConfigurationError(f"threads must be >= 1, got {threads}.")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads keep cores busy after each run, which hurts an embedding application.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = arena
    return options


@dataclass
class LoadedModel:
    """An ONNX Runtime session with the metadata that describes its input and output.

    Attributes
    ----------
    path : Path
        The ONNX file.
    metadata : ModelMetadata
    card : dict
        The card JSON beside the model.
    session : onnxruntime.InferenceSession
    """

    path: Path
    metadata: ModelMetadata
    card: dict
    session: ort.InferenceSession

    def predict(self, batches: list[np.ndarray]) -> np.ndarray:
        """Run the graph on one batch per input, each (N, 1, z, y, x) float32; return logits."""
        feeds = dict(zip(self.metadata.input_names, batches, strict=True))
        (logits,) = self.session.run([self.metadata.output_name], feeds)
        return logits


def load_model(path: Path, *, threads: int) -> LoadedModel:
    """Verify and load an ONNX model and its card.

    Parameters
    ----------
    path : Path
        The ``.onnx`` file; its card ``<stem>.card.json`` must sit beside it.
    threads : int
        Intra-op threads of the session.

    Raises
    ------
    ModelError
        If the file or card is missing, the checksum differs, the metadata is missing or
        inconsistent, or the graph does not match the metadata.
    """
    path = Path(path)
    card = _read_card(path)
    digest = _sha256_of_file(path)
    if digest != card.get("sha256"):
        raise ModelError(
            f"{path}: sha256 {digest} differs from {card.get('sha256')} in its card. The model "
            "file was changed or truncated; reinstall mhp-edge or re-export the model."
        )

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and others without a common base
        raise ModelError(f"{path}: not a readable ONNX model ({err}).") from err
    _reject_external_data(proto, path)
    properties = {entry.key: entry.value for entry in proto.metadata_props}
    if METADATA_KEY not in properties:
        raise ModelError(
            f"{path}: has no '{METADATA_KEY}' metadata, so its preprocessing is unknown. "
            "Export models with export/ so they carry their metadata."
        )
    metadata = parse_metadata(properties[METADATA_KEY], source=str(path))

    try:
        session = ort.InferenceSession(
            proto.SerializeToString(),
            # Tiles change shape from call to call. radctt_2144 peaked at about 1.4 GB with the
            # arena and 1.0 GB without it (0.9 GB with windows). Tumour inference took 0.2 s longer.
            sess_options=session_options(threads, arena=metadata.tile_max_vox is None),
            providers=["CPUExecutionProvider"],
        )
    except Exception as err:  # onnxruntime raises its own exception types without a common base
        raise ModelError(f"{path}: onnxruntime cannot load the model ({err}).") from err
    _check_graph(session, metadata, path)
    if metadata.tile_max_vox is not None:
        problem = tile_problem(session, metadata)
        if problem:
            raise ModelError(f"{path}: {problem}. Export the model again, or drop its tile settings.")
    logger.info("Loaded %s (%s) with %d threads", metadata.name, path.name, threads)
    return LoadedModel(path, metadata, card, session)


def tile_problem(session: ort.InferenceSession, metadata: ModelMetadata) -> str | None:
    """Run a tiled model once on a tile of three multiples per axis and describe a failure.

    A graph whose spatial axes are dynamic may still contain sizes from its export example, or
    need larger multiples than its metadata states: an odd number of multiples is not a multiple
    of twice the stated one. The tile is small, so the check costs little at load (0.012 s for
    the tumour model against 0.21 s for one multiple more than its patch). Returns None when the
    logits have the tile's shape.
    """
    shape = tuple(3 * m for m in metadata.tile_multiple_vox)
    feeds = {name: np.zeros((1, 1, *shape), dtype=np.float32) for name in metadata.input_names}
    try:
        (logits,) = session.run([metadata.output_name], feeds)
    except Exception as err:  # onnxruntime raises its own exception types without a common base
        return f"the graph does not run on a {shape} tile, which its tile settings allow ({err})"
    if logits.shape != (1, 1, *shape):
        return f"a {shape} tile gave logits of shape {logits.shape}"
    return None


def _read_card(path: Path) -> dict:
    card_path = card_path_for(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found.")
    if not card_path.is_file():
        raise ModelError(
            f"{card_path}: model card not found; it records the sha256 the model is checked "
            "against. Keep the .card.json beside the .onnx file."
        )
    try:
        return json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelError(f"{card_path}: model card is not valid JSON ({err}).") from err


def _reject_external_data(proto: onnx.ModelProto, path: Path) -> None:
    # Weights must be inside the file: external data paths could point anywhere on disk.
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ModelError(
                f"{path}: tensor '{tensor.name}' keeps its data in an external file. "
                "mhp-edge only loads self-contained models; re-export with all weights inside."
            )


def _check_graph(session: ort.InferenceSession, metadata: ModelMetadata, path: Path) -> None:
    graph_inputs = {node.name: node for node in session.get_inputs()}
    graph_outputs = {node.name for node in session.get_outputs()}
    problems = []
    if set(graph_inputs) != set(metadata.input_names):
        problems.append(
            f"graph inputs {sorted(graph_inputs)} differ from metadata {list(metadata.input_names)}"
        )
    if metadata.output_name not in graph_outputs:
        problems.append(f"output '{metadata.output_name}' not in graph outputs {sorted(graph_outputs)}")
    for name, node in graph_inputs.items():
        shape = node.shape
        if len(shape) != 5:
            problems.append(f"input '{name}' has rank {len(shape)}, expected 5 (N, C, z, y, x)")
            continue
        if shape[1] != 1:
            problems.append(f"input '{name}' has {shape[1]} channels, expected 1")
        fixed = []
        for axis, (dim, expected) in enumerate(zip(shape[2:], metadata.patch_shape_vox, strict=True)):
            if isinstance(dim, int) and dim != expected:
                problems.append(f"input '{name}' axis {axis + 2} is {dim}, metadata patch is {expected}")
            elif isinstance(dim, int) and metadata.tile_max_vox is not None:
                fixed.append(f"{axis + 2} ({dim})")
        if fixed:
            problems.append(
                f"input '{name}' has fixed spatial axes {', '.join(fixed)}, but tile_max_vox asks for "
                "tiles of any shape. Export the spatial axes as dynamic"
            )
    if problems:
        raise ModelError(f"{path}: graph does not match its metadata: " + "; ".join(problems) + ".")
