"""What people look at (issue 17): diagram labels, fonts, colours, legend, --dpi, the HTML table, the sweep plot.

Asserted on DOT, SVG and HTML text and on plot geometry, never on pixels;
each fix was also rendered to PNG and looked at.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import gradviz
from gradviz.core.report import Report
from gradviz.errors import OutputError
from gradviz.output.html import build_html
from gradviz.output.diagram import (
    DPI_RANGE, FONT, INPUT_LINE, LABEL_PLATE, SWATCH_FRAME, UNREACHED_FILL, RenderOptions, build_dot, render,
    tint, vector_options,
)
from gradviz.output.text import fmt
SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def _model() -> Any:
    """An input with an underscore, a nested encoder (regularized Dense + BatchNormalization), a two-layer
    shared trunk and two heads: three losses (C, D and regularization)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    enc_in = keras.Input((8,), name="enc_in")
    h = layers.Dense(8, activation="tanh", kernel_regularizer=keras.regularizers.l2(1e-3), name="enc_dense")(enc_in)
    h = layers.BatchNormalization(name="enc_bn")(h)
    encoder = keras.Model(enc_in, h, name="encoder")
    inp = keras.Input((8,), name="text_ids")
    t = layers.Dense(8, activation="tanh", name="trunk_a")(encoder(inp))
    t = layers.Dense(8, activation="tanh", name="trunk_b")(t)
    c = layers.Dense(1, activation="sigmoid", name="C")(t)
    d = layers.Dense(1, name="D")(t)
    model = keras.Model(inp, [c, d], name="looks")
    model.compile(loss=["binary_crossentropy", "mse"], loss_weights=[0.5, 0.3])
    return model


@pytest.fixture(scope="module")
def built() -> tuple[Any, Report]:
    model = _model()
    return model, gradviz.analyze(model, batch_size=8)


def _node_line(dot: str, node: str) -> str:
    return next(line for line in dot.splitlines() if line.strip().startswith(f'"{node}" ['))


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# -- labels and fonts ------------------------------------------------------------------------------


def test_labels_are_table_rows_not_line_breaks(built: tuple[Any, Report]) -> None:
    """<BR/> lines of different sizes overlap in Graphviz (a bold name's underscore lands on the next line);
    each line is a table row instead."""
    _, report = built
    for options in (RenderOptions(), RenderOptions(show_norms=True, show_shapes=True), RenderOptions(compact=True)):
        dot = build_dot(report, options)
        assert "<BR/>" not in dot
        labelled = [line for line in dot.splitlines() if re.match(r'\s+"[^"]+" \[', line)]
        assert labelled and all("label=<<TABLE " in line for line in labelled)
    dot = build_dot(report)
    assert "<TR><TD><B>text_ids</B></TD></TR>" in _node_line(dot, "text_ids")
    assert "<TR><TD><B>enc_bn</B></TD></TR>" in _node_line(dot, "encoder/enc_bn")


def test_font_stack_with_arial_metrics(built: tuple[Any, Report]) -> None:
    """Helvetica resolves to the much wider DejaVu Sans in fontconfig while browsers draw Arial-like
    Helvetica; the stack names Arial and its metric-compatible stand-ins first, for dot and browsers alike."""
    _, report = built
    assert FONT.split(",")[:3] == ["Arial", "Liberation Sans", "Arimo"]
    dot = build_dot(report)
    for kind in ("graph", "node", "edge"):
        line = next(l for l in dot.splitlines() if l.strip().startswith(f"{kind} ["))
        assert f'fontname="{FONT}"' in line


@pytest.mark.dot
def test_svg_names_the_font_dot_measured_with(built: tuple[Any, Report]) -> None:
    _, report = built
    svg = render(build_dot(report, RenderOptions(show_norms=True)), "svg").decode()
    families = set(re.findall(r'<text [^>]*font-family="([^"]*)"', svg))
    assert families == {FONT}


def test_striped_boxes_put_their_text_on_a_plate(built: tuple[Any, Report]) -> None:
    _, report = built
    dot = build_dot(report, RenderOptions(show_norms=True))
    striped = _node_line(dot, "trunk_a")
    assert 'style="striped"' in striped and f'BGCOLOR="{LABEL_PLATE}"' in striped
    exclusive = _node_line(dot, "C")
    assert 'style="filled"' in exclusive and LABEL_PLATE not in exclusive


def test_norm_swatches_are_framed(built: tuple[Any, Report]) -> None:
    """A loss's swatch on a box filled with its own tint stands out by a dark frame."""
    _, report = built
    dot = build_dot(report, RenderOptions(show_norms=True))
    d = next(l for l in report.losses if l.name == "D")
    line = _node_line(dot, "D")
    assert f'fillcolor="{tint(d.color)}"' in line
    assert f'BGCOLOR="{d.color}" BORDER="1" COLOR="{SWATCH_FRAME}"' in line
    assert f"D {fmt(report.layer('D').grad_norm['D'])}" in line
    assert "■" not in dot
    # a browser drops leading and trailing spaces of SVG text: gaps must not be spaces
    assert not re.search(r"<FONT[^>]*> |  </FONT>", dot)


