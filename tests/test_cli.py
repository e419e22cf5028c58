"""The gradviz command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gradviz.cli import main

def test_every_command_has_help_with_an_example(cli: Any) -> None:
    assert "Example:" in cli("--help").output
    for name in main.commands:
        result = cli(name, "--help")
        assert result.exit_code == 0 and "Example:" in result.output, name


def test_help_imports_no_tensorflow() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from gradviz.cli import main; "
        "r = CliRunner().invoke(main, ['inspect', '--help']); assert r.exit_code == 0; "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_inspect_prints_the_summary(cli: Any, sample_path: Any) -> None:
    result = cli("inspect", sample_path("stop_gradient_head"), "--batch-size", "8")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "binary_crossentropy" in out and "categorical_crossentropy" in out
    assert "Layers with weights: 4 exclusive" in out
    assert "blocked-path" in out and "stop_gradient" in out


def test_json_only_on_stdout(cli: Any, sample_path: Any) -> None:
    result = cli("inspect", sample_path("shared_trunk"), "--json", "--batch-size", "8")
    report = json.loads(result.stdout)
    assert {"losses", "layers", "variables", "edges", "findings", "timings", "trunk"} <= set(report)
    assert [(l["name"], l["loss"], l["weight"]) for l in report["losses"]] == [
        ("C", "binary_crossentropy", 0.5), ("D", "mse", 0.3),
    ]
    layer = next(l for l in report["layers"] if l["name"] == "A")
    assert layer["status"] == "shared" and layer["reached_by"] == ["C", "D"] and layer["class"] == "Dense"
    assert set(layer["grad_norm"]) == {"C", "D"}
    var = report["variables"][0]
    assert set(var) >= {"path", "layer", "shape", "grad_norm", "combined_grad_norm"}
    assert {"load", "gradients", "graph", "total"} <= set(report["timings"])


def test_output_file_and_overrides(cli: Any, sample_path: Any, tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    result = cli("inspect", sample_path("shared_trunk"), "-o", target, "--loss", "D=mae", "--loss-weight", "D=2",
                 "--batch-size", "8", "--batches", "2", "--seed", "3")
    assert result.exit_code == 0, result.stderr
    report = json.loads(target.read_text())
    assert report["losses"][1] == {**report["losses"][1], "name": "D", "loss": "mae", "weight": 2.0}
    assert report["meta"]["batches"] == 2 and report["meta"]["seed"] == 3
    assert f"wrote {target}" in result.stderr


@pytest.mark.parametrize("sample, level, code", [
    ("stop_gradient_head", "error", 1), ("dead_head", "warning", 1),
    ("chained_sequential", "warning", 0), ("chained_sequential", "error", 0),
])
def test_fail_on(cli: Any, sample_path: Any, sample: str, level: str, code: int) -> None:
    result = cli("inspect", sample_path(sample), "--fail-on", level, "--batch-size", "8")
    assert result.exit_code == code
    if code:
        assert result.stderr.strip().splitlines()[-1].startswith(f"Error: 1 finding of severity {level} or worse")


def test_errors_are_one_line(cli: Any, tmp_path: Path) -> None:
    result = cli("inspect", tmp_path / "nope.keras")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"Error: no such file: {tmp_path / 'nope.keras'} (expected a .keras or .h5 model file)"]


def test_usage_errors_exit_2(cli: Any, sample_path: Any) -> None:
    assert cli("inspect", sample_path("shared_trunk"), "--fail-on", "sometimes").exit_code == 2
