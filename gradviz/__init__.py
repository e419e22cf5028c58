"""gradviz: which layers each loss of a multi-loss Keras model really trains.

The public names are imported lazily, so ``gradviz --help`` stays instant
(no NumPy, networkx or TensorFlow until a command needs them). The submodules
the README uses (``gradviz.render``, ``gradviz.html``, ``gradviz.output``,
``gradviz.weighting``, ...) are attributes too, imported on first use.

Example:
    >>> import gradviz
    >>> callable(gradviz.analyze)
    True
    >>> gradviz.RenderOptions(compact=True).compact
    True
    >>> callable(gradviz.output.write)
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradviz.errors import GradvizError

if TYPE_CHECKING:
    from gradviz import analysis, graphml, html, output, render, report, weighting
    from gradviz.analysis import Finding, Report
    from gradviz.api import analyze
    from gradviz.render import RenderOptions

__all__ = ["Finding", "GradvizError", "RenderOptions", "Report", "analyze"]
__version__ = "0.1.0"

_LAZY = {
    "analyze": "gradviz.api",
    "Report": "gradviz.analysis",
    "Finding": "gradviz.analysis",
    "RenderOptions": "gradviz.render",
}
#: submodules reachable as ``gradviz.<name>`` without importing them first (``import gradviz`` stays light)
_SUBMODULES = ("analysis", "graphml", "html", "output", "render", "report", "weighting")


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"gradviz.{name}")
    raise AttributeError(f"module 'gradviz' has no attribute {name!r}")
