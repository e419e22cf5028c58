"""The JSON keys that let a saved report be drawn again, and reading a report back.

:meth:`Report.to_dict <gradviz.core.report.Report.to_dict>` writes the figures
(``losses``, ``layers``, ``trunk``, ``variables``, ``edges``, ``findings``,
``meta``, ``timings``) and, from this module, what the outputs recompute from:

* ``format_version``: :data:`FORMAT_VERSION`, raised whenever a reader of the
  old format could not read the new one;
* ``command``: the gradviz command line that made the report (the HTML shows it);
* ``spec``: the loss spec (:class:`~gradviz.core.spec.LossSpec`);
* ``topology``: the walked model (:class:`~gradviz.core.graph.Topology`);
* ``statistics``: the per-variable gradient statistics
  (:class:`~gradviz.core.stats.GradientStats`), every float as Python's
  shortest round-trip repr, NaN/Inf as :func:`~gradviz.core.report.json_number` strings;
* ``annotations``: what the analysis marked on the graph (``blocks_for``, ``blocked_for``).

:func:`report_from_dict` rebuilds the :class:`~gradviz.core.report.Report`
from them: its graph is the topology annotated by the same function the analysis
uses, so every output (diagram, HTML, GraphML, terminal summary, weight
scenarios) comes out byte-identical to the one written from the analysis. NumPy
and networkx only: no TensorFlow is needed to read a report.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import networkx as nx
import numpy as np

from gradviz.core.graph import Topology, VariableInfo
from gradviz.core.spec import LossSpec, LossTerm
from gradviz.core.stats import GradientStats
from gradviz.errors import ReportError

if TYPE_CHECKING:
    from gradviz.core.report import Finding, Report

#: the version of the JSON report's layout; a reader refuses any other
FORMAT_VERSION = 1

#: what users are told to give instead
_WHAT_RENDER_READS = "give the JSON report gradviz inspect writes (--json or -o FILE.json)"


# -- writing ------------------------------------------------------------------------------


def saved_inputs(report: Report) -> dict[str, Any]:
    """The keys a report needs to be drawn again: ``command``, ``spec``, ``topology``, ``statistics``, ``annotations``."""
    return {
        "command": report.command,
        "spec": spec_dict(report.spec),
        "topology": topology_dict(report.topology),
        "statistics": statistics_dict(report.stats, report.topology),
        "annotations": annotations_dict(report.graph),
    }


def spec_dict(spec: LossSpec) -> dict[str, Any]:
    """The loss spec as JSON (a term's Keras loss object itself is not saved: only its name).

    Example:
        >>> spec_dict(LossSpec((LossTerm("C", "C", "mse", 0.5),), ("E",)))
        {'terms': [{'name': 'C', 'output': 'C', 'loss': 'mse', 'weight': 0.5}], 'unlossed_outputs': ['E'], 'notes': []}
    """
    from gradviz.core.report import json_number

    return {
        "terms": [{"name": t.name, "output": t.output, "loss": t.loss, "weight": json_number(t.weight)}
                  for t in spec.terms],
        "unlossed_outputs": list(spec.unlossed_outputs),
        "notes": list(spec.notes),
    }


def topology_dict(topology: Topology) -> dict[str, Any]:
    """The walked model as JSON: nodes and edges in graph order with all their attributes.

    Example:
        >>> g = nx.DiGraph()
        >>> g.add_node("x", kind="input", class_name="InputLayer", order=0)
        >>> topology_dict(Topology(g, {}, {"x": "x"}, ()))["nodes"]
        [{'name': 'x', 'attributes': {'kind': 'input', 'class_name': 'InputLayer', 'order': 0}}]
    """
    graph = topology.graph
    return {
        "nodes": [{"name": n, "attributes": _plain(dict(attrs))} for n, attrs in graph.nodes(data=True)],
        "edges": [{"source": s, "target": t, "attributes": _plain(dict(attrs))} for s, t, attrs in graph.edges(data=True)],
        "inputs": dict(topology.inputs),
        "outputs": dict(topology.outputs),
        "variables": [{"path": v.path, "layer": v.layer, "shape": list(v.shape)} for v in topology.variables],
        "complete": topology.complete,
        "missing": topology.missing,
        "output_calls": dict(sorted(topology.output_calls.items())),
    }


def statistics_dict(stats: GradientStats, topology: Topology) -> dict[str, Any]:
    """The gradient statistics as JSON: one entry per trainable variable, in ``topology.variables`` order.

    Raises:
        ValueError: the statistics and the topology have different numbers of variables.
    """
    from gradviz.core.report import json_number

    def numbers(values: Any) -> Any:
        return [numbers(v) for v in values] if isinstance(values, list) else json_number(values)

    return {
        "losses": list(stats.loss_names),
        "loss_values": numbers(stats.loss_values.tolist()),
        "batches": int(stats.batches),
        "mode": stats.mode,
        "has_regularization": bool(stats.has_regularization),
        "loss_scale": None if stats.loss_scale is None else json_number(stats.loss_scale),
        "variables": [
            {
                "path": info.path,
                "exists": [bool(x) for x in stats.exists[v]],
                "finite": [bool(x) for x in stats.finite[v]],
                "max_abs": numbers(stats.max_abs[v].tolist()),
                "gram": numbers(stats.gram[v].tolist()),
            }
            for v, info in zip(range(len(stats.gram)), topology.variables, strict=True)
        ],
    }


def annotations_dict(graph: nx.DiGraph) -> dict[str, Any]:
    """What the analysis marked on the graph: the losses each operation blocks, and on which edges."""
    return {
        "blocks_for": {n: list(attrs["blocks_for"]) for n, attrs in graph.nodes(data=True) if attrs.get("blocks_for")},
        "blocked_for": [
            {"source": s, "target": t, "losses": list(attrs["blocked_for"])}
            for s, t, attrs in graph.edges(data=True) if attrs.get("blocked_for")
        ],
    }


def _plain(value: Any) -> Any:
    """A graph attribute as JSON data (tuples become lists, NumPy scalars Python numbers)."""
    from gradviz.core.report import json_number

    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return json_number(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):  # a NumPy scalar
        return _plain(value.item())
    raise TypeError(f"a graph attribute of type {type(value).__name__} has no JSON form: {value!r}")


# -- reading ------------------------------------------------------------------------------


def read_report(path: str | Path) -> Report:
    """Read a JSON report file (what ``gradviz inspect -o FILE.json`` writes).

    Raises:
        ReportError: the file is missing or unreadable, or not a report this gradviz can read;
            the message starts with the path.
    """
    try:
        content = Path(path).read_bytes()
    except FileNotFoundError:
        raise ReportError(f"no such report file: {path}") from None
    except IsADirectoryError:
        raise ReportError(f"{path} is a directory; {_WHAT_RENDER_READS}") from None
    except OSError as e:
        raise ReportError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        return report_from_json(content)
    except ReportError as e:
        raise ReportError(f"{path}: {e}") from e.__cause__


def report_from_json(text: str | bytes) -> Report:
    """The report whose JSON is ``text``; see :func:`report_from_dict`.

    Example:
        >>> report_from_json('{"model": "m", "layers": []}')
        Traceback (most recent call last):
        ...
        gradviz.errors.ReportError: a report from an older gradviz (no format_version): it lacks the gradient statistics needed to draw it again; run gradviz inspect again to write a new one

    Raises:
        ReportError: not JSON, not a gradviz report, another format version, or damaged.
    """
    if isinstance(text, bytes):
        if text.startswith((b"PK\x03\x04", b"\x89HDF")):
            raise ReportError("this is a model file, not a JSON report; analyse it with gradviz inspect")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ReportError(f"not a JSON report (not UTF-8 text); {_WHAT_RENDER_READS}") from None
    if not text.strip():
        raise ReportError(f"the file is empty; {_WHAT_RENDER_READS}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReportError(f"not JSON ({e.msg} at line {e.lineno}, column {e.colno}); {_WHAT_RENDER_READS}") from None
    except RecursionError:
        raise ReportError(f"not a gradviz report (nested too deeply); {_WHAT_RENDER_READS}") from None
    return report_from_dict(data)


def report_from_dict(data: Any) -> Report:
    """Rebuild a :class:`~gradviz.core.report.Report` from its JSON data (``Report.to_dict()``).

    Everything the outputs read comes back as the analysis made it: figures,
    findings, meta and timings from their keys, the statistics, topology and
    loss spec from theirs, and the graph as the topology annotated by the
    analysis's own function. ``report_from_dict(r.to_dict()).to_dict() == r.to_dict()``.

    Raises:
        ReportError: not a gradviz report, another format version, or a field
            missing, of the wrong type or inconsistent with the others (the message names it).
    """
    from gradviz.core.analysis import _annotated_graph
    from gradviz.core.report import Report

    _check_format(data)
    spec = _spec(_get(data, "spec", ""), "spec")
    topology = _topology(_get(data, "topology", ""), "topology")
    stats = _statistics(_get(data, "statistics", ""), "statistics", topology)
    losses = [_loss(item, f"losses[{i}]") for i, item in enumerate(_list(_get(data, "losses", ""), "losses"))]
    layers = [_layer(item, f"layers[{i}]") for i, item in enumerate(_list(_get(data, "layers", ""), "layers"))]
    trunk_data = _get(data, "trunk", "")
    trunk = None if trunk_data is None else _layer(trunk_data, "trunk")
    variables = [_variable(item, f"variables[{i}]")
                 for i, item in enumerate(_list(_get(data, "variables", ""), "variables"))]
    edges = [(_str(_get(e, "source", f"edges[{i}]"), f"edges[{i}].source"),
              _str(_get(e, "target", f"edges[{i}]"), f"edges[{i}].target"))
             for i, e in enumerate(_list(_get(data, "edges", ""), "edges"))]
    findings = [_finding(item, f"findings[{i}]")
                for i, item in enumerate(_list(_get(data, "findings", ""), "findings"))]
    meta = _obj(_get(data, "meta", ""), "meta")
    timings = {k: _num(v, f"timings.{k}") for k, v in _obj(_get(data, "timings", ""), "timings").items()}
    command = _get(data, "command", "")
    if command is not None:
        command = _str(command, "command")

    _check_consistent(topology, stats, spec, losses, layers)
    graph = _annotated_graph(topology, layers, losses)
    _annotate(graph, _obj(_get(data, "annotations", ""), "annotations"))
    for i, (source, target) in enumerate(edges):
        if not graph.has_edge(source, target):
            raise ReportError(f"damaged report: edges[{i}] ({source} -> {target}) is not an edge of the graph")
    findings = [_with_blockers(f, graph) for f in findings]
    return Report(
        model_name=_str(_get(data, "model", ""), "model"),
        losses=losses,
        layers=layers,
        variables=variables,
        edges=edges,
        findings=findings,
        graph=graph,
        trunk=trunk,
        meta=meta,
        timings=timings,
        stats=stats,
        topology=topology,
        spec=spec,
        command=command,
    )


def _check_format(data: Any) -> None:
    from gradviz import __version__

    if not isinstance(data, dict):
        raise ReportError(f"not a gradviz report (the JSON is {_kind(data)}, not an object); {_WHAT_RENDER_READS}")
    if "format_version" not in data:
        if "scenarios" in data and "suggested" in data:
            raise ReportError(f"this is what gradviz weights writes, not a report; {_WHAT_RENDER_READS}")
        if "model" in data and "layers" in data:
            raise ReportError(
                "a report from an older gradviz (no format_version): it lacks the gradient statistics needed to "
                "draw it again; run gradviz inspect again to write a new one"
            )
        raise ReportError(f"not a gradviz report (no format_version, model or layers); {_WHAT_RENDER_READS}")
    version = data["format_version"]
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ReportError(
            f"report format {version} is newer than this gradviz ({__version__}) reads (format {FORMAT_VERSION}); "
            "upgrade gradviz"
        )
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ReportError(
            f"unknown report format {version!r}; this gradviz ({__version__}) reads format {FORMAT_VERSION}: "
            "run gradviz inspect again to write a new one"
        )


# -- the parts --------------------------------------------------------------------------------


def _spec(data: Any, where: str) -> LossSpec:
    terms = []
    for i, item in enumerate(_list(_get(data, "terms", where), f"{where}.terms")):
        at = f"{where}.terms[{i}]"
        output = _get(item, "output", at)
        terms.append(LossTerm(
            _str(_get(item, "name", at), f"{at}.name"),
            None if output is None else _str(output, f"{at}.output"),
            _str(_get(item, "loss", at), f"{at}.loss"),
            _num(_get(item, "weight", at), f"{at}.weight"),
        ))
    unlossed = _list(_get(data, "unlossed_outputs", where), f"{where}.unlossed_outputs")
    notes = _list(_get(data, "notes", where), f"{where}.notes")
    return LossSpec(
        tuple(terms),
        tuple(_str(x, f"{where}.unlossed_outputs[{i}]") for i, x in enumerate(unlossed)),
        tuple(_str(x, f"{where}.notes[{i}]") for i, x in enumerate(notes)),
    )


#: node attributes the analysis and the outputs index directly, and their types
_REQUIRED_NODE_ATTRIBUTES = {"kind": (str, "a string"), "class_name": (str, "a string"), "order": (int, "a whole number")}


def _topology(data: Any, where: str) -> Topology:
    graph = nx.DiGraph()
    for i, item in enumerate(_list(_get(data, "nodes", where), f"{where}.nodes")):
        at = f"{where}.nodes[{i}]"
        name = _str(_get(item, "name", at), f"{at}.name")
        attrs = _obj(_get(item, "attributes", at), f"{at}.attributes")
        for key, (kind, expected) in _REQUIRED_NODE_ATTRIBUTES.items():
            value = _get(attrs, key, f"{at}.attributes")
            if not isinstance(value, kind) or isinstance(value, bool):
                raise _wrong(f"{at}.attributes.{key}", expected, value)
        graph.add_node(name, **attrs)
    for i, item in enumerate(_list(_get(data, "edges", where), f"{where}.edges")):
        at = f"{where}.edges[{i}]"
        source = _node_name(_get(item, "source", at), f"{at}.source", graph)
        target = _node_name(_get(item, "target", at), f"{at}.target", graph)
        graph.add_edge(source, target, **_obj(_get(item, "attributes", at), f"{at}.attributes"))
    # an output whose producer the walk could not find maps to "" (the analysis skips it)
    inputs = {k: _node_name(v, f"{where}.inputs.{k}", graph, empty=True)
              for k, v in _obj(_get(data, "inputs", where), f"{where}.inputs").items()}
    outputs = {k: _node_name(v, f"{where}.outputs.{k}", graph, empty=True)
               for k, v in _obj(_get(data, "outputs", where), f"{where}.outputs").items()}
    variables = []
    for i, item in enumerate(_list(_get(data, "variables", where), f"{where}.variables")):
        at = f"{where}.variables[{i}]"
        shape = _list(_get(item, "shape", at), f"{at}.shape")
        variables.append(VariableInfo(
            _str(_get(item, "path", at), f"{at}.path"),
            _node_name(_get(item, "layer", at), f"{at}.layer", graph),
            tuple(_int(d, f"{at}.shape[{j}]") for j, d in enumerate(shape)),
        ))
    # "missing" came with subclassed models (absent from earlier reports of this format: nothing was)
    missing = _str(data["missing"], f"{where}.missing") if isinstance(data, dict) and "missing" in data else ""
    # "output_calls" came later too (absent: every output is its layer's first call, as reports then said)
    calls = _obj(data["output_calls"], f"{where}.output_calls") if isinstance(data, dict) and "output_calls" in data else {}
    output_calls = {k: _int(v, f"{where}.output_calls.{k}") for k, v in calls.items()}
    return Topology(graph, outputs, inputs, tuple(variables), _bool(_get(data, "complete", where), f"{where}.complete"),
                    output_calls, missing=missing)


def _statistics(data: Any, where: str, topology: Topology) -> GradientStats:
    names = tuple(_str(x, f"{where}.losses[{i}]")
                  for i, x in enumerate(_list(_get(data, "losses", where), f"{where}.losses")))
    k = len(names)
    loss_values = _numbers(_get(data, "loss_values", where), f"{where}.loss_values", k)
    entries = _list(_get(data, "variables", where), f"{where}.variables")
    if len(entries) != len(topology.variables):
        raise ReportError(
            f"damaged report: {where}.variables has {len(entries)} entries for the "
            f"{len(topology.variables)} variables of topology.variables"
        )
    v = len(entries)
    gram = np.zeros((v, k, k))
    exists = np.zeros((v, k), dtype=bool)
    max_abs = np.zeros((v, k))
    finite = np.ones((v, k), dtype=bool)
    for i, entry in enumerate(entries):
        at = f"{where}.variables[{i}]"
        rows = _list(_get(entry, "gram", at), f"{at}.gram")
        if len(rows) != k:
            raise ReportError(f"damaged report: {at}.gram has {len(rows)} rows for {k} losses")
        for r, row in enumerate(rows):
            gram[i, r] = _numbers(row, f"{at}.gram[{r}]", k)
        max_abs[i] = _numbers(_get(entry, "max_abs", at), f"{at}.max_abs", k)
        exists[i] = _flags(_get(entry, "exists", at), f"{at}.exists", k)
        finite[i] = _flags(_get(entry, "finite", at), f"{at}.finite", k)
    return GradientStats(
        names, gram, exists, max_abs, finite, np.asarray(loss_values, dtype=np.float64),
        _int(_get(data, "batches", where), f"{where}.batches"),
        _str(_get(data, "mode", where), f"{where}.mode"),
        _bool(_get(data, "has_regularization", where), f"{where}.has_regularization"),
        # "loss_scale" came with mixed precision's loss scaling (absent from earlier reports: none was scaled)
        _optional_num(data.get("loss_scale") if isinstance(data, dict) else None, f"{where}.loss_scale"),
    )


def _loss(data: Any, where: str) -> Any:
    from gradviz.core.report import LossInfo

    output = _get(data, "output", where)
    return LossInfo(
        _str(_get(data, "name", where), f"{where}.name"),
        _str(_get(data, "loss", where), f"{where}.loss"),
        _num(_get(data, "weight", where), f"{where}.weight"),
        _num(_get(data, "value", where), f"{where}.value"),
        None if output is None else _str(output, f"{where}.output"),
        _str(_get(data, "color", where), f"{where}.color"),
    )


def _layer(data: Any, where: str) -> Any:
    from gradviz.core.report import LayerInfo, Pair

    cosines = _list(_get(data, "cosine", where), f"{where}.cosine")
    similarities = _list(_get(data, "magnitude_similarity", where), f"{where}.magnitude_similarity")
    if len(cosines) != len(similarities):
        raise ReportError(f"damaged report: {where}: cosine and magnitude_similarity list different pairs")
    pairs = []
    for i, (c, m) in enumerate(zip(cosines, similarities)):
        pair = _strings(_get(c, "losses", f"{where}.cosine[{i}]"), f"{where}.cosine[{i}].losses")
        if len(pair) != 2 or pair != _strings(_get(m, "losses", f"{where}.magnitude_similarity[{i}]"),
                                              f"{where}.magnitude_similarity[{i}].losses"):
            raise ReportError(f"damaged report: {where}: cosine[{i}] and magnitude_similarity[{i}] name different pairs")
        pairs.append(Pair(
            (pair[0], pair[1]),
            _num(_get(c, "value", f"{where}.cosine[{i}]"), f"{where}.cosine[{i}].value"),
            _num(_get(m, "value", f"{where}.magnitude_similarity[{i}]"), f"{where}.magnitude_similarity[{i}].value"),
        ))
    parent = _get(data, "parent", where)
    return LayerInfo(
        _str(_get(data, "name", where), f"{where}.name"),
        _str(_get(data, "class", where), f"{where}.class"),
        _str(_get(data, "kind", where), f"{where}.kind"),
        "" if parent is None else _str(parent, f"{where}.parent"),
        _int(_get(data, "trainable_params", where), f"{where}.trainable_params"),
        _optional_numbers(_get(data, "grad_norm", where), f"{where}.grad_norm"),
        _optional_num(_get(data, "combined_grad_norm", where), f"{where}.combined_grad_norm"),
        tuple(_strings(_get(data, "reached_by", where), f"{where}.reached_by")),
        _str(_get(data, "status", where), f"{where}.status"),
        {k: _num(x, f"{where}.share.{k}") for k, x in _obj(_get(data, "share", where), f"{where}.share").items()},
        tuple(pairs),
        _str(_get(data, "output_shape", where), f"{where}.output_shape"),
    )


def _variable(data: Any, where: str) -> Any:
    from gradviz.core.report import VariableInfo as ReportVariable

    shape = _list(_get(data, "shape", where), f"{where}.shape")
    return ReportVariable(
        _str(_get(data, "path", where), f"{where}.path"),
        _str(_get(data, "layer", where), f"{where}.layer"),
        tuple(_int(d, f"{where}.shape[{j}]") for j, d in enumerate(shape)),
        _optional_numbers(_get(data, "grad_norm", where), f"{where}.grad_norm"),
        _optional_num(_get(data, "combined_grad_norm", where), f"{where}.combined_grad_norm"),
    )


def _finding(data: Any, where: str) -> Any:
    from gradviz.core.report import SEVERITIES, Finding

    severity = _str(_get(data, "severity", where), f"{where}.severity")
    if severity not in SEVERITIES:
        raise ReportError(f"damaged report: {where}.severity: {severity!r} is not one of {', '.join(SEVERITIES)}")
    return Finding(
        _str(_get(data, "kind", where), f"{where}.kind"),
        severity,
        _str(_get(data, "message", where), f"{where}.message"),
        tuple(_strings(_get(data, "losses", where), f"{where}.losses")),
        tuple(_strings(_get(data, "layers", where), f"{where}.layers")),
    )


def _check_consistent(topology: Topology, stats: GradientStats, spec: LossSpec, losses: list[Any],
                      layers: list[Any]) -> None:
    """What the outputs index across parts must agree, so a damaged file fails here, in one line."""
    names = [l.name for l in losses]
    if list(stats.loss_names) != names:
        raise ReportError(f"damaged report: statistics.losses {list(stats.loss_names)} differ from losses {names}")
    missing = [n for n in names if n not in spec.names]
    if missing:
        raise ReportError(f"damaged report: spec.terms lacks the loss(es) {', '.join(missing)}")
    for i, info in enumerate(layers):
        if info.name not in topology.graph:
            raise ReportError(f"damaged report: layers[{i}] ({info.name}) is not a node of topology.nodes")


def _annotate(graph: nx.DiGraph, data: dict[str, Any]) -> None:
    blocks = _obj(_get(data, "blocks_for", "annotations"), "annotations.blocks_for")
    for node, losses in blocks.items():
        at = f"annotations.blocks_for.{node}"
        graph.nodes[_node_name(node, at, graph)]["blocks_for"] = _strings(losses, at)
    for i, item in enumerate(_list(_get(data, "blocked_for", "annotations"), "annotations.blocked_for")):
        at = f"annotations.blocked_for[{i}]"
        source = _node_name(_get(item, "source", at), f"{at}.source", graph)
        target = _node_name(_get(item, "target", at), f"{at}.target", graph)
        if not graph.has_edge(source, target):
            raise ReportError(f"damaged report: {at} ({source} -> {target}) is not an edge of the graph")
        graph.edges[source, target]["blocked_for"] = _strings(_get(item, "losses", at), f"{at}.losses")


# -- typed access, with the field's place in every message -------------------------------------


def _kind(value: Any) -> str:
    """How a JSON value is named in messages.

    Example:
        >>> _kind(None), _kind(True), _kind(1.5), _kind("x"), _kind([]), _kind({})
        ('null', 'a boolean', 'a number', 'a string', 'a list', 'an object')
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _wrong(where: str, expected: str, value: Any) -> ReportError:
    return ReportError(f"damaged report: {where}: expected {expected}, got {_kind(value)}")


def _get(data: Any, key: str, where: str) -> Any:
    obj = _obj(data, where or "the report")
    if key not in obj:
        raise ReportError(f"damaged report: {where + '.' if where else ''}{key} is missing")
    return obj[key]


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _wrong(where, "an object", value)
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _wrong(where, "a list", value)
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _wrong(where, "a string", value)
    return value


def _strings(value: Any, where: str) -> list[str]:
    return [_str(x, f"{where}[{i}]") for i, x in enumerate(_list(value, where))]


def _int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _wrong(where, "a whole number", value)
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _wrong(where, "true or false", value)
    return value


def _num(value: Any, where: str) -> float:
    """A number as :func:`~gradviz.core.report.json_number` wrote it (NaN/Inf as strings).

    Example:
        >>> _num(0.1, "x"), _num("-inf", "x"), _num(2, "x")
        (0.1, -inf, 2.0)
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value in ("nan", "inf", "-inf"):
        return float(value)
    raise _wrong(where, "a number", value)


def _optional_num(value: Any, where: str) -> float | None:
    return None if value is None else _num(value, where)


def _optional_numbers(value: Any, where: str) -> dict[str, float | None]:
    return {k: _optional_num(x, f"{where}.{k}") for k, x in _obj(value, where).items()}


def _numbers(value: Any, where: str, length: int) -> list[float]:
    items = _list(value, where)
    if len(items) != length:
        raise ReportError(f"damaged report: {where} has {len(items)} entries for {length} losses")
    return [_num(x, f"{where}[{i}]") for i, x in enumerate(items)]


def _flags(value: Any, where: str, length: int) -> list[bool]:
    items = _list(value, where)
    if len(items) != length:
        raise ReportError(f"damaged report: {where} has {len(items)} entries for {length} losses")
    return [_bool(x, f"{where}[{i}]") for i, x in enumerate(items)]


def _node_name(value: Any, where: str, graph: nx.DiGraph, empty: bool = False) -> str:
    name = _str(value, where)
    if name not in graph and not (empty and name == ""):
        raise ReportError(f"damaged report: {where}: {name!r} is not a node of topology.nodes")
    return name


def _with_blockers(finding: Finding, graph: nx.DiGraph) -> Finding:
    """A blocked-path finding's ``blockers`` (not a JSON key): its layers that block its loss, per the annotations."""
    if not finding.losses:
        return finding
    loss = finding.losses[0]
    blockers = tuple(n for n in finding.layers if n in graph and loss in graph.nodes[n].get("blocks_for", ()))
    return replace(finding, blockers=blockers) if blockers else finding
