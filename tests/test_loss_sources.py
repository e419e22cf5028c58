"""Losses the model adds itself: each endpoint layer's add_loss is a loss of its own.

Checked against Keras's own training step (SGD at learning rate 1: the weight
change is minus the applied gradient) and against one GradientTape per term,
with the terms taken from the layers as a user would (``layer.losses``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers, ops

import gradviz
from gradviz.errors import LossSpecError


class Endpoint(layers.Layer):
    """Keras's OCR-example pattern: the layer computes the loss and adds it; the model has no compiled loss."""

    def call(self, y_true: Any, y_pred: Any) -> Any:
        self.add_loss(ops.mean(ops.square(y_true - y_pred)))
        return y_pred


class AuxHead(layers.Layer):
    """An auxiliary loss inside the trunk: projects the features, adds a loss on them, passes them on."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proj = layers.Dense(1, name="proj")

    def call(self, inputs: Any) -> Any:
        features, target = inputs
        self.add_loss(0.3 * ops.mean(ops.square(target - self.proj(features))))
        return features


def _endpoint_only() -> keras.Model:
    keras.utils.set_random_seed(11)
    x = keras.Input((4,), name="x")
    labels = keras.Input((1,), name="labels")
    h = layers.Dense(8, activation="tanh", name="h", activity_regularizer=keras.regularizers.l1(1e-3))(x)
    p = layers.Dense(1, name="p")(h)
    out = Endpoint(name="ctc_like")(labels, p)
    model = keras.Model([x, labels], out, name="endpoint_only")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))  # no loss: the layer adds it
    return model


def _mixed() -> keras.Model:
    keras.utils.set_random_seed(12)
    x = keras.Input((4,), name="x")
    t = keras.Input((1,), name="t")
    h = layers.Dense(8, activation="tanh", name="h", kernel_regularizer=keras.regularizers.l2(1e-2),
                     activity_regularizer=keras.regularizers.l1(1e-3))(x)
    h = AuxHead(name="aux")([h, t])
    trunk = layers.Dense(8, activation="relu", name="trunk")(h)
    side = layers.Dense(8, name="side")(x)  # its gradient exists but is zero (dead)
    model = keras.Model([x, t], [layers.Dense(1, name="C")(trunk), layers.Dense(1, name="D")(trunk + 0 * side)],
                        name="mixed")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss=["mse", "mse"], loss_weights=[1.0, 0.5])
    return model


def _data(rows: int = 8, seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = {"x": rng.standard_normal((rows, 4)).astype("float32"), "t": rng.standard_normal((rows, 1)).astype("float32")}
    y = {"C": rng.standard_normal((rows, 1)).astype("float32"), "D": rng.standard_normal((rows, 1)).astype("float32")}
    return x, y


def _npz(path: Path, x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> Path:
    np.savez(path, **{f"x:{k}": v for k, v in x.items()}, **{f"y:{k}": v for k, v in y.items()})
    return path


def _keras_step(model: keras.Model, x: Any, y: Any) -> tuple[dict[str, np.ndarray], float]:
    """-(weight change) of one train_on_batch with SGD(1.0): the gradient Keras applied; and its loss."""
    before = {v.path: np.array(v.numpy(), dtype=np.float64) for v in model.trainable_variables}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Gradients do not exist" for the untrained layer
        logs = model.train_on_batch(x, y, return_dict=True)
    return {p: before[p] - np.array(v.numpy(), np.float64) for p, v in
            zip(before, model.trainable_variables)}, float(logs["loss"])


def _assert_combined_is_keras_step(report: gradviz.Report, model: keras.Model, applied: dict[str, np.ndarray]) -> None:
    weights = {v.path: float(np.linalg.norm(v.numpy())) for v in model.trainable_variables}
    for var in report.variables:
        delta = float(np.linalg.norm(applied[var.path]))
        if var.combined_grad_norm is None:
            assert delta == 0.0, var.path
            continue
        # the float32 update w - g is rounded to w's precision: ~6e-8 |w| in norm
        assert var.combined_grad_norm == pytest.approx(delta, rel=1e-3, abs=2e-7 * weights[var.path]), var.path


def _assert_reach_is_separate_tapes(report: gradviz.Report, model: keras.Model,
                                    terms: dict[str, Any], x: Any) -> None:
    """Each term's gradient from its own tape: exists (not None) and nonzero exactly where gradviz says."""
    stats = report.stats
    assert stats is not None
    for name, term in terms.items():
        with tf.GradientTape() as tape:
            outputs = model(x, training=True)
            value = term(outputs)
        grads = tape.gradient(value, model.trainable_variables)
        k = stats.loss_names.index(name)
        for v, (var, g) in enumerate(zip(model.trainable_variables, grads)):
            assert bool(stats.exists[v, k]) == (g is not None), (name, var.path)
            nonzero = g is not None and bool(np.any(np.asarray(g) != 0))
            assert bool(stats.max_abs[v, k] > 0) == nonzero, (name, var.path)
            if g is not None:
                norm = float(np.linalg.norm(np.asarray(g, np.float64)))
                assert np.sqrt(stats.gram[v, k, k]) == pytest.approx(norm, rel=1e-4, abs=1e-12), (name, var.path)


