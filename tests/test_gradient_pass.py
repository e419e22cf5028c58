"""The compiled gradient pass: traced once, streamed over batches, checked against separate tapes."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import pytest

import gradviz
from gradviz import data as data_mod
from gradviz.backends.tensorflow.gradient_pass import GradientPass
from gradviz.core.stats import MEAN_GRADIENT, PER_BATCH


def _prepare(model: Any, batch_size: int, batches: int, seed: int = 0) -> tuple[Any, list[str], Any]:
    """Resolved losses, outputs and synthetic data, as ``analyze`` makes them (through ``prepare``)."""
    session = gradviz.prepare(model)
    return session.losses, session.outputs, session.data(batch_size=batch_size, batches=batches, seed=seed)


def compute(model: Any, losses: Any, data: Any, outputs: list[str], **kwargs: Any) -> Any:
    """A one-off pass: built, traced and run once."""
    progress = kwargs.pop("progress", None)
    return GradientPass(model, losses, outputs, **kwargs).run(data, progress=progress)


def _loss_fns(losses: Any, ys: Any) -> list[Any]:
    """The Keras loss each resolved loss calls on these targets."""
    return [loss.for_targets(tuple(ys[loss.output].shape)) for loss in losses]


def _separate_gradients(model: Any, terms: Any, outputs: list[str], loss_fns: list[Any], x: Any, ys: Any,
                        training: bool) -> list[list[np.ndarray]]:
    """Per loss, per variable gradients from one eager GradientTape per loss (no gradviz code)."""
    import tensorflow as tf

    grads = []
    for term, fn in zip(terms, loss_fns):
        with tf.GradientTape() as tape:
            pred = dict(zip(outputs, model(x[0], training=training)))
            value = fn(tf.convert_to_tensor(ys[term.output]), pred[term.output])
        grads.append([np.zeros(v.shape) if g is None else np.asarray(g, np.float64)
                      for v, g in zip(model.trainable_variables, tape.gradient(value, model.trainable_variables))])
    return grads


def _gram(grads: list[list[np.ndarray]]) -> np.ndarray:
    k = len(grads)
    return np.array([[[float(np.vdot(grads[i][v], grads[j][v])) for j in range(k)] for i in range(k)]
                     for v in range(len(grads[0]))])


@pytest.mark.parametrize("mode", [MEAN_GRADIENT, PER_BATCH])
def test_many_batches_trace_once(build_sample: Callable[..., Any], mode: str) -> None:
    model = build_sample("shared_trunk")
    terms, outputs, data = _prepare(model, batch_size=8, batches=6)
    gradient_pass = GradientPass(model, terms, outputs, mode=mode)
    first = gradient_pass.run(data)
    traced = gradient_pass.tracing_count()
    # mean-gradient: the accumulating step and the final reduction; per-batch: the statistics step
    assert traced == (2 if mode == MEAN_GRADIENT else 1)
    again = gradient_pass.run(data)
    # a second run reuses the traces; mean-gradient traces the zeroing of the sums, once
    assert gradient_pass.tracing_count() == traced + (1 if mode == MEAN_GRADIENT else 0)
    np.testing.assert_array_equal(first.gram, again.gram)  # and starts its sums afresh
    third = gradient_pass.run(data)
    assert gradient_pass.tracing_count() == traced + (1 if mode == MEAN_GRADIENT else 0)
    np.testing.assert_array_equal(first.gram, third.gram)


def test_sums_are_cleared_across_batch_modes(build_sample: Callable[..., Any]) -> None:
    """A mean-gradient run after a one-batch run after a mean-gradient run still starts from zero."""
    model = build_sample("shared_trunk")
    terms, outputs, data = _prepare(model, batch_size=8, batches=3)
    gradient_pass = GradientPass(model, terms, outputs)
    first = gradient_pass.run(data)
    gradient_pass.run(dataclasses.replace(data, batches=1))
    np.testing.assert_array_equal(gradient_pass.run(data).gram, first.gram)


def test_progress_reports_every_batch(build_sample: Callable[..., Any]) -> None:
    model = build_sample("shared_trunk")
    terms, outputs, data = _prepare(model, batch_size=4, batches=3)
    seen: list[tuple[int, int]] = []
    compute(model, terms, data, outputs, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.parametrize("mode", [MEAN_GRADIENT, PER_BATCH])
def test_statistics_match_separate_tapes(build_sample: Callable[..., Any], mode: str) -> None:
    """mean-gradient: Gram of the gradients averaged over batches; per-batch: average of per-batch Grams."""
    model = build_sample("shared_trunk")
    batches = 3
    terms, outputs, data = _prepare(model, batch_size=16, batches=batches)
    gradient_pass = GradientPass(model, terms, outputs, mode=mode, training=False)
    stats = gradient_pass.run(data)
    per_batch = []
    for b in range(batches):
        x, ys = data.batch(b)
        per_batch.append(_separate_gradients(model, terms, outputs, _loss_fns(terms, ys), x, ys, training=False))
    if mode == MEAN_GRADIENT:
        mean = [[sum(pb[k][v] for pb in per_batch) / batches for v in range(len(per_batch[0][k]))]
                for k in range(len(terms))]
        expected = _gram(mean)
    else:
        expected = sum(_gram(pb) for pb in per_batch) / batches
    np.testing.assert_allclose(stats.gram, expected, rtol=1e-5, atol=1e-9)
    assert stats.batches == batches and stats.mode == mode


def test_one_batch_matches_separate_tapes(build_sample: Callable[..., Any]) -> None:
    model = build_sample("ticket_router")
    terms, outputs, data = _prepare(model, batch_size=12, batches=1)
    stats = compute(model, terms, data, outputs, training=False)
    x, ys = data.batch(0)
    import tensorflow as tf

    grads = []
    for term, fn in zip(terms, _loss_fns(terms, ys)):
        with tf.GradientTape() as tape:
            pred = dict(zip(outputs, model(x, training=False)))
            value = fn(tf.convert_to_tensor(ys[term.output]), pred[term.output])
        grads.append([np.zeros(v.shape) if g is None else np.asarray(tf.convert_to_tensor(g), np.float64)
                      for v, g in zip(model.trainable_variables, tape.gradient(value, model.trainable_variables))])
    np.testing.assert_allclose(stats.gram, _gram(grads), rtol=1e-5, atol=1e-9)
    expected_max = np.array([[np.abs(grads[k][v]).max() for k in range(len(terms))]
                             for v in range(len(grads[0]))])
    np.testing.assert_allclose(stats.max_abs, expected_max, rtol=1e-6)


def test_timings_cover_every_stage(sample_path: Callable[[str], Any]) -> None:
    report = gradviz.analyze(sample_path("shared_trunk"), batches=2)
    timings = report.to_dict()["timings"]
    assert set(timings) == {"load", "graph", "losses", "data", "gradients", "analysis", "total"}
    assert timings["gradients"] > 0
    stages = sum(v for k, v in timings.items() if k != "total")
    assert timings["total"] >= stages - 1e-3
    report.add_timing("render", 0.25)
    assert report.timings["render"] == 0.25
    assert report.to_dict()["timings"]["total"] == pytest.approx(timings["total"] + 0.25, abs=1e-3)


@pytest.mark.parametrize("regularizer", ["kernel", "activity"])
def test_mean_of_identical_batches_is_one_batch_with_regularization(regularizer: str) -> None:
    """The regularization term's sums: foreseen (weight regularizers) or created in the trace (activity)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    x = keras.Input((6,), name="features")
    reg = {"kernel_regularizer" if regularizer == "kernel" else "activity_regularizer": keras.regularizers.l2(0.1)}
    h = layers.Dense(8, activation="tanh", name="trunk", **reg)(x)
    model = keras.Model(x, [layers.Dense(1, name="C")(h), layers.Dense(2, activation="softmax", name="D")(h)])
    model.compile(loss=["mse", "categorical_crossentropy"])
    terms, outputs, one = _prepare(model, batch_size=10, batches=1)
    twice = data_mod.Data(tuple(np.concatenate([a, a]) for a in one.x),
                          {k: np.concatenate([v, v]) for k, v in one.y.items()}, 10, 2, True)
    expected = compute(model, terms, one, outputs)
    gradient_pass = GradientPass(model, terms, outputs)
    for _ in range(2):
        stats = gradient_pass.run(twice)
        assert stats.loss_names == ("C", "D", "regularization")
        np.testing.assert_allclose(stats.gram, expected.gram, rtol=1e-5, atol=1e-10)
        np.testing.assert_array_equal(stats.exists, expected.exists)
    # accumulate + reduce (+ the accumulate step again when its trace creates the activity row),
    # + the zeroing of the sums before the second run
    assert gradient_pass.tracing_count() == (3 if regularizer == "kernel" else 4)


