"""Model loading: the card checksum, the metadata contract and the graph checks."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from export.contract import LIVER_BOUNDARY
from mhp_edge.errors import ModelError
from mhp_edge.metadata import METADATA_KEY, card_path_for, parse_metadata
from mhp_edge.model import available_cpu_count, load_model
from model_factory import make_metadata, update_card_checksum, write_linear_model


def test_valid_model_loads_and_predicts(tmp_path):
    path = write_linear_model(tmp_path, "tumour.onnx", make_metadata("tumour"))
    model = load_model(path, threads=1)
    ct = np.ones((2, 1, 8, 16, 16), dtype=np.float32)
    logits = model.predict([ct, ct])
    assert logits.shape == (2, 1, 8, 16, 16)
    assert np.allclose(logits, 4.0)
    assert model.metadata.hessian.scales_mm == (3.0, 6.0)


def test_metadata_round_trip():
    metadata = make_metadata("tumour")
    assert parse_metadata(metadata.to_json(), source="memory") == metadata


def test_liver_median_round_trip():
    metadata = make_metadata("tumour", liver_median_hu=100.0)
    assert parse_metadata(metadata.to_json(), source="memory") == metadata
    assert "liver_median_hu" not in make_metadata("tumour").to_json()


@pytest.mark.parametrize(
    ("liver_median_hu", "message"),
    [(1e6, "inside hu_clip"), (-250.0, "inside hu_clip"), (220.0, "inside hessian hu_clip")],
)
def test_liver_median_outside_clip_rejected(liver_median_hu, message):
    document = json.loads(make_metadata("tumour").to_json())
    document["liver_median_hu"] = liver_median_hu
    with pytest.raises(ModelError, match=message):
        parse_metadata(json.dumps(document), source="model.onnx")


def test_liver_boundary_round_trip():
    metadata = make_metadata("liver", boundary=LIVER_BOUNDARY)
    assert parse_metadata(metadata.to_json(), source="memory") == metadata


def test_metadata_without_boundary_key_still_loads():
    # Models exported before the boundary refinement have no "boundary" key.
    document = json.loads(make_metadata("liver").to_json())
    del document["boundary"]
    assert parse_metadata(json.dumps(document), source="old.onnx").boundary is None


def test_metadata_schema_1_loads_and_3_is_rejected():
    document = json.loads(make_metadata("tumour").to_json())
    del document["hessian"]["context_mm"]
    del document["hessian"]["pyramid_min_sigma_vox"]
    document["schema_version"] = 1
    assert parse_metadata(json.dumps(document), source="old.onnx").hessian.pyramid_min_sigma_vox == 4.0

    document["schema_version"] = 3
    with pytest.raises(ModelError, match="schema_version is 3, this mhp-edge reads 1, 2"):
        parse_metadata(json.dumps(document), source="new.onnx")


def test_metadata_without_hessian_context_reads_the_crop_alone():
    # Tumour models exported before the Hessian read context around the crop have no
    # "context_mm" key.
    document = json.loads(make_metadata("tumour").to_json())
    del document["hessian"]["context_mm"]
    assert parse_metadata(json.dumps(document), source="old.onnx").hessian.context_mm == 0.0


@pytest.mark.parametrize(
    ("value", "message"), [(-1.0, "context_mm is -1.0"), (float("inf"), "context_mm must be finite")]
)
def test_invalid_hessian_context_rejected(value, message):
    document = json.loads(make_metadata("tumour").to_json())
    document["hessian"]["context_mm"] = value
    with pytest.raises(ModelError, match=message):
        parse_metadata(json.dumps(document), source="model.onnx")


@pytest.mark.parametrize(
    ("task", "changes", "message"),
    [
        ("tumour", {}, "only liver models take boundary settings"),
        ("liver", {"reach_mm": 0.0}, "reach_mm"),
        ("liver", {"grid_mm": -1.0}, "grid_mm"),
        ("liver", {"grid_mm": float("inf")}, "boundary grid_mm must be finite"),
        ("liver", {"reach_mm": float("nan")}, "boundary reach_mm must be finite"),
        ("liver", {"core_percentiles": [95.0, 5.0]}, "core_percentiles"),
        ("liver", {"tissue_hu": [300.0, -30.0]}, "tissue_hu"),
    ],
)
def test_inconsistent_boundary_rejected(task, changes, message):
    document = json.loads(make_metadata(task, boundary=LIVER_BOUNDARY).to_json())
    document["boundary"].update(changes)
    with pytest.raises(ModelError, match=message):
        parse_metadata(json.dumps(document), source="model.onnx")


def test_changed_file_rejected_by_checksum(tmp_path):
    path = write_linear_model(tmp_path, "liver.onnx", make_metadata("liver"))
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelError, match="sha256 .* differs"):
        load_model(path, threads=1)


def test_truncated_file_rejected(tmp_path):
    path = write_linear_model(tmp_path, "liver.onnx", make_metadata("liver"))
    data = path.read_bytes()[:200]
    path.write_bytes(data)
    update_card_checksum(path)
    with pytest.raises(ModelError, match="liver.onnx"):
        load_model(path, threads=1)


def test_missing_card_rejected(tmp_path):
    path = write_linear_model(tmp_path, "liver.onnx", make_metadata("liver"))
    card_path_for(path).unlink()
    with pytest.raises(ModelError, match="card not found"):
        load_model(path, threads=1)


def test_missing_metadata_rejected(tmp_path):
    path = write_linear_model(tmp_path, "liver.onnx", make_metadata("liver"), with_metadata=False)
    with pytest.raises(ModelError, match=f"no '{METADATA_KEY}' metadata"):
        load_model(path, threads=1)


def test_input_names_mismatch_rejected(tmp_path):
    path = write_linear_model(
        tmp_path, "tumour.onnx", make_metadata("tumour"), graph_input_names=["ct", "enhanced"]
    )
    with pytest.raises(ModelError, match="graph inputs"):
        load_model(path, threads=1)


def test_patch_shape_mismatch_rejected(tmp_path):
    metadata = make_metadata("liver", patch_shape_vox=(8, 16, 16))
    path = write_linear_model(tmp_path, "liver.onnx", metadata)
    model = onnx.load(str(path))
    wrong = make_metadata("liver", patch_shape_vox=(8, 16, 32))
    model.metadata_props[0].value = wrong.to_json()
    onnx.save(model, str(path))
    update_card_checksum(path)
    with pytest.raises(ModelError, match="metadata patch is 32"):
        load_model(path, threads=1)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"threshold": 1.5}, "threshold"),
        ({"hu_std": 0.0}, "hu_std"),
        ({"task": "kidney"}, "task"),
        ({"overlap": 1.0}, "overlap"),
        ({"hu_std": float("nan")}, "hu_std must be finite"),
        ({"tile_max_vox": [4, 16, 16]}, "at least patch_shape_vox"),
        ({"tile_max_vox": [16, 32, 32], "tile_multiple_vox": [8, 8, 5]}, "multiples of"),
        ({"liver_median_hu": 100.0}, "liver_median_hu applies to tumour models only"),
        ({"liver_median_hu": "NaN"}, "liver_median_hu must be finite"),
    ],
)
def test_inconsistent_metadata_rejected(changes, message):
    document = json.loads(make_metadata("liver").to_json())
    document.update(changes)
    with pytest.raises(ModelError, match=message):
        parse_metadata(json.dumps(document), source="model.onnx")


def test_tiled_metadata_fixed_graph_rejected(tmp_path):
    metadata = make_metadata("liver", tile_max_vox=(16, 32, 32), tile_multiple_vox=(8, 8, 8))
    path = write_linear_model(tmp_path, "liver.onnx", metadata)
    with pytest.raises(ModelError, match="Export the spatial axes as dynamic"):
        load_model(path, threads=1)


def test_metadata_missing_key_names_file():
    document = json.loads(make_metadata("liver").to_json())
    del document["spacing_zyx_mm"]
    with pytest.raises(ModelError, match="model.onnx: .*spacing_zyx_mm"):
        parse_metadata(json.dumps(document), source="model.onnx")


def test_external_data_rejected(tmp_path):
    path = write_linear_model(tmp_path, "liver.onnx", make_metadata("liver"))
    model = onnx.load(str(path))
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    onnx.save(model, str(path))
    update_card_checksum(path)
    with pytest.raises(ModelError, match="external file"):
        load_model(path, threads=1)


def test_cpu_count_positive():
    assert available_cpu_count() >= 1


def test_runtime_never_imports_torch():
    code = (
        "import sys, mhp_edge, mhp_edge.cli, mhp_edge.pipeline, mhp_edge.evaluate; "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_loading_a_model_sends_nothing(tmp_path):
    # strace records every socket call of a fresh interpreter that loads and runs a model. Its
    # environment lacks ORT_DISABLE_TELEMETRY, so only mhp_edge's own setting keeps it quiet.
    path = write_linear_model(tmp_path, "tumour.onnx", make_metadata("tumour"))
    code = (
        "import numpy as np; from mhp_edge.model import load_model; "
        f"m = load_model({str(path)!r}, threads=1); "
        "m.predict([np.ones((1, 1, 8, 16, 16), np.float32)] * 2)"
    )
    environment = {key: value for key, value in os.environ.items() if key != "ORT_DISABLE_TELEMETRY"}
    trace = tmp_path / "trace.txt"

    subprocess.run(
        ["strace", "-f", "-e", "trace=%network", "-o", str(trace), sys.executable, "-c", code],
        check=True,
        env=environment,
    )

    calls = [line for line in trace.read_text().splitlines() if "socket(" in line or "connect(" in line]
    assert calls == [], calls
