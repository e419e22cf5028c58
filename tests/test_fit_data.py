"""Data as Model.fit takes it: the gradients against Keras's own training step and separate tapes.

* Keras's step: with SGD at learning rate 1, the weight change of one ``fit`` step is minus the
  applied gradient, ``sum_k w_k g_k`` (plus the regularizers'), computed by Keras from the same
  data object with the same sample weights or class weights; its norm must be gradviz's
  ``combined_grad_norm`` for every variable, for arrays, tf.data, PyDataset and generators.
* Separate ``GradientTape``s, one per loss, each calling its Keras loss with the output's
  ``sample_weight``: every entry of the per-variable Gram matrix, over several batches with a
  partial last one; and the same numbers from every kind of input.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

import gradviz
from gradviz.core.spec import REGULARIZATION

ORDER = ("cls", "reg", "flag")
WEIGHTS = {"cls": 0.5, "reg": 0.3, "flag": 2.0}
N = 40

_rng = np.random.default_rng(0)
X = _rng.standard_normal((N, 6)).astype("float32")
Y = {
    "cls": _rng.integers(0, 4, N).astype("int32"),  # class ids for sparse_categorical_crossentropy
    "reg": _rng.standard_normal((N, 1)).astype("float32"),
    "flag": _rng.integers(0, 2, (N, 1)).astype("float32"),
}
SW = {name: _rng.uniform(0.0, 2.0, N).astype("float32") for name in ORDER}


def heads(seed: int = 0) -> keras.Model:
    """features -> trunk (L2) -> BatchNorm -> {cls: softmax(4), reg: linear(1), flag: sigmoid(1)}, weighted losses."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((6,), name="features")
    h = layers.Dense(8, activation="tanh", name="trunk", kernel_regularizer=keras.regularizers.l2(1e-2))(x)
    h = layers.BatchNormalization(name="bn")(h)
    outputs = [layers.Dense(4, activation="softmax", name="cls")(h), layers.Dense(1, name="reg")(h),
               layers.Dense(1, activation="sigmoid", name="flag")(h)]
    model = keras.Model(x, outputs, name="heads")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0),
                  loss=["sparse_categorical_crossentropy", "mse", "binary_crossentropy"],
                  loss_weights=[WEIGHTS[k] for k in ORDER])
    return model


class Batches(keras.utils.PyDataset):
    """A PyDataset over nested arrays, ``size`` rows a batch."""

    def __init__(self, data: Any, size: int) -> None:
        super().__init__()
        self.data, self.size = data, size
        self.rows = len(keras.tree.flatten(data)[0])

    def __len__(self) -> int:
        return math.ceil(self.rows / self.size)

    def __getitem__(self, index: int) -> Any:
        rows = slice(index * self.size, (index + 1) * self.size)
        return keras.tree.map_structure(lambda a: a[rows], self.data)


def batches_of(data: Any, size: int) -> Iterator[Any]:
    rows = len(keras.tree.flatten(data)[0])
    for start in range(0, rows, size):
        yield keras.tree.map_structure(lambda a: a[start:start + size], data)


def fit_style(kind: str, rows: int, size: int, weighted: bool = True) -> dict[str, Any]:
    """The first ``rows`` rows as ``analyze`` takes them, in one of the forms Model.fit takes."""
    x = X[:rows]
    ys = tuple(Y[k][:rows] for k in ORDER)
    sws = tuple(SW[k][:rows] for k in ORDER)
    steps = math.ceil(rows / size)
    packed = (x, ys, sws) if weighted else (x, ys)
    if kind == "numpy":
        return {"x": x, "y": list(ys), "sample_weight": list(sws) if weighted else None, "batch_size": size}
    if kind == "numpy-dict":  # gradviz also takes dicts by name (Keras's fit wants a list for list outputs)
        return {"x": {"features": x}, "y": dict(zip(ORDER, ys)),
                "sample_weight": dict(zip(ORDER, sws)) if weighted else None, "batch_size": size}
    if kind == "tf.data":
        return {"x": tf.data.Dataset.from_tensor_slices(packed).batch(size)}
    if kind == "PyDataset":
        return {"x": Batches(packed, size)}
    assert kind == "generator"
    return {"x": batches_of(packed, size), "steps": steps}


