"""Gradient backends: per-loss gradients of a batch, reduced to per-variable statistics.

A backend is what :class:`gradviz.session.Session` runs data through. It
differentiates each resolved loss separately with the model's current weights
(statelessly: the model is never written) and reduces the K gradients of every
trainable variable to the statistics :class:`gradviz.core.stats.GradientStats`
holds: the K x K Gram matrix, max-abs and finiteness per variable, and which
gradients exist at all (no path: TensorFlow's None, kept apart from zero).
Everything downstream (analysis, findings, outputs) reads only those
statistics, so a backend for another array library plugs in here and nowhere
else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

from gradviz.errors import BackendError

if TYPE_CHECKING:
    from gradviz.core.spec import LossTerm
    from gradviz.core.stats import GradientStats, Progress
    from gradviz.data import BatchSource
    from gradviz.model.losses import ResolvedLoss

#: the Keras backends gradviz computes gradients on
SUPPORTED = ("tensorflow", "jax")
#: what to install for a Keras backend's array library
INSTALL_HINTS = {
    "jax": "pip install 'keras-gradviz[jax]' (JAX for the CPU)",
    "tensorflow": "pip install tensorflow",
    "torch": "pip install torch (gradviz has no PyTorch backend yet)",
}


def configured_backend() -> str:
    """The Keras backend this process will get, read as Keras reads it (without importing Keras).

    ``KERAS_BACKEND``, else ``backend`` in ``$KERAS_HOME/keras.json`` (default
    ``~/.keras/keras.json``), else ``tensorflow``.
    """
    name = os.environ.get("KERAS_BACKEND")
    if name:
        return name
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    try:
        config = json.loads((home / "keras.json").read_text())
    except (OSError, ValueError):
        return "tensorflow"
    backend = config.get("backend") if isinstance(config, dict) else None
    return str(backend) if backend else "tensorflow"


def library_name(backend: str) -> str:
    """The array library of a Keras backend, as people write it.

    Example:
        >>> library_name("jax"), library_name("tensorflow"), library_name("torch")
        ('JAX', 'TensorFlow', 'torch')
    """
    return {"jax": "JAX", "tensorflow": "TensorFlow"}.get(backend, backend)


def import_keras() -> Any:
    """Import Keras; a missing array library for the chosen backend is one clear error.

    Raises:
        BackendError: Keras's backend (``KERAS_BACKEND``) is not installed.
    """
    try:
        import keras
    except ImportError as e:
        name = configured_backend()
        hint = INSTALL_HINTS.get(name, f"install the {name!r} package")
        raise BackendError(
            f"Keras is set to the {name!r} backend (KERAS_BACKEND or keras.json) but cannot import it "
            f"({type(e).__name__}: {e}); install it with {hint}, or set KERAS_BACKEND to one of: "
            f"{', '.join(SUPPORTED)}"
        ) from e
    return keras


class GradientBackend(Protocol):
    """What a gradient backend does.

    Built once per model and loss set; :meth:`run` may be called many times and
    compiles (traces) at most once per input signature.
    """

    #: the array library, as the report's ``meta.backend`` names it
    name: str

    #: the losses the pass found beyond the resolved output losses, in the statistics' order
    #: (known after the first run): each endpoint layer's ``add_loss`` term, the summed
    #: regularizers (last), or the terms of a ``loss_terms`` function
    found_terms: tuple[LossTerm, ...]

    def run(self, data: BatchSource, progress: Progress | None = None, seed: int | None = None) -> GradientStats:
        """Per-loss gradient statistics of every trainable variable over ``data``'s batches.

        Each batch carries its per-output sample weights (:class:`~gradviz.data.Batch`); each
        loss is called with them as Keras's ``CompileLoss`` calls it.

        ``seed`` seeds the model's random layers (Dropout, noise, ``SeedGenerator`` states) inside
        the stateless call, never the model's own state; None runs them from the model's state.

        Raises:
            LossSpecError: a loss fails on the model's outputs.
            DataError: the data does not fit the model.
        """
        ...

    def tracing_count(self) -> int:
        """How many times the backend has compiled (traced) its pass."""
        ...

    @property
    def meta(self) -> dict[str, Any]:
        """What the report's ``meta`` says of this backend (at least ``backend``)."""
        ...


def create(
    model: Any,
    losses: Sequence[ResolvedLoss],
    output_names: Sequence[str],
    *,
    training: bool,
    mode: str,
    execution: str = "compiled",
    source_names: Mapping[int, str] | None = None,
    loss_terms: Callable[..., Any] | None = None,
    loss_scale: float | None = None,
    compilation_cache: bool | None = None,
) -> GradientBackend:
    """The gradient backend for the Keras backend the model runs on.

    Args:
        model: the model; it is not modified.
        losses: the resolved output losses.
        output_names: the model's outputs, in order.
        training: call the model in training mode.
        mode: ``mean-gradient`` or ``per-batch``.
        execution: ``compiled`` (traced once, fastest per batch) or ``eager`` (nothing
            traced; see :mod:`gradviz.backends.execution`).
        source_names: ``id(layer)`` -> the graph node naming the losses that layer adds.
        loss_terms: ``fn(model, x, y) -> {name: scalar}`` replacing the model's own losses.
        loss_scale: the mixed-precision loss scale, or None.
        compilation_cache: JAX only: keep compiled passes in JAX's persistent compilation
            cache (None: on unless ``GRADVIZ_COMPILATION_CACHE=0``). TensorFlow has none.

    Raises:
        BackendError: Keras runs on a backend gradviz does not support.
    """
    import keras

    name = keras.backend.backend()
    if name == "tensorflow":
        from gradviz.backends.tensorflow.gradient_pass import GradientPass

        if execution == "eager":
            from gradviz.backends.tensorflow.eager_pass import EagerPass

            return EagerPass(model, losses, output_names, training=training, mode=mode, source_names=source_names,
                             loss_terms=loss_terms, loss_scale=loss_scale)

        return GradientPass(model, losses, output_names, training=training, mode=mode, source_names=source_names,
                            loss_terms=loss_terms, loss_scale=loss_scale)
    if name == "jax":
        from gradviz.backends.jax.gradient_pass import GradientPass as JaxGradientPass

        return JaxGradientPass(model, losses, output_names, training=training, mode=mode, execution=execution,
                               compilation_cache=compilation_cache, source_names=source_names,
                               loss_terms=loss_terms, loss_scale=loss_scale)
    raise BackendError(
        f"Keras runs on the {name!r} backend; gradviz computes gradients on: {', '.join(SUPPORTED)} "
        "(set KERAS_BACKEND=tensorflow or KERAS_BACKEND=jax)"
    )
