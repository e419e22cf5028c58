"""gradviz's gradient figures against independent computations.

* Keras's own training step: with SGD at learning rate 1, the weight change of
  ``train_on_batch`` is minus the gradient Keras applied, so its norm must equal
  ``combined_grad_norm`` for every variable.
* The variables Keras's optimizer warns about ("Gradients do not exist for
  variables [...]") must be exactly those with no gradient from any loss.
* Separate ``GradientTape``s, one per loss: every entry of gradviz's per-variable
  Gram matrix (norms and loss-by-loss inner products) and which gradients exist.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers, ops

import gradviz
from gradviz.core.spec import REGULARIZATION

def _write_npz(path: Path, x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> Path:
    arrays = {f"x:{k}": v for k, v in x.items()} | {f"y:{k}": v for k, v in y.items()}
    np.savez(path, **arrays)
    return path


def _keras_step_gradients(model: keras.Model, x: Any, y: Any) -> tuple[dict[str, np.ndarray], list[str], float]:
    """Run one Keras training step with SGD(1.0); return -delta per variable path, warned names, loss."""
    before = {v.path: np.array(v.numpy(), dtype=np.float64) for v in model.trainable_variables}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logs = model.train_on_batch(x, y, return_dict=True)
    applied = {v.path: before[v.path] - np.array(v.numpy(), dtype=np.float64) for v in model.trainable_variables}
    warned: list[str] = []
    for w in caught:
        text = str(w.message)
        if text.startswith("Gradients do not exist for variables"):
            warned.extend(ast.literal_eval(text[text.index("["): text.index("]") + 1]))
    return applied, sorted(set(warned)), float(logs["loss"])


@pytest.fixture(scope="module")
def resnet_heads() -> keras.Model:
    """A real trunk (ResNet50, BatchNorm everywhere) with three heads, a regularizer and an unlossed head."""
    keras.utils.set_random_seed(1)
    trunk = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3), pooling="avg")
    image = keras.Input((64, 64, 3), name="image")
    features = trunk(image)
    cls = layers.Dense(5, activation="softmax", name="cls", kernel_regularizer=keras.regularizers.l2(1e-3))(features)
    reg = layers.Dense(1, name="reg")(features)
    flag = layers.Dense(1, activation="sigmoid", name="flag")(features)
    unused = layers.Dense(2, name="unused")(features)
    model = keras.Model(image, [cls, reg, flag, unused], name="resnet_heads")
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=1.0),
        loss=["sparse_categorical_crossentropy", "mse", "binary_crossentropy", None],
        loss_weights=[0.5, 0.3, 2.0, 1.0],
    )
    return model


def test_combined_grad_norm_is_what_keras_training_applies(resnet_heads: keras.Model, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((4, 64, 64, 3), dtype=np.float32)
    y = {
        "cls": np.array([0, 1, 2, 3]),
        "reg": rng.standard_normal((4, 1)).astype("float32"),
        "flag": np.array([[0], [1], [1], [0]], dtype="float32"),
    }
    data = _write_npz(tmp_path / "batch.npz", {"image": x}, y)
    # Both executions, on the same weights, against one Keras step. Keras's step is a traced graph, as is
    # the compiled pass; the eager pass runs the same ops one by one, without Grappler's rewrites, so its
    # float32 rounding differs, and the backward passes through 50 BatchNorm layers amplify that: up to
    # ~2e-4 relative on a few BatchNorm gammas (1e-6 and below elsewhere).
    reports = {execution: gradviz.analyze(resnet_heads, data=data, batch_size=4, execution=execution)
               for execution in ("compiled", "eager")}
    weight_norms = {v.path: float(np.linalg.norm(v.numpy())) for v in resnet_heads.trainable_variables}
    applied, warned, keras_loss = _keras_step_gradients(resnet_heads, x, [y["cls"], y["reg"], y["flag"]])
    for execution, report in reports.items():
        assert report.meta["execution"] == execution
        _check_against_keras_step(report, resnet_heads, weight_norms, applied, warned, keras_loss,
                                  rel=1e-4 if execution == "compiled" else 5e-4)


def _check_against_keras_step(report: Any, model: keras.Model, weight_norms: dict[str, float],
                              applied: dict[str, np.ndarray], warned: list[str], keras_loss: float,
                              rel: float) -> None:
    assert [l.name for l in report.losses] == ["cls", "reg", "flag", REGULARIZATION]
    weighted_total = sum(l.weight * l.value for l in report.losses)
    assert weighted_total == pytest.approx(keras_loss, rel=1e-5)
    assert len(report.variables) == len(model.trainable_variables) == len(applied)
    by_path = {v.path: v for v in report.variables}
    checked = noise = 0
    for var in report.variables:
        delta = np.linalg.norm(applied[var.path])
        if var.combined_grad_norm is None:
            assert delta == 0.0, var.path
            continue
        layer_class = {report.graph.nodes[n]["class_name"] for n in report.graph.successors(var.layer)}
        if var.path.endswith("/bias") and layer_class == {"BatchNormalization"}:
            # Training-mode BatchNorm subtracts the batch mean, so a conv bias before it has a true
            # gradient of 0: both sides are float32 rounding noise, tiny next to the kernel's gradient.
            kernel = by_path[var.path.replace("/bias", "/kernel")].combined_grad_norm or 0.0
            assert var.combined_grad_norm < 1e-2 * kernel and delta < 1e-2 * kernel, var.path
            noise += 1
            continue
        # The float32 update w - g is rounded to the weight's precision: at most ~6e-8 |w| in norm.
        rounding = 2e-7 * weight_norms[var.path]
        assert var.combined_grad_norm == pytest.approx(delta, rel=rel, abs=rounding), var.path
        checked += 1
    assert checked > 150 and noise == 53
    unreached = sorted(v.path for v in report.variables if all(n is None for n in v.grad_norm.values()))
    assert warned == unreached == ["unused/bias", "unused/kernel"]


def _kitchen_sink() -> keras.Model:
    """Nested model, a shared layer called twice, keras.ops nodes, two inputs, an Embedding,
    BatchNorm, a weight regularizer and an activity regularizer, stop_gradient and argmax."""
    keras.utils.set_random_seed(3)
    enc_in = keras.Input((16,), name="enc_in")
    enc = layers.Dense(16, activation="tanh", name="dense")(enc_in)
    enc = layers.BatchNormalization(name="bn")(enc)
    encoder = keras.Model(enc_in, enc, name="encoder")

    ids = keras.Input((6,), dtype="int32", name="ids")
    feats = keras.Input((8,), name="feats")
    emb = layers.GlobalAveragePooling1D(name="pool")(layers.Embedding(40, 8, name="emb")(ids))
    shared = layers.Dense(8, name="shared", kernel_regularizer=keras.regularizers.l2(1e-2))
    both = layers.Concatenate(name="cat")([shared(feats), shared(ops.square(feats)) + emb])
    trunk = encoder(both)
    trunk = layers.Dense(12, activation="relu", name="mix", activity_regularizer=keras.regularizers.l1(1e-3))(trunk)
    h1 = layers.Dense(3, activation="softmax", name="h1")(trunk)
    h2 = layers.Dense(1, name="h2")(ops.tanh(trunk))
    h3 = layers.Dense(2, name="h3")(ops.stop_gradient(trunk))
    picked = ops.expand_dims(ops.cast(ops.argmax(h1, axis=-1), "float32"), -1)
    h4 = layers.Dense(1, name="h4")(picked)
    model = keras.Model([ids, feats], [h1, h2, h3, h4], name="kitchen_sink")
    model.compile(loss=["sparse_categorical_crossentropy", "mse", "mae", "mse"], loss_weights=[1.0, 0.5, 0.25, 2.0])
    return model


def _tape_gradients(model: keras.Model, x: list[np.ndarray], y: dict[str, np.ndarray]) -> tuple[list[str], list[list[Any]]]:
    """Each loss's gradient from its own tape and its own forward pass (as a user would write it)."""
    fns = {
        "h1": keras.losses.SparseCategoricalCrossentropy(),
        "h2": keras.losses.MeanSquaredError(),
        "h3": keras.losses.MeanAbsoluteError(),
        "h4": keras.losses.MeanSquaredError(),
    }
    names = list(fns) + [REGULARIZATION]
    out: list[list[Any]] = []
    for name in names:
        with tf.GradientTape() as tape:
            outputs = dict(zip(model.output_names, model(x, training=True)))
            value = tf.add_n(model.losses) if name == REGULARIZATION else fns[name](y[name], outputs[name])
        out.append(tape.gradient(value, model.trainable_variables))
    return names, out


