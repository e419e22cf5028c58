"""gradviz: which layers each loss of a multi-loss Keras model really trains.

Example:
    >>> import gradviz
    >>> callable(gradviz.analyze)
    True
"""

from __future__ import annotations

from gradviz.analysis import Finding, Report
from gradviz.api import analyze
from gradviz.errors import GradvizError

__all__ = ["Finding", "GradvizError", "Report", "analyze"]
__version__ = "0.1.0"
