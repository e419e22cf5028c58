"""Every use of Keras's private API gradviz relies on, in one file: the loss sources and fit-style data.

Keras does not say publicly which layer added which of ``model.losses``, how
``compile()`` will pack a ``loss`` / ``loss_weights`` pair, or how to call a
subclassed model's ``call()`` on symbolic inputs without leaving nodes behind;
and ``Model.fit`` turns the data it is given into batches through data adapters
that are not public either. The functions here answer that from ``keras.src``
and underscored attributes; ``tests/test_keras_internals.py`` pins what they rely
on for the Keras versions gradviz supports, so that a Keras upgrade breaks this
file and its test, not the rest of gradviz.

What is relied on (Keras 3.x, read in ``keras/src/layers/layer.py``,
``keras/src/trainers/compile_utils.py``, ``keras/src/utils/naming.py``):

* ``Layer.losses`` is ``layer._get_own_losses()`` for the model and each of
  ``model._flatten_layers(include_self=False)``, then
  ``model._get_regularization_losses()`` (the weight regularizers); inside a
  ``StatelessScope(collect_losses=True)`` the own losses are those of the
  scope's ``losses`` whose id the layer recorded in ``_loss_ids``.
* ``Layer.__call__`` adds an activity regularizer's loss with ``add_loss``
  right after calling ``layer.activity_regularizer`` on an output.
* ``CompileLoss(loss, loss_weights, output_names).build(y_true, y_pred)``
  raises what training raises for a loss config it cannot pack, and leaves
  ``_flat_losses`` (path, loss, weight, name) otherwise.
* Symbolic layer calls append to ``_inbound_nodes`` / ``_outbound_nodes``, and
  auto-named objects count in the global ``object_name_uids``.

``Model.fit`` turns whatever it is given (NumPy arrays and lists or dicts of
them, a ``tf.data.Dataset``, a ``keras.utils.PyDataset``, a Python generator)
into batches through its data adapters (``keras/src/trainers/data_adapters/``),
which also turn ``class_weight`` into sample weights. gradviz reuses them
instead of writing a second converter. What the data functions rely on:

* ``keras.src.trainers.data_adapters.get_data_adapter(x, y, sample_weight,
  batch_size, steps_per_epoch, shuffle, class_weight)``: picks the adapter fit
  uses, raising ``ValueError`` for what fit refuses.
* an adapter's ``num_batches`` (None when unknown or infinite), ``batch_size``
  and ``get_numpy_iterator()``, which yields ``x``, ``(x, y)`` or
  ``(x, y, sample_weight)`` per batch as NumPy arrays in the caller's structure.
* ``PyDatasetAdapter.enqueuer``: the worker pool of a ``PyDataset`` with
  workers, which must be stopped when gradviz stops reading early.
* ``data_adapter_utils.unpack_x_y_sample_weight``: the one place Keras unpacks a batch.
* ``data_adapters.is_tf_dataset``: how Keras recognises a ``tf.data.Dataset``.

gradviz never calls an adapter's ``on_epoch_begin`` / ``on_epoch_end``: they run
the user's ``PyDataset`` epoch hooks (which may reshuffle), and analysing is not
an epoch of training.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

if TYPE_CHECKING:
    import keras


# -- losses by the layer that added them ---------------------------------------------------------


@dataclass(frozen=True)
class CollectedLoss:
    """One entry of ``model.losses`` from one call, with where it came from.

    Attributes:
        layer: the layer (or the model itself) whose ``add_loss`` added it; None for a
            weight regularizer (kernel, bias, ...).
        value: the loss tensor, as Keras collected it.
        regularizer: whether it is a weight or activity regularizer's loss (these are
            summed as ``regularization``); False for a layer's own ``add_loss``.
    """

    layer: Any
    value: Any
    regularizer: bool


def _stateless_scope_class() -> Any:
    from keras.src.backend.common.stateless_scope import StatelessScope

    class LossScope(StatelessScope):
        """A ``StatelessScope`` collecting losses that knows which ones activity regularizers added."""

        def __init__(self, state_mapping: Any) -> None:
            super().__init__(state_mapping=state_mapping, collect_losses=True)
            self.pending_activity = 0
            self.activity: list[Any] = []  # the tensors themselves: their ids stay unique while held

        def add_loss(self, loss: Any) -> None:
            super().add_loss(loss)
            if self.pending_activity:
                self.pending_activity -= 1
                self.activity.append(loss)

    return LossScope


class _MarkedRegularizer:
    """An activity regularizer that tells the scope its next ``add_loss`` is a regularizer's."""

    def __init__(self, regularizer: Any, scope: Any) -> None:
        self.regularizer = regularizer
        self.scope = scope

    def __call__(self, x: Any) -> Any:
        self.scope.pending_activity += 1
        return self.regularizer(x)


