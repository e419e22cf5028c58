"""The training monitor: its logs against independent GradientTapes, training untouched, failures contained."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from gradviz.callbacks import GradientFlowMonitor, GradientFlowWarning
from gradviz.errors import BackendError, MonitorError

ROWS = 32


def two_heads(seed: int = 0, *, dropout: bool = False, batchnorm: bool = False) -> keras.Model:
    """features -> A -> B -> {C (sigmoid, bce, w=0.5), D (linear, mse, w=0.3)}, optionally with Dropout/BatchNorm."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((6,), name="features")
    a = layers.Dense(12, activation="relu", name="A")(x)
    if batchnorm:
        a = layers.BatchNormalization(name="bn")(a)
    if dropout:
        a = layers.Dropout(0.3, name="drop")(a)
    b = layers.Dense(12, activation="relu", name="B")(a)
    c = layers.Dense(1, activation="sigmoid", name="C")(b)
    d = layers.Dense(1, name="D")(b)
    model = keras.Model(x, [c, d], name="two_heads")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss={"C": "binary_crossentropy", "D": "mse"},
                  loss_weights={"C": 0.5, "D": 0.3})
    return model


def dataset(seed: int = 1) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((ROWS, 6)).astype("float32")
    return x, {"C": (rng.random((ROWS, 1)) > 0.5).astype("float32"), "D": rng.standard_normal((ROWS, 1)).astype("float32")}


class TapeCheck(keras.callbacks.Callback):
    """After the monitor: at each epoch end, each loss's weighted trunk gradient norm by its own GradientTape."""

    def __init__(self, probe: tuple[Any, ...]) -> None:
        super().__init__()
        self.probe = probe
        self.expected: list[dict[str, float]] = []
        self.logged: list[dict[str, float]] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        x, y = self.probe[:2]
        weights = self.probe[2] if len(self.probe) == 3 else {}
        trunk = [v for v in self.model.trainable_variables if v.path.split("/")[0] in ("A", "B")]
        losses = {"C": (keras.losses.BinaryCrossentropy(), 0.5), "D": (keras.losses.MeanSquaredError(), 0.3)}
        figures = {}
        for name, (fn, weight) in losses.items():
            with tf.GradientTape() as tape:
                out = dict(zip(["C", "D"], self.model(x, training=False)))
                value = fn(y[name], out[name], sample_weight=weights.get(name))  # as CompileLoss calls it
            grads = tape.gradient(value, trunk)
            norm = float(np.sqrt(sum(float(tf.reduce_sum(tf.square(g))) for g in grads)))
            figures[f"gradviz/{name}/trunk_grad_norm"] = weight * norm
        self.expected.append(figures)
        self.logged.append({k: float(v) for k, v in (logs or {}).items() if k.startswith("gradviz/")})


def test_logged_trunk_norms_equal_independent_tapes(tmp_path: Path) -> None:
    """Every epoch: the logged weighted norms equal a GradientTape per loss at the same weights (rel 1e-4)."""
    model = two_heads()
    x, y = dataset()
    probe = (x[:16], {k: v[:16] for k, v in y.items()})
    monitor = GradientFlowMonitor(probe, training=False, path=tmp_path / "flow.jsonl")
    check = TapeCheck(probe)
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[monitor, check])
    assert monitor.enabled, monitor.error
    assert len(check.expected) == 3
    for expected, logged in zip(check.expected, check.logged):
        for key, value in expected.items():
            assert logged[key] == pytest.approx(value, rel=1e-4)
        shares = [logged["gradviz/C/trunk_share"], logged["gradviz/D/trunk_share"]]
        assert sum(shares) == pytest.approx(1.0, abs=1e-6)
        assert -1.0 <= logged["gradviz/trunk_cosine_min"] <= 1.0
    # the weights moved, so the figures are not one number repeated
    assert check.expected[0] != check.expected[-1]


def test_history_file_has_one_line_per_probe_in_the_inspect_schema(tmp_path: Path) -> None:
    model = two_heads()
    x, y = dataset()
    path = tmp_path / "flow.jsonl"
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[GradientFlowMonitor((x, y), path=path)])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in lines] == [(0, 0), (1, 4), (2, 8)]  # baseline, then each epoch
    for rec in lines:
        assert set(rec) == {"epoch", "step", "losses", "layers", "trunk", "findings", "events"}
        assert rec["trunk"]["name"] == "(trunk)" and set(rec["trunk"]["grad_norm"]) == {"C", "D"}
        assert [l["name"] for l in rec["losses"]] == ["C", "D"]
        assert {"name", "status", "grad_norm", "share", "cosine"} <= set(rec["layers"][1])