def _wide_model(nan_weight: bool = False) -> Any:
    """Variables larger than two Gram chunks (with a remainder), so the chunked float32 products run."""
    import keras
    from keras import layers

    from gradviz.backends.tensorflow.reduce import GRAM_CHUNK

    keras.utils.set_random_seed(1)
    x = keras.Input((300,), name="features")
    h = layers.Dense(500, activation="tanh", name="wide")(x)
    model = keras.Model(x, [layers.Dense(1, name="C")(h), layers.Dense(3, activation="softmax", name="D")(h)])
    model.compile(loss=["mse", "categorical_crossentropy"])
    assert 300 * 500 > 2 * GRAM_CHUNK and (300 * 500) % GRAM_CHUNK
    if nan_weight:
        kernel = model.get_layer("C").kernel
        kernel.assign(np.where(np.arange(500)[:, None] == 7, np.nan, kernel.numpy()))
    return model


def test_chunked_gram_of_large_variables_matches_float64() -> None:
    model = _wide_model()
    terms, outputs, data = _prepare(model, batch_size=32, batches=1)
    stats = compute(model, terms, data, outputs, training=False)
    x, ys = data.batch(0)
    grads = _separate_gradients(model, terms, outputs, _loss_fns(terms, ys), x, ys, training=False)
    np.testing.assert_allclose(stats.gram, _gram(grads), rtol=1e-6, atol=1e-12)
    expected_max = np.array([[np.abs(grads[k][v]).max() for k in range(len(terms))] for v in range(len(grads[0]))])
    np.testing.assert_allclose(stats.max_abs, expected_max, rtol=1e-6)
    assert stats.finite.all()


