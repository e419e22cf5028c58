"""What-if weights, conflict and suggestions, checked against independent computations.

* every what-if figure against a fresh ``gradviz.analyze`` with those weights;
* cosines and weighted norms against separate ``GradientTape``s per loss;
* suggested weights against a re-run of the analysis under them;
* the ``weights`` command's JSON, plot files and one-line errors.

Gradients are computed once per model (module-scoped fixtures); hypothesis
draws weights and compares against a few fresh recomputations.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradviz
from gradviz.core import weighting
from gradviz.errors import LossSpecError
from gradviz.core.palette import loss_colors

ROWS = 16


# -- models and data ---------------------------------------------------------------


def _mobilenet_heads() -> Any:
    """A real architecture: a small MobileNetV2 trunk (nested model, BatchNorm) with three heads."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    base = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), include_top=False, alpha=0.35)
    x = keras.Input((32, 32, 3), name="image")
    pooled = layers.GlobalAveragePooling2D(name="gap")(base(x))
    cls = layers.Dense(10, activation="softmax", name="cls")(pooled)
    box = layers.Dense(2, name="box")(pooled)
    flag = layers.Dense(1, activation="sigmoid", name="flag")(pooled)
    model = keras.Model(x, [cls, box, flag], name="mobilenet_heads")
    model.compile(
        loss={"cls": "sparse_categorical_crossentropy", "box": "mse", "flag": "binary_crossentropy"},
        loss_weights={"cls": 1.0, "box": 0.5, "flag": 0.2},
    )
    return model


