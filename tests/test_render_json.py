"""A saved JSON report drawn again: ``Report.from_json`` and ``gradviz render``.

Every output of a report read back from its JSON must be byte-identical to the
output of the analysis that wrote it (DOT in every option combination of the
golden tests, HTML, GraphML, the terminal summary, weight scenarios), and
reading it back must work where TensorFlow and Keras cannot be imported.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradviz
import robust_models as rm
from gradviz.core import weighting
from gradviz.core.analysis import analyze_stats
from gradviz.core.graph import Topology, VariableInfo
from gradviz.core.report import Report
from gradviz.core.report_json import FORMAT_VERSION, statistics_dict
from gradviz.core.spec import LossSpec, LossTerm
from gradviz.core.stats import GradientStats
from gradviz.errors import ReportError
from gradviz.output.diagram import RenderOptions, build_dot
from gradviz.output.graphml import to_graphml
from gradviz.output.html import build_html
from gradviz.output.text import summary
from test_bad_input import assert_one_error
from test_render import sample_report

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted(p.stem for p in (ROOT / "samples").glob("*.keras"))
NESTED = "nested_stop_gradient"
MODELS = [*SAMPLES, NESTED]

#: the option combinations of tests/test_render.py's golden tests
GOLDEN_OPTIONS = [
    RenderOptions(),
    RenderOptions(show_norms=True, show_shapes=True, rankdir="LR"),
    RenderOptions(show_norms=True),
    RenderOptions(compact=True),
    RenderOptions(expand_nested=False, show_norms=True),
]
#: what the CLI tests pass for each combination
GOLDEN_FLAGS = [[], ["--show-norms", "--show-shapes", "--rankdir", "LR"], ["--show-norms"], ["--compact"],
                ["--collapse-nested", "--show-norms"]]

BLOCK_FRAMEWORKS = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('tensorflow', 'keras', 'jax', 'tf_keras'):\n"
    "            raise ImportError('blocked: ' + name)\n"
    "sys.meta_path.insert(0, Block())\n"
)


def nested_stop_gradient() -> Any:
    """A nested encoder shared by two heads, one of them behind ops.stop_gradient; a regularizer and an
    output without a loss, so that every part of the saved report is exercised."""
    import keras
    from keras import layers, ops

    keras.utils.set_random_seed(0)
    inp = keras.Input((12,), name="features")
    enc_in = keras.Input((12,), name="enc_in")
    h = layers.Dense(16, activation="relu", name="enc_1", kernel_regularizer=keras.regularizers.l2(0.01))(enc_in)
    h = layers.Dense(16, activation="relu", name="enc_2")(h)
    encoder = keras.Model(enc_in, h, name="encoder")
    z = encoder(inp)
    c = layers.Dense(1, activation="sigmoid", name="C")(layers.Dense(8, activation="relu", name="c_hidden")(z))
    d = layers.Dense(3, activation="softmax", name="D")(layers.Dense(8, activation="relu", name="d_hidden")(
        ops.stop_gradient(z)))
    e = layers.Dense(2, name="E")(z)
    model = keras.Model(inp, [c, d, e], name=NESTED)
    # E has no loss: said with None (and a weight for it), as Keras's training step requires of a dict loss
    model.compile(loss={"C": "binary_crossentropy", "D": "categorical_crossentropy", "E": None},
                  loss_weights={"C": 1.0, "D": 0.5, "E": 0.0})
    return model


_REPORTS: dict[str, Report] = {}
_FILES: dict[str, Path] = {}


def model_file(name: str) -> Path:
    """A sample's file, or the nested model saved once to a temporary directory."""
    if name != NESTED:
        return ROOT / "samples" / f"{name}.keras"
    if name not in _FILES:
        _FILES[name] = rm.save(nested_stop_gradient(), Path(tempfile.mkdtemp(prefix="gradviz-")) / f"{NESTED}.keras")
    return _FILES[name]


def report_of(name: str) -> Report:
    """``gradviz.analyze`` of the model's file, as ``gradviz inspect`` runs it (samples: test_render's cache)."""
    if name != NESTED:
        return sample_report(name)
    if name not in _REPORTS:
        _REPORTS[name] = gradviz.analyze(model_file(name))
    return _REPORTS[name]


def reloaded(report: Report) -> Report:
    return Report.from_json(report.to_json())


# -- the round trip --------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_round_trip_is_exact(name: str) -> None:
    report = report_of(name)
    data = report.to_dict()
    assert data["format_version"] == FORMAT_VERSION
    assert Report.from_dict(data).to_dict() == data
    text = report.to_json()
    assert Report.from_json(text).to_json() == text
    assert Report.from_json(text.encode()).to_json() == text


