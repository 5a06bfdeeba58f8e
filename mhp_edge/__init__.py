"""mhp-edge: CPU-only liver and liver-tumour segmentation of contrast-enhanced CT.

Research use only, not for clinical use. The runtime needs numpy, scipy, SimpleITK and
onnxruntime; it never imports torch.
"""

import os
from importlib.metadata import PackageNotFoundError, version

# onnxruntime 1.32 ships a telemetry client. DNS lookups of its Microsoft host were seen under
# strace from long-running Dask worker processes here, and this variable turns the client off.
# Hospitals run mhp-edge on closed networks, so the runtime must send nothing anywhere. Every
# mhp_edge module is imported after this package file, so the variable is set before any of
# them imports onnxruntime. A caller's own value wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

try:
    __version__ = version("mhp-edge")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