@contextlib.contextmanager
def _activity_regularizers_marked(layers: Sequence[Any], scope: Any) -> Iterator[None]:
    marked = [(layer, layer.activity_regularizer) for layer in layers
              if getattr(layer, "activity_regularizer", None) is not None]
    try:
        for layer, regularizer in marked:
            object.__setattr__(layer, "activity_regularizer", _MarkedRegularizer(regularizer, scope))
        yield
    finally:
        for layer, regularizer in marked:
            object.__setattr__(layer, "activity_regularizer", regularizer)


def call_collecting_losses(
    model: keras.Model, trainable: Sequence[Any], non_trainable: Sequence[Any], inputs: Any, *, training: bool
) -> tuple[Any, list[Any], list[CollectedLoss]]:
    """Call ``model`` statelessly, as Keras's training step calls it, and say who added each loss.

    Like ``model.stateless_call(trainable, non_trainable, inputs, return_losses=True)``, with
    two differences: the model is entered through ``model(...)`` as ``train_step`` does
    (so a layer called twice keeps both calls' losses, as in training), and each loss
    comes with the layer that added it and whether it is a regularizer's.

    Args:
        model: the model; nothing of it is written.
        trainable: values for ``model.trainable_variables`` (e.g. tape-watched tensors).
        non_trainable: values for ``model.non_trainable_variables``.
        inputs: what ``model(...)`` takes.
        training: the ``training`` argument.

    Returns:
        ``(outputs, new non-trainable values, losses)``; the losses in ``model.losses`` order.
    """
    mapping = list(zip(model.trainable_variables, trainable)) + list(zip(model.non_trainable_variables, non_trainable))
    layers = model._flatten_layers(include_self=True)
    scope = _stateless_scope_class()(mapping)
    with _activity_regularizers_marked(layers, scope), scope:
        outputs = model(inputs, training=training)
        activity = {id(t) for t in scope.activity}
        collected = [
            CollectedLoss(layer, loss, id(loss) in activity) for layer in layers for loss in layer._get_own_losses()
        ]
        collected.extend(CollectedLoss(None, loss, True) for loss in model._get_regularization_losses())
    new_state = [scope.get_current_value(v) for v in model.non_trainable_variables]
    return outputs, new_state, collected


def sublayers(layer: Any) -> list[Any]:
    """A layer's direct sublayers, in tracking order (what ``_flatten_layers`` walks)."""
    return list(getattr(layer, "_layers", []) or [])


# -- symbolic calls that leave nothing behind ------------------------------------------------------


@contextlib.contextmanager
def symbolic_calls_undone(model: Any) -> Iterator[None]:
    """Undo what calling ``model``'s layers on symbolic tensors records.

    Each symbolic call appends a node to the layers' ``_inbound_nodes`` /
    ``_outbound_nodes`` (which would, e.g., give ``layer.output`` a meaning it did not
    have), and every auto-named tensor or layer advances Keras's global name counters
    (which would rename the user's next ``Dense()``). Both are restored on exit.
    """
    from keras.src.backend.common import global_state

    layers = model._flatten_layers(include_self=True)
    counts = [(layer, len(getattr(layer, "_inbound_nodes", [])), len(getattr(layer, "_outbound_nodes", [])))
              for layer in layers]
    uids = global_state.get_global_attribute("object_name_uids")
    saved_uids = copy.copy(uids) if uids is not None else None
    try:
        yield
    finally:
        for layer, inbound, outbound in counts:
            if hasattr(layer, "_inbound_nodes"):
                del layer._inbound_nodes[inbound:]
            if hasattr(layer, "_outbound_nodes"):
                del layer._outbound_nodes[outbound:]
        global_state.set_global_attribute("object_name_uids", saved_uids)


def build_input_shapes(model: Any) -> Any:
    """The input shape(s) a subclassed model was built with (batch dimension first), or None.

    From ``get_build_config()`` (what a ``.keras`` file stores too): one shape, or a list
    or dict of shapes for a call that takes one nested argument.
    """
    try:
        config = model.get_build_config()
    except Exception:  # a model that cannot say
        return None
    if not isinstance(config, dict):
        return None
    return config.get("input_shape")


def call_argument_name(model: Any) -> str:
    """The name of ``call()``'s first argument (what a subclassed model's input is called)."""
    try:
        parameters = list(inspect.signature(model.call).parameters.values())
    except (TypeError, ValueError):
        return "inputs"
    for parameter in parameters:
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            return parameter.name
    return "inputs"


def call_on_symbolic(model: Any, inputs: Any) -> Any:
    """``model.call(inputs)`` on symbolic inputs: its layers record nodes, a functional graph."""
    return model.call(inputs)


# -- compile()'s packing of loss and loss_weights --------------------------------------------------


