"""Build the bundled sample models and save them next to this file.

Run with ``python samples/make_samples.py`` (``make samples``). Each builder
returns a compiled, untrained model; weights are seeded, so the files are
reproducible. Tests import these builders too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

HERE = Path(__file__).resolve().parent


def shared_trunk() -> keras.Model:
    """The classic A -> B -> {C, D}: a classifier head and a regression head, weights 0.5 / 0.3."""
    x = keras.Input((16,), name="features")
    a = layers.Dense(32, activation="relu", name="A")(x)
    b = layers.Dense(32, activation="relu", name="B")(a)
    c = layers.Dense(1, activation="sigmoid", name="C")(b)
    d = layers.Dense(1, name="D")(b)
    model = keras.Model(x, [c, d], name="shared_trunk")
    model.compile(optimizer="adam", loss=["binary_crossentropy", "mse"], loss_weights=[0.5, 0.3])
    return model


def dead_head() -> keras.Model:
    """Head D is a ReLU whose bias is so negative that it outputs 0 for every input: its loss trains nothing."""
    x = keras.Input((16,), name="features")
    a = layers.Dense(32, activation="relu", name="A")(x)
    b = layers.Dense(32, activation="relu", name="B")(a)
    c = layers.Dense(1, activation="sigmoid", name="C")(b)
    d = layers.Dense(1, activation="relu", bias_initializer=keras.initializers.Constant(-100.0), name="D")(b)
    model = keras.Model(x, [c, d], name="dead_head")
    model.compile(optimizer="adam", loss={"C": "binary_crossentropy", "D": "mse"})
    return model


def stop_gradient_head() -> keras.Model:
    """Head D reads the trunk through ops.stop_gradient: its loss never reaches A or B."""
    x = keras.Input((16,), name="features")
    a = layers.Dense(32, activation="relu", name="A")(x)
    b = layers.Dense(32, activation="relu", name="B")(a)
    c = layers.Dense(1, activation="sigmoid", name="C")(b)
    frozen = ops.stop_gradient(b)
    d = layers.Dense(4, activation="softmax", name="D")(frozen)
    model = keras.Model(x, [c, d], name="stop_gradient_head")
    model.compile(optimizer="adam", loss=["binary_crossentropy", "categorical_crossentropy"], loss_weights=[1.0, 0.5])
    return model


def chained_sequential() -> keras.Model:
    """Meant as two heads on one trunk, built as a Sequential: head2 is chained behind head1."""
    model = keras.Sequential(
        [
            keras.Input((16,), name="features"),
            layers.Dense(32, activation="relu", name="trunk_1"),
            layers.Dense(32, activation="relu", name="trunk_2"),
            layers.Dense(1, activation="sigmoid", name="head1"),
            layers.Dense(3, activation="softmax", name="head2"),
        ],
        name="chained_sequential",
    )
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model


def ticket_router() -> keras.Model:
    """Multi-input, multi-output: ticket text ids through an Embedding plus tabular features,
    predicting a priority (regression) and a department (5 classes)."""
    text = keras.Input((24,), dtype="int32", name="text_ids")
    tabular = keras.Input((8,), name="tabular")
    embedded = layers.Embedding(500, 16, name="embedding")(text)
    pooled = layers.GlobalAveragePooling1D(name="pool")(embedded)
    tab = layers.Dense(16, activation="relu", name="tabular_dense")(tabular)
    joined = layers.Concatenate(name="concat")([pooled, tab])
    trunk = layers.Dense(32, activation="relu", name="trunk")(joined)
    priority = layers.Dense(1, name="priority")(trunk)
    department = layers.Dense(5, activation="softmax", name="department")(trunk)
    model = keras.Model([text, tabular], [priority, department], name="ticket_router")
    model.compile(
        optimizer="adam",
        loss={"priority": "mse", "department": "sparse_categorical_crossentropy"},
        loss_weights={"priority": 1.0, "department": 0.2},
    )
    return model


SAMPLES: dict[str, Callable[[], keras.Model]] = {
    "shared_trunk": shared_trunk,
    "dead_head": dead_head,
    "stop_gradient_head": stop_gradient_head,
    "chained_sequential": chained_sequential,
    "ticket_router": ticket_router,
}


def build(name: str, seed: int = 0) -> keras.Model:
    """Build sample ``name`` with seeded weights."""
    keras.utils.set_random_seed(seed)
    return SAMPLES[name]()


def main(out: Path = HERE) -> None:
    for name in SAMPLES:
        path = out / f"{name}.keras"
        build(name).save(path)
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
