"""Analysing fit-style data changes nothing of the user's: model, optimizer, random streams, data, iterators.

The same checks as ``test_side_effects.py`` (every variable bit for bit, random draws after a
run with and without gradviz), for each kind of data; and the data itself: arrays keep their
bytes, a ``tf.data`` iterator the user holds keeps its place, a ``PyDataset``'s epoch hooks
are not called and only the batches analysed are read, a ``PyDataset``'s worker pool is
stopped. A Python generator is consumed (by design, as ``fit`` consumes it): exactly the
batches analysed, or two when fewer (Keras's adapter reads two ahead).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import keras
import numpy as np
import pytest
import tensorflow as tf

import gradviz
from test_fit_data import Batches, batches_of
from test_side_effects import assert_same, draws, snapshot, trained_model

_rng = np.random.default_rng(9)
XS = _rng.standard_normal((12, 3)).astype("float32")
C = _rng.integers(0, 2, (12, 1)).astype("float32")
D = _rng.standard_normal((12, 1)).astype("float32")
SW = _rng.uniform(0, 2, 12).astype("float32")


def data_of(kind: str) -> dict[str, Any]:
    """12 rows for the trained two-head model (C: sigmoid, D: linear), in batches of 4."""
    if kind == "arrays":
        return {"x": XS, "y": {"C": C, "D": D}, "sample_weight": {"C": SW}, "batch_size": 4}
    if kind == "tf.data":
        return {"x": tf.data.Dataset.from_tensor_slices((XS, (C, D), (SW, SW))).shuffle(12, seed=1).batch(4)}
    if kind == "PyDataset":
        return {"x": Batches((XS, (C, D)), 4)}
    return {"x": batches_of((XS, (C, D)), 4), "steps": 3}


KINDS = ("arrays", "tf.data", "PyDataset", "generator")


@pytest.mark.parametrize("execution", ["eager", "compiled"])
def test_model_and_optimizer_unchanged(execution: str) -> None:
    model = trained_model()
    before = snapshot(model)
    assert any("moving_mean" in key for key in before) and any("seed_generator" in key for key in before)
    session = gradviz.prepare(model, execution=execution)
    for kind in KINDS:
        report = session.run(**data_of(kind))
        assert report.meta["batches"] == 3 and report.meta["execution"] == execution, kind
        assert_same(before, snapshot(model))
    assert int(model.optimizer.iterations.numpy()) == 1


@pytest.mark.parametrize("execution", ["eager", "compiled"])
def test_caller_random_streams_unchanged(execution: str) -> None:
    model = trained_model()

    def run(with_gradviz: bool) -> tuple[float, ...]:
        keras.utils.set_random_seed(123)
        keras.random.uniform(())  # the global SeedGenerator exists and has advanced
        if with_gradviz:
            session = gradviz.prepare(model, execution=execution)
            for kind in ("arrays", "tf.data", "PyDataset"):
                session.run(**data_of(kind))
        return draws()

    assert run(True) == run(False)


@pytest.fixture(scope="module")
def session() -> Any:
    """A session on the trained two-head model, for checks on the data (the model has its own test)."""
    return gradviz.prepare(trained_model())


def test_arrays_keep_their_bytes() -> None:
    copies = [a.copy() for a in (XS, C, D, SW)]
    y = {"C": C, "D": D}
    gradviz.analyze(trained_model(), x=XS, y=y, sample_weight={"C": SW, "D": SW}, batch_size=4)
    keras.utils.set_random_seed(0)
    x = keras.Input((3,), name="features")
    one = keras.Model(x, keras.layers.Dense(3, activation="softmax", name="label")(x))
    one.compile(loss="sparse_categorical_crossentropy")
    ids = np.array([0, 1, 2, 1] * 3)
    ids_copy = ids.copy()
    gradviz.analyze(one, x=XS, y=ids, class_weight={0: 1.0, 1: 2.0, 2: 0.5}, batch_size=4)
    for original, copy in zip((XS, C, D, SW, ids), copies + [ids_copy]):
        np.testing.assert_array_equal(original, copy)
    assert list(y) == ["C", "D"] and y["C"] is C


def test_a_dataset_iterator_keeps_its_place(session: Any) -> None:
    dataset = tf.data.Dataset.from_tensor_slices((XS, (C, D))).batch(4)
    iterator = iter(dataset)
    first = next(iterator)
    session.run(x=dataset)
    second = next(iterator)
    np.testing.assert_array_equal(first[0].numpy(), XS[:4])
    np.testing.assert_array_equal(second[0].numpy(), XS[4:8])


class Recording(Batches):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: list[int] = []
        self.hooks: list[str] = []

    def __getitem__(self, index: int) -> Any:
        self.asked.append(index)
        return super().__getitem__(index)

    def on_epoch_begin(self) -> None:
        self.hooks.append("begin")

    def on_epoch_end(self) -> None:
        self.hooks.append("end")


def test_a_py_dataset_is_read_only_as_far_as_analysed(session: Any) -> None:
    data = Recording((XS, (C, D)), 4)
    session.run(x=data, steps=2)
    assert data.asked == [0, 1] and data.hooks == []


class Pooled(keras.utils.PyDataset):
    """An endless PyDataset read by two worker threads: its feeder thread runs until stopped."""

    def __init__(self) -> None:
        super().__init__(workers=2)

    @property
    def num_batches(self) -> int | None:
        return None

    def __getitem__(self, index: int) -> Any:
        rows = slice(4 * (index % 3), 4 * (index % 3) + 4)
        return XS[rows], (C[rows], D[rows])


def test_a_py_dataset_worker_pool_is_stopped(session: Any) -> None:
    session.run(x=XS[:4], y=(C[:4], D[:4]), batch_size=4)  # traced: the pool is what is left to start
    threads = threading.active_count()
    report = session.run(x=Pooled(), steps=1)  # stops reading an endless dataset after one batch
    assert report.meta["batches"] == 1
    for _ in range(50):  # the pool's threads are joined by stop(); give the scheduler a moment
        if threading.active_count() <= threads:
            break
        time.sleep(0.1)
    assert threading.active_count() <= threads


@pytest.mark.parametrize("steps, consumed", [(1, 2), (3, 3)])
def test_a_generator_is_consumed_by_the_batches_analysed(session: Any, steps: int, consumed: int) -> None:
    read: list[int] = []

    def counted() -> Iterator[Any]:
        for index in range(6):
            read.append(index)
            yield XS[:4], (C[:4], D[:4])

    generator = counted()
    session.run(x=generator, steps=steps)
    assert len(read) == consumed
    assert next(generator)[0].shape == (4, 3)  # the rest is still there for the caller
