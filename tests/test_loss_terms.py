"""Losses from a custom training step: ``loss_terms=fn`` with ``fn(model, x, y) -> {name: scalar}``.

The VAE of Keras's examples (a subclassed model with a custom ``train_step``
summing reconstruction and KL terms, a seeded sampling layer and BatchNorm)
checked against its own training step with SGD at learning rate 1.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import Result
from keras import layers, ops

import gradviz
from gradviz.errors import GradvizError, LossSpecError
from gradviz.model.randomness import derived_seed, find_random_state


class Sampling(layers.Layer):
    """z = mean + exp(log_var / 2) * eps, eps from a seeded generator (state that training advances)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, inputs: Any) -> Any:
        z_mean, z_log_var = inputs
        eps = keras.random.normal(shape=ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * eps


def vae_terms(model: Any, x: Any, y: Any) -> dict[str, Any]:
    """The two losses the VAE's train_step sums."""
    z_mean, z_log_var, z = model.encoder(x, training=True)
    reconstruction = model.decoder(z, training=True)
    rec = ops.mean(ops.sum(keras.losses.binary_crossentropy(x, reconstruction), axis=(1, 2)))
    kl = -0.5 * (1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var))
    return {"reconstruction": rec, "kl": ops.mean(ops.sum(kl, axis=1))}


class VAE(keras.Model):
    def __init__(self, encoder: keras.Model, decoder: keras.Model, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder

    def train_step(self, data: Any) -> dict[str, Any]:
        x = data[0] if isinstance(data, tuple) else data
        with tf.GradientTape() as tape:
            terms = vae_terms(self, x, None)
            total = terms["reconstruction"] + terms["kl"]
        grads = tape.gradient(total, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        return {"loss": total}


def _seed_as_gradviz(model: keras.Model, seed: int = 0) -> None:
    """Give the model's seed generators the state gradviz derives from ``seed`` (it never runs on their own)."""
    random = find_random_state(model)
    for variable in model.non_trainable_variables:
        key = random.keys.get(id(variable))
        if key is not None:
            variable.assign([derived_seed(seed, key), 0])


def _vae() -> VAE:
    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 1), name="image")
    h = layers.Dense(16, activation="relu", name="hidden")(layers.Flatten(name="flat")(image))
    h = layers.BatchNormalization(name="bn")(h)
    z_mean = layers.Dense(2, name="z_mean")(h)
    z_log_var = layers.Dense(2, name="z_log_var")(h)
    encoder = keras.Model(image, [z_mean, z_log_var, Sampling(name="sampling")([z_mean, z_log_var])], name="encoder")
    code = keras.Input((2,), name="code")
    decoded = layers.Reshape((8, 8, 1), name="image_out")(layers.Dense(64, activation="sigmoid", name="pixels")(code))
    decoder = keras.Model(code, decoded, name="decoder")
    vae = VAE(encoder, decoder, name="vae")
    vae.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0))
    return vae


@pytest.fixture
def images(tmp_path: Path) -> tuple[np.ndarray, Path]:
    x = np.random.default_rng(0).random((8, 8, 8, 1)).astype("float32")
    path = tmp_path / "images.npz"
    np.savez(path, x=x)
    return x, path


@pytest.mark.parametrize("execution", ["eager", "compiled"])
def test_vae_terms_are_what_its_training_step_applies(images: tuple[np.ndarray, Path], execution: str) -> None:
    x, path = images
    vae = _vae()
    state = {v.path: np.array(v.numpy()) for v in vae.non_trainable_variables}  # BN statistics, the seed state
    weights = {v.path: np.array(v.numpy()) for v in vae.trainable_variables}
    report = gradviz.analyze(vae, data=path, batch_size=8, loss_terms=vae_terms, execution=execution)
    assert report.meta["execution"] == execution

    # statelessly: the seed generator, BatchNorm's moving statistics and the weights are untouched
    assert all(np.array_equal(state[v.path], v.numpy()) for v in vae.non_trainable_variables)
    assert all(np.array_equal(weights[v.path], v.numpy()) for v in vae.trainable_variables)
    assert [(l.name, l.loss, l.output, l.weight, l.source) for l in report.losses] == [
        ("reconstruction", "vae_terms", None, 1.0, "loss_terms"), ("kl", "vae_terms", None, 1.0, "loss_terms"),
    ]
    assert report.layer("encoder/hidden").reached_by == ("reconstruction", "kl")
    assert report.layer("decoder/pixels").reached_by == ("reconstruction",)  # KL does not depend on the decoder
    (finding,) = report.findings_of("incomplete-graph")
    assert "has no call() of its own" in finding.message

    # the training step, with the same seed state: the sampled eps are the same, so is the gradient
    _seed_as_gradviz(vae)
    before = {v.path: np.array(v.numpy(), np.float64) for v in vae.trainable_variables}
    logs = vae.train_on_batch(x, return_dict=True)
    assert sum(l.weight * l.value for l in report.losses) == pytest.approx(float(logs["loss"]), rel=1e-5)
    assert len(report.variables) == len(vae.trainable_variables) == 10
    for var, now in zip(report.variables, vae.trainable_variables):
        applied = float(np.linalg.norm(before[now.path] - np.array(now.numpy(), np.float64)))
        rounding = 2e-7 * float(np.linalg.norm(before[now.path]))
        assert var.combined_grad_norm == pytest.approx(applied, rel=1e-3, abs=rounding), var.path


