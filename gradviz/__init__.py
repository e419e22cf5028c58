"""gradviz: which layers each loss of a multi-loss Keras model really trains.

The public names are imported lazily, so ``gradviz --help`` stays instant
(no NumPy, networkx or TensorFlow until a command needs them). The
sub-packages (``gradviz.output``, ``gradviz.core``, ...) are attributes too,
imported on first use.

Example:
    >>> import gradviz
    >>> callable(gradviz.analyze), callable(gradviz.prepare)
    (True, True)
    >>> gradviz.RenderOptions(compact=True).compact
    True
    >>> callable(gradviz.output.write)
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradviz.errors import GradvizError

if TYPE_CHECKING:
    from gradviz import backends, core, data, model, output, session
    from gradviz.core.findings import Thresholds
    from gradviz.core.report import Finding, Report
    from gradviz.output.diagram import RenderOptions
    from gradviz.session import Session, analyze, prepare

__all__ = ["Finding", "GradvizError", "RenderOptions", "Report", "Session", "Thresholds", "analyze", "prepare"]
#: the one source of the version (setup.cfg reads it)
__version__ = "0.1.0"

_LAZY = {
    "analyze": "gradviz.session",
    "prepare": "gradviz.session",
    "Session": "gradviz.session",
    "Report": "gradviz.core.report",
    "Finding": "gradviz.core.report",
    "Thresholds": "gradviz.core.findings",
    "RenderOptions": "gradviz.output.diagram",
}
#: sub-packages and modules reachable as ``gradviz.<name>`` without importing them first
_SUBMODULES = ("backends", "callbacks", "core", "data", "model", "output", "session")


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"gradviz.{name}")
    raise AttributeError(f"module 'gradviz' has no attribute {name!r}")
