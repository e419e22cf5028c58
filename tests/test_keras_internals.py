"""Pins what gradviz/model/keras_internals.py relies on in Keras's private API: the loss sources and fit-style data.

If one of these fails after a Keras upgrade, the fix belongs in keras_internals.py
(and nowhere else): these tests say which behaviour moved.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any, Iterator

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers, ops

from gradviz.core.spec import is_serialized_object
from gradviz.model import keras_internals as internals
from gradviz.model import keras_internals as ki  # the fit-style data tests' name for it


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



def test_get_data_adapter_takes_the_arguments_gradviz_passes() -> None:
    from keras.src.trainers.data_adapters import get_data_adapter

    params = inspect.signature(get_data_adapter).parameters
    assert {"x", "y", "sample_weight", "batch_size", "steps_per_epoch", "shuffle", "class_weight"} <= set(params)


class Rows(keras.utils.PyDataset):
    """Batches of ``size`` rows of ``x``, ``y`` (and ``sample_weight``), recording what was asked of it."""

    def __init__(self, x: np.ndarray, y: Any, size: int, sw: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.x, self.y, self.sw, self.size = x, y, sw, size
        self.asked: list[int] = []
        self.epochs_begun = self.epochs_ended = 0

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.size)

    def __getitem__(self, index: int) -> Any:
        self.asked.append(index)
        rows = slice(index * self.size, (index + 1) * self.size)
        if self.sw is None:
            return self.x[rows], self.y[rows]
        return self.x[rows], self.y[rows], self.sw[rows]

    def on_epoch_begin(self) -> None:
        self.epochs_begun += 1

    def on_epoch_end(self) -> None:
        self.epochs_ended += 1


X = np.arange(20.0, dtype="float32").reshape(10, 2)
IDS = np.array([0, 1, 2, 1, 0, 2, 2, 1, 0, 0])


def _gen(n: int) -> Iterator[Any]:
    for i in range(n):
        yield X[i:i + 1], IDS[i:i + 1]


@pytest.mark.parametrize("make, adapter_class", [
    (lambda: ki.data_adapter(X, IDS, batch_size=4), "ArrayDataAdapter"),
    (lambda: ki.data_adapter(tf.data.Dataset.from_tensor_slices((X, IDS)).batch(4)), "TFDatasetAdapter"),
    (lambda: ki.data_adapter(Rows(X, IDS, 4)), "PyDatasetAdapter"),
    (lambda: ki.data_adapter(_gen(10)), "GeneratorDataAdapter"),
])
def test_one_adapter_per_kind_as_fit_picks_it(make: Any, adapter_class: str) -> None:
    assert type(make()).__name__ == adapter_class


def test_array_batches_in_order_with_a_partial_last_one() -> None:
    adapter = ki.data_adapter(X, {"out": IDS}, batch_size=4)
    assert adapter.num_batches == 3 and adapter.batch_size == 4
    batches = list(ki.numpy_batches(adapter))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    # the caller's structure: (x, y) with y still a dict; NumPy arrays; rows in order (no shuffling)
    assert isinstance(batches[0], tuple) and isinstance(batches[0][1], dict)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), X)
    np.testing.assert_array_equal(np.concatenate([b[1]["out"] for b in batches]), IDS)


def test_array_defaults_as_fit() -> None:
    """batch_size defaults to 32; with steps alone, Keras divides the rows into that many batches."""
    assert ki.data_adapter(np.zeros((70, 2)), np.zeros(70)).batch_size == 32
    by_steps = ki.data_adapter(np.zeros((10, 2)), np.zeros(10), steps=3)
    assert by_steps.batch_size == 4 and by_steps.num_batches == 3


def test_array_sample_weight_replicated_per_output() -> None:
    sw = np.arange(10.0)
    (_, y, weights), *_ = ki.numpy_batches(ki.data_adapter(X, [IDS, IDS], sample_weight=sw, batch_size=10))
    assert isinstance(weights, (list, tuple)) and len(weights) == 2
    np.testing.assert_array_equal(weights[1], sw)


CLASS_WEIGHT = {0: 0.5, 1: 2.0, 2: 3.0}
EXPECTED = np.array([CLASS_WEIGHT[i] for i in IDS], dtype="float32")


@pytest.mark.parametrize("targets", [IDS, IDS[:, None], np.eye(3, dtype="float32")[IDS]], ids=["ids", "ids-1", "one-hot"])
@pytest.mark.parametrize("kind", ["arrays", "tf.data", "PyDataset"])
def test_class_weight_becomes_sample_weight(kind: str, targets: np.ndarray) -> None:
    """Class ids, ids with a trailing 1 and one-hot rows all weigh a row by its class, in every adapter."""
    if kind == "arrays":
        adapter = ki.data_adapter(X, targets, class_weight=CLASS_WEIGHT, batch_size=4)
    elif kind == "tf.data":
        adapter = ki.data_adapter(tf.data.Dataset.from_tensor_slices((X, targets)).batch(4), class_weight=CLASS_WEIGHT)
    else:
        adapter = ki.data_adapter(Rows(X, targets, 4), class_weight=CLASS_WEIGHT)
    batches = list(ki.numpy_batches(adapter))
    assert all(len(b) == 3 for b in batches)
    np.testing.assert_allclose(np.concatenate([b[2] for b in batches]), EXPECTED)


@pytest.mark.parametrize("make", [
    lambda: ki.data_adapter(_gen(3), class_weight=CLASS_WEIGHT),
    lambda: ki.data_adapter(X, IDS, sample_weight=np.ones(10), class_weight=CLASS_WEIGHT),
    lambda: ki.data_adapter(X, [IDS, IDS], class_weight=CLASS_WEIGHT),
], ids=["generator", "with-sample-weight", "two-outputs"])
def test_keras_refuses_class_weight_where_gradviz_says_so(make: Any) -> None:
    with pytest.raises(ValueError):
        make()


def test_dataset_lengths() -> None:
    known = tf.data.Dataset.from_tensor_slices((X, IDS)).batch(4)
    assert ki.data_adapter(known).num_batches == 3
    assert ki.data_adapter(known.repeat()).num_batches is None
    assert ki.data_adapter(known.filter(lambda x, y: True)).num_batches is None
    assert ki.data_adapter(known.take(0)).num_batches == 0


def test_generator_adapter_reads_two_batches_ahead() -> None:
    """What the README says a generator loses to Keras's look-ahead: up to two batches."""
    read: list[int] = []

    def counted() -> Iterator[Any]:
        for i in range(10):
            read.append(i)
            yield X[i:i + 1], IDS[i:i + 1]

    adapter = ki.data_adapter(counted())
    assert adapter.num_batches is None and read == [0, 1]
    first = next(ki.numpy_batches(adapter))
    np.testing.assert_array_equal(first[0], X[:1])
    assert read == [0, 1]