@pytest.mark.parametrize("name", MODELS)
def test_inputs_come_back_exactly(name: str) -> None:
    report = report_of(name)
    back = reloaded(report)
    for field in ("gram", "exists", "max_abs", "finite", "loss_values"):
        original, loaded = getattr(report.stats, field), getattr(back.stats, field)
        assert loaded.dtype == original.dtype and loaded.shape == original.shape, field
        assert loaded.tobytes() == original.tobytes(), field  # bit for bit
    assert (back.stats.loss_names, back.stats.batches, back.stats.mode, back.stats.has_regularization) == (
        report.stats.loss_names, report.stats.batches, report.stats.mode, report.stats.has_regularization)
    assert back.spec == report.spec
    assert back.topology.variables == report.topology.variables
    assert (back.topology.inputs, back.topology.outputs, back.topology.complete) == (
        report.topology.inputs, report.topology.outputs, report.topology.complete)
    assert list(back.topology.graph.nodes(data=True)) == list(report.topology.graph.nodes(data=True))
    assert list(back.topology.graph.edges(data=True)) == list(report.topology.graph.edges(data=True))
    assert list(back.graph.nodes(data=True)) == list(report.graph.nodes(data=True))
    assert sorted(back.graph.edges(data=True)) == sorted(report.graph.edges(data=True))
    assert (back.layers, back.trunk, back.variables, back.losses, back.findings, back.edges) == (
        report.layers, report.trunk, report.variables, report.losses, report.findings, report.edges)


def test_nested_model_exercises_every_part() -> None:
    data = report_of(NESTED).to_dict()
    assert data["spec"]["unlossed_outputs"] == ["E"]
    assert [t["name"] for t in data["spec"]["terms"]] == ["C", "D", "regularization"]
    assert data["statistics"]["has_regularization"] is True
    assert any(n["attributes"]["parent"] == "encoder" for n in data["topology"]["nodes"])
    # Keras numbers the op's name (stop_gradient_2, ...) by how many this process has made
    stop = next(n["name"] for n in data["topology"]["nodes"] if n["attributes"]["class_name"] == "StopGradient")
    assert data["annotations"]["blocks_for"] == {stop: ["D"]}
    assert data["annotations"]["blocked_for"] == [{"source": "encoder/enc_2", "target": stop, "losses": ["D"]}]


# -- every output ----------------------------------------------------------------------------


@pytest.mark.parametrize("options", GOLDEN_OPTIONS, ids=[" ".join(f) or "default" for f in GOLDEN_FLAGS])
@pytest.mark.parametrize("name", MODELS)
def test_dot_identical(name: str, options: RenderOptions) -> None:
    report = report_of(name)
    assert build_dot(reloaded(report), options) == build_dot(report, options)


@pytest.mark.parametrize("name", MODELS)
def test_html_graphml_and_summary_identical(name: str) -> None:
    report = report_of(name)
    back = reloaded(report)
    options = RenderOptions(show_norms=True, compact=True, command="gradviz inspect m.keras -o r.html")
    assert build_html(back, options) == build_html(report, options)
    assert to_graphml(back) == to_graphml(report)
    for all_layers in (False, True):
        for color in (False, True):
            assert summary(back, all_layers=all_layers, color=color, width=100) == summary(
                report, all_layers=all_layers, color=color, width=100)


@pytest.mark.parametrize("name", MODELS)
def test_weight_scenarios_identical(name: str) -> None:
    report = report_of(name)
    back = reloaded(report)
    first = report.losses[0].name
    asks: dict[str, Any] = dict(tries=[{first: 2.0}], sweeps=[weighting.parse_sweep(f"{first}=log:0.01:10:4")])
    if report.trunk is not None:
        asks["suggest_weights"] = True
    assert weighting.explore(back, **asks).to_json() == weighting.explore(report, **asks).to_json()
    scenario = {first: 0.25}
    for options in (RenderOptions(show_norms=True), RenderOptions(expand_nested=False, compact=True)):
        assert build_dot(weighting.scenario_report(back, scenario), options) == build_dot(
            weighting.scenario_report(report, scenario), options)


