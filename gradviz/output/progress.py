"""Progress bars while batches stream: rich on a terminal's stderr, ``tqdm.auto`` in notebooks.

A progress callback is called with ``(batches done, batches)`` after every
batch (:data:`gradviz.core.stats.Progress`). ``progress="auto"`` (the default
of :func:`gradviz.analyze` and :meth:`gradviz.Session.run`) picks a bar for
where the code runs, and only when there is more than one batch:

* in a Jupyter kernel (Jupyter, JupyterLab, VS Code, Colab): ``tqdm.auto``, the
  progress bar notebooks know (a widget when ipywidgets is installed, a text bar
  otherwise); it disappears when the pass is done;
* on a terminal: a transient rich bar on stderr (stdout carries only reports);
* anywhere else (stderr piped to a file, CI logs, tests): no bar.
"""

from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from gradviz.errors import GradvizError

#: pick a bar for where the code runs
AUTO = "auto"

#: called with ``(batches done, batches)``
Callback = Callable[[int, int], None]


def environment() -> str:
    """Where a bar would go: ``notebook`` (a Jupyter kernel), ``terminal`` (stderr is a TTY) or ``none``."""
    if in_notebook():
        return "notebook"
    stream = sys.stderr
    return "terminal" if stream is not None and hasattr(stream, "isatty") and stream.isatty() else "none"


def in_notebook() -> bool:
    """Whether this Python runs in a Jupyter kernel (not a terminal IPython)."""
    zmqshell = sys.modules.get("ipykernel.zmqshell")
    ipython = sys.modules.get("IPython")
    if zmqshell is None or ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and isinstance(shell, zmqshell.ZMQInteractiveShell)


@contextmanager
def progress_for(progress: Callback | str | None, total: int, label: str = "gradients") -> Iterator[Callback | None]:
    """The callback a run calls: the caller's own, an automatic bar, or none.

    Args:
        progress: a callable, :data:`AUTO`, or None (no progress).
        total: how many batches the run reads.
        label: what the bar says it computes.

    Raises:
        GradvizError: ``progress`` is none of those.

    Example:
        >>> with progress_for(None, 10) as callback:
        ...     callback is None
        True
    """
    if progress is None:
        yield None
    elif callable(progress):
        yield progress
    elif progress == AUTO:
        with progress_bar(total, environment(), label) as callback:
            yield callback
    else:
        raise GradvizError(f"progress must be a callable, {AUTO!r} or None, got {progress!r}")


@contextmanager
def progress_bar(total: int, where: str, label: str = "gradients") -> Iterator[Callback | None]:
    """A bar over ``total`` batches in ``where`` (see :func:`environment`); none for a single batch.

    Example:
        >>> with progress_bar(5, "none") as callback:
        ...     callback is None
        True
    """
    if total <= 1 or where not in ("notebook", "terminal"):
        yield None
        return
    if where == "notebook":
        bar = _notebook_bar(total, label)
        try:
            yield lambda done, _total: bar.update(done - bar.n)
        finally:
            bar.close()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    rich_bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), transient=True)
    task = rich_bar.add_task(label, total=total)
    rich_bar.start()
    try:
        yield lambda done, _total: rich_bar.update(task, completed=done)
    finally:
        rich_bar.stop()


def _notebook_bar(total: int, label: str) -> Any:
    with warnings.catch_warnings():
        # without ipywidgets, tqdm.auto warns and falls back to its text bar: the fallback is fine as it is
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=label, unit="batch", leave=False, file=sys.stderr)
