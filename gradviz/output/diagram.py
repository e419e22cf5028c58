"""Gradient-flow diagrams: DOT source from an analysed report, and the one function that runs ``dot``.

:func:`build_dot` is pure: the same report and options give byte-identical
DOT (node ids are layer names, nodes follow the report's topological order,
numbers have fixed precision). :func:`render` is the only place that starts
Graphviz's ``dot`` program; a missing binary becomes
:class:`~gradviz.errors.GraphvizMissingError` there.

What the drawing means (also in the README):

* Each loss has a colour (:func:`gradviz.core.palette.loss_colors`, assigned once in the analysis); fills use a
  lighter tint of it so the black labels stay readable.
* A layer reached by one loss is filled with its tint; a layer reached by
  several is striped, each stripe as wide as that loss's weighted gradient
  norm ``|w_k| * grad_norm[k]`` (shares can be negative and cannot be widths),
  with at least :data:`MIN_STRIPE` so that every reaching loss stays visible.
* Unreached layers are grey and dashed; dead layers and dead heads have a red
  double border; an operation that blocks a loss's gradient is a red octagon
  and the edges into it are dashed.
* Edge width grows with the log of the combined gradient norm of the nearest
  layer with weights at or upstream of the edge's source (only weight
  gradients are measured, not activation gradients). No gradient passes a
  blocking operation, so the edges into and out of one are thin.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

from gradviz.core.analysis import group_info
from gradviz.core.findings import DeadHead
from gradviz.core.report import LayerInfo, Report, loss_node
from gradviz.errors import GraphvizMissingError, OutputError
from gradviz.output.text import fmt

RANKDIRS = ("TB", "LR")
#: the formats :func:`render` produces with Graphviz
GRAPHVIZ_FORMATS = ("pdf", "png", "svg")
#: the narrowest stripe, as a fraction of the box, so a small share stays visible
MIN_STRIPE = 0.04
#: edge widths span this many decades of gradient norm below the largest one
DECADES = 3.0
MIN_PENWIDTH = 0.8
MAX_PENWIDTH = 5.0
WARNING_COLOR = "#C00000"
UNREACHED_FILL = "#EEEEEE"
UNREACHED_LINE = "#888888"
EDGE_COLOR = "#555555"
#: Arial's metrics: Graphviz measures text with the first family fontconfig finds (Arial, or its
#: metric-compatible stand-ins Liberation Sans and Arimo), and browsers showing the SVG find one of
#: the same list, so text fits the boxes dot sized for it. (Helvetica resolves to DejaVu Sans in
#: fontconfig, which is far wider than the Helvetica or Arial a browser draws.)
FONT = "Arial,Liberation Sans,Arimo,Helvetica,sans-serif"
INPUT_LINE = "#333333"
SWATCH_FRAME = "#333333"
#: behind the text of a striped box, so that stripe boundaries do not cut through it
LABEL_PLATE = "#FFFFFFCC"
INSTALL_HINT = (
    "Graphviz's dot program is not installed (it renders .svg, .png and .pdf): install Graphviz "
    "(Debian/Ubuntu: sudo apt-get install graphviz; macOS: brew install graphviz; conda: conda install graphviz), "
    "or write the diagram's source with -o FILE.dot"
)


@dataclass(frozen=True)
class RenderOptions:
    """How to draw a report (shared by the diagram and HTML writers).

    Attributes:
        show_shapes: add each node's output shape to its label.
        show_norms: add the per-loss and combined gradient norms to labels.
        rankdir: ``TB`` (top to bottom) or ``LR`` (left to right).
        expand_nested: draw nested models as clusters of their layers; False
            draws each as one node with the figures of all its layers.
        compact: merge chains of consecutive layers with the same reach and
            status into one box with a count.
        command: the command line that produced the report (shown in HTML).
        dpi: resolution of PNG output (Graphviz's ``dpi``, like ``keras.utils.plot_model``'s);
            None keeps Graphviz's 96. Written into the DOT only when set; SVG, PDF and the HTML
            report's inline SVG are vector and ignore it.

    Example:
        >>> RenderOptions(rankdir="LR").rankdir
        'LR'
    """

    show_shapes: bool = False
    show_norms: bool = False
    rankdir: str = "TB"
    expand_nested: bool = True
    compact: bool = False
    command: str | None = None
    dpi: int | None = None

    def __post_init__(self) -> None:
        if self.rankdir not in RANKDIRS:
            raise OutputError(f"unknown rankdir {self.rankdir!r}; valid: {', '.join(RANKDIRS)}")
        check_dpi(self.dpi)


#: the resolutions --dpi accepts
DPI_RANGE = (10, 1200)


def check_dpi(dpi: int | None) -> None:
    """Reject a resolution outside :data:`DPI_RANGE` (None: the default).

    Example:
        >>> check_dpi(300)

    Raises:
        OutputError: ``dpi`` is not a whole number within the range.
    """
    low, high = DPI_RANGE
    if dpi is not None and (isinstance(dpi, bool) or not isinstance(dpi, int) or not low <= dpi <= high):
        raise OutputError(f"dpi must be a whole number from {low} to {high} (got {dpi!r})")


def vector_options(options: RenderOptions) -> RenderOptions:
    """``options`` for a vector format (SVG, PDF): without ``dpi``, by which Graphviz would scale the size.

    Example:
        >>> vector_options(RenderOptions(dpi=300)).dpi is None
        True
    """
    return replace(options, dpi=None) if options.dpi is not None else options


# -- small pure helpers ---------------------------------------------------------


def quote(text: str) -> str:
    """A DOT double-quoted string.

    Example:
        >>> quote('enc/dense "1"')
        '"enc/dense \\\\"1\\\\""'
    """
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def tint(color: str, strength: float = 0.55) -> str:
    """``color`` mixed with white: ``strength`` 1 keeps it, 0 gives white.

    Example:
        >>> tint("#0072B2")
        '#73B1D5'
    """
    rgb = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(255 + (c - 255) * strength):02X}" for c in rgb)


def stripe_fractions(magnitudes: Sequence[float], minimum: float = MIN_STRIPE) -> list[float]:
    """Stripe widths (summing to 1) proportional to ``magnitudes``, each at least ``minimum``.

    Non-finite or all-zero magnitudes give equal stripes.

    Example:
        >>> stripe_fractions([1.0, 3.0])
        [0.25, 0.75]
        >>> stripe_fractions([1.0, 0.0])
        [0.96, 0.04]
    """
    n = len(magnitudes)
    if n == 0:
        return []
    if not all(math.isfinite(m) and m >= 0 for m in magnitudes) or sum(magnitudes) <= 0:
        return [1.0 / n] * n
    total = sum(magnitudes)
    fractions = [m / total for m in magnitudes]
    small = [f < minimum for f in fractions]
    if any(small) and minimum * n < 1:
        rest = 1.0 - minimum * sum(small)
        big_total = sum(f for f, s in zip(fractions, small) if not s)
        fractions = [minimum if s else f * rest / big_total for f, s in zip(fractions, small)]
    return [round(f, 3) for f in fractions]


def penwidth(norm: float | None, largest: float) -> float:
    """Edge width for a gradient norm: log scale over :data:`DECADES` decades below ``largest``.

    Example:
        >>> penwidth(1.0, 1.0), penwidth(0.001, 1.0), penwidth(None, 1.0)
        (5.0, 1.0, 0.8)
    """
    if norm is None or not math.isfinite(norm) or norm <= 0 or not largest > 0 or not math.isfinite(largest):
        return MIN_PENWIDTH
    position = min(1.0, max(0.0, (math.log10(norm / largest) + DECADES) / DECADES))
    return round(1.0 + (MAX_PENWIDTH - 1.0) * position, 2)


# -- what to draw -----------------------------------------------------------------


@dataclass
class _Box:
    """One drawn node: a layer, an operation, an input, a collapsed model or a run of layers."""

    id: str
    kind: str  # input, layer, op, model, run, loss
    class_name: str
    parent: str
    info: LayerInfo | None
    members: list[str] = field(default_factory=list)
    blocks_for: list[str] = field(default_factory=list)
    output_shape: str = ""
    #: for a later call of a reused layer or nested model: the box of its first call (which shows the params)
    same_as: str = ""
    #: the name to show when it is not the id's (later calls: ``token_embedding#2``)
    label: str = ""


@dataclass
class _View:
    boxes: dict[str, _Box]
    edges: list[tuple[str, str]]
    blocked: dict[tuple[str, str], list[str]]
    #: (first call's box, later call's box) of reused layers: drawn as dashed "same weights" lines
    same_weights: list[tuple[str, str]] = field(default_factory=list)


def _view(report: Report, options: RenderOptions) -> _View:
    """The boxes and edges to draw: nested models collapsed and runs compacted as asked."""
    graph = report.graph
    boxes: dict[str, _Box] = {}
    rep: dict[str, str] = {}
    for info in report.layers:
        node = graph.nodes[info.name]
        parent = info.parent
        if parent and not options.expand_nested:
            top = parent.split("/")[0]
            rep[info.name] = top
            box = boxes.get(top)
            if box is None:
                box = boxes[top] = _Box(top, "model", "model", "", None)
            box.members.append(info.name)
            box.blocks_for.extend(node.get("blocks_for", []))
            continue
        rep[info.name] = info.name
        boxes[info.name] = _Box(
            info.name, info.kind, info.class_name, parent, info, [info.name],
            list(node.get("blocks_for", [])), info.output_shape,
        )
    call_rep, same_weights = _call_sites(report, options, boxes, rep)
    for box in boxes.values():
        if box.kind == "model" and box.info is None:
            box.info = _group(report, box.id, box.members)
            box.class_name = "nested model"
            box.output_shape = graph.nodes[box.members[-1]].get("output_shape", "")
    for loss in report.losses:
        node_id = loss_node(loss.name, graph)
        if loss.source != "regularization" and node_id in graph:
            rep[node_id] = node_id
            boxes[node_id] = _Box(node_id, "loss", "loss", "", None, [loss.name])
    if call_rep:
        ends = {box_id: box_id for box_id in boxes}
        edges, blocked = _merged_edges(_edges_per_call(report, rep, call_rep), ends)
        boxes = _topological(boxes, edges)
    else:
        edges, blocked = _merged_edges(
            ((source, target, graph.edges[source, target].get("blocked_for", [])) for source, target in report.edges),
            rep,
        )
    view = _View(boxes, edges, blocked, same_weights)
    return _compacted(report, view) if options.compact else view


def _call_sites(report: Report, options: RenderOptions, boxes: dict[str, _Box],
                rep: dict[str, str]) -> tuple[dict[tuple[str, int], str], list[tuple[str, str]]]:
    """One box per later call of a reused layer (``name#2``, in the scope of that call), so that a tied
    embedding or a backbone called twice reads top to bottom instead of as a loop.

    The weights are one set with one gradient (the sum over the calls), so every call's box shows the
    layer's figures; the parameters are shown (and counted, in the JSON's layers and trunk) once, on
    the first call's box. With nested models collapsed, a later call of a nested model is one more
    model box (``encoder#2``).

    Returns:
        The box of each ``(node, call)`` that is not its node's first call, and the (first, later) box
        pairs to join with a dashed "same weights" line.
    """
    graph = report.graph
    call_rep: dict[tuple[str, int], str] = {}
    same_weights: list[tuple[str, str]] = []
    for info in report.layers:
        scopes = graph.nodes[info.name].get("call_scopes")
        if not scopes:
            continue
        first = rep[info.name]
        for call, scope in enumerate(scopes[1:], start=2):
            if scope and not options.expand_nested:
                box_id = scope.split("/")[0]
                if box_id != first and box_id not in boxes:
                    boxes[box_id] = _Box(box_id, "model", "model", "", None, same_as=first)
                later = boxes[box_id]
                if box_id != first and later.same_as and info.name not in later.members:
                    later.members.append(info.name)  # only a later call's own box: others keep their figures
            else:
                # the layer's own box, also when its first call is inside a collapsed nested model
                box_id = f"{info.name}#{call}"
                boxes[box_id] = _Box(box_id, info.kind, info.class_name, scope, info, [info.name],
                                     list(graph.nodes[info.name].get("blocks_for", [])), info.output_shape,
                                     same_as=first, label=_call_label(info.name, scope, call))
            call_rep[(info.name, call)] = box_id
            if box_id != first and (first, box_id) not in same_weights:
                same_weights.append((first, box_id))
    return call_rep, same_weights


def _call_label(name: str, scope: str, call: int) -> str:
    """A later call's name as its box shows it: relative to the nested model it is drawn in.

    Example:
        >>> _call_label("encoder/dense", "encoder#2", 2), _call_label("lm/backbone/emb", "lm", 2)
        ('dense#2', 'backbone/emb#2')
    """
    base = "/".join(part.split("#")[0] for part in scope.split("/")) if scope else ""
    short = name[len(base) + 1:] if base and name.startswith(base + "/") else name
    return f"{short}#{call}"


def _edges_per_call(report: Report, rep: dict[str, str],
                    call_rep: dict[tuple[str, int], str]) -> Iterable[tuple[str, str, Sequence[str]]]:
    """The report's edges between the boxes of the calls they join (edge attribute ``calls``)."""
    graph = report.graph
    for source, target in report.edges:
        attrs = graph.edges[source, target]
        blocked = attrs.get("blocked_for", [])
        for source_call, target_call in attrs.get("calls") or [[1, 1]]:
            yield (call_rep.get((source, source_call), rep[source]), call_rep.get((target, target_call), rep[target]),
                   blocked)


def _topological(boxes: dict[str, _Box], edges: list[tuple[str, str]]) -> dict[str, _Box]:
    """The boxes in a stable topological order of the drawn edges (later calls join the flow where they are
    called); as they are if the drawn edges still form a cycle."""
    import networkx as nx

    graph = nx.DiGraph(edges)
    graph.add_nodes_from(boxes)
    index = {box_id: i for i, box_id in enumerate(boxes)}
    try:
        order = list(nx.lexicographical_topological_sort(graph, key=index.__getitem__))
    except nx.NetworkXUnfeasible:
        return boxes
    return {box_id: boxes[box_id] for box_id in order}


def _group(report: Report, name: str, members: list[str]) -> LayerInfo | None:
    weighted = [m for m in members if report.graph.nodes[m].get("trainable_params", 0) > 0]
    if not weighted:
        return None
    return group_info(report, name, weighted)


def _merge_key(box: _Box) -> tuple[tuple[str, ...], str] | None:
    """What must agree along a compacted run; None (a weightless layer or op) agrees with anything."""
    if box.info is None or box.info.trainable_params == 0:
        return None
    return (box.info.reached_by, box.info.status)


def _mergeable(box: _Box) -> bool:
    return box.kind in ("layer", "op") and not box.blocks_for


def _compacted(report: Report, view: _View) -> _View:
    """Merge chains (single successor / single predecessor) of layers whose reach and status agree."""
    succ: dict[str, list[str]] = {b: [] for b in view.boxes}
    pred: dict[str, list[str]] = {b: [] for b in view.boxes}
    for s, t in view.edges:
        succ[s].append(t)
        pred[t].append(s)
    runs: list[list[str]] = []
    run_of: dict[str, int] = {}
    for box_id, box in view.boxes.items():  # topological order: a run's first box comes first
        if box_id in run_of or not _mergeable(box):
            continue
        run = [box_id]
        key = _merge_key(box)
        current = box_id
        while len(succ[current]) == 1:
            nxt = succ[current][0]
            nbox = view.boxes[nxt]
            if len(pred[nxt]) != 1 or not _mergeable(nbox) or nbox.parent != box.parent or nxt in run_of:
                break
            nkey = _merge_key(nbox)
            if key is not None and nkey is not None and nkey != key:
                break
            key = key if key is not None else nkey
            run.append(nxt)
            current = nxt
        for member in run:
            run_of[member] = len(runs)
        runs.append(run)
    boxes: dict[str, _Box] = {}
    rep: dict[str, str] = {}
    for box_id, box in view.boxes.items():
        if box_id not in run_of or len(runs[run_of[box_id]]) == 1:
            boxes[box_id] = box
            rep[box_id] = box_id
            continue
        run = runs[run_of[box_id]]
        run_id = f"{run[0]} .. {run[-1]}"
        rep[box_id] = run_id
        if run_id in boxes:
            continue
        members = list(dict.fromkeys(m for r in run for m in view.boxes[r].members))  # a layer's weights once
        classes = Counter(view.boxes[r].class_name for r in run)
        boxes[run_id] = _Box(
            run_id, "run", ", ".join(f"{n} {c}" for c, n in sorted(classes.items(), key=lambda kv: (-kv[1], kv[0]))),
            box.parent, _group(report, run_id, members), members, [], view.boxes[run[-1]].output_shape,
        )
        ends = (view.boxes[run[0]], view.boxes[run[-1]])
        if any(end.label for end in ends):  # a run of later calls: named as its boxes are
            boxes[run_id].label = " … ".join(end.label or _short(end, end.id) for end in ends)
    edges, blocked = _merged_edges(((s, t, view.blocked[(s, t)]) for s, t in view.edges), rep)
    same_weights = list(dict.fromkeys((rep[a], rep[b]) for a, b in view.same_weights if rep[a] != rep[b]))
    return _View(boxes, edges, blocked, same_weights)


def _merged_edges(
    edges: Iterable[tuple[str, str, Sequence[str]]], rep: dict[str, str]
) -> tuple[list[tuple[str, str]], dict[tuple[str, str], list[str]]]:
    """Edges between the boxes that stand for their ends, in first-seen order, without self-loops;
    each keeps, in order, the losses blocked on any edge it merges."""
    merged: list[tuple[str, str]] = []
    blocked: dict[tuple[str, str], list[str]] = {}
    for source, target, losses in edges:
        edge = (rep[source], rep[target])
        if edge[0] == edge[1]:
            continue
        if edge not in blocked:
            merged.append(edge)
            blocked[edge] = []
        blocked[edge].extend(loss for loss in losses if loss not in blocked[edge])
    return merged, blocked


def _flows(view: _View) -> dict[str, float | None]:
    """Per box, the combined gradient norm of the nearest box with weights at or upstream of it.

    No gradient passes an operation that blocks it: the walk stops there (None).
    """
    pred: dict[str, list[str]] = {b: [] for b in view.boxes}
    for s, t in view.edges:
        pred[t].append(s)
    flows: dict[str, float | None] = {}
    for box_id, box in view.boxes.items():  # topological order
        own = box.info.combined_grad_norm if box.info is not None else None
        if box.blocks_for and box.kind != "model":
            flows[box_id] = None
            continue
        if own is not None and box.info is not None and box.info.trainable_params > 0:
            flows[box_id] = own
            continue
        upstream = [f for p in pred[box_id] if (f := flows.get(p)) is not None and math.isfinite(f)]
        flows[box_id] = max(upstream) if upstream else None
    return flows


# -- DOT text -----------------------------------------------------------------------


def _h(text: str) -> str:
    return html.escape(text, quote=True)


def _attrs(attrs: dict[str, str | float | int]) -> str:
    parts = []
    for key, value in attrs.items():
        if isinstance(value, str) and value.startswith("<") and value.endswith(">"):
            parts.append(f"{key}={value}")
        elif isinstance(value, float):
            parts.append(f"{key}={value:g}")
        elif isinstance(value, int):
            parts.append(f"{key}={value}")
        else:
            parts.append(f"{key}={quote(value)}")
    return "[" + ", ".join(parts) + "]"


def _loss_label_text(report: Report, name: str) -> str:
    loss = next(l for l in report.losses if l.name == name)
    return f"{loss.output or loss.name} · {loss.loss} · weight {loss.weight:g} · loss {fmt(loss.value)}"


def _norm_line(report: Report, info: LayerInfo) -> str:
    """The per-loss norms and Σ as a one-row table: each loss's swatch framed in dark grey, so that
    it stands out even on a fill of its own colour.

    Graphviz spreads a nested table's cells evenly over a wider line above it: each swatch and
    its text form one cell (a table of their own) so that they stay together, and empty cells at
    both ends take their share of the extra width. Gaps are cells, not spaces: a browser drops an
    SVG text's leading and trailing spaces.
    """
    groups = []
    for loss in report.losses:
        norm = info.grad_norm.get(loss.name)
        if norm is None:
            continue
        groups.append('<TD><TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="0"><TR>'
                      f'<TD FIXEDSIZE="TRUE" WIDTH="9" HEIGHT="9" BGCOLOR="{loss.color}" BORDER="1" '
                      f'COLOR="{SWATCH_FRAME}"></TD><TD WIDTH="3"></TD><TD ALIGN="LEFT">'
                      f'<FONT POINT-SIZE="9">{_h(loss.name)} {_h(fmt(norm))}</FONT></TD></TR></TABLE></TD>')
    groups.append(f'<TD ALIGN="LEFT"><FONT POINT-SIZE="9">Σ {_h(fmt(info.combined_grad_norm))}</FONT></TD>')
    return ('<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="0"><TR><TD></TD>'
            + '<TD WIDTH="8"></TD>'.join(groups) + "<TD></TD></TR></TABLE>")


def _label(lines: Sequence[str], plate: bool = False) -> str:
    """An HTML-like label with one table row per line.

    Graphviz places ``<BR/>``-separated lines of different sizes too close
    (the baseline step ignores the descent of a bold line, so its underscores
    land on the line below); table rows are sized to their text. ``plate``
    puts a translucent white plate behind the text (for striped boxes).
    """
    rows = "".join(f"<TR><TD>{line}</TD></TR>" for line in lines)
    table = f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">{rows}</TABLE>'
    if plate:
        table = (f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="3" BGCOLOR="{LABEL_PLATE}" '
                 f'STYLE="rounded"><TR><TD>{table}</TD></TR></TABLE>')
    return f"<{table}>"


def _tooltip(report: Report, box: _Box) -> str:
    info = box.info
    head = f"{box.id} ({box.class_name})"
    if box.kind in ("model", "run"):
        head += f", {len(box.members)} layers"
    if box.same_as:
        head += f"; called again: the same weights as {box.same_as}, whose figures (all calls together) it shows"
    if info is None:
        return head + ("; blocks the gradient of " + ", ".join(box.blocks_for) if box.blocks_for else "")
    norms = ", ".join(f"{k} {fmt(v)}" for k, v in info.grad_norm.items())
    share = ", ".join(f"{k} {v:.0%}" for k, v in info.share.items() if math.isfinite(v))
    text = f"{head}; {info.status}; {info.trainable_params:,} params"
    if norms:
        text += f"; grad norm {norms}; combined {fmt(info.combined_grad_norm)}"
    if share:
        text += f"; share {share}"
    return text


def _short(box: _Box, name: str) -> str:
    """``name`` without its nested model's prefix: inside a cluster, the cluster names the model."""
    return name[len(box.parent) + 1:] if box.parent and name.startswith(box.parent + "/") else name


def _node(report: Report, box: _Box, options: RenderOptions, colors: dict[str, str], dead_heads: set[str]) -> str:
    info = box.info
    attrs: dict[str, str | float | int] = {}
    small = box.kind == "op"
    if box.kind == "loss":
        loss = next(l for l in report.losses if l.name == box.members[0])
        lines = [f"<B>{_h(_loss_label_text(report, loss.name))}</B>"]
        attrs.update(shape="box", style="rounded,filled", fillcolor=tint(loss.color), color=loss.color, penwidth=2.0)
        if loss.name in dead_heads:
            lines.append(f'<FONT COLOR="{WARNING_COLOR}">⚠ dead head: trains nothing</FONT>')
            attrs.update(color=WARNING_COLOR, peripheries=2)
        attrs["label"] = _label(lines)
        attrs["tooltip"] = f"loss {loss.name}: {loss.loss}, weight {loss.weight:g}, value {fmt(loss.value)}"
        return f"  {quote(box.id)} {_attrs(attrs)};"
    if box.kind == "op":
        lines = [_h(box.class_name)]
    elif box.kind == "run":
        detail = f"×{len(box.members)}: {box.class_name}"
        if info is not None and info.trainable_params:
            detail += f" · {info.trainable_params:,} params"
        lines = [f"<B>{_h(_short(box, box.members[0]))} … {_h(_short(box, box.members[-1]))}</B>",
                 f'<FONT POINT-SIZE="9">{_h(detail)}</FONT>']
        if box.label:
            lines[0] = f"<B>{_h(box.label)}</B>"
    else:
        detail = box.class_name
        if box.kind == "model":
            detail = f"nested model · {len(box.members)} layers"
        if box.same_as:  # a later call: its parameters are the first call's, shown (and counted) there
            detail += " · same weights"
        elif info is not None and info.trainable_params:
            detail += f" · {info.trainable_params:,} params"
        lines = [f"<B>{_h(box.label or _short(box, box.id))}</B>", f'<FONT POINT-SIZE="9">{_h(detail)}</FONT>']
    if box.blocks_for:
        lines.append(f'<FONT COLOR="{WARNING_COLOR}">blocks {_h(", ".join(box.blocks_for))}</FONT>')
    if options.show_shapes and box.output_shape:
        lines.append(f'<FONT POINT-SIZE="9">{_h(box.output_shape)}</FONT>')
    status = info.status if info is not None else "no-trainable-weights"
    if options.show_norms and info is not None and info.combined_grad_norm is not None:
        lines.append(_norm_line(report, info))
    if status in ("unreached", "dead"):
        lines.append(f'<FONT POINT-SIZE="9" COLOR="{WARNING_COLOR if status == "dead" else "#555555"}">'
                     f'{"⚠ dead: zero gradient" if status == "dead" else "unreached"}</FONT>')

    attrs["shape"] = "box"
    plate = False
    if box.kind == "input":
        attrs.update(style="rounded,filled", fillcolor="#FFFFFF", color=INPUT_LINE, penwidth=1.5)
    elif box.blocks_for and box.kind not in ("model", "run"):
        attrs.update(shape="octagon", style="filled", fillcolor="#FFFFFF", color=WARNING_COLOR, penwidth=2.0,
                     fontsize=9)
    elif status in ("shared", "exclusive") and info is not None:
        reached = list(info.reached_by)
        if len(reached) == 1:
            attrs.update(style="filled", fillcolor=tint(colors[reached[0]]))
        else:
            weights = {l.name: l.weight for l in report.losses}
            fractions = stripe_fractions([abs(weights[k]) * (info.grad_norm.get(k) or 0.0) for k in reached])
            stripes = [f"{tint(colors[k])};{f:.3f}" for k, f in zip(reached[:-1], fractions[:-1])]
            attrs.update(style="striped", fillcolor=":".join(stripes + [tint(colors[reached[-1]])]),
                         margin="0.12,0.08")
            plate = True
    elif status == "unreached":
        attrs.update(style="dashed,filled", fillcolor=UNREACHED_FILL, color=UNREACHED_LINE, fontcolor="#555555")
    elif status == "dead":
        attrs.update(style="filled", fillcolor="#FFFFFF", color=WARNING_COLOR, penwidth=1.5, peripheries=2)
    elif small:
        attrs.update(style="rounded", color="#777777")
    else:
        attrs.update(style="filled", fillcolor="#FFFFFF", color="#777777")
    if box.kind in ("model", "run") and "peripheries" not in attrs:
        attrs["peripheries"] = 2
    if small:
        attrs.update(fontsize=9, height=0.2, margin="0.06,0.02")
    attrs["label"] = _label(lines, plate)
    attrs["tooltip"] = _tooltip(report, box)
    return f"  {quote(box.id)} {_attrs(attrs)};"


def _legend(report: Report, options: RenderOptions, shown: set[str]) -> str:
    count = len(report.losses)
    rows = [f'<TD COLSPAN="2" ALIGN="LEFT"><B>{_h(report.model_name)}</B>: gradient flow of '
            f'{count} loss{"" if count == 1 else "es"}</TD>']
    for loss in report.losses:
        if loss.source == "regularization":
            what = (f"{loss.name} · {loss.loss} · weight {loss.weight:g} · loss {fmt(loss.value)} "
                    "(not drawn as a fill)")
        else:
            what = _loss_label_text(report, loss.name)
        rows.append(f'<TD FIXEDSIZE="TRUE" WIDTH="22" HEIGHT="12" BGCOLOR="{tint(loss.color)}" BORDER="1" '
                    f'COLOR="{loss.color}"></TD><TD ALIGN="LEFT">{_h(what)}</TD>')
    notes = ["fill: the losses whose gradient reaches the layer; stripes ∝ |weight| × gradient norm"]
    if "unreached" in shown:
        notes.append("grey, dashed: no loss reaches the layer's weights")
    if "dead" in shown:
        notes.append("red double border: gradient exists but is exactly zero (dead)")
    if "blocked" in shown:
        notes.append("red octagon, dashed edge: the operation blocks that loss's gradient")
    if "group" in shown:
        notes.append("double border: several layers drawn as one box")
    if "cluster" in shown:
        notes.append("dashed frame: the layers of a nested model")
    if "reused" in shown:
        notes.append("name#2, dashed grey line: the same layer called again; one set of weights, "
                     "so the same fill and figures, its params counted once")
    notes.append("edge width: log of the combined gradient norm of the nearest layer with weights upstream")
    # notes sit in the text column: a cell spanning both would widen the swatch column
    rows.extend(f'<TD></TD><TD ALIGN="LEFT"><FONT POINT-SIZE="9">{_h(note)}</FONT></TD>' for note in notes)
    cells = "".join(f"<TR>{row}</TR>" for row in rows)
    return '<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="1" CELLPADDING="1">' + cells + "</TABLE>>"


def _clusters(boxes: Iterable[_Box]) -> dict[str, list[_Box]]:
    by_parent: dict[str, list[_Box]] = {}
    for box in boxes:
        by_parent.setdefault(box.parent, []).append(box)
    return by_parent


def build_dot(report: Report, options: RenderOptions = RenderOptions()) -> str:
    """The annotated gradient-flow diagram of ``report`` as DOT source.

    Pure and deterministic: no Graphviz program is run.

    Args:
        report: the analysis (from :func:`gradviz.analyze`).
        options: what to draw and how.

    Returns:
        DOT source text, ending in a newline.
    """
    view = _view(report, options)
    colors = {l.name: l.color for l in report.losses}
    dead_heads = {name for f in report.findings_of(DeadHead.kind) for name in f.losses}
    statuses = {b.info.status for b in view.boxes.values() if b.info is not None}
    shown = set(statuses)
    if any(view.blocked.values()):
        shown.add("blocked")
    if any(b.kind in ("model", "run") for b in view.boxes.values()):
        shown.add("group")
    if any(b.parent for b in view.boxes.values()):
        shown.add("cluster")
    if dead_heads:
        shown.add("dead")
    if view.same_weights:
        shown.add("reused")

    lines = [f"digraph {quote(report.model_name)} {{"]
    lines.append("  " + _attrs({
        "rankdir": options.rankdir, "fontname": FONT, "fontsize": 11, "nodesep": 0.3, "ranksep": 0.45,
        "labelloc": "t", "labeljust": "l", "bgcolor": "white", "pad": 0.2,
        "label": _legend(report, options, shown),
        **({"dpi": options.dpi} if options.dpi is not None else {}),
    }).join(["graph ", ";"]))
    lines.append("  " + _attrs({"fontname": FONT, "fontsize": 11, "shape": "box", "height": 0.3,
                                "margin": "0.12,0.07", "penwidth": 1.0}).join(["node ", ";"]))
    lines.append("  " + _attrs({"fontname": FONT, "fontsize": 9, "arrowsize": 0.6, "color": EDGE_COLOR})
                 .join(["edge ", ";"]))

    by_parent = _clusters(b for b in view.boxes.values() if b.kind != "loss")
    # every enclosing model is a cluster, even one whose only content is another nested model
    parents = sorted({"/".join(p.split("/")[:i + 1]) for p in by_parent if p for i in range(p.count("/") + 1)})

    def emit(parent: str, indent: str) -> None:
        for box in by_parent.get(parent, []):
            lines.append(indent[2:] + _node(report, box, options, colors, dead_heads))
        children = [p for p in parents if p.rsplit("/", 1)[0] == parent and p != parent] if parent else \
            [p for p in parents if "/" not in p]
        for child in children:
            lines.append(f"{indent}subgraph {quote('cluster_' + child)} {{")
            lines.append(f"{indent}  " + _attrs({
                # the model's name alone, small, at the left: a long label reaches the middle of the
                # frame, where the edges into the nested model come in ("nested model" is in the legend)
                "label": f"<<B>{_h(child.rsplit('/', 1)[-1])}</B>>", "fontsize": 10,
                "style": "rounded,dashed", "color": "#888888", "labeljust": "l", "labelloc": "t",
            }).join(["graph ", ";"]))
            emit(child, indent + "  ")
            lines.append(f"{indent}}}")

    emit("", "  ")
    losses = [b for b in view.boxes.values() if b.kind == "loss"]
    if losses:
        lines.append("  subgraph losses {")
        lines.append("    graph [rank=sink];")
        for box in losses:
            lines.append("  " + _node(report, box, options, colors, dead_heads))
        lines.append("  }")

    flows = _flows(view)
    finite = [f for f in flows.values() if f is not None and math.isfinite(f)]
    largest = max(finite) if finite else 0.0
    for source, target in view.edges:
        attrs: dict[str, str | float | int] = {"penwidth": penwidth(flows.get(source), largest)}
        target_box = view.boxes[target]
        if target_box.kind == "loss":
            attrs["color"] = colors[target_box.members[0]]
        blocked = view.blocked.get((source, target), [])
        if blocked:
            attrs.update(penwidth=1.2, style="dashed", color=WARNING_COLOR, fontcolor=WARNING_COLOR,
                         label=f"blocked: {', '.join(blocked)}")
        lines.append(f"  {quote(source)} -> {quote(target)} {_attrs(attrs)};")
    for first, later in view.same_weights:
        # not a data path: it does not rank the boxes (constraint=false) and has no arrowhead
        lines.append(f"  {quote(first)} -> {quote(later)} " + _attrs({
            "style": "dashed", "color": UNREACHED_LINE, "arrowhead": "none", "constraint": "false",
            "penwidth": 1.0, "label": "same weights", "fontcolor": UNREACHED_LINE, "fontsize": 8,
        }) + ";")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- the one place dot runs ---------------------------------------------------------------


def dot_available() -> bool:
    """Whether Graphviz's ``dot`` is on the PATH (a check; nothing is run)."""
    import shutil

    return shutil.which("dot") is not None


def require_dot() -> None:
    """Fail early, before a slow analysis, when ``dot`` is not on the PATH.

    Raises:
        GraphvizMissingError: Graphviz is not installed.
    """
    if not dot_available():
        raise GraphvizMissingError(INSTALL_HINT)


def render(dot_source: str, fmt: str) -> bytes:
    """Run Graphviz's ``dot`` on ``dot_source``: the only function that starts it.

    Args:
        dot_source: DOT text (from :func:`build_dot`).
        fmt: ``svg``, ``png`` or ``pdf``.

    Raises:
        GraphvizMissingError: ``dot`` is not installed.
        OutputError: ``dot`` failed on the source.
    """
    import graphviz

    if fmt not in GRAPHVIZ_FORMATS:
        raise OutputError(f"cannot render {fmt!r} with Graphviz; valid: {', '.join(GRAPHVIZ_FORMATS)}")
    try:
        rendered = graphviz.pipe("dot", fmt, dot_source.encode("utf-8"), quiet=True)
        return reproducible_pdf(rendered) if fmt == "pdf" else rendered
    except graphviz.ExecutableNotFound as e:
        raise GraphvizMissingError(INSTALL_HINT) from e
    except graphviz.CalledProcessError as e:
        stderr = e.stderr.decode("utf-8", "replace") if isinstance(e.stderr, bytes) else str(e.stderr or "")
        last = (stderr.strip().splitlines() or [str(e)])[-1]
        raise OutputError(f"Graphviz's dot failed: {last}") from e


#: the creation date every PDF gets (the Unix epoch, as reproducible builds write it)
PDF_DATE = b"D:19700101000000Z"


def reproducible_pdf(pdf: bytes) -> bytes:
    """``pdf`` with its creation date set to :data:`PDF_DATE`, so the same diagram gives the same bytes.

    Cairo (Graphviz's PDF writer) stamps the current time into the document
    info; older versions ignore ``SOURCE_DATE_EPOCH``. The date is replaced only
    when the replacement has the same length, so the cross-reference offsets stay valid.

    Example:
        >>> reproducible_pdf(b"<< /CreationDate (D:20261127221801Z) >>")
        b'<< /CreationDate (D:19700101000000Z) >>'
        >>> reproducible_pdf(b"<< /CreationDate (D:20261127221801+01'00) >>")  # another length: kept
        b"<< /CreationDate (D:20261127221801+01'00) >>"
    """
    import re

    def fixed(match: re.Match[bytes]) -> bytes:
        date = match.group(2)
        return match.group(1) + (PDF_DATE if len(date) == len(PDF_DATE) else date) + b")"

    return re.sub(rb"(/(?:CreationDate|ModDate) \()(D:[^)]*)\)", fixed, pdf)
