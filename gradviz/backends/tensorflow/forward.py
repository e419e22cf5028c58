"""The forward pass both TensorFlow passes differentiate: the model's outputs, then each loss.

One function, so that the compiled pass (:mod:`~gradviz.backends.tensorflow.gradient_pass`)
and the eager one (:mod:`~gradviz.backends.tensorflow.eager_pass`) differentiate exactly
the same computation: ``model.stateless_call`` (weights, BatchNorm statistics and seed
states are read, never written), each resolved loss on its output, cast to float32, and
the model's own losses (``model.losses``: regularizers, ``add_loss``) summed as one more term.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
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
) -> tuple[list[Any], Any, bool]:
    """One forward pass: the float32 value of every loss term, the model's new state, and whether it adds losses.

    Call it under a tape that watches ``weights``. The last value is the sum of
    ``model.losses`` when the model has any (the third result says so).
    """
    import tensorflow as tf

    from gradviz.model.keras_structure import to_model_inputs

    # in the model's declared structure: a dict with unsorted keys refuses a flat list
    y_pred, new_state, extra = model.stateless_call(
        weights, state, to_model_inputs(model, x), training=training, return_losses=True
    )
    named = model_outputs(output_names, y_pred)
    values = [
        tf.cast(loss.for_targets(tuple(ys[loss.output].shape))(ys[loss.output], named[loss.output]), tf.float32)
        for loss in losses
    ]
    if extra:
        values.append(tf.cast(tf.add_n([tf.reduce_sum(tf.cast(e, tf.float32)) for e in extra]), tf.float32))
    return values, new_state, bool(extra)