def test_gram_matrix_matches_separate_tapes(tmp_path: Path) -> None:
    model = _kitchen_sink()
    rng = np.random.default_rng(5)
    x = {"ids": rng.integers(0, 40, (8, 6)).astype("int32"), "feats": rng.standard_normal((8, 8)).astype("float32")}
    y = {
        "h1": rng.integers(0, 3, (8,)).astype("int32"),
        "h2": rng.standard_normal((8, 1)).astype("float32"),
        "h3": rng.standard_normal((8, 2)).astype("float32"),
        "h4": rng.standard_normal((8, 1)).astype("float32"),
    }
    data = _write_npz(tmp_path / "d.npz", x, y)
    report = gradviz.analyze(model, data=data, batch_size=8)
    stats = report.stats
    assert stats is not None
    names, grads = _tape_gradients(model, [x["ids"], x["feats"]], y)
    assert list(stats.loss_names) == names
    for v, var in enumerate(model.trainable_variables):
        for i in range(len(names)):
            gi = grads[i][v]
            assert bool(stats.exists[v, i]) == (gi is not None), (var.path, names[i])
            for j in range(len(names)):
                gj = grads[j][v]
                if gi is None or gj is None:
                    assert stats.gram[v, i, j] == 0.0
                    continue
                expected = float(np.sum(np.asarray(tf.convert_to_tensor(gi), np.float64) *
                                        np.asarray(tf.convert_to_tensor(gj), np.float64)))
                assert stats.gram[v, i, j] == pytest.approx(expected, rel=1e-4, abs=1e-10), (var.path, names[i], names[j])


