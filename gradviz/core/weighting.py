"""What the loss weights do: what-if scenarios, conflict, and balanced-weight suggestions.

Pure Python and NumPy (no TensorFlow). Gradients are computed once (by
:func:`gradviz.analyze`); every scenario here is the same
:class:`~gradviz.backends.tensorflow.gradient_pass.GradientStats` re-read under other weights through
:func:`gradviz.core.analysis.analyze_stats`. The norm of a weighted sum of
gradients is ``sqrt(w^T G w)`` for the Gram matrix ``G`` of the unweighted
gradients, so a scenario costs milliseconds and gives exactly the figures a
fresh analysis with those weights would give.

This module owns:

* parsing ``--try OUTPUT=W[,OUTPUT=W...]`` and ``--sweep OUTPUT=[log:]START:STOP:STEPS``;
* :func:`explore`: the scenarios (current weights, each try, each sweep point,
  and with ``suggest`` the suggested and alternative starting weights);
* :func:`suggest`: weights under which every loss contributes the same
  gradient norm on a reference layer (the GradNorm target at step 0);
* :meth:`WhatIf.to_dict`: the JSON document of the ``gradviz weights`` command.

A scenario's full report (graph, findings: what a diagram writer takes) is
:meth:`WhatIf.report`, i.e. ``analyze_stats(topology, stats, spec.with_weights(...))``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from gradviz.core.analysis import analyze_stats
from gradviz.core.findings import Dominated, Vanishing, ZeroWeight
from gradviz.core.report import (
    Finding,
    LayerInfo,
    Report,
    finding_figures,
    json_number,
    loss_figures,
    pair_figures,
)
from gradviz.core.spec import parse_assignment, parse_weight
from gradviz.errors import LossSpecError  #: findings whose presence depends on the weights (conflict does not: cosines are of unweighted gradients)
WEIGHT_FINDINGS = (Dominated.kind, Vanishing.kind, ZeroWeight.kind)
#: the most points one ``--sweep`` may ask for
MAX_SWEEP_STEPS = 1000
#: ``--reference`` value meaning all shared layers together
TRUNK = "trunk"

CURRENT = "current"
TRY = "try"
SWEEP = "sweep"
SUGGESTED = "suggested"
INITIAL_LOSS = "initial-loss"
UNCERTAINTY = "uncertainty"


# -- parsing ------------------------------------------------------------------------


def parse_try(text: str, option: str = "--try") -> dict[str, float]:
    """Parse one ``--try``: ``OUTPUT=W``, or several separated by commas.

    Example:
        >>> parse_try("C=1, D=0.2")
        {'C': 1.0, 'D': 0.2}

    Raises:
        LossSpecError: an empty part, a part without ``=``, a weight that is not
            a number >= 0, or an output named twice.
    """
    result: dict[str, float] = {}
    parts = text.split(",")
    for part in parts:
        if not part.strip():
            raise LossSpecError(f"{option} expects OUTPUT=W[,OUTPUT=W...], got {text!r}")
        name, value = parse_assignment(part, option)
        if name in result:
            raise LossSpecError(f"{option} {text!r} sets '{name}' twice")
        result[name] = parse_weight(value, f"{option} {name}")
    return result


@dataclass(frozen=True)
class Sweep:
    """One ``--sweep``: a loss and the weights to try for it (the others keep theirs).

    Attributes:
        loss: the loss (output name, or ``regularization``).
        values: the weights, from START to STOP.
        scale: ``linear`` or ``log``.
        text: the option as given.
    """

    loss: str
    values: tuple[float, ...]
    scale: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"loss": self.loss, "scale": self.scale, "values": list(self.values), "spec": self.text}


def parse_sweep(text: str, option: str = "--sweep") -> Sweep:
    """Parse ``OUTPUT=START:STOP:STEPS`` (linear) or ``OUTPUT=log:START:STOP:STEPS``.

    STEPS points (at least 2) from START to STOP, both included; a log sweep
    spaces them evenly in log scale and needs START and STOP above 0.

    Example:
        >>> parse_sweep("C=0:1:5").values
        (0.0, 0.25, 0.5, 0.75, 1.0)
        >>> [round(v, 6) for v in parse_sweep("D=log:1e-2:1:3").values]
        [0.01, 0.1, 1.0]

    Raises:
        LossSpecError: the range is malformed (missing parts, non-numbers,
            negative bounds, STEPS below 2 or above the limit, START = STOP).
    """
    syntax = f"{option} expects OUTPUT=START:STOP:STEPS or OUTPUT=log:START:STOP:STEPS"
    name, rest = parse_assignment(text, option)
    parts = [p.strip() for p in rest.split(":")]
    scale = "linear"
    if parts and parts[0].lower() in ("log", "lin", "linear"):
        scale = "log" if parts[0].lower() == "log" else "linear"
        parts = parts[1:]
    if len(parts) != 3 or not all(parts):
        raise LossSpecError(f"{syntax}, got {text!r}")
    bounds = []
    for label, part in zip(("START", "STOP"), parts[:2]):
        bounds.append(parse_weight(part, f"{option} {name} {label}"))
    try:
        steps = int(parts[2])
    except ValueError:
        raise LossSpecError(f"{option} {name}: STEPS {parts[2]!r} is not a whole number; {syntax}") from None
    if steps < 2 or steps > MAX_SWEEP_STEPS:
        raise LossSpecError(f"{option} {name}: STEPS must be from 2 to {MAX_SWEEP_STEPS}, got {steps}")
    start, stop = bounds
    if start == stop:
        raise LossSpecError(f"{option} {name}: START and STOP are both {start:g}; give a range")
    if scale == "log":
        if start <= 0 or stop <= 0:
            raise LossSpecError(f"{option} {name}: a log sweep needs START and STOP above 0, got {start:g}:{stop:g}")
        values = np.geomspace(start, stop, steps)
    else:
        values = np.linspace(start, stop, steps)
    return Sweep(name, tuple(float(v) for v in values), scale, text)


def check_names(names: Sequence[str], valid: Sequence[str], option: str) -> None:
    """Reject loss names the model does not have, listing the valid ones.

    Example:
        >>> check_names(["C"], ["C", "D"], "--try")
        >>> check_names(["X"], ["C", "D"], "--try")
        Traceback (most recent call last):
        ...
        gradviz.errors.LossSpecError: --try: 'X' is not a loss of the model; valid: C, D

    Raises:
        LossSpecError: a name is not one of ``valid``.
    """
    for name in names:
        if name not in valid:
            raise LossSpecError(f"{option}: '{name}' is not a loss of the model; valid: {', '.join(valid)}")


# -- scenarios ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """A layer's (or the trunk's) figures under one weighting.

    Attributes:
        combined_grad_norm: ``|sum_k w_k g_k|``; None where no gradient exists.
        share: each loss's share of that gradient (README definition; sums to 1).
        weighted_grad_norm: ``w_k |g_k|`` per loss; None where the gradient does not exist.
    """

    combined_grad_norm: float | None
    share: dict[str, float]
    weighted_grad_norm: dict[str, float | None]

    @classmethod
    def of(cls, info: LayerInfo, weights: Mapping[str, float]) -> Figures:
        """The figures of an analysed layer."""
        return cls(
            info.combined_grad_norm,
            dict(info.share),
            {k: (None if g is None else weights[k] * g) for k, g in info.grad_norm.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form (NaN/Inf as strings, as in the inspect report)."""
        return {
            "combined_grad_norm": json_number(self.combined_grad_norm),
            "share": {k: json_number(v) for k, v in self.share.items()},
            "weighted_grad_norm": {k: json_number(v) for k, v in self.weighted_grad_norm.items()},
        }