def _data(name: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs and targets, made here (not by gradviz), in gradviz's .npz layout."""
    if name == "shared_trunk":
        return {"x": rng.standard_normal((ROWS, 16)).astype("float32"),
                "y:C": rng.integers(0, 2, (ROWS, 1)).astype("float32"),
                "y:D": rng.standard_normal((ROWS, 1)).astype("float32")}
    if name == "ticket_router":
        return {"x:text_ids": rng.integers(0, 500, (ROWS, 24)).astype("int32"),
                "x:tabular": rng.standard_normal((ROWS, 8)).astype("float32"),
                "y:priority": rng.standard_normal((ROWS, 1)).astype("float32"),
                "y:department": rng.integers(0, 5, (ROWS,)).astype("int32")}
    return {"x": rng.standard_normal((ROWS, 32, 32, 3)).astype("float32"),
            "y:cls": rng.integers(0, 10, (ROWS,)).astype("int32"),
            "y:box": rng.standard_normal((ROWS, 2)).astype("float32"),
            "y:flag": rng.integers(0, 2, (ROWS, 1)).astype("float32")}


#: the compiled loss of each output, as Keras's compile() builds it (mean over the batch)
LOSSES = {
    "C": "BinaryCrossentropy", "D": "MeanSquaredError",
    "priority": "MeanSquaredError", "department": "SparseCategoricalCrossentropy",
    "cls": "SparseCategoricalCrossentropy", "box": "MeanSquaredError", "flag": "BinaryCrossentropy",
}


class Case:
    """A model, its data file, the analysis under its compiled weights, and per-loss tape gradients."""

    def __init__(self, name: str, model: Any, npz: Path, arrays: dict[str, np.ndarray]) -> None:
        self.name = name
        self.model = model
        self.npz = npz
        self.arrays = arrays
        self.report = gradviz.analyze(model, data=npz, batch_size=ROWS)
        self.losses = [l.name for l in self.report.losses]
        self._tape: dict[str, dict[str, np.ndarray]] | None = None

    def analyze(self, weights: dict[str, float]) -> gradviz.Report:
        """A fresh analysis (gradients recomputed) under ``weights``."""
        return gradviz.analyze(self.model, data=self.npz, batch_size=ROWS, loss_weights=weights)

    def tape_gradients(self) -> dict[str, dict[str, np.ndarray]]:
        """``{layer: {loss: flat float64 gradient}}``, each loss on its own GradientTape."""
        if self._tape is not None:
            return self._tape
        import keras
        import tensorflow as tf

        inputs = [k for k in self.arrays if k == "x" or k.startswith("x:")]
        x = [tf.convert_to_tensor(self.arrays[k]) for k in inputs]
        variables = self.model.trainable_variables
        layer_of = [v.layer for v in self.report.variables]
        assert len(layer_of) == len(variables)
        result: dict[str, dict[str, np.ndarray]] = {}
        for index, name in enumerate(self.losses):
            loss_fn = getattr(keras.losses, LOSSES[name])()
            with tf.GradientTape() as tape:
                outputs = self.model(x if len(x) > 1 else x[0], training=True)
                loss = loss_fn(self.arrays[f"y:{name}"], outputs[index])
            grads = tape.gradient(loss, variables)
            for layer, grad in zip(layer_of, grads):
                if grad is None:
                    continue
                flat = tf.reshape(tf.convert_to_tensor(grad), [-1]).numpy().astype(np.float64)
                per_loss = result.setdefault(layer, {})
                per_loss[name] = np.concatenate([per_loss[name], flat]) if name in per_loss else flat
        self._tape = result
        return result


MODELS = ["shared_trunk", "ticket_router", pytest.param("mobilenet", marks=pytest.mark.slow)]


@pytest.fixture(scope="module", params=MODELS)
def case(request: pytest.FixtureRequest, samples_module: Any, tmp_path_factory: pytest.TempPathFactory) -> Case:
    name = request.param
    model = _mobilenet_heads() if name == "mobilenet" else samples_module.build(name)
    arrays = _data(name, np.random.default_rng(7))
    npz = tmp_path_factory.mktemp(name) / "batch.npz"
    np.savez(npz, **arrays)
    return Case(name, model, npz, arrays)


def _close(a: float | None, b: float | None, rel: float = 1e-4, abs_: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def _weights(losses: list[str]) -> st.SearchStrategy[dict[str, float]]:
    weight = st.one_of(st.just(0.0), st.floats(1e-3, 10.0, allow_nan=False, allow_infinity=False))
    return st.fixed_dictionaries({name: weight for name in losses})


# -- what-if equals a fresh analysis -----------------------------------------------------------


def test_what_if_matches_fresh_analysis(case: Case) -> None:
    """Hypothesis draws weights; each draw recomputes gradients from scratch (one draw for MobileNet:
    its suggested-weights test below is a second fresh recomputation)."""

    @settings(max_examples=1 if case.name == "mobilenet" else 3, deadline=None, database=None)
    @given(weights=_weights(case.losses))
    def check(weights: dict[str, float]) -> None:
        _assert_same_figures(weighting.explore(case.report, tries=[weights]).scenarios[1], case.analyze(weights))

    check()


def _assert_same_figures(tried: weighting.Scenario, fresh: gradviz.Report) -> None:
    assert tried.weights == {l.name: l.weight for l in fresh.losses}
    layers = [info for info in fresh.layers if info.trainable_params > 0]
    assert set(tried.layers) == {info.name for info in layers}
    for info in layers:
        assert _close(tried.layers[info.name].combined_grad_norm, info.combined_grad_norm), info.name
        for loss, share in info.share.items():
            assert _close(tried.layers[info.name].share[loss], share, abs_=1e-6), (info.name, loss)
    assert fresh.trunk is not None and tried.trunk is not None
    assert _close(tried.trunk.combined_grad_norm, fresh.trunk.combined_grad_norm)
    assert [f.kind for f in tried.findings] == [f.kind for f in fresh.findings if f.kind in weighting.WEIGHT_FINDINGS]


@settings(max_examples=40, deadline=None, database=None)
@given(data=st.data())
def test_what_if_matches_tape_gradients(case: Case, data: st.DataObject) -> None:
    """Many weightings, each against |sum_k w_k g_k| from separately taped gradients."""
    weights = data.draw(_weights(case.losses), label="weights")
    tried = weighting.scenario(case.report, weights, "t", weighting.TRY)
    for layer, per_loss in case.tape_gradients().items():
        combined = sum(weights[k] * g for k, g in per_loss.items())
        expected = float(np.linalg.norm(combined))
        assert math.isclose(tried.layers[layer].combined_grad_norm or 0.0, expected, rel_tol=1e-4, abs_tol=1e-7), layer


def test_scenario_report_is_the_inspect_report(case: Case) -> None:
    """A scenario's full report (what a diagram is drawn from) equals analyze(..., loss_weights=...)."""
    weights = {name: 0.5 + i for i, name in enumerate(case.losses)}
    if case.name == "mobilenet":
        pytest.skip("covered by the small models; a fresh MobileNet analysis costs seconds")
    mine = weighting.WhatIf(case.report, []).report(weights).to_dict()
    theirs = case.analyze(weights).to_dict()
    for key in ("meta", "timings"):
        mine.pop(key), theirs.pop(key)
    assert mine["losses"] == theirs["losses"] and mine["edges"] == theirs["edges"]
    assert mine["findings"] == theirs["findings"]
    assert [l["name"] for l in mine["layers"]] == [l["name"] for l in theirs["layers"]]
    for a, b in zip(mine["layers"] + [mine["trunk"]], theirs["layers"] + [theirs["trunk"]]):
        assert a["status"] == b["status"] and a["reached_by"] == b["reached_by"]
        assert _close(a["combined_grad_norm"], b["combined_grad_norm"])


# -- conflict ---------------------------------------------------------------------------------


#: A cosine near 0 is a difference of nearly cancelling sums: float32 rounding in two gradient
#: computations (eager tapes here, one compiled function in gradviz) moves it by up to ~6e-6 in
#: MobileNetV2, more than 1e-4 of a small cosine. So: relative 1e-4, or absolute 5e-5.
COSINE_ABS = 5e-5


def test_cosines_match_separate_tapes(case: Case) -> None:
    tape = case.tape_gradients()
    shared = [info for info in case.report.layers if info.status == "shared"]
    assert shared
    for info in shared:
        assert info.pairs
        for pair in info.pairs:
            a, b = (tape[info.name][k] for k in pair.losses)
            expected = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            assert math.isclose(pair.cosine, expected, rel_tol=1e-4, abs_tol=COSINE_ABS), (info.name, pair.losses)
            sizes = np.linalg.norm(a), np.linalg.norm(b)
            similarity = 2 * sizes[0] * sizes[1] / (sizes[0] ** 2 + sizes[1] ** 2)
            assert math.isclose(pair.magnitude_similarity, similarity, rel_tol=1e-4)
    trunk_vectors = {k: np.concatenate([tape[info.name][k] for info in shared]) for k in case.losses}
    assert case.report.trunk is not None
    for pair in case.report.trunk.pairs:
        a, b = (trunk_vectors[k] for k in pair.losses)
        expected = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        assert math.isclose(pair.cosine, expected, rel_tol=1e-4, abs_tol=COSINE_ABS)
    # the conflict finding names exactly the shared layers with a negative cosine
    for finding in case.report.findings_of("conflict"):
        negative = [info.name for info in shared for p in info.pairs if p.losses == finding.losses and p.cosine < 0]
        assert list(finding.layers) == negative
    conflict = weighting.WhatIf(case.report, []).conflict()
    assert set(conflict["layers"]) == {info.name for info in shared}


def test_shares_sum_to_one_and_dominated(case: Case) -> None:
    for scenario in weighting.explore(case.report, tries=[{case.losses[0]: 100.0}]).scenarios:
        for figures in list(scenario.layers.values()) + [scenario.trunk]:
            assert figures is not None
            if figures.combined_grad_norm:
                assert math.isclose(sum(figures.share.values()), 1.0, rel_tol=1e-9)
    loud = weighting.explore(case.report, tries=[{name: (1e4 if i == 0 else 1e-4) for i, name in enumerate(case.losses)}])
    kinds = [f.kind for f in loud.scenarios[1].findings]
    assert "dominated" in kinds
    dominated = next(f for f in loud.scenarios[1].findings if f.kind == "dominated")
    assert dominated.losses[0] == case.losses[0]


# -- suggestions ------------------------------------------------------------------------------


def test_suggested_weights_balance_the_reference_layer(case: Case) -> None:
    suggestion = weighting.suggest(case.report)
    assert suggestion.weights is not None and suggestion.reference_layer is not None
    shared = [info.name for info in case.report.layers if info.status == "shared"]
    assert suggestion.reference_layer == shared[-1]
    current = {l.name: l.weight for l in case.report.losses}
    assert math.isclose(sum(suggestion.weights.values()), sum(current.values()), rel_tol=1e-9)
    rerun = case.analyze(suggestion.weights)
    _assert_same_figures(weighting.scenario(case.report, suggestion.weights), rerun)
    ref = rerun.layer(suggestion.reference_layer)
    weighted = [suggestion.weights[k] * (ref.grad_norm[k] or 0.0) for k in case.losses]
    assert max(weighted) <= 1.01 * min(weighted), weighted
    assert suggestion.loss_weights_line and suggestion.loss_weights_line.startswith("loss_weights={")
    pasted = json.loads(suggestion.loss_weights_line.split("=", 1)[1])
    assert set(pasted) == set(case.losses)


def test_suggest_on_the_whole_trunk_and_alternatives(case: Case) -> None:
    suggestion = weighting.suggest(case.report, weighting.TRUNK)
    assert suggestion.weights is not None and case.report.trunk is not None
    weighted = [suggestion.weights[k] * (case.report.trunk.grad_norm[k] or 0.0) for k in case.losses]
    assert max(weighted) <= 1.0001 * min(weighted)
    alternatives = {a.name: a for a in suggestion.alternatives}
    initial = alternatives[weighting.INITIAL_LOSS].weights
    values = {l.name: l.value for l in case.report.losses}
    assert initial is not None
    assert max(initial[k] * values[k] for k in case.losses) <= 1.0001 * min(initial[k] * values[k] for k in case.losses)
    uncertainty = alternatives[weighting.UNCERTAINTY].weights
    assert uncertainty is not None and len(set(uncertainty.values())) == 1
    with pytest.raises(LossSpecError, match="not a shared layer"):
        weighting.suggest(case.report, "no_such_layer")


def _analyze_built(build: Callable[[], Any], rows: int = 32) -> gradviz.Report:
    import keras

    keras.utils.set_random_seed(0)
    return gradviz.analyze(build(), batch_size=rows)


def test_suggest_without_a_trunk(sample_path: Callable[[str], Path]) -> None:
    report = gradviz.analyze(sample_path("stop_gradient_head"))
    assert report.trunk is None
    suggestion = weighting.suggest(report)
    assert suggestion.weights is None and suggestion.loss_weights_line is None
    assert "no trunk" in suggestion.notes[0]
    what_if = weighting.explore(report, suggest_weights=True)
    assert [s.source for s in what_if.scenarios][0] == "current"
    assert what_if.to_dict()["suggested"]["weights"] is None


def test_weights_command_without_a_trunk(cli: Callable[..., Any], sample_path: Callable[[str], Path],
                                        tmp_path: Path) -> None:
    result = cli("weights", sample_path("stop_gradient_head"), "--suggest")
    assert result.exit_code == 0, result.stderr
    assert "there is no trunk" in result.stdout and "Suggested weights: none" in result.stdout
    result = cli("weights", sample_path("stop_gradient_head"), "--sweep", "D=0:1:3", "-o", tmp_path / "p.png")
    assert result.exit_code == 1 and "Error: no layer is shared by two losses" in result.stderr
    assert not (tmp_path / "p.png").exists()


def test_suggest_keeps_unreachable_losses_and_regularization() -> None:
    """E reaches only A, not the last shared layer B: it cannot be balanced there and keeps its weight;
    the L2 regularization term keeps its weight and stays out of loss_weights."""
    import keras
    from keras import layers

    def build() -> keras.Model:
        x = keras.Input((8,), name="x")
        a = layers.Dense(16, activation="tanh", kernel_regularizer="l2", name="A")(x)
        b = layers.Dense(16, activation="tanh", name="B")(a)
        c = layers.Dense(1, name="C")(b)
        d = layers.Dense(1, activation="sigmoid", name="D")(b)
        e = layers.Dense(1, name="E")(a)
        model = keras.Model(x, [c, d, e])
        model.compile(loss=["mse", "binary_crossentropy", "mse"], loss_weights=[1.0, 1.0, 0.7])
        return model

    report = _analyze_built(build)
    assert report.spec is not None and report.spec.names == ("C", "D", "E", "regularization")
    suggestion = weighting.suggest(report)
    assert suggestion.reference_layer == "B" and suggestion.weights is not None
    assert "E" in suggestion.unbalanced and suggestion.weights["E"] == 0.7
    assert suggestion.weights["regularization"] == 1.0
    assert math.isclose(suggestion.weights["C"] + suggestion.weights["D"], 2.0)
    assert "regularization" not in (suggestion.loss_weights_line or "")
    ref = report.layer("B")
    assert math.isclose(suggestion.weights["C"] * (ref.grad_norm["C"] or 0), suggestion.weights["D"] * (ref.grad_norm["D"] or 0))
    # regularization can be tried like any loss
    tried = weighting.explore(report, tries=[{"regularization": 0.0}]).scenarios[1]
    assert tried.weights["regularization"] == 0.0


# -- parsing ---------------------------------------------------------------------------------


def test_parse_try_and_sweep() -> None:
    assert weighting.parse_try("C=1,D=0.2") == {"C": 1.0, "D": 0.2}
    assert weighting.parse_sweep("C=0:2:5").values == (0.0, 0.5, 1.0, 1.5, 2.0)
    sweep = weighting.parse_sweep("D=log:1e-3:10:5")
    assert sweep.scale == "log" and np.allclose(sweep.values, [1e-3, 1e-2, 1e-1, 1, 10])
    assert weighting.parse_sweep("D=2:0:3").values == (2.0, 1.0, 0.0)


@pytest.mark.parametrize("text", ["C", "C=", "C=1,", "C=x", "C=-1", "C=nan", "C=inf", "C=1,C=2", "=1"])
def test_parse_try_rejects(text: str) -> None:
    with pytest.raises(LossSpecError):
        weighting.parse_try(text)


@pytest.mark.parametrize("text", ["C=0:1:1", "C=0:1", "C=a:1:3", "C=0:b:3", "C=0:1:x", "C=0:1:2.5", "C=-1:1:3",
                                  "C=1:1:3", "C=log:0:1:3", "C=log:1:10", "C=0:1:100000", "C", "C=::3"])
def test_parse_sweep_rejects(text: str) -> None:
    with pytest.raises(LossSpecError):
        weighting.parse_sweep(text)


# -- the command ------------------------------------------------------------------------------


def test_weights_command_json_and_plots(cli: Callable[..., Any], sample_path: Callable[[str], Path], tmp_path: Path) -> None:
    svg, png, doc = tmp_path / "shares.svg", tmp_path / "shares.png", tmp_path / "w.json"
    result = cli("weights", sample_path("shared_trunk"), "--try", "C=1,D=0.2", "--try", "D=1",
                 "--sweep", "D=log:1e-2:10:4", "--suggest", "--json", "-o", svg, "-o", png, "-o", doc)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert json.loads(doc.read_text()) == data
    sources = [s["source"] for s in data["scenarios"]]
    assert sources == ["current", "try", "try"] + ["sweep"] * 4 + ["suggested", "initial-loss", "uncertainty"]
    assert data["scenarios"][0]["weights"] == {"C": 0.5, "D": 0.3}
    assert data["scenarios"][1]["weights"] == {"C": 1.0, "D": 0.2}
    assert data["scenarios"][2]["weights"] == {"C": 0.5, "D": 1.0}
    assert [s["swept"]["weight"] for s in data["scenarios"][3:7]] == pytest.approx([0.01, 0.1, 1.0, 10.0])
    first = data["scenarios"][0]
    assert set(first["layers"]["B"]) == {"combined_grad_norm", "share", "weighted_grad_norm"}
    assert set(first["trunk"]["share"]) == {"C", "D"}
    suggested = data["suggested"]
    assert suggested["reference_layer"] == "B" and set(suggested["weights"]) == {"C", "D"}
    assert suggested["loss_weights"].startswith('loss_weights={"C": ')
    assert data["conflict"]["trunk"]["cosine"][0]["losses"] == ["C", "D"]
    assert data["shared_layers"] == ["A", "B"]
    text = svg.read_text()
    assert text.startswith("<?xml")
    assert [l["color"] for l in data["losses"]] == list(loss_colors(["C", "D"]).values())
    for color in (l["color"] for l in data["losses"]):  # the plot uses the losses' colours
        assert color.lower() in text.lower()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_weights_command_text(cli: Callable[..., Any], sample_path: Callable[[str], Path]) -> None:
    result = cli("weights", sample_path("ticket_router"), "--suggest")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "Conflict" in out and "Scenarios" in out and "loss_weights={" in out
    assert "dominated" in out  # priority dominates the trunk under the compiled weights


def test_weights_command_help(cli: Callable[..., Any]) -> None:
    result = cli("weights", "--help")
    assert result.exit_code == 0 and "Example:" in result.stdout and "--sweep" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--try", "X=1"], "'X' is not a loss of the model; valid: C, D"),
    (["--sweep", "X=0:1:3"], "'X' is not a loss of the model"),
    (["--try", "C=-0.5"], "not a valid weight"),
    (["--try", "C=lots"], "not a number"),
    (["--sweep", "C=0:1:1"], "STEPS must be from 2"),
    (["--sweep", "C=zero:1:3"], "not a number"),
    (["--sweep", "C=0:1"], "expects OUTPUT=START:STOP:STEPS"),
    (["--sweep", "C=-1:1:3"], "not a valid weight"),
    (["--sweep", "C=log:0:1:3"], "log sweep needs START and STOP above 0"),
    (["--suggest", "--reference", "nope"], "not a shared layer"),
])
def test_weights_command_bad_input(cli: Callable[..., Any], sample_path: Callable[[str], Path], tmp_path: Path,
                                   args: list[str], message: str) -> None:
    args = [str(tmp_path / a) if a.endswith(".png") else a for a in args]
    result = cli("weights", sample_path("shared_trunk"), *args)
    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_weights_diagram_is_the_inspect_diagram_without_recomputing(
    cli: Callable[..., Any], sample_path: Callable[[str], Path], tmp_path: Path
) -> None:
    model = sample_path("shared_trunk")
    common = ["--batch-size", "8", "--show-norms"]
    tried = cli("weights", model, "--try", "C=1,D=0.05", "-o", tmp_path / "w.dot", *common)
    fresh = cli("inspect", model, "--loss-weight", "C=1", "--loss-weight", "D=0.05", "-o", tmp_path / "i.dot", *common)
    assert tried.exit_code == 0 and fresh.exit_code == 0, tried.stderr + fresh.stderr
    what_if, recomputed = (tmp_path / "w.dot").read_text(), (tmp_path / "i.dot").read_text()
    assert "weight 0.05" in what_if
    assert what_if == recomputed
