"""Outputs: JSON, terminal text, HTML, GraphML, plots and the Graphviz diagram, from a report.

Nothing here imports TensorFlow or Keras: a report loaded back from JSON is drawn
exactly as the analysis that made it.
"""

from typing import Any

from gradviz.output.files import (
    check_target,
    format_of,
    formats,
    prepare,
    write,
    write_bytes,
)

__all__ = ["check_target", "format_of", "formats", "prepare", "write", "write_bytes"]

#: modules reachable as ``gradviz.output.<name>`` without importing them first
_MODULES = ("diagram", "files", "graphml", "html", "notebook", "text", "weights")


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        import importlib

        return importlib.import_module(f"gradviz.output.{name}")
    raise AttributeError(f"module 'gradviz.output' has no attribute {name!r}")
