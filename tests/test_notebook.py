"""The report in a notebook: short repr, inline HTML (with and without dot), the bar chart, the diagram."""

from __future__ import annotations

import html
import math
from pathlib import Path

import pytest
from matplotlib.colors import to_rgba

import gradviz
from gradviz.core.report import Report
from gradviz.errors import GraphvizMissingError, OutputError
from gradviz.output.diagram import RenderOptions, build_dot
from gradviz.output.notebook import DEAD_LABEL, plot_layers

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@pytest.fixture(scope="module")
def shared() -> Report:
    return gradviz.analyze(SAMPLES / "shared_trunk.keras")


@pytest.fixture(scope="module")
def dead() -> Report:
    return gradviz.analyze(SAMPLES / "dead_head.keras")


def test_repr_is_one_short_line(dead: Report) -> None:
    text = repr(dead)
    assert "\n" not in text and len(text) < 200
    assert text.startswith("<gradviz.Report 'dead_head'")
    assert "2 losses (C, D)" in text
    assert "1 dead" in text and "1 finding (1 error)" in text


@pytest.mark.dot
def test_inline_html_has_diagram_losses_shares_and_findings(shared: Report, dead: Report) -> None:
    page = shared._repr_html_()
    assert page.count("<svg") == 1 and "<?xml" not in page and "<!DOCTYPE" not in page
    assert "<html" not in page and "<body" not in page  # a fragment for a cell
    # the inline SVG is the one to_svg() gives, namespaces and prolog removed
    assert '<g id="graph0"' in shared.to_svg() and '<g id="graph0"' in page
    assert shared.trunk is not None
    for loss in shared.losses:
        assert f"</span>{loss.name}</td>" in page
        share = shared.trunk.share[loss.name]
        assert f">{share:.1%}</td>" in page
    assert page.count("<div") == page.count("</div>")
    assert len(page) < 60_000  # compact enough for a cell

    page = dead._repr_html_()
    assert dead.findings
    for finding in dead.findings:
        assert html.escape(finding.message, quote=True) in page
        assert f"<b>{finding.kind}</b>" in page


def test_inline_html_without_dot_says_how_to_install(dead: Report, monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no dot on the PATH
    page = dead._repr_html_()
    assert "<svg" not in page
    assert "apt-get install graphviz" in page and "brew install graphviz" in page
    for loss in dead.losses:
        assert f"</span>{loss.name}</td>" in page
    for finding in dead.findings:
        assert html.escape(finding.message, quote=True) in page
    with pytest.raises(GraphvizMissingError):
        dead.to_svg()
    assert dead.diagram().source == build_dot(dead)  # the DOT needs no dot program


def test_diagram_is_a_graphviz_source_of_the_dot(shared: Report) -> None:
    import graphviz

    source = shared.diagram(rankdir="LR", show_norms=True)
    assert isinstance(source, graphviz.Source)
    assert source.source == build_dot(shared, RenderOptions(rankdir="LR", show_norms=True))
    with pytest.raises(OutputError, match="unknown render option 'colour'; valid: show_shapes"):
        shared.diagram(colour="red")


@pytest.mark.dot
def test_to_svg(shared: Report) -> None:
    svg = shared.to_svg(show_norms=True)
    assert "<svg" in svg and svg.rstrip().endswith("</svg>")
    assert all(f">{loss.name}<" in svg or loss.name in svg for loss in shared.losses)


def _bars(figure: object) -> dict[str, object]:
    ax = figure.axes[0]  # type: ignore[attr-defined]
    return {p.get_gid(): p for p in ax.patches if p.get_gid()}


@pytest.mark.parametrize("name", ["shared", "dead"])
def test_plot_bars_are_the_report_figures(name: str, request: pytest.FixtureRequest) -> None:
    report: Report = request.getfixturevalue(name)
    figure = report.plot()
    ax = figure.axes[0]
    assert ax.get_yscale() == "log"
    layers = plot_layers(report)
    assert layers == [i.name for i in report.layers if i.trainable_params > 0]  # model order
    assert [t.get_text() for t in ax.get_xticklabels()] == layers
    bars = _bars(figure)
    dead_x = {line.get_gid()[len("dead:"):]: list(line.get_xdata())
              for line in ax.get_lines() if (line.get_gid() or "").startswith("dead:")}
    expected = 0
    for index, layer in enumerate(layers):
        info = report.layer(layer)
        for loss in report.losses:
            value = info.grad_norm.get(loss.name)
            bar = bars.get(f"{loss.name}@{layer}")
            near = [x for x in dead_x.get(loss.name, []) if abs(x - index) < 0.5]
            if value is None:  # unreached: absent, not a zero
                assert bar is None and not near
            elif value == 0:  # dead: no bar, an explicit marker
                assert bar is None and len(near) == 1
            else:
                expected += 1
                assert bar is not None
                assert math.isclose(bar.get_height(), value, rel_tol=1e-12)  # type: ignore[attr-defined]
                assert bar.get_y() == 0  # type: ignore[attr-defined]
                assert abs(bar.get_x() + bar.get_width() / 2 - index) < 0.5  # type: ignore[attr-defined]
                assert bar.get_facecolor() == to_rgba(loss.color)  # type: ignore[attr-defined]
    assert len(bars) == expected
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:len(report.losses)] == [l.name for l in report.losses]
    assert (DEAD_LABEL in legend) == bool(dead_x)


def test_plot_marks_the_dead_head(dead: Report) -> None:
    figure = dead.plot()
    dead_losses = {f.losses[0] for f in dead.findings_of("dead-head")}
    assert dead_losses == {"D"}
    markers = [l for l in figure.axes[0].get_lines() if l.get_gid() == "dead:D"]
    # D's gradient is exactly zero on A, B and its own head D
    zero = [i for i, n in enumerate(plot_layers(dead)) if dead.layer(n).grad_norm.get("D") == 0]
    assert len(zero) == 3
    assert len(markers) == 1 and [round(x) for x in markers[0].get_xdata()] == zero
