"""Pins the Keras internals gradviz relies on (gradviz/model/keras_internals.py) for fit-style data.

If a Keras upgrade moves or changes one of them, a test here fails and names it;
the fix belongs in keras_internals.py alone.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Iterator

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradviz.model import keras_internals as ki


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
