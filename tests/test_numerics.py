"""Numerical trouble is a finding, not a crash.

NaN or Inf in a loss or a gradient becomes a ``nan-gradient`` finding naming
the loss and the layers; the rest of the report (the other losses' figures)
is still produced, and the JSON report stays valid JSON (non-finite numbers
as the strings "nan" / "inf").
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import keras
import pytest
from keras import layers, ops

import gradviz
import robust_models as rm


def strict_json(text: str) -> Any:
    """Parse JSON that must not contain NaN/Infinity tokens (which are not JSON)."""
    def refuse(token: str) -> Any:
        raise ValueError(f"non-JSON number {token} in the report")

    return json.loads(text, parse_constant=refuse)


def log_of_zero() -> keras.Model:
    """Head D computes log(0) = -inf in its forward pass; head C is healthy."""
    keras.utils.set_random_seed(0)
    x = keras.Input((3,), name="features")
    trunk = layers.Dense(4, activation="relu", name="trunk")(x)
    c = layers.Dense(1, activation="sigmoid", name="C")(trunk)
    broken = ops.log(ops.relu(trunk) * 0.0)
    d = layers.Dense(1, name="D")(layers.Dense(4, name="mid")(broken))
    model = keras.Model(x, [c, d], name="log_of_zero")
    model.compile(optimizer="sgd", loss=["binary_crossentropy", "mse"])
    return model


def exploding() -> keras.Model:
    """Head A goes through two Dense layers with kernels of 1e20: float32 overflows to Inf."""
    keras.utils.set_random_seed(0)
    x = keras.Input((3,), name="features")
    huge = keras.initializers.Constant(1e20)
    h = layers.Dense(4, kernel_initializer=huge, name="big1")(x)
    h = layers.Dense(4, kernel_initializer=huge, name="big2")(h)
    a = layers.Dense(1, name="A")(h)
    b = layers.Dense(1, name="B")(layers.Dense(4, name="small")(x))
    model = keras.Model(x, [a, b], name="exploding")
    model.compile(optimizer="sgd", loss="mse")
    return model


def sqrt_at_zero() -> keras.Model:
    """The loss value is finite (sqrt(0) = 0) but its gradient is not (d sqrt/dx at 0 is Inf; Inf * 0 = NaN)."""
    keras.utils.set_random_seed(0)
    x = keras.Input((3,), name="features")
    trunk = layers.Dense(4, name="trunk")(x)
    y = layers.Dense(1, name="out")(ops.sqrt(ops.relu(trunk) * 0.0))
    model = keras.Model(x, y, name="sqrt_at_zero")
    model.compile(optimizer="sgd", loss="mse")
    return model


def nan_findings(report: Any) -> list[Any]:
    return [f for f in report.findings if f.kind == "nan-gradient"]


def test_log_of_zero_is_a_finding_and_the_rest_is_reported() -> None:
    report = gradviz.analyze(log_of_zero(), batch_size=4)
    [finding] = nan_findings(report)
    assert finding.severity == "error"
    assert finding.losses == ("D",)
    assert finding.layers == ("D", "mid", "trunk")  # closest to the output first
    assert "loss 'D'" in finding.message and "start at layer 'D'" in finding.message
    assert "reach back to 'trunk'" in finding.message
    data = strict_json(report.to_json())
    losses = {entry["name"]: entry for entry in data["losses"]}
    assert math.isfinite(losses["C"]["value"])
    assert losses["D"]["value"] in ("nan", "inf", "-inf")
    by_name = {layer["name"]: layer for layer in data["layers"]}
    # the healthy head is analysed as usual ...
    assert isinstance(by_name["C"]["grad_norm"]["C"], float) and by_name["C"]["grad_norm"]["C"] > 0
    assert isinstance(by_name["trunk"]["grad_norm"]["C"], float) and by_name["trunk"]["grad_norm"]["C"] > 0
    # ... and a NaN gradient reaches its layers: they are not reported as "dead"
    assert by_name["trunk"]["grad_norm"]["D"] == "nan"
    assert by_name["trunk"]["reached_by"] == ["C", "D"]
    assert by_name["mid"]["status"] == "exclusive"
    assert not [f for f in report.findings if f.kind in ("dead-layer", "dead-head")]
    assert data["trunk"]["combined_grad_norm"] == "nan"
    assert set(data["trunk"]["share"].values()) == {"nan"}


def test_exploding_layer_is_a_finding() -> None:
    report = gradviz.analyze(exploding(), batch_size=4)
    [finding] = nan_findings(report)
    assert finding.losses == ("A",)
    assert set(finding.layers) == {"A", "big2", "big1"}
    data = strict_json(report.to_json())
    losses = {entry["name"]: entry for entry in data["losses"]}
    assert losses["A"]["value"] in ("nan", "inf")
    assert math.isfinite(losses["B"]["value"])
    by_name = {layer["name"]: layer for layer in data["layers"]}
    assert by_name["small"]["status"] == "exclusive" and by_name["small"]["share"] == {"B": 1.0}


def test_finite_loss_with_nan_gradient() -> None:
    report = gradviz.analyze(sqrt_at_zero(), batch_size=4)
    [finding] = nan_findings(report)
    assert "its value is finite" in finding.message
    assert "trunk" in finding.layers
    strict_json(report.to_json())


def test_nan_model_through_the_cli(cli: Any, tmp_path: Path) -> None:
    """Saved, reloaded and run by the CLI: exit 0 (a report), valid JSON, the finding in it."""
    path = rm.save(log_of_zero(), tmp_path / "log_of_zero.keras")
    result = cli("inspect", path, "--batch-size", "4", "--json")
    assert result.exit_code == 0, result.stderr
    data = strict_json(result.stdout)
    assert [f["kind"] for f in data["findings"] if f["severity"] == "error"] == ["nan-gradient"]
    failing = cli("inspect", path, "--batch-size", "4", "--fail-on", "error")
    assert failing.exit_code == 1
    assert "nan-gradient" in failing.stdout
    assert failing.stderr.strip().splitlines()[-1].startswith("Error: 1 finding of severity error")


@pytest.mark.parametrize("value, text", [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf"), (1.5, 1.5)])
def test_non_finite_numbers_become_strings(value: float, text: Any) -> None:
    from gradviz.core.report import json_number

    assert json_number(value) == text