def keras_step(model: keras.Model, data: dict[str, Any], **fit_kwargs: Any) -> tuple[dict[str, np.ndarray], float]:
    """One fit step from the model's current weights: minus the weight change per variable, and the loss.

    The model's weights are put back afterwards (SGD keeps no slots), so one model serves many steps.
    """
    data = dict(data)
    if "steps" in data:
        fit_kwargs["steps_per_epoch"] = data.pop("steps")
    initial = model.get_weights()
    before = {v.path: np.array(v.numpy(), np.float64) for v in model.trainable_variables}
    history = model.fit(**data, **fit_kwargs, epochs=1, shuffle=False, verbose=0)
    applied = {v.path: before[v.path] - np.array(v.numpy(), np.float64) for v in model.trainable_variables}
    model.set_weights(initial)
    return applied, float(history.history["loss"][0])


def assert_matches_keras_step(report: Any, applied: dict[str, np.ndarray], keras_loss: float,
                              weight_norms: dict[str, float]) -> None:
    assert sum(l.weight * l.value for l in report.losses) == pytest.approx(keras_loss, rel=1e-5)
    assert {v.path for v in report.variables} == set(applied)
    for var in report.variables:
        delta = float(np.linalg.norm(applied[var.path]))
        # the float32 update w - g is rounded to the weight's precision: at most ~6e-8 |w| in norm
        assert var.combined_grad_norm == pytest.approx(delta, rel=1e-4, abs=2e-7 * weight_norms[var.path]), var.path


KINDS = ("numpy", "numpy-dict", "tf.data", "PyDataset", "generator")


#: both ways the gradient pass runs (``prepare(execution=...)``): each must give Keras's numbers
EXECUTIONS = ("eager", "compiled")


@pytest.fixture(scope="module", params=EXECUTIONS)
def execution(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def one_output_weights() -> dict[str, Any]:
    ys = {k: Y[k][:16] for k in ORDER}
    return {"x": X[:16], "y": ys, "sample_weight": {"cls": SW["cls"][:16]}, "batch_size": 16}


@pytest.fixture(scope="module")
def keras_one_step() -> dict[str, Any]:
    """Keras's fit step per input kind on one weighted batch of 16 rows (the model's weights restored after each)."""
    model = heads()
    norms = {v.path: float(np.linalg.norm(v.numpy())) for v in model.trainable_variables}
    one_array = {"x": X[:16], "y": [Y[k][:16] for k in ORDER], "sample_weight": SW["reg"][:16], "batch_size": 16}
    steps = {kind: keras_step(model, fit_style("numpy" if kind == "numpy-dict" else kind, 16, 16)) for kind in KINDS}
    steps["one-array"] = keras_step(model, one_array)
    ones = np.ones(16, "float32")
    # weights for one output only: the others are unweighted (Keras's fit wants all three: ones)
    steps["one-output"] = steps["one-output-py-dataset"] = keras_step(
        model, {"x": X[:16], "y": [Y[k][:16] for k in ORDER], "sample_weight": [SW["cls"][:16], ones, ones],
                "batch_size": 16})
    return {"model": model, "steps": steps, "norms": norms, "one-array": one_array}


@pytest.fixture(scope="module")
def one_step(keras_one_step: dict[str, Any], execution: str) -> dict[str, Any]:
    """Per input kind: gradviz's report on one weighted batch of 16 rows, in one execution, and Keras's steps.

    One session serves every kind (its pass is compiled once); Keras steps from the same weights each time.
    """
    session = gradviz.prepare(keras_one_step["model"], execution=execution)
    reports = {kind: session.run(**fit_style(kind, 16, 16)) for kind in KINDS}
    reports["unweighted"] = session.run(**fit_style("numpy", 16, 16, weighted=False))
    reports["one-array"] = session.run(**keras_one_step["one-array"])
    reports["one-output"] = session.run(**one_output_weights())
    one = one_output_weights()
    reports["one-output-py-dataset"] = session.run(x=Batches((one["x"], one["y"], one["sample_weight"]), 16))
    return {"reports": reports, "steps": keras_one_step["steps"], "norms": keras_one_step["norms"],
            "execution": execution}


@pytest.mark.parametrize("kind", [*KINDS, "one-array", "one-output", "one-output-py-dataset"])
def test_sample_weighted_gradient_is_what_keras_fit_applies(one_step: dict[str, Any], kind: str) -> None:
    """Sample weights per output (a list, a dict, in the batches), one array for every loss, or for one output."""
    report = one_step["reports"][kind]
    assert [l.name for l in report.losses] == [*ORDER, REGULARIZATION]
    assert report.meta["sample_weight"] is True and report.meta["batches"] == 1
    assert report.meta["execution"] == one_step["execution"]
    assert_matches_keras_step(report, *one_step["steps"][kind], one_step["norms"])


@pytest.fixture(scope="module")
def keras_per_loss_steps() -> dict[str, Any]:
    """Per loss k, Keras's fit step with every other loss weighted 0: the weight change is w_k g_k + g_reg."""
    model = heads()
    norms = {v.path: float(np.linalg.norm(v.numpy())) for v in model.trainable_variables}
    steps = {}
    for k in ORDER:
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0),
                      loss=["sparse_categorical_crossentropy", "mse", "binary_crossentropy"],
                      loss_weights=[WEIGHTS[j] if j == k else 0.0 for j in ORDER])
        steps[k] = keras_step(model, fit_style("numpy", 16, 16))[0]
    return {"steps": steps, "norms": norms, "paths": [v.path for v in model.trainable_variables]}


