"""KerasHub as a tested ecosystem: tiny randomly initialised backbones, built from their constructors (never
presets: no download), with task heads, analysed from .npz and from synthetic data. Every variable's per-loss
norm is checked against a separate GradientTape per loss, and its combined norm against Keras's own training
step (SGD, learning rate 1: the weight change is minus the applied gradient).

Dropout is 0 everywhere, so that gradviz's forward pass, the tapes' and Keras's see the same network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import pytest
from keras import layers, ops

import gradviz
from independent import check_report, gradviz_synthetic, write_npz

keras_hub = pytest.importorskip("keras_hub")

VOCAB = 40
SEQ = 8  # the position embeddings' length: synthetic sequences must not be longer


def sce() -> keras.losses.Loss:
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _compile(model: keras.Model, losses: dict[str, Any], weights: dict[str, float] | None = None) -> keras.Model:
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss=losses, loss_weights=weights)
    return model


def _text_inputs(names: list[str]) -> dict[str, Any]:
    return {n: keras.Input((None,), dtype="int32", name=n) for n in names}


# Named explicitly: Keras numbers automatic names per process (gpt2_backbone_6), and the tests name layers.


def _bert_backbone() -> Any:
    return keras_hub.models.BertBackbone(vocabulary_size=VOCAB, num_layers=1, num_heads=2, hidden_dim=8,
                                         intermediate_dim=16, max_sequence_length=SEQ, dropout=0.0,
                                         name="bert_backbone")


def _gpt2_backbone() -> Any:
    return keras_hub.models.GPT2Backbone(vocabulary_size=VOCAB, num_layers=1, num_heads=2, hidden_dim=8,
                                         intermediate_dim=16, max_sequence_length=SEQ, dropout=0.0,
                                         name="gpt2_backbone")


def bert_heads(wiring: str = "own") -> keras.Model:
    """BERT with a token head (per-token tags) and a sentence head. ``own``: the heads on the backbone's own
    graph and its own dict of inputs (``token_ids, segment_ids, padding_mask``: not sorted); ``nested``: the
    backbone called as a layer on new inputs."""
    keras.utils.set_random_seed(0)
    backbone = _bert_backbone()
    if wiring == "own":
        inputs, features = backbone.input, backbone.output
    else:
        inputs = _text_inputs(["token_ids", "segment_ids", "padding_mask"])
        features = backbone(inputs)
    outputs = {"tokens": layers.Dense(5, name="tokens")(features["sequence_output"]),
               "sentence": layers.Dense(3, name="sentence")(features["pooled_output"])}
    return _compile(keras.Model(inputs, outputs, name=f"bert_{wiring}"), {"tokens": sce(), "sentence": sce()},
                    {"tokens": 1.0, "sentence": 0.5})


def gpt2_heads(wiring: str = "own") -> keras.Model:
    """GPT-2 with a next-token head and an auxiliary regression head on the mean hidden state."""
    keras.utils.set_random_seed(1)
    backbone = _gpt2_backbone()
    if wiring == "own":
        inputs, hidden = backbone.input, backbone.output
    else:
        inputs = _text_inputs(["token_ids", "padding_mask"])
        hidden = backbone(inputs)
    outputs = {"next_token": layers.Dense(VOCAB, name="next_token")(hidden),
               "aux": layers.Dense(1, name="aux")(layers.GlobalAveragePooling1D(name="pool")(hidden))}
    return _compile(keras.Model(inputs, outputs, name=f"gpt2_{wiring}"), {"next_token": sce(), "aux": "mse"},
                    {"next_token": 1.0, "aux": 0.3})


def resnet_heads() -> keras.Model:
    keras.utils.set_random_seed(2)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block", image_shape=(16, 16, 3),
    )
    image = keras.Input((16, 16, 3), name="image")
    features = layers.GlobalAveragePooling2D(name="gap")(backbone(image))
    outputs = {"cls": layers.Dense(3, name="cls")(features), "reg": layers.Dense(1, name="reg")(features)}
    return _compile(keras.Model(image, outputs, name="resnet_heads"), {"cls": sce(), "reg": "mse"})


def vit_heads() -> keras.Model:
    keras.utils.set_random_seed(3)
    backbone = keras_hub.models.ViTBackbone(image_shape=(16, 16, 3), patch_size=8, num_layers=1, num_heads=2,
                                            hidden_dim=8, mlp_dim=16, dropout_rate=0.0, attention_dropout=0.0)
    image = keras.Input((16, 16, 3), name="image")
    tokens = backbone(image)
    outputs = {"cls": layers.Dense(3, name="cls")(ops.take(tokens, 0, axis=1)),  # the class token
               "reg": layers.Dense(1, name="reg")(layers.GlobalAveragePooling1D(name="pool")(tokens))}
    return _compile(keras.Model(image, outputs, name="vit_heads"), {"cls": sce(), "reg": "mse"})


def classifier_trunk() -> keras.Model:
    """A task model (BertTextClassifier, no preprocessor) used as a trunk, with an extra head on its logits."""
    keras.utils.set_random_seed(4)
    classifier = keras_hub.models.BertTextClassifier(_bert_backbone(), num_classes=3, preprocessor=None, dropout=0.0)
    inputs = _text_inputs(["token_ids", "segment_ids", "padding_mask"])
    logits = classifier(inputs)
    outputs = {"label": logits, "extra": layers.Dense(1, name="extra")(logits)}
    return _compile(keras.Model(inputs, outputs, name="classifier_trunk"), {"label": sce(), "extra": "mse"})


def causal_lm_heads() -> keras.Model:
    """GPT2CausalLM: its output projection is the token embedding reversed (tied weights); plus an aux head."""
    keras.utils.set_random_seed(5)
    lm = keras_hub.models.GPT2CausalLM(_gpt2_backbone(), preprocessor=None, name="gpt2_causal_lm")
    inputs = _text_inputs(["token_ids", "padding_mask"])
    logits = lm(inputs)
    outputs = {"next_token": logits, "aux": layers.Dense(1, name="aux")(layers.GlobalAveragePooling1D(name="pool")(logits))}
    return _compile(keras.Model(inputs, outputs, name="causal_lm_heads"), {"next_token": sce(), "aux": "mse"},
                    {"next_token": 1.0, "aux": 0.5})


# -- data a user would have ---------------------------------------------------------------------------


def text_batch(rows: int, names: list[str], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Token ids, segment ids (first half 0, second 1) and padding masks with real padding at the end."""
    lengths = rng.integers(3, SEQ + 1, rows)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype("int32")
    arrays = {"token_ids": rng.integers(1, VOCAB, (rows, SEQ)).astype("int32") * mask,
              "segment_ids": (np.arange(SEQ)[None, :] >= SEQ // 2).astype("int32").repeat(rows, 0) * mask,
              "padding_mask": mask}
    return {n: arrays[n] for n in names}


def _targets(model: keras.Model, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ys = {}
    for name, tensor in model.output.items():
        classes = tensor.shape[-1]
        loss = model.loss[name]
        if loss == "mse":
            ys[name] = rng.standard_normal((rows,) + tuple(d or SEQ for d in tensor.shape[1:])).astype("float32")
        else:
            ys[name] = rng.integers(0, classes, (rows,) + tuple(d or SEQ for d in tensor.shape[1:-1])).astype("int32")
    return ys


TEXT = {
    "bert_own": (lambda: bert_heads("own"), ["token_ids", "segment_ids", "padding_mask"]),
    "bert_nested": (lambda: bert_heads("nested"), ["token_ids", "segment_ids", "padding_mask"]),
    "gpt2_own": (lambda: gpt2_heads("own"), ["token_ids", "padding_mask"]),
    "gpt2_nested": (lambda: gpt2_heads("nested"), ["token_ids", "padding_mask"]),
    "classifier_trunk": (classifier_trunk, ["token_ids", "segment_ids", "padding_mask"]),
    "causal_lm_heads": (causal_lm_heads, ["token_ids", "padding_mask"]),
}


def _losses(model: keras.Model) -> dict[str, Any]:
    return dict(model.loss)


# -- numbers: .npz --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(TEXT))
def test_text_models_from_npz_match_tapes_and_keras_step(case: str, tmp_path: Path) -> None:
    build, names = TEXT[case]
    model = build()
    rng = np.random.default_rng(0)
    x, y = text_batch(6, names, rng), _targets(model, 6, rng)
    report = gradviz.analyze(model, data=write_npz(tmp_path / "d.npz", x, y), batch_size=6)
    # the model is called with its own dict (a user passes the same dict to fit)
    assert check_report(report, model, dict(x), y, _losses(model)) > 10
    shared = {l.name for l in report.layers if l.status == "shared"}
    assert any(name.endswith("token_embedding") for name in shared)


@pytest.mark.parametrize("build", [resnet_heads, vit_heads], ids=["resnet", "vit"])
def test_image_backbones_from_npz_match_tapes_and_keras_step(build: Callable[[], keras.Model], tmp_path: Path) -> None:
    model = build()
    rng = np.random.default_rng(1)
    image = rng.random((4, 16, 16, 3), dtype=np.float32)
    y = _targets(model, 4, rng)
    report = gradviz.analyze(model, data=write_npz(tmp_path / "d.npz", {"image": image}, y), batch_size=4)
    assert check_report(report, model, image, y, _losses(model)) >= 2
    assert report.trunk is not None and report.trunk.trainable_params > 0


# -- numbers: synthetic data ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["bert_own", "gpt2_own", "causal_lm_heads"])
def test_text_models_from_synthetic_data_match_tapes_and_keras_step(case: str) -> None:
    build, names = TEXT[case]
    model = build()
    report = gradviz.analyze(model, batch_size=4, seed=1)
    x, y = gradviz_synthetic(model, 4, seed=1)
    assert sorted(x) == sorted(names)
    assert x["token_ids"].shape == (4, SEQ) and 0 <= x["token_ids"].min() and x["token_ids"].max() < VOCAB
    assert x["padding_mask"].dtype == np.int32 and np.all(x["padding_mask"] == 1)
    if "segment_ids" in x:
        assert set(np.unique(x["segment_ids"])) <= {0, 1}  # num_segments=2
    assert check_report(report, model, x, y, _losses(model)) > 10


def test_synthetic_sequence_length_follows_the_position_embedding() -> None:
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(vocabulary_size=VOCAB, num_layers=1, num_heads=2, hidden_dim=8,
                                             intermediate_dim=16, max_sequence_length=5, dropout=0.0)
    model = keras.Model(backbone.input, {"a": layers.Dense(2, name="a")(backbone.output),
                                         "b": layers.Dense(1, name="b")(backbone.output)})
    model.compile(loss="mse")
    x, y = gradviz_synthetic(model, 2)
    assert x["token_ids"].shape == (2, 5) and y["a"].shape == (2, 5, 2)
    assert gradviz.analyze(model, batch_size=2).layer("position_embedding").status == "shared"


def test_token_and_position_embedding_ids_in_range() -> None:
    keras.utils.set_random_seed(0)
    ids = keras.Input((6,), dtype="int32", name="ids")
    h = keras_hub.layers.TokenAndPositionEmbedding(vocabulary_size=7, sequence_length=6, embedding_dim=4,
                                                   name="embed")(ids)
    h = layers.GlobalAveragePooling1D()(h)
    model = keras.Model(ids, [layers.Dense(1, name="a")(h), layers.Dense(1, name="b")(h)])
    model.compile(loss="mse")
    x, _ = gradviz_synthetic(model, 64)
    assert x["ids"].min() == 0 and x["ids"].max() == 6


# -- files and the CLI -------------------------------------------------------------------------------------


def test_saved_bert_through_the_cli_with_npz_and_synthetic(cli: Any, tmp_path: Path) -> None:
    model = bert_heads("own")
    path = tmp_path / "bert.keras"
    model.save(path)
    rng = np.random.default_rng(3)
    data = write_npz(tmp_path / "d.npz", text_batch(4, ["token_ids", "segment_ids", "padding_mask"], rng),
                     _targets(model, 4, rng))
    for extra in (["--data", str(data)], []):
        result = cli("inspect", path, "--batch-size", "4", "--json", *extra)
        assert result.exit_code == 0, result.stderr
        assert '"bert_backbone/transformer_layer_0"' not in result.stdout  # the own-graph wiring: no prefix
        assert '"transformer_layer_0"' in result.stdout and '"status": "shared"' in result.stdout


# -- tied embeddings: drawn as two calls, counted once ---------------------------------------------------------


def test_tied_embedding_is_drawn_per_call_and_counted_once() -> None:
    import re

    import networkx as nx

    from gradviz.output.diagram import RenderOptions, build_dot
    model = causal_lm_heads()
    report = gradviz.analyze(model, batch_size=4)
    emb = "gpt2_causal_lm/gpt2_backbone/token_embedding"
    assert [l.name for l in report.layers].count(emb) == 1 and report.layer(emb).status == "shared"
    params = report.layer(emb).trainable_params
    assert params == VOCAB * 8
    shared = [l for l in report.layers if l.status == "shared"]
    assert report.trunk is not None and report.trunk.trainable_params == sum(l.trainable_params for l in shared)
    assert report.trunk.trainable_params == sum(int(np.prod(v.shape)) for v in model.trainable_variables) - 41  # aux

    dot = build_dot(report)
    edges = [(s, t) for s, t, a in re.findall(r'^\s+"([^"]+)" -> "([^"]+)" \[(.*)\];$', dot, re.M)
             if "same weights" not in a]
    assert ("gpt2_causal_lm/gpt2_backbone/layer_norm", f"{emb}#2") in edges
    assert (f"{emb}#2", "loss:next_token") in edges and ("token_ids", emb) in edges
    assert ("gpt2_causal_lm/gpt2_backbone/layer_norm", emb) not in edges  # the loop of the single node
    assert nx.is_directed_acyclic_graph(nx.DiGraph(edges))
    assert re.search(rf'"{re.escape(emb)}" -> "{re.escape(emb)}#2" \[style="dashed".*label="same weights"', dot)
    # the later call is drawn in the task model, outside the backbone, named from there
    cluster = dot[dot.index('subgraph "cluster_gpt2_causal_lm"'):dot.index('subgraph "cluster_gpt2_causal_lm/gpt2_backbone"')]
    assert f'"{emb}#2"' in cluster and "<B>gpt2_backbone/token_embedding#2</B>" in cluster
    labels = " ".join(re.findall(r"label=(<.*?>)[,\]]", dot))
    assert labels.count(f"{params} params") == 1
    for options in (RenderOptions(compact=True), RenderOptions(expand_nested=False)):
        build_dot(report, options)  # draws without error in the other views


def test_causal_lm_alone_tied_embedding_collapsed_and_numbers(tmp_path: Path) -> None:
    """GPT2CausalLM analysed as it is: one loss; with the backbone collapsed, the output projection is still
    its own box (the token embedding's later call, outside the backbone), and the numbers hold."""
    from gradviz.output.diagram import RenderOptions, build_dot

    keras.utils.set_random_seed(6)
    model = keras_hub.models.GPT2CausalLM(_gpt2_backbone(), preprocessor=None, name="gpt2_causal_lm")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss=sce())
    rng = np.random.default_rng(4)
    x = text_batch(4, ["token_ids", "padding_mask"], rng)
    name = model.output_names[0]
    y = {name: rng.integers(0, VOCAB, (4, SEQ)).astype("int32")}
    report = gradviz.analyze(model, data=write_npz(tmp_path / "d.npz", x, y), batch_size=4)
    assert check_report(report, model, x, y, {name: sce()}) > 5
    collapsed = build_dot(report, RenderOptions(expand_nested=False))
    line = next(l for l in collapsed.splitlines() if l.strip().startswith('"gpt2_backbone/token_embedding#2" ['))
    assert "ReversibleEmbedding · same weights" in line and "nested model" not in line
    assert '"gpt2_backbone" -> "gpt2_backbone/token_embedding#2" [penwidth' in collapsed
    assert f'"gpt2_backbone/token_embedding#2" -> "loss:{name}"' in collapsed


def test_image_converter_declares_pixel_range() -> None:
    keras.utils.set_random_seed(0)
    image = keras.Input((16, 16, 3), name="image")
    converted = keras_hub.layers.ImageConverter(image_size=(16, 16), scale=1 / 255)(image)
    h = layers.GlobalAveragePooling2D()(layers.Conv2D(2, 3, name="conv")(converted))
    model = keras.Model(image, [layers.Dense(1, name="a")(h), layers.Dense(1, name="b")(h)])
    model.compile(loss="mse")
    x, _ = gradviz_synthetic(model, 8)
    assert x["image"].min() >= 0 and 200 < x["image"].max() < 255