def test_inputs_white_with_a_dark_border_unlike_unreached(built: tuple[Any, Report]) -> None:
    _, report = built
    line = _node_line(build_dot(report), "text_ids")
    assert 'fillcolor="#FFFFFF"' in line and f'color="{INPUT_LINE}"' in line and "dashed" not in line
    assert UNREACHED_FILL != "#FFFFFF"


# -- legend, loss boxes, clusters, compact boxes ------------------------------------------------------


def test_legend_counts_every_loss_with_regularization(built: tuple[Any, Report]) -> None:
    _, report = built
    assert [l.name for l in report.losses] == ["C", "D", "regularization"]
    dot = build_dot(report)
    assert "<B>looks</B>: gradient flow of 3 losses" in dot and "loss(es)" not in dot


def test_legend_singular_for_one_loss() -> None:
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    x = keras.Input((4,), name="x")
    model = keras.Model(x, layers.Dense(1, name="y")(x), name="one")
    model.compile(loss="mse")
    report = gradviz.analyze(model, batch_size=4)
    assert len(report.losses) == 1
    assert "<B>one</B>: gradient flow of 1 loss</TD>" in build_dot(report)


def test_loss_boxes_and_legend_label_weight_and_value(built: tuple[Any, Report]) -> None:
    _, report = built
    dot = build_dot(report)
    for loss in report.losses:
        text = f"{loss.output or loss.name} · {loss.loss} · weight {loss.weight:g} · loss {fmt(loss.value)}"
        assert text in dot
    assert "weight 0.5 · loss " in _node_line(dot, "loss:C")
    assert "w=" not in dot


def test_cluster_label_is_the_model_name_at_top_left(built: tuple[Any, Report]) -> None:
    """A long label reaches the middle of the frame, where edges into the nested model come in."""
    _, report = built
    dot = build_dot(report)
    cluster = dot.splitlines()[dot.splitlines().index('  subgraph "cluster_encoder" {') + 1]
    assert 'label=<<B>encoder</B>>' in cluster and 'labelloc="t"' in cluster and 'labeljust="l"' in cluster
    assert "dashed frame: the layers of a nested model" in dot
    assert "dashed frame" not in build_dot(report, RenderOptions(expand_nested=False))


def test_merged_boxes_show_their_parameter_count(built: tuple[Any, Report]) -> None:
    model, report = built
    dot = build_dot(report, RenderOptions(compact=True))
    run = _node_line(dot, "trunk_a .. trunk_b")
    params = model.get_layer("trunk_a").count_params() + model.get_layer("trunk_b").count_params()
    assert f"×2: 2 Dense · {params:,} params" in run
    encoder = model.get_layer("encoder")  # BatchNormalization's moving statistics are not trainable
    trainable = sum(int(np.prod(v.shape)) for v in encoder.trainable_weights)
    assert trainable < encoder.count_params()
    collapsed = _node_line(build_dot(report, RenderOptions(expand_nested=False)), "encoder")
    assert f"{trainable:,} params" in collapsed


# -- --dpi ----------------------------------------------------------------------------------------------


def test_dpi_in_dot_only_when_set(built: tuple[Any, Report]) -> None:
    _, report = built
    graph_line = next(l for l in build_dot(report, RenderOptions(dpi=200)).splitlines() if l.startswith("  graph ["))
    assert "dpi=200" in graph_line
    assert "dpi" not in build_dot(report)
    assert vector_options(RenderOptions(dpi=200, compact=True)) == RenderOptions(compact=True)


@pytest.mark.parametrize("dpi", [0, 9, 1201, 2.5, True, "300"])
def test_dpi_validated(dpi: Any) -> None:
    with pytest.raises(OutputError, match=f"dpi must be a whole number from {DPI_RANGE[0]} to {DPI_RANGE[1]}"):
        RenderOptions(dpi=dpi)


@pytest.mark.dot
def test_cli_dpi_scales_png_only(cli: Callable[..., Any], tmp_path: Path) -> None:
    model = SAMPLES / "shared_trunk.keras"
    plain = cli("inspect", model, "-o", tmp_path / "a.png", "-o", tmp_path / "a.svg", "-o", tmp_path / "a.html")
    sharp = cli("inspect", model, "--dpi", "192", "-o", tmp_path / "b.png", "-o", tmp_path / "b.svg",
                "-o", tmp_path / "b.html", "-o", tmp_path / "b.dot")
    assert plain.exit_code == 0 and sharp.exit_code == 0, plain.stderr + sharp.stderr
    (w1, h1), (w2, h2) = _png_size((tmp_path / "a.png").read_bytes()), _png_size((tmp_path / "b.png").read_bytes())
    assert w2 == pytest.approx(2 * w1, abs=2) and h2 == pytest.approx(2 * h1, abs=2)
    size = re.compile(r'<svg width="[^"]+" height="[^"]+"')
    for ext in ("svg", "html"):  # vector: the same size
        first = size.search((tmp_path / f"a.{ext}").read_text())
        second = size.search((tmp_path / f"b.{ext}").read_text())
        assert first and second and first.group(0) == second.group(0)
    assert "dpi=192" in (tmp_path / "b.dot").read_text()


