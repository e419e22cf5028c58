"""Reach, status and findings on models built to show each one."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest
from keras import layers, ops

import gradviz
from gradviz.core.stats import combined_norm, shares

def kinds(report: gradviz.Report) -> set[str]:
    return {f.kind for f in report.findings}


def test_shared_trunk_statuses_and_reach(build_sample: Any) -> None:
    report = gradviz.analyze(build_sample("shared_trunk"), batch_size=16)
    status = {l.name: (l.status, l.reached_by) for l in report.layers if l.trainable_params}
    assert status == {
        "A": ("shared", ("C", "D")), "B": ("shared", ("C", "D")),
        "C": ("exclusive", ("C",)), "D": ("exclusive", ("D",)),
    }
    assert report.layer("C").grad_norm["D"] is None and report.layer("features").status == "no-trainable-weights"
    assert report.trunk is not None and report.trunk.trainable_params == 16 * 32 + 32 + 32 * 32 + 32
    assert sum(report.layer("A").share.values()) == pytest.approx(1.0)
    assert {e for e in report.edges if e[1].startswith("loss:")} == {("C", "loss:C"), ("D", "loss:D")}
    assert "dead-head" not in kinds(report) and "blocked-path" not in kinds(report)


def test_dead_head(build_sample: Any) -> None:
    report = gradviz.analyze(build_sample("dead_head"), batch_size=16)
    (finding,) = report.findings_of("dead-head")
    assert finding.losses == ("D",) and finding.severity == "error"
    assert report.layer("D").status == "dead" and report.layer("D").grad_norm["D"] == 0.0
    assert report.layer("A").reached_by == ("C",)


def test_stop_gradient_blocks_the_trunk(build_sample: Any) -> None:
    report = gradviz.analyze(build_sample("stop_gradient_head"), batch_size=16)
    (finding,) = report.findings_of("blocked-path")
    assert "stop_gradient" in finding.message and "(StopGradient)" in finding.message
    assert finding.losses == ("D",) and finding.layers[:2] == ("A", "B")
    blocker = [n for n in report.graph if report.graph.nodes[n].get("blocks_for")]
    assert [report.graph.nodes[n]["class_name"] for n in blocker] == ["StopGradient"]
    assert report.graph.edges["B", blocker[0]]["blocked_for"] == ["D"]


def test_argmax_names_the_first_blocker_the_gradient_meets() -> None:
    x = keras.Input((4,), name="x")
    a = layers.Dense(8, name="A")(x)
    cls = layers.Dense(3, activation="softmax", name="cls")(ops.stop_gradient(a))
    picked = ops.expand_dims(ops.cast(ops.argmax(cls, axis=-1), "float32"), -1)
    value = layers.Dense(1, name="value")(picked)
    model = keras.Model(x, [cls, value])
    model.compile(loss=["categorical_crossentropy", "mse"])
    report = gradviz.analyze(model, batch_size=8)
    messages = {f.message for f in report.findings_of("blocked-path") if f.losses == ("value",)}
    assert len(messages) == 1
    (message,) = messages
    assert "(Argmax)" in message and "StopGradient" not in message and "A, cls" in message


def test_unlossed_output_and_unreached_layer(build_sample: Any) -> None:
    model = build_sample("shared_trunk")
    model.compile(loss=["binary_crossentropy", None])
    report = gradviz.analyze(model, batch_size=8)
    assert kinds(report) >= {"no-loss-output", "unreached-layer"}
    (unreached,) = report.findings_of("unreached-layer")
    assert unreached.layers == ("D",) and "Gradients do not exist" in unreached.message
    assert report.layer("D").status == "unreached"


def test_regularization_only_is_unreached_but_not_warned_by_keras() -> None:
    x = keras.Input((4,), name="x")
    h = layers.Dense(4, name="h")(x)
    side = layers.Dense(2, name="side", kernel_regularizer="l2")(h)
    model = keras.Model(x, [layers.Dense(1, name="out")(h), side])
    model.compile(loss=["mse", None])
    report = gradviz.analyze(model, batch_size=8)
    (finding,) = report.findings_of("unreached-layer")
    assert finding.layers == ("side",) and "only the regularization gradient" in finding.message
    assert report.layer("side").grad_norm["regularization"] > 0


def test_dead_relu_layer() -> None:
    x = keras.Input((4,), name="x")
    trunk = layers.Dense(8, activation="relu", name="trunk")(x)
    dead = layers.Dense(8, activation="relu", bias_initializer=keras.initializers.Constant(-50.0), name="dead")(trunk)
    model = keras.Model(x, [layers.Dense(1, name="a")(trunk), layers.Dense(1, name="b")(dead)])
    model.compile(loss="mse")
    report = gradviz.analyze(model, batch_size=8)
    (finding,) = report.findings_of("dead-layer")
    assert finding.losses == ("b",) and finding.layers == ("trunk", "dead")
    assert report.layer("trunk").reached_by == ("a",)
    assert report.layer("dead").status == "dead"


def test_zero_weight_and_vanishing(build_sample: Any) -> None:
    report = gradviz.analyze(build_sample("shared_trunk"), loss_weights={"C": 0.0}, batch_size=8)
    assert "zero-weight" in kinds(report) and report.layer("A").share == pytest.approx({"C": 0.0, "D": 1.0})
    report = gradviz.analyze(build_sample("shared_trunk"), loss_weights={"C": 1e-7}, batch_size=8)
    (finding,) = report.findings_of("vanishing")
    assert finding.losses == ("C", "D")
    assert kinds(report) >= {"dominated"}


def test_chained_sequential_head(build_sample: Any) -> None:
    report = gradviz.analyze(build_sample("chained_sequential"), batch_size=8)
    (finding,) = report.findings_of("chained-head")
    assert finding.layers == ("head1", "head2")


def test_nan_gradient_is_a_finding_and_the_report_survives() -> None:
    x = keras.Input((4,), name="x")
    h = layers.Dense(4, name="h")(x)
    bad = layers.Dense(1, name="bad")(ops.log(ops.relu(h) * 0.0))
    model = keras.Model(x, [layers.Dense(1, name="good")(h), bad])
    model.compile(loss="mse")
    report = gradviz.analyze(model, batch_size=8)
    (finding,) = report.findings_of("nan-gradient")
    assert finding.losses == ("bad",) and finding.severity == "error"
    assert report.layer("good").grad_norm["good"] is not None
    assert "nan" in report.to_json() or "inf" in report.to_json()


def test_what_if_algebra_matches_direct_sum() -> None:
    rng = np.random.default_rng(0)
    g = rng.standard_normal((3, 50))
    gram = g @ g.T
    w = np.array([0.5, 2.0, 0.1])
    assert combined_norm(gram, w) == pytest.approx(np.linalg.norm(w @ g))
    s = shares(gram, w)
    total = w @ g
    assert s == pytest.approx([w[k] * g[k] @ total / (total @ total) for k in range(3)])
    assert s.sum() == pytest.approx(1.0)


def test_multi_input_sample(build_sample: Any) -> None:
    report = gradviz.analyze(build_sample("ticket_router"), batch_size=16)
    assert report.layer("embedding").status == "shared"
    assert {l.name for l in report.losses} == {"priority", "department"}
    assert report.layer("embedding").pairs[0].losses == ("priority", "department")


def test_dict_outputs_are_named_by_their_keys_as_compile_matches_them() -> None:
    x = keras.Input((4,), name="x")
    h = layers.Dense(4, name="h")(x)
    model = keras.Model(x, {"kind": layers.Dense(2, activation="softmax", name="dense_b")(h),
                            "age": layers.Dense(1, name="dense_a")(h)})
    model.compile(loss={"kind": "categorical_crossentropy", "age": "mse"}, loss_weights={"kind": 0.5, "age": 2.0})
    report = gradviz.analyze(model, batch_size=4)
    assert {(l.name, l.loss, l.weight) for l in report.losses} == {("age", "mse", 2.0), ("kind", "categorical_crossentropy", 0.5)}
    assert report.layer("dense_a").reached_by == ("age",) and report.layer("dense_b").reached_by == ("kind",)


def test_outputs_of_one_op_keep_their_own_losses() -> None:
    x = keras.Input((4,), name="x")
    p, q = ops.split(layers.Dense(4, name="pq")(x), 2, axis=-1)
    model = keras.Model(x, [p, q, layers.Dense(1, name="c")(x)])
    model.compile(loss=["mse", "mae", "mse"])
    report = gradviz.analyze(model, batch_size=4)
    assert [(l.name, l.loss) for l in report.losses] == [("split", "mse"), ("split_1", "mae"), ("c", "mse")]
    assert report.layer("c").reached_by == ("c",) and not report.findings_of("blocked-path")


def test_an_output_called_regularization_keeps_its_loss() -> None:
    x = keras.Input((4,), name="x")
    h = layers.Dense(4, name="h", kernel_regularizer="l2")(x)
    model = keras.Model(x, [layers.Dense(1, name="regularization")(h), layers.Dense(1, name="other")(h)])
    model.compile(loss=["mse", "mse"], loss_weights=[0.5, 1.0])
    report = gradviz.analyze(model, batch_size=4)
    assert [(l.name, l.output, l.weight) for l in report.losses] == [
        ("regularization", "regularization", 0.5), ("other", "other", 1.0), ("model.losses", None, 1.0),
    ]
    assert report.layer("h").status == "shared" and report.layer("regularization").status == "exclusive"


def test_a_conflicting_loss_is_not_reported_as_drowned(tmp_path: Any) -> None:
    x = keras.Input((4,), name="x")
    c = layers.Dense(1, name="c", kernel_initializer="zeros")(layers.Dense(8, name="trunk")(x))
    model = keras.Model(x, [c, ops.negative(c)])
    model.compile(loss=["mse", "mse"], loss_weights=[1.0, 0.5])
    rng = np.random.default_rng(0)
    y = rng.standard_normal((8, 1)).astype("float32") + 3.0
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((8, 4)).astype("float32"),
             **{"y:c": y, f"y:{report_name(model)}": y})
    report = gradviz.analyze(model, data=tmp_path / "d.npz", batch_size=8)
    assert report.trunk is not None and report.trunk.share["c"] > 1.0  # the other loss pulls against it
    assert not report.findings_of("dominated")
    assert any(f.severity == "warning" for f in report.findings_of("conflict"))


def report_name(model: keras.Model) -> str:
    from gradviz.model.topology import output_names

    return output_names(model)[1]


def test_synthetic_ids_respect_an_embedding_inside_a_nested_model() -> None:
    inner_in = keras.Input((5,), dtype="int32", name="ids_inner")
    inner = keras.Model(inner_in, layers.GlobalAveragePooling1D()(layers.Embedding(3, 4, name="emb")(inner_in)),
                        name="encoder")
    ids = keras.Input((5,), dtype="int32", name="ids")
    model = keras.Model(ids, layers.Dense(1, name="out")(inner(ids)))
    model.compile(loss="mse")
    report = gradviz.analyze(model, batch_size=16)
    assert report.layer("encoder/emb").status == "exclusive"


def test_mixed_precision_is_said() -> None:
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x = keras.Input((4,), name="x")
        h = layers.Dense(4, name="h")(x)
        model = keras.Model(x, [layers.Dense(1, name="a", dtype="float32")(h), layers.Dense(1, name="b", dtype="float32")(h)])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.compile(loss="mse")
    (finding,) = gradviz.analyze(model, batch_size=4).findings_of("mixed-precision")
    assert finding.layers == ("h",) and "LossScaleOptimizer" in finding.message


def test_top_level_subclassed_model_is_analysed_through_its_traced_call() -> None:
    class Two(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="two")
            self.a = layers.Dense(4, name="a")
            self.b = layers.Dense(1, name="b")

        def call(self, x: Any) -> Any:
            return self.b(self.a(x))

    model = Two()
    model(np.zeros((1, 3), "float32"))
    model.compile(loss="mse")
    report = gradviz.analyze(model, batch_size=4)
    assert [(l.name, l.output) for l in report.losses] == [("b", "b")]
    assert ("a", "b") in report.edges and report.layer("a").reached_by == ("b",)
    assert report.meta["graph_complete"] and not report.findings_of("incomplete-graph")
