"""Join gradient statistics with the model graph: reach, status, shares, findings.

Pure Python and NumPy (no TensorFlow): every figure here is derived from the
per-variable Gram matrices of :class:`gradviz.backends.tensorflow.gradient_pass.GradientStats`, so the
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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import networkx as nx
import numpy as np

from gradviz.core.graph import Topology
from gradviz.core.palette import loss_colors
from gradviz.core.report import (
    SEVERITIES,
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

#: a trunk cosine below minus this is a clear conflict (a warning); between it and 0, info
CLEAR_CONFLICT = 0.1


@dataclass(frozen=True)
class Thresholds:
    """When a figure becomes a finding.

    Attributes:
        vanishing: a loss whose weighted gradient on the trunk is below this
            fraction of the largest other loss's is ``vanishing``.
        dominated: a loss whose weighted gradient energy on the trunk, ``(w_k |g_k|)^2``, is at
            least this fraction of all losses' added up is ``dominated``.
    """

    vanishing: float = 1e-3
    dominated: float = 0.95


def conflicting_layers(layers: Iterable[LayerInfo], losses: tuple[str, str]) -> list[str]:
    """The shared layers where the two losses' gradients have a negative cosine, in the given order."""
    return [
        info.name for info in layers if info.status == "shared"
        for p in info.pairs if p.losses == losses and p.cosine < 0
    ]


# -- figures from Gram matrices ----------------------------------------------


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
    findings = _findings(topology, stats, spec, layers, trunk, names, weights, output_losses, analysed, thresholds)
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
    return graph


def loss_anchor(topology: Topology, output: str | None, source: str) -> str | None:
    """The graph node a loss hangs from: its output's node, or the layer whose ``add_loss`` it is.

    None for ``loss_terms`` and regularization (they come from no one node).
    """
    if source == "compile":
        return topology.outputs.get(output or "")
    if source == "add_loss" and output is not None and output in topology.graph:
        return output
    return None


def group_info(report: Report, name: str, members: Sequence[str]) -> LayerInfo:
    """The figures of several layers taken as one (all their trainable variables as one vector).

    Used to draw a collapsed nested model or a compacted run of layers as one
    box: norms, shares, reach and status are computed from the summed Gram
    matrices exactly as for a single layer.

    Args:
        report: an analysed report (it must keep ``stats`` and ``topology``).
        name: the name of the group.
        members: the graph nodes in the group.

    Raises:
        ValueError: the report has no statistics (built without ``analyze_stats``).
    """
    if report.stats is None or report.topology is None:
        raise ValueError("the report keeps no gradient statistics")
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