def test_cli_dpi_out_of_range_is_a_usage_error(cli: Callable[..., Any], tmp_path: Path) -> None:
    result = cli("inspect", SAMPLES / "shared_trunk.keras", "--dpi", "5", "-o", tmp_path / "a.png")
    assert result.exit_code == 2 and "10<=x<=1200" in result.stderr
    assert "--dpi" in cli("inspect", "--help").stdout and "--dpi" in cli("weights", "--help").stdout


def test_cli_range_matches_the_library() -> None:
    import click

    from gradviz.cli import inspect
    option = next(p for p in inspect.params if p.name == "dpi")
    assert isinstance(option.type, click.IntRange)
    assert (option.type.min, option.type.max) == DPI_RANGE


def test_weights_dpi_sets_the_sweep_plot_resolution(cli: Callable[..., Any], tmp_path: Path) -> None:
    model = SAMPLES / "shared_trunk.keras"
    default = cli("weights", model, "--sweep", "D=0:1:3", "-o", tmp_path / "a.png")
    half = cli("weights", model, "--sweep", "D=0:1:3", "--dpi", "60", "-o", tmp_path / "b.png")
    assert default.exit_code == 0 and half.exit_code == 0, default.stderr + half.stderr
    (w1, h1), (w2, h2) = _png_size((tmp_path / "a.png").read_bytes()), _png_size((tmp_path / "b.png").read_bytes())
    assert (w1, h1) == (768, 504)  # 6.4 x 4.2 inches at 120 dpi
    assert (w2, h2) == (384, 252)


# -- the HTML report ---------------------------------------------------------------------------------


def test_html_layers_table_fits_the_page(built: tuple[Any, Report]) -> None:
    """One line per row (short cells never wrap), the table scrolls inside its own box rather than
    widening the page; nested model and share have no columns of their own."""
    _, report = built
    page = build_html(report)
    assert '<div class="table-wrap layers"><table class="sortable">' in page
    assert ".table-wrap { overflow-x: auto;" in page and re.search(r"\.layers td \{[^}]*white-space: nowrap", page)
    header = re.search(r'<div class="table-wrap layers">.*?</thead>', page, flags=re.S)
    assert header and "<th>model</th>" not in header.group(0) and "<th>share</th>" not in header.group(0)
    assert '<td><span class="prefix">encoder/</span>enc_bn</td>' in page
    info = report.layer("trunk_a")
    for loss, share in info.share.items():
        norm = info.grad_norm[loss]
        assert f'{fmt(norm)} <span class="share">{share:.0%}</span></td>' in page
    assert '<p class="meta">3 losses · batch 8' in page


@pytest.mark.dot
def test_html_svg_is_not_scaled_by_dpi(built: tuple[Any, Report]) -> None:
    _, report = built
    size = re.compile(r'<svg width="[^"]+" height="[^"]+"')
    plain = size.search(build_html(report))
    sharp = size.search(build_html(report, RenderOptions(dpi=300)))
    assert plain and sharp and plain.group(0) == sharp.group(0)


# -- the sweep plot ---------------------------------------------------------------------------------


def test_sweep_plot_legend_and_current_label_stay_off_the_lines(built: tuple[Any, Report]) -> None:
    """The legend sits below the panels (no line can cross it) and "current" above each panel."""
    from gradviz.core import weighting
    from gradviz.output.weights import sweep_figure
    _, report = built
    what_if = weighting.explore(report, sweeps=[weighting.parse_sweep("C=0:2:5"),
                                                weighting.parse_sweep("D=log:1e-3:10:5")])
    figure = sweep_figure(what_if)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    panels = [ax for ax in figure.axes]
    assert len(figure.legends) == 1 and all(ax.get_legend() is None for ax in panels)
    legend = figure.legends[0].get_window_extent(renderer)
    for ax in panels:
        assert not legend.overlaps(ax.get_window_extent(renderer))
    labels = [t for ax in panels for t in ax.texts if t.get_text() == "current"]
    assert len(labels) == 2
    for label in labels:
        box = label.get_window_extent(renderer)
        assert box.y0 >= label.axes.get_window_extent(renderer).y1 - 0.5
        title = label.axes.title.get_window_extent(renderer)
        assert not box.overlaps(title)
