"""Keep the terminal to what the user asked for: the report on stdout, one line per error on stderr.

TensorFlow's (and XLA's) native libraries write log lines straight to file descriptor 2
when they are loaded ("All log messages before absl::InitializeLog() ...",
oneDNN and CUDA notices), whatever ``TF_CPP_MIN_LOG_LEVEL`` says, and a
custom layer may ``print()``. Neither may reach the user's stdout or turn a
one-line error into six lines. This module owns those two guards; the CLI
uses them, ``--debug`` switches the first one off.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator


def import_keras_quietly(debug: bool = False) -> None:
    """Import Keras and its backend's array library (TensorFlow or JAX) with native stderr output discarded.

    Only the library Keras is set to (``KERAS_BACKEND``) is imported: on JAX,
    TensorFlow is never loaded. Also raises TensorFlow's native log threshold
    to fatal errors only (``TF_CPP_MIN_LOG_LEVEL=3``, unless the user set it):
    its remaining messages (e.g. "failed call to cuInit" on machines without
    a GPU) are not about the user's model. Python exceptions still propagate.
    With ``debug`` nothing is hidden.

    Raises:
        BackendError: the backend's array library is not installed.

    Example:
        >>> import_keras_quietly()
        >>> "keras" in sys.modules
        True
    """
    from gradviz.backends import import_keras

    if debug:
        import_keras()
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "keras" in sys.modules:
        return
    with native_stderr_discarded(), _matplotlib_hidden():
        import_keras()


#: the name this function had while TensorFlow was the only backend
import_tensorflow_quietly = import_keras_quietly


@contextlib.contextmanager
def _matplotlib_hidden() -> Iterator[None]:
    """Keep Keras's import from importing matplotlib, which gradviz's CLI needs only for sweep plots.

    ``keras.src.visualization`` tries ``import matplotlib.pyplot`` at import time and
    falls back when it fails (its image-gallery helpers, which gradviz never calls,
    then say matplotlib is missing); pyplot costs a few hundred milliseconds of every
    ``gradviz inspect``. Afterwards matplotlib imports normally (``gradviz weights -o
    plot.png`` still draws). Nothing is hidden when matplotlib is already imported.
    """
    if "matplotlib" in sys.modules:
        yield
        return
    sys.modules["matplotlib"] = None  # type: ignore[assignment]  # makes `import matplotlib...` fail
    try:
        yield
    finally:
        if sys.modules.get("matplotlib", 0) is None:
            del sys.modules["matplotlib"]


@contextlib.contextmanager
def native_stderr_discarded() -> Iterator[None]:
    """Point file descriptor 2 at a temporary file while the block runs.

    Only native code writes there directly; Python's streams are flushed
    before and after, so nothing of Python's own output is lost or reordered.
    When fd 2 cannot be duplicated (no real stderr), the block runs unchanged.
    """
    with tempfile.TemporaryFile() as sink, _descriptor_redirected(2, sink.fileno()):
        yield


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout while the block runs to stderr, keeping stdout for the report.

    Both levels: Python's ``sys.stdout`` (a custom layer's ``print``) and file
    descriptor 1 (native writers such as ``tf.print(..., output_stream=sys.stdout)``).

    Example:
        >>> import io
        >>> with contextlib.redirect_stderr(io.StringIO()) as err, stdout_to_stderr():
        ...     print("from a custom layer")
        >>> err.getvalue()
        'from a custom layer\\n'
    """
    with contextlib.redirect_stdout(sys.stderr), _descriptor_redirected(1, 2):
        yield


@contextlib.contextmanager
def _descriptor_redirected(source: int, target: int) -> Iterator[None]:
    """Point file descriptor ``source`` at ``target`` while the block runs (no-op when impossible)."""
    _flush_python_streams()
    try:
        saved = os.dup(source)
    except OSError:
        yield
        return
    try:
        os.dup2(target, source)
        try:
            yield
        finally:
            _flush_python_streams()
            os.dup2(saved, source)
    finally:
        os.close(saved)


def _flush_python_streams() -> None:
    """Flush Python's buffered text (current and original streams) before a descriptor changes."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()  # type: ignore[union-attr]
