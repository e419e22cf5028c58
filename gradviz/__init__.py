"""gradviz: which layers each loss of a multi-loss Keras model really trains.

The public names are imported lazily, so ``gradviz --help`` stays instant
(no NumPy, networkx or TensorFlow until a command needs them).

Example:
    >>> import gradviz
    >>> callable(gradviz.analyze)
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradviz.errors import GradvizError

if TYPE_CHECKING:
    from gradviz.analysis import Finding, Report
    from gradviz.api import analyze

__all__ = ["Finding", "GradvizError", "Report", "analyze"]
__version__ = "0.1.0"

_LAZY = {"analyze": "gradviz.api", "Report": "gradviz.analysis", "Finding": "gradviz.analysis"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gradviz' has no attribute {name!r}")
