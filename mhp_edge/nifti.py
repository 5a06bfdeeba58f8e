"""Checks on NIfTI-1 files that ITK's reader does not make.

ITK's NIfTI reader fills a truncated file with zeros and reads NaN and infinite voxels as 0, which
is soft tissue in HU. ``inspect_nifti`` streams the file once, decompressing ``.nii.gz``. It
checks that the gzip stream is complete and that the voxel data is as long as the header
declares. It also returns the flat indices of non-finite voxels, so that the caller can restore
them. ITK also reads a corrupt gzip stream without an error, so this pass is the only check of
its CRC. ISA-L decompresses: 0.18 s for the 32 MB ircadb_01 file, against 0.47 s with zlib.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from isal import igzip, isal_zlib

from mhp_edge.errors import InputImageError

_HEADER_BYTES = 348
_CHUNK_BYTES = 1 << 22
# NIfTI-1 datatype codes of the floating-point types.
_FLOAT_DATATYPES = {16: np.float32, 64: np.float64}


@dataclass(frozen=True)
class NiftiInspection:
    """Findings of one pass over a NIfTI file.

    Attributes
    ----------
    non_finite_indices : ndarray of int64
        Flat indices (x fastest, as stored) of NaN or infinite voxels; empty for integer data.
    version : int
        NIfTI version from the header size: 1, or 2 (whose voxels are not inspected).
    """

    non_finite_indices: np.ndarray
    version: int = 1


def inspect_nifti(path: Path) -> NiftiInspection | None:
    """Check a ``.nii`` or ``.nii.gz`` file's length and find its non-finite voxels.

    Returns None for files that are not NIfTI at all, and an inspection with ``version`` 2 and no
    voxel checks for NIfTI-2; the reader then reports them.

    Raises
    ------
    InputImageError
        If the gzip stream is truncated or corrupt, or the voxel data is shorter than the header
        promises.
    """
    compressed = path.name.lower().endswith(".gz")
    try:
        with igzip.open(path, "rb") if compressed else open(path, "rb") as stream:
            header = stream.read(_HEADER_BYTES)
            if _is_nifti2(header):
                return NiftiInspection(np.zeros(0, dtype=np.int64), version=2)
            layout = _parse_header(header)
            if layout is None:
                _drain(stream)
                return None
            expected_bytes, offset, dtype = layout
            stream.read(max(0, offset - _HEADER_BYTES))
            found_bytes, non_finite = _scan_voxels(stream, dtype)
    except PermissionError as err:
        raise InputImageError(f"{path}: permission denied ({err}). Check the file's permissions.") from err
    except gzip.BadGzipFile as err:
        if str(err).startswith("Not a gzipped file"):
            raise InputImageError(
                f"{path}: not gzip data, although the name ends in .gz. If it is an uncompressed "
                "NIfTI file, rename it to .nii."
            ) from err
        raise InputImageError(
            f"{path}: the gzip data is truncated or corrupt ({err}). Copy or export the file again."
        ) from err
    except (EOFError, OSError, zlib.error, isal_zlib.error) as err:
        raise InputImageError(
            f"{path}: the gzip data is truncated or corrupt ({err}). Copy or export the file again."
        ) from err

    if found_bytes < expected_bytes:
        raise InputImageError(
            f"{path}: the file is truncated: the header describes {expected_bytes} bytes of voxel "
            f"data, the file holds {found_bytes}. Copy or export the file again."
        )
    return NiftiInspection(non_finite)


def _is_nifti2(header: bytes) -> bool:
    """Return True for a NIfTI-2 header: size 540 in either byte order, then the magic n+2 or ni2."""
    sizes = ((540).to_bytes(4, "little"), (540).to_bytes(4, "big"))
    return header[:4] in sizes and header[4:7] in (b"n+2", b"ni2")


def _parse_header(header: bytes) -> tuple[int, int, np.dtype | None] | None:
    """Return (voxel data bytes, data offset, float dtype or None) of a NIfTI-1 header."""
    if len(header) < _HEADER_BYTES:
        return None
    for order in ("<", ">"):
        if np.frombuffer(header[0:4], dtype=f"{order}i4")[0] == _HEADER_BYTES:
            break
    else:
        return None
    if header[344:347] not in (b"n+1", b"ni1"):
        return None

    dims = np.frombuffer(header[40:56], dtype=f"{order}i2")
    datatype = int(np.frombuffer(header[70:72], dtype=f"{order}i2")[0])
    bits_per_voxel = int(np.frombuffer(header[72:74], dtype=f"{order}i2")[0])
    offset = int(np.frombuffer(header[108:112], dtype=f"{order}f4")[0])
    rank = int(dims[0])
    if not 1 <= rank <= 7 or bits_per_voxel <= 0 or np.any(dims[1 : rank + 1] < 1):
        return None
    voxels = int(np.prod(dims[1 : rank + 1].astype(np.int64)))
    float_type = _FLOAT_DATATYPES.get(datatype)
    dtype = np.dtype(float_type).newbyteorder(order) if float_type is not None else None
    return voxels * bits_per_voxel // 8, max(offset, _HEADER_BYTES), dtype


def _scan_voxels(stream, dtype: np.dtype | None) -> tuple[int, np.ndarray]:
    """Read the voxel data to its end; return its length and the flat indices of non-finite values."""
    found_bytes = 0
    leftover = b""
    non_finite = []
    while True:
        chunk = stream.read(_CHUNK_BYTES)
        if not chunk:
            break
        found_bytes += len(chunk)
        if dtype is None:
            continue
        data = leftover + chunk
        usable = len(data) - len(data) % dtype.itemsize
        values = np.frombuffer(data[:usable], dtype=dtype)
        first_index = (found_bytes - len(chunk) - len(leftover)) // dtype.itemsize
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            non_finite.append(bad.astype(np.int64) + first_index)
        leftover = data[usable:]
    indices = np.concatenate(non_finite) if non_finite else np.zeros(0, dtype=np.int64)
    return found_bytes, indices


def _drain(stream) -> None:
    while stream.read(_CHUNK_BYTES):
        pass
