"""The findings registry: one small unit per kind of finding.

Each kind is a :class:`Check` subclass that carries everything about it in one
place: its id (``kind``), what it means and what to try (the explanation the
HTML report and the terminal show), and :meth:`Check.find`, which reads the
analysed figures (:class:`Evidence`) and returns findings with their severity
and message. The analysis runs every registered check; nothing here writes to
the graph. Adding a kind is one class here and its test.

Example:
    >>> sorted(REGISTRY)[:3]
    ['blocked-path', 'chained-head', 'conflict']
    >>> REGISTRY["dead-head"].meaning.split(":")[0]
    'This loss contributes nothing to training'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Sequence

import networkx as nx
import numpy as np

from gradviz.core.graph import Topology, loss_anchor, upstream
from gradviz.core.report import SEVERITIES, Finding, LayerInfo
from gradviz.core.spec import LossSpec
from gradviz.core.stats import GradientStats
from gradviz.core.wording import noun, plural, verb

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


@dataclass(frozen=True)
class Evidence:
    """What the checks read: the graph, the statistics, the spec and the per-layer figures.

    Attributes:
        topology: the walked model.
        stats: the per-variable gradient statistics.
        spec: the losses and their weights.
        layers: the per-layer figures, in graph order.
        trunk: the figures of all shared layers taken together (None without a shared layer).
        graph: the annotated graph (read only).
        thresholds: when figures become findings.
    """

    topology: Topology
    stats: GradientStats
    spec: LossSpec
    layers: list[LayerInfo]
    trunk: LayerInfo | None
    graph: nx.DiGraph
    thresholds: Thresholds = field(default_factory=Thresholds)

    @cached_property
    def names(self) -> list[str]:
        """The losses, in statistics order."""
        return list(self.stats.loss_names)

    @cached_property
    def weights(self) -> np.ndarray:
        """Each loss's weight, in statistics order."""
        by_name = {t.name: t.weight for t in self.spec.terms}
        return np.array([by_name[n] for n in self.names], dtype=np.float64)

    @cached_property
    def output_losses(self) -> list[int]:
        """The indices of the losses on outputs (all but regularization)."""
        regularization = {t.name for t in self.spec.terms if t.is_regularization}
        return [k for k, n in enumerate(self.names) if n not in regularization]

    @cached_property
    def trainable(self) -> list[LayerInfo]:
        """The layers with trainable weights."""
        return [info for info in self.layers if info.trainable_params > 0]

    @cached_property
    def dead_heads(self) -> set[str]:
        """The output losses whose gradient is zero (or absent) on every weight, all of it finite."""
        dead = set()
        for k in self.output_losses:
            nonzero = bool((self.stats.exists[:, k] & (self.stats.max_abs[:, k] > 0)).any())
            if not nonzero and self.stats.finite[:, k].all():
                dead.add(self.names[k])
        return dead

    def ordered(self, nodes: Iterable[str], reverse: bool = False) -> list[str]:
        """Graph nodes in graph order."""
        return sorted(nodes, key=lambda n: self.graph.nodes[n]["order"], reverse=reverse)


class Check:
    """One kind of finding. Subclasses set the class attributes and :meth:`find`."""

    #: the id reports and ``--fail-on`` use
    kind = ""
    #: what the finding means (one or two sentences)
    meaning = ""
    #: what to try
    advice = ""

    def find(self, evidence: Evidence) -> list[Finding]:
        """The findings of this kind in ``evidence`` (severity and message included)."""
        raise NotImplementedError

    def finding(self, severity: str, message: str, losses: Sequence[str] = (), layers: Sequence[str] = (),
                blockers: Sequence[str] = ()) -> Finding:
        """A finding of this kind."""
        return Finding(self.kind, severity, message, tuple(losses), tuple(layers), tuple(blockers))


#: finding kind -> its check, in the order they were registered
REGISTRY: dict[str, Check] = {}


def register(cls: type[Check]) -> type[Check]:
    """Add a check to the registry (a class decorator)."""
    check = cls()
    if not check.kind or check.kind in REGISTRY:
        raise ValueError(f"finding kind {check.kind!r} is empty or registered twice")
    REGISTRY[check.kind] = check
    return cls