def _placeholder_class() -> Any:
    import keras

    class Placeholder(keras.losses.Loss):
        """Stands for one user loss while Keras packs the config (resolves nothing, runs nothing)."""

        def __init__(self, index: int) -> None:
            super().__init__(name=f"gradviz_placeholder_{index}")
            self.index = index

        def call(self, y_true: Any, y_pred: Any) -> Any:  # pragma: no cover - never called
            raise NotImplementedError

    return Placeholder


def compile_loss_plan(
    loss: Any, loss_weights: Any, structure: Any, output_names: Sequence[str] | None,
    is_leaf: Any,
) -> list[tuple[str, int, float | None]]:
    """Pack ``loss`` and ``loss_weights`` as Keras's training step will, without resolving a loss.

    Each user loss is replaced by a placeholder, so that only the structure is
    judged (unknown or custom loss names are not this function's business).

    Args:
        loss: the ``loss`` of ``compile()`` (any form, serialized or live).
        loss_weights: its ``loss_weights``.
        structure: the model's output structure with output names as leaves (a name,
            a list/tuple of names, or a dict ``{key: name}``).
        output_names: what ``compile()`` passes to ``CompileLoss`` (``model.output_names``;
            None for a subclassed model, which has none).
        is_leaf: ``is_leaf(value)`` says whether a dict in ``loss`` is one serialized loss.

    Returns:
        One ``(output name, index of the user loss in depth-first order, weight or None)``
        per loss term, in Keras's order.

    Raises:
        ValueError, KeyError, TypeError: Keras's own error for a config it cannot pack
            (the message is Keras's), or ``ValueError`` when a loss would apply to several
            outputs at once.
    """
    from keras.src import tree
    from keras.src.trainers.compile_utils import CompileLoss

    placeholder = _placeholder_class()
    leaves: list[Any] = []

    def substitute(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, dict) and not is_leaf(value):
            return {k: substitute(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(substitute(v) for v in value)
        leaves.append(value)
        return placeholder(len(leaves) - 1)

    from keras.src.backend.common import global_state

    uids = global_state.get_global_attribute("object_name_uids")
    saved_uids = copy.copy(uids) if uids is not None else None
    try:
        packed = CompileLoss(substitute(loss), loss_weights, output_names=list(output_names) if output_names else None)
        packed.build(structure, structure)
    finally:
        global_state.set_global_attribute("object_name_uids", saved_uids)
    plan = []
    for path, fn, weight, _ in packed._flat_losses:
        target = structure
        for key in path:
            target = target[key]
        if tree.is_nested(target):
            raise ValueError(
                f"loss {leaves[fn.index]!r} would apply to several outputs at once ({', '.join(map(str, tree.flatten(target)))})"
            )
        plan.append((str(target), int(fn.index), None if weight is None else float(weight)))
    return plan


# -- fit-style data: Keras's data adapters ------------------------------------------------------

def data_adapter(
    x: Any,
    y: Any = None,
    sample_weight: Any = None,
    class_weight: Any = None,
    batch_size: int | None = None,
    steps: int | None = None,
) -> Any:
    """The data adapter ``Model.fit`` would use for these arguments (no shuffling).

    Raises:
        ValueError: Keras refuses the combination (its own message).
    """
    from keras.src.trainers.data_adapters import get_data_adapter

    return get_data_adapter(
        x=x,
        y=y,
        sample_weight=sample_weight,
        batch_size=batch_size,
        steps_per_epoch=steps,
        shuffle=False,
        class_weight=class_weight,
    )


def numpy_batches(adapter: Any) -> Iterator[Any]:
    """The adapter's batches, as fit's NumPy iterator yields them (the caller's structure)."""
    return iter(adapter.get_numpy_iterator())


def stop_workers(adapter: Any) -> None:
    """Stop a ``PyDataset``'s worker pool, if the adapter started one (a no-op otherwise)."""
    enqueuer = getattr(adapter, "enqueuer", None)
    if enqueuer is not None and enqueuer.is_running():
        enqueuer.stop()


def unpack_x_y_sample_weight(batch: Any) -> tuple[Any, Any, Any]:
    """``x``, ``y`` and ``sample_weight`` of one batch, as Keras's training step unpacks it."""
    from keras.src.trainers.data_adapters.data_adapter_utils import unpack_x_y_sample_weight as unpack

    x, y, sample_weight = unpack(batch)
    return x, y, sample_weight


def is_tf_dataset(x: Any) -> bool:
    """Whether Keras treats ``x`` as a ``tf.data.Dataset``."""
    from keras.src.trainers.data_adapters import is_tf_dataset as check

    return bool(check(x))


def is_py_dataset(x: Any) -> bool:
    """Whether ``x`` is a ``keras.utils.PyDataset``."""
    import keras

    return isinstance(x, keras.utils.PyDataset)


def is_generator(x: Any) -> bool:
    """Whether ``x`` is what Keras's generator adapter takes (a Python generator)."""
    return isinstance(x, types.GeneratorType)
