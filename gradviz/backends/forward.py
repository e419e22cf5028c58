"""The forward pass every gradient pass differentiates, on any Keras backend: the model's outputs, then each loss.

One function, so that TensorFlow's compiled pass
(:mod:`~gradviz.backends.tensorflow.gradient_pass`), its eager one
(:mod:`~gradviz.backends.tensorflow.eager_pass`) and the JAX pass
(:mod:`~gradviz.backends.jax.gradient_pass`) differentiate exactly the same
computation: ``model.stateless_call`` (weights, BatchNorm statistics and seed
states are read, never written) with the model's declared input structure
(:func:`~gradviz.model.keras_structure.to_model_inputs`), each resolved loss
on its output, cast to float32, and the model's own losses (``model.losses``:
regularizers, ``add_loss``) summed as one more term. Written with
``keras.ops`` only: whatever the caller differentiates with (a
``tf.GradientTape`` around the call, ``jax.grad`` of a function calling it)
sees the ops of its own backend, and nothing here imports an array library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from gradviz.model.losses import ResolvedLoss


def model_outputs(output_names: Sequence[str], y_pred: Any) -> dict[str, Any]:
    """Name a model call's outputs.

    Example:
        >>> model_outputs(["C", "D"], [1, 2])
        {'C': 1, 'D': 2}
    """
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

    Differentiate it with respect to ``weights`` (TensorFlow: under a tape that watches
    them; JAX: inside ``jax.grad``). The last value is the sum of ``model.losses`` when
    the model has any (the third result says so).
    """
    from keras import ops

    from gradviz.model.keras_structure import to_model_inputs

    # in the model's declared structure: a dict with unsorted keys refuses a flat list
    y_pred, new_state, extra = model.stateless_call(
        weights, state, to_model_inputs(model, x), training=training, return_losses=True
    )
    named = model_outputs(output_names, y_pred)
    values = [
        ops.cast(loss.for_targets(tuple(ys[loss.output].shape))(ys[loss.output], named[loss.output]), "float32")
        for loss in losses
    ]
    if extra:
        total = ops.sum(ops.cast(extra[0], "float32"))
        for e in extra[1:]:  # in order, as tf.add_n did on TensorFlow
            total = total + ops.sum(ops.cast(e, "float32"))
        values.append(total)
    return values, new_state, bool(extra)
