"""Diagrams: golden DOT text, determinism, colours, compact/nested views, missing Graphviz, the CLI's -o."""

from __future__ import annotations

import html
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

import networkx as nx
import pytest

import gradviz
from gradviz import output
from gradviz.core.report import Report
from gradviz.errors import GraphvizMissingError, OutputError
from gradviz.output.diagram import RenderOptions, build_dot, render, tint

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
GOLDEN = Path(__file__).resolve().parent / "golden"

_REPORTS: dict[str, Report] = {}


def sample_report(name: str) -> Report:
    """The analysis of a committed sample (cached: analysing is the slow part)."""
    if name not in _REPORTS:
        _REPORTS[name] = gradviz.analyze(SAMPLES / f"{name}.keras")
    return _REPORTS[name]


def deep_chain() -> Any:
    """A longer model for --compact: a shared chain, a private chain per head, and an unreached branch."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    x = keras.Input((8,), name="features")
    h = x
    for i in range(4):
        h = layers.Dense(16, activation="relu", name=f"trunk_{i}")(h)
        h = layers.Dropout(0.0, name=f"drop_{i}")(h)
    c = layers.Dense(8, activation="relu", name="c_hidden")(h)
    c = layers.Dense(8, activation="relu", name="c_hidden2")(c)
    c = layers.Dense(1, activation="sigmoid", name="C")(c)
    d = layers.Dense(1, name="D")(h)
    side = layers.Dense(4, name="side_1")(x)
    side = layers.Dense(4, name="side_2")(side)
    model = keras.Model(x, [c, d, side], name="deep_chain")
    # every output named (Keras's training step refuses a dict loss that leaves one out)
    model.compile(loss={"C": "binary_crossentropy", "D": "mse", "side_2": None}, loss_weights={"C": 1.0, "D": 0.5,
                                                                                              "side_2": 1.0})
    return model


def nested_trunk() -> Any:
    """A functional encoder used as a layer inside a two-head model."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inp = keras.Input((16,), name="features")
    enc_in = keras.Input((16,), name="enc_in")
    h = layers.Dense(32, activation="relu", name="enc_1")(enc_in)
    h = layers.Dense(32, activation="relu", name="enc_2")(h)
    encoder = keras.Model(enc_in, h, name="encoder")
    z = encoder(inp)
    side = layers.Dense(4, name="side")(inp)
    c = layers.Dense(1, activation="sigmoid", name="C")(z)
    d = layers.Dense(1, name="D")(layers.Concatenate(name="cat")([z, side]))
    model = keras.Model(inp, [c, d], name="nested_trunk")
    model.compile(loss=["binary_crossentropy", "mse"], loss_weights=[1.0, 0.5])
    return model


def built_report(name: str) -> Report:
    if name not in _REPORTS:
        _REPORTS[name] = gradviz.analyze({"deep_chain": deep_chain, "nested_trunk": nested_trunk}[name](), batch_size=8)
    return _REPORTS[name]


def check_golden(name: str, text: str, regen: bool) -> None:
    path = GOLDEN / f"{name}.dot"
    if regen:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    assert path.exists(), f"{path} is missing: run pytest --regen-golden"
    assert text == path.read_text(encoding="utf-8"), f"{name}: DOT differs from {path} (pytest --regen-golden)"


def node_ids(dot: str) -> list[str]:
    return re.findall(r'^\s+"([^"]+)" \[', dot, flags=re.M)


# -- golden DOT ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "golden, sample, options",
    [
        ("shared_trunk", "shared_trunk", RenderOptions()),
        ("shared_trunk_norms_shapes_lr", "shared_trunk", RenderOptions(show_norms=True, show_shapes=True, rankdir="LR")),
        ("stop_gradient_head", "stop_gradient_head", RenderOptions()),
        ("dead_head", "dead_head", RenderOptions(show_norms=True)),
        ("ticket_router", "ticket_router", RenderOptions()),
    ],
)
def test_golden_samples(golden: str, sample: str, options: RenderOptions, regen_golden: bool) -> None:
    check_golden(golden, build_dot(sample_report(sample), options), regen_golden)