def test_variables_are_unique_and_in_model_order() -> None:
    model = _kitchen_sink()
    report = gradviz.analyze(model, batch_size=4)
    paths = [v.path for v in report.variables]
    assert len(set(paths)) == len(paths) == len(model.trainable_variables)
    assert [v.shape for v in report.variables] == [tuple(v.shape) for v in model.trainable_variables]
    # the nested model's layers are qualified by its name
    assert {"encoder/dense", "encoder/bn"} <= {v.layer for v in report.variables}


def test_mean_gradient_over_batches_equals_gradient_of_mean(tmp_path: Path, build_sample: Any) -> None:
    model = build_sample("shared_trunk")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((12, 16)).astype("float32")
    y = {"C": rng.integers(0, 2, (12, 1)).astype("float32"), "D": rng.standard_normal((12, 1)).astype("float32")}
    data = _write_npz(tmp_path / "d.npz", {"features": x}, y)
    report = gradviz.analyze(model, data=data, batch_size=4, batches=3)
    fns = {"C": keras.losses.BinaryCrossentropy(), "D": keras.losses.MeanSquaredError()}
    for k, name in enumerate(["C", "D"]):
        total = [np.zeros(v.shape) for v in model.trainable_variables]
        for b in range(3):
            sl = slice(4 * b, 4 * b + 4)
            with tf.GradientTape() as tape:
                out = dict(zip(model.output_names, model(x[sl], training=True)))
                value = fns[name](y[name][sl], out[name])
            for acc, g in zip(total, tape.gradient(value, model.trainable_variables)):
                if g is not None:
                    acc += np.asarray(g, np.float64) / 3
        for var, mean_grad in zip(report.variables, total):
            norm = var.grad_norm[name]
            if norm is None:
                assert not mean_grad.any()
            else:
                assert norm == pytest.approx(np.linalg.norm(mean_grad), rel=1e-4)