def test_each_loss_gradient_with_sample_weights_is_what_keras_fit_applies(
    keras_per_loss_steps: dict[str, Any], one_step: dict[str, Any]
) -> None:
    """Per loss, not only combined: ``|w_k g_k + g_reg|`` from gradviz's Gram matrix equals Keras's step.

    gradviz's per-variable Gram matrix holds every loss's gradient norm and every pair's inner product, so
    the norm of the step Keras takes with only loss k weighted (and the regularizer, always on) is
    ``sqrt(w_k^2 G_kk + 2 w_k G_kr + G_rr)``.
    """
    report = one_step["reports"]["numpy"]
    stats = report.stats
    assert [v.path for v in report.variables] == keras_per_loss_steps["paths"]
    r = list(stats.loss_names).index(REGULARIZATION)
    for k, name in enumerate(ORDER):
        w = WEIGHTS[name]
        for v, path in enumerate(keras_per_loss_steps["paths"]):
            g = stats.gram[v]
            expected = float(np.sqrt(max(w * w * g[k, k] + 2 * w * g[k, r] + g[r, r], 0.0)))
            delta = float(np.linalg.norm(keras_per_loss_steps["steps"][name][path]))
            assert expected == pytest.approx(delta, rel=1e-4, abs=2e-7 * keras_per_loss_steps["norms"][path]), \
                (name, path)
        assert report.losses[k].weight == w


def test_sample_weights_change_the_gradient(one_step: dict[str, Any]) -> None:
    weighted, unweighted = one_step["reports"]["numpy"], one_step["reports"]["unweighted"]
    assert unweighted.meta["sample_weight"] is False
    assert unweighted.layer("trunk").combined_grad_norm != pytest.approx(weighted.layer("trunk").combined_grad_norm,
                                                                        rel=1e-3)