def _findings(
    topology: Topology,
    stats: GradientStats,
    spec: LossSpec,
    layers: list[LayerInfo],
    trunk: LayerInfo | None,
    names: list[str],
    weights: np.ndarray,
    output_losses: list[int],
    graph: nx.DiGraph,
    thresholds: Thresholds,
) -> list[Finding]:
    found: list[Finding] = []
    trainable = [info for info in layers if info.trainable_params > 0]
    dead_heads: set[str] = set()

    for note in spec.notes:
        found.append(Finding("keras-weight-order", "warning", note, spec.names, ()))
    for output in spec.unlossed_outputs:
        found.append(Finding(
            "no-loss-output", "warning",
            f"output '{output}' has no loss: nothing trains the layers only it uses",
            (), (topology.outputs.get(output, output),),
        ))
    for term in spec.terms:
        if term.weight == 0:
            found.append(Finding(
                "zero-weight", "warning",
                f"loss '{term.name}' has weight 0: it is computed but trains nothing",
                (term.name,), (),
            ))

    # nan-gradient: non-finite loss values or gradients
    for k, name in enumerate(names):
        bad_vars = [v for v in range(len(topology.variables)) if stats.exists[v, k] and not stats.finite[v, k]]
        value_bad = not math.isfinite(float(stats.loss_values[k]))
        if not bad_vars and not value_bad:
            continue
        bad_layers = _ordered({topology.variables[v].layer for v in bad_vars}, graph, reverse=True)
        where = f"; non-finite gradients start at layer '{bad_layers[0]}' (closest to the output)" if bad_layers else ""
        if len(bad_layers) > 1:  # how far back toward the inputs they propagate
            where += f" and reach back to '{bad_layers[-1]}'"
        value_text = f"its value is {float(stats.loss_values[k])}" if value_bad else "its value is finite"
        found.append(Finding(
            "nan-gradient", "error",
            f"loss '{name}': {value_text}{where}; {len(bad_layers)} layer(s) get NaN/Inf gradients",
            (name,), tuple(bad_layers),
        ))

    # dead heads: a loss whose gradient is zero (or absent) on every weight
    for k in output_losses:
        name = names[k]
        exists_any = bool(stats.exists[:, k].any())
        nonzero = bool((stats.exists[:, k] & (stats.max_abs[:, k] > 0)).any())
        if nonzero or not stats.finite[:, k].all():
            continue
        dead_heads.add(name)
        why = (
            "its gradient exists but is exactly zero on every weight (saturated or dead activations, "
            "a constant output, or targets the loss cannot use)"
            if exists_any
            else "no gradient reaches any weight: every path from it to a weight is blocked"
        )
        found.append(Finding("dead-head", "error", f"loss '{name}' trains nothing: {why}", (name,), ()))

    # blocked paths: a layer feeds an output, but the output's loss has no gradient there. An endpoint
    # layer whose weights its own add_loss trains is not one: they serve its loss, not what it passes on.
    endpoints = {
        info.name for info in trainable for t in spec.terms
        if t.source == "add_loss" and t.output == info.name and t.name in info.reached_by
    }
    for k in output_losses:
        name = names[k]
        term = next(t for t in spec.terms if t.name == name)
        out_node = loss_anchor(topology, term.output, term.source)  # an endpoint layer for an add_loss term
        if not out_node or not topology.complete:
            continue
        upstream = nx.ancestors(graph, out_node) | {out_node}
        blocked = [
            info.name for info in trainable
            if info.name in upstream and info.grad_norm.get(name) is None and info.name not in endpoints
        ]
        groups: dict[tuple[str, ...], list[str]] = {}
        for layer in blocked:
            groups.setdefault(_first_blockers(graph, layer, out_node), []).append(layer)
        for blockers, group in sorted(groups.items()):
            group = _ordered(group, graph)
            if blockers:
                where = " and ".join(f"{b} ({graph.nodes[b]['class_name']})" for b in blockers)
                message = (
                    f"loss '{name}': gradient blocked at {where}; layer(s) {', '.join(group)} feed "
                    f"{_fed(term)} but get no gradient from its loss"
                )
                for b in blockers:
                    for pred in graph.predecessors(b):
                        graph.edges[pred, b].setdefault("blocked_for", []).append(name)
                    graph.nodes[b].setdefault("blocks_for", []).append(name)
            else:
                message = (
                    f"loss '{name}': layer(s) {', '.join(group)} feed {_fed(term)} but get no "
                    "gradient from its loss, and no known gradient-blocking operation lies between them "
                    "(a custom layer or a non-differentiable op cuts the path)"
                )
            found.append(Finding("blocked-path", "error", message, (name,), tuple(group) + tuple(blockers)))

    # unreached layers: trainable weights that no loss reaches
    unreached = [info for info in trainable if info.status == "unreached"]
    if unreached:
        reg = [names.index(n) for n in names if n not in [names[k] for k in output_losses]]
        no_grad = []
        reg_only = []
        for info in unreached:
            ids = [v for v, var in enumerate(topology.variables) if var.layer == info.name]
            if reg and stats.exists[np.ix_(ids, reg)].any():
                reg_only.append(info.name)
            else:
                no_grad.append(info.name)
        parts = []
        if no_grad:
            parts.append(f"{', '.join(no_grad)} get no gradient at all (Keras warns 'Gradients do not exist' for their variables)")
        if reg_only:
            parts.append(f"{', '.join(reg_only)} get only the regularization gradient (weight decay, no learning)")
        found.append(Finding(
            "unreached-layer", "warning",
            f"{len(unreached)} layer(s) with trainable weights are reached by no loss: " + "; ".join(parts),
            (), tuple(info.name for info in unreached),
        ))

    # dead layers: a loss's gradient exists there but is exactly zero
    for k in output_losses:
        name = names[k]
        if name in dead_heads:
            continue
        dead = [
            info.name for info in trainable
            if info.grad_norm.get(name) is not None and name not in info.reached_by
            and all(math.isfinite(x) for x in [info.grad_norm[name] or 0.0])
        ]
        if dead:
            found.append(Finding(
                "dead-layer", "warning",
                f"loss '{name}': gradient exists but is exactly zero on {', '.join(dead)} "
                "(dead ReLUs, saturated activations, zero inputs, or a zero-gradient op such as sign)",
                (name,), tuple(dead),
            ))

    # trunk balance: vanishing, dominated, conflict
    if trunk is not None:
        reaching = [k for k in output_losses if names[k] in trunk.reached_by and weights[k] > 0]
        weighted = {k: weights[k] * (trunk.grad_norm.get(names[k]) or 0.0) for k in reaching}
        if len(reaching) >= 2:
            for k in reaching:
                others = max(weighted[j] for j in reaching if j != k)
                if others > 0 and weighted[k] < thresholds.vanishing * others:
                    top = max((j for j in reaching if j != k), key=lambda j: weighted[j])
                    found.append(Finding(
                        "vanishing", "warning",
                        f"loss '{names[k]}': its weighted gradient on the shared trunk ({weighted[k]:.3g}) is "
                        f"{others / weighted[k] if weighted[k] > 0 else float('inf'):.3g}x smaller than "
                        f"'{names[top]}''s ({others:.3g}); it barely trains the trunk",
                        (names[k], names[top]), (),
                    ))
            # Judged on each loss's part of the weighted gradient energy, w_k^2 |g_k|^2 / sum_j w_j^2 |g_j|^2:
            # its share if the gradients were orthogonal, and unlike the share it stays within [0, 1]
            # when losses conflict (a loss pulling against the winner pushes the winner's share past 100%).
            total = sum(w * w for w in weighted.values())
            for k in reaching:
                magnitude = weighted[k] ** 2 / total if total > 0 else 0.0
                if magnitude >= thresholds.dominated:
                    drowned = [names[j] for j in reaching if j != k]
                    found.append(Finding(
                        "dominated", "warning",
                        f"loss '{names[k]}' makes up {magnitude:.1%} of the weighted gradient energy on the "
                        f"shared trunk; {', '.join(drowned)} {'barely shapes' if len(drowned) == 1 else 'barely shape'} it",
                        (names[k], *drowned), (),
                    ))
        for pair in trunk.pairs:
            conflicting = conflicting_layers(layers, pair.losses)
            if not conflicting and not pair.cosine < 0:
                continue
            # Near-orthogonal gradients (random init) dip below 0 by noise: warn only for a clear conflict.
            severity = "warning" if pair.cosine < -CLEAR_CONFLICT else "info"
            found.append(Finding(
                "conflict", severity,
                f"losses '{pair.losses[0]}' and '{pair.losses[1]}' pull the shared trunk in "
                f"{_conflict_words(pair.cosine)} directions (trunk cosine {pair.cosine:.3f}; "
                f"negative on {len(conflicting)} shared layer(s){': ' + ', '.join(conflicting[:8]) if conflicting else ''}"
                f"{' ...' if len(conflicting) > 8 else ''})",
                pair.losses, tuple(conflicting),
            ))

    # a squashing activation feeding another trainable layer: a head chained behind another?
    for info in trainable:
        activation = graph.nodes[info.name].get("activation")
        if activation not in ("softmax", "sigmoid"):
            continue
        downstream = [n for n in graph.successors(info.name) if graph.nodes[n].get("trainable_params", 0) > 0]
        if downstream:
            found.append(Finding(
                "chained-head", "info",
                f"layer '{info.name}' ends in {activation} but feeds '{downstream[0]}': an output head chained "
                "behind another? (a Sequential model has one output; use the functional API for two heads)",
                (), (info.name, downstream[0]),
            ))
    half = sorted(n for n in graph if graph.nodes[n].get("compute_dtype") in ("float16", "bfloat16")
                  and graph.nodes[n].get("trainable_params", 0) > 0)
    if half:
        found.append(Finding("mixed-precision", "info", _mixed_precision_message(len(half), stats.loss_scale),
                             (), tuple(_ordered(half, graph))))
    if not topology.complete:
        found.append(Finding(
            "incomplete-graph", "info",
            topology.missing
            or "part of the model is subclassed Python code: its layers are listed, but paths through it are unknown",
        ))
    severity_rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(found, key=lambda f: (-severity_rank[f.severity], f.kind, f.message))