@pytest.mark.parametrize("workers", [1, 2])
def test_py_dataset_reading_calls_no_epoch_hook(workers: int) -> None:
    data = Rows(X, IDS, 4, workers=workers)
    adapter = ki.data_adapter(data)
    assert (adapter.enqueuer is None) == (workers == 1)  # the pool gradviz stops when it stops early
    iterator = ki.numpy_batches(adapter)
    next(iterator)
    ki.stop_workers(adapter)
    assert adapter.enqueuer is None or not adapter.enqueuer.is_running()
    assert data.epochs_begun == data.epochs_ended == 0


def test_unpack_x_y_sample_weight() -> None:
    a, b, c = np.zeros(1), np.ones(1), np.full(1, 2.0)
    assert ki.unpack_x_y_sample_weight(a)[1:] == (None, None)
    assert ki.unpack_x_y_sample_weight((a, b))[1] is b
    assert ki.unpack_x_y_sample_weight([a, b, c])[2] is c
    x, y, sw = ki.unpack_x_y_sample_weight({"features": a})
    assert isinstance(x, dict) and y is None and sw is None  # a dict is inputs only, as in fit


def test_kind_checks() -> None:
    assert ki.is_tf_dataset(tf.data.Dataset.range(3)) and not ki.is_tf_dataset(X)
    assert ki.is_py_dataset(Rows(X, IDS, 4)) and not ki.is_py_dataset(X)
    assert ki.is_generator(_gen(1)) and not ki.is_generator(iter([1]))