def test_training_is_bitwise_identical_with_the_monitor(tmp_path: Path) -> None:
    """Weights, optimizer state, BatchNorm statistics and the dropout stream: the same bits."""
    x, y = dataset()

    def train(with_monitor: bool) -> tuple[list[np.ndarray], list[np.ndarray], list[float], np.ndarray]:
        model = two_heads(seed=3, dropout=True, batchnorm=True)
        callbacks = [GradientFlowMonitor((x[:16], {k: v[:16] for k, v in y.items()}), every_n_steps=3,
                                         path=tmp_path / "f.jsonl")] if with_monitor else []
        keras.utils.set_random_seed(7)
        history = model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=callbacks)
        if with_monitor:
            assert callbacks[0].enabled and len(callbacks[0].records) > 2
        after = np.asarray(model(x, training=True)[0])  # the dropout stream continues where training left it
        return ([np.array(v) for v in model.variables], [np.array(v) for v in model.optimizer.variables],
                history.history["loss"], after)

    without, with_ = train(False), train(True)
    for a, b in zip(without[0] + without[1], with_[0] + with_[1]):
        assert a.tobytes() == b.tobytes()
    assert len(without[0]) == len(with_[0]) and len(without[1]) == len(with_[1])
    assert without[2] == with_[2]
    assert without[3].tobytes() == with_[3].tobytes()


def test_probe_is_traced_once_and_reused() -> None:
    model = two_heads()
    x, y = dataset()
    monitor = GradientFlowMonitor((x, y), batch_size=8)  # 4 batches: the accumulating pass
    counts = []

    class Count(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            counts.append(monitor.session.tracing_count())

    model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[monitor, Count()])
    assert monitor.enabled
    assert counts[0] >= 1 and counts[0] == counts[1] == counts[2]


@pytest.mark.parametrize("kind", ["bad-probe", "disk-full"])
def test_a_failure_warns_once_turns_the_monitor_off_and_training_goes_on(kind: str, tmp_path: Path) -> None:
    model = two_heads()
    x, y = dataset()
    if kind == "bad-probe":
        monitor = GradientFlowMonitor((x[:, :4], y))  # 4 features where the model takes 6
    else:
        if not Path("/dev/full").exists():
            pytest.skip("no /dev/full")
        monitor = GradientFlowMonitor((x, y), path="/dev/full")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[monitor])
    off = [w for w in caught if issubclass(w.category, GradientFlowWarning) and "turned off" in str(w.message)]
    assert len(off) == 1
    assert not monitor.enabled and monitor.error is not None
    assert len(history.history["loss"]) == 3
    assert not any(k.startswith("gradviz/") for k in history.history)


