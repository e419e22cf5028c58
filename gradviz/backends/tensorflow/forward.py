"""The forward pass both TensorFlow passes differentiate: the model's outputs, then each loss.

One function, so that the compiled pass (:mod:`~gradviz.backends.tensorflow.gradient_pass`)
and the eager one (:mod:`~gradviz.backends.tensorflow.eager_pass`) differentiate exactly
the same computation: ``model.stateless_call`` (weights, BatchNorm statistics and seed
states are read, never written), each resolved loss on its output, cast to float32, and
the model's own losses (``model.losses``: regularizers, ``add_loss``) summed as one more term.

Each loss is called as Keras's ``CompileLoss`` calls it: ``loss(y, y_pred, sample_weight)``
with its output's sample weights (None when the output has none), so the weighting and the
loss's reduction (``sum_over_batch_size``: the weighted sum over the batch's size) are Keras's
own. The loss calls use ``keras.ops``, and :func:`batch_ranks` / :func:`_loss_fn` read only
NumPy shapes, so they do not depend on the array library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from gradviz.data import Batch
    from gradviz.model.losses import ResolvedLoss


def model_outputs(output_names: Sequence[str], y_pred: Any) -> dict[str, Any]:
    """Name a model call's outputs."""
    if isinstance(y_pred, dict):
        return {str(k): v for k, v in y_pred.items()}
    if isinstance(y_pred, (list, tuple)):
        return dict(zip(output_names, y_pred))
    return {output_names[0]: y_pred}


def loss_values(
    model: Any,
    weights: list[Any],
    state: list[Any],
    x: list[Any],
    ys: dict[str, Any],
    losses: Sequence[ResolvedLoss],
    output_names: Sequence[str],
    training: bool,
    sample_weights: Mapping[str, Any] | None = None,
    ranks: tuple[Any, ...] | None = None,
) -> tuple[list[Any], Any, bool]:
    """One forward pass: the float32 value of every loss term, the model's new state, and whether it adds losses.

    Call it under a tape that watches ``weights``. The last value is the sum of
    ``model.losses`` when the model has any (the third result says so).

    Args:
        sample_weights: per output, the weights its losses apply (``loss(y, y_pred, sample_weight)``,
            as ``CompileLoss`` calls them); an output missing here is unweighted.
        ranks: :func:`batch_ranks` of the batch, which records the variant of a ``crossentropy``
            loss its targets take (a compiled step gets it as a static argument); None: read the
            targets' shapes here.
    """
    import keras
    import tensorflow as tf

    from gradviz.model.keras_structure import to_model_inputs

    # in the model's declared structure: a dict with unsorted keys refuses a flat list
    y_pred, new_state, extra = model.stateless_call(
        weights, state, to_model_inputs(model, x), training=training, return_losses=True
    )
    named = model_outputs(output_names, y_pred)
    weights_of = sample_weights or {}
    values = [
        keras.ops.cast(
            _loss_fn(loss, ys[loss.output], None if ranks is None else ranks[1][i])(
                ys[loss.output], named[loss.output], weights_of.get(loss.output)
            ),
            "float32",
        )
        for i, loss in enumerate(losses)
    ]
    if extra:
        values.append(tf.cast(tf.add_n([tf.reduce_sum(tf.cast(e, tf.float32)) for e in extra]), tf.float32))
    return values, new_state, bool(extra)


def batch_ranks(losses: Sequence[ResolvedLoss], batch: Batch) -> tuple[Any, ...]:
    """The ranks of a batch's arrays and the loss variant its targets take, as Python values.

    The compiled steps take them as a static argument, so batches that differ in any of them
    get traces of their own: ``reduce_retracing`` would otherwise relax, say, class ids of shape
    ``(b,)`` and ``(b, 1)`` to a shape of unknown rank (which Keras's losses cannot read), or
    ids ``(b, 1)`` and one-hot ``(b, 3)`` to ``(b, None)``, hiding which variant
    ``crossentropy`` takes (:meth:`~gradviz.model.losses.ResolvedLoss.for_targets`).
    """
    per_loss = []
    for loss in losses:
        y = batch.y[loss.output]
        weight = batch.sample_weight.get(loss.output)
        sparse = loss.sparse_fn is not None and loss.for_targets(tuple(y.shape)) is loss.sparse_fn
        per_loss.append((y.ndim, -1 if weight is None else weight.ndim, sparse))
    return tuple(a.ndim for a in batch.x), tuple(per_loss)


def _loss_fn(loss: ResolvedLoss, y: Any, ranks: tuple[int, int, bool] | None) -> Any:
    """The Keras loss to call on targets ``y``: the variant ``ranks`` recorded, else as their shape says."""
    if ranks is None:
        return loss.for_targets(tuple(y.shape))
    return loss.sparse_fn if ranks[2] else loss.fn