def tiny_report(gram: np.ndarray, max_abs: np.ndarray, loss_values: np.ndarray) -> Report:
    """A two-loss report over one Dense layer (two variables) from given statistics, no model."""
    graph = nx.DiGraph()
    graph.add_node("x", kind="input", class_name="InputLayer", parent="", trainable_params=0, variables=[],
                   output_shape="(None, 2)", activation=None, compute_dtype="float32", blocks_gradient=False,
                   input_dim=None, order=0)
    graph.add_node("dense", kind="layer", class_name="Dense", parent="", trainable_params=6,
                   variables=["dense/kernel", "dense/bias"], output_shape="(None, 2)", activation="linear",
                   compute_dtype="float32", blocks_gradient=False, input_dim=None, order=1)
    graph.add_edge("x", "dense", shape="(None, 2)")
    topology = Topology(graph, {"C": "dense", "D": "dense"}, {"x": "x"},
                        (VariableInfo("dense/kernel", "dense", (2, 2)), VariableInfo("dense/bias", "dense", (2,))))
    exists = np.ones((2, 2), dtype=bool)
    finite = np.isfinite(max_abs) & np.isfinite(np.diagonal(gram, axis1=1, axis2=2))
    stats = GradientStats(("C", "D"), gram, exists, max_abs, finite, loss_values, 1, "mean-gradient")
    spec = LossSpec((LossTerm("C", "C", "mse", 0.5), LossTerm("D", "D", "mae", 2.0)))
    return analyze_stats(topology, stats, spec, model_name="tiny")


def test_nan_and_inf_survive() -> None:
    gram = np.array([[[float("nan"), 1.0], [1.0, 4.0]], [[float("inf"), -0.0], [-0.0, 5e-324]]])
    report = tiny_report(gram, np.array([[float("nan"), 2.0], [float("inf"), 0.1]]),
                         np.array([float("nan"), float("-inf")]))
    text = report.to_json()
    assert '"nan"' in text and '"-inf"' in text  # (to_json refuses bare NaN: allow_nan=False)
    back = Report.from_json(text)
    assert back.to_json() == text
    assert back.stats.gram.tobytes() == report.stats.gram.tobytes()  # -0.0 and the subnormal too
    assert math.isnan(back.losses[0].value) and back.losses[1].value == float("-inf")
    for options in GOLDEN_OPTIONS:
        assert build_dot(back, options) == build_dot(report, options)
    assert to_graphml(back) == to_graphml(report)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=12, max_size=12))
def test_any_float_is_written_exactly(values: list[float]) -> None:
    gram = np.array(values[:8]).reshape(2, 2, 2)
    with np.errstate(all="ignore"):  # overflowing figures are not under test here, only their writing
        report = tiny_report(gram, np.array(values[8:12]).reshape(2, 2), np.array(values[:2]))
    back = Report.from_json(report.to_json())
    for field in ("gram", "max_abs", "loss_values"):
        a, b = getattr(report.stats, field), getattr(back.stats, field)
        assert np.array_equal(np.isnan(a), np.isnan(b)), field
        same = ~np.isnan(a)
        assert a[same].tobytes() == b[same].tobytes(), field  # sign of zero, subnormals: bit for bit


def test_statistics_keyed_by_variable_path() -> None:
    report = report_of("shared_trunk")
    entries = statistics_dict(report.stats, report.topology)["variables"]
    assert [e["path"] for e in entries] == [v.path for v in report.variables]
    kernel = entries[0]
    assert len(kernel["gram"]) == len(kernel["gram"][0]) == len(report.losses)
    assert math.sqrt(kernel["gram"][0][0]) == report.variables[0].grad_norm["C"]


def test_a_report_always_has_its_inputs() -> None:
    with pytest.raises(TypeError, match="stats"):
        Report("m", [], [], [], [], [], nx.DiGraph(), None)  # type: ignore[call-arg]


# -- without TensorFlow --------------------------------------------------------------------


def test_from_json_and_render_without_tensorflow(tmp_path: Path) -> None:
    report = report_of(NESTED)
    saved = tmp_path / "r.json"
    saved.write_text(report.to_json() + "\n")
    out = tmp_path / "out"
    out.mkdir()
    code = BLOCK_FRAMEWORKS + f"""
from gradviz.core.report import Report
from gradviz.core import weighting
from gradviz.output.diagram import RenderOptions, build_dot
from gradviz.output.graphml import to_graphml
from gradviz.output.text import summary
report = Report.from_json(open({str(saved)!r}).read())
out = {str(out)!r}
open(out + "/api.dot", "w").write(build_dot(report, RenderOptions(expand_nested=False, compact=True, show_norms=True)))
open(out + "/api.graphml", "wb").write(to_graphml(report))
open(out + "/api.txt", "w").write(summary(report, width=100))
open(out + "/api.weights.json", "w").write(weighting.explore(report, tries=[{{"D": 2.0}}], suggest_weights=True).to_json())
from gradviz.cli import main
main(["render", {str(saved)!r}, "-o", out + "/cli.dot", "-o", out + "/cli.html", "-o", out + "/cli.graphml",
      "--collapse-nested", "--compact", "--show-norms"], standalone_mode=False)
assert not [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")]
"""
    env = {**os.environ, "COLUMNS": "100"}  # the summary's width
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    options = RenderOptions(expand_nested=False, compact=True, show_norms=True)
    assert (out / "api.dot").read_text() == build_dot(report, options)
    assert (out / "cli.dot").read_text() == build_dot(report, options)
    assert (out / "api.graphml").read_bytes() == (out / "cli.graphml").read_bytes() == to_graphml(report)
    assert (out / "cli.html").read_text() == build_html(report, options)
    assert (out / "api.txt").read_text() == summary(report, width=100)
    assert (out / "api.weights.json").read_text() == weighting.explore(
        report, tries=[{"D": 2.0}], suggest_weights=True).to_json()
    assert done.stdout == summary(report, width=100)