@pytest.mark.parametrize("execution", ["eager", "compiled"])
def test_each_term_is_its_own_tape_and_weights_apply(images: tuple[np.ndarray, Path], execution: str) -> None:
    x, path = images
    vae = _vae()
    report = gradviz.analyze(vae, data=path, batch_size=8, loss_terms=vae_terms, loss_weights={"kl": 0.1},
                             execution=execution)
    assert {l.name: l.weight for l in report.losses} == {"reconstruction": 1.0, "kl": 0.1}
    stats = report.stats
    assert stats is not None
    _seed_as_gradviz(vae)
    seed = vae.encoder.get_layer("sampling").seed_generator.state
    seed_state = np.array(seed.numpy())
    for k, name in enumerate(stats.loss_names):
        with tf.GradientTape() as tape:
            value = vae_terms(vae, x, None)[name]
        grads = tape.gradient(value, vae.trainable_variables)
        seed.assign(seed_state)  # the eager call advanced it: back to the state gradviz used
        for v, g in enumerate(grads):
            assert bool(stats.exists[v, k]) == (g is not None)
            if g is not None:
                assert np.sqrt(stats.gram[v, k, k]) == pytest.approx(float(np.linalg.norm(g)), rel=1e-4)
    with pytest.raises(LossSpecError, match="'beta' is not an output of the model or a layer that adds a loss"):
        gradviz.analyze(vae, data=path, batch_size=8, loss_terms=vae_terms, loss_weights={"beta": 0.1})


def test_the_same_run_twice_is_byte_identical(images: tuple[np.ndarray, Path]) -> None:
    _, path = images
    vae = _vae()
    first = gradviz.analyze(vae, data=path, batch_size=4, batches=2, loss_terms=vae_terms)
    second = gradviz.analyze(vae, data=path, batch_size=4, batches=2, loss_terms=vae_terms)
    strip = lambda r: {k: v for k, v in r.to_dict().items() if k != "timings"}  # noqa: E731
    assert json.dumps(strip(first)) == json.dumps(strip(second))


def test_a_subclassed_model_without_inputs_needs_data() -> None:
    with pytest.raises(GradvizError, match="cannot tell the inputs of 'vae'.*`data=FILE.npz`"):
        gradviz.analyze(_vae(), batch_size=4, loss_terms=vae_terms)


def test_terms_that_are_not_a_dict_of_scalars_are_refused(images: tuple[np.ndarray, Path]) -> None:
    _, path = images
    with pytest.raises(LossSpecError, match="must return a non-empty dict"):
        gradviz.analyze(_vae(), data=path, batch_size=4, loss_terms=lambda m, x, y: vae_terms(m, x, y)["kl"])
    with pytest.raises(LossSpecError, match="term 'per_row' has shape .*a loss term is a scalar"):
        gradviz.analyze(_vae(), data=path, batch_size=4,
                        loss_terms=lambda m, x, y: {"per_row": ops.sum(m.encoder(x)[0], axis=1)})


TERMS = '''
import keras
from keras import ops


def two_terms(model, x, y):
    """A fit term and an L1 penalty on the predictions, as a custom train_step might sum them."""
    prediction = model(x, training=True)
    return {"fit": ops.mean(ops.square(y - prediction)), "small": 0.1 * ops.mean(ops.abs(prediction))}
'''


def test_cli_takes_loss_terms_from_a_file(tmp_path: Path, cli: Callable[..., Result]) -> None:
    keras.utils.set_random_seed(1)
    x = keras.Input((4,), name="x")
    model = keras.Model(x, layers.Dense(1, name="out")(layers.Dense(8, name="h")(x)))
    path = tmp_path / "m.keras"
    model.save(path)
    terms = tmp_path / "terms.py"
    terms.write_text(TERMS)
    result = cli("inspect", path, "--loss-terms", f"{terms}:two_terms", "--loss-weight", "small=0.5", "--batch-size",
                 "4", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(l["name"], l["loss"], l["weight"], l["output"]) for l in report["losses"]] == [
        ("fit", "two_terms", 1.0, None), ("small", "two_terms", 0.5, None),
    ]
    assert {l["name"]: l["reached_by"] for l in report["layers"]}["h"] == ["fit", "small"]
    for bad, message in [(f"{terms}", "expects FILE.py:FUNCTION"), (f"{terms}:nope", "defines no function 'nope'"),
                         (f"{tmp_path}/missing.py:f", "loss terms file not found")]:
        failed = cli("inspect", path, "--loss-terms", bad)
        assert failed.exit_code == 1 and failed.stdout == ""
        assert failed.stderr.count("\n") == 1 and message in failed.stderr, failed.stderr


