"""Pins what gradviz/model/keras_internals.py relies on in Keras's private API.

If one of these fails after a Keras upgrade, the fix belongs in keras_internals.py
(and nowhere else): these tests say which behaviour moved.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers, ops

from gradviz.core.spec import is_serialized_object
from gradviz.model import keras_internals as internals


class Endpoint(layers.Layer):
    """Adds its own loss (an endpoint layer, as in Keras's OCR example), and may regularize its output."""

    def call(self, y_true: Any, y_pred: Any) -> Any:
        self.add_loss(ops.mean(ops.square(y_true - y_pred)))
        return y_pred


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    x = keras.Input((3,), name="x")
    t = keras.Input((1,), name="t")
    h = layers.Dense(4, name="h", kernel_regularizer="l2", activity_regularizer="l1")(x)
    p = layers.Dense(1, name="p")(h)
    # an endpoint with an activity regularizer of its own: its two losses must be told apart
    out = Endpoint(name="endpoint", activity_regularizer=keras.regularizers.L2(0.5))(t, p)
    return keras.Model([x, t], out)


def _inputs() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((4, 3)).astype("float32"), rng.standard_normal((4, 1)).astype("float32")]


def test_private_names_exist() -> None:
    from keras.src.backend.common import global_state
    from keras.src.backend.common.stateless_scope import StatelessScope
    from keras.src.trainers.compile_utils import CompileLoss

    layer = layers.Dense(2)
    for name in ("_get_own_losses", "_get_regularization_losses", "_flatten_layers", "_layers",
                 "_inbound_nodes", "_outbound_nodes", "_loss_ids", "activity_regularizer"):
        assert hasattr(layer, name), name
    assert callable(StatelessScope(collect_losses=True).add_loss)
    assert hasattr(CompileLoss("mse"), "_flat_losses")
    assert global_state.get_global_attribute("object_name_uids") is not None or True  # created on first name


def test_losses_come_back_by_source_in_model_losses_order() -> None:
    model = _model()
    xs = _inputs()
    weights = [tf.convert_to_tensor(v) for v in model.trainable_variables]
    state = [tf.convert_to_tensor(v) for v in model.non_trainable_variables]
    _, _, collected = internals.call_collecting_losses(model, weights, state, xs, training=True)
    where = [(getattr(c.layer, "name", None), c.regularizer) for c in collected]
    # h's activity regularizer, the endpoint's add_loss and its activity regularizer, then h's kernel regularizer
    assert where == [("h", True), ("endpoint", False), ("endpoint", True), (None, True)]
    # the same values, in the same order, as model.losses after an eager call
    model(xs, training=True)
    eager = [float(v) for v in model.losses]
    assert [float(c.value) for c in collected] == pytest.approx(eager, rel=1e-6)


def test_collecting_losses_writes_nothing() -> None:
    keras.utils.set_random_seed(1)
    x = keras.Input((3,), name="x")
    h = layers.BatchNormalization(name="bn")(layers.Dropout(0.5, seed=3)(layers.Dense(4, name="d")(x)))
    model = keras.Model(x, h)
    before = [np.array(v.numpy()) for v in model.variables]
    activity = model.get_layer("d").activity_regularizer
    weights = [tf.convert_to_tensor(v) for v in model.trainable_variables]
    state = [tf.convert_to_tensor(v) for v in model.non_trainable_variables]
    _, new_state, _ = internals.call_collecting_losses(model, weights, state, _inputs()[0], training=True)
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, model.variables))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(state, new_state))  # BN, seed moved
    assert model.get_layer("d").activity_regularizer is activity
    assert model.losses == []  # no eager loss left on any layer


def test_symbolic_calls_are_undone() -> None:
    from keras.src.backend.common import global_state

    class Two(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="two_undone")
            self.a = layers.Dense(4, name="a")
            self.b = layers.Dense(1, name="b")

        def call(self, x: Any) -> Any:
            return self.b(self.a(x))

    model = Two()
    model(np.zeros((2, 3), "float32"))
    assert internals.build_input_shapes(model) == (2, 3)
    assert internals.call_argument_name(model) == "x"
    nodes = [(len(layer._inbound_nodes), len(layer._outbound_nodes)) for layer in model._flatten_layers()]
    uids = dict(global_state.get_global_attribute("object_name_uids"))
    with internals.symbolic_calls_undone(model):
        out = internals.call_on_symbolic(model, keras.Input((3,), name="x"))
        assert len(model.a._inbound_nodes) == nodes[1][0] + 1  # the trace recorded a node
        assert isinstance(out, keras.KerasTensor)
    assert [(len(layer._inbound_nodes), len(layer._outbound_nodes)) for layer in model._flatten_layers()] == nodes
    assert dict(global_state.get_global_attribute("object_name_uids")) == uids


#: (loss, loss_weights) forms and what Keras 3's training step does with them on a two-output model
FORMS: list[tuple[Any, Any]] = [
    ("mse", None), ("mse", [0.5]), ("mse", {"C": 2.0}), ("mse", 0.5), ("mse", [1.0, 0.1]), ("mse", {"C": 1, "D": 2}),
    (["mse", "mae"], None), (["mse", "mae"], [1.0, 2.0]), (["mse", "mae"], [1.0]), (["mse", "mae"], {"D": 2.0, "C": 1.0}),
    (["mse", "mae"], {"C": 1.0}), (["mse", None], [0.7]), (["mse", None], [0.7, 0.3]), (["mse"], None),
    (["mse", "mae", "mse"], None), ({"C": "mse", "D": "mae"}, None), ({"C": "mse", "D": "mae"}, [1.0, 2.0]),
    ({"C": "mse", "D": "mae"}, {"C": 2.0}), ({"C": "mse", "D": "mae"}, {"C": 2.0, "D": 1.0, "E": 3.0}),
    ({"C": "mse"}, None), ({"C": "mse", "D": None}, {"C": 2.0, "D": 1.0}),
    ({"class_name": "MeanSquaredError", "config": {}}, [0.5]),
]


def _keras_trains(model: keras.Model, loss: Any, weights: Any) -> dict[str, float] | None:
    """The weight per output Keras's own training step applies (None: Keras refuses)."""
    if isinstance(loss, dict) and "class_name" in loss:
        loss = keras.losses.deserialize(loss)
    x = np.ones((2, 3), "float32")
    y = [np.zeros((2, 1), "float32"), np.zeros((2, 1), "float32")]
    try:
        model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss, loss_weights=weights)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Gradients do not exist" for an output without a loss
            model.train_on_batch(x, y)
    except (ValueError, KeyError, TypeError):
        return None
    result: dict[str, float] = {}
    for path, _, weight, _ in model._compile_loss._flat_losses:
        result[model.output_names[path[0]]] = 1.0 if weight is None else float(weight)
    return result


@pytest.mark.parametrize("loss, weights", FORMS, ids=[f"{l!r}|{w!r}" for l, w in FORMS])
def test_compile_loss_plan_refuses_exactly_what_training_refuses(loss: Any, weights: Any) -> None:
    x = keras.Input((3,), name="x")
    model = keras.Model(x, [layers.Dense(1, name="C")(x), layers.Dense(1, name="D")(x)])
    trains = _keras_trains(model, loss, weights)
    is_leaf = lambda v: is_serialized_object(v)  # noqa: E731
    try:
        plan = internals.compile_loss_plan(loss, weights, ["C", "D"], ["C", "D"], is_leaf)
    except (ValueError, KeyError, TypeError):
        plan = None
    assert (plan is None) == (trains is None)
    if plan is not None and trains is not None:
        assert {name: 1.0 if w is None else w for name, _, w in plan} == trains
