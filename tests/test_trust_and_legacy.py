"""Trust model (Lambda layers, --unsafe, --custom-objects) and legacy .h5 files.

A model file's code runs only when the user says so: a Lambda layer anywhere
(also inside a nested model, also in an .h5) is refused by default, naming the
layer and ``--unsafe``. Legacy ``.h5`` files whose training config is in
Keras 2 form (``reduction: "auto"``, ``fn`` entries, renamed loss names) are
loaded without compiling and their losses and weights recovered from the
file. The Keras 2 files are crafted by saving with Keras 3 and rewriting the
``training_config`` attribute with h5py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from keras import layers

import gradviz
import robust_models as rm
from gradviz.errors import LossSpecError, UnsafeModelError
from test_bad_input import assert_one_error

# -- Lambda layers ------------------------------------------------------------------------------------


def lambda_model(marker: Path) -> keras.Model:
    """A Lambda layer 'double' whose code touches ``marker`` whenever it runs (on rebuild, too)."""
    code = f"lambda t: __import__('pathlib').Path({str(marker)!r}).touch() or t * 2.0"
    fn = eval(code)  # the path must be a constant in the bytecode, not a closure variable
    x = keras.Input((3,), name="features")
    h = layers.Dense(4, name="trunk")(x)
    doubled = layers.Lambda(fn, name="double")(h)
    y = layers.Dense(1, name="out")(doubled)
    model = keras.Model(x, y, name="with_lambda")
    model.compile(optimizer="sgd", loss="mse")
    return model


def nested_lambda_model(marker: Path) -> keras.Model:
    """The Lambda sits inside a nested functional model 'block'."""
    code = f"lambda t: __import__('pathlib').Path({str(marker)!r}).touch() or t + 1.0"
    inner_in = keras.Input((4,), name="block_in")
    inner_out = layers.Lambda(eval(code), name="shift")(layers.Dense(4, name="inner_dense")(inner_in))
    block = keras.Model(inner_in, inner_out, name="block")
    x = keras.Input((3,), name="features")
    y = layers.Dense(1, name="out")(block(layers.Dense(4, name="trunk")(x)))
    model = keras.Model(x, y, name="outer")
    model.compile(optimizer="sgd", loss="mse")
    return model


@pytest.fixture(scope="module")
def lambda_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("lambda")
    marker = d / "lambda_ran"
    files = {
        "keras": rm.save(lambda_model(marker), d / "lambda.keras"),
        "h5": rm.save(lambda_model(marker), d / "lambda.h5"),
        "nested": rm.save(nested_lambda_model(marker), d / "nested.keras"),
        "nested_h5": rm.save(nested_lambda_model(marker), d / "nested.h5"),
        "marker": marker,
    }
    return files


@pytest.mark.parametrize("kind, layer", [("keras", "double"), ("h5", "double"), ("nested", "shift"),
                                         ("nested_h5", "shift")])
def test_lambda_refused_by_default(cli: Any, lambda_files: dict[str, Path], kind: str, layer: str) -> None:
    marker = lambda_files["marker"]
    marker.unlink(missing_ok=True)
    assert_one_error(cli("inspect", lambda_files[kind], "--batch-size", "2"), f"Lambda layer(s) {layer}", "--unsafe")
    assert not marker.exists(), "the Lambda's code ran although --unsafe was not given"
    with pytest.raises(UnsafeModelError, match=layer):
        gradviz.analyze(lambda_files[kind], batch_size=2)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["keras", "h5", "nested", "nested_h5"])
def test_unsafe_loads_lambda(cli: Any, lambda_files: dict[str, Path], kind: str) -> None:
    marker = lambda_files["marker"]
    marker.unlink(missing_ok=True)
    result = cli("inspect", lambda_files[kind], "--batch-size", "2", "--unsafe", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [entry["name"] for entry in report["losses"]] == ["out"]
    assert marker.exists(), "with --unsafe the Lambda's code does run (that is what the flag is for)"


def test_custom_objects_do_not_switch_off_safe_mode(cli: Any, lambda_files: dict[str, Path], tmp_path: Path) -> None:
    """--custom-objects runs the given file, and only it: Lambda layers are still refused."""
    objects = tmp_path / "objects.py"
    ran = tmp_path / "objects_ran"
    objects.write_text(f"import pathlib\npathlib.Path({str(ran)!r}).touch()\n")
    assert_one_error(cli("inspect", lambda_files["keras"], "--custom-objects", objects), "--unsafe")
    assert ran.exists(), "the custom objects file is imported, so its code runs"


def test_custom_objects_resolve_an_unknown_class(cli: Any, tmp_path: Path) -> None:
    objects = tmp_path / "objects.py"
    objects.write_text(
        "import keras\n\n"
        "@keras.saving.register_keras_serializable(package='tests')\n"
        "class Scale(keras.layers.Layer):\n"
        "    def call(self, x):\n"
        "        return x * 3.0\n"
    )
    namespace: dict[str, Any] = {}
    exec(compile(objects.read_text(), str(objects), "exec"), namespace)
    x = keras.Input((3,), name="features")
    y = layers.Dense(1, name="out")(namespace["Scale"](name="scale")(layers.Dense(4, name="trunk")(x)))
    model = keras.Model(x, y)
    model.compile(loss="mse")
    path = rm.save(model, tmp_path / "custom.keras")
    # Unregister, as in a fresh process that never saw the class.
    from keras.src.saving import object_registration

    object_registration.GLOBAL_CUSTOM_OBJECTS.pop("tests>Scale", None)
    object_registration.GLOBAL_CUSTOM_NAMES.pop(namespace["Scale"], None)
    assert_one_error(cli("inspect", path, "--batch-size", "2"), "'tests>Scale' (class Scale)", "--custom-objects")
    result = cli("inspect", path, "--batch-size", "2", "--custom-objects", objects, "--json")
    assert result.exit_code == 0, result.stderr
    assert "scale" in {layer["name"] for layer in json.loads(result.stdout)["layers"]}


# -- legacy .h5 -----------------------------------------------------------------------------------------

KERAS2_OPTIMIZER = {"class_name": "Adam", "config": {"name": "Adam", "learning_rate": 0.001, "decay": 0.0,
                                                    "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-07,
                                                    "amsgrad": False}}


def keras2_training_config(loss: Any, loss_weights: Any = None) -> dict[str, Any]:
    """A ``training_config`` as Keras 2's ``model.save('m.h5')`` wrote it."""
    return {"loss": loss, "metrics": [["mae"]], "weighted_metrics": None, "loss_weights": loss_weights,
            "optimizer_config": KERAS2_OPTIMIZER}


