"""Gradient flow over time: the training monitor's per-probe records and the events between them.

A *record* is one line of the monitor's history file: ``epoch`` (epochs
completed), ``step`` (training steps completed) and the report's ``losses``,
``layers``, ``trunk`` and ``findings`` in the ``inspect --json`` schema, plus
the ``events`` that began at that probe. NumPy only: the timeline and any
notebook read the file back without TensorFlow.

The monitor's trunk is fixed by the graph for the whole run: the layers that
two or more output losses' gradients can reach (their gradients exist, zero or
not). The report's own ``trunk`` counts only layers reached with a non-zero
gradient, so it would shrink when a head dies; the fixed one shows the dead
head's norm falling to 0 instead.

Events compare consecutive records, each kind once per loss:

* ``head-died``: a loss's gradient on the trunk was non-zero and is now
  exactly zero, or a ``dead-head`` finding appears for it;
* ``dominating``: a loss's part of the weighted gradient energy on the trunk,
  ``(w_k |g_k|)^2 / sum_j (w_j |g_j|)^2``, reaches the ``dominated`` threshold;
* ``nan``: a loss value or trunk gradient becomes NaN/Inf, or a
  ``nan-gradient`` finding appears for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from gradviz.core.analysis import group_info
from gradviz.core.report import LayerInfo, Report, finding_figures, layer_figures, loss_figures

#: the prefix of every key the monitor adds to Keras's logs
LOG_PREFIX = "gradviz/"
EVENT_KINDS = ("head-died", "dominating", "nan")
#: the record fields taken from the report, as ``inspect --json`` names them
REPORT_FIELDS = ("losses", "layers", "trunk", "findings")


@dataclass(frozen=True)
class Event:
    """Something that began at one probe.

    Attributes:
        kind: ``head-died``, ``dominating`` or ``nan``.
        loss: the loss it concerns.
        epoch: epochs completed at the probe.
        step: training steps completed at the probe.
        message: one line for the user.
    """

    kind: str
    loss: str
    epoch: int
    step: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        """The event as the history file and ``timeline --json`` write it."""
        return {"kind": self.kind, "loss": self.loss, "epoch": self.epoch, "step": self.step, "message": self.message}


def trunk_layers(report: Report) -> list[str]:
    """The layers with weights that the gradients of two or more output losses reach (exist on), in graph order.

    Fixed by the graph: the same at every probe of a model.
    """
    if report.stats is None or report.topology is None:
        raise ValueError("the report keeps no gradient statistics")
    stats = report.stats
    outputs = [k for k, name in enumerate(stats.loss_names) if any(l.name == name and l.output for l in report.losses)]
    reaching: dict[str, set[int]] = {}
    for v, info in enumerate(report.topology.variables):
        reaching.setdefault(info.layer, set()).update(k for k in outputs if stats.exists[v, k])
    order = {name: i for i, name in enumerate(report.topology.layer_names)}
    return sorted((layer for layer, ks in reaching.items() if len(ks) >= 2), key=lambda n: order.get(n, len(order)))


def record(report: Report, trunk: Sequence[str], *, epoch: int, step: int) -> dict[str, Any]:
    """One history line (without ``events``): the report's figures with the fixed trunk's.

    Args:
        report: the probe's report.
        trunk: the fixed trunk (:func:`trunk_layers` of the first probe).
        epoch: epochs completed.
        step: training steps completed.
    """
    fixed: LayerInfo | None = group_info(report, "(trunk)", list(trunk)) if trunk else None
    return {
        "epoch": epoch,
        "step": step,
        "losses": [loss_figures(l) for l in report.losses],
        "layers": [layer_figures(info) for info in report.layers],
        "trunk": layer_figures(fixed) if fixed is not None else None,
        "findings": [finding_figures(f) for f in report.findings],
    }


def number(x: Any) -> float:
    """A JSON figure as a float: ``"nan"``/``"inf"`` strings as such, None as NaN.

    Example:
        >>> number(0.5), number("inf"), math.isnan(number(None))
        (0.5, inf, True)
    """
    if x is None:
        return math.nan
    return float(x)


def weighted_trunk_norms(rec: Mapping[str, Any]) -> dict[str, float]:
    """Each loss's weighted gradient norm on the trunk, ``w_k |g_k|`` (empty without a trunk).

    Example:
        >>> weighted_trunk_norms({"losses": [{"name": "C", "weight": 0.5}],
        ...                       "trunk": {"grad_norm": {"C": 2.0}}})
        {'C': 1.0}
    """
    trunk = rec.get("trunk")
    if not trunk:
        return {}
    weights = {l["name"]: float(l["weight"]) for l in rec["losses"]}
    return {name: weights[name] * number(norm) for name, norm in trunk["grad_norm"].items() if norm is not None}


def energy_parts(rec: Mapping[str, Any]) -> dict[str, float]:
    """Each loss's part of the weighted gradient energy on the trunk (what ``dominated`` judges).

    Example:
        >>> energy_parts({"losses": [{"name": "C", "weight": 1.0}, {"name": "D", "weight": 1.0}],
        ...               "trunk": {"grad_norm": {"C": 3.0, "D": 4.0}}})
        {'C': 0.36, 'D': 0.64}
    """
    norms = weighted_trunk_norms(rec)
    total = sum(n * n for n in norms.values())
    if not math.isfinite(total) or total <= 0:
        return {name: (math.nan if not math.isfinite(total) else 0.0) for name in norms}
    return {name: n * n / total for name, n in norms.items()}


def log_values(rec: Mapping[str, Any]) -> dict[str, float]:
    """The keys the monitor adds to Keras's logs from one record.

    ``gradviz/<loss>/trunk_grad_norm`` (weighted), ``gradviz/<loss>/trunk_share``, and
    ``gradviz/trunk_cosine_min`` when two or more losses reach the trunk.

    Example:
        >>> rec = {"losses": [{"name": "C", "weight": 0.5}, {"name": "D", "weight": 1.0}],
        ...        "trunk": {"grad_norm": {"C": 2.0, "D": 1.0}, "share": {"C": 0.5, "D": 0.5},
        ...                  "cosine": [{"losses": ["C", "D"], "value": -0.25}]}}
        >>> log_values(rec)["gradviz/C/trunk_grad_norm"], log_values(rec)["gradviz/trunk_cosine_min"]
        (1.0, -0.25)
    """
    trunk = rec.get("trunk")
    if not trunk:
        return {}
    logs: dict[str, float] = {}
    for name, norm in weighted_trunk_norms(rec).items():
        logs[f"{LOG_PREFIX}{name}/trunk_grad_norm"] = norm
        logs[f"{LOG_PREFIX}{name}/trunk_share"] = number(trunk["share"].get(name, 0.0))
    cosines = [number(p["value"]) for p in trunk.get("cosine", [])]
    if cosines:
        logs[f"{LOG_PREFIX}trunk_cosine_min"] = min(cosines)  # NaN if one is NaN: the flow is broken
        if any(math.isnan(c) for c in cosines):
            logs[f"{LOG_PREFIX}trunk_cosine_min"] = math.nan
    return logs


class FlowHistory:
    """The events between consecutive records; each kind is reported once per loss.

    Args:
        dominated: the energy part at which a loss dominates the trunk (``Thresholds.dominated``).

    Example:
        >>> h = FlowHistory()
        >>> rec = lambda e, c: {"epoch": e, "step": e, "losses": [{"name": "C", "weight": 1.0, "value": 1.0},
        ...     {"name": "D", "weight": 1.0, "value": 1.0}], "findings": [],
        ...     "trunk": {"grad_norm": {"C": c, "D": 1.0}}}
        >>> h.add(rec(1, 1.0)), [e.message for e in h.add(rec(2, 0.0))][0]
        ([], "loss 'C' stopped reaching the trunk at epoch 2")
    """

    def __init__(self, dominated: float = 0.95) -> None:
        self.dominated = dominated
        self.previous: Mapping[str, Any] | None = None
        self.reported: set[tuple[str, str]] = set()

    def add(self, rec: Mapping[str, Any]) -> list[Event]:
        """The events that begin at ``rec`` (compared with the record before it)."""
        found = [e for e in self._changes(self.previous, rec) if (e.kind, e.loss) not in self.reported]
        self.reported.update((e.kind, e.loss) for e in found)
        self.previous = rec
        return found

    def _changes(self, before: Mapping[str, Any] | None, now: Mapping[str, Any]) -> list[Event]:
        epoch, step = int(now["epoch"]), int(now.get("step") or 0)
        found: list[Event] = []

        def event(kind: str, loss: str, message: str) -> None:
            if not any(e.kind == kind and e.loss == loss for e in found):
                found.append(Event(kind, loss, epoch, step, message))

        names = [l["name"] for l in now["losses"]]
        norms_now = (now.get("trunk") or {}).get("grad_norm", {})
        norms_before = (before.get("trunk") or {}).get("grad_norm", {}) if before else {}
        # NaN first: a NaN gradient is not a dead head
        values_before = {l["name"]: number(l["value"]) for l in before["losses"]} if before else {}
        nan_found = _finding_losses(now, "nan-gradient")
        nan_before = _finding_losses(before, "nan-gradient") if before else set()
        for l in now["losses"]:
            name = l["name"]
            bad_now = not math.isfinite(number(l["value"])) or name in nan_found or (
                name in norms_now and norms_now[name] is not None and not math.isfinite(number(norms_now[name])))
            bad_before = before is not None and (
                not math.isfinite(values_before.get(name, 0.0)) or name in nan_before
                or (norms_before.get(name) is not None and not math.isfinite(number(norms_before[name]))))
            if bad_now and not bad_before:
                event("nan", name, f"loss '{name}': NaN/Inf appeared at epoch {epoch} (value {number(l['value'])})")
        dead_now = _finding_losses(now, "dead-head")
        dead_before = _finding_losses(before, "dead-head") if before else set()
        for name in names:
            if any(e.kind == "nan" and e.loss == name for e in found) or name in nan_found:
                continue
            was, now_norm = norms_before.get(name), norms_now.get(name)
            if was is not None and now_norm is not None and number(was) > 0 and number(now_norm) == 0:
                event("head-died", name, f"loss '{name}' stopped reaching the trunk at epoch {epoch}")
            elif name in dead_now and name not in dead_before:
                when = f"at epoch {epoch}" if before is not None else f"from the first probe (epoch {epoch})"
                event("head-died", name, f"loss '{name}' trains nothing {when}")
        parts_now = energy_parts(now)
        parts_before = energy_parts(before) if before else {}
        if len(parts_now) >= 2:
            for name, part in parts_now.items():
                if part >= self.dominated and not parts_before.get(name, 0.0) >= self.dominated:
                    others = ", ".join(n for n in parts_now if n != name)
                    event("dominating", name,
                          f"loss '{name}' started to dominate the trunk at epoch {epoch} ({part:.1%} of the "
                          f"weighted gradient energy; {others} barely {'shapes' if len(parts_now) == 2 else 'shape'} it)")
        return found


def _finding_losses(rec: Mapping[str, Any] | None, kind: str) -> set[str]:
    if not rec:
        return set()
    return {name for f in rec.get("findings", []) if f["kind"] == kind for name in f["losses"][:1]}
