"""Join gradient statistics with the model graph: reach, status, shares, findings.

Pure Python and NumPy (no TensorFlow): every figure here is derived from the
per-variable Gram matrices of :class:`gradviz.core.stats.GradientStats`, so the
same code answers "what happens under other loss weights" without recomputing
gradients.

Definitions (documented in the README):

* ``grad_norm[k]`` of a layer: L2 norm, over the layer's trainable variables,
  of loss k's unweighted gradient; None when it does not exist.
* ``combined_grad_norm``: norm of ``sum_k w_k g_k``, what the training step applies.
* ``share[k]``: ``<w_k g_k, g> / |g|^2`` with ``g = sum_j w_j g_j``: the part of
  the combined gradient loss k accounts for, measured along that gradient.
  Shares add up to 1; a loss pulling against the others has a negative share.
* ``cosine[i, j]``: ``<g_i, g_j> / (|g_i| |g_j|)``; a pair conflicts below 0 (PCGrad).
* ``magnitude_similarity[i, j]``: ``2 |g_i| |g_j| / (|g_i|^2 + |g_j|^2)``.

The findings come from the registry in :mod:`gradviz.core.findings`.
"""

from __future__ import annotations

from typing import Any, Sequence

import networkx as nx
import numpy as np

from gradviz.core.findings import Evidence, Thresholds, find_all, sort_findings
from gradviz.core.graph import Topology, loss_anchor
from gradviz.core.palette import loss_colors
from gradviz.core.report import (
    Finding,
    LayerInfo,
    LossInfo,
    Pair,
    Report,
    VariableInfo,
    loss_node,
)
from gradviz.core.spec import LossSpec
from gradviz.core.stats import (
    GradientStats,
    combined_norm,
    cosine,
    magnitude_similarity,
    shares,
    sqrt_nonneg,
)

# -- the analysis -------------------------------------------------------------


def analyze_stats(
    topology: Topology,
    stats: GradientStats,
    spec: LossSpec,
    *,
    model_name: str = "model",
    thresholds: Thresholds = Thresholds(),
) -> Report:
    """Build the report from the graph, the gradient statistics and the loss spec.

    The weights come from ``spec``; call again with ``spec.with_weights(...)``
    for a what-if (no gradient is recomputed).
    """
    names = list(stats.loss_names)
    term_by_name = {t.name: t for t in spec.terms}
    missing = [n for n in names if n not in term_by_name]
    if missing:
        raise ValueError(f"the statistics have losses the spec lacks: {missing}")
    weights = np.array([term_by_name[n].weight for n in names], dtype=np.float64)
    output_losses = [i for i, n in enumerate(names) if not term_by_name[n].is_regularization]
    graph = topology.graph
    order = topology.layer_names

    var_index: dict[str, list[int]] = {}
    for index, info in enumerate(topology.variables):
        var_index.setdefault(info.layer, []).append(index)

    variables = [
        VariableInfo(
            info.path,
            info.layer,
            info.shape,
            {n: (sqrt_nonneg(stats.gram[v, k, k]) if stats.exists[v, k] else None) for k, n in enumerate(names)},
            combined_norm(stats.gram[v], weights) if stats.exists[v].any() else None,
        )
        for v, info in enumerate(topology.variables)
    ]

    layers = []
    for name in order:
        node = graph.nodes[name]
        layers.append(
            _layer_info(name, node, var_index.get(name, []), stats, names, weights, output_losses)
        )
    shared_vars = [v for info in layers if info.status == "shared" for v in var_index.get(info.name, [])]
    trunk = (
        _layer_info(
            "(trunk)",
            {"class_name": "trunk", "kind": "trunk", "parent": "", "output_shape": "",
             "trainable_params": sum(info.trainable_params for info in layers if info.status == "shared")},
            shared_vars, stats, names, weights, output_losses,
        )
        if shared_vars
        else None
    )
    colors = loss_colors(names, [n for n in names if term_by_name[n].is_regularization])
    losses = [
        LossInfo(n, term_by_name[n].loss, term_by_name[n].weight, float(stats.loss_values[k]), term_by_name[n].output,
                 colors[n])
        for k, n in enumerate(names)
    ]
    analysed = _annotated_graph(topology, layers, losses)
    found = find_all(Evidence(topology, stats, spec, layers, trunk, analysed, thresholds))
    _mark_blocked(analysed, found)
    findings = sort_findings(found)
    edges = sorted(analysed.edges, key=lambda e: (analysed.nodes[e[0]]["order"], analysed.nodes[e[1]]["order"], e))
    return Report(
        model_name=model_name,
        losses=losses,
        layers=layers,
        variables=variables,
        edges=[(s, t) for s, t in edges],
        findings=findings,
        graph=analysed,
        trunk=trunk,
        stats=stats,
        topology=topology,
        spec=spec,
    )


