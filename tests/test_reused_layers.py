"""Layers called at several places (a Dense applied twice, a nested model called on two inputs): one node in the
graph and the JSON report (one set of weights, one gradient: the sum over the calls, counted once in the trunk),
one box per call in the diagram (``name#2`` in the scope of its call), joined by a dashed "same weights" line
that does not rank the boxes, so the drawn data flow has no loop. (Tied embeddings: tests/test_keras_hub.py.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import keras
import networkx as nx
import numpy as np
import pytest
from keras import layers

import gradviz
from gradviz.output.diagram import RenderOptions, build_dot, render
from gradviz.model.topology import build_topology
from independent import check_report, write_npz

SAME_WEIGHTS = re.compile(r'^\s+"([^"]+)" -> "([^"]+)" \[style="dashed", [^\n]*constraint="false"[^\n]*label="same weights"',
                          re.M)
EDGE = re.compile(r'^\s+"([^"]+)" -> "([^"]+)" \[(.*)\];$', re.M)


def shared_dense() -> keras.Model:
    """``shared`` is applied to the input and again after ``mid``: head A reads its first call, B its second."""
    keras.utils.set_random_seed(0)
    x = keras.Input((4,), name="x")
    shared = layers.Dense(4, activation="tanh", name="shared")
    h1 = shared(x)
    h2 = shared(layers.Dense(4, name="mid")(h1))
    model = keras.Model(x, {"A": layers.Dense(1, name="A")(h1), "B": layers.Dense(1, name="B")(h2)}, name="shared_dense")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), loss={"A": "mse", "B": "mse"})
    return model


def siamese() -> keras.Model:
    """One encoder (a nested functional model) called on two inputs."""
    keras.utils.set_random_seed(1)
    e_in = keras.Input((6,), name="e_in")
    h = layers.Dense(8, activation="relu", name="enc_1")(e_in)
    encoder = keras.Model(e_in, layers.Dense(4, activation="relu", name="enc_2")(h), name="encoder")
    left, right = keras.Input((6,), name="left"), keras.Input((6,), name="right")
    za, zb = encoder(left), encoder(right)
    same = layers.Dense(1, activation="sigmoid", name="same")(layers.Concatenate(name="cat")([za, zb]))
    model = keras.Model([left, right], {"same": same, "recon": layers.Dense(6, name="recon")(za)}, name="siamese")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0),
                  loss={"same": "binary_crossentropy", "recon": "mse"})
    return model


def data_edges(dot: str) -> list[tuple[str, str]]:
    return [(s, t) for s, t, attrs in EDGE.findall(dot) if 'label="same weights"' not in attrs]


def node_line(dot: str, node: str) -> str:
    return next(line for line in dot.splitlines() if line.strip().startswith(f'"{node}" ['))


def fill(dot: str, node: str) -> str:
    return re.search(r'fillcolor="([^"]+)"', node_line(dot, node)).group(1)  # type: ignore[union-attr]


# -- the graph keeps one node per layer, and which call each edge joins ----------------------------------


def test_topology_keeps_calls_apart_on_one_node() -> None:
    topo = build_topology(shared_dense())
    g = topo.graph
    assert sum(1 for n in g if n.startswith("shared")) == 1
    assert g.nodes["shared"]["call_scopes"] == ["", ""]
    assert g.edges["x", "shared"]["calls"] == [[1, 1]] and g.edges["mid", "shared"]["calls"] == [[1, 2]]
    assert g.edges["shared", "A"]["calls"] == [[1, 1]] and g.edges["shared", "B"]["calls"] == [[2, 1]]
    # edges between layers that are called once carry nothing new (GraphML and JSON unchanged for them)
    assert all("calls" not in a for s, t, a in g.edges(data=True) if "shared" not in (s, t))
    assert all("call_scopes" not in a for n, a in g.nodes(data=True) if n != "shared")

    topo = build_topology(siamese())
    g = topo.graph
    assert g.nodes["encoder/enc_1"]["call_scopes"] == ["encoder", "encoder#2"]
    assert g.edges["right", "encoder/enc_1"]["calls"] == [[1, 2]]
    assert g.edges["encoder/enc_1", "encoder/enc_2"]["calls"] == [[1, 1], [2, 2]]
    assert g.edges["encoder/enc_2", "cat"]["calls"] == [[1, 1], [2, 1]]


def test_models_without_reuse_carry_no_call_attributes(build_sample: Any) -> None:
    g = build_topology(build_sample("shared_trunk")).graph
    assert not any("call_scopes" in a for _, a in g.nodes(data=True))
    assert not any("calls" in a for _, _, a in g.edges(data=True))


# -- numbers: the gradient of shared weights is the sum over their calls, counted once ------------------------


@pytest.mark.parametrize("build", [shared_dense, siamese])
def test_reused_weights_match_tapes_and_keras_step(build: Any, tmp_path: Path) -> None:
    model = build()
    rng = np.random.default_rng(0)
    if model.name == "siamese":
        x: Any = [rng.standard_normal((8, 6)).astype("float32") for _ in range(2)]
        y = {"same": rng.integers(0, 2, (8, 1)).astype("float32"), "recon": rng.standard_normal((8, 6)).astype("float32")}
        names = {"left": x[0], "right": x[1]}
    else:
        x = rng.standard_normal((8, 4)).astype("float32")
        y = {"A": rng.standard_normal((8, 1)).astype("float32"), "B": rng.standard_normal((8, 1)).astype("float32")}
        names = {"x": x}
    report = gradviz.analyze(model, data=write_npz(tmp_path / "d.npz", names, y), batch_size=8)
    assert check_report(report, model, x, y, dict(model.loss)) == len(model.trainable_variables)


def test_params_counted_once() -> None:
    report = gradviz.analyze(siamese(), batch_size=8)
    assert [l.name for l in report.layers].count("encoder/enc_1") == 1
    assert not any("#" in l.name for l in report.layers)  # the JSON report names layers, not calls
    shared = [l for l in report.layers if l.status == "shared"]
    assert report.trunk is not None
    assert report.trunk.trainable_params == sum(l.trainable_params for l in shared) == (6 * 8 + 8) + (8 * 4 + 4)
    labels = " ".join(re.findall(r"label=(<.*?>)[,\]]", build_dot(report)))
    assert labels.count("56 params") == 1 and labels.count("36 params") == 1  # on the first call's box only
    collapsed = build_dot(report, RenderOptions(expand_nested=False))
    labels = " ".join(re.findall(r"label=(<.*?>)[,\]]", collapsed))
    assert labels.count("92 params") == 1 and "same weights" in node_line(collapsed, "encoder#2")


# -- the drawing: a box per call, no loop ------------------------------------------------------------------------


def test_layer_called_twice_is_two_boxes_without_a_loop() -> None:
    report = gradviz.analyze(shared_dense(), batch_size=8)
    dot = build_dot(report)
    edges = data_edges(dot)
    assert ("mid", "shared#2") in edges and ("shared#2", "B") in edges and ("shared", "A") in edges
    assert ("mid", "shared") not in edges  # the loop the single node drew
    assert nx.is_directed_acyclic_graph(nx.DiGraph(edges))
    assert SAME_WEIGHTS.findall(dot) == [("shared", "shared#2")]
    assert "20 params" in node_line(dot, "shared") and "same weights" in node_line(dot, "shared#2")
    assert fill(dot, "shared") == fill(dot, "shared#2")  # the weights' figures, on every call
    assert "name#2, dashed grey line" in dot  # the legend says what it means


def test_nested_model_called_twice_expanded_compact_and_collapsed() -> None:
    report = gradviz.analyze(siamese(), batch_size=8)
    dot = build_dot(report)
    assert 'subgraph "cluster_encoder"' in dot and 'subgraph "cluster_encoder#2"' in dot
    edges = data_edges(dot)
    assert ("right", "encoder/enc_1#2") in edges and ("encoder/enc_1#2", "encoder/enc_2#2") in edges
    assert ("encoder/enc_2#2", "cat") in edges and ("encoder/enc_2", "cat") in edges
    assert ("right", "encoder/enc_1") not in edges
    assert "<B>enc_1#2</B>" in node_line(dot, "encoder/enc_1#2")
    assert sorted(SAME_WEIGHTS.findall(dot)) == [("encoder/enc_1", "encoder/enc_1#2"),
                                                 ("encoder/enc_2", "encoder/enc_2#2")]
    assert nx.is_directed_acyclic_graph(nx.DiGraph(edges))

    compact = build_dot(report, RenderOptions(compact=True))
    runs = ("encoder/enc_1 .. encoder/enc_2", "encoder/enc_1#2 .. encoder/enc_2#2")
    assert SAME_WEIGHTS.findall(compact) == [runs]
    assert "<B>enc_1#2 … enc_2#2</B>" in node_line(compact, runs[1])
    assert fill(compact, runs[0]) == fill(compact, runs[1])

    collapsed = build_dot(report, RenderOptions(expand_nested=False))
    edges = data_edges(collapsed)
    assert ("left", "encoder") in edges and ("right", "encoder#2") in edges and ("encoder#2", "cat") in edges
    assert SAME_WEIGHTS.findall(collapsed) == [("encoder", "encoder#2")]
    assert fill(collapsed, "encoder") == fill(collapsed, "encoder#2")


@pytest.mark.dot
def test_reused_layers_render() -> None:
    report = gradviz.analyze(siamese(), batch_size=8)
    for options in (RenderOptions(), RenderOptions(compact=True), RenderOptions(expand_nested=False)):
        assert render(build_dot(report, options), "png").startswith(b"\x89PNG")


def test_an_output_of_a_later_call_is_redrawn_from_json_on_its_call() -> None:
    """``topology.output_calls`` travels in the JSON report: ``gradviz render report.json`` draws loss B
    from the reused layer's second call (``shared#2``), as the report drew it, not from its first."""
    from gradviz.core.report import Report

    keras.utils.set_random_seed(0)
    x = keras.Input((4,), name="x")
    shared = layers.Dense(4, activation="tanh", name="shared")
    h1 = shared(x)
    model = keras.Model(x, {"A": layers.Dense(1, name="A")(h1), "B": shared(layers.Dense(4, name="mid")(h1))},
                        name="second_call_output")
    model.compile(loss={"A": "mse", "B": "mse"})
    report = gradviz.analyze(model, batch_size=8)
    assert report.topology is not None and report.topology.output_calls == {"B": 2}
    again = Report.from_json(report.to_json())
    assert again.topology is not None and again.topology.output_calls == {"B": 2}
    dot = build_dot(again)
    assert ("shared#2", "loss:B") in data_edges(dot) and ("shared", "loss:B") not in data_edges(dot)
    assert dot == build_dot(report)
    assert [f.kind for f in again.findings if f.kind == "blocked-path"] == []  # mid feeds B's call only


@pytest.mark.parametrize("build", [shared_dense, siamese])
def test_what_feeds_a_later_call_is_not_upstream_of_the_first_calls_outputs(build: Any) -> None:
    """shared_dense: ``mid`` feeds only ``shared``'s second call (head B), so head A's loss not reaching it is no
    blocked path (the single ``shared`` node made ``mid`` look upstream of A: a false ERROR finding)."""
    report = gradviz.analyze(build(), batch_size=8)
    assert [f for f in report.findings if f.kind == "blocked-path"] == []
    if build is shared_dense:
        assert report.layer("mid").grad_norm.get("A") is None  # A's gradient indeed never reaches mid
