"""GradientFlowMonitor on Keras's JAX backend, in fresh processes (``KERAS_BACKEND`` is fixed per process).

The same checks as ``tests/test_callbacks.py`` makes on TensorFlow, with TensorFlow's
import blocked: the logged trunk norms against an independent ``jax.grad`` per loss at
the same weights, the history file, the probe compiled once, and training bit for bit
the same with and without the monitor. TensorBoard (``log_dir=``) writes with
``tf.summary``: on JAX it works when TensorFlow is installed, and is one clear error
when it is not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("jax")

ROOT = Path(__file__).resolve().parents[1]

#: makes importing the named top-level packages fail, as if they were not installed
BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
"""

MODEL = """
import json, warnings
import numpy as np
import keras
from keras import layers
from gradviz.callbacks import GradientFlowMonitor

ROWS = 32


def two_heads(seed=0, dropout=False, batchnorm=False):
    keras.utils.set_random_seed(seed)
    x = keras.Input((6,), name="features")
    a = layers.Dense(12, activation="relu", name="A")(x)
    if batchnorm:
        a = layers.BatchNormalization(name="bn")(a)
    if dropout:
        a = layers.Dropout(0.3, name="drop")(a)
    b = layers.Dense(12, activation="relu", name="B")(a)
    model = keras.Model(x, [layers.Dense(1, activation="sigmoid", name="C")(b), layers.Dense(1, name="D")(b)],
                        name="two_heads")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss={"C": "binary_crossentropy", "D": "mse"},
                  loss_weights={"C": 0.5, "D": 0.3})
    return model


rng = np.random.default_rng(1)
x = rng.standard_normal((ROWS, 6)).astype("float32")
y = {"C": (rng.random((ROWS, 1)) > 0.5).astype("float32"), "D": rng.standard_normal((ROWS, 1)).astype("float32")}
probe = (x[:16], {k: v[:16] for k, v in y.items()})
"""

MONITOR = MODEL + """
import jax, jax.numpy as jnp


class GradCheck(keras.callbacks.Callback):
    # after the monitor: each loss's weighted trunk gradient norm by its own jax.grad at the same weights
    def __init__(self):
        super().__init__()
        self.expected, self.logged, self.traced = [], [], []

    def on_epoch_end(self, epoch, logs=None):
        model = self.model  # syncs the JAX trainer's state into the variables
        trainable = [v.value for v in model.trainable_variables]
        state = [v.value for v in model.non_trainable_variables]
        trunk = [i for i, v in enumerate(model.trainable_variables) if v.path.split("/")[0] in ("A", "B")]
        losses = {"C": (keras.losses.BinaryCrossentropy(), 0.5), "D": (keras.losses.MeanSquaredError(), 0.3)}
        figures = {}
        for name, (fn, weight) in losses.items():
            def value(w, name=name, fn=fn):
                out, _ = model.stateless_call(w, state, probe[0], training=False)
                return fn(probe[1][name], dict(zip(["C", "D"], out))[name])
            grads = jax.grad(value)(trainable)
            figures[f"gradviz/{name}/trunk_grad_norm"] = weight * float(
                np.sqrt(sum(float(jnp.sum(jnp.square(grads[i]))) for i in trunk)))
        self.expected.append(figures)
        self.logged.append({k: float(v) for k, v in (logs or {}).items() if k.startswith("gradviz/")})
        self.traced.append(monitor.session.tracing_count())


model = two_heads()
monitor = GradientFlowMonitor(probe, training=False, path=__PATH__)
check = GradCheck()
model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[monitor, check])


def train(with_monitor):
    model = two_heads(seed=3, dropout=True, batchnorm=True)
    callbacks = [GradientFlowMonitor(probe, every_n_steps=3, path=__PATH2__)] if with_monitor else []
    keras.utils.set_random_seed(7)
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=callbacks)
    if with_monitor:
        assert callbacks[0].enabled, callbacks[0].error
        assert len(callbacks[0].records) > 2
    after = np.asarray(model(x, training=True)[0])
    return ([np.asarray(v.value).tobytes() for v in model.variables],
            [np.asarray(v.value).tobytes() for v in model.optimizer.variables], history.history["loss"],
            after.tobytes())


without, with_ = train(False), train(True)
try:
    GradientFlowMonitor(probe, log_dir=__LOGDIR__)
    refused = ""
except Exception as e:
    refused = type(e).__name__ + ": " + str(e)
import sys
print(json.dumps({
    "enabled": monitor.enabled, "error": repr(monitor.error), "expected": check.expected, "logged": check.logged,
    "traced": check.traced, "backend": monitor.session.backend.name,
    "execution": monitor.records and monitor.session.choose_execution(1).mode,
    "identical": [without[0] == with_[0], without[1] == with_[1], without[2] == with_[2], without[3] == with_[3]],
    "tensorflow": sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"),
    "refused": refused,
}))
"""


