"""The report: what the analysis found, as plain data with one JSON form.

:class:`Report` holds the losses, the layers with their per-loss figures, the
variables, the findings and the annotated graph; :meth:`Report.to_dict` is the
documented JSON contract and :meth:`Report.from_dict` reads it back, so any
output can be drawn again from a saved report without TensorFlow.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import networkx as nx

from gradviz.core.graph import Topology
from gradviz.core.spec import LossSpec, loss_source
from gradviz.core.stats import GradientStats

SEVERITIES = ("info", "warning", "error")



STATUSES = ("shared", "exclusive", "dead", "unreached", "no-trainable-weights")



LOSS_NODE_PREFIX = "loss:"



@dataclass(frozen=True)
class LossInfo:
    """A loss as the report shows it.

    ``output`` is the output the loss applies to; for an ``add_loss`` term the layer that adds
    it; None for regularization and ``loss_terms``. :attr:`source` follows from it and ``loss``.
    """

    name: str
    loss: str
    weight: float
    value: float
    output: str | None
    color: str = ""

    @property
    def source(self) -> str:
        """``compile``, ``add_loss``, ``loss_terms`` or ``regularization`` (:func:`~gradviz.core.spec.loss_source`)."""
        return loss_source(self.output, self.loss)



@dataclass(frozen=True)
class Pair:
    """A figure about two losses on one layer."""

    losses: tuple[str, str]
    cosine: float
    magnitude_similarity: float



@dataclass(frozen=True)
class LayerInfo:
    """A graph node (layer, operation, input) with its per-loss figures."""

    name: str
    class_name: str
    kind: str
    parent: str
    trainable_params: int
    grad_norm: dict[str, float | None]
    combined_grad_norm: float | None
    reached_by: tuple[str, ...]
    status: str
    share: dict[str, float]
    pairs: tuple[Pair, ...]
    output_shape: str



@dataclass(frozen=True)
class VariableInfo:
    """A trainable variable with its per-loss figures."""

    path: str
    layer: str
    shape: tuple[int, ...]
    grad_norm: dict[str, float | None]
    combined_grad_norm: float | None



@dataclass(frozen=True)
class Finding:
    """Something the user should know, with the losses and layers it concerns.

    Attributes:
        kind: the finding kind (see :data:`gradviz.core.findings.REGISTRY`).
        severity: ``info``, ``warning`` or ``error``.
        message: one line for the user.
        losses: the losses it concerns.
        layers: the layers it concerns.
        blockers: for a blocked path, the operations where the gradient stops (also in ``layers``).
    """

    kind: str
    severity: str
    message: str
    losses: tuple[str, ...] = ()
    layers: tuple[str, ...] = ()
    blockers: tuple[str, ...] = ()



@dataclass
class Report:
    """The analysis of one model under one weighting.

    ``graph`` is the networkx graph (layers, operations and one node per loss,
    named ``loss:<name>``) with every figure as node attributes. ``timings`` is
    seconds per stage: ``load``, ``graph``, ``gradients`` (the whole gradient
    pass, first-call trace included), ``analysis`` and ``total``; stages run
    afterwards (``render``) are added with :meth:`add_timing`.

    ``stats``, ``topology`` and ``spec`` are what the figures were computed
    from (the per-variable gradient statistics, the walked model, the loss
    spec): a diagram's grouped boxes and every weight scenario are computed from
    them. A report always has them, whether made by the analysis or read back
    with :meth:`from_json`. ``command`` is the gradviz command line that made
    the report (None from the Python API); the HTML report shows it.
    """

    model_name: str
    losses: list[LossInfo]
    layers: list[LayerInfo]
    variables: list[VariableInfo]
    edges: list[tuple[str, str]]
    findings: list[Finding]
    graph: nx.DiGraph
    trunk: LayerInfo | None
    meta: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    stats: GradientStats = field(kw_only=True, repr=False)
    topology: Topology = field(kw_only=True, repr=False)
    spec: LossSpec = field(kw_only=True, repr=False)
    command: str | None = field(default=None, kw_only=True)

    def add_timing(self, stage: str, seconds: float) -> None:
        """Record a stage run after :func:`gradviz.analyze` (``render`` when diagrams are written).

        ``total`` grows by the same amount, so it stays the wall time of everything timed.

        Example:
            >>> import networkx as nx, numpy as np
            >>> from gradviz.core.graph import Topology
            >>> from gradviz.core.spec import LossSpec
            >>> from gradviz.core.stats import GradientStats
            >>> none = np.zeros((0, 0))
            >>> stats = GradientStats((), np.zeros((0, 0, 0)), none > 0, none, none == 0, np.zeros(0), 1, "mean-gradient")
            >>> r = Report("m", [], [], [], [], [], nx.DiGraph(), None, timings={"load": 1.0, "total": 2.0},
            ...            stats=stats, topology=Topology(nx.DiGraph(), {}, {}, ()), spec=LossSpec(()))
            >>> r.add_timing("render", 0.5)
            >>> r.timings
            {'load': 1.0, 'total': 2.5, 'render': 0.5}
        """
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds
        self.timings["total"] = self.timings.get("total", 0.0) + seconds

    def layer(self, name: str) -> LayerInfo:
        """The layer called ``name``."""
        for info in self.layers:
            if info.name == name:
                return info
        raise KeyError(name)

    def findings_of(self, kind: str) -> list[Finding]:
        """The findings of one kind."""
        return [f for f in self.findings if f.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        """The JSON report as plain Python data (the documented contract).

        ``format_version`` first; after the figures, the keys that let the report
        be drawn again (:mod:`gradviz.core.report_json`): ``command``, ``spec``,
        ``topology``, ``statistics`` and ``annotations``.
        """
        from gradviz.core.report_json import FORMAT_VERSION, saved_inputs

        return {
            "format_version": FORMAT_VERSION,
            "model": self.model_name,
            "losses": [loss_figures(l) for l in self.losses],
            "layers": [_layer_dict(info) for info in self.layers],
            "trunk": _layer_dict(self.trunk) if self.trunk else None,
            "variables": [
                {
                    "path": v.path,
                    "layer": v.layer,
                    "shape": list(v.shape),
                    "grad_norm": {k: json_number(x) for k, x in v.grad_norm.items()},
                    "combined_grad_norm": json_number(v.combined_grad_norm),
                }
                for v in self.variables
            ],
            "edges": [{"source": s, "target": t} for s, t in self.edges],
            "findings": [finding_figures(f) for f in self.findings],
            "meta": self.meta,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            **saved_inputs(self),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The JSON report as text."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> Report:
        """The report whose JSON data (:meth:`to_dict`) is ``data``, complete enough to draw every output again.

        Needs no TensorFlow: diagrams, HTML, GraphML, the terminal summary and
        weight scenarios of the result are byte-identical to those of the report
        that was saved (see :func:`gradviz.core.report_json.report_from_dict`).

        Raises:
            ReportError: not a gradviz report, another format version, or damaged.
        """
        from gradviz.core.report_json import report_from_dict

        return report_from_dict(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> Report:
        """The report whose JSON text (:meth:`to_json`, ``gradviz inspect --json``) is ``text``.

        Raises:
            ReportError: not JSON, not a gradviz report, another format version, or damaged.
        """
        from gradviz.core.report_json import report_from_json

        return report_from_json(text)


    # Notebook display: thin, lazy delegates to gradviz.output.notebook (the report stays plain data).

    def __repr__(self) -> str:
        from gradviz.output.notebook import short_repr

        return short_repr(self)

    def _repr_html_(self) -> str:
        """The inline notebook view: diagram (SVG), losses with trunk shares, findings."""
        from gradviz.output.notebook import report_html

        return report_html(self)

    def plot(self) -> Any:
        """Each loss's gradient norm per layer as grouped bars (a ``matplotlib.figure.Figure``)."""
        from gradviz.output.notebook import plot

        return plot(self)

    def diagram(self, **options: Any) -> Any:
        """The diagram as a ``graphviz.Source`` (renders inline); ``options`` are ``RenderOptions`` fields."""
        from gradviz.output.notebook import diagram_source

        return diagram_source(self, **options)

    def to_svg(self, **options: Any) -> str:
        """The diagram as SVG text (needs Graphviz's ``dot``); ``options`` are ``RenderOptions`` fields."""
        from gradviz.output.notebook import diagram_svg, render_options

        return diagram_svg(self, render_options(**options))



