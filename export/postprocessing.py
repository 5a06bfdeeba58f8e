"""Write post-processing settings into an exported model and its card.

Usage::

    python -m export.postprocessing MODEL.onnx --from benchmarks/results/tumour_loco.json
        [--variant mhp-net]
    python -m export.postprocessing LIVER_MODEL.onnx --liver-boundary
    python -m export.postprocessing MODEL.onnx --tiles
    python -m export.postprocessing LIVER_MODEL.onnx --liver-loco benchmarks/results/liver_loco_steps3000.json

For a tumour model, the threshold and minimum lesion volume are chosen by
``benchmarks.tumour_ablation`` on the out-of-fold probabilities of a leave-one-case-out run
(``chosen_on_all`` of a variant). For a liver model, ``--liver-boundary`` writes the boundary
refinement settings of ``export.contract.LIVER_BOUNDARY``. ``--tiles`` makes the graph's spatial
axes dynamic and writes the tile settings of ``export.contract.TILES`` for the model's task, so the
runtime runs a whole region as one tile. Training depends on none of them, so they can be set
after training. This rewrites the metadata in the ONNX file and the card beside it (metadata and
sha256), and records the source in the provenance. ``--liver-loco`` copies the liver Dice of a
``benchmarks.liver_loco`` result into a liver model's card and leaves the model file as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx

from export.contract import LIVER_BOUNDARY, TILES
from export.model_card import liver_budget
from export.onnx_export import _save_atomic, free_spatial_axes
from mhp_edge.metadata import (
    METADATA_KEY,
    BoundarySpec,
    ModelMetadata,
    card_path_for,
    parse_metadata,
    sha256_of_file,
)


def set_postprocessing(
    model_path: Path,
    *,
    threshold: float,
    min_component_mm3: float,
    source: str,
    accuracy: dict | None = None,
) -> None:
    """Replace the threshold and minimum component volume of an exported model.

    Parameters
    ----------
    model_path : Path
        An ``.onnx`` file written by ``export.onnx_export.export_onnx``, with its card beside it.
    threshold : float
        Probability threshold, in (0, 1).
    min_component_mm3 : float
        Smallest tumour component kept, in mm^3, at least 0.
    source : str
        Where the values come from, stored in the provenance.
    accuracy : dict, optional
        Leave-one-case-out summary to store in the card under ``accuracy["tumour_stage_loco"]``.
    """
    accuracy_entries = None if accuracy is None else {"tumour_stage_loco": accuracy}
    _rewrite_metadata(
        model_path,
        {"threshold": threshold, "min_component_mm3": min_component_mm3},
        provenance_entry={"postprocessing_source": source},
        accuracy=accuracy_entries,
    )


def set_liver_boundary(model_path: Path, boundary: BoundarySpec | None) -> None:
    """Replace the boundary refinement settings of an exported liver model (None removes them)."""
    _rewrite_metadata(
        model_path,
        {"boundary": boundary},
        provenance_entry={"boundary_source": "export.contract.LIVER_BOUNDARY"},
    )


def set_tiles(model_path: Path) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Make an exported model take tiles of any shape: dynamic spatial axes and its task's tile settings.

    Returns
    -------
    tile_max_vox, tile_multiple_vox : tuples of 3 ints
        The settings written, from ``export.contract.TILES``.
    """
    model = onnx.load(str(model_path))
    properties = {entry.key: entry.value for entry in model.metadata_props}
    task = parse_metadata(properties.get(METADATA_KEY, "{}"), source=str(model_path)).task
    if task not in TILES:
        raise ValueError(
            f"{model_path}: no tile settings for {task} models. "
            f"export.contract.TILES covers {sorted(TILES)} models only."
        )
    tile_max_vox, tile_multiple_vox = TILES[task]
    _rewrite_metadata(
        model_path,
        {"tile_max_vox": tile_max_vox, "tile_multiple_vox": tile_multiple_vox},
        provenance_entry={"tile_source": "export.contract.TILES"},
        edit_graph=free_spatial_axes,
    )
    return tile_max_vox, tile_multiple_vox


def set_liver_accuracy(model_path: Path, results: Any, *, results_name: str) -> dict:
    """Store a liver leave-one-case-out result in a liver model's card, under ``accuracy["liver_loco"]``.

    Parameters
    ----------
    model_path : Path
        An exported liver model with its card beside it. The model file is not changed.
    results : dict
        The JSON written by ``benchmarks.liver_loco``.
    results_name : str
        The results file's name, stored as the entry's source.

    Returns
    -------
    dict
        The entry stored: source, command, commits, budget and settings of the folds, mean liver
        Dice and each case's.

    Raises
    ------
    ValueError
        If the card is not a liver model's, or ``results`` is not a liver leave-one-case-out
        result. The card is then left as it was.
    """
    card_path = card_path_for(Path(model_path))
    card = json.loads(card_path.read_text())
    task = card.get("metadata", {}).get("task")
    if task != "liver":
        raise ValueError(
            f"{card_path}: is the card of a {task} model. Give --liver-loco a liver model, such as "
            "models/liver_net.onnx."
        )
    entry = _liver_accuracy_entry(results, results_name)

    card.setdefault("accuracy", {})["liver_loco"] = entry
    _save_atomic((json.dumps(card, indent=2) + "\n").encode(), card_path)
    return entry


