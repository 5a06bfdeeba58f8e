"""Property-based tests: readers never fail with anything but InputImageError, windows always cover."""

import io

import numpy as np
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mhp_edge.errors import InputImageError
from mhp_edge.io import read_image
from mhp_edge.windows import sliding_window_probability
from phantoms import liver_phantom

SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
FUZZ_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _valid_file_bytes(suffix: str) -> bytes:
    image = liver_phantom(shape_zyx=(4, 6, 8))
    path = f"/tmp/mhp_edge_fuzz_seed{suffix}"
    sitk.WriteImage(image, path)
    with open(path, "rb") as stream:
        return stream.read()


SEEDS = {suffix: _valid_file_bytes(suffix) for suffix in SUFFIXES}


def _read_or_reject(tmp_path, name: str, data: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(data)
    try:
        image = read_image(path)
    except InputImageError as err:
        assert name in str(err)
        return
    assert image.GetDimension() == 3
    assert image.GetNumberOfComponentsPerPixel() == 1


@FUZZ_SETTINGS
@given(suffix=st.sampled_from(SUFFIXES), data=st.binary(max_size=2048))
def test_random_bytes_rejected_cleanly(tmp_path, suffix, data):
    _read_or_reject(tmp_path, f"scan{suffix}", data)


@FUZZ_SETTINGS
@given(
    suffix=st.sampled_from((".nii", ".nrrd", ".mha")),
    edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, 5000)),
)
def test_mutated_headers_rejected_cleanly(tmp_path, suffix, edits, cut):
    data = bytearray(SEEDS[suffix])
    for offset, value in edits:
        if offset < len(data):
            data[offset] = value
    if cut is not None:
        data = data[:cut]
    _read_or_reject(tmp_path, f"scan{suffix}", bytes(data))


@settings(max_examples=80, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 20), st.integers(1, 20), st.integers(1, 20)),
    patch=st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 8)),
    overlap=st.sampled_from((0.0, 0.25, 0.5, 0.75)),
)
def test_windows_cover_any_shape(shape, patch, overlap):
    def predict(batches):
        return np.zeros((batches[0].shape[0], 1, *patch), dtype=np.float32)

    probability = sliding_window_probability(
        [np.zeros((1, *shape), np.float32)], [0.0], predict, patch_shape_vox=patch, overlap=overlap
    )
    assert probability.shape == shape
    # Logit 0 everywhere blends to 0.5 only where a window covered the voxel.
    assert np.allclose(probability, 0.5)


def test_gzip_of_random_nifti_payload(tmp_path):
    buffer = io.BytesIO(b"\x1f\x8b\x08\x00" + bytes(100))
    _read_or_reject(tmp_path, "scan.nii.gz", buffer.getvalue())
