"""Exception hierarchy of mhp-edge.

Only the command line turns these into exit codes (see ``mhp_edge.cli``).
"""


class MhpEdgeError(Exception):
    """Base class of every error that mhp-edge raises on purpose."""


class InputImageError(MhpEdgeError):
    """The input scan or mask cannot be read or is not a usable CT volume."""


class LiverMaskError(InputImageError):
    """The given liver mask does not fit the scan (another grid, or values that are not a mask)."""


class OutputError(MhpEdgeError):
    """The output cannot be written where the caller asked."""


class ModelError(MhpEdgeError):
    """A model file is missing, corrupt, or its metadata does not match its graph."""


class ConfigurationError(MhpEdgeError):
    """An option has an invalid value."""
