"""Random layers (Dropout, noise, augmentation, SeedGenerators) draw from ``--seed``: reports are reproducible.

A model rebuilt from a file gets fresh random seeds on every load, so without
gradviz seeding them two runs would drop different units. Checked in separate
processes (as a user runs ``gradviz`` twice), against Keras's own training step
given the same seed state, and for the model's own state staying as it was.
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
from gradviz.model.randomness import GLOBAL_KEY, derived_seed, find_random_state
def _dropout_model(seed: int = 0) -> keras.Model:
    """features(6) -> A -> Dropout(0.5) -> B -> {C: sigmoid, D: linear}, SGD(1) for the training-step check."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((6,), name="features")
    h = layers.Dense(8, activation="relu", name="A")(x)
    h = layers.Dropout(0.5, name="drop")(h)
    h = layers.Dense(8, activation="relu", name="B")(h)
    c = layers.Dense(1, activation="sigmoid", name="C")(h)
    d = layers.Dense(1, name="D")(h)
    model = keras.Model(x, [c, d], name="dropout_heads")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss=["binary_crossentropy", "mse"],
                  loss_weights=[0.5, 0.3])
    return model


def _nested_model(seed: int = 0) -> keras.Model:
    """A nested trunk (Dense, BatchNorm, Dropout) plus GaussianNoise and Dropout outside it, two heads."""
    keras.utils.set_random_seed(seed)
    inner_in = keras.Input((6,), name="trunk_in")
    h = layers.Dense(8, activation="relu", name="dense")(inner_in)
    h = layers.BatchNormalization(name="bn")(h)
    h = layers.Dropout(0.4, name="drop")(h)
    trunk = keras.Model(inner_in, h, name="trunk")
    x = keras.Input((6,), name="features")
    t = layers.GaussianNoise(0.5, name="noise")(trunk(x))
    t = layers.Dropout(0.3, name="drop")(t)  # the same name as the nested one: told apart by its model
    c = layers.Dense(1, activation="sigmoid", name="C")(t)
    d = layers.Dense(1, name="D")(t)
    model = keras.Model(x, [c, d], name="nested_random")
    model.compile(optimizer="sgd", loss=["binary_crossentropy", "mse"], loss_weights=[0.5, 0.3])
    return model


def _without_timings(stdout: str) -> dict[str, Any]:
    """The report without what may differ between identical runs: timings, and the command line
    (it names the run's own -o file)."""
    report = json.loads(stdout)
    report.pop("timings")
    report.pop("command")
    return dict(report)


@pytest.mark.parametrize("build", [_dropout_model, _nested_model], ids=["dropout", "nested-bn-dropout"])
def test_same_seed_same_report_in_separate_processes(build: Any, tmp_path: Path) -> None:
    model_file = rm.save(build(), tmp_path / "m.keras")
    runs = []
    for run in ("first", "second"):
        proc = rm.run_gradviz("inspect", model_file, "--seed", "3", "--json", "-o", tmp_path / f"{run}.dot",
                              cwd=tmp_path, timeout=300)
        assert proc.returncode == 0, proc.stderr
        runs.append((_without_timings(proc.stdout), (tmp_path / f"{run}.dot").read_bytes()))
    (first_json, first_dot), (second_json, second_dot) = runs
    assert first_json == second_json
    assert first_dot.replace(b"first.dot", b"second.dot") == second_dot  # the DOT names the command line
    assert first_json["meta"]["seed"] == 3
    expected = ["drop", "noise", "trunk/drop"] if build is _nested_model else ["drop"]
    assert first_json["meta"]["random_layers"] == expected


def test_another_seed_draws_other_masks(tmp_path: Path) -> None:
    model = _dropout_model()
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"  # fixed data: only the masks depend on the seed
    np.savez(data, **{"x:features": rng.standard_normal((16, 6)).astype("float32"),
                      "y:C": rng.integers(0, 2, (16, 1)).astype("float32"),
                      "y:D": rng.standard_normal((16, 1)).astype("float32")})
    values = {seed: [l.value for l in gradviz.analyze(model, data=data, seed=seed, batch_size=16).losses]
              for seed in (0, 1)}
    again = [l.value for l in gradviz.analyze(model, data=data, seed=0, batch_size=16).losses]
    assert again == values[0]
    assert values[1] != values[0]


def test_inspecting_leaves_the_models_seed_state_alone() -> None:
    model = _nested_model()
    before = [np.array(v.numpy()) for v in model.non_trainable_variables]
    report = gradviz.analyze(model, seed=1, batch_size=8, batches=2)
    assert report.meta["random_layers"] == ["drop", "noise", "trunk/drop"]
    for old, variable in zip(before, model.non_trainable_variables):
        np.testing.assert_array_equal(old, variable.numpy())