def _fed(term: Any) -> str:
    """What a loss's upstream layers feed: its output, or the endpoint layer that adds it."""
    return f"layer '{term.output}' (which adds the loss)" if term.source == "add_loss" else f"output '{term.output}'"


def _mixed_precision_message(layers: int, loss_scale: float | None) -> str:
    """The mixed-precision finding: how the loss was scaled, as Keras's training step scales it.

    Example:
        >>> _mixed_precision_message(2, 32768.0)[:60]
        'float16/bfloat16 compute in 2 layer(s); each loss was scaled'
    """
    if loss_scale is not None:
        return (
            f"float16/bfloat16 compute in {layers} layer(s); each loss was scaled by {loss_scale:g} before "
            "differentiating and the gradients unscaled after, as Keras's LossScaleOptimizer does (it halves its "
            "scale, from 32768 at first, after each step whose gradients overflow; this is the largest with finite "
            "gradients), so small float16 gradients are not lost"
        )
    return (
        f"float16/bfloat16 compute in {layers} layer(s); the losses were not scaled (Keras's training step does not "
        "scale them: a bfloat16 policy, or compile(auto_scale_loss=False)), so gradients below float16's range "
        "show as 0 (dead) as they would in training"
    )


def _conflict_words(trunk_cosine: float) -> str:
    if trunk_cosine < -CLEAR_CONFLICT:
        return "opposing"
    if trunk_cosine < 0:
        return "nearly orthogonal, slightly opposing"
    return "aligned overall but, on some layers, opposing"


def _ordered(nodes: Iterable[str], graph: nx.DiGraph, reverse: bool = False) -> list[str]:
    return sorted(nodes, key=lambda n: graph.nodes[n]["order"], reverse=reverse)


def _first_blockers(graph: nx.DiGraph, layer: str, output: str) -> tuple[str, ...]:
    """The gradient-blocking nodes on paths from ``layer`` to ``output`` that the gradient meets first."""
    between = (nx.descendants(graph, layer) & nx.ancestors(graph, output)) | {output}
    blockers = {n for n in between if graph.nodes[n].get("blocks_gradient")}
    first = {b for b in blockers if not (nx.descendants(graph, b) & blockers)}
    return tuple(_ordered(first, graph))


