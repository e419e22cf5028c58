"""Model files: .keras and .h5, compile configs, custom objects, safe mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import pytest
from keras import layers

import gradviz
from gradviz.errors import UnsafeModelError
from gradviz.model.loading import load_model

CUSTOM = '''
import keras
from keras import ops

class Scale(keras.layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1],), initializer="ones", name="w")

    def call(self, x):
        return x * self.w * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}

def scaled_mse(y_true, y_pred):
    return ops.mean(ops.square(y_true - y_pred)) * 10.0
'''


def test_keras_file_keeps_losses_and_weights(sample_path: Any) -> None:
    loaded = load_model(sample_path("shared_trunk"))
    assert loaded.loss == ["binary_crossentropy", "mse"] and loaded.loss_weights == [0.5, 0.3]
    assert not getattr(loaded.model, "compiled", False)


def test_h5_file_reads_training_config(build_sample: Any, tmp_path: Path) -> None:
    build_sample("shared_trunk").save(tmp_path / "m.h5")
    report = gradviz.analyze(tmp_path / "m.h5", batch_size=8)
    assert [(l.name, l.loss, l.weight) for l in report.losses] == [("C", "binary_crossentropy", 0.5), ("D", "mse", 0.3)]


def test_custom_objects_file_resolves_layers_and_losses(tmp_path: Path) -> None:
    script = tmp_path / "custom.py"
    script.write_text(CUSTOM)
    from gradviz.model.loading import import_custom_objects

    objects = import_custom_objects(script)
    x = keras.Input((3,), name="x")
    out = layers.Dense(1, name="out")(objects["Scale"](name="scale")(x))
    model = keras.Model(x, out)
    model.compile(loss=objects["scaled_mse"])
    model.save(tmp_path / "m.keras")
    with pytest.raises(gradviz.GradvizError, match="unknown class or function 'Scale'.*`custom_objects=FILE.py`"):
        gradviz.analyze(tmp_path / "m.keras")
    report = gradviz.analyze(tmp_path / "m.keras", custom_objects=script, batch_size=4)
    assert report.losses[0].loss == "scaled_mse"
    assert report.layer("scale").status == "exclusive"


def test_lambda_is_refused_unless_unsafe(tmp_path: Path) -> None:
    x = keras.Input((3,), name="x")
    out = layers.Dense(1, name="out")(layers.Lambda(lambda t: t * 2, name="double")(x))
    model = keras.Model(x, out)
    model.compile(loss="mse")
    model.save(tmp_path / "lam.keras")
    with pytest.raises(UnsafeModelError, match=r"Lambda layer\(s\) double .*`unsafe=True`"):
        load_model(tmp_path / "lam.keras")
    report = gradviz.analyze(tmp_path / "lam.keras", unsafe=True, batch_size=4)
    assert report.layer("double").class_name == "Lambda"