def find_all(evidence: Evidence) -> list[Finding]:
    """Run every registered check, in registry order (see :func:`sort_findings` for the report's order)."""
    return [f for check in REGISTRY.values() for f in check.find(evidence)]


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Worst first, then by kind and message: the order reports list findings in.

    Example:
        >>> fs = [Finding("b", "info", "x"), Finding("a", "error", "y"), Finding("a", "info", "z")]
        >>> [(f.kind, f.severity) for f in sort_findings(fs)]
        [('a', 'error'), ('a', 'info'), ('b', 'info')]
    """
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(findings, key=lambda f: (-rank[f.severity], f.kind, f.message))


def explanation(kind: str) -> tuple[str, str]:
    """What a finding kind means and what to try (a generic line for unknown kinds)."""
    check = REGISTRY.get(kind)
    return (check.meaning, check.advice) if check else ("See the message for details.", "")


def conflicting_layers(layers: Iterable[LayerInfo], losses: tuple[str, str]) -> list[str]:
    """The shared layers on which the pair's gradients have a negative cosine, in graph order."""
    return [
        info.name for info in layers
        if info.status == "shared"
        for pair in info.pairs if pair.losses == losses and pair.cosine < 0
    ]


# -- the checks ------------------------------------------------------------------


@register
class KerasWeightOrder(Check):
    kind = "keras-weight-order"
    meaning = (
        "The model was compiled with a list of losses and a dict of loss weights. Keras cannot match them by "
        "name: it takes the dict's values in sorted-key order and gives them to the outputs by position, so "
        "an output may train with another output's weight. gradviz reports the weights Keras really uses."
    )
    advice = (
        "Compile with loss and loss_weights of the same form: both dicts keyed by output name, or both lists "
        "in output order."
    )

    def find(self, evidence: Evidence) -> list[Finding]:
        return [self.finding("warning", note, evidence.spec.names) for note in evidence.spec.notes]


@register
class NoLossOutput(Check):
    kind = "no-loss-output"
    meaning = "An output has no loss: the layers only it uses are never trained."
    advice = "Give the output a loss (--loss OUTPUT=LOSS to try), or remove it from the model's outputs."

    def find(self, evidence: Evidence) -> list[Finding]:
        outputs = evidence.topology.outputs
        return [
            self.finding("warning", f"output '{output}' has no loss: nothing trains the layers only it uses",
                         (), (outputs.get(output, output),))
            for output in evidence.spec.unlossed_outputs
        ]


@register
class ZeroWeight(Check):
    kind = "zero-weight"
    meaning = "A loss with weight 0 is computed but trains nothing."
    advice = "Give it a nonzero weight, or drop it from compile() if it is only a metric."

    def find(self, evidence: Evidence) -> list[Finding]:
        return [
            self.finding("warning", f"loss '{term.name}' has weight 0: it is computed but trains nothing",
                         (term.name,))
            for term in evidence.spec.terms if term.weight == 0
        ]


@register
class NanGradient(Check):
    kind = "nan-gradient"
    meaning = "A loss value or gradient is NaN or infinite; training with it corrupts the weights."
    advice = (
        "Check the data for NaN/Inf, use from_logits=True instead of a log of a softmax/sigmoid, guard "
        "log/sqrt/division against zero in custom losses, and clip extreme inputs."
    )

    def find(self, evidence: Evidence) -> list[Finding]:
        stats, variables = evidence.stats, evidence.topology.variables
        found = []
        for k, name in enumerate(evidence.names):
            bad_vars = [v for v in range(len(variables)) if stats.exists[v, k] and not stats.finite[v, k]]
            value_bad = not math.isfinite(float(stats.loss_values[k]))
            if not bad_vars and not value_bad:
                continue
            bad_layers = evidence.ordered({variables[v].layer for v in bad_vars}, reverse=True)
            where = f"; non-finite gradients start at layer '{bad_layers[0]}' (closest to the output)" if bad_layers else ""
            if len(bad_layers) > 1:  # how far back toward the inputs they propagate
                where += f" and reach back to '{bad_layers[-1]}'"
            value_text = f"its value is {float(stats.loss_values[k])}" if value_bad else "its value is finite"
            found.append(self.finding(
                "error",
                f"loss '{name}': {value_text}{where}; {plural(len(bad_layers), 'layer')} "
                f"{verb(bad_layers, 'gets', 'get')} NaN/Inf gradients",
                (name,), bad_layers,
            ))
        return found