@pytest.mark.parametrize(
    "golden, model, options",
    [
        ("deep_chain_compact", "deep_chain", RenderOptions(compact=True)),
        ("nested_trunk_clusters", "nested_trunk", RenderOptions(show_norms=True)),
        ("nested_trunk_collapsed", "nested_trunk", RenderOptions(expand_nested=False, show_norms=True)),
    ],
)
def test_golden_built(golden: str, model: str, options: RenderOptions, regen_golden: bool) -> None:
    check_golden(golden, build_dot(built_report(model), options), regen_golden)


# -- what the diagram says ------------------------------------------------------------------


def test_deterministic_across_analyses() -> None:
    first = build_dot(gradviz.analyze(SAMPLES / "shared_trunk.keras"), RenderOptions(show_norms=True))
    second = build_dot(gradviz.analyze(SAMPLES / "shared_trunk.keras"), RenderOptions(show_norms=True))
    assert first == second


def test_shared_layers_striped_exclusive_filled() -> None:
    dot = build_dot(sample_report("shared_trunk"))
    colors = {l.name: l.color for l in sample_report("shared_trunk").losses}
    a = next(line for line in dot.splitlines() if line.strip().startswith('"A" ['))
    assert 'style="striped"' in a and tint(colors["C"]) in a and tint(colors["D"]) in a
    c = next(line for line in dot.splitlines() if line.strip().startswith('"C" ['))
    assert 'style="filled"' in c and f'fillcolor="{tint(colors["C"])}"' in c
    assert re.search(r'"loss:C" \[.*label=<<TABLE [^>]*><TR><TD><B>C · binary_crossentropy · weight 0.5 · loss 0.774</B>', dot)


def test_stripes_follow_weighted_norms() -> None:
    report = sample_report("shared_trunk")
    info = report.layer("A")
    weights = {l.name: l.weight for l in report.losses}
    c, d = (weights[k] * (info.grad_norm[k] or 0.0) for k in ("C", "D"))
    line = next(l for l in build_dot(report).splitlines() if l.strip().startswith('"A" ['))
    fraction = float(re.search(r'fillcolor="#[0-9A-F]{6};([0-9.]+):', line).group(1))  # type: ignore[union-attr]
    assert fraction == pytest.approx(c / (c + d), abs=1e-3)


def test_blocked_edge_dashed_and_operation_marked() -> None:
    dot = build_dot(sample_report("stop_gradient_head"))
    edge = next(l for l in dot.splitlines() if '-> "stop_gradient"' in l)
    assert 'style="dashed"' in edge and "blocked: D" in edge
    node = next(l for l in dot.splitlines() if l.strip().startswith('"stop_gradient" ['))
    assert 'shape="octagon"' in node and "blocks D" in node
    assert "the operation blocks that loss" in dot  # legend


def test_dead_head_and_unreached_styles() -> None:
    dot = build_dot(sample_report("dead_head"))
    assert "dead head: trains nothing" in dot
    d = next(l for l in dot.splitlines() if l.strip().startswith('"D" ['))
    assert "peripheries=2" in d and "dead: zero gradient" in d
    chain = build_dot(built_report("deep_chain"))
    side = next(l for l in chain.splitlines() if l.strip().startswith('"side_1" ['))
    assert 'style="dashed,filled"' in side and "unreached" in side


def test_colors_agree_between_json_legend_and_nodes() -> None:
    report = sample_report("ticket_router")
    losses = json.loads(report.to_json())["losses"]
    dot = build_dot(report)
    assert [l["color"] for l in losses] == ["#0072B2", "#E69F00"]
    for loss in losses:
        assert f'BGCOLOR="{tint(loss["color"])}" BORDER="1" COLOR="{loss["color"]}"' in dot  # legend
        assert re.search(rf'"loss:{loss["name"]}" \[.*color="{loss["color"]}"', dot)  # loss node


def test_regularization_is_grey_in_json_and_legend() -> None:
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    x = keras.Input((4,), name="x")
    y = layers.Dense(1, name="y", kernel_regularizer=keras.regularizers.l2(0.01))(x)
    model = keras.Model(x, y, name="reg")
    model.compile(loss="mse")
    report = gradviz.analyze(model, batch_size=4)
    colors = {l["name"]: l["color"] for l in report.to_dict()["losses"]}
    assert colors == {"y": "#0072B2", "regularization": "#999999"}
    assert "regularization · model.losses" in build_dot(report)


