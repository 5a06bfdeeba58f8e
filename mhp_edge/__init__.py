"""mhp-edge: CPU-only liver and liver-tumour segmentation of contrast-enhanced CT.

Research use only, not for clinical use. The runtime needs numpy, scipy, SimpleITK and
onnxruntime; it never imports torch.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mhp-edge")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