@dataclass(frozen=True)
class Scenario:
    """The model's figures under one set of loss weights.

    Attributes:
        label: how to show it (``current``, ``C=1, D=0.2``, ``suggested``...).
        source: ``current``, ``try``, ``sweep``, ``suggested``, ``initial-loss`` or ``uncertainty``.
        weights: every loss's weight (``{loss: w}``, in report order).
        layers: figures of every layer with trainable weights, by layer name.
        trunk: figures of all shared layers together; None without a trunk.
        findings: the findings that depend on the weights (``dominated``, ``vanishing``, ``zero-weight``).
        swept: for a sweep point, ``(loss, weight)``.
    """

    label: str
    source: str
    weights: dict[str, float]
    layers: dict[str, Figures]
    trunk: Figures | None
    findings: tuple[Finding, ...] = ()
    swept: tuple[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "label": self.label,
            "source": self.source,
            "weights": dict(self.weights),
            "swept": {"loss": self.swept[0], "weight": self.swept[1]} if self.swept else None,
            "layers": {name: figures.to_dict() for name, figures in self.layers.items()},
            "trunk": self.trunk.to_dict() if self.trunk else None,
            "findings": [finding_figures(f) for f in self.findings],
        }


def scenario_report(report: Report, weights: Mapping[str, float]) -> Report:
    """The full report of ``report``'s model under other weights, without recomputing gradients.

    Names not in ``weights`` keep their weight. This is what a diagram writer
    takes to draw a scenario (the same picture as ``inspect --loss-weight``).

    Raises:
        LossSpecError: a name is not one of the report's losses.
    """
    check_names(list(weights), report.spec.names, "weights")
    result = analyze_stats(report.topology, report.stats, report.spec.with_weights(weights), model_name=report.model_name)
    result.meta = dict(report.meta)
    return result


