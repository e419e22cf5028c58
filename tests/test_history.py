"""Events between probes (pure NumPy): each begins once, at the probe where it appears."""

from __future__ import annotations

import math
from typing import Any

from gradviz.core.history import FlowHistory, energy_parts, log_values


def rec(epoch: int, norms: dict[str, Any], *, values: dict[str, Any] | None = None,
        findings: list[dict[str, Any]] | None = None, weights: dict[str, float] | None = None) -> dict[str, Any]:
    weights = weights or {n: 1.0 for n in norms}
    values = values or {n: 1.0 for n in norms}
    return {
        "epoch": epoch, "step": 10 * epoch,
        "losses": [{"name": n, "weight": weights[n], "value": values[n]} for n in norms],
        "trunk": {"grad_norm": norms, "share": {n: 1 / len(norms) for n in norms},
                  "cosine": [{"losses": ["C", "D"], "value": 0.5}]},
        "findings": findings or [],
    }


def test_a_head_dying_is_one_event_at_the_probe_it_happens() -> None:
    history = FlowHistory()
    assert history.add(rec(0, {"C": 1.0, "D": 1.0, "E": 1.0})) == []
    events = history.add(rec(1, {"C": 1.0, "D": 0.0, "E": 1.0}))
    assert [(e.kind, e.loss, e.epoch, e.step) for e in events] == [("head-died", "D", 1, 10)]
    assert events[0].message == "loss 'D' stopped reaching the trunk at epoch 1"
    assert history.add(rec(2, {"C": 1.0, "D": 0.0, "E": 1.0})) == []
    # it comes back and dies again: already reported once
    history.add(rec(3, {"C": 1.0, "D": 1.0, "E": 1.0}))
    assert history.add(rec(4, {"C": 1.0, "D": 0.0, "E": 1.0})) == []


def test_a_loss_that_starts_to_dominate() -> None:
    history = FlowHistory(dominated=0.95)
    assert history.add(rec(0, {"C": 1.0, "D": 1.0})) == []
    events = history.add(rec(1, {"C": 10.0, "D": 1.0}))  # 100 / 101 of the energy
    assert [(e.kind, e.loss) for e in events] == [("dominating", "C")]
    assert "99.0%" in events[0].message and "D barely shapes it" in events[0].message
    assert history.add(rec(2, {"C": 20.0, "D": 1.0})) == []


def test_weights_count_in_the_energy() -> None:
    parts = energy_parts(rec(0, {"C": 10.0, "D": 1.0}, weights={"C": 0.1, "D": 1.0}))
    assert parts == {"C": 0.5, "D": 0.5}


def test_nan_appearing_is_an_event_not_a_dead_head() -> None:
    history = FlowHistory()
    history.add(rec(0, {"C": 1.0, "D": 1.0}))
    events = history.add(rec(1, {"C": "nan", "D": 1.0}, values={"C": "nan", "D": 1.0}))
    assert [(e.kind, e.loss) for e in events] == [("nan", "C")]
    assert history.add(rec(2, {"C": "nan", "D": 1.0}, values={"C": "nan", "D": 1.0})) == []


def test_a_dead_head_finding_at_the_first_probe() -> None:
    dead = [{"kind": "dead-head", "losses": ["D"], "severity": "error", "message": "", "layers": []}]
    events = FlowHistory().add(rec(0, {"C": 1.0, "D": 0.0}, findings=dead))
    assert [(e.kind, e.loss) for e in events][0] == ("head-died", "D")
    assert events[0].message == "loss 'D' trains nothing from the first probe (epoch 0)"


def test_log_values_are_weighted_norms_and_the_smallest_cosine() -> None:
    r = rec(0, {"C": 2.0, "D": 4.0}, weights={"C": 0.5, "D": 0.25})
    r["trunk"]["cosine"] = [{"losses": ["C", "D"], "value": -0.5}, {"losses": ["C", "E"], "value": 0.2}]
    logs = log_values(r)
    assert logs["gradviz/C/trunk_grad_norm"] == 1.0 and logs["gradviz/D/trunk_grad_norm"] == 1.0
    assert logs["gradviz/trunk_cosine_min"] == -0.5
    r["trunk"]["cosine"][1]["value"] = "nan"
    assert math.isnan(log_values(r)["gradviz/trunk_cosine_min"])
    assert log_values({**r, "trunk": None}) == {}