def mse2(name: str = "mean_squared_error") -> dict[str, Any]:
    return {"class_name": "MeanSquaredError", "config": {"reduction": "auto", "name": name}}


def bce2() -> dict[str, Any]:
    return {"class_name": "BinaryCrossentropy",
            "config": {"reduction": "auto", "name": "binary_crossentropy", "from_logits": False,
                       "label_smoothing": 0.0, "axis": -1, "fn": "binary_crossentropy"}}


@pytest.fixture(scope="module")
def h5_two_heads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rm.save(rm.two_heads(), tmp_path_factory.mktemp("h5") / "two_heads.h5")


@pytest.fixture(scope="module")
def h5_one_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rm.save(rm.one_head(), tmp_path_factory.mktemp("h5") / "one_head.h5")


def _copy_with(src: Path, dst: Path, training_config: Any) -> Path:
    dst.write_bytes(src.read_bytes())
    rm.set_h5_attr(dst, "training_config", training_config)
    return dst


def _losses(report: Any) -> list[tuple[str, str, float]]:
    return [(entry["name"], entry["loss"], entry["weight"]) for entry in report.to_dict()["losses"]]


def test_keras3_h5_as_saved(h5_two_heads: Path) -> None:
    report = gradviz.analyze(h5_two_heads, batch_size=2)
    assert _losses(report) == [("C", "binary_crossentropy", 0.5), ("D", "mse", 0.3)]


TWO_HEAD_CONFIGS = [
    ("list-of-strings", keras2_training_config(["binary_crossentropy", "mean_squared_error"], [0.5, 0.3]),
     [("C", "binary_crossentropy", 0.5), ("D", "mean_squared_error", 0.3)]),
    ("dict-of-keras2-objects", keras2_training_config({"C": bce2(), "D": mse2()}, {"C": 2.0, "D": 0.25}),
     [("C", "binary_crossentropy", 2.0), ("D", "mean_squared_error", 0.25)]),
    ("list-of-keras2-objects", keras2_training_config([bce2(), mse2()], [1.0, 0.1]),
     [("C", "binary_crossentropy", 1.0), ("D", "mean_squared_error", 0.1)]),
    ("one-keras2-object-for-all", keras2_training_config(mse2(), None),
     [("C", "mean_squared_error", 1.0), ("D", "mean_squared_error", 1.0)]),
    ("renamed-keras2-names", keras2_training_config({"C": "logcosh", "D": "huber_loss"}, [1.0, 2.0]),
     [("C", "logcosh", 1.0), ("D", "huber_loss", 2.0)]),
    ("keras2-function-object", keras2_training_config(
        [{"class_name": "function", "config": "binary_crossentropy"},
         {"class_name": "Huber", "config": {"reduction": "auto", "name": "huber_loss", "delta": 2.0}}], None),
     [("C", "binary_crossentropy", 1.0), ("D", "huber_loss", 1.0)]),
    ("dict-with-a-none", keras2_training_config({"C": None, "D": "mse"}, None), [("D", "mse", 1.0)]),
]


