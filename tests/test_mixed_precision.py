"""Mixed precision as Keras trains it: the loss scaled (LossScaleOptimizer), the gradients unscaled.

The reference is Keras's own training step: an inner optimizer that records the
gradients the LossScaleOptimizer hands it (already unscaled) and applies nothing.
"""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers, ops

import gradviz


class Recording(keras.optimizers.SGD):
    """SGD at learning rate 0 that keeps the gradients Keras's step applies."""

    def __init__(self) -> None:
        super().__init__(learning_rate=0.0)
        self.seen: list[np.ndarray | None] | None = None

    def apply(self, grads: Any, trainable_variables: Any = None) -> Any:
        self.seen = [None if g is None else np.array(g, np.float64) for g in grads]
        return super().apply(grads, trainable_variables)


def _model(loss_factor: float) -> tuple[keras.Model, Recording]:
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        x = keras.Input((8,), name="x")
        h = layers.Dense(16, activation="tanh", name="h")(x)
        h = layers.Dense(16, activation="tanh", name="h2")(h)
        model = keras.Model(x, [layers.Dense(1, name="a", dtype="float32")(h),
                                layers.Dense(1, name="b", dtype="float32")(h)])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    recording = Recording()
    scaled = lambda y, p: loss_factor * ops.mean(ops.square(y - p))  # noqa: E731
    model.compile(optimizer=recording, loss=[scaled, "mse"], loss_weights=[1.0, 0.0], run_eagerly=True)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)  # what compile() does here
    return model, recording


def _data(tmp_path: Any, scale: float) -> tuple[np.ndarray, np.ndarray, Any]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 8)).astype("float32")
    y = (scale * rng.standard_normal((16, 1))).astype("float32")
    path = tmp_path / "d.npz"
    np.savez(path, x=x, **{"y:a": y, "y:b": y})
    return x, y, path


def _keras_gradients(model: keras.Model, recording: Recording, x: np.ndarray, y: np.ndarray) -> list[Any]:
    """Train until the LossScaleOptimizer applies a step (it skips those whose gradients overflow)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(20):
            model.train_on_batch(x, [y, y])
            if recording.seen is not None:
                return recording.seen
    raise AssertionError("Keras never applied a step")


@pytest.mark.parametrize("execution", ["eager", "compiled"])
def test_tiny_float16_gradients_are_kept_as_keras_keeps_them(tmp_path: Any, execution: str) -> None:
    model, recording = _model(loss_factor=1e-7)
    x, y, path = _data(tmp_path, 1.0)
    report = gradviz.analyze(model, data=path, batch_size=16, execution=execution)
    assert report.meta["loss_scale"] == 2.0**15
    seen = _keras_gradients(model, recording, x, y)
    for var, g in zip(report.variables, seen):
        expected = None if g is None else float(np.linalg.norm(g))
        got = var.grad_norm["a"]
        if expected is None or expected == 0.0:
            assert not got, var.path
            continue
        assert got == pytest.approx(expected, rel=1e-3), var.path
    # unscaled, the float16 layers' gradients underflow to zero: what the scaling saves
    with tf.GradientTape() as tape:
        value = 1e-7 * ops.mean(ops.square(y - model(x, training=True)[0]))
    unscaled = tape.gradient(value, model.get_layer("h").kernel)
    assert not np.any(np.asarray(unscaled)) and "a" in report.layer("h").reached_by
    (finding,) = report.findings_of("mixed-precision")
    assert "scaled by 32768" in finding.message and finding.layers == ("h", "h2")


@pytest.mark.parametrize("execution", ["eager", "compiled"])
def test_an_overflowing_scale_is_halved_as_keras_halves_it(tmp_path: Any, execution: str) -> None:
    model, recording = _model(loss_factor=1.0)
    x, y, path = _data(tmp_path, 300.0)  # large errors: at 32768 the float16 backward pass overflows
    report = gradviz.analyze(model, data=path, batch_size=16, execution=execution)
    assert report.meta["loss_scale"] < 2.0**15 and not report.findings_of("nan-gradient")
    seen = _keras_gradients(model, recording, x, y)
    assert float(model.optimizer.dynamic_scale.numpy()) == report.meta["loss_scale"]  # the scale Keras settled on
    for var, g in zip(report.variables, seen):
        if g is not None and np.any(g):
            assert var.grad_norm["a"] == pytest.approx(float(np.linalg.norm(g)), rel=1e-3), var.path


def test_a_lower_scale_reruns_the_same_batches_of_a_generator(tmp_path: Any) -> None:
    """A generator is read once: the back-off's reruns take its batches from memory, so the figures are
    those of the same data given as a file."""
    x, y, path = _data(tmp_path, 300.0)  # overflows at 32768: the scale is lowered, the batches reread
    from_file = gradviz.analyze(_model(loss_factor=1.0)[0], data=path, batch_size=4, batches=4, progress=None)

    def batches() -> Any:  # Keras's adapter keeps the first batch it peeks at: the others are read once
        for start in range(0, 16, 4):
            yield x[start:start + 4], (y[start:start + 4], y[start:start + 4])

    from_generator = gradviz.analyze(_model(loss_factor=1.0)[0], x=batches(), steps=4, progress=None)
    assert from_generator.meta["loss_scale"] == from_file.meta["loss_scale"] < 2.0**15
    assert from_generator.stats is not None and from_file.stats is not None
    np.testing.assert_array_equal(from_generator.stats.gram, from_file.stats.gram)