# -- the CLI ---------------------------------------------------------------------------------


def _inspect_then_render(cli: Callable[..., Any], model: Path, flags: list[str], tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch, formats: tuple[str, ...]) -> tuple[Any, Any, Path, Path]:
    """``gradviz inspect MODEL -o r.json -o f.<fmt>... FLAGS``, then ``gradviz render r.json -o f.<fmt>... FLAGS``."""
    a, b = tmp_path / "inspect", tmp_path / "render"
    a.mkdir()
    b.mkdir()
    args = ["inspect", str(model), "-o", str(a / "r.json"), *[x for f in formats for x in ("-o", str(a / f"f.{f}"))],
            *flags]
    monkeypatch.setattr(sys, "argv", ["/somewhere/bin/gradviz", *args])  # the HTML shows the command line
    first = cli(*args)
    assert first.exit_code == 0, first.stderr
    second = cli("render", a / "r.json", *[x for f in formats for x in ("-o", b / f"f.{f}")], *flags)
    assert second.exit_code == 0, second.stderr
    assert second.stderr.count("wrote ") == len(formats)
    return first, second, a, b


@pytest.mark.parametrize("name", MODELS)
def test_cli_inspect_json_render(cli: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 name: str) -> None:
    """inspect -> JSON -> render: the same DOT, HTML, GraphML and terminal text, in every golden option set."""
    formats = ("dot", "html", "graphml")
    first, second, a, b = _inspect_then_render(cli, model_file(name), [], tmp_path, monkeypatch, formats)
    for fmt in formats:
        assert (a / f"f.{fmt}").read_bytes() == (b / f"f.{fmt}").read_bytes(), fmt
    assert second.stdout == first.stdout  # the terminal summary
    # what inspect writes with each golden option set is build_dot of the same (deterministic) analysis
    for flags, options in zip(GOLDEN_FLAGS, GOLDEN_OPTIONS):
        result = cli("render", a / "r.json", "-o", b / "g.dot", *flags)
        assert result.exit_code == 0, result.stderr
        assert (b / "g.dot").read_text() == build_dot(report_of(name), options), flags