def scenario(report: Report, weights: Mapping[str, float], label: str = CURRENT, source: str = CURRENT,
             swept: tuple[str, float] | None = None) -> Scenario:
    """The figures of ``report``'s model when the losses in ``weights`` take those weights.

    Raises:
        LossSpecError: a name is not one of the report's losses.
    """
    analysed = scenario_report(report, weights)
    return _scenario_of(analysed, label, source, swept)


def _scenario_of(analysed: Report, label: str, source: str, swept: tuple[str, float] | None) -> Scenario:
    full = {l.name: l.weight for l in analysed.losses}
    layers = {info.name: Figures.of(info, full) for info in analysed.layers if info.trainable_params > 0}
    trunk = Figures.of(analysed.trunk, full) if analysed.trunk else None
    findings = tuple(f for f in analysed.findings if f.kind in WEIGHT_FINDINGS)
    return Scenario(label, source, full, layers, trunk, findings, swept)


def _try_label(weights: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in weights.items())


# -- suggestions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Alternative:
    """Another scheme's starting weights, for comparison.

    Attributes:
        name: ``initial-loss`` or ``uncertainty``.
        weights: ``{loss: w}`` (all losses), or None when the scheme cannot start here.
        note: what the scheme does and what these weights mean.
    """

    name: str
    weights: dict[str, float] | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"weights": self.weights, "note": self.note}


