"""The forward pass every gradient pass differentiates, on any Keras backend: the model's outputs, then each loss.

One function, so that TensorFlow's compiled pass (:mod:`~gradviz.backends.tensorflow.gradient_pass`),
its eager one (:mod:`~gradviz.backends.tensorflow.eager_pass`) and the JAX pass
(:mod:`~gradviz.backends.jax.gradient_pass`) differentiate exactly the same computation. The model is called statelessly, as ``model.stateless_call`` calls
it but entered through ``model(...)`` as Keras's training step enters it
(:func:`gradviz.model.keras_internals.call_collecting_losses`): weights, BatchNorm
statistics and seed states are read, never written. The losses, each a float32 scalar:

* each resolved loss on its output (the compiled losses);
* each endpoint layer's own ``add_loss`` terms, summed per layer, named after the graph
  node standing for the layer (``<layer>.add_loss`` when an output's loss has that name);
* the weight and activity regularizers summed into one term (last).

With ``loss_terms`` (a custom training step's ``fn(model, x, y) -> {name: scalar}``)
the function is called inside a ``keras.StatelessScope`` instead and its terms are the
losses; they replace the other three.

Written with ``keras.ops`` only: whatever the caller differentiates with (a
``tf.GradientTape`` around the call, ``jax.grad`` of a function calling it) sees the ops
of its own backend, and nothing here imports an array library.

Each compiled loss is called as Keras's ``CompileLoss`` calls it: ``loss(y, y_pred, sample_weight)``
with its output's sample weights (None when the output has none), so the weighting and the
loss's reduction (``sum_over_batch_size``: the weighted sum over the batch's size) are Keras's
own. The loss calls use ``keras.ops``, and :func:`batch_ranks` / :func:`_loss_fn` read only
NumPy shapes, so they do not depend on the array library. (A ``loss_terms`` function is
called with ``(model, x, y)`` only: the custom step weights its own terms.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple, Sequence

from gradviz.core.spec import ADD_LOSS, REGULARIZATION_LOSS, LossTerm, regularization_name
from gradviz.errors import LossSpecError, NoLossError

if TYPE_CHECKING:
    from gradviz.data import Batch
    from gradviz.model.losses import ResolvedLoss


class Forward(NamedTuple):
    """What one forward pass gives the backward passes.

    Attributes:
        values: the float32 scalar of every loss, in the statistics' order: the resolved
            output losses, then the losses in ``found``.
        new_state: the model's non-trainable values after the call (never written back).
        found: the losses found in the call beyond the resolved ones (endpoint layers'
            ``add_loss`` terms, then the summed regularizers; or ``loss_terms``' terms).
        regularization: whether the last value is the summed regularizers.
    """

    values: list[Any]
    new_state: Any
    found: tuple[LossTerm, ...]
    regularization: bool


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
    sample_weights: Mapping[str, Any] | None = None,
    ranks: tuple[Any, ...] | None = None,
    *,
    source_names: Mapping[int, str] | None = None,
    loss_terms: Callable[..., Any] | None = None,
) -> Forward:
    """One forward pass: the float32 value of every loss, the model's new state, and the losses it found.

    Call it under a tape that watches ``weights``.

    Args:
        model: the model; nothing of it is written.
        weights: values for ``model.trainable_variables`` (tape-watched).
        state: values for ``model.non_trainable_variables`` (seeded random state included).
        x: the inputs, flat, in the model's input order.
        ys: the targets by output name.
        losses: the resolved output losses.
        output_names: the model's outputs, in order.
        training: the ``training`` argument of the call.
        sample_weights: per output, the weights its losses apply (``loss(y, y_pred, sample_weight)``,
            as ``CompileLoss`` calls them); an output missing here is unweighted.
        ranks: :func:`batch_ranks` of the batch, which records the variant of a ``crossentropy``
            loss its targets take (a compiled step gets it as a static argument); None: read the
            targets' shapes here.
        source_names: ``id(layer)`` -> the graph node naming the losses that layer adds;
            a layer not in it names them by its own name.
        loss_terms: ``fn(model, x, y) -> {name: scalar}`` replacing the model's own losses.

    Raises:
        NoLossError: no loss at all (none resolved, none added, no regularizer).
        LossSpecError: ``loss_terms`` returned something that is not ``{name: scalar}``.
    """
    if loss_terms is not None:
        forward = _custom_terms(model, weights, state, x, ys, loss_terms)
    else:
        import keras

        from gradviz.model.keras_internals import call_collecting_losses
        from gradviz.model.keras_structure import to_model_inputs

        # in the model's declared structure: a dict with unsorted keys refuses a flat list
        y_pred, new_state, collected = call_collecting_losses(
            model, weights, state, to_model_inputs(model, x), training=training
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
        taken = [loss.name for loss in losses]
        found, added, regularization = _model_terms(collected, taken, output_names, source_names or {})
        forward = Forward(values + added, new_state, found, regularization)
    if not forward.values:
        raise NoLossError("the model has no loss to analyse")
    return forward


def _model_terms(
    collected: Sequence[Any], taken: Sequence[str], output_names: Sequence[str], source_names: Mapping[int, str]
) -> tuple[tuple[LossTerm, ...], list[Any], bool]:
    """The losses the model added in the call: one per endpoint layer, then the regularizers summed.

    Returns:
        ``(terms, float32 values, whether the last is the regularizers)``.
    """
    groups: dict[str, list[Any]] = {}
    anchors: dict[str, str | None] = {}
    regularizers = []
    for item in collected:
        if item.regularizer:
            regularizers.append(item.value)
            continue
        node = source_names.get(id(item.layer))
        base = node or str(getattr(item.layer, "name", "add_loss"))
        name = f"{base}.add_loss" if base in taken else base
        groups.setdefault(name, []).append(item.value)
        anchors[name] = node
    found = [LossTerm(name, anchors[name], ADD_LOSS, 1.0) for name in groups]
    values = [_summed(tensors) for tensors in groups.values()]
    if regularizers:
        found.append(LossTerm(regularization_name(list(output_names) + list(groups)), None, REGULARIZATION_LOSS, 1.0))
        values.append(_summed(regularizers))
    return tuple(found), values, bool(regularizers)


def _summed(tensors: Sequence[Any]) -> Any:
    """Added losses summed as Keras's ``compute_loss`` sums them (each reduced to a scalar first), in float32."""
    import keras

    return keras.ops.sum(keras.ops.stack([keras.ops.sum(keras.ops.cast(t, "float32")) for t in tensors]))


def _custom_terms(
    model: Any, weights: list[Any], state: list[Any], x: list[Any], ys: dict[str, Any], loss_terms: Callable[..., Any]
) -> Forward:
    """The terms of ``loss_terms(model, x, y)``, called statelessly with ``weights`` and ``state``.

    Inside a ``keras.StatelessScope`` mapping every variable to the tape-watched value, the
    function calls the model as a training step does: gradients flow to ``weights``, and
    whatever it updates (seed states, BatchNorm statistics) lands in the scope, not the model.
    ``x`` reaches it as ``fit()`` would hand it over: in the model's declared input structure
    when the inputs match it, else one array or the list.
    """
    import keras

    from gradviz.model.keras_structure import to_model_inputs

    mapping = list(zip(model.trainable_variables, weights)) + list(zip(model.non_trainable_variables, state))
    try:
        x_arg: Any = to_model_inputs(model, x) if x else None
    except ValueError:  # the function's own inputs, not the model's: as they are
        x_arg = x[0] if len(x) == 1 else list(x)
    y_arg: Any = None if not ys else (next(iter(ys.values())) if len(ys) == 1 else dict(ys))
    with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
        terms = loss_terms(model, x_arg, y_arg)
    fn_name = str(getattr(loss_terms, "__name__", "loss_terms"))
    if not isinstance(terms, Mapping) or not terms:
        raise LossSpecError(
            f"loss_terms function {fn_name} returned {type(terms).__name__}; it must return a non-empty "
            "dict {name: scalar loss}"
        )
    values = []
    for name, value in terms.items():
        if not isinstance(name, str) or not name:
            raise LossSpecError(f"loss_terms function {fn_name}: term names must be non-empty strings, got {name!r}")
        tensor = keras.ops.convert_to_tensor(value)
        if _rank(tensor) not in (None, 0):
            raise LossSpecError(
                f"loss_terms function {fn_name}: term '{name}' has shape {tuple(tensor.shape)}; a loss term is a "
                "scalar (reduce it, e.g. with keras.ops.mean)"
            )
        values.append(keras.ops.cast(tensor, "float32"))
    found = tuple(LossTerm(name, None, fn_name, 1.0) for name in terms)
    new_state = [scope.get_current_value(v) for v in model.non_trainable_variables]
    return Forward(values, new_state, found, False)


def _rank(tensor: Any) -> int | None:
    """The number of dimensions, or None where a trace does not know it."""
    try:
        return len(tensor.shape)
    except (TypeError, ValueError):
        return None


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
