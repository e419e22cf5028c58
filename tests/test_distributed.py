"""The monitor under ``tf.distribute.MirroredStrategy``: the numbers are those of the whole probe.

Two logical CPU devices must be configured before TensorFlow initializes its devices,
so the scenario runs in a fresh interpreter (:data:`SCRIPT`) and prints its figures as
JSON; the assertions are here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
from keras import layers

from gradviz.callbacks import GradientFlowMonitor
from gradviz.core.history import log_values

FIT_IN_SCOPE = sys.argv[1] == "in-scope"
TRUNK = ("A", "bn", "B")
WEIGHTS = {"C": 0.5, "D": 0.3}


def build():
    keras.utils.set_random_seed(0)
    x = keras.Input((6,), name="features")
    a = layers.Dense(12, activation="relu", name="A")(x)
    a = layers.BatchNormalization(name="bn")(a)
    b = layers.Dense(12, activation="relu", name="B")(a)
    model = keras.Model(x, [layers.Dense(1, activation="sigmoid", name="C")(b), layers.Dense(1, name="D")(b)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss={"C": "binary_crossentropy", "D": "mse"},
                  loss_weights=WEIGHTS)
    return model


def tape_norms(weights, x, y):
    """Each loss's weighted trunk gradient norm over the whole probe, independently: the model written out
    in TensorFlow ops on the recorded weights (BatchNorm in inference mode), one GradientTape per loss."""
    w = {k: tf.constant(v) for k, v in weights.items()}
    trunk = [w[k] for k in w if k.split("/")[0] in TRUNK and "moving" not in k]
    out = {}
    for name in ("C", "D"):
        with tf.GradientTape() as tape:
            tape.watch(trunk)
            a = tf.nn.relu(x @ w["A/kernel"] + w["A/bias"])
            a = (a - w["bn/moving_mean"]) / tf.sqrt(w["bn/moving_variance"] + 1e-3) * w["bn/gamma"] + w["bn/beta"]
            b = tf.nn.relu(a @ w["B/kernel"] + w["B/bias"])
            logit = b @ w[f"{name}/kernel"] + w[f"{name}/bias"]
            if name == "C":
                p = tf.clip_by_value(tf.sigmoid(logit), 1e-7, 1 - 1e-7)
                value = -tf.reduce_mean(y[name] * tf.math.log(p) + (1 - y[name]) * tf.math.log(1 - p))
            else:
                value = tf.reduce_mean(tf.square(y[name] - logit))
        grads = tape.gradient(value, trunk)
        out[name] = WEIGHTS[name] * float(np.sqrt(sum(float(tf.reduce_sum(tf.square(g))) for g in grads)))
    return out


class Check(keras.callbacks.Callback):
    """After the monitor: the weights, the logged keys and independent tapes at every epoch end."""

    def __init__(self, probe):
        super().__init__()
        self.probe = probe
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append({
            "weights": dict(zip([v.path for v in self.model.weights], self.model.get_weights())),
            "logged": {k: float(v) for k, v in (logs or {}).items() if k.startswith("gradviz/")},
            "in_scope": tf.distribute.has_strategy(),
            "tracing_count": monitor.session.tracing_count(),
                })


rng = np.random.default_rng(1)
X = rng.standard_normal((64, 6)).astype("float32")
Y = {"C": (rng.random((64, 1)) > 0.5).astype("float32"), "D": rng.standard_normal((64, 1)).astype("float32")}
probe = (X[:16], {k: v[:16] for k, v in Y.items()})

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    model = build()
monitor = GradientFlowMonitor(probe, training=False, batch_size=8)  # two probe batches: the mean-gradient sums
check = Check(probe)
if FIT_IN_SCOPE:
    with strategy.scope():
        model.fit(X, Y, epochs=3, batch_size=16, verbose=0, callbacks=[monitor, check])
else:
    model.fit(X, Y, epochs=3, batch_size=16, verbose=0, callbacks=[monitor, check])
backend = monitor.session.backend
sums = [a for row in backend.accumulators for a in row if a is not None]

# The single-device monitor on the same weights: a model built without any strategy.
single = build()
single_logs, tapes = [], []
for e in check.epochs:
    tapes.append(tape_norms(e["weights"], *probe))
    single.set_weights(list(e["weights"].values()))
    alone = GradientFlowMonitor(probe, training=False, batch_size=8)
    alone.set_model(single)
    alone.on_train_begin()
    single_logs.append(log_values(alone.records[0]))

# gradviz.analyze inside the scope (the eager pass for one batch, the compiled one for 20) equals it outside.
import gradviz

analyses = []
for batches in (1, 20):
    with strategy.scope():
        inside = gradviz.analyze(model, batches=batches, batch_size=4, training=False).stats.gram
    outside = gradviz.analyze(model, batches=batches, batch_size=4, training=False).stats.gram
    analyses.append(float(np.max(np.abs(inside - outside)) / np.max(np.abs(outside))))

try:  # per replica, a pass that reduces to NumPy cannot run
    strategy.run(lambda: gradviz.analyze(model, batches=1, batch_size=4))
    in_replica = "ran"
except gradviz.errors.BackendError as e:
    in_replica = str(e)

print(json.dumps({
    "analyze_relative_difference": analyses,
    "in_replica": in_replica,
    "replicas": strategy.num_replicas_in_sync,
    "mirrored": type(model.trainable_variables[0].value).__name__,
    "enabled": monitor.enabled, "error": repr(monitor.error),
    "epochs": [{k: v for k, v in e.items() if k != "weights"} for e in check.epochs],
    "single": single_logs,
    "tape": tapes,
    "sums_distributed": [isinstance(a, tf.distribute.DistributedValues) for a in sums],
}))
'''


def run_distributed(where: str) -> dict[str, Any]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, where], capture_output=True, text=True, timeout=900,
                          env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("where", ["in-scope", "outside-scope"])
def test_monitor_under_mirrored_strategy_reports_the_whole_probe(where: str) -> None:
    """Built under MirroredStrategy on two CPU devices, trained with ``fit`` inside the scope (Keras's losses
    then divide by the replica count) or outside it: every epoch's logged norms equal independent tapes over
    the whole probe and the single-device monitor at the same weights (rel 1e-4)."""
    out = run_distributed(where)
    assert out["replicas"] == 2 and out["mirrored"] == "MirroredVariable"
    assert out["enabled"], out["error"]
    assert len(out["epochs"]) == 3
    assert all(e["in_scope"] == (where == "in-scope") for e in out["epochs"])  # where the callbacks ran
    for epoch, single, tape in zip(out["epochs"], out["single"], out["tape"]):
        logged = epoch["logged"]
        assert set(logged) == set(single) and len(logged) == 5
        for name, norm in tape.items():
            assert logged[f"gradviz/{name}/trunk_grad_norm"] == pytest.approx(norm, rel=1e-4)
        for key, value in single.items():
            assert logged[key] == pytest.approx(value, rel=1e-4, abs=1e-7)
    # the pass was traced when training began and reused, and its mean-gradient sums are plain (one copy) variables
    assert out["analyze_relative_difference"] == [0.0, 0.0]
    assert "inside strategy.run" in out["in_replica"]
    counts = [e["tracing_count"] for e in out["epochs"]]
    assert counts[0] >= 1 and counts[0] == counts[1] == counts[2]
    assert out["sums_distributed"] and not any(out["sums_distributed"])
