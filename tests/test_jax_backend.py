"""The JAX backend against the TensorFlow backend, on the same model files and data, one process each.

``KERAS_BACKEND`` is fixed per process, so both backends run
``tests/backend_worker.py`` in subprocesses (at the same time) on the same
``.keras`` files, built and saved here once, and the same seeded synthetic
data. Compared: which gradients exist (TensorFlow's None vs JAX's structural
zeros, :mod:`gradviz.backends.jax.reachability`), finiteness, loss values, the
per-variable Gram matrices (relative 1e-4 on plain models; on BatchNorm models
gradients that are zero in theory are float32 noise on both sides), each
layer's status and the findings. The JAX numbers are also checked against
plain ``jax.grad`` on ``stateless_call``, one loss at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "backend_worker.py"
SAMPLES = ("shared_trunk", "dead_head", "stop_gradient_head", "chained_sequential", "ticket_router")
#: models whose BatchNorm layers make some gradients float32 noise (zero in theory)
BATCHNORM = ("nested_batchnorm",)

pytest.importorskip("jax")


def nested_batchnorm() -> Any:
    """A trunk with BatchNorm, a nested model with BatchNorm after BatchNorm, two heads."""
    import keras
    from keras import layers

    inner_in = keras.Input((8,))
    h = layers.Dense(8, name="inner_dense_1")(inner_in)
    h = layers.BatchNormalization(name="inner_bn_1")(h)
    h = layers.Dense(8, name="inner_dense_2")(h)
    h = layers.BatchNormalization(name="inner_bn_2")(h)
    inner = keras.Model(inner_in, layers.ReLU()(h), name="block")
    x = keras.Input((6,), name="features")
    t = layers.Dense(8, name="stem")(x)
    t = layers.BatchNormalization(name="stem_bn")(t)
    t = inner(layers.ReLU()(t))
    c = layers.Dense(1, name="C")(t)
    d = layers.Dense(3, activation="softmax", name="D")(t)
    model = keras.Model(x, [c, d], name="nested_batchnorm")
    model.compile(optimizer="sgd", loss=["mse", "categorical_crossentropy"], loss_weights=[1.0, 0.5])
    return model


def ops_and_regularizers() -> Any:
    """keras.ops nodes that block gradients (stop_gradient, argmax, an integer cast) and regularizers."""
    import keras
    from keras import layers, ops, regularizers

    x = keras.Input((8,), name="features")
    a = layers.Dense(16, activation="tanh", kernel_regularizer=regularizers.L2(0.01), name="A")(x)
    # L1 on a kernel, not on a bias: biases start at 0, where TensorFlow's subgradient of |x| is 0
    # and JAX's is 1 (a difference of the frameworks, not of gradviz)
    b = layers.Dense(16, activation="tanh", kernel_regularizer=regularizers.L1(0.01), name="B")(a)
    c = layers.Dense(1, name="C")(b)
    d = layers.Dense(4, activation="softmax", name="D")(ops.stop_gradient(b))
    index = ops.cast(ops.argmax(b, axis=-1), "float32")
    e = layers.Dense(1, name="E")(ops.expand_dims(index, -1))
    counts = ops.cast(ops.cast(layers.Dense(4, name="F0")(x), "int32"), "float32")
    f = layers.Dense(1, name="F")(counts)
    model = keras.Model(x, [c, d, e, f], name="ops_and_regularizers")
    model.compile(optimizer="sgd", loss={"C": "mse", "D": "categorical_crossentropy", "E": "mse", "F": "mse"})
    return model


def nan_head() -> Any:
    """Head C overflows (exp of ~1000): its loss and gradients are infinite or NaN; head D is fine."""
    import keras
    from keras import initializers, layers

    x = keras.Input((4,), name="features")
    t = layers.Dense(8, activation="tanh", name="T")(x)
    big = initializers.Constant(200.0)
    c = layers.Dense(1, activation="exponential", kernel_initializer=big, bias_initializer=big, name="C")(t)
    d = layers.Dense(1, name="D")(t)
    model = keras.Model(x, [c, d], name="nan_head")
    model.compile(optimizer="sgd", loss=["mse", "mse"])
    return model


def dropout_heads() -> Any:
    """features -> A -> Dropout(0.5) -> B -> {C, D}: random layers, seeded from ``seed`` by gradviz."""
    import keras
    from keras import layers

    x = keras.Input((6,), name="features")
    h = layers.Dropout(0.5, name="drop")(layers.Dense(8, activation="relu", name="A")(x))
    h = layers.Dense(8, activation="relu", name="B")(h)
    model = keras.Model(x, [layers.Dense(1, activation="sigmoid", name="C")(h), layers.Dense(1, name="D")(h)],
                        name="dropout_heads")
    model.compile(optimizer="sgd", loss=["binary_crossentropy", "mse"], loss_weights=[0.5, 0.3])
    return model


def dict_inputs() -> Any:
    """Inputs declared as a dict whose keys are not in sorted order (Keras refuses a flat list for it)."""
    import keras
    from keras import layers

    numbers, text = keras.Input((5,), name="numbers"), keras.Input((3,), name="aux")
    t = layers.Concatenate(name="join")([layers.Dense(6, name="num_dense")(numbers), text])
    t = layers.Dense(8, activation="tanh", name="trunk")(t)
    model = keras.Model({"numbers": numbers, "aux": text},
                        {"C": layers.Dense(1, name="C")(t), "D": layers.Dense(2, activation="softmax", name="D")(t)},
                        name="dict_inputs")
    model.compile(optimizer="sgd", loss={"C": "mse", "D": "categorical_crossentropy"})
    return model


def endpoint_add_loss() -> Any:
    """features -> A (L2) -> {C (compiled MSE), Endpoint(add_loss) on A's features}: three sources of losses."""
    import keras
    from keras import layers

    import backend_worker

    backend_worker._keras_test_objects()
    x, target = keras.Input((6,), name="features"), keras.Input((1,), name="target")
    a = layers.Dense(8, activation="tanh", name="A", kernel_regularizer=keras.regularizers.L2(0.01))(x)
    c = layers.Dense(1, name="C")(a)
    e = backend_worker.Endpoint(name="endpoint")([layers.Dense(3, name="E")(a), target])  # type: ignore[attr-defined]
    model = keras.Model([x, target], [c, e], name="endpoint_add_loss")
    model.compile(optimizer="sgd", loss={"C": "mse", "endpoint": None})
    return model


def two_outputs() -> Any:
    """features -> T -> {C, D}, compiled without losses: a custom step's ``loss_terms`` give them."""
    import keras
    from keras import layers

    x = keras.Input((5,), name="features")
    t = layers.Dense(8, activation="relu", name="T")(x)
    model = keras.Model(x, [layers.Dense(1, name="C")(t), layers.Dense(2, name="D")(t)], name="two_outputs")
    model.compile(optimizer="sgd")
    return model


def _jobs(directory: Path) -> list[dict[str, Any]]:
    import keras

    keras.utils.set_random_seed(0)
    built = {"nested_batchnorm": nested_batchnorm(), "ops_and_regularizers": ops_and_regularizers(),
             "nan_head": nan_head(), "dropout_heads": dropout_heads(), "dict_inputs": dict_inputs(),
             "endpoint_add_loss": endpoint_add_loss(), "two_outputs": two_outputs()}
    jobs = [{"name": name, "path": str(ROOT / "samples" / f"{name}.keras"), "batch_size": 16} for name in SAMPLES]
    for name, model in built.items():
        path = directory / f"{name}.keras"
        model.save(path)
        jobs.append({"name": name, "path": str(path), "batch_size": 16})
    jobs[0]["independent"] = True
    jobs += [
        {"name": "shared_trunk mean of 3 batches", "path": jobs[0]["path"], "batch_size": 8, "batches": 3},
        {"name": "shared_trunk per-batch", "path": jobs[0]["path"], "batch_size": 8, "batches": 3,
         "mode": "per-batch"},
        {"name": "nested_batchnorm inference, 2 batches", "path": str(directory / "nested_batchnorm.keras"),
         "batch_size": 8, "batches": 2, "training": False, "independent": True},
        {"name": "dropout_heads seed 3", "path": str(directory / "dropout_heads.keras"), "batch_size": 16,
         "seed": 3, "independent": True},
        {"name": "dropout_heads inference", "path": str(directory / "dropout_heads.keras"), "batch_size": 16,
         "training": False},
        {"name": "dict_inputs sample weights", "path": str(directory / "dict_inputs.keras"), "batch_size": 16,
         "sample_weight": True},
        {"name": "two_outputs loss_terms", "path": str(directory / "two_outputs.keras"), "batch_size": 16,
         "loss_terms": True},
    ]
    jobs = [job for job in jobs if job["name"] != "two_outputs"]  # no loss without its loss_terms
    for job in jobs:
        if job["name"] == "dict_inputs":
            job["independent"] = True
    return jobs


def run_worker(backend: str, jobs: Path, out: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start the worker on ``backend`` (not waited for)."""
    full = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
            **(env or {})}
    return subprocess.Popen([sys.executable, str(WORKER), str(jobs), str(out)], env=full, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_both(directory: Path) -> dict[str, Any]:
    """Both backends' results on every job (the two workers run at the same time)."""
    jobs = directory / "jobs.json"
    jobs.write_text(json.dumps(_jobs(directory)))
    cache = {"GRADVIZ_CACHE_DIR": str(directory / "jax-cache")}
    running = {name: run_worker(name, jobs, directory / f"{name}.json", cache) for name in ("tensorflow", "jax")}
    out = {}
    for name, proc in running.items():
        _, stderr = proc.communicate(timeout=1500)
        assert proc.returncode == 0, f"{name} worker failed:\n{stderr[-3000:]}"
        out[name] = json.loads((directory / f"{name}.json").read_text())
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both backends' results, computed once per test session.

    Under pytest-xdist each worker runs this module-scoped fixture: the first to get here
    computes (two minutes of two worker processes on a busy 2-core machine) and the other
    reads its file, in the session's own temporary root (so never another session's).
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return _run_both(tmp_path_factory.mktemp("backends"))
    root = tmp_path_factory.getbasetemp().parent  # shared by this session's workers only
    done, failed = root / "jax_backend_results.json", root / "jax_backend_results.failed"
    try:
        os.close(os.open(root / "jax_backend_results.lock", os.O_CREAT | os.O_EXCL))
    except FileExistsError:  # another worker computes: wait for its file
        deadline = time.monotonic() + 1800
        while not done.exists() and not failed.exists() and time.monotonic() < deadline:
            time.sleep(1)
        if failed.exists():
            pytest.fail("the worker computing both backends' results failed: " + failed.read_text()[-3000:])
        assert done.exists(), "timed out waiting for the other worker's results"
        return dict(json.loads(done.read_text()))
    try:
        out = _run_both(tmp_path_factory.mktemp("backends"))
    except BaseException as e:
        failed.write_text(str(e))
        raise
    partial = root / f"jax_backend_results.{worker}.json"
    partial.write_text(json.dumps(out))
    partial.rename(done)  # whole or not at all
    return out


#: jobs whose dropout masks differ between the backends: Keras's random ops use each framework's own
#: generator (Philox on TensorFlow, Threefry on JAX), so one seed state draws other masks on each. Their
#: numbers are checked against each backend's own plain autodiff with the same seeded state instead.
RANDOM = ("dropout_heads seed 3",)
JOB_NAMES = [*SAMPLES, "nested_batchnorm", "ops_and_regularizers", "nan_head", "shared_trunk mean of 3 batches",
             "shared_trunk per-batch", "nested_batchnorm inference, 2 batches", "dict_inputs",
             "dropout_heads inference", "endpoint_add_loss", "dict_inputs sample weights", "two_outputs loss_terms",
             *RANDOM]
SAME_NUMBERS = [job for job in JOB_NAMES if job not in RANDOM]


def assert_grams_agree(jax_gram: np.ndarray, tf_gram: np.ndarray, noise: float) -> None:
    """Entry (v, i, j) within 1e-4 of sqrt(G_ii G_jj) of that variable, plus ``noise`` x the losses' largest.

    For a Gram matrix, "relative 1e-4" is relative to the norms: an off-diagonal entry of
    nearly orthogonal gradients is a difference of large numbers, so only its error relative
    to |g_i| |g_j| means anything (it is the cosine's error). ``noise`` > 0 allows for
    gradients that are zero in theory (BatchNorm) and float32 noise on each backend: their
    entries are compared with the largest gradient of the same losses anywhere in the model.
    """
    broken = ~np.isfinite(tf_gram)  # a NaN/Inf gradient: non-finite on both sides (NaN and inf may differ)
    assert (~np.isfinite(jax_gram) == broken).all(), "non-finite Gram entries differ"
    tf_gram, jax_gram = np.where(broken, 0.0, tf_gram), np.where(broken, 0.0, jax_gram)
    diag = np.sqrt(np.maximum(np.einsum("vii->vi", tf_gram), 0))
    scale = diag[:, :, None] * diag[:, None, :]
    largest = diag.max(axis=0)
    floor = noise * largest[:, None] * largest[None, :]
    excess = np.abs(jax_gram - tf_gram) - (1e-4 * scale + floor + 1e-30)
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert (excess <= 0).all(), (
        f"variable {worst[0]}, losses {worst[1:]}: jax {jax_gram[worst]!r} vs tensorflow {tf_gram[worst]!r}"
    )


def test_each_worker_ran_its_backend(results: dict[str, Any]) -> None:
    assert results["jax"]["backend"] == "jax" and results["tensorflow"]["backend"] == "tensorflow"
    for name in ("jax", "tensorflow"):
        assert {job["meta_backend"] for job in results[name]["jobs"].values()} == {name}


@pytest.mark.parametrize("job", JOB_NAMES)
def test_same_gradients_exist(results: dict[str, Any], job: str) -> None:
    """JAX's structural reachability says exactly where TensorFlow returns None."""
    jax_job, tf_job = results["jax"]["jobs"][job], results["tensorflow"]["jobs"][job]
    assert jax_job["names"] == tf_job["names"]
    assert jax_job["variables"] == tf_job["variables"]
    assert jax_job["exists"] == tf_job["exists"]
    assert jax_job["finite"] == tf_job["finite"]


@pytest.mark.parametrize("job", SAME_NUMBERS)
def test_same_numbers(results: dict[str, Any], job: str) -> None:
    jax_job, tf_job = results["jax"]["jobs"][job], results["tensorflow"]["jobs"][job]
    np.testing.assert_allclose(jax_job["loss_values"], tf_job["loss_values"], rtol=1e-5)
    noise = 1e-5 if job.split()[0] in BATCHNORM else 0.0
    assert_grams_agree(np.array(jax_job["gram"]), np.array(tf_job["gram"]), noise)
    max_jax, max_tf = np.array(jax_job["max_abs"]), np.array(tf_job["max_abs"])
    broken = ~np.isfinite(max_tf)
    assert (~np.isfinite(max_jax) == broken).all()
    max_jax, max_tf = np.where(broken, 0.0, max_jax), np.where(broken, 0.0, max_tf)
    largest = max_tf.max(axis=0, keepdims=True)
    assert (np.abs(max_jax - max_tf) <= 1e-4 * max_tf + noise * 10 * largest + 1e-30).all()


@pytest.mark.parametrize("job", JOB_NAMES)
def test_same_report(results: dict[str, Any], job: str) -> None:
    """Statuses (shared / exclusive / dead / unreached) and findings are the same on both backends."""
    jax_job, tf_job = results["jax"]["jobs"][job], results["tensorflow"]["jobs"][job]
    assert jax_job["layers"] == tf_job["layers"]
    assert jax_job["random_layers"] == tf_job["random_layers"]
    if job not in RANDOM:  # findings follow the numbers (other masks: other norms)
        assert jax_job["findings"] == tf_job["findings"]


def test_non_finite_gradients_are_findings_on_jax(results: dict[str, Any]) -> None:
    """The overflowing head: its gradients are flagged, the other head's are analysed as usual."""
    job = results["jax"]["jobs"]["nan_head"]
    finite = np.array(job["finite"])
    assert not finite[:, 0].all() and finite[:, 1].all()
    assert ("nan-gradient", ("C",)) in {(kind, tuple(losses)) for kind, losses, _ in job["findings"]}


def test_blocking_ops_and_regularizers_are_seen(results: dict[str, Any]) -> None:
    """The model with keras.ops nodes: the blocked paths and the regularization term, as expected."""
    job = results["jax"]["jobs"]["ops_and_regularizers"]
    names, exists = job["names"], np.array(job["exists"])
    assert names == ["C", "D", "E", "F", "regularization"]
    paths = job["variables"]
    row = {name: i for i, name in enumerate(names)}
    col = {path: i for i, path in enumerate(paths)}
    assert exists[col["A/kernel"], row["C"]] and not exists[col["A/kernel"], row["D"]]  # stop_gradient
    assert not exists[col["B/kernel"], row["E"]] and exists[col["E/kernel"], row["E"]]  # argmax
    assert not exists[col["F0/kernel"]].any()  # behind an integer cast: no loss reaches it
    assert exists[col["A/kernel"], row["regularization"]] and exists[col["B/kernel"], row["regularization"]]
    assert not exists[col["A/bias"], row["regularization"]] and not exists[col["B/bias"], row["regularization"]]
    kinds = {kind for kind, _, _ in job["findings"]}
    assert {"blocked-path", "unreached-layer"} <= kinds


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
@pytest.mark.parametrize("job", ["shared_trunk", "dict_inputs", "dropout_heads seed 3"])
def test_each_backend_matches_its_plain_autodiff(results: dict[str, Any], job: str, backend: str) -> None:
    """One batch: gradviz's pass = one jax.grad / GradientTape per loss on stateless_call with the same seeded
    state and the declared input structure, float64 products in NumPy."""
    done = results[backend]["jobs"][job]
    independent = np.array(done["independent"])
    assert_grams_agree(np.array(done["gram"])[:, :2, :2], independent, 0.0)
    np.testing.assert_allclose(np.array(done["gram"])[:, :2, :2], independent, rtol=2e-5, atol=1e-12)


def test_dropout_is_seeded_on_both_backends(results: dict[str, Any]) -> None:
    """The Dropout layer is seeded (named in meta.random_layers) and in training mode it drops units on both."""
    for backend in ("jax", "tensorflow"):
        trained = results[backend]["jobs"]["dropout_heads seed 3"]
        inference = results[backend]["jobs"]["dropout_heads inference"]
        assert trained["random_layers"] == ["drop"]
        assert trained["loss_values"] != inference["loss_values"]  # the masks change the numbers


def test_every_source_of_losses_on_both_backends(results: dict[str, Any]) -> None:
    """add_loss endpoints, regularizers, loss_terms and sample weights are the same losses on JAX (their numbers
    are compared by test_same_numbers); the sample weights change them."""
    for backend in ("jax", "tensorflow"):
        jobs = results[backend]["jobs"]
        assert jobs["endpoint_add_loss"]["names"] == ["C", "endpoint", "regularization"]
        assert jobs["two_outputs loss_terms"]["names"] == ["fit", "sparse"]
        assert jobs["dict_inputs sample weights"]["loss_values"] != jobs["dict_inputs"]["loss_values"]


def test_plain_autodiff_agrees_across_backends(results: dict[str, Any]) -> None:
    """The independent references themselves: plain jax.grad and plain tapes, same file, same batch."""
    job = "nested_batchnorm inference, 2 batches"
    assert_grams_agree(np.array(results["jax"]["jobs"][job]["independent"]),
                       np.array(results["tensorflow"]["jobs"][job]["independent"]), 0.0)