@register
class DeadHead(Check):
    kind = "dead-head"
    meaning = "This loss contributes nothing to training: every weight gets a zero (or no) gradient from it."
    advice = (
        "Check the head's activation (a ReLU stuck at 0, a saturated sigmoid or softmax), its bias "
        "initialisation, and whether the targets suit the loss; look for a stop_gradient, argmax or integer "
        "cast between the head and the trunk."
    )

    def find(self, evidence: Evidence) -> list[Finding]:
        found = []
        for k in evidence.output_losses:
            name = evidence.names[k]
            if name not in evidence.dead_heads:
                continue
            why = (
                "its gradient exists but is exactly zero on every weight (saturated or dead activations, "
                "a constant output, or targets the loss cannot use)"
                if evidence.stats.exists[:, k].any()
                else "no gradient reaches any weight: every path from it to a weight is blocked"
            )
            found.append(self.finding("error", f"loss '{name}' trains nothing: {why}", (name,)))
        return found


@register
class BlockedPath(Check):
    kind = "blocked-path"
    meaning = (
        "Layers feed this output (or the endpoint layer that adds this loss), but its loss's gradient cannot "
        "flow back to them through the named operation, so the loss does not train them."
    )
    advice = (
        "If unintended, remove ops.stop_gradient, replace argmax/round/integer casts with a differentiable "
        "version (softmax, a straight-through estimator); if intended (a frozen feature extractor), ignore it."
    )

    def find(self, evidence: Evidence) -> list[Finding]:
        topology, graph = evidence.topology, evidence.graph
        if not topology.complete:
            return []
        found = []
        # An endpoint layer whose weights its own add_loss trains is not blocked for the outputs it
        # passes features on to: its weights serve its loss.
        endpoints = {
            info.name for info in evidence.trainable for t in evidence.spec.terms
            if t.source == "add_loss" and t.output == info.name and t.name in info.reached_by
        }
        for k in evidence.output_losses:
            name = evidence.names[k]
            term = next(t for t in evidence.spec.terms if t.name == name)
            out_node = loss_anchor(topology, term.output, term.source)  # an endpoint layer for an add_loss term
            if not out_node:
                continue
            # call by call: what feeds a reused layer's later call does not feed what its first call feeds
            call = topology.output_calls.get(term.output or "", 1) if term.source == "compile" else 1
            feeding = upstream(graph, out_node, call)
            blocked = [info.name for info in evidence.trainable
                       if info.name in feeding and info.grad_norm.get(name) is None and info.name not in endpoints]
            groups: dict[tuple[str, ...], list[str]] = {}
            for layer in blocked:
                groups.setdefault(self._first_blockers(evidence, layer, out_node), []).append(layer)
            for blockers, group in sorted(groups.items()):
                group = evidence.ordered(group)
                if blockers:
                    where = " and ".join(f"{b} ({graph.nodes[b]['class_name']})" for b in blockers)
                    message = (
                        f"loss '{name}': gradient blocked at {where}; {noun(len(group), 'layer')} {', '.join(group)} "
                        f"{verb(group, 'feeds', 'feed')} {self._fed(term.output, term.source)} but "
                        f"{verb(group, 'gets', 'get')} no gradient from its loss"
                    )
                else:
                    message = (
                        f"loss '{name}': {noun(len(group), 'layer')} {', '.join(group)} {verb(group, 'feeds', 'feed')} "
                        f"{self._fed(term.output, term.source)} but {verb(group, 'gets', 'get')} no gradient from its "
                        "loss, and no "
                        "known gradient-blocking operation lies between them "
                        "(a custom layer or a non-differentiable op cuts the path)"
                    )
                found.append(self.finding("error", message, (name,), tuple(group) + blockers, blockers))
        return found

    @staticmethod
    def _fed(output: str | None, source: str) -> str:
        """What a loss's upstream layers feed: its output, or the endpoint layer that adds it.

        Example:
            >>> BlockedPath._fed("ctc", "add_loss"), BlockedPath._fed("C", "compile")
            ("layer 'ctc' (which adds the loss)", "output 'C'")
        """
        return f"layer '{output}' (which adds the loss)" if source == "add_loss" else f"output '{output}'"

    @staticmethod
    def _first_blockers(evidence: Evidence, layer: str, output: str) -> tuple[str, ...]:
        """The gradient-blocking nodes on paths from ``layer`` to ``output`` that the gradient meets first."""
        graph = evidence.graph
        between = (nx.descendants(graph, layer) & nx.ancestors(graph, output)) | {output}
        blockers = {n for n in between if graph.nodes[n].get("blocks_gradient")}
        first = {b for b in blockers if not (nx.descendants(graph, b) & blockers)}
        return tuple(evidence.ordered(first))


