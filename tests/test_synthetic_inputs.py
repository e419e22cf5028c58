"""Synthetic data a model accepts: ids below the vocabulary (also through nested models and reshapes), masks
of ones in their own dtype, pixel values where a preprocessor rescales them, and one line naming the input
when an integer input's range cannot be inferred. (KerasHub's token, segment and position layers:
``tests/test_keras_hub.py``.)"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
from keras import layers, ops

import gradviz
from gradviz.errors import DataError
from independent import gradviz_synthetic


def synthetic_inputs(model: keras.Model, batch_size: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """The synthetic inputs gradviz feeds ``model``, by input name."""
    return gradviz_synthetic(model, batch_size, seed)[0]


def _two_heads(h: Any, inputs: Any, name: str) -> keras.Model:
    model = keras.Model(inputs, {"a": layers.Dense(1, name="a")(h), "b": layers.Dense(2, name="b")(h)}, name=name)
    model.compile(loss="mse")
    return model


def test_ids_reach_the_embedding_through_a_nested_model_and_a_reshape() -> None:
    keras.utils.set_random_seed(0)
    inner_in = keras.Input((6,), dtype="int32", name="inner_ids")
    encoder = keras.Model(inner_in, layers.GlobalAveragePooling1D()(layers.Embedding(7, 4, name="emb")(inner_in)),
                          name="encoder")
    ids = keras.Input((2, 3), dtype="int32", name="ids")
    other = keras.Input((2, 3), dtype="int32", name="other")
    h = layers.Concatenate()([encoder(layers.Reshape((6,))(ids)),
                              layers.Flatten()(layers.Embedding(5, 2, name="emb2")(other))])
    model = _two_heads(h, {"other": other, "ids": ids}, "nested_ids")
    arrays = synthetic_inputs(model, batch_size=64)
    assert arrays["ids"].dtype == np.int32 and arrays["ids"].max() == 6 and arrays["ids"].min() == 0
    assert arrays["other"].max() == 4
    report = gradviz.analyze(model, batch_size=8)
    assert report.layer("encoder/emb").status == "shared"


def test_masks_are_ones_in_their_own_dtype() -> None:
    keras.utils.set_random_seed(0)
    ids = keras.Input((5,), dtype="int32", name="token_ids")
    int_mask = keras.Input((5,), dtype="int32", name="padding_mask")
    bool_mask = keras.Input((5,), dtype="bool", name="attention_mask")
    emb = layers.Embedding(11, 3, name="emb")(ids)
    weights = ops.cast(int_mask, "float32") * ops.cast(bool_mask, "float32")
    h = ops.sum(emb * ops.expand_dims(weights, -1), axis=1) / ops.sum(weights, axis=1, keepdims=True)
    model = _two_heads(h, {"token_ids": ids, "padding_mask": int_mask, "attention_mask": bool_mask}, "masked")
    arrays = synthetic_inputs(model)
    assert arrays["padding_mask"].dtype == np.int32 and np.all(arrays["padding_mask"] == 1)
    assert arrays["attention_mask"].dtype == np.bool_ and np.all(arrays["attention_mask"])
    assert arrays["token_ids"].max() < 11
    report = gradviz.analyze(model, batch_size=8)
    assert not report.findings_of("nan-gradient")  # an all-zero mask row would divide by zero


@pytest.mark.parametrize("scale, offset, pixels", [(1 / 255, 0.0, True), (1 / 127.5, -1.0, True), (2.0, 0.0, False)])
def test_images_in_the_range_their_rescaling_declares(scale: float, offset: float, pixels: bool) -> None:
    keras.utils.set_random_seed(0)
    image = keras.Input((4, 4, 3), name="image")
    h = layers.GlobalAveragePooling2D()(layers.Conv2D(2, 3, name="conv")(layers.Rescaling(scale, offset)(image)))
    arrays = synthetic_inputs(_two_heads(h, image, "rescaled"), batch_size=16)
    if pixels:
        assert arrays["image"].min() >= 0 and arrays["image"].max() < 255 and arrays["image"].max() > 200
    else:  # not a pixel rescaling: standard normal, as any float input
        assert arrays["image"].min() < 0


class Lookup(layers.Layer):
    """A table of 3 rows read with ``ops.take``: gradviz cannot see that its ids must stay below 3."""

    def build(self, shape: Any) -> None:
        self.table = self.add_weight(shape=(3, 4), name="table")

    def call(self, ids: Any) -> Any:
        return ops.take(self.table, ids, axis=0)


def test_integer_input_of_unknown_range_names_the_input(tmp_path: Any) -> None:
    keras.utils.set_random_seed(0)
    codes = keras.Input((5,), dtype="int32", name="codes")
    model = _two_heads(layers.GlobalAveragePooling1D()(Lookup(name="lookup")(codes)), codes, "lookup")
    with pytest.raises(DataError) as caught:
        gradviz.analyze(model, batch_size=8)
    message = str(caught.value)
    assert "\n" not in message and "input 'codes'" in message and "--data FILE.npz" in message
    assert "'x:codes'" in message and "is not in [0, 3)" in message
    # with ids in range, the same model runs
    np.savez(tmp_path / "d.npz", x=np.zeros((8, 5), "int32"), **{"y:a": np.zeros((8, 1), "float32"),
                                                                  "y:b": np.zeros((8, 2), "float32")})
    assert gradviz.analyze(model, data=tmp_path / "d.npz", batch_size=8).layer("lookup").status == "shared"
