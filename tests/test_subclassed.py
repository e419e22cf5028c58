"""Top-level subclassed models (``class M(keras.Model)`` with ``call()``): analysed, and drawn as far as known."""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import pytest
from click.testing import Result

import gradviz

OBJECTS = '''
import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="gradviz_test15")
class TwoHeads(keras.Model):
    """A trunk with a regularizer and two heads, written as a subclassed model."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.trunk = layers.Dense(8, activation="tanh", name="trunk", kernel_regularizer=keras.regularizers.l2(1e-2))
        self.mid = layers.Dense(8, name="mid")
        self.c = layers.Dense(1, name="c")
        self.d = layers.Dense(2, name="d")
        self.spare = layers.Dense(3, name="spare")  # never called: no weights, no node

    def call(self, x, training=False):
        h = self.trunk(x)
        return self.c(ops.relu(self.mid(h))), self.d(h)
'''


def _import(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("gradviz_test15_objects", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# Keras warns that TwoHeads has no build() while its unused layer is unbuilt: expected here
pytestmark = pytest.mark.filterwarnings("ignore:`build\\(\\)` was called on layer:UserWarning")


@pytest.fixture
def saved(tmp_path: Path) -> tuple[keras.Model, Path, Path, Path, dict[str, np.ndarray]]:
    objects = tmp_path / "objects.py"
    objects.write_text(OBJECTS)
    module = _import(objects)
    keras.utils.set_random_seed(5)
    model = module.TwoHeads(name="two_heads")
    model(np.zeros((2, 6), "float32"))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss=["mse", "mse"], loss_weights=[1.0, 0.3])
    path = tmp_path / "two_heads.keras"
    model.save(path)
    rng = np.random.default_rng(6)
    arrays = {"x": rng.standard_normal((8, 6)).astype("float32"),
              "y:c": rng.standard_normal((8, 1)).astype("float32"),
              "y:d": rng.standard_normal((8, 2)).astype("float32")}
    data = tmp_path / "d.npz"
    np.savez(data, **arrays)
    return model, path, objects, data, arrays


@pytest.mark.parametrize("execution", ["eager", "compiled"])
def test_subclassed_model_from_keras_file_is_what_keras_trains(
    saved: tuple[keras.Model, Path, Path, Path, dict[str, np.ndarray]], cli: Callable[..., Result], execution: str
) -> None:
    model, path, objects, data, arrays = saved
    result = cli("inspect", path, "--custom-objects", objects, "--data", data, "--batch-size", "8", "--json",
                 "--execution", execution)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["meta"]["execution"] == execution
    assert [(l["name"], l["output"], l["weight"]) for l in report["losses"]] == [
        ("c", "c", 1.0), ("d", "d", 0.3), ("regularization", None, 1.0),
    ]
    layers_by_name = {l["name"]: l for l in report["layers"]}
    assert layers_by_name["trunk"]["reached_by"] == ["c", "d"] and layers_by_name["mid"]["reached_by"] == ["c"]
    assert {"source": "trunk", "target": "mid"} in report["edges"]  # drawn from the traced call()
    assert report["meta"]["graph_complete"] is True
    assert not [f for f in report["findings"] if f["kind"] == "incomplete-graph"]

    before = {v.path: np.array(v.numpy(), np.float64) for v in model.trainable_variables}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logs = model.train_on_batch(arrays["x"], [arrays["y:c"], arrays["y:d"]], return_dict=True)
    total = sum(l["weight"] * l["value"] for l in report["losses"])
    assert total == pytest.approx(float(logs["loss"]), rel=1e-5)
    assert len(report["variables"]) == len(model.trainable_variables)
    for var, now in zip(report["variables"], model.trainable_variables):
        applied = np.linalg.norm(before[now.path] - np.array(now.numpy(), np.float64))
        rounding = 2e-7 * float(np.linalg.norm(before[now.path]))
        assert var["combined_grad_norm"] == pytest.approx(applied, rel=1e-3, abs=rounding), var["path"]


def test_inspecting_a_subclassed_model_leaves_its_layers_as_they_were(
    saved: tuple[keras.Model, Path, Path, Path, dict[str, np.ndarray]]
) -> None:
    from keras.src.backend.common import global_state

    model = saved[0]
    nodes = [(len(layer._inbound_nodes), len(layer._outbound_nodes)) for layer in model._flatten_layers()]
    before = [np.array(v.numpy()) for v in model.variables]
    names = dict(global_state.get_global_attribute("object_name_uids"))  # the user's next Dense() keeps its name
    gradviz.analyze(model, batch_size=4)
    assert [(len(layer._inbound_nodes), len(layer._outbound_nodes)) for layer in model._flatten_layers()] == nodes
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, model.variables))
    assert dict(global_state.get_global_attribute("object_name_uids")) == names


def test_a_call_that_cannot_be_traced_is_still_analysed_and_says_what_is_missing() -> None:
    import tensorflow as tf
    from keras import layers

    class Opaque(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="opaque")
            self.a = layers.Dense(4, name="a")
            self.b = layers.Dense(1, name="b")
            self.c = layers.Dense(1, name="c")

        def call(self, x: Any) -> Any:
            h = tf.nn.relu(self.a(x))  # a TensorFlow op: cannot run on symbolic Keras tensors
            return {"first": self.b(h), "second": self.c(x)}

    model = Opaque()
    model(np.zeros((2, 3), "float32"))
    model.compile(loss={"first": "mse", "second": "mae"})
    report = gradviz.analyze(model, batch_size=4)
    assert [l.name for l in report.losses] == ["first", "second"]  # named by call()'s dict
    assert report.layer("a").reached_by == ("first",) and report.layer("c").reached_by == ("second",)
    (finding,) = report.findings_of("incomplete-graph")
    assert "model 'opaque' is subclassed and its call() cannot run on symbolic inputs" in finding.message
    assert "paths between them are unknown" in finding.message
    assert report.meta["graph_complete"] is False
