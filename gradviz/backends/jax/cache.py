"""JAX's persistent compilation cache for gradviz's pass: on by default, in a user cache directory.

On JAX the first answer is dominated by XLA compiling the pass (seconds for a
small model, tens of seconds for a ResNet). JAX can keep compiled executables
on disk, keyed by the program, the compile options and the JAX version, so the
second ``gradviz inspect`` of the same architecture (same input shapes and loss
set) loads the executable instead of compiling it again. Tracing still runs in
every process; only XLA's compilation is saved.

JAX's cache directory is a process-wide setting. gradviz sets it only when
nobody has (``jax_compilation_cache_dir`` unset; otherwise the user's
directory is used as it is), and then to ``$GRADVIZ_CACHE_DIR``, or
``$XDG_CACHE_HOME/gradviz/jax``, or ``~/.cache/gradviz/jax``. Other programs
compiled in the same process then use that directory too, under JAX's own
rule (only compilations that took a second or more are written); gradviz's
own pass is written however quickly it compiled. ``compilation_cache=False``
(``prepare``), ``--no-compilation-cache`` (CLI) or
``GRADVIZ_COMPILATION_CACHE=0`` leave JAX's configuration alone.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

#: ``0``/``false``/``no``/``off`` switch the cache off when no option says otherwise
ENV_SWITCH = "GRADVIZ_COMPILATION_CACHE"
#: where gradviz keeps its JAX cache, overriding the default under the user's cache directory
ENV_DIR = "GRADVIZ_CACHE_DIR"
#: the event JAX records when a compilation is served from the persistent cache
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def wanted(option: bool | None) -> bool:
    """Whether the cache is on: the option if given, else the environment, else on.

    Example:
        >>> wanted(False), wanted(True)
        (False, True)
    """
    if option is not None:
        return option
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def default_dir() -> Path:
    """gradviz's JAX cache directory (``$GRADVIZ_CACHE_DIR``, else the user's cache directory + ``gradviz/jax``)."""
    explicit = os.environ.get(ENV_DIR)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "gradviz" / "jax"


def configure(enabled: bool) -> str | None:
    """Point JAX's persistent compilation cache at gradviz's directory unless one is set.

    Args:
        enabled: False leaves JAX's configuration as it is.

    Returns:
        The cache directory JAX now uses (the user's own, if they configured one), or None.
    """
    import jax

    current = getattr(jax.config, "jax_compilation_cache_dir", None)
    if current or not enabled:
        return str(current) if current else None
    path = default_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: compile every time, as without a cache
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    return str(path)


@contextlib.contextmanager
def compiling() -> Iterator[list[int]]:
    """Around one of gradviz's compilations: write it to the cache however fast it was; count hits.

    Yields a one-element list that holds, after the block, how many compilations in it
    were served from the cache. JAX's threshold (1 s of compile time) is lowered only in
    this thread and only for this block (a private JAX setting: without it, JAX's own
    threshold applies).
    """
    import jax

    hits = [0]

    def listen(event: str, **_: Any) -> None:
        if event == CACHE_HIT_EVENT:
            hits[0] += 1

    try:
        from jax._src import config as jax_config

        threshold: Any = jax_config.persistent_cache_min_compile_time_secs(0.0)
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - a JAX without the setting
        threshold = contextlib.nullcontext()
    jax.monitoring.register_event_listener(listen)
    try:
        with threshold:
            yield hits
    finally:
        jax.monitoring.unregister_event_listener(listen)
