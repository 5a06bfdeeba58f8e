"""Run the command line as ``python -m mhp_edge``, the same as ``mhp-edge``."""

from mhp_edge.cli import app

app(prog_name="mhp-edge")
