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

from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

from gradviz.errors import BackendError

if TYPE_CHECKING:
    from gradviz.core.spec import LossTerm
    from gradviz.core.stats import GradientStats, Progress
    from gradviz.data import BatchSource
    from gradviz.model.losses import ResolvedLoss

#: the Keras backends gradviz computes gradients on
SUPPORTED = ("tensorflow",)


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
    raise BackendError(
        f"Keras runs on the {name!r} backend; gradviz computes gradients on: {', '.join(SUPPORTED)} "
        "(set KERAS_BACKEND=tensorflow)"
    )