def test_compact_merges_chains() -> None:
    report = built_report("deep_chain")
    full, compact = build_dot(report), build_dot(report, RenderOptions(compact=True))
    assert len(node_ids(compact)) < len(node_ids(full))
    assert "trunk_0 .. drop_3" in node_ids(compact)  # 4 Dense + 4 Dropout, all shared
    assert "c_hidden .. C" in node_ids(compact)  # the head C's private chain
    assert "side_1 .. side_2" in node_ids(compact)  # unreached stays its own run


def test_nested_clusters_and_collapsed() -> None:
    report = built_report("nested_trunk")
    expanded = build_dot(report)
    assert 'subgraph "cluster_encoder"' in expanded and '"encoder/enc_1"' in expanded
    collapsed = build_dot(report, RenderOptions(expand_nested=False))
    assert "cluster_encoder" not in collapsed and "encoder/enc_1" not in collapsed
    assert '"encoder" -> "C"' in collapsed and '"features" -> "encoder"' in collapsed
    # the collapsed box carries the figures of both layers taken together
    enc = [report.layer("encoder/enc_1"), report.layer("encoder/enc_2")]
    combined = (sum((l.combined_grad_norm or 0.0) ** 2 for l in enc)) ** 0.5
    line = next(l for l in build_dot(report, RenderOptions(expand_nested=False, show_norms=True)).splitlines()
                if l.strip().startswith('"encoder" ['))
    assert f"Σ {combined:.3g}" in line


def test_edge_width_follows_upstream_weights() -> None:
    dot = build_dot(sample_report("stop_gradient_head"))
    widths = dict(re.findall(r'^\s+("[^"]+" -> "[^"]+") \[penwidth=([0-9.]+)', dot, flags=re.M))
    assert float(widths['"features" -> "A"']) == 0.8  # no weights upstream of an input
    assert float(widths['"A" -> "B"']) > 1.0
    assert float(widths['"stop_gradient" -> "D"']) == 0.8  # nothing passes a blocking op


def test_rankdir_validated() -> None:
    with pytest.raises(OutputError, match="valid: TB, LR"):
        RenderOptions(rankdir="BT")


# -- rendering and Graphviz missing -----------------------------------------------------------


@pytest.mark.dot
def test_render_formats() -> None:
    dot = build_dot(sample_report("shared_trunk"))
    assert render(dot, "png").startswith(b"\x89PNG")
    assert render(dot, "pdf").startswith(b"%PDF")
    assert b"<svg" in render(dot, "svg")


def test_missing_dot_raises_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    report = sample_report("shared_trunk")
    with pytest.raises(GraphvizMissingError, match="install Graphviz.*-o FILE.dot"):
        render(build_dot(report), "svg")
    with pytest.raises(GraphvizMissingError):
        output.write(report, tmp_path / "flow.png")
    assert not list(tmp_path.iterdir())  # nothing left behind, not even a temporary file
    for fmt in ("dot", "json", "graphml", "html"):
        output.write(report, tmp_path / f"flow.{fmt}")
    page = html.unescape((tmp_path / "flow.html").read_text())
    assert "No diagram: Graphviz's dot program is not installed" in page and "<svg" not in page