@register
class UnreachedLayer(Check):
    kind = "unreached-layer"
    meaning = (
        "These layers have trainable weights that no loss trains: they keep their initial values."
    )
    advice = (
        "Connect the layer to an output with a loss, give its output a loss, set trainable=False if it is "
        "meant to be frozen, or remove it."
    )

    def find(self, evidence: Evidence) -> list[Finding]:
        unreached = [info for info in evidence.trainable if info.status == "unreached"]
        if not unreached:
            return []
        names, stats, variables = evidence.names, evidence.stats, evidence.topology.variables
        reg = [k for k in range(len(names)) if k not in evidence.output_losses]
        no_grad, reg_only = [], []
        for info in unreached:
            ids = [v for v, var in enumerate(variables) if var.layer == info.name]
            if reg and stats.exists[np.ix_(ids, reg)].any():
                reg_only.append(info.name)
            else:
                no_grad.append(info.name)
        parts = []
        if no_grad:
            parts.append(f"{', '.join(no_grad)} {verb(no_grad, 'gets', 'get')} no gradient at all "
                         f"(Keras warns 'Gradients do not exist' for {verb(no_grad, 'its', 'their')} variables)")
        if reg_only:
            parts.append(f"{', '.join(reg_only)} {verb(reg_only, 'gets', 'get')} only the regularization gradient "
                         "(weight decay, no learning)")
        return [self.finding(
            "warning",
            f"{plural(len(unreached), 'layer')} with trainable weights {verb(unreached, 'is', 'are')} reached by "
            "no loss: " + "; ".join(parts),
            (), tuple(info.name for info in unreached),
        )]


@register
class DeadLayer(Check):
    kind = "dead-layer"
    meaning = "The loss's gradient reaches the layer but is exactly zero there, typically dead ReLUs."
    advice = (
        "Try LeakyReLU or GELU, He initialisation, normalised inputs or BatchNormalization, and a smaller "
        "learning rate; re-run with real data (--data) to confirm."
    )

    def find(self, evidence: Evidence) -> list[Finding]:
        found = []
        for k in evidence.output_losses:
            name = evidence.names[k]
            if name in evidence.dead_heads:
                continue
            dead = [
                info.name for info in evidence.trainable
                if info.grad_norm.get(name) is not None and name not in info.reached_by
                and all(math.isfinite(x) for x in [info.grad_norm[name] or 0.0])
            ]
            if dead:
                found.append(self.finding(
                    "warning",
                    f"loss '{name}': gradient exists but is exactly zero on {', '.join(dead)} "
                    "(dead ReLUs, saturated activations, zero inputs, or a zero-gradient op such as sign)",
                    (name,), dead,
                ))
        return found


def _reaching_trunk(evidence: Evidence) -> tuple[list[int], dict[int, float]]:
    """The output losses that reach the trunk with a positive weight, and their weighted trunk norms."""
    trunk = evidence.trunk
    if trunk is None:
        return [], {}
    names, weights = evidence.names, evidence.weights
    reaching = [k for k in evidence.output_losses if names[k] in trunk.reached_by and weights[k] > 0]
    return reaching, {k: weights[k] * (trunk.grad_norm.get(names[k]) or 0.0) for k in reaching}


