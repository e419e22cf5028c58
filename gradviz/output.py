"""Writing reports to files: format by extension, checked before the analysis, written atomically.

A failed run leaves no half-written file: content goes to a temporary file in
the target's directory, which replaces the target only when complete.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from gradviz.analysis import Report
from gradviz.errors import OutputError

Writer = Callable[[Report], bytes]


def _json(report: Report) -> bytes:
    return (report.to_json() + "\n").encode()


#: format name -> writer.
WRITERS: dict[str, Writer] = {"json": _json}


def formats() -> list[str]:
    """The output formats, by name."""
    return sorted(WRITERS)


def format_of(path: str | Path, override: str | None = None) -> str:
    """The format to write ``path`` in: ``override``, else the extension.

    Example:
        >>> format_of("out/report.JSON")
        'json'

    Raises:
        OutputError: the format is not known.
    """
    if not override and Path(path).is_dir():  # say so, rather than "unknown extension"
        raise OutputError(f"output path {path} is a directory; give a file name such as {Path(path) / 'report.json'}")
    suffix = Path(path).suffix
    name = (override or suffix.lstrip(".")).lower()
    if name not in formats():
        valid = ", ".join("." + f for f in formats())
        if override:
            raise OutputError(f"unknown output format (--format {override!r}); valid: {valid}")
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


def write(report: Report, path: str | Path, fmt: str | None = None) -> Path:
    """Write ``report`` to ``path`` in the format its extension (or ``fmt``) names.

    Raises:
        OutputError: unknown format or the file cannot be written.
    """
    name = format_of(path, fmt)
    return write_bytes(path, WRITERS[name](report))