def finding_figures(finding: Finding) -> dict[str, Any]:
    """A finding as the JSON report lists it."""
    return {"kind": finding.kind, "severity": finding.severity, "message": finding.message,
            "losses": list(finding.losses), "layers": list(finding.layers)}



def loss_figures(loss: LossInfo) -> dict[str, Any]:
    """A loss as the JSON report lists it."""
    return {"name": loss.name, "loss": loss.loss, "weight": loss.weight, "value": json_number(loss.value),
            "output": loss.output, "color": loss.color}



def json_number(x: float | None) -> float | str | None:
    """JSON-safe number: NaN and Inf become strings, since JSON has no such numbers.

    Example:
        >>> json_number(float("nan")), json_number(1), json_number(None)
        ('nan', 1.0, None)
    """
    if x is None:
        return None
    if math.isnan(x) or math.isinf(x):
        return str(x)
    return float(x)



def layer_figures(info: LayerInfo) -> dict[str, Any]:
    """A layer (or the trunk) as the JSON report lists it."""
    return _layer_dict(info)



def _layer_dict(info: LayerInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "class": info.class_name,
        "kind": info.kind,
        "parent": info.parent or None,
        "output_shape": info.output_shape,
        "trainable_params": info.trainable_params,
        "grad_norm": {k: json_number(x) for k, x in info.grad_norm.items()},
        "combined_grad_norm": json_number(info.combined_grad_norm),
        "reached_by": list(info.reached_by),
        "status": info.status,
        "share": {k: json_number(x) for k, x in info.share.items()},
        **pair_figures(info),
    }



def pair_figures(info: LayerInfo) -> dict[str, Any]:
    """A layer's loss-pair figures as JSON: ``cosine`` and ``magnitude_similarity`` lists."""
    return {
        "cosine": [{"losses": list(p.losses), "value": json_number(p.cosine)} for p in info.pairs],
        "magnitude_similarity": [
            {"losses": list(p.losses), "value": json_number(p.magnitude_similarity)} for p in info.pairs
        ],
    }



def loss_node(name: str, graph: nx.DiGraph | None = None) -> str:
    """The graph node of a loss: ``loss:<name>`` (suffixed if a layer has that name).

    Example:
        >>> loss_node("C")
        'loss:C'
    """
    node = f"{LOSS_NODE_PREFIX}{name}"
    while graph is not None and node in graph and graph.nodes[node].get("kind") != "loss":
        node += "_"
    return node



def severity_at_least(findings: Sequence[Finding], level: str) -> list[Finding]:
    """The findings of severity ``level`` or worse.

    Example:
        >>> fs = [Finding("a", "info", ""), Finding("b", "error", "")]
        >>> [f.kind for f in severity_at_least(fs, "warning")]
        ['b']
    """
    rank = SEVERITIES.index(level)
    return [f for f in findings if SEVERITIES.index(f.severity) >= rank]