def run_jax(code: str, tmp_path: Path, blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in ("XLA_FLAGS", "GRADVIZ_COMPILATION_CACHE")}
    env.update({"KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT), "GRADVIZ_CACHE_DIR": str(tmp_path / "cache"),
                "TF_CPP_MIN_LOG_LEVEL": "3"})
    prelude = BLOCK.format(blocked=blocked) if blocked else ""
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=900)


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp_path = tmp_path_factory.mktemp("monitor_jax")
    done = run_jax(MONITOR.replace("__PATH__", repr(str(tmp_path / "flow.jsonl"))).replace(
        "__PATH2__", repr(str(tmp_path / "f2.jsonl"))).replace("__LOGDIR__", repr(str(tmp_path / "tb"))), tmp_path,
                   blocked=("tensorflow", "tf_keras"))
    assert done.returncode == 0, done.stderr[-3000:]
    result = dict(json.loads(done.stdout.strip().splitlines()[-1]))
    result["history"] = [json.loads(line) for line in (tmp_path / "flow.jsonl").read_text().splitlines()]
    result["tensorboard_written"] = (tmp_path / "tb").exists()
    return result


def test_logged_trunk_norms_equal_independent_jax_grads(monitored: dict[str, Any]) -> None:
    """Every epoch: the logged weighted norms equal a jax.grad per loss at the same weights (rel 1e-4)."""
    assert monitored["enabled"], monitored["error"]
    assert monitored["backend"] == "jax" and monitored["execution"] == "compiled"
    assert len(monitored["expected"]) == 3
    for expected, logged in zip(monitored["expected"], monitored["logged"]):
        for key, value in expected.items():
            assert logged[key] == pytest.approx(value, rel=1e-4)
        assert logged["gradviz/C/trunk_share"] + logged["gradviz/D/trunk_share"] == pytest.approx(1.0, abs=1e-6)
        assert -1.0 <= logged["gradviz/trunk_cosine_min"] <= 1.0
    assert monitored["expected"][0] != monitored["expected"][-1]  # the weights moved


def test_history_file_and_probe_compiled_once(monitored: dict[str, Any]) -> None:
    lines = monitored["history"]
    assert [(r["epoch"], r["step"]) for r in lines] == [(0, 0), (1, 4), (2, 8), (3, 12)]
    for rec in lines:
        assert set(rec) == {"epoch", "step", "losses", "layers", "trunk", "findings", "events"}
    traced = monitored["traced"]
    assert traced[0] >= 1 and traced[0] == traced[1] == traced[2]


def test_training_is_bitwise_identical_with_the_monitor_on_jax(monitored: dict[str, Any]) -> None:
    """Weights, optimizer state, BatchNorm statistics, losses and the dropout stream afterwards: the same bits."""
    assert monitored["identical"] == [True, True, True, True]


def test_no_tensorflow_imported(monitored: dict[str, Any]) -> None:
    assert monitored["tensorflow"] == []


TENSORBOARD = MODEL + """
model = two_heads()
monitor = GradientFlowMonitor((x, y), log_dir=__LOGDIR__)
model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[monitor])
print(json.dumps({"enabled": monitor.enabled, "error": repr(monitor.error)}))
"""


def test_tensorboard_without_tensorflow_is_one_clear_error(monitored: dict[str, Any]) -> None:
    """log_dir= on JAX with TensorFlow's import blocked: refused at construction, in one line naming the fix."""
    refused = monitored["refused"]
    assert refused.startswith("BackendError: GradientFlowMonitor: `log_dir` writes TensorBoard files with TensorFlow")
    assert "pip install tensorflow-cpu" in refused and "`path=`" in refused and "\n" not in refused
    assert not monitored["tensorboard_written"]


def test_tensorboard_on_jax_with_tensorflow_installed(tmp_path: Path) -> None:
    """Scalars and per-loss histograms from a JAX fit, read back with TensorFlow in this process."""
    import tensorflow as tf

    done = run_jax(TENSORBOARD.replace("__LOGDIR__", repr(str(tmp_path))), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["enabled"], result["error"]
    tags: dict[str, list[tuple[int, str, Any]]] = {}
    for file in sorted((tmp_path / "gradviz").glob("events.out.tfevents.*")):
        for raw in tf.data.TFRecordDataset(str(file)):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(
                    (event.step, value.metadata.plugin_data.plugin_name, tf.make_ndarray(value.tensor)))
    assert [s for s, _, _ in tags["gradviz/C/trunk_grad_norm"]] == [0, 4, 8]
    step, plugin, buckets = tags["gradviz/D/A"][0]
    assert plugin == "histograms" and buckets[:, 2].sum() == 6 * 12 + 12
    assert "gradviz/C/D" not in tags  # C's gradient does not reach head D