def test_a_head_that_dies_is_reported_once(tmp_path: Path) -> None:
    """Kill head D's ReLU at epoch 2 (a callback before the monitor): one event, one warning."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,), name="features")
    b = layers.Dense(12, activation="relu", name="B")(layers.Dense(12, activation="relu", name="A")(inp))
    c = layers.Dense(1, activation="sigmoid", name="C")(b)
    d = layers.Dense(1, name="D")(layers.Dense(4, activation="relu", name="Dh")(b))
    e = layers.Dense(1, name="E")(b)
    model = keras.Model(inp, [c, d, e])
    model.compile(optimizer="sgd", loss={"C": "binary_crossentropy", "D": "mse", "E": "mse"})
    x, y = dataset()
    y = {**y, "E": y["D"], "D": np.abs(y["D"]) + 1.0}

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if epoch == 1:
                dense = self.model.get_layer("Dh")
                dense.bias.assign(np.full(4, -1000.0, "float32"))

    path = tmp_path / "flow.jsonl"
    monitor = GradientFlowMonitor((x, y), path=path, training=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, epochs=4, batch_size=16, verbose=0, callbacks=[Kill(), monitor])
    died = [str(w.message) for w in caught if issubclass(w.category, GradientFlowWarning) and "'D'" in str(w.message)
            and "stopped reaching" in str(w.message)]
    assert died == ["gradviz: loss 'D' stopped reaching the trunk at epoch 2"]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["kind"] for e in lines[2]["events"] if e["loss"] == "D"] == ["head-died"]
    assert all(not [e for e in rec["events"] if e["kind"] == "head-died"] for rec in lines[3:])
    assert history.history["gradviz/D/trunk_grad_norm"][0] > 0
    assert history.history["gradviz/D/trunk_grad_norm"][1:] == [0.0, 0.0, 0.0]


def test_csvlogger_after_the_monitor_sees_the_keys_and_before_it_does_not(tmp_path: Path) -> None:
    model = two_heads()
    x, y = dataset()
    before, after = tmp_path / "before.csv", tmp_path / "after.csv"
    model.fit(x, y, epochs=2, batch_size=8, verbose=0,
              callbacks=[keras.callbacks.CSVLogger(str(before)), GradientFlowMonitor((x, y), every_n_epochs=2),
                         keras.callbacks.CSVLogger(str(after))])
    after_rows = list(csv.DictReader(after.open()))
    assert float(after_rows[0]["gradviz/C/trunk_grad_norm"]) > 0
    assert after_rows[1]["gradviz/C/trunk_grad_norm"] == "NA"  # epoch 2 is not probed with every_n_epochs=2
    assert not any(k.startswith("gradviz/") for k in csv.DictReader(before.open()).fieldnames or [])


def test_sample_weighted_probes_log_what_tapes_with_sample_weight_compute(tmp_path: Path) -> None:
    """(x, y, sample_weight) arrays and a tf.data probe of such batches: the tapes call each loss with its weights.

    The dataset probe is the same 16 rows in two batches of 8: in inference mode the mean of the two
    batches' gradients is the 16-row batch's gradient (each batch loss is its weighted sum over 8 rows).
    """
    model = two_heads()
    x, y = dataset()
    rng = np.random.default_rng(5)
    weights = {"C": rng.uniform(0.0, 3.0, 16).astype("float32"), "D": rng.uniform(0.0, 3.0, 16).astype("float32")}
    probe = (x[:16], {k: v[:16] for k, v in y.items()}, weights)
    arrays = GradientFlowMonitor(probe, training=False)
    batched = GradientFlowMonitor(tf.data.Dataset.from_tensor_slices(probe).batch(8), training=False,
                                  log_dir=tmp_path)  # the histograms' pass applies the weights too
    check = TapeCheck(probe)
    unweighted = TapeCheck(probe[:2])
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[arrays, batched, check, unweighted])
    assert arrays.enabled and batched.enabled, (arrays.error, batched.error)
    assert len(check.expected) == 2
    for monitor in (arrays, batched):
        assert [r["epoch"] for r in monitor.records] == [0, 1, 2]
    for epoch, expected in enumerate(check.expected):
        for key, value in expected.items():
            # Keras's logs (the last monitor writes them), then each monitor's own history record
            assert check.logged[epoch][key] == pytest.approx(value, rel=1e-4)
            loss = key.split("/")[1]
            for monitor in (arrays, batched):
                norm = float(monitor.records[epoch + 1]["trunk"]["grad_norm"][loss])
                assert {"C": 0.5, "D": 0.3}[loss] * norm == pytest.approx(value, rel=1e-4), (monitor.probe, key)
            assert value != pytest.approx(unweighted.expected[epoch][key], rel=1e-3)  # the weights matter


def test_tensorboard_scalars_and_per_loss_histograms(tmp_path: Path) -> None:
    model = two_heads()
    x, y = dataset()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[GradientFlowMonitor((x, y), log_dir=tmp_path)])
    files = sorted((tmp_path / "gradviz").glob("events.out.tfevents.*"))
    assert files
    tags: dict[str, list[tuple[int, str, Any]]] = {}
    for file in files:
        for raw in tf.data.TFRecordDataset(str(file)):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                tags.setdefault(value.tag, []).append((event.step, value.metadata.plugin_data.plugin_name, array))
    assert [s for s, _, _ in tags["gradviz/C/trunk_grad_norm"]] == [0, 4, 8]
    assert {p for _, p, _ in tags["gradviz/C/trunk_grad_norm"]} == {"scalars"}
    # a histogram per loss and layer it reaches; its counts add up to the layer's parameters
    step, plugin, buckets = tags["gradviz/D/A"][0]
    assert plugin == "histograms" and buckets.shape[1] == 3
    assert buckets[:, 2].sum() == 6 * 12 + 12
    assert "gradviz/C/D" not in tags  # C's gradient does not reach head D


def test_options_are_checked() -> None:
    with pytest.raises(MonitorError, match="every_n_epochs"):
        GradientFlowMonitor(([], []), every_n_epochs=0)
    with pytest.raises(MonitorError, match="never probe"):
        GradientFlowMonitor(([], []), every_n_epochs=None)


def test_a_backend_without_a_gradient_pass_is_refused_naming_the_supported_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Keras fixes its backend per process and the others need their own libraries (torch, or jax for
    # the numpy backend); the refusal reads keras.backend.backend(), so it is exercised in-process.
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(BackendError, match=r"the 'torch' backend; gradviz supports: tensorflow, jax"):
        GradientFlowMonitor(([], []))