def test_chunked_gram_flags_non_finite_gradients() -> None:
    model = _wide_model(nan_weight=True)
    terms, outputs, data = _prepare(model, batch_size=8, batches=1)
    stats = compute(model, terms, data, outputs, training=False)
    wide = [i for i, v in enumerate(model.trainable_variables) if "wide" in v.path and "kernel" in v.path][0]
    assert not stats.finite[wide, 0]  # loss C is NaN: so is its gradient at the big kernel


def _conv_heads(seed: int = 0) -> Any:
    """Conv2D (with bias: oneDNN fuses its two gradient ops) + BatchNorm + L2, a Dense called twice, 3 heads."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((12, 12, 3), name="image")
    for i in range(3):
        x = layers.Conv2D(8, 3, padding="same", kernel_regularizer="l2", name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.Activation("relu", name=f"relu{i}")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    shared = layers.Dense(8, activation="relu", name="shared")
    x = shared(keras.ops.tanh(shared(x)))
    outputs = [layers.Dense(3, activation="softmax", name="C")(x), layers.Dense(1, name="D")(x),
               layers.Dense(1, activation="sigmoid", name="E")(x)]
    model = keras.Model(inputs, outputs, name="conv_heads")
    model.compile(optimizer="sgd", loss=["categorical_crossentropy", "mse", "binary_crossentropy"])
    return model


def _lockstep_edges(gradient_pass: GradientPass, data: Any) -> int:
    concrete = gradient_pass.step_stats.get_concrete_function(*gradient_pass.step_inputs(next(data.iter_batches())))
    barriers = {op.name for op in concrete.graph.get_operations() if op.name.startswith("lockstep")}
    return sum(1 for op in concrete.graph.get_operations() for c in op.control_inputs if c.name in barriers)


def test_lockstep_changes_no_number() -> None:
    """Backward passes in lockstep give what separate tapes give, and what unordered passes give."""
    model = _conv_heads()
    terms, outputs, data = _prepare(model, batch_size=6, batches=1)
    ordered = GradientPass(model, terms, outputs)
    stats = ordered.run(data)
    assert ordered.lockstep and _lockstep_edges(ordered, data) > 0  # really ordered, no fallback
    unordered = GradientPass(model, terms, outputs, lockstep=False)
    plain = unordered.run(data)
    assert _lockstep_edges(unordered, data) == 0
    np.testing.assert_allclose(stats.gram, plain.gram, rtol=1e-6, atol=1e-12)
    np.testing.assert_array_equal(stats.exists, plain.exists)
    x, ys = data.batch(0)
    grads = _separate_gradients(model, terms, outputs, _loss_fns(terms, ys), x, ys, training=True)
    names = list(stats.loss_names)
    outs = [names.index(t.name) for t in terms]
    np.testing.assert_allclose(stats.gram[:, outs][:, :, outs], _gram(grads), rtol=1e-5, atol=1e-9)


def test_lockstep_cycle_falls_back_to_unordered(monkeypatch: pytest.MonkeyPatch) -> None:
    """If a graph rewrite ties the ordering edges into a cycle, the pass retraces without them."""
    from gradviz.backends.tensorflow import lockstep

    real = lockstep.Lockstep.serialize

    def tangled(self: Any, done: list[list[Any]]) -> None:
        real(self, done)
        v = next(i for i, d in enumerate(done) if d)
        first = next(per_loss[v] for per_loss in self.dense if per_loss[v] is not None)
        first.op._add_control_input(done[v][0].op)  # the gradient waits for its own statistics

    monkeypatch.setattr(lockstep.Lockstep, "serialize", tangled)
    model = _conv_heads()
    terms, outputs, data = _prepare(model, batch_size=4, batches=1)
    gradient_pass = GradientPass(model, terms, outputs)
    stats = gradient_pass.run(data)
    assert not gradient_pass.lockstep
    assert "cycle" in str(gradient_pass.meta["lockstep_fallback"])  # the report's meta says so
    expected = GradientPass(model, terms, outputs, lockstep=False).run(data)
    np.testing.assert_allclose(stats.gram, expected.gram, rtol=1e-6, atol=1e-12)
    assert gradient_pass.tracing_count() == 2  # the tangled trace and the plain one


def test_lockstep_without_graph_internals_still_computes(monkeypatch: pytest.MonkeyPatch) -> None:
    """If TensorFlow drops the private graph API the ordering uses, the pass runs unordered."""
    from gradviz.backends.tensorflow import lockstep

    def missing(self: Any) -> Any:
        raise AttributeError("'Operation' object has no attribute '_add_control_input'")

    monkeypatch.setattr(lockstep.Lockstep, "order", missing)
    model = _conv_heads()
    terms, outputs, data = _prepare(model, batch_size=4, batches=1)
    gradient_pass = GradientPass(model, terms, outputs)
    stats = gradient_pass.run(data)
    assert _lockstep_edges(gradient_pass, data) == 0
    assert "graph internals" in str(gradient_pass.meta["lockstep_fallback"])
    expected = GradientPass(model, terms, outputs, lockstep=False).run(data)
    np.testing.assert_allclose(stats.gram, expected.gram, rtol=1e-6, atol=1e-12)


def test_session_runs_many_times_and_traces_once(sample_path: Callable[[str], Any]) -> None:
    """prepare() once, run() twice: the same report as analyze(), and the pass traced once."""
    session = gradviz.prepare(sample_path("shared_trunk"), execution="compiled")
    first = session.run(batch_size=8, batches=1, seed=3)
    traced = session.tracing_count()
    assert traced >= 1
    second = session.run(batch_size=8, batches=1, seed=3)
    assert session.tracing_count() == traced
    expected = gradviz.analyze(sample_path("shared_trunk"), batch_size=8, batches=1, seed=3, execution="compiled")
    for report in (first, second):
        assert {k: v for k, v in report.to_dict().items() if k != "timings"} == {
            k: v for k, v in expected.to_dict().items() if k != "timings"
        }
    assert first.meta["backend"] == "tensorflow" and first.meta["lockstep_fallback"] is None
