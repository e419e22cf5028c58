"""The analysed graph as GraphML, for Gephi, yEd or networkx.

GraphML attributes are scalars: dicts and lists (``grad_norm``, ``reached_by``,
``share``, ``blocked_for``, ...) are written as JSON strings, and attributes
that are None are left out. Nodes follow the report's topological order and
attributes are sorted, so the same report gives the same file.
"""

from __future__ import annotations

import json
import math
from typing import Any

import networkx as nx

from gradviz.core.report import Report


def graphml_value(value: Any) -> str | int | float | bool | None:
    """A GraphML-safe scalar: containers as JSON text, non-finite floats as strings, None kept None.

    Example:
        >>> graphml_value({"C": 0.5, "D": None}), graphml_value(["C"]), graphml_value(float("nan"))
        ('{"C": 0.5, "D": null}', '["C"]', 'nan')
    """
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(_jsonable(value), sort_keys=True, allow_nan=False)
    if hasattr(value, "item"):  # a NumPy scalar
        return graphml_value(value.item())
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


def to_graphml(report: Report) -> bytes:
    """The report's graph (layers, operations, losses; every figure) as GraphML bytes."""
    source = report.graph
    graph = nx.DiGraph(name=report.model_name)
    nodes = sorted(source.nodes, key=lambda n: (source.nodes[n].get("order", len(source)), n))
    for node in nodes:
        attrs = {k: graphml_value(v) for k, v in sorted(source.nodes[node].items())}
        graph.add_node(node, **{k: v for k, v in attrs.items() if v is not None})
    for s, t in report.edges:
        attrs = {k: graphml_value(v) for k, v in sorted(source.edges[s, t].items())}
        graph.add_edge(s, t, **{k: v for k, v in attrs.items() if v is not None})
    lines = ['<?xml version="1.0" encoding="utf-8"?>', *nx.generate_graphml(graph, prettyprint=True)]
    return ("\n".join(lines) + "\n").encode("utf-8")
