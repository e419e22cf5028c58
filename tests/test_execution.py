"""Eager and compiled execution: the rule that picks one, and the same numbers from both.

Both passes differentiate the same forward (``model.stateless_call`` and the resolved
losses) and reduce with the same Gram code, so their statistics agree to float32
rounding; the eager pass is also checked against separate tapes on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import gradviz
from gradviz.backends import execution
from gradviz.backends.tensorflow.eager_pass import EagerPass
from gradviz.backends.tensorflow.gradient_pass import GradientPass
from gradviz.core.stats import MEAN_GRADIENT, PER_BATCH
from gradviz.errors import DataError
from test_gradient_pass import _conv_heads
from test_gradients import _kitchen_sink, _tape_gradients, _write_npz


# -- the rule -------------------------------------------------------------------------------


def test_auto_is_eager_for_few_batches_and_compiled_for_many() -> None:
    one = execution.choose("auto", batches=1, losses=3, params=23_559_180)
    assert one == execution.Execution("eager", "1 batch: tracing would cost more than it saves")
    edge = execution.choose("auto", batches=execution.EAGER_MAX_BATCHES, losses=3, params=1000)
    assert edge.mode == "eager"
    many = execution.choose("auto", batches=execution.EAGER_MAX_BATCHES + 1, losses=3, params=1000)
    assert many.mode == "compiled" and "tracing pays off" in many.reason


def test_auto_compiles_when_eager_gradient_copies_are_large() -> None:
    params = execution.EAGER_MAX_GRADIENT_BYTES // (4 * 8) + 1  # 8 losses: just over the limit
    chosen = execution.choose("auto", batches=1, losses=8, params=params)
    assert chosen.mode == "compiled" and "8 gradient copies" in chosen.reason
    assert execution.choose("auto", batches=1, losses=8, params=params - 1).mode == "eager"


def test_requested_execution_is_kept_and_unknown_is_refused() -> None:
    assert execution.choose("compiled", batches=1, losses=2, params=10) == execution.Execution("compiled", "requested")
    assert execution.choose("eager", batches=1000, losses=2, params=10) == execution.Execution("eager", "requested")
    with pytest.raises(DataError, match="valid: auto, eager, compiled"):
        execution.choose("jit", batches=1, losses=2, params=10)
    with pytest.raises(DataError, match="unknown execution 'jit'"):
        gradviz.prepare(_dropout_model(), execution="jit")


# -- the same numbers -------------------------------------------------------------------------


def _both(model: Any, batch_size: int, batches: int, mode: str = MEAN_GRADIENT, training: bool = True) -> Any:
    session = gradviz.prepare(model, training=training)
    data = session.data(batch_size=batch_size, batches=batches, seed=1)
    compiled = GradientPass(model, session.losses, session.outputs, mode=mode, training=training).run(data)
    eager = EagerPass(model, session.losses, session.outputs, mode=mode, training=training).run(data)
    return compiled, eager


def _assert_same(compiled: Any, eager: Any) -> None:
    assert eager.loss_names == compiled.loss_names
    np.testing.assert_array_equal(eager.exists, compiled.exists)  # None vs zero kept apart alike
    np.testing.assert_array_equal(eager.finite, compiled.finite)
    np.testing.assert_allclose(eager.loss_values, compiled.loss_values, rtol=1e-6)
    np.testing.assert_allclose(eager.gram, compiled.gram, rtol=1e-5, atol=1e-9)
    # atol: a conv bias before BatchNorm has a gradient of pure rounding noise (~1e-8)
    np.testing.assert_allclose(eager.max_abs, compiled.max_abs, rtol=1e-5, atol=1e-7)
    assert eager.batches == compiled.batches and eager.mode == compiled.mode


@pytest.mark.parametrize(("batches", "mode"), [(1, MEAN_GRADIENT), (3, MEAN_GRADIENT), (3, PER_BATCH)])
def test_eager_equals_compiled_with_batchnorm_regularizer_shared_layer_and_ops(batches: int, mode: str) -> None:
    """Conv + BatchNorm (training: batch statistics, state threaded across batches), an L2
    kernel regularizer (the regularization term), a Dense called twice, a keras.ops node."""
    compiled, eager = _both(_conv_heads(), batch_size=6, batches=batches, mode=mode)
    assert compiled.has_regularization and eager.has_regularization
    _assert_same(compiled, eager)


def _dropout_model() -> keras.Model:
    keras.utils.set_random_seed(4)
    x = keras.Input((10,), name="features")
    h = layers.Dense(16, activation="relu", name="trunk")(x)
    h = layers.Dropout(0.5, seed=7, name="drop")(h)
    model = keras.Model(x, [layers.Dense(1, name="C")(h), layers.Dense(3, activation="softmax", name="D")(h)])
    model.compile(loss=["mse", "categorical_crossentropy"])
    return model


@pytest.mark.parametrize("training", [True, False])
def test_eager_equals_compiled_with_dropout(training: bool) -> None:
    """Dropout draws from the seed state the pass is given (stateless): the same masks in both modes."""
    compiled, eager = _both(_dropout_model(), batch_size=8, batches=2, training=training)
    _assert_same(compiled, eager)
    if training:  # the masks are really on: inference gives other numbers
        inference, _ = _both(_dropout_model(), batch_size=8, batches=2, training=False)
        assert not np.allclose(inference.gram, compiled.gram)


def test_eager_matches_separate_tapes_and_keeps_none_apart_from_zero(tmp_path: Path) -> None:
    """Nested model, shared layer, keras.ops, Embedding, BatchNorm, both regularizers, stop_gradient, argmax."""
    model = _kitchen_sink()
    rng = np.random.default_rng(5)
    x = {"ids": rng.integers(0, 40, (8, 6)).astype("int32"), "feats": rng.standard_normal((8, 8)).astype("float32")}
    y = {"h1": rng.integers(0, 3, (8,)).astype("int32"), "h2": rng.standard_normal((8, 1)).astype("float32"),
         "h3": rng.standard_normal((8, 2)).astype("float32"), "h4": rng.standard_normal((8, 1)).astype("float32")}
    data = _write_npz(tmp_path / "d.npz", x, y)
    report = gradviz.analyze(model, data=data, batch_size=8, execution="eager")
    assert report.meta["execution"] == "eager"
    stats = report.stats
    assert stats is not None
    names, grads = _tape_gradients(model, [x["ids"], x["feats"]], y)
    assert list(stats.loss_names) == names
    absent = 0
    for v in range(len(model.trainable_variables)):
        for i in range(len(names)):
            assert bool(stats.exists[v, i]) == (grads[i][v] is not None)
            absent += grads[i][v] is None
            for j in range(len(names)):
                if grads[i][v] is None or grads[j][v] is None:
                    assert stats.gram[v, i, j] == 0.0
                    continue
                gi, gj = (np.asarray(tf.convert_to_tensor(g), np.float64) for g in (grads[i][v], grads[j][v]))
                expected = float(np.sum(gi * gj))
                assert stats.gram[v, i, j] == pytest.approx(expected, rel=1e-4, abs=1e-10)
    assert absent > 0  # stop_gradient and argmax: gradients that do not exist
    compiled = gradviz.analyze(model, data=data, batch_size=8, execution="compiled")
    assert compiled.stats is not None
    _assert_same(compiled.stats, stats)


def test_large_variables_take_the_chunked_products_eagerly_too() -> None:
    from test_gradient_pass import _wide_model

    compiled, eager = _both(_wide_model(), batch_size=16, batches=1, training=False)
    _assert_same(compiled, eager)


# -- what the user sees --------------------------------------------------------------------


def test_report_says_which_execution_ran_and_why(sample_path: Callable[[str], Path]) -> None:
    session = gradviz.prepare(sample_path("shared_trunk"))
    one = session.run(batch_size=8)
    assert one.meta["execution"] == "eager"
    assert one.meta["execution_reason"] == "1 batch: tracing would cost more than it saves"
    assert session.tracing_count() == 0  # nothing traced for the default single batch
    many = session.run(batch_size=2, batches=execution.EAGER_MAX_BATCHES + 1)
    assert many.meta["execution"] == "compiled" and session.tracing_count() > 0
    assert one.to_dict()["meta"]["execution"] == "eager"  # and in the JSON report


def test_cli_header_names_the_execution(cli: Callable[..., Any], sample_path: Callable[[str], Path]) -> None:
    result = cli("inspect", sample_path("shared_trunk"))
    assert result.exit_code == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    header = lines[:lines.index("Losses")]  # the source line may wrap on a narrow terminal
    assert "Gradients: eager (1 batch: tracing would cost more than it saves)" in header
    result = cli("inspect", sample_path("shared_trunk"), "--execution", "compiled", "--json")
    assert result.exit_code == 0, result.stderr
    assert '"execution": "compiled"' in result.stdout and '"execution_reason": "requested"' in result.stdout


def test_cli_refuses_an_unknown_execution(cli: Callable[..., Any], sample_path: Callable[[str], Path]) -> None:
    result = cli("inspect", sample_path("shared_trunk"), "--execution", "jit")
    assert result.exit_code == 2 and "'jit' is not one of 'auto', 'eager', 'compiled'" in result.stderr


def test_eager_and_compiled_cli_reports_agree(cli: Callable[..., Any], sample_path: Callable[[str], Path]) -> None:
    import json

    reports = [json.loads(cli("inspect", sample_path("ticket_router"), "--execution", e, "--json").stdout)
               for e in ("eager", "compiled")]
    for report in reports:
        del report["timings"], report["meta"]["execution"], report["meta"]["execution_reason"]
    eager, compiled = reports
    assert eager["findings"] == compiled["findings"]
    assert [l["status"] for l in eager["layers"]] == [l["status"] for l in compiled["layers"]]
    for a, b in zip(eager["layers"], compiled["layers"]):
        for loss, value in a["grad_norm"].items():
            assert (value is None) == (b["grad_norm"][loss] is None)
            if value is not None:
                assert value == pytest.approx(b["grad_norm"][loss], rel=1e-5, abs=1e-12)


def test_one_batch_of_mean_gradient_is_that_batch(build_sample: Callable[..., Any]) -> None:
    """An eager run over N identical batches equals one batch (the mean gradient of equal gradients)."""
    model = build_sample("shared_trunk")
    session = gradviz.prepare(model, training=False)
    one = session.data(batch_size=5, batches=1)
    twice = gradviz.data.Data(tuple(np.concatenate([a, a]) for a in one.x),
                              {k: np.concatenate([v, v]) for k, v in one.y.items()}, 5, 2, True)
    gradient_pass = EagerPass(model, session.losses, session.outputs, training=False)
    np.testing.assert_allclose(gradient_pass.run(twice).gram, gradient_pass.run(one).gram, rtol=1e-6, atol=1e-12)


def test_waiting_shows_the_stage_and_the_batches_on_a_terminal() -> None:
    import io

    from gradviz.cli import Waiting

    screen = io.StringIO()
    with Waiting(enabled=True, file=screen) as waiting:
        waiting.stage("importing TensorFlow")
        waiting.bar.refresh()
        waiting.stage("gradients (eager)", total=3)
        waiting.batches(2, 3)
        waiting.bar.refresh()
    drawn = screen.getvalue()
    assert "importing TensorFlow" in drawn and "gradients (eager)" in drawn and "2/3" in drawn


def test_nothing_is_drawn_when_stderr_is_not_a_terminal(cli: Callable[..., Any],
                                                        sample_path: Callable[[str], Path]) -> None:
    result = cli("inspect", sample_path("shared_trunk"), "--batches", "2")
    assert result.exit_code == 0
    assert result.stderr == ""  # no spinner, no bar, no escape codes in a pipe or a log