@pytest.mark.parametrize("execution", ["eager", "compiled"])
def test_add_loss_only_endpoint_model_is_what_keras_trains(tmp_path: Path, execution: str) -> None:
    model = _endpoint_only()
    x, _ = _data()
    xs = {"x": x["x"], "labels": x["t"]}
    report = gradviz.analyze(model, data=_npz(tmp_path / "d.npz", xs, {}), batch_size=8, execution=execution)
    assert report.meta["execution"] == execution
    assert [(l.name, l.loss, l.output, l.weight, l.source) for l in report.losses] == [
        ("ctc_like", "add_loss", "ctc_like", 1.0, "add_loss"),
        ("regularization", "model.losses", None, 1.0, "regularization"),
    ]
    assert report.layer("h").reached_by == ("ctc_like",) and report.layer("p").reached_by == ("ctc_like",)
    assert ("ctc_like", "loss:ctc_like") in report.edges  # the loss hangs from its layer in the diagram
    assert not report.findings_of("no-loss-output")  # the endpoint's add_loss trains what feeds the output

    endpoint, h = model.get_layer("ctc_like"), model.get_layer("h")
    _assert_reach_is_separate_tapes(report, model, {
        "ctc_like": lambda _: tf.add_n(endpoint.losses),
        "regularization": lambda _: tf.add_n(h.losses),
    }, [xs["x"], xs["labels"]])
    applied, keras_loss = _keras_step(model, [xs["x"], xs["labels"]], None)
    assert sum(l.weight * l.value for l in report.losses) == pytest.approx(keras_loss, rel=1e-5)
    _assert_combined_is_keras_step(report, model, applied)


@pytest.mark.parametrize("execution", ["eager", "compiled"])
def test_compiled_losses_endpoint_and_regularizers_are_what_keras_trains(tmp_path: Path, execution: str) -> None:
    model = _mixed()
    x, y = _data(seed=1)
    report = gradviz.analyze(model, data=_npz(tmp_path / "d.npz", x, y), batch_size=8, execution=execution)
    assert report.meta["execution"] == execution
    assert [(l.name, l.source, l.weight) for l in report.losses] == [
        ("C", "compile", 1.0), ("D", "compile", 0.5), ("aux", "add_loss", 1.0), ("regularization", "regularization", 1.0),
    ]
    # the endpoint's term reaches the layer upstream of it (h) and its own projection, nothing downstream
    assert report.layer("h").reached_by == ("C", "D", "aux")
    assert report.layer("aux").reached_by == ("aux",)
    assert "aux" not in report.layer("trunk").reached_by
    assert report.layer("side").status == "dead"  # 0 * side: its gradient exists and is zero
    # aux passes h on to the heads, but its own weights serve its loss only: not a path C or D is blocked on
    assert not report.findings_of("blocked-path")

    aux, h = model.get_layer("aux"), model.get_layer("h")
    mse = keras.losses.MeanSquaredError()
    _assert_reach_is_separate_tapes(report, model, {
        "C": lambda out: mse(y["C"], out[0]),
        "D": lambda out: mse(y["D"], out[1]),
        "aux": lambda _: tf.add_n(aux.losses),
        "regularization": lambda _: tf.add_n(h.losses),
    }, [x["x"], x["t"]])
    applied, keras_loss = _keras_step(model, [x["x"], x["t"]], [y["C"], y["D"]])
    assert sum(l.weight * l.value for l in report.losses) == pytest.approx(keras_loss, rel=1e-5)
    _assert_combined_is_keras_step(report, model, applied)