@register
class Vanishing(Check):
    kind = "vanishing"
    meaning = (
        "On the shared trunk, this loss's weighted gradient is tiny next to another's: it barely shapes the "
        "shared features."
    )
    advice = (
        "Raise its loss weight (try --loss-weight OUTPUT=W to see the effect without retraining), normalise "
        "the losses' scales, or use adaptive weighting (GradNorm, uncertainty weighting). Synthetic targets have "
        "unit scale: check with real data."
    )

    def find(self, evidence: Evidence) -> list[Finding]:
        reaching, weighted = _reaching_trunk(evidence)
        if len(reaching) < 2:
            return []
        names = evidence.names
        found = []
        for k in reaching:
            others = max(weighted[j] for j in reaching if j != k)
            if others > 0 and weighted[k] < evidence.thresholds.vanishing * others:
                top = max((j for j in reaching if j != k), key=lambda j: weighted[j])
                found.append(self.finding(
                    "warning",
                    f"loss '{names[k]}': its weighted gradient on the shared trunk ({weighted[k]:.3g}) is "
                    f"{others / weighted[k] if weighted[k] > 0 else float('inf'):.3g}x smaller than "
                    f"that of '{names[top]}' ({others:.3g}); it barely trains the trunk",
                    (names[k], names[top]),
                ))
        return found


@register
class Dominated(Check):
    kind = "dominated"
    meaning = "One loss provides almost all of the shared trunk's gradient; the others hardly influence it."
    advice = (
        "Lower the dominant loss's weight or raise the others' (--loss-weight shows the effect), or normalise "
        "the loss scales."
    )

    def find(self, evidence: Evidence) -> list[Finding]:
        reaching, weighted = _reaching_trunk(evidence)
        if len(reaching) < 2:
            return []
        names = evidence.names
        # Judged on each loss's part of the weighted gradient energy, w_k^2 |g_k|^2 / sum_j w_j^2 |g_j|^2:
        # its share if the gradients were orthogonal, and unlike the share it stays within [0, 1]
        # when losses conflict (a loss pulling against the winner pushes the winner's share past 100%).
        total = sum(w * w for w in weighted.values())
        found = []
        for k in reaching:
            magnitude = weighted[k] ** 2 / total if total > 0 else 0.0
            if magnitude >= evidence.thresholds.dominated:
                drowned = [names[j] for j in reaching if j != k]
                found.append(self.finding(
                    "warning",
                    f"loss '{names[k]}' makes up {magnitude:.1%} of the weighted gradient energy on the "
                    f"shared trunk; {', '.join(drowned)} {'barely shapes' if len(drowned) == 1 else 'barely shape'} it",
                    (names[k], *drowned),
                ))
        return found


@register
class Conflict(Check):
    kind = "conflict"
    meaning = (
        "Two losses pull the shared trunk in opposing directions (negative cosine of their gradients), so "
        "part of each update cancels out."
    )
    advice = (
        "Slight negative cosines at random initialisation are noise: re-check on a trained model with real "
        "data. For a real conflict, re-weight the losses, give each head more private layers, or use gradient "
        "surgery (PCGrad)."
    )

    def find(self, evidence: Evidence) -> list[Finding]:
        if evidence.trunk is None:
            return []
        found = []
        for pair in evidence.trunk.pairs:
            conflicting = conflicting_layers(evidence.layers, pair.losses)
            if not conflicting and not pair.cosine < 0:
                continue
            # Near-orthogonal gradients (random init) dip below 0 by noise: warn only for a clear conflict.
            severity = "warning" if pair.cosine < -CLEAR_CONFLICT else "info"
            found.append(self.finding(
                severity,
                f"losses '{pair.losses[0]}' and '{pair.losses[1]}' pull the shared trunk "
                f"{self._words(pair.cosine)} (trunk cosine {pair.cosine:.3f}; negative on "
                f"{plural(len(conflicting), 'shared layer')}{': ' + ', '.join(conflicting[:8]) if conflicting else ''}"
                f"{' ...' if len(conflicting) > 8 else ''})",
                pair.losses, conflicting,
            ))
        return found

    @staticmethod
    def _words(trunk_cosine: float) -> str:
        """How two losses pull the trunk, as the words after "pull the shared trunk".

        Example:
            >>> Conflict._words(-0.5), Conflict._words(0.3)
            ('in opposing directions', 'in aligned directions overall, but in opposing ones on some layers')
        """
        if trunk_cosine < -CLEAR_CONFLICT:
            return "in opposing directions"
        if trunk_cosine < 0:
            return "in nearly orthogonal, slightly opposing directions"
        return "in aligned directions overall, but in opposing ones on some layers"


