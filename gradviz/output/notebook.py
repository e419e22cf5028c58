"""How a report shows itself in a notebook: a short repr, compact inline HTML, a bar chart, the diagram.

:class:`~gradviz.core.report.Report` has thin methods (``__repr__``, ``_repr_html_``,
``plot``, ``diagram``, ``to_svg``) that import this module on first use, so the
report itself stays plain data. As pandas does, the HTML is a fragment sized
for a cell (diagram, losses with their trunk shares, findings; the layer table
stays in the full HTML report) and the text repr stays one useful line; as
xflr6/graphviz does, :func:`diagram` returns a ``graphviz.Source``, which
renders itself inline. Without Graphviz's ``dot`` the HTML keeps its tables
and says how to get the diagram.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from dataclasses import fields
from typing import Any

from gradviz.core.report import SEVERITIES, STATUSES, Report
from gradviz.core.wording import plural
from gradviz.errors import GraphvizMissingError, OutputError
from gradviz.output.diagram import RenderOptions, build_dot, dot_available, render, vector_options
from gradviz.output.html import inline_svg
from gradviz.output.text import fmt

#: what the inline report says in place of the diagram when ``dot`` is missing
NOTEBOOK_INSTALL_HINT = (
    "Graphviz's dot program is not installed, so the diagram is left out. Install Graphviz "
    "(Debian/Ubuntu: sudo apt-get install graphviz; macOS: brew install graphviz; conda: conda install graphviz) "
    "and display the report again; report.diagram().source has the diagram's DOT source meanwhile."
)
#: the tallest the inline diagram gets before it scrolls (pixels)
DIAGRAM_MAX_HEIGHT = 720
#: the label and marker of a loss whose gradient on a layer is exactly zero
DEAD_LABEL = "dead: gradient exactly 0"
SEVERITY_COLOR = {"error": "#C00000", "warning": "#B36B00", "info": "#1F6FA8"}
_CELL = "padding:2px 8px;border-bottom:1px solid #e4e4e4;"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def render_options(**options: Any) -> RenderOptions:
    """:class:`RenderOptions` from keyword arguments, rejecting unknown names by name.

    Example:
        >>> render_options(rankdir="LR").rankdir
        'LR'

    Raises:
        OutputError: an option that :class:`RenderOptions` does not have.
    """
    valid = [f.name for f in fields(RenderOptions)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise OutputError(f"unknown render option {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
    return RenderOptions(**options)


# -- text repr ---------------------------------------------------------------------


def short_repr(report: Report) -> str:
    """One line saying what the report is about: model, losses, layer statuses, findings.

    Example:
        >>> import networkx as nx, numpy as np
        >>> from gradviz.core.graph import Topology
        >>> from gradviz.core.report import LossInfo
        >>> from gradviz.core.spec import LossSpec
        >>> from gradviz.core.stats import GradientStats
        >>> stats = GradientStats(("C",), np.zeros((0, 1, 1)), np.zeros((0, 1), bool), np.zeros((0, 1)),
        ...                       np.ones((0, 1), bool), np.zeros(1), 1, "mean-gradient")
        >>> short_repr(Report("m", [LossInfo("C", "mse", 1.0, 0.5, "C")], [], [], [], [], nx.DiGraph(), None,
        ...                   stats=stats, topology=Topology(nx.DiGraph(), {}, {}, ()), spec=LossSpec(())))
        "<gradviz.Report 'm': 1 loss (C); 0 layers with weights; no findings>"
    """
    names = ", ".join(l.name for l in report.losses)
    counts = Counter(info.status for info in report.layers if info.trainable_params > 0)
    weighted = sum(counts.values())
    statuses = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts.get(s))
    layers = f"{plural(weighted, 'layer')} with weights" + (f" ({statuses})" if statuses else "")
    severities = Counter(f.severity for f in report.findings)
    if report.findings:
        found = ", ".join(f"{severities[s]} {s}" for s in reversed(SEVERITIES) if severities.get(s))
        findings = f"{plural(len(report.findings), 'finding')} ({found})"
    else:
        findings = "no findings"
    return (f"<gradviz.Report {report.model_name!r}: {plural(len(report.losses), 'loss', 'losses')} ({names}); "
            f"{layers}; {findings}>")


def diagram_source(report: Report, **options: Any) -> Any:
    """The diagram as a ``graphviz.Source`` of :func:`gradviz.output.diagram.build_dot`'s DOT.

    It renders itself inline in a notebook (with ``dot``); ``.source`` is the DOT text.

    Raises:
        OutputError: an unknown option.
    """
    import graphviz

    return graphviz.Source(build_dot(report, render_options(**options)))


# -- inline HTML ------------------------------------------------------------------------


def diagram_svg(report: Report, options: RenderOptions = RenderOptions()) -> str:
    """The diagram as an SVG document (runs ``dot`` through :func:`gradviz.output.diagram.render`).

    Raises:
        GraphvizMissingError: ``dot`` is not installed.
    """
    return render(build_dot(report, vector_options(options)), "svg").decode("utf-8")


def _diagram_block(report: Report, options: RenderOptions) -> str:
    try:
        if not dot_available():
            raise GraphvizMissingError(NOTEBOOK_INSTALL_HINT)
        svg = inline_svg(diagram_svg(report, options))
    except GraphvizMissingError:
        return ('<p class="gradviz-no-dot" style="background:#fff6e5;border-left:4px solid #E69F00;'
                f'padding:6px 10px;margin:6px 0;">{_e(NOTEBOOK_INSTALL_HINT)}</p>')
    # the SVG keeps its own size up to the cell's width; a tall model scrolls inside the box
    svg = svg.replace("<svg ", '<svg style="max-width:100%;height:auto;" ', 1)
    return (f'<div class="gradviz-diagram" style="max-height:{DIAGRAM_MAX_HEIGHT}px;overflow:auto;'
            f'width:fit-content;max-width:100%;box-sizing:border-box;border:1px solid #ddd;border-radius:4px;padding:4px;margin:6px 0;">{svg}</div>')


def _swatch(color: str) -> str:
    return (f'<span style="display:inline-block;width:.8em;height:.8em;background:{_e(color)};'
            'border:1px solid rgba(0,0,0,.3);border-radius:2px;margin-right:.35em;vertical-align:-.05em;"></span>')


def _losses_table(report: Report) -> str:
    trunk = report.trunk
    head = ["loss", "output", "function", "weight", "value", "trunk grad (weighted)", "trunk share"]
    numeric = {"weight", "value", "trunk grad (weighted)", "trunk share"}
    cells = "".join(
        f'<th style="{_CELL}text-align:{"right" if h in numeric else "left"};">{_e(h)}</th>' for h in head
    )
    rows = []
    for loss in report.losses:
        norm = trunk.grad_norm.get(loss.name) if trunk else None
        share = trunk.share.get(loss.name) if trunk else None
        share_text = "-" if share is None or not math.isfinite(share) else f"{share:.1%}"
        values = [
            f"{_swatch(loss.color)}{_e(loss.name)}", _e(loss.output or "-"), _e(loss.loss),
            _e(f"{loss.weight:g}"), _e(fmt(loss.value)), _e(fmt(None if norm is None else loss.weight * norm)),
            _e(share_text),
        ]
        rows.append("<tr>" + "".join(
            f'<td style="{_CELL}text-align:{"right" if h in numeric else "left"};">{v}</td>'
            for h, v in zip(head, values)
        ) + "</tr>")
    return (f'<table class="gradviz-losses" style="border-collapse:collapse;font-size:13px;margin:4px 0;">'
            f"<thead><tr>{cells}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _findings_list(report: Report) -> str:
    from gradviz.core.findings import explanation

    if not report.findings:
        return "<p>No findings: every loss reaches its layers with a nonzero gradient.</p>"
    items = []
    for finding in report.findings:
        color = SEVERITY_COLOR.get(finding.severity, "#555")
        _, advice = explanation(finding.kind)
        tip = f' title="{_e("What to try: " + advice)}"' if advice else ""
        items.append(
            f'<li style="margin:2px 0;"{tip}><b style="color:{color};">{_e(finding.severity.upper())}</b> '
            f"<b>{_e(finding.kind)}</b>: {_e(finding.message)}</li>"
        )
    return f'<ul class="gradviz-findings" style="margin:4px 0;padding-left:1.2em;">{"".join(items)}</ul>'


def report_html(report: Report, options: RenderOptions = RenderOptions()) -> str:
    """The report as a notebook shows it: an HTML fragment with the diagram, the losses and the findings.

    Args:
        report: the analysis.
        options: how to draw the diagram.

    Returns:
        HTML (no ``<html>`` or ``<body>``: it goes inside a cell's output).
    """
    meta = report.meta
    counts = Counter(info.status for info in report.layers if info.trainable_params > 0)
    statuses = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts.get(s)) or "none"
    details = [plural(len(report.losses), "loss", "losses")]
    if meta.get("batch_size") is not None:
        details.append(f"batch {meta.get('batch_size')} × {meta.get('batches')}")
    if meta:
        details.append(f"{meta.get('data', 'synthetic')} data")
        details.append("training mode" if meta.get("training", True) else "inference mode")
    details.append(f"layers with weights: {statuses}")
    h = 'style="font-size:14px;margin:10px 0 2px 0;"'
    parts = [
        '<div class="gradviz-report" style="font-family:system-ui,-apple-system,\'Segoe UI\',Roboto,Arial,'
        'sans-serif;font-size:13px;line-height:1.35;color:#222;max-width:1000px;">',
        f'<div style="font-size:15px;"><b>gradviz</b>: {_e(meta.get("source") or report.model_name)}</div>',
        f'<div style="color:#555;">{_e(" · ".join(details))}</div>',
        _diagram_block(report, options),
        f"<div {h}><b>Losses</b></div>",
        _losses_table(report),
        f"<div {h}><b>Findings ({len(report.findings)})</b></div>",
        _findings_list(report),
        '<div style="color:#777;font-size:12px;margin-top:4px;">report.plot(): gradient norms per layer; '
        "gradviz.output.write(report, 'report.html'): the full report with every layer.</div>",
        "</div>",
    ]
    return "\n".join(parts)


def _register_figure_display(figure_type: type) -> None:
    """Let IPython show a bare matplotlib Figure as a PNG, when it runs and nothing has yet.

    matplotlib-inline registers this formatter only once pyplot (or ``%matplotlib inline``) has
    run; :func:`plot` makes its Figure without pyplot (so it is not shown twice), and
    without this the notebook would print ``<Figure size ...>`` instead of the chart.
    """
    import sys

    if "IPython" not in sys.modules:  # not in a notebook or IPython: nothing to do, nothing imported
        return
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        return
    formatter = shell.display_formatter.formatters["image/png"]
    try:
        formatter.lookup_by_type(figure_type)
    except KeyError:
        from IPython.core.pylabtools import print_figure

        formatter.for_type(figure_type, lambda fig: print_figure(fig, "png", bbox_inches="tight"))


# -- the per-layer bar chart --------------------------------------------------------------


def plot_layers(report: Report) -> list[str]:
    """The layers :func:`plot` draws: those with trainable weights, in model order (trunk to heads)."""
    return [info.name for info in report.layers if info.trainable_params > 0]


def plot(report: Report) -> Any:
    """Each loss's gradient norm on each layer with weights, as grouped bars on a log scale.

    Bars are in the losses' colours (the diagram legend's), one group per layer in
    model order. A loss that does not reach a layer has no bar there (absent, not
    zero); a loss whose gradient on a layer is exactly zero (dead) gets an ``X``
    marker in its colour at the bottom of the axis, in the legend as
    :data:`DEAD_LABEL`. Each bar's ``gid`` is ``"<loss>@<layer>"``, each dead
    marker's ``"dead:<loss>"``.

    Returns:
        A ``matplotlib.figure.Figure`` (not attached to pyplot, so nothing is shown twice).
    """
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    _register_figure_display(Figure)
    names = plot_layers(report)
    infos = [report.layer(name) for name in names]
    losses = report.losses
    count = max(len(losses), 1)
    width = 0.8 / count
    figure = Figure(figsize=(max(7.0, 0.9 * len(names) + 3.5), 4.2), layout="constrained")
    ax = figure.add_subplot()
    positive = [v for info in infos for v in info.grad_norm.values()
                if v is not None and math.isfinite(v) and v > 0]
    high = max(positive) * 3 if positive else 1.0
    # at least two decades, so bars of similar size do not look wildly different
    low = min(min(positive) / 5, high / 100) if positive else 1e-3
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    any_dead = False
    for k, loss in enumerate(losses):
        offset = (k - (count - 1) / 2) * width
        xs, heights, layers, dead = [], [], [], []
        for i, info in enumerate(infos):
            value = info.grad_norm.get(loss.name)
            if value is None or not math.isfinite(value):
                continue  # unreached (or no finite figure): no bar at all
            if value == 0:
                dead.append(i + offset)
            else:
                xs.append(i + offset)
                heights.append(value)
                layers.append(info.name)
        bars = ax.bar(xs, heights, width=width * 0.95, color=loss.color or None, label=loss.name,
                      edgecolor="#333333", linewidth=0.4)
        for rect, layer in zip(bars.patches, layers):
            rect.set_gid(f"{loss.name}@{layer}")
        if dead:
            any_dead = True
            (marker,) = ax.plot(dead, [low * 1.25] * len(dead), linestyle="none", marker="X", markersize=10,
                                markerfacecolor=loss.color or "#C00000", markeredgecolor="#C00000",
                                markeredgewidth=1.2, clip_on=False)
            marker.set_gid(f"dead:{loss.name}")
    ax.set_xticks(range(len(names)), names, rotation=30 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("gradient L2 norm (unweighted, log scale)")
    ax.set_title(f"{report.model_name}: gradient norm of each loss per layer")
    ax.grid(axis="y", which="major", alpha=0.3)
    # legend entries built here: a loss with no bar at all would otherwise get a default colour
    handles: list[Any] = [Patch(facecolor=loss.color or "#777777", edgecolor="#333333", linewidth=0.4)
                          for loss in losses]
    labels = [loss.name for loss in losses]
    if any_dead:
        handles.append(Line2D([], [], linestyle="none", marker="X", markersize=9, markerfacecolor="white",
                              markeredgecolor="#C00000", markeredgewidth=1.2))
        labels.append(DEAD_LABEL)
    # beside the axes, never over a bar
    ax.legend(handles, labels, fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="no bar: the loss does\nnot reach the layer", title_fontsize=8)
    return figure