def test_loss_weights_name_endpoint_layers(tmp_path: Path) -> None:
    model = _mixed()
    report = gradviz.analyze(model, batch_size=4, loss_weights={"aux": 0.25, "regularization": 2.0, "D": 1.0})
    assert {l.name: l.weight for l in report.losses} == {"C": 1.0, "D": 1.0, "aux": 0.25, "regularization": 2.0}
    with pytest.raises(LossSpecError, match="'trunk' is a layer, but it adds no loss"):
        gradviz.analyze(model, batch_size=4, loss_weights={"trunk": 0.5})
    with pytest.raises(LossSpecError, match="'nowhere' is not an output of the model; outputs are: C, D"):
        gradviz.prepare(model, loss_weights={"nowhere": 0.5})  # refused before anything runs


def test_an_endpoint_that_is_also_a_lossed_output_gets_its_own_name() -> None:
    keras.utils.set_random_seed(3)
    x = keras.Input((4,), name="x")
    t = keras.Input((1,), name="t")
    out = Endpoint(name="head")(t, layers.Dense(1, name="p")(x))
    model = keras.Model([x, t], out)
    model.compile(loss="mae")
    report = gradviz.analyze(model, batch_size=4)
    assert [(l.name, l.source, l.output) for l in report.losses] == [
        ("head", "compile", "head"), ("head.add_loss", "add_loss", "head"),
    ]
    assert report.layer("p").reached_by == ("head", "head.add_loss")


def test_a_blocked_endpoint_loss_is_a_blocked_path() -> None:
    keras.utils.set_random_seed(4)
    x = keras.Input((4,), name="x")
    t = keras.Input((1,), name="t")
    p = layers.Dense(1, name="p")(x)
    out = Endpoint(name="end")(t, ops.stop_gradient(p))
    model = keras.Model([x, t], [out, layers.Dense(1, name="q")(x)])
    model.compile(loss=[None, "mse"])
    report = gradviz.analyze(model, batch_size=4)
    (finding,) = report.findings_of("blocked-path")
    assert finding.losses == ("end",) and "p" in finding.layers
    assert "feeds layer 'end' (which adds the loss)" in finding.message


def test_a_model_without_any_loss_says_so() -> None:
    x = keras.Input((4,), name="x")
    model = keras.Model(x, layers.Dense(1, name="o")(x))
    with pytest.raises(LossSpecError, match="has no loss to analyse .*add_loss.*`losses=\\{OUTPUT: LOSS\\}` for outputs: o"):
        gradviz.analyze(model, batch_size=2)


def test_suggested_weights_put_only_compiled_losses_in_loss_weights() -> None:
    from gradviz.core import weighting

    report = gradviz.analyze(_mixed(), batch_size=8)
    suggestion = weighting.suggest(report, reference="h")
    assert suggestion.weights is not None and set(suggestion.weights) == {"C", "D", "aux", "regularization"}
    assert suggestion.loss_weights_line is not None and '"aux"' not in suggestion.loss_weights_line
    assert "--loss-weight aux=" in (suggestion.cli_options or "")
    assert any("aux is not weighted by compile()" in note for note in suggestion.notes)
    only_added = weighting.suggest(gradviz.analyze(_endpoint_only(), batch_size=8))  # nothing to balance, no crash
    assert only_added.weights is None and only_added.loss_weights_line is None