def test_cli_missing_dot(cli: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    out = tmp_path / "out"
    out.mkdir()
    result = cli("inspect", SAMPLES / "shared_trunk.keras", "-o", out / "a.json", "-o", out / "a.svg")
    assert result.exit_code == 1
    errors = [l for l in result.stderr.splitlines() if l.startswith("Error:")]
    assert len(errors) == 1 and "install Graphviz" in errors[0] and "-o FILE.dot" in errors[0]
    assert len(result.stderr.strip().splitlines()) == 1
    assert not list(out.iterdir())
    html_only = cli("inspect", SAMPLES / "shared_trunk.keras", "-o", out / "a.html")
    assert html_only.exit_code == 0 and "without its diagram" in html_only.stderr
    assert "No diagram" in (out / "a.html").read_text()


# -- GraphML -----------------------------------------------------------------------------------


def test_graphml_round_trips(tmp_path: Path) -> None:
    report = sample_report("stop_gradient_head")
    path = output.write(report, tmp_path / "g.graphml")
    graph = nx.read_graphml(path)
    assert list(graph.nodes) == [*[l.name for l in report.layers], "loss:C", "loss:D"]
    norms = json.loads(graph.nodes["A"]["grad_norm"])
    assert norms["D"] is None and norms["C"] == pytest.approx(report.layer("A").grad_norm["C"])
    assert json.loads(graph.nodes["A"]["reached_by"]) == ["C"]
    assert json.loads(graph.edges["B", "stop_gradient"]["blocked_for"]) == ["D"]
    assert graph.nodes["loss:C"]["color"] == "#0072B2"
    assert output.write(report, tmp_path / "h.graphml").read_bytes() == path.read_bytes()


# -- the CLI's -o ------------------------------------------------------------------------------


@pytest.mark.dot
def test_cli_every_format_in_one_run(cli: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {fmt: tmp_path / f"flow.{fmt}" for fmt in ("svg", "png", "pdf", "dot", "html", "json", "graphml")}
    args = ["inspect", str(SAMPLES / "stop_gradient_head.keras"), *[str(a) for p in files.values() for a in ("-o", p)],
            "--show-norms", "--rankdir", "LR"]
    monkeypatch.setattr(sys, "argv", ["/somewhere/bin/gradviz", *args])  # the HTML shows the command line
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("wrote ") == len(files)
    assert files["png"].read_bytes().startswith(b"\x89PNG")
    assert files["pdf"].read_bytes().startswith(b"%PDF")
    assert "<svg" in files["svg"].read_text()
    dot = files["dot"].read_text()
    assert dot.startswith('digraph "stop_gradient_head"') and 'rankdir="LR"' in dot and "Σ" in dot
    assert [l["color"] for l in json.loads(files["json"].read_text())["losses"]] == ["#0072B2", "#E69F00"]
    assert nx.read_graphml(files["graphml"]).number_of_nodes() == 8
    page = files["html"].read_text()
    assert "<svg" in page and "gradviz inspect " in page and "--rankdir LR</code>" in page


def test_cli_format_override_and_unknown_extension(cli: Callable[..., Any], tmp_path: Path) -> None:
    target = tmp_path / "flow.txt"
    result = cli("inspect", SAMPLES / "shared_trunk.keras", "-o", target, "--format", "dot", "--compact")
    assert result.exit_code == 0, result.stderr
    assert target.read_text().startswith('digraph "shared_trunk"')
    bad = cli("inspect", SAMPLES / "shared_trunk.keras", "-o", tmp_path / "flow.jpeg")
    assert bad.exit_code == 1
    assert bad.stderr.strip().splitlines() == [
        "Error: unknown output format '.jpeg' (extension of "
        f"{str(tmp_path / 'flow.jpeg')!r}); valid: .dot, .graphml, .html, .json, .pdf, .png, .svg"
    ]
    assert cli("inspect", SAMPLES / "shared_trunk.keras", "--rankdir", "BT").exit_code == 2


def test_cli_help_lists_render_options(cli: Callable[..., Any]) -> None:
    text = cli("inspect", "--help").stdout
    for option in ("--show-shapes", "--show-norms", "--rankdir", "--collapse-nested", "--compact", ".graphml"):
        assert option in text


# -- a big trunk stays fast and readable --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.dot
def test_resnet50_trunk_renders_in_seconds() -> None:
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inp = keras.Input((64, 64, 3), name="image")
    base = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
    features = layers.GlobalAveragePooling2D(name="gap")(base(inp))
    heads = [
        layers.Dense(10, activation="softmax", name="classes", kernel_regularizer=keras.regularizers.l2(1e-4))(features),
        layers.Dense(1, activation="sigmoid", name="is_real")(features),
        layers.Dense(4, name="box")(features),
    ]
    model = keras.Model(inp, heads, name="resnet_heads")
    model.compile(loss=["categorical_crossentropy", "binary_crossentropy", "mse"], loss_weights=[1.0, 0.5, 0.1])
    report = gradviz.analyze(model, batch_size=2)
    assert len(report.layers) > 170
    start = time.perf_counter()
    full = build_dot(report)
    svg = render(full, "svg")
    compact = build_dot(report, RenderOptions(compact=True))
    render(compact, "png")
    assert time.perf_counter() - start < 15
    assert b"resnet50/conv5_block3_out" in svg
    assert len(node_ids(compact)) < len(node_ids(full)) / 2
    assert full == build_dot(report)
