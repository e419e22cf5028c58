"""Typed errors: every failure a user can cause is one of these.

Each error carries a one-line message that says what is wrong and what would
be valid, in the library's words: a parameter of the Python API is named in
backticks (```batch_size``, ```losses={OUTPUT: LOSS}```). The CLI turns the
message into one ``Error: ...`` line in its own words (those become
``--batch-size``, ``--loss OUTPUT=LOSS``: :func:`gradviz.cli.cli_words`) and an
exit code; the Python API lets them propagate.
"""

from __future__ import annotations


class GradvizError(Exception):
    """Base class of every error gradviz reports to its user.

    Example:
        >>> str(GradvizError("no such file: m.keras"))
        'no such file: m.keras'
    """

    exit_code = 1


class ModelLoadError(GradvizError):
    """The model file cannot be read or rebuilt."""


class UnsafeModelError(ModelLoadError):
    """The model file holds code (a Lambda layer) and --unsafe was not given."""


class LossSpecError(GradvizError):
    """The losses or loss weights to analyse are missing or invalid."""


class NoLossError(LossSpecError):
    """The model has no loss at all: none compiled or given, none added with ``add_loss``, no regularizer."""


class DataError(GradvizError):
    """The data file or the synthetic data cannot feed the model."""


class OutputError(GradvizError):
    """An output file cannot be written, or its format is unknown."""


class GraphvizMissingError(GradvizError):
    """Graphviz's ``dot`` program is needed but not installed."""


class BackendError(GradvizError):
    """Keras runs on an array library gradviz has no gradient backend for."""


class ReportError(GradvizError):
    """A saved JSON report cannot be read back: not JSON, not a gradviz report, another format version, damaged."""


class MonitorError(GradvizError):
    """The training monitor's options are invalid."""