@pytest.mark.dot
def test_cli_render_equals_inspect_in_every_format(cli: Callable[..., Any], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    formats = ("dot", "svg", "png", "pdf", "html", "graphml", "json")
    flags = ["--show-norms", "--collapse-nested", "--compact", "--rankdir", "LR"]
    first, second, a, b = _inspect_then_render(cli, model_file(NESTED), flags, tmp_path, monkeypatch, formats)
    for fmt in formats:  # the PDF too: its creation date is fixed
        assert (a / f"f.{fmt}").read_bytes() == (b / f"f.{fmt}").read_bytes(), fmt
    assert second.stdout == first.stdout
    command = json.loads((a / "r.json").read_text())["command"]
    assert command.startswith("gradviz inspect ") and command.endswith("--rankdir LR")
    assert f"<code>{command}</code>" in (b / "f.html").read_text()  # the inspect that computed it
    assert (b / "f.json").read_bytes() == (a / "r.json").read_bytes()


def test_cli_json_reprints_and_reads_stdin(cli: Callable[..., Any], tmp_path: Path) -> None:
    text = report_of("ticket_router").to_json()
    path = tmp_path / "r.json"
    path.write_text(text + "\n")
    printed = cli("render", path, "--json")
    assert printed.exit_code == 0 and printed.stdout == text + "\n" and printed.stderr == ""
    piped = cli("render", "-", "-o", tmp_path / "f.dot", "--show-norms", input=text)
    assert piped.exit_code == 0, piped.stderr
    assert (tmp_path / "f.dot").read_text() == build_dot(report_of("ticket_router"), RenderOptions(show_norms=True))
    assert "ticket_router" in piped.stdout and "Findings" in piped.stdout


# -- bad input ----------------------------------------------------------------------------------


def _edit(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``data`` with the field at ``path`` (``a.b[0].c``; value ``...`` deletes it) replaced."""
    import copy
    import re

    data = copy.deepcopy(data)
    keys: list[Any] = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    target = data
    for key in keys[:-1]:
        target = target[key]
    if value is ...:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return data


def _old(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in ("format_version", "command", "spec", "topology", "statistics",
                                                       "annotations")}


BAD_REPORTS: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("old", _old, "older gradviz (no format_version)"),
    ("newer", lambda d: _edit(d, "format_version", 2), "report format 2 is newer than this gradviz"),
    ("version-text", lambda d: _edit(d, "format_version", "1"), "unknown report format '1'"),
    ("list", lambda d: [d], "not a gradviz report (the JSON is a list, not an object)"),
    ("other-json", lambda d: {"name": "x"}, "not a gradviz report (no format_version, model or layers)"),
    ("weights-doc", lambda d: {"model": "m", "scenarios": [], "suggested": None}, "what gradviz weights writes"),
    ("no-statistics", lambda d: _edit(d, "statistics", ...), "damaged report: statistics is missing"),
    ("status", lambda d: _edit(d, "layers[1].status", 5), "layers[1].status: expected a string, got a number"),
    ("grad-norm", lambda d: _edit(d, "layers[1].grad_norm.C", "big"), "layers[1].grad_norm.C: expected a number"),
    ("gram-rows", lambda d: _edit(d, "statistics.variables[0].gram", [[1.0, 2.0]]), "gram has 1 rows for 2 losses"),
    ("stats-vars", lambda d: _edit(d, "statistics.variables", []), "statistics.variables has 0 entries"),
    ("severity", lambda d: _edit(d, "findings[0].severity", "fatal"), "'fatal' is not one of info, warning, error"),
    ("node", lambda d: _edit(d, "topology.variables[0].layer", "nowhere"), "'nowhere' is not a node"),
    ("edge", lambda d: _edit(d, "edges[0].target", "B"), "is not an edge of the graph"),
    ("losses", lambda d: _edit(d, "statistics.losses", ["D", "C"]), "statistics.losses ['D', 'C'] differ"),
    ("order", lambda d: _edit(d, "topology.nodes[0].attributes.order", None), "order: expected a whole number"),
]


@pytest.mark.parametrize("edit, fragment", [(e, f) for _, e, f in BAD_REPORTS], ids=[n for n, _, _ in BAD_REPORTS])
def test_bad_reports_are_one_line(cli: Callable[..., Any], tmp_path: Path, edit: Any, fragment: str) -> None:
    data = edit(report_of("stop_gradient_head").to_dict())
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    line = assert_one_error(cli("render", path, "-o", tmp_path / "f.dot"), fragment)
    assert line.startswith(f"Error: {path}: ")
    assert not (tmp_path / "f.dot").exists()
    with pytest.raises(ReportError) as raised:
        Report.from_dict(data)
    assert fragment in str(raised.value)


BAD_FILES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("missing", lambda d: d / "nope.json", "no such report file"),
    ("directory", lambda d: d, "is a directory; give the JSON report gradviz inspect writes"),
    ("empty", lambda d: _write(d / "e.json", b""), "the file is empty"),
    ("not-json", lambda d: _write(d / "t.json", b"layers: 3\n"), "not JSON (Expecting value at line 1, column 1)"),
    ("truncated", lambda d: _write(d / "t.json", b'{"format_version": 1, "mod'), "not JSON (Unterminated string"),
    ("binary", lambda d: _write(d / "b.json", b"\xff\xfe\x00garbage"), "not a JSON report (not UTF-8 text)"),
    ("model", lambda d: ROOT / "samples" / "shared_trunk.keras", "a model file, not a JSON report; analyse it "
                                                                 "with gradviz inspect"),
]


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("make, fragment", [(m, f) for _, m, f in BAD_FILES], ids=[n for n, _, _ in BAD_FILES])
def test_bad_files_are_one_line(cli: Callable[..., Any], tmp_path: Path, make: Any, fragment: str) -> None:
    assert_one_error(cli("render", make(tmp_path)), fragment)


def test_bad_output_fails_before_reading(cli: Callable[..., Any], tmp_path: Path) -> None:
    assert_one_error(cli("render", tmp_path / "nope.json", "-o", tmp_path / "f.jpeg"), "unknown output format '.jpeg'")
