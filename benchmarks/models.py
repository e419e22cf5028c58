"""The benchmark's models: compiled multi-head Keras models, built with seeded weights.

Each builder returns a compiled, untrained model whose compile config names one
loss per head, so gradviz reads its losses exactly as ``gradviz inspect`` would.
keras.applications trunks use ``weights=None`` (no download).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]

#: the loss of head i cycles through these (with the matching activation and units)
HEAD_KINDS = (
    ("categorical_crossentropy", "softmax", 10),
    ("mse", None, 1),
    ("binary_crossentropy", "sigmoid", 1),
)


@dataclass(frozen=True)
class Case:
    """A model to benchmark and the data it is measured on.

    Attributes:
        name: the command-line name.
        build: returns the compiled model (seeded).
        batch_size: rows per batch.
        batches: batches per gradient pass (mean-gradient mode streams them).
        repeats: timed repeats per method (the median is reported).
        quick: small enough for ``--quick``.
    """

    name: str
    build: Callable[[], Any]
    batch_size: int
    batches: int
    repeats: int
    quick: bool = False


def _heads(features: Any, count: int) -> tuple[list[Any], list[str]]:
    from keras import layers

    outputs, losses = [], []
    for i in range(count):
        loss, activation, units = HEAD_KINDS[i % len(HEAD_KINDS)]
        outputs.append(layers.Dense(units, activation=activation, name=f"head_{i}")(features))
        losses.append(loss)
    return outputs, losses


def _compile(model: Any, losses: list[str]) -> Any:
    model.compile(optimizer="sgd", loss=losses, loss_weights=[1.0] * len(losses))
    return model


def shared_trunk() -> Any:
    """The bundled A -> B -> {C, D} sample (``samples/shared_trunk.keras``), from its builder."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gradviz_samples", ROOT / "samples" / "make_samples.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.shared_trunk()


def resnet50_3() -> Any:
    """ResNet50 trunk (random weights, 64x64 inputs, global average pooling) with 3 heads."""
    import keras

    trunk = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 64, 3), pooling="avg")
    outputs, losses = _heads(trunk.output, 3)
    return _compile(keras.Model(trunk.input, outputs, name="resnet50_3"), losses)


def mobilenetv2_12() -> Any:
    """MobileNetV2 trunk (random weights, 64x64 inputs) with 12 heads."""
    import keras

    trunk = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(64, 64, 3), pooling="avg")
    outputs, losses = _heads(trunk.output, 12)
    return _compile(keras.Model(trunk.input, outputs, name="mobilenetv2_12"), losses)


def mlp_8() -> Any:
    """A deep plain MLP: 256 inputs, 16 Dense(512, relu) layers, 8 heads."""
    import keras
    from keras import layers

    x = inputs = keras.Input((256,), name="features")
    for i in range(16):
        x = layers.Dense(512, activation="relu", name=f"dense_{i}")(x)
    outputs, losses = _heads(x, 8)
    return _compile(keras.Model(inputs, outputs, name="mlp_8"), losses)


def graph_800() -> Any:
    """A residual MLP of about 800 graph nodes (Dense, ReLU, Add per block), for the graph-size check."""
    import keras
    from keras import layers

    x = inputs = keras.Input((8,), name="features")
    for i in range(266):
        h = layers.Dense(8, name=f"dense_{i}")(x)
        h = layers.ReLU(name=f"relu_{i}")(h)
        x = layers.Add(name=f"add_{i}")([x, h])
    outputs, losses = _heads(x, 3)
    return _compile(keras.Model(inputs, outputs, name="graph_800"), losses)


CASES: dict[str, Case] = {
    c.name: c
    for c in (
        Case("shared_trunk", shared_trunk, batch_size=256, batches=4, repeats=15, quick=True),
        Case("resnet50_3", resnet50_3, batch_size=16, batches=2, repeats=5),
        Case("mobilenetv2_12", mobilenetv2_12, batch_size=16, batches=2, repeats=5),
        Case("mlp_8", mlp_8, batch_size=256, batches=4, repeats=7),
    )
}


def build(name: str, seed: int = 0) -> Any:
    """Build benchmark model ``name`` with seeded weights."""
    import keras

    keras.utils.set_random_seed(seed)
    if name == "graph_800":
        return graph_800()
    return CASES[name].build()