def _readme_block(first_line: str) -> str:
    """The README's python block that starts with ``first_line``, verbatim."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (block,) = [m.group(1) for m in re.finditer(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)
                if m.group(1).startswith(first_line + "\n")]
    return block


def test_gan_generator_terms_as_in_the_readme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pix2pix's generator step: fool the (fixed) discriminator, stay close to the target in L1; the README's
    steps.py, run verbatim, with a small discriminator saved where it loads it from."""
    keras.utils.set_random_seed(2)
    source = keras.Input((6,), name="source")
    generator = keras.Model(source, layers.Dense(6, name="to_target")(layers.Dense(12, activation="relu",
                                                                                     name="g_hidden")(source)),
                            name="generator")
    pair = keras.Input((12,), name="pair")
    verdict = layers.Dense(1, name="verdict")(layers.BatchNormalization(name="d_bn")(layers.Dense(8, name="d_hidden")(pair)))
    keras.Model(pair, verdict, name="discriminator").save(tmp_path / "discriminator.keras")
    (tmp_path / "steps.py").write_text(_readme_block("# steps.py"))
    monkeypatch.chdir(tmp_path)
    from gradviz.model.loading import import_loss_terms

    generator_terms = import_loss_terms("steps.py:generator_terms")
    discriminator = sys.modules[generator_terms.__module__].discriminator

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((8, 6)).astype("float32"), rng.standard_normal((8, 6)).astype("float32")
    np.savez(tmp_path / "pairs.npz", x=x, y=y)
    frozen = [np.array(v.numpy()) for v in discriminator.variables]
    report = gradviz.analyze(generator, data=tmp_path / "pairs.npz", batch_size=8, loss_terms=generator_terms)
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(frozen, discriminator.variables))  # BN stats too
    assert [l.name for l in report.losses] == ["adversarial", "l1"]
    assert report.layer("g_hidden").reached_by == ("adversarial", "l1")
    # the generator step: one tape over the generator's weights of the summed terms
    with tf.GradientTape() as tape:
        terms = generator_terms(generator, x, y)
        total = terms["adversarial"] + terms["l1"]
    for var, g in zip(report.variables, tape.gradient(total, generator.trainable_variables)):
        assert var.combined_grad_norm == pytest.approx(float(np.linalg.norm(g)), rel=1e-4), var.path


def test_loss_terms_take_the_inputs_in_the_models_order(tmp_path: Path) -> None:
    keras.utils.set_random_seed(4)
    b_in, a_in = keras.Input((2,), name="b_in"), keras.Input((3,), name="a_in")  # not in name order
    model = keras.Model([b_in, a_in], layers.Dense(1, name="out")(layers.Concatenate()([b_in, a_in])))
    seen: dict[str, Any] = {}

    def shapes(model: Any, x: Any, y: Any) -> dict[str, Any]:
        seen["shapes"] = [tuple(t.shape) for t in x]
        return {"fit": ops.mean(ops.square(model(x) - y))}

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", **{"x:a_in": rng.random((4, 3)), "x:b_in": rng.random((4, 2)), "y": rng.random((4, 1))})
    gradviz.analyze(model, data=tmp_path / "d.npz", batch_size=4, loss_terms=shapes)
    assert seen["shapes"] == [(4, 2), (4, 3)]


def test_both_executions_give_the_same_terms_over_several_batches(tmp_path: Path) -> None:
    x = np.random.default_rng(1).random((16, 8, 8, 1)).astype("float32")
    np.savez(tmp_path / "d.npz", x=x)
    reports = [gradviz.analyze(_vae(), data=tmp_path / "d.npz", batch_size=8, batches=2, loss_terms=vae_terms,
                               execution=execution) for execution in ("eager", "compiled")]
    eager, compiled = (r.stats for r in reports)
    assert eager is not None and compiled is not None
    assert eager.loss_names == compiled.loss_names == ("reconstruction", "kl")
    np.testing.assert_array_equal(eager.exists, compiled.exists)
    np.testing.assert_allclose(eager.gram, compiled.gram, rtol=1e-5, atol=1e-12)