def test_gradients_are_keras_training_steps_with_the_same_seed_state(tmp_path: Path) -> None:
    """With the model's seed state set to what gradviz derives from --seed, Keras's own step drops the
    same units: its weight change (SGD, learning rate 1) is minus gradviz's combined gradient."""
    model = _dropout_model(seed=2)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 6)).astype("float32")
    y = {"C": rng.integers(0, 2, (16, 1)).astype("float32"), "D": rng.standard_normal((16, 1)).astype("float32")}
    data = tmp_path / "d.npz"
    np.savez(data, **{"x:features": x, "y:C": y["C"], "y:D": y["D"]})
    report = gradviz.analyze(model, data=data, batch_size=16, seed=7)
    inference = gradviz.analyze(model, data=data, batch_size=16, seed=7, training=False)
    assert report.meta["seed"] == 7  # with --data, the seed still drew the dropout masks
    generator = model.get_layer("drop").seed_generator
    generator.state.assign([derived_seed(7, "drop"), 0])
    before = [np.array(v.numpy(), np.float64) for v in model.trainable_variables]
    model.train_on_batch(x, y)
    for info, old, variable in zip(report.variables, before, model.trainable_variables):
        applied = old - np.array(variable.numpy(), np.float64)
        assert info.combined_grad_norm == pytest.approx(float(np.linalg.norm(applied)), rel=1e-4), info.path
    # the masks matter: without them (training=False) the figures differ
    assert report.layer("A").combined_grad_norm != pytest.approx(inference.layer("A").combined_grad_norm)


def test_augmentation_and_custom_seed_generators_are_seeded(tmp_path: Path) -> None:
    @keras.saving.register_keras_serializable(package="gradviz_test")
    class Jitter(layers.Layer):
        """A custom layer with its own SeedGenerator, and an unseeded keras.random call."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.generator = keras.random.SeedGenerator()

        def call(self, x: Any, training: bool = False) -> Any:
            if not training:
                return x
            noise = keras.random.normal(keras.ops.shape(x), stddev=0.1, seed=self.generator)
            return (x + noise) * keras.random.uniform(keras.ops.shape(x), 0.5, 1.5)  # the global generator

    def build() -> keras.Model:
        x = keras.Input((8, 8, 3), name="image")
        h = layers.RandomFlip(name="flip")(x)
        h = layers.RandomRotation(0.2, name="rotate")(h)
        h = layers.Flatten(name="flat")(layers.Conv2D(2, 3, name="conv")(h))
        h = Jitter(name="jitter")(h)
        c = layers.Dense(1, activation="sigmoid", name="C")(h)
        d = layers.Dense(1, name="D")(h)
        model = keras.Model(x, [c, d], name="augmented")
        model.compile(loss=["binary_crossentropy", "mse"])
        return model

    path = rm.save(build(), tmp_path / "aug.keras")
    # two loads: each draws fresh seeds for the four generators, gradviz replaces them
    first, second = (gradviz.analyze(path, batch_size=4, seed=5) for _ in range(2))
    assert first.meta["random_layers"] == ["flip", "jitter", "rotate"]
    assert [l.value for l in first.losses] == [l.value for l in second.losses]
    assert first.to_json().split('"timings"')[0] == second.to_json().split('"timings"')[0]
    # the caller's global SeedGenerator is not the one the pass drew from, and keeps its state
    from keras.src.backend.common import global_state
    from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR

    caller = keras.random.SeedGenerator(11)
    global_state.set_global_attribute(GLOBAL_SEED_GENERATOR, caller)
    state = np.array(caller.state.numpy())
    third = gradviz.analyze(path, batch_size=4, seed=5)
    assert global_state.get_global_attribute(GLOBAL_SEED_GENERATOR) is caller
    np.testing.assert_array_equal(caller.state.numpy(), state)
    assert [l.value for l in third.losses] == [l.value for l in first.losses]


def test_keys_name_each_generator_by_its_layer() -> None:
    model = _nested_model()
    random = find_random_state(model)
    by_key = {key: variable for variable in model.non_trainable_variables
              if (key := random.keys.get(id(variable))) is not None}
    assert sorted(by_key) == ["drop", "noise", "trunk/drop"]
    assert by_key["trunk/drop"] is model.get_layer("trunk").get_layer("drop").seed_generator.state
    assert derived_seed(0, GLOBAL_KEY) not in {derived_seed(0, k) for k in by_key}


@pytest.mark.parametrize("execution", ["compiled", "eager"])
def test_the_global_generator_is_assigned_only_when_the_seed_changes(execution: str) -> None:
    """The pass draws from gradviz's own global generator inside the stateless call, which never writes it:
    runs with the same seed skip the assign and still draw the same numbers; another seed draws others."""

    class Shake(layers.Layer):
        def call(self, x: Any, training: bool = False) -> Any:
            return x * keras.random.uniform(keras.ops.shape(x), 0.5, 1.5) if training else x  # the global generator

    keras.utils.set_random_seed(0)
    x = keras.Input((4,), name="x")
    h = Shake(name="shake")(layers.Dense(4, name="A")(x))
    model = keras.Model(x, [layers.Dense(1, name="C")(h), layers.Dense(1, name="D")(h)])
    model.compile(loss=["mse", "mse"])
    session = gradviz.prepare(model, execution=execution)
    data = session.data(batch_size=8, seed=0)

    def gram(seed: int) -> np.ndarray:
        return np.asarray(session.run(data, seed=seed).stats.gram)

    first, again, other, back = gram(5), gram(5), gram(6), gram(5)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, back)
    assert not np.allclose(first, other)
    state = session.backend.global_seed.generator.state.numpy()
    np.testing.assert_array_equal(state, [derived_seed(5, GLOBAL_KEY), 0])  # drawn from, never written