@register
class ChainedHead(Check):
    kind = "chained-head"
    meaning = (
        "A layer that ends in sigmoid/softmax feeds another trainable layer: a second head chained behind the "
        "first, so the first head's output is squashed features, not a prediction with its own loss."
    )
    advice = "Build the model with the functional API and branch both heads from the trunk."

    def find(self, evidence: Evidence) -> list[Finding]:
        graph = evidence.graph
        found = []
        for info in evidence.trainable:
            activation = graph.nodes[info.name].get("activation")
            if activation not in ("softmax", "sigmoid"):
                continue
            downstream = [n for n in graph.successors(info.name) if graph.nodes[n].get("trainable_params", 0) > 0]
            if downstream:
                found.append(self.finding(
                    "info",
                    f"layer '{info.name}' ends in {activation} but feeds '{downstream[0]}': an output head chained "
                    "behind another? (a Sequential model has one output; use the functional API for two heads)",
                    (), (info.name, downstream[0]),
                ))
        return found


@register
class MixedPrecision(Check):
    kind = "mixed-precision"
    meaning = (
        "These layers compute in float16 or bfloat16. Where Keras's training step scales the loss (a "
        "LossScaleOptimizer, float16), gradviz scales it the same way and unscales the gradients, so they match "
        "training; where it does not (bfloat16, compile(auto_scale_loss=False)), gradients below float16's range "
        "show as 0 here, as they are 0 in training."
    )
    advice = (
        "Unscaled: treat zero or dead figures on these layers with suspicion, or inspect a float32 copy of the "
        "model (keras.mixed_precision.set_global_policy('float32') before building) for exact figures."
    )

    def find(self, evidence: Evidence) -> list[Finding]:
        graph = evidence.graph
        half = sorted(n for n in graph if graph.nodes[n].get("compute_dtype") in ("float16", "bfloat16")
                      and graph.nodes[n].get("trainable_params", 0) > 0)
        if not half:
            return []
        return [self.finding("info", self.message(len(half), evidence.stats.loss_scale), (), evidence.ordered(half))]

    @staticmethod
    def message(layers: int, loss_scale: float | None) -> str:
        """How the losses were scaled, as Keras's training step scales them.

        Example:
            >>> MixedPrecision.message(2, 32768.0)[:64]
            '2 layers compute in float16/bfloat16; each loss was scaled by 32'
        """
        half = f"{plural(layers, 'layer')} {verb(layers, 'computes', 'compute')} in float16/bfloat16"
        if loss_scale is not None:
            return (
                f"{half}; each loss was scaled by {loss_scale:g} before differentiating and the gradients unscaled "
                "after, as Keras's LossScaleOptimizer does (it halves its scale, from 32768 at first, after each step "
                "whose gradients overflow; this is the largest with finite gradients), so small float16 gradients "
                "are not lost"
            )
        return (
            f"{half}; the losses were not scaled (Keras's training step does not scale them: a bfloat16 policy, or "
            "compile(auto_scale_loss=False)), so gradients below float16's range show as 0 (dead) as they would in "
            "training"
        )


@register
class IncompleteGraph(Check):
    kind = "incomplete-graph"
    meaning = (
        "Part of the model is subclassed Python code: per-layer figures are exact, but paths through it are "
        "unknown, so blocked paths cannot be located there."
    )
    advice = "Build that part with the functional API to get the full graph."

    def find(self, evidence: Evidence) -> list[Finding]:
        if evidence.topology.complete:
            return []
        return [self.finding(
            "info",
            evidence.topology.missing
            or "part of the model is subclassed Python code: its layers are listed, but paths through it are unknown",
        )]