def _layer_info(
    name: str,
    node: dict[str, Any],
    var_ids: list[int],
    stats: GradientStats,
    names: list[str],
    weights: np.ndarray,
    output_losses: list[int],
) -> LayerInfo:
    params = int(node.get("trainable_params", 0))
    if not var_ids:
        return LayerInfo(
            name, node["class_name"], node["kind"], node.get("parent", ""), params,
            {}, None, (), "no-trainable-weights", {}, (), node.get("output_shape", ""),
        )
    gram = stats.gram[var_ids].sum(axis=0)
    exists: np.ndarray = np.asarray(stats.exists[var_ids].any(axis=0))
    max_abs: np.ndarray = np.asarray(stats.max_abs[var_ids].max(axis=0))
    grad_norm = {n: (sqrt_nonneg(gram[k, k]) if exists[k] else None) for k, n in enumerate(names)}
    finite = np.asarray(stats.finite[var_ids].all(axis=0))
    # A NaN/Inf gradient reaches the layer (it is not "dead"); the nan-gradient finding reports it.
    reached = tuple(names[k] for k in output_losses if exists[k] and (max_abs[k] > 0 or not finite[k]))
    if len(reached) >= 2:
        status = "shared"
    elif reached:
        status = "exclusive"
    elif any(exists[k] for k in output_losses):
        status = "dead"
    else:
        status = "unreached"
    share_values = shares(gram, weights)
    share = {n: float(share_values[k]) for k, n in enumerate(names) if exists[k]} if exists.any() else {}
    pairs = tuple(
        Pair((names[i], names[j]), cosine(gram, i, j), magnitude_similarity(gram, i, j))
        for a, i in enumerate(output_losses)
        for j in output_losses[a + 1:]
        if names[i] in reached and names[j] in reached
    )
    return LayerInfo(
        name,
        node["class_name"],
        node["kind"],
        node.get("parent", ""),
        params,
        grad_norm,
        combined_norm(gram, weights) if exists.any() else None,
        reached,
        status,
        share,
        pairs,
        node.get("output_shape", ""),
    )


def _annotated_graph(topology: Topology, layers: list[LayerInfo], losses: list[LossInfo]) -> nx.DiGraph:
    graph = topology.graph.copy()
    for info in layers:
        graph.nodes[info.name].update(
            grad_norm=info.grad_norm,
            combined_grad_norm=info.combined_grad_norm,
            reached_by=list(info.reached_by),
            status=info.status,
            share=info.share,
        )
    next_order = len(graph)
    for loss in losses:
        if loss.source == "regularization":
            continue
        node = loss_node(loss.name, graph)
        graph.add_node(
            node, kind="loss", class_name="loss", parent="", loss=loss.loss, weight=loss.weight,
            value=loss.value, output=loss.output, color=loss.color, order=next_order, trainable_params=0, variables=[],
            blocks_gradient=False, output_shape="", activation=None,
        )
        next_order += 1
        source = loss_anchor(topology, loss.output, loss.source)
        if source:
            graph.add_edge(source, node, shape="")
            if "call_scopes" in graph.nodes[source]:  # a reused layer: which of its calls gives the output
                call = topology.output_calls.get(loss.output or "", 1) if loss.source == "compile" else 1
                graph.edges[source, node]["calls"] = [[call, 1]]
    return graph


def _mark_blocked(graph: nx.DiGraph, findings: list[Finding]) -> None:
    """Mark on the report's graph where each blocked path is cut (the diagram draws it).

    ``blocks_for`` on a blocking node and ``blocked_for`` on the edges into it list the losses
    whose gradient stops there.
    """
    for finding in findings:
        for blocker in finding.blockers:
            for pred in graph.predecessors(blocker):
                graph.edges[pred, blocker].setdefault("blocked_for", []).append(finding.losses[0])
            graph.nodes[blocker].setdefault("blocks_for", []).append(finding.losses[0])


def group_info(report: Report, name: str, members: Sequence[str]) -> LayerInfo:
    """The figures of several layers taken as one (all their trainable variables as one vector).

    Used to draw a collapsed nested model or a compacted run of layers as one
    box: norms, shares, reach and status are computed from the summed Gram
    matrices exactly as for a single layer.

    Args:
        report: an analysed report (made by the analysis or read back from JSON).
        name: the name of the group.
        members: the graph nodes in the group.
    """
    stats = report.stats
    names = list(stats.loss_names)
    by_name = {l.name: l for l in report.losses}
    weights = np.array([by_name[n].weight for n in names], dtype=np.float64)
    output_losses = [k for k, n in enumerate(names) if by_name[n].source != "regularization"]
    wanted = set(members)
    var_ids = [v for v, info in enumerate(report.topology.variables) if info.layer in wanted]
    node = {
        "class_name": "group", "kind": "group", "parent": "", "output_shape": "",
        "trainable_params": sum(report.graph.nodes[m].get("trainable_params", 0) for m in members),
    }
    return _layer_info(name, node, var_ids, stats, names, weights, output_losses)


# -- findings -------------------------------------------------------------------


