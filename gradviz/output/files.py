"""Writing reports to files: format by extension, checked before the analysis, written atomically.

A failed run leaves no half-written file: content goes to a temporary file in
the target's directory, which replaces the target only when complete.

Every writer takes the report and the :class:`~gradviz.output.diagram.RenderOptions`
and returns the file's bytes; :data:`NEEDS_GRAPHVIZ` names the formats that
run Graphviz's ``dot``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from gradviz.core.report import Report
from gradviz.errors import OutputError
from gradviz.output.diagram import GRAPHVIZ_FORMATS, RenderOptions
Writer = Callable[[Report, RenderOptions], bytes]


def _json(report: Report, options: RenderOptions) -> bytes:
    return (report.to_json() + "\n").encode()


def _dot(report: Report, options: RenderOptions) -> bytes:
    from gradviz.output.diagram import build_dot
    return build_dot(report, options).encode("utf-8")


def _graphviz(fmt: str) -> Writer:
    def write(report: Report, options: RenderOptions) -> bytes:
        from gradviz.output.diagram import build_dot, render, vector_options
        return render(build_dot(report, options if fmt == "png" else vector_options(options)), fmt)

    return write


def _html(report: Report, options: RenderOptions) -> bytes:
    from gradviz.output.html import build_html
    return build_html(report, options).encode("utf-8")


def _graphml(report: Report, options: RenderOptions) -> bytes:
    from gradviz.output.graphml import to_graphml
    return to_graphml(report)


#: format name -> writer.
WRITERS: dict[str, Writer] = {
    "json": _json,
    "dot": _dot,
    "html": _html,
    "graphml": _graphml,
    **{fmt: _graphviz(fmt) for fmt in GRAPHVIZ_FORMATS},
}
#: the formats that need Graphviz's dot program (the HTML report only embeds a diagram when it is there)
NEEDS_GRAPHVIZ = frozenset(GRAPHVIZ_FORMATS)


def formats() -> list[str]:
    """The output formats, by name."""
    return sorted(WRITERS)


def format_of(path: str | Path, override: str | None = None) -> str:
    """The format to write ``path`` in: ``override`` (``dot`` or ``.dot`` alike), else the extension.

    Example:
        >>> format_of("out/report.JSON")
        'json'
        >>> format_of("flow.txt", ".dot"), format_of("flow.txt", "DOT")
        ('dot', 'dot')

    Raises:
        OutputError: the format is not known.
    """
    if not override and Path(path).is_dir():  # say so, rather than "unknown extension"
        raise OutputError(f"output path {path} is a directory; give a file name such as {Path(path) / 'report.json'}")
    suffix = Path(path).suffix
    name = (override.strip().removeprefix(".") if override else suffix.lstrip(".")).lower()
    if name not in formats():
        valid = ", ".join("." + f for f in formats())
        if override:
            raise OutputError(
                f"unknown output format (--format {override!r}); valid: {', '.join(formats())} (or {valid})"
            )
        if not suffix:
            raise OutputError(f"output path {str(path)!r} has no extension to pick the format from; valid: {valid}")
        raise OutputError(f"unknown output format {suffix!r} (extension of {str(path)!r}); valid: {valid}")
    return name


def check_target(path: str | Path) -> Path:
    """Fail early when ``path`` cannot be written, before any work is done.

    Raises:
        OutputError: its directory is missing or not writable, or it is a directory.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise OutputError(f"output path {target} is a directory; give a file name")
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"cannot write {target}: {parent} is not a directory")
    if not parent.is_dir():
        raise OutputError(f"cannot write {target}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise OutputError(f"cannot write {target}: permission denied")
    return target


def prepare(path: str | Path, fmt: str | None = None) -> str:
    """Every check a target gets before the (slow) analysis: format, Graphviz, writability.

    Returns:
        The format the file will be written in.

    Raises:
        OutputError: unknown format or an unwritable path.
        GraphvizMissingError: the format needs ``dot`` and it is not installed.
    """
    from gradviz.output.diagram import require_dot
    name = format_of(path, fmt)
    if name in NEEDS_GRAPHVIZ:
        require_dot()
    check_target(path)
    return name


def write_bytes(path: str | Path, content: bytes) -> Path:
    """Write ``content`` to ``path`` atomically.

    Raises:
        OutputError: the file cannot be written.
    """
    target = check_target(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            if target.exists():
                os.chmod(tmp, target.stat().st_mode & 0o777)
            else:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise OutputError(f"cannot write {target}: {e.strerror or e}") from e
    return target


def write(report: Report, path: str | Path, fmt: str | None = None, options: RenderOptions | None = None) -> Path:
    """Write ``report`` to ``path`` in the format its extension (or ``fmt``) names.

    Args:
        report: the analysis.
        path: the file to write.
        fmt: a format overriding the extension.
        options: how to draw diagrams (default :class:`~gradviz.output.diagram.RenderOptions`).

    Raises:
        OutputError: unknown format or the file cannot be written.
        GraphvizMissingError: the format needs Graphviz's dot and it is not installed.
    """
    name = format_of(path, fmt)
    return write_bytes(path, WRITERS[name](report, options or RenderOptions()))