@pytest.mark.parametrize("config, expected", [c[1:] for c in TWO_HEAD_CONFIGS], ids=[c[0] for c in TWO_HEAD_CONFIGS])
def test_keras2_training_config_is_recovered(h5_two_heads: Path, tmp_path: Path, config: Any,
                                             expected: list[tuple[str, str, float]]) -> None:
    path = _copy_with(h5_two_heads, tmp_path / "legacy.h5", config)
    report = gradviz.analyze(path, batch_size=2)
    assert _losses(report) == expected
    assert not [f for f in report.findings if f.kind == "nan-gradient"]


def test_keras2_single_loss_value_matches_keras(h5_one_head: Path, tmp_path: Path) -> None:
    """The recovered Keras 2 loss computes what Keras 3 computes for it (checked on real data)."""
    path = _copy_with(h5_one_head, tmp_path / "legacy.h5", keras2_training_config(mse2(), [2.0]))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3)).astype("float32")
    y = rng.standard_normal((4, 1)).astype("float32")
    np.savez(tmp_path / "batch.npz", x=x, y=y)
    report = gradviz.analyze(path, batch_size=4, data=tmp_path / "batch.npz")
    [entry] = report.to_dict()["losses"]
    assert (entry["name"], entry["loss"], entry["weight"]) == ("out", "mean_squared_error", 2.0)
    model = keras.saving.load_model(h5_one_head, compile=False)
    expected = float(keras.losses.MeanSquaredError()(y, model(x, training=True)))
    assert entry["value"] == pytest.approx(expected, rel=1e-5)


def test_keras2_plain_string_loss_through_cli(cli: Any, h5_one_head: Path, tmp_path: Path) -> None:
    path = _copy_with(h5_one_head, tmp_path / "legacy.h5", keras2_training_config("mse"))
    result = cli("inspect", path, "--batch-size", "2", "--json")
    assert result.exit_code == 0, result.stderr
    assert [(e["name"], e["loss"], e["weight"]) for e in json.loads(result.stdout)["losses"]] == [("out", "mse", 1.0)]


@pytest.mark.parametrize("config", [None, keras2_training_config(None)], ids=["no-training-config", "loss-null"])
def test_legacy_without_loss_asks_for_one(cli: Any, h5_two_heads: Path, tmp_path: Path, config: Any) -> None:
    path = _copy_with(h5_two_heads, tmp_path / "legacy.h5", config)
    assert_one_error(cli("inspect", path, "--batch-size", "2"), "no loss to analyse", "--loss OUTPUT=LOSS", "C, D")
    result = cli("inspect", path, "--batch-size", "2", "--loss", "mse", "--json")
    assert result.exit_code == 0, result.stderr
    assert [e["name"] for e in json.loads(result.stdout)["losses"]] == ["C", "D"]


def test_legacy_unknown_loss_names_it(h5_two_heads: Path, tmp_path: Path) -> None:
    path = _copy_with(h5_two_heads, tmp_path / "legacy.h5",
                      keras2_training_config({"C": "binary_crossentropy", "D": {"class_name": "MyLoss", "config": {}}}))
    with pytest.raises(LossSpecError, match="unknown loss 'my_loss'.*`custom_objects=FILE.py`"):
        gradviz.analyze(path, batch_size=2)
    # ... and --loss replaces it
    report = gradviz.analyze(path, batch_size=2, losses={"D": "mae"})
    assert _losses(report) == [("C", "binary_crossentropy", 1.0), ("D", "mae", 1.0)]


def test_keras3_serialized_loss_object_applies_to_every_output(tmp_path: Path) -> None:
    """A single Loss object in a .keras compile config is one loss, not a dict of outputs."""
    model = rm.two_heads(compiled=False)
    model.compile(optimizer="sgd", loss=keras.losses.MeanSquaredError(), loss_weights=[0.5])
    path = rm.save(model, tmp_path / "object_loss.keras")
    report = gradviz.analyze(path, batch_size=2)
    # one loss, one weight: Keras gives both to every output
    assert _losses(report) == [("C", "mean_squared_error", 0.5), ("D", "mean_squared_error", 0.5)]