@dataclass(frozen=True)
class Suggestion:
    """Weights under which every loss contributes the same gradient norm on a reference layer.

    Attributes:
        weights: ``{loss: w}`` for every loss (the unbalanced ones and
            ``regularization`` keep their weight), or None when nothing can be balanced.
        reference_layer: the layer balanced on (``trunk`` for all shared layers), or None.
        balanced_grad_norm: the common ``w_k |g_k|`` on that layer.
        unbalanced: losses kept at their weight, with the reason.
        notes: what the user should know (why there is no suggestion, limits).
        alternatives: other schemes' starting weights (``initial-loss``, ``uncertainty``).
        outputs: the losses balanced (all but ``regularization``).
        compiled: those of them ``compile()`` weighs (what ``loss_weights`` names); None: all of
            ``outputs``. An ``add_loss`` or ``loss_terms`` loss is weighted where it is computed.
    """

    weights: dict[str, float] | None
    reference_layer: str | None
    balanced_grad_norm: float | None = None
    unbalanced: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    alternatives: tuple[Alternative, ...] = ()
    outputs: tuple[str, ...] = ()
    compiled: tuple[str, ...] | None = None

    @property
    def loss_weights_line(self) -> str | None:
        """A line to paste into ``model.compile(...)``.

        Example:
            >>> Suggestion({"C": 0.25, "D": 0.55}, "B", outputs=("C", "D")).loss_weights_line
            'loss_weights={"C": 0.25, "D": 0.55}'
        """
        names = self.outputs if self.compiled is None else self.compiled
        if self.weights is None or not names:
            return None
        items = ", ".join(f"{json.dumps(k)}: {self.weights[k]:.4g}" for k in names)
        return f"loss_weights={{{items}}}"

    @property
    def cli_options(self) -> str | None:
        """The same weights as ``gradviz inspect`` options.

        Example:
            >>> Suggestion({"C": 0.25, "D": 0.55}, "B", outputs=("C", "D")).cli_options
            '--loss-weight C=0.25 --loss-weight D=0.55'
        """
        if self.weights is None:
            return None
        return " ".join(f"--loss-weight {k}={self.weights[k]:.4g}" for k in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the ``suggested`` field)."""
        return {
            "weights": self.weights,
            "reference_layer": self.reference_layer,
            "balanced_grad_norm": json_number(self.balanced_grad_norm),
            "unbalanced": dict(self.unbalanced),
            "notes": list(self.notes),
            "loss_weights": self.loss_weights_line,
            "cli": self.cli_options,
            "alternatives": {a.name: a.to_dict() for a in self.alternatives},
        }


def balance(norms: Mapping[str, float], total: float) -> dict[str, float]:
    """Weights ``w_k`` with ``w_k * norms[k]`` equal for all k and ``sum w_k = total``.

    Example:
        >>> balance({"C": 1.0, "D": 4.0}, 1.0)
        {'C': 0.8, 'D': 0.2}
    """
    inverse = {k: 1.0 / n for k, n in norms.items()}
    scale = total / sum(inverse.values())
    return {k: scale * v for k, v in inverse.items()}


def suggest(report: Report, reference: str | None = None) -> Suggestion:
    """Suggest weights that balance the losses' gradients on a shared layer.

    Every output loss whose gradient on the reference layer exists, is finite
    and nonzero gets ``w_k`` proportional to ``1 / |g_k|``, so that
    ``w_k |g_k|`` is the same for all of them (GradNorm's target at the
    start of training), scaled so that their weights add up to what they add
    up to now. ``regularization`` and the losses that cannot be balanced keep
    their weight.

    Args:
        report: an analysis made by :func:`gradviz.analyze`, or one read back with :meth:`Report.from_json`.
        reference: a shared layer's name, ``trunk`` for all shared layers
            together, or None for the last shared layer (closest to the outputs).

    Returns:
        The suggestion; its ``weights`` is None (and ``notes`` says why) when
        the model has no shared layer or fewer than two losses can be balanced.

    Raises:
        LossSpecError: ``reference`` is not a shared layer.
    """
    current = {l.name: l.weight for l in report.losses}
    outputs = tuple(t.name for t in report.spec.terms if not t.is_regularization)
    compiled = tuple(t.name for t in report.spec.output_terms)
    values = {l.name: l.value for l in report.losses}
    shared = [info for info in report.layers if info.status == "shared"]
    alternatives = _alternatives(current, outputs, values)
    if not shared or report.trunk is None:
        return Suggestion(
            None, None,
            notes=("no layer is shared by two losses (the model has no trunk): each loss trains its own "
                   "layers, so there is no gradient to balance",),
            alternatives=alternatives, outputs=outputs, compiled=compiled,
        )
    if reference is None:
        ref = shared[-1]
        ref_name = ref.name
    elif reference == TRUNK:
        ref, ref_name = report.trunk, TRUNK
    else:
        names = [info.name for info in shared]
        if reference not in names:
            listed = ", ".join(names[-8:]) + (f" (and {len(names) - 8} more)" if len(names) > 8 else "")
            raise LossSpecError(
                f"`reference`: '{reference}' is not a shared layer; valid: '{TRUNK}' or a shared layer: {listed}"
            )
        ref = next(info for info in shared if info.name == reference)
        ref_name = reference

    norms: dict[str, float] = {}
    unbalanced: dict[str, str] = {}
    for name in outputs:
        norm = ref.grad_norm.get(name)
        if norm is None:
            unbalanced[name] = f"its gradient does not reach {_where(ref_name)}: no weight can balance it"
        elif not math.isfinite(norm):
            unbalanced[name] = f"its gradient on {_where(ref_name)} is not finite (NaN/Inf)"
        elif norm <= 0:
            unbalanced[name] = f"its gradient on {_where(ref_name)} is zero: no weight can balance it"
        else:
            norms[name] = norm
    notes: list[str] = []
    if len(norms) < 2:
        notes.append(
            f"fewer than two losses have a usable gradient on {_where(ref_name)}: nothing to balance"
        )
        return Suggestion(None, ref_name, None, unbalanced, tuple(notes), alternatives, outputs, compiled)
    total = sum(current[k] for k in norms)
    if total <= 0:
        total = float(len(norms))
        notes.append("the balanced losses' weights add up to 0 now; the suggestion adds up to 1 per loss")
    weights = dict(current)
    weights.update(balance(norms, total))
    common = next(weights[k] * norms[k] for k in norms)
    zero_now = [k for k in norms if current[k] == 0]
    if zero_now:
        notes.append(f"{', '.join(zero_now)} had weight 0 and {'gets' if len(zero_now) == 1 else 'get'} one here; "
                     f"keep 0 if the loss is meant to be off")
    if report.meta.get("data") == "synthetic":
        notes.append("computed on synthetic data: gradient sizes depend on the data, pass --data for real ones")
    notes.append("balances the start of training only: gradient sizes change as the model trains")
    coded = [k for k in norms if k not in compiled]
    if coded:
        notes.append(
            f"{', '.join(coded)} {'is' if len(coded) == 1 else 'are'} not weighted by compile() (add_loss or a "
            "custom training step's term): multiply by the weight where the loss is computed"
        )
    return Suggestion(weights, ref_name, common, unbalanced, tuple(notes), alternatives, outputs, compiled)


def _where(ref_name: str) -> str:
    return "the trunk" if ref_name == TRUNK else f"layer '{ref_name}'"


def _alternatives(current: Mapping[str, float], outputs: Sequence[str], values: Mapping[str, float]) -> tuple[Alternative, ...]:
    if not outputs:  # only regularization: nothing to weigh
        return ()
    total = sum(current[k] for k in outputs)
    if total <= 0:
        total = float(len(outputs))
    equal = dict(current)
    equal.update({k: total / len(outputs) for k in outputs})
    uncertainty = Alternative(
        UNCERTAINTY, equal,
        "Kendall et al. (2018) learn a log-variance per loss, usually initialised at 0: training starts from "
        "equal weights (here scaled to your total) and adapts them; no gradient balance at the start",
    )
    bad = [k for k in outputs if not (math.isfinite(values[k]) and values[k] > 0)]
    if bad:
        initial = Alternative(
            INITIAL_LOSS, None,
            f"normalising by the initial loss (w_k proportional to 1/L_k(0)) needs positive, finite loss values; "
            f"{', '.join(bad)} {'has' if len(bad) == 1 else 'have'} none",
        )
    else:
        scaled = dict(current)
        scaled.update(balance({k: values[k] for k in outputs}, total))
        initial = Alternative(
            INITIAL_LOSS, scaled,
            "w_k proportional to 1/L_k(0): every weighted loss starts at the same value; balances loss "
            "values, not gradients",
        )
    return (initial, uncertainty)


# -- exploring ----------------------------------------------------------------------------


@dataclass
class WhatIf:
    """The scenarios of one model, computed from one gradient computation.

    Attributes:
        base: the analysis under the current weights (it carries the statistics).
        scenarios: current weights first, then each try, each sweep point, then
            (with a suggestion) the suggested and alternative starting weights.
        tries: how many tries there are.
        sweeps: the sweeps asked for.
        suggestion: the balanced weights, when asked for.
    """

    base: Report
    scenarios: list[Scenario]
    tries: int = 0
    sweeps: list[Sweep] = field(default_factory=list)
    suggestion: Suggestion | None = None

    @property
    def loss_names(self) -> list[str]:
        """The losses, in report order."""
        return [l.name for l in self.base.losses]

    @property
    def colors(self) -> dict[str, str]:
        """Each loss's colour, as the analysis assigned it (the diagram legend's)."""
        return {l.name: l.color for l in self.base.losses}

    @property
    def shared_layers(self) -> list[str]:
        """The layers two or more losses train, in topological order (the trunk)."""
        return [info.name for info in self.base.layers if info.status == "shared"]

    def sweep_scenarios(self, sweep: Sweep) -> list[Scenario]:
        """The scenarios of one sweep, in sweep order."""
        start = 1 + self.tries
        for other in self.sweeps:
            if other is sweep:
                return self.scenarios[start:start + len(sweep.values)]
            start += len(other.values)
        raise KeyError(sweep.text)

    def report(self, scenario: Scenario | Mapping[str, float]) -> Report:
        """The full report (graph, findings) of a scenario or of ``{loss: weight}``."""
        weights = scenario.weights if isinstance(scenario, Scenario) else scenario
        return scenario_report(self.base, weights)

    def conflict(self) -> dict[str, Any]:
        """Cosine and magnitude similarity of every pair of losses on the trunk and each shared layer.

        They compare unweighted gradients, so they do not depend on the weights.
        """
        trunk = self.base.trunk
        return {
            "trunk": pair_figures(trunk) if trunk else None,
            "layers": {info.name: pair_figures(info) for info in self.base.layers if info.status == "shared"},
            "findings": [finding_figures(f) for f in self.base.findings if f.kind == "conflict"],
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON document of ``gradviz weights`` (contract in the README)."""
        return {
            "model": self.base.model_name,
            "losses": [loss_figures(l) for l in self.base.losses],
            "shared_layers": self.shared_layers,
            "conflict": self.conflict(),
            "scenarios": [s.to_dict() for s in self.scenarios],
            "sweeps": [s.to_dict() for s in self.sweeps],
            "suggested": self.suggestion.to_dict() if self.suggestion else None,
            "meta": self.base.meta,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The JSON document as text."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def explore(
    report: Report,
    *,
    tries: Sequence[Mapping[str, float]] = (),
    sweeps: Sequence[Sweep] = (),
    suggest_weights: bool = False,
    reference: str | None = None,
) -> WhatIf:
    """Every scenario asked for, from the statistics ``report`` carries.

    Args:
        report: an analysis made by :func:`gradviz.analyze` or read back with :meth:`Report.from_json`
            (under the current weights).
        tries: weight assignments (``{loss: w}``; other losses keep their weight), one scenario each.
        sweeps: weights to sweep one loss through, one scenario per point.
        suggest_weights: also compute :func:`suggest` and add its scenarios.
        reference: the layer :func:`suggest` balances on.

    Raises:
        LossSpecError: a try or sweep names a loss the model does not have,
            or ``reference`` is not a shared layer.

    Typical use: ``explore(gradviz.analyze("model.keras"), tries=[{"C": 1.0}], suggest_weights=True)``.
    """
    if reference is not None and not suggest_weights:
        raise LossSpecError("`reference` only applies with `suggest_weights=True`")
    names = report.spec.names
    for weights in tries:
        check_names(list(weights), names, "`tries`")
    for sweep in sweeps:
        check_names([sweep.loss], names, "`sweeps`")
    suggestion = suggest(report, reference) if suggest_weights else None

    scenarios = [_scenario_of(report, CURRENT, CURRENT, None)]
    for weights in tries:
        scenarios.append(scenario(report, weights, _try_label(weights), TRY))
    for sweep in sweeps:
        for value in sweep.values:
            scenarios.append(scenario(report, {sweep.loss: value}, f"{sweep.loss}={value:.4g}", SWEEP,
                                      (sweep.loss, value)))
    if suggestion is not None:
        if suggestion.weights is not None:
            scenarios.append(scenario(report, suggestion.weights, SUGGESTED, SUGGESTED))
        for alternative in suggestion.alternatives:
            if alternative.weights is not None:
                scenarios.append(scenario(report, alternative.weights, alternative.name, alternative.name))
    return WhatIf(report, scenarios, len(tries), list(sweeps), suggestion)