def tape_gradients(model: keras.Model, x: np.ndarray, y: dict[str, np.ndarray],
                   sw: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
    """Per loss (and regularization), per variable: the gradient from a tape of its own, loss(y, p, sample_weight)."""
    fns = {"cls": keras.losses.SparseCategoricalCrossentropy(), "reg": keras.losses.MeanSquaredError(),
           "flag": keras.losses.BinaryCrossentropy()}
    out = []
    for name in [*ORDER, REGULARIZATION]:
        with tf.GradientTape() as tape:
            pred = dict(zip(ORDER, model(x, training=True)))
            value = tf.add_n(model.losses) if name == REGULARIZATION else fns[name](y[name], pred[name], sw[name])
        out.append([np.zeros(v.shape) if g is None else np.asarray(g, np.float64)
                    for v, g in zip(model.trainable_variables, tape.gradient(value, model.trainable_variables))])
    return out


@pytest.fixture(scope="module")
def over_batches(execution: str) -> dict[str, Any]:
    """Each input kind's report over 40 rows in batches of 16 (16, 16, 8), and the separate tapes' Gram."""
    model = heads()
    session = gradviz.prepare(model, execution=execution)
    reports = {kind: session.run(**fit_style(kind, N, 16)) for kind in KINDS}
    per_batch = [tape_gradients(model, X[s:s + 16], {k: v[s:s + 16] for k, v in Y.items()},
                                {k: v[s:s + 16] for k, v in SW.items()}) for s in (0, 16, 32)]
    mean = [[sum(b[k][v] for b in per_batch) / 3 for v in range(len(per_batch[0][k]))] for k in range(4)]
    gram = np.array([[[float(np.vdot(mean[i][v], mean[j][v])) for j in range(4)] for i in range(4)]
                     for v in range(len(mean[0]))])
    return {"reports": reports, "gram": gram, "execution": execution}


def assert_gram_close(actual: np.ndarray, expected: np.ndarray, rel: float = 1e-4) -> None:
    """Every entry within ``rel`` of the two gradients' norms (a cosine to ``rel``): near-orthogonal pairs'
    tiny inner products carry float32 noise of that size, whatever their own magnitude."""
    diagonal = np.sqrt(np.maximum(np.einsum("vkk->vk", expected), 0.0))
    scale = diagonal[:, :, None] * diagonal[:, None, :]
    excess = np.abs(actual - expected) - (rel * scale + 1e-12)
    assert excess.max() <= 0, np.unravel_index(excess.argmax(), excess.shape)


def test_every_per_loss_gram_entry_matches_separate_tapes_with_sample_weights(over_batches: dict[str, Any]) -> None:
    stats = over_batches["reports"]["numpy"].stats
    assert over_batches["reports"]["numpy"].meta["execution"] == over_batches["execution"]
    assert list(stats.loss_names) == [*ORDER, REGULARIZATION] and stats.batches == 3
    assert_gram_close(stats.gram, over_batches["gram"])
    diagonal = np.einsum("vkk->vk", stats.gram)  # the norms themselves: relative 1e-4 each
    np.testing.assert_allclose(diagonal, np.einsum("vkk->vk", over_batches["gram"]), rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("kind", ["numpy-dict", "tf.data", "PyDataset", "generator"])
def test_every_input_kind_gives_the_same_numbers(over_batches: dict[str, Any], kind: str) -> None:
    reference = over_batches["reports"]["numpy"]
    report = over_batches["reports"][kind]
    assert report.meta["batches"] == 3 and report.meta["sample_weight"] is True
    assert_gram_close(report.stats.gram, reference.stats.gram)
    for var, ref in zip(report.variables, reference.variables):
        assert var.combined_grad_norm == pytest.approx(ref.combined_grad_norm, rel=1e-4)


# -- class weights and class ids ---------------------------------------------------------------------


CLASS_WEIGHT = {0: 0.2, 1: 1.0, 2: 3.0}
IDS = Y["cls"][:16] % 3


def classifier() -> keras.Model:
    """One softmax output compiled with 'crossentropy': Keras picks the sparse variant for class ids."""
    keras.utils.set_random_seed(4)
    x = keras.Input((6,), name="features")
    h = layers.Dense(8, activation="tanh", name="trunk")(x)
    model = keras.Model(x, layers.Dense(3, activation="softmax", name="label")(h), name="classifier")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss="crossentropy")
    return model


def class_data(kind: str, ids: np.ndarray) -> dict[str, Any]:
    if kind == "numpy":
        return {"x": X[:16], "y": ids, "batch_size": 16}
    if kind == "tf.data":
        return {"x": tf.data.Dataset.from_tensor_slices((X[:16], ids)).batch(16)}
    return {"x": Batches((X[:16], ids), 16)}


CLASS_CASES = [(kind, form) for kind in ("numpy", "tf.data", "PyDataset") for form in ("ids", "ids-1")]


@pytest.fixture(scope="module")
def class_steps(execution: str) -> dict[str, Any]:
    """Per input kind and target form: gradviz with class_weight, and Keras's fit step with the same."""
    out: dict[Any, Any] = {}
    for form in ("ids", "ids-1"):
        # one model per target form: Keras's compiled train step, once traced on ids of one rank,
        # relaxes a second rank to an unknown one and fails (gradviz keeps a trace per rank)
        model = classifier()
        out["norms"] = {v.path: float(np.linalg.norm(v.numpy())) for v in model.trainable_variables}
        session = gradviz.prepare(model, execution=execution)
        ids = IDS if form == "ids" else IDS[:, None]
        for kind in ("numpy", "tf.data", "PyDataset"):
            out[kind, form] = (session.run(class_weight=CLASS_WEIGHT, **class_data(kind, ids)),
                               keras_step(model, class_data(kind, ids), class_weight=CLASS_WEIGHT))
    # the same session on both target forms and one-hot rows: a trace per form, none relaxed
    out["unweighted"] = session.run(**class_data("numpy", IDS))
    out["one-hot"] = session.run(**class_data("numpy", np.eye(3, dtype="float32")[IDS]))
    out["execution"] = execution
    return out


@pytest.mark.parametrize("kind, form", CLASS_CASES)
def test_class_weights_as_keras_applies_them(class_steps: dict[Any, Any], kind: str, form: str) -> None:
    """'crossentropy' on class ids (with or without a trailing 1) takes Keras's sparse variant, weighted by class."""
    report, (applied, keras_loss) = class_steps[kind, form]
    assert report.meta["execution"] == class_steps["execution"]
    assert report.meta["class_weight"] == {"0": 0.2, "1": 1.0, "2": 3.0} and report.meta["sample_weight"] is True
    assert_matches_keras_step(report, applied, keras_loss, class_steps["norms"])
    unweighted = class_steps["unweighted"].layer("trunk").combined_grad_norm
    assert unweighted != pytest.approx(report.layer("trunk").combined_grad_norm, rel=1e-3)


def test_class_ids_and_one_hot_give_the_same_crossentropy_gradient(class_steps: dict[Any, Any]) -> None:
    assert_gram_close(class_steps["unweighted"].stats.gram, class_steps["one-hot"].stats.gram, rel=1e-5)


# -- tf.data.Dataset.save directories -------------------------------------------------------------------


def test_saved_dataset_of_rows_or_batches(tmp_path: Path, cli: Any) -> None:
    model = heads()
    reference = gradviz.analyze(model, **fit_style("numpy", 32, 16))
    rows = tf.data.Dataset.from_tensor_slices((X, tuple(Y[k] for k in ORDER), tuple(SW[k] for k in ORDER)))
    rows.save(str(tmp_path / "rows"))
    rows.batch(16).save(str(tmp_path / "batched"))
    rows.batch(8).save(str(tmp_path / "batched_by_8"))
    session = gradviz.prepare(model)
    for directory, size in [("rows", 16), ("batched", None), ("batched_by_8", 16)]:
        report = session.run(data=tmp_path / directory, batch_size=size, batches=2)
        assert report.meta["data"] == str(tmp_path / directory) and report.meta["batches"] == 2
        np.testing.assert_allclose(report.stats.gram, reference.stats.gram, rtol=1e-5, err_msg=directory)
    path = tmp_path / "heads.keras"
    model.save(path)
    result = cli("inspect", path, "--data", tmp_path / "rows", "--batch-size", "16", "--batches", "2", "--json")
    assert result.exit_code == 0, result.stderr
    import json

    document = json.loads(result.stdout)
    assert document["meta"]["sample_weight"] is True
    by_path = {v["path"]: v["combined_grad_norm"] for v in document["variables"]}
    for var in reference.variables:
        assert by_path[var.path] == pytest.approx(var.combined_grad_norm, rel=1e-5)


def test_eager_and_compiled_give_the_same_weighted_numbers() -> None:
    """Sample weights over batches with a partial last one, and class weights: the two executions agree."""
    model, one = heads(), classifier()
    cases = [(model, fit_style("tf.data", N, 16)), (one, {**class_data("numpy", IDS), "class_weight": CLASS_WEIGHT})]
    for m, data in cases:
        eager, compiled = (gradviz.prepare(m, execution=e).run(**data) for e in EXECUTIONS)
        assert (eager.meta["execution"], compiled.meta["execution"]) == EXECUTIONS
        assert eager.meta["sample_weight"] is compiled.meta["sample_weight"] is True
        assert_gram_close(eager.stats.gram, compiled.stats.gram, rel=1e-5)
        np.testing.assert_allclose([l.value for l in eager.losses], [l.value for l in compiled.losses], rtol=1e-6)