def test_single_loss_applies_to_every_output_as_in_keras(build_sample: Any) -> None:
    model = build_sample("shared_trunk")
    report = gradviz.analyze(model, losses={None: "mse"}, batch_size=8)
    assert [(l.name, l.loss, l.weight) for l in report.losses] == [("C", "mse", 0.5), ("D", "mse", 0.3)]


def test_inference_mode_changes_batchnorm_gradients() -> None:
    model = _kitchen_sink()
    train = gradviz.analyze(model, batch_size=8, training=True)
    infer = gradviz.analyze(model, batch_size=8, training=False)
    assert train.layer("encoder/dense").grad_norm["h1"] != pytest.approx(infer.layer("encoder/dense").grad_norm["h1"])
    assert infer.meta["training"] is False


def test_list_losses_with_dict_weights_are_weighted_as_keras_trains_them(tmp_path: Path) -> None:
    keras.utils.set_random_seed(7)
    x_in = keras.Input((4,), name="x")
    h = layers.Dense(6, name="h")(x_in)
    model = keras.Model(x_in, [layers.Dense(1, name="out_b")(h), layers.Dense(1, name="out_a")(h)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss=["mse", "mse"],
                  loss_weights={"out_b": 1.0, "out_a": 0.1})
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 4)).astype("float32")
    y = {"out_b": rng.standard_normal((8, 1)).astype("float32"), "out_a": rng.standard_normal((8, 1)).astype("float32")}
    report = gradviz.analyze(model, data=_write_npz(tmp_path / "d.npz", {"x": x}, y), batch_size=8)
    (finding,) = report.findings_of("keras-weight-order")
    assert "out_b=0.1, out_a=1" in finding.message
    applied, _, keras_loss = _keras_step_gradients(model, x, [y["out_b"], y["out_a"]])
    assert sum(l.weight * l.value for l in report.losses) == pytest.approx(keras_loss, rel=1e-5)
    for var in report.variables:
        assert var.combined_grad_norm == pytest.approx(np.linalg.norm(applied[var.path]), rel=1e-4), var.path


@pytest.mark.parametrize("execution", ["eager", "compiled"])
@pytest.mark.parametrize("scale", [1e-21, 1e21])
def test_large_variable_norms_survive_extreme_gradient_sizes(scale: float, execution: str) -> None:
    """Variables over two Gram chunks use float32 products: tiny or huge gradients must not under/overflow."""
    def build(s: float) -> keras.Model:
        keras.utils.set_random_seed(0)
        x = keras.Input((512,), name="x")
        big = layers.Dense(512, name="big")(x)  # 262,144 weights: the chunked float32 path
        model = keras.Model(x, [layers.Dense(1, name="a")(big), layers.Dense(1, name="b")(big)])
        model.compile(loss=[lambda y, p: s * ops.mean(ops.square(y - p))] * 2)
        return model

    reference = gradviz.analyze(build(1.0), batch_size=8, execution=execution).layer("big").grad_norm
    scaled = gradviz.analyze(build(scale), batch_size=8, execution=execution)
    for name, norm in scaled.layer("big").grad_norm.items():
        assert norm / scale == pytest.approx(reference[name], rel=1e-6)
    assert scaled.layer("big").status == "shared" and not scaled.findings_of("nan-gradient")