def _liver_accuracy_entry(results: Any, results_name: str) -> dict:
    """Check a ``benchmarks.liver_loco`` result and return the card entry made from it."""
    expected = f"{results_name}: is not a liver leave-one-case-out result of benchmarks.liver_loco"
    if not isinstance(results, dict) or results.get("task") != "liver":
        raise ValueError(f"{expected} (its task must be 'liver').")
    try:
        mean = results["summary"]["liver_dice"]
        per_case = {str(case["case"]): float(case["liver_dice"]) for case in results["cases"]}
        entry = {
            "source": results_name,
            "command": str(results["command"]),
            "commit": results.get("commit"),
            "budget_per_fold": liver_budget(results),
            "boundary": results.get("boundary"),
            "tiles": results.get("tiles"),
            "liver_dice": {"mean": float(mean["mean"]), "sd": float(mean["sd"]), "n": int(mean["n"])},
            "liver_dice_per_case": per_case,
        }
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{expected} (missing or invalid field: {err}).") from err
    if not per_case or len(per_case) != entry["liver_dice"]["n"]:
        raise ValueError(f"{expected} ({len(per_case)} cases against n = {entry['liver_dice']['n']}).")
    return entry


def _rewrite_metadata(
    model_path: Path,
    changes: dict,
    *,
    provenance_entry: dict,
    accuracy: dict | None = None,
    edit_graph: Callable[[onnx.ModelProto, ModelMetadata], None] | None = None,
) -> None:
    """Replace metadata fields of an exported model and update its card (metadata, sha256).

    ``edit_graph(model, metadata)`` changes the graph in place, with the new metadata, before
    the file is written.
    """
    model_path = Path(model_path)
    model = onnx.load(str(model_path))
    properties = {entry.key: entry for entry in model.metadata_props}
    if METADATA_KEY not in properties:
        raise ValueError(
            f"{model_path}: no {METADATA_KEY} metadata; export it with export.onnx_export first."
        )

    metadata = parse_metadata(properties[METADATA_KEY].value, source=str(model_path))
    metadata = replace(metadata, **changes, provenance={**metadata.provenance, **provenance_entry})
    # Parsing again runs the metadata checks on the new values before anything is written.
    parse_metadata(metadata.to_json(), source=str(model_path))
    if edit_graph is not None:
        edit_graph(model, metadata)
    properties[METADATA_KEY].value = metadata.to_json()
    _save_atomic(model.SerializeToString(), model_path)

    card_path = card_path_for(model_path)
    card = json.loads(card_path.read_text())
    card["metadata"] = json.loads(metadata.to_json())
    card["sha256"] = sha256_of_file(model_path)
    if accuracy is not None:
        card.setdefault("accuracy", {}).update(accuracy)
    _save_atomic((json.dumps(card, indent=2) + "\n").encode(), card_path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.postprocessing", description=__doc__.splitlines()[0]
    )
    parser.add_argument("model", type=Path, help="exported model (.onnx) with its card")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="results", type=Path, help="tumour_ablation JSON results")
    source.add_argument(
        "--liver-boundary", action="store_true", help="write LIVER_BOUNDARY into a liver model"
    )
    source.add_argument("--tiles", action="store_true", help="let the model take a whole region as one tile")
    source.add_argument("--liver-loco", type=Path, help="liver_loco JSON results to copy into a liver card")
    parser.add_argument("--variant", default="mhp-net", help="variant whose chosen values to use")
    arguments = parser.parse_args(argv)

    if arguments.liver_boundary:
        set_liver_boundary(arguments.model, LIVER_BOUNDARY)
        print(f"{arguments.model}: boundary refinement {LIVER_BOUNDARY}")
        return 0

    if arguments.liver_loco is not None:
        try:
            results = json.loads(arguments.liver_loco.read_text())
            entry = set_liver_accuracy(arguments.model, results, results_name=arguments.liver_loco.name)
        except OSError as err:
            parser.error(f"{err.filename}: cannot be read ({err.strerror}). Check the path.")
        except ValueError as err:
            parser.error(str(err))
        print(f"{arguments.model}: liver Dice {entry['liver_dice']['mean']:.3f} leave-one-case-out")
        return 0

    if arguments.tiles:
        try:
            tile_max_vox, _ = set_tiles(arguments.model)
        except ValueError as err:
            parser.error(str(err))
        print(f"{arguments.model}: tiles up to {tile_max_vox} voxels")
        return 0

    results = json.loads(arguments.results.read_text())
    if arguments.variant not in results.get("variants", {}):
        parser.error(
            f"{arguments.results} has no variant {arguments.variant!r}; it has "
            f"{sorted(results.get('variants', {}))}."
        )
    variant = results["variants"][arguments.variant]
    threshold, min_mm3 = variant["chosen_on_all"]
    source = f"{arguments.results.name}, variant {arguments.variant}: {results['command']}"
    accuracy = {"command": results["command"], **variant["summary"]}
    set_postprocessing(
        arguments.model, threshold=threshold, min_component_mm3=min_mm3, source=source, accuracy=accuracy
    )
    print(f"{arguments.model}: threshold {threshold:g}, minimum lesion {min_mm3:g} mm^3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