def test_cli_refuses_in_one_line_what_keras_refuses_and_takes_overrides(tmp_path: Path, cli: Any) -> None:
    keras.utils.set_random_seed(5)
    x = keras.Input((4,), name="x")
    model = keras.Model(x, [layers.Dense(1, name="C")(x), layers.Dense(1, name="D")(x)])
    model.compile(loss="mse", loss_weights=[1.0, 0.1])  # compile() takes it; Keras's first training step does not
    path = tmp_path / "m.keras"
    model.save(path)
    refused = cli("inspect", path, "--batch-size", "2")
    assert refused.exit_code == 1 and refused.stdout == "" and refused.stderr.count("\n") == 1
    assert ("Keras raises ValueError: loss_weights must match the number of losses, got 1 losses and 2 weights"
            in refused.stderr)
    overridden = cli("inspect", path, "--batch-size", "2", "--loss-weight", "C=1", "--loss-weight", "D=0.1", "--json")
    assert overridden.exit_code == 0, overridden.stderr
    import json

    assert [(l["name"], l["weight"]) for l in json.loads(overridden.stdout)["losses"]] == [("C", 1.0), ("D", 0.1)]


def test_an_endpoint_output_without_a_compiled_loss_takes_its_weight() -> None:
    report = gradviz.analyze(_endpoint_only(), batch_size=4, loss_weights={"ctc_like": 0.5})
    assert [(l.name, l.source, l.weight) for l in report.losses][0] == ("ctc_like", "add_loss", 0.5)


def test_a_weight_for_an_output_without_a_loss_is_refused() -> None:
    x = keras.Input((4,), name="x")
    model = keras.Model(x, [layers.Dense(1, name="C")(x), layers.Dense(1, name="D")(x)])
    model.compile(loss=["mse", None])
    with pytest.raises(LossSpecError, match="output 'D' has no loss .* its losses are: C"):
        gradviz.analyze(model, batch_size=2, loss_weights={"D": 2.0})


@pytest.mark.parametrize("batch_mode", ["mean-gradient", "per-batch"])
def test_both_executions_give_the_same_numbers_over_several_batches(tmp_path: Path, batch_mode: str) -> None:
    """The compiled pass's accumulators get a row for each loss found when it traces (endpoint, regularizers)."""
    x, y = _data(rows=24, seed=3)
    data = _npz(tmp_path / "d.npz", x, y)
    reports = {execution: gradviz.analyze(_mixed(), data=data, batch_size=8, batches=3, batch_mode=batch_mode,
                                          execution=execution)
               for execution in ("eager", "compiled")}
    eager, compiled = reports["eager"].stats, reports["compiled"].stats
    assert eager is not None and compiled is not None
    assert eager.loss_names == compiled.loss_names == ("C", "D", "aux", "regularization")
    np.testing.assert_array_equal(eager.exists, compiled.exists)
    np.testing.assert_allclose(eager.gram, compiled.gram, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(eager.loss_values, compiled.loss_values, rtol=1e-6)


@pytest.mark.parametrize("execution", ["eager", "compiled"])
def test_sample_weights_with_an_endpoint_and_regularizers_are_what_keras_trains(execution: str) -> None:
    """Fit-style data: sample weights reach the compiled losses (as CompileLoss applies them), not the
    endpoint's add_loss or the regularizers, exactly as in Keras's training step."""
    model = _mixed()
    x, y = _data(seed=5)
    rng = np.random.default_rng(6)
    weights = [rng.uniform(0.0, 2.0, 8).astype("float32"), rng.uniform(0.0, 2.0, 8).astype("float32")]
    report = gradviz.analyze(model, x=[x["x"], x["t"]], y=[y["C"], y["D"]], sample_weight=weights, batch_size=8,
                             execution=execution, progress=None)
    assert report.meta["sample_weight"] is True and report.meta["execution"] == execution
    assert [l.name for l in report.losses] == ["C", "D", "aux", "regularization"]
    before = {v.path: np.array(v.numpy(), dtype=np.float64) for v in model.trainable_variables}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logs = model.train_on_batch([x["x"], x["t"]], [y["C"], y["D"]], sample_weight=weights, return_dict=True)
    applied = {p: before[p] - np.array(v.numpy(), np.float64) for p, v in zip(before, model.trainable_variables)}
    assert sum(l.weight * l.value for l in report.losses) == pytest.approx(float(logs["loss"]), rel=1e-5)
    _assert_combined_is_keras_step(report, model, applied)
