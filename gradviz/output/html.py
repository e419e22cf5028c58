"""The self-contained HTML report: diagram, losses, layers, findings, and the command that made it.

One file with inline SVG, CSS and a few lines of JavaScript (sortable layer
table): nothing is fetched from the network, so it can be mailed, attached to
a CI run or opened offline. When Graphviz's ``dot`` is missing, the report is
still written, with a note in place of the diagram.
"""

from __future__ import annotations

import html
import math
import re
from collections import Counter

from gradviz.core.findings import explanation
from gradviz.core.report import STATUSES, Finding, LayerInfo, Report
from gradviz.errors import GraphvizMissingError
from gradviz.output.diagram import RenderOptions, build_dot, render, vector_options
from gradviz.output.text import fmt
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 2rem auto; max-width: 1400px; padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
.meta { color: #555; font-size: .9rem; }
pre.command { background: #f4f4f4; padding: .6rem .8rem; border-radius: 4px; overflow-x: auto; }
.diagram { border: 1px solid #ddd; border-radius: 4px; overflow: auto; max-height: 85vh; padding: .5rem; }
.diagram svg { max-width: 100%; height: auto; }
.note { background: #fff6e5; border-left: 4px solid #E69F00; padding: .6rem .8rem; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { padding: .25rem .6rem; border-bottom: 1px solid #e4e4e4; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
table.sortable th { cursor: pointer; user-select: none; white-space: nowrap; }
table.sortable th[data-order="asc"]::after { content: " \\25B2"; }
table.sortable th[data-order="desc"]::after { content: " \\25BC"; }
.swatch { display: inline-block; width: .9em; height: .9em; border-radius: 2px; vertical-align: -0.1em;
          margin-right: .3em; border: 1px solid rgba(0,0,0,.25); }
.status-shared { color: #006e4f; } .status-exclusive { color: #005a8c; }
.status-dead { color: #C00000; font-weight: bold; } .status-unreached { color: #777; font-style: italic; }
.status-no-trainable-weights { color: #999; }
.finding { border-left: 4px solid #ccc; padding: .4rem .8rem; margin: .6rem 0; background: #fafafa; }
.finding.error { border-color: #C00000; } .finding.warning { border-color: #E69F00; }
.finding.info { border-color: #56B4E9; }
.finding .kind { font-weight: bold; } .finding .severity { text-transform: uppercase; font-size: .8rem; }
.finding p { margin: .3rem 0; }
.table-wrap { overflow-x: auto; max-width: 100%; }
.layers table { font-size: .8rem; }
.layers th, .layers td { padding: .2rem .35rem; white-space: nowrap; }
.layers td.list { white-space: normal; min-width: 9em; }
.item { white-space: nowrap; }
.prefix { color: #888; }
.share, .tag { color: #777; font-size: .85em; }
"""

SORT_JS = """
document.querySelectorAll("table.sortable th").forEach(function (th, column) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var asc = th.dataset.order !== "asc";
    table.querySelectorAll("th").forEach(function (h) { delete h.dataset.order; });
    th.dataset.order = asc ? "asc" : "desc";
    function key(row) {
      var cell = row.cells[column], text = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent;
      var number = parseFloat(text);
      return isNaN(number) ? [1, text.toLowerCase()] : [0, number];
    }
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x[0] !== y[0]) { return x[0] - y[0]; }  /* numbers before text either way */
      return (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0) * (asc ? 1 : -1);
    }).forEach(function (row) { body.appendChild(row); });
  });
});
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def inline_svg(svg: str) -> str:
    """Graphviz's SVG document made fit to inline in HTML: no XML prolog, DOCTYPE or namespace URLs.

    HTML parsers put an inline ``<svg>`` in the SVG namespace themselves, so
    the ``xmlns`` declarations (URLs, though never fetched) can go.

    Example:
        >>> inline_svg('<?xml version="1.0"?>\\n<!DOCTYPE svg>\\n<svg xmlns="http://www.w3.org/2000/svg" '
        ...            'xmlns:xlink="http://www.w3.org/1999/xlink" width="8pt"><g/></svg>\\n')
        '<svg width="8pt"><g/></svg>'
    """
    start = svg.find("<svg")
    body = svg[start:] if start >= 0 else svg
    body = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", body, count=2)
    return body.strip()


def _swatch(color: str) -> str:
    return f'<span class="swatch" style="background:{_e(color)}"></span>'


def _num_cell(value: float | None, share: str | None = None) -> str:
    sort = "" if value is None else ("nan" if math.isnan(value) else repr(float(value)))
    extra = f' <span class="share">{_e(share)}</span>' if share is not None else ""
    return f'<td class="num" data-sort="{_e(sort)}">{_e(fmt(value))}{extra}</td>'


def _diagram(report: Report, options: RenderOptions) -> str:
    try:
        svg = render(build_dot(report, vector_options(options)), "svg").decode("utf-8")
    except GraphvizMissingError as e:
        return (f'<p class="note">No diagram: {_e(e)}. The tables below are complete; '
                "re-run with Graphviz installed to include the diagram.</p>")
    return f'<div class="diagram">{inline_svg(svg)}</div>'


def _losses(report: Report) -> str:
    rows = []
    for loss in report.losses:
        trunk_norm = report.trunk.grad_norm.get(loss.name) if report.trunk else None
        trunk_share = report.trunk.share.get(loss.name) if report.trunk else None
        rows.append(
            "<tr>"
            f"<td>{_swatch(loss.color)}{_e(loss.name)}</td><td>{_e(loss.output or '-')}</td><td>{_e(loss.loss)}</td>"
            f'<td class="num">{_e(f"{loss.weight:g}")}</td>{_num_cell(loss.value)}'
            f"{_num_cell(None if trunk_norm is None else loss.weight * trunk_norm)}"
            f'<td class="num">{_e("-" if trunk_share is None else f"{trunk_share:.1%}")}</td>'
            "</tr>"
        )
    head = ("<tr><th>loss</th><th>output</th><th>function</th><th class=\"num\">weight</th>"
            "<th class=\"num\">value</th><th class=\"num\">weighted trunk grad</th>"
            "<th class=\"num\">trunk share</th></tr>")
    return f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _layers(report: Report) -> str:
    names = [l.name for l in report.losses]
    colors = {l.name: l.color for l in report.losses}
    # The table has to fit a laptop's page: a nested model's name is the grey prefix of its layers'
    # names, the kind (when not a layer) a grey tag after the class, and a loss's share sits beside
    # its norm (no columns of their own).
    head = ["#", "layer", "class", "params", "output shape"]
    cells = [f"<th>{_e(h)}</th>" if h not in ("#", "params") else f'<th class="num">{_e(h)}</th>' for h in head]
    cells += [f'<th class="num" title="gradient norm of {_e(n)}; on a shared layer, then its share of the '
              f'applied gradient">{_swatch(colors[n])}{_e(n)}</th>' for n in names]
    cells += ['<th class="num">combined</th>', "<th>status</th>", "<th>reached by</th>"]
    rows = []
    for index, info in enumerate(report.layers):
        kind = f' <span class="tag">{_e(info.kind)}</span>' if info.kind != "layer" else ""
        row = [f'<td class="num">{index}</td>', _name_cell(info), f"<td>{_e(info.class_name)}{kind}</td>"]
        row.append(f'<td class="num" data-sort="{info.trainable_params}">{info.trainable_params:,}</td>')
        row.append(f"<td>{_e(info.output_shape)}</td>")
        shares = dict(_share_items(info))
        row += [_num_cell(info.grad_norm.get(n), shares.get(n)) for n in names]
        row.append(_num_cell(info.combined_grad_norm))
        row.append(f'<td class="status-{_e(info.status)}">{_e(info.status)}</td>')
        row.append(_list_cell(list(info.reached_by)))
        rows.append("<tr>" + "".join(row) + "</tr>")
    return (f'<div class="table-wrap layers"><table class="sortable"><thead><tr>{"".join(cells)}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _share_items(info: LayerInfo) -> list[tuple[str, str]]:
    """Each loss's share of the applied gradient, as a percentage, where it has one (shared layers)."""
    return [(k, f"{v:.0%}") for k, v in info.share.items() if math.isfinite(v)] if len(info.share) > 1 else []


def _name_cell(info: LayerInfo) -> str:
    """The layer's name; a nested model's prefix (``encoder/``) in grey."""
    if info.parent and info.name.startswith(info.parent + "/"):
        prefix = info.parent + "/"
        return f'<td><span class="prefix">{_e(prefix)}</span>{_e(info.name[len(prefix):])}</td>'
    return f"<td>{_e(info.name)}</td>"


def _list_cell(items: list[str]) -> str:
    """A table cell listing ``items``: it may wrap between items, never inside one."""
    inner = ", ".join(f'<span class="item">{_e(item)}</span>' for item in items)
    return f'<td class="list">{inner}</td>'


def _finding(finding: Finding) -> str:
    meaning, advice = explanation(finding.kind)
    parts = [
        f'<div class="finding {_e(finding.severity)}">',
        f'<span class="severity">{_e(finding.severity)}</span> <span class="kind">{_e(finding.kind)}</span>',
        f"<p>{_e(finding.message)}</p>",
        f"<p><b>What it means:</b> {_e(meaning)}</p>",
    ]
    if advice:
        parts.append(f"<p><b>What to try:</b> {_e(advice)}</p>")
    parts.append("</div>")
    return "".join(parts)


def _counts(report: Report) -> str:
    counts = Counter(info.status for info in report.layers if info.trainable_params > 0)
    parts = [f"{counts[s]} {s}" for s in STATUSES if counts.get(s)]
    return "Layers with weights: " + (", ".join(parts) or "none") + "."


def build_html(report: Report, options: RenderOptions = RenderOptions()) -> str:
    """The HTML report of ``report``: one self-contained page.

    Runs Graphviz (through :func:`gradviz.output.diagram.render`) for the diagram; without
    it the page carries a note instead.

    Args:
        report: the analysis.
        options: how to draw the diagram; ``options.command`` is shown when given.
    """
    meta = report.meta
    source = meta.get("source") or report.model_name
    mode = "training" if meta.get("training", True) else "inference"
    count = len(report.losses)
    details = (f"{count} loss{'' if count == 1 else 'es'} · batch {meta.get('batch_size')} × {meta.get('batches')} · "
               f"{meta.get('data', 'synthetic')} data · {mode} mode · Keras {meta.get('keras_version', '?')}")
    body = [
        f"<h1>gradviz: {_e(source)}</h1>",
        f'<p class="meta">{_e(details)}</p>',
    ]
    if options.command:
        body.append(f'<pre class="command"><code>{_e(options.command)}</code></pre>')
    body += ["<h2>Gradient flow</h2>", _diagram(report, options), "<h2>Losses</h2>", _losses(report)]
    body.append(f"<h2>Findings ({len(report.findings)})</h2>")
    if report.findings:
        body += [_finding(f) for f in report.findings]
    else:
        body.append("<p>No findings: every loss reaches its layers with a nonzero gradient.</p>")
    body += [
        "<h2>Layers</h2>",
        f"<p>{_e(_counts(report))} Gradient L2 norm of each unweighted loss (on shared layers, followed by the "
        "loss's share of the applied gradient); combined = what training applies; "
        "'-' = no gradient exists. Click a column to sort.</p>",
        _layers(report),
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>gradviz: {_e(source)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{SORT_JS}</script>\n</body>\n</html>\n"
    )
