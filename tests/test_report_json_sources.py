"""Reports of every source of losses read back from JSON: ``Report.from_json`` and ``gradviz render``.

What issue 15 added to a report must survive the round trip so that it re-renders
byte-identically: an endpoint layer's ``add_loss`` term (its ``output`` is the layer,
its ``loss`` is ``add_loss``, so ``source`` follows), ``loss_terms``' terms, what an
incomplete graph lacks (``topology.missing``, the incomplete-graph finding's words)
and the mixed-precision loss scale (``statistics.loss_scale``, the finding's words).
"""

from __future__ import annotations

from typing import Any, Callable

import keras
import numpy as np
import pytest
from keras import layers, ops

import gradviz
from gradviz.core.report import Report
from gradviz.output.diagram import RenderOptions, build_dot
from gradviz.output.graphml import to_graphml
from gradviz.output.html import build_html
from gradviz.output.text import summary


class Endpoint(layers.Layer):
    """The OCR example's pattern: the layer adds the loss, the model compiles none for it."""

    def call(self, y_true: Any, y_pred: Any) -> Any:
        self.add_loss(ops.mean(ops.square(y_true - y_pred)))
        return y_pred


def _endpoint_and_compiled() -> Report:
    keras.utils.set_random_seed(3)
    x = keras.Input((4,), name="x")
    t = keras.Input((1,), name="t")
    h = layers.Dense(8, activation="tanh", name="h", kernel_regularizer=keras.regularizers.l2(1e-2))(x)
    end = Endpoint(name="end")(t, layers.Dense(1, name="p")(h))
    model = keras.Model([x, t], [end, layers.Dense(1, name="D")(h)], name="endpoint_and_compiled")
    model.compile(loss=[None, "mse"])
    return gradviz.analyze(model, batch_size=4)


def _opaque_subclassed() -> Report:
    import tensorflow as tf

    class Opaque(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="opaque")
            self.a = layers.Dense(4, name="a")
            self.b = layers.Dense(1, name="b")

        def call(self, x: Any) -> Any:
            return self.b(tf.nn.relu(self.a(x)))  # a TensorFlow op: no traced view, the graph is incomplete

    keras.utils.set_random_seed(4)
    model = Opaque()
    model(np.zeros((2, 3), "float32"))
    model.compile(loss="mse")
    return gradviz.analyze(model, batch_size=4)


def _mixed_precision() -> Report:
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(5)
        x = keras.Input((4,), name="x")
        h = layers.Dense(8, activation="tanh", name="h")(x)
        model = keras.Model(x, [layers.Dense(1, name="a", dtype="float32")(h),
                                layers.Dense(1, name="b", dtype="float32")(h)], name="half")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.compile(optimizer="sgd", loss=["mse", "mse"])
    return gradviz.analyze(model, batch_size=4)


def _loss_terms() -> Report:
    keras.utils.set_random_seed(6)
    x = keras.Input((4,), name="x")
    model = keras.Model(x, layers.Dense(2, name="o")(layers.Dense(4, name="h")(x)), name="custom_step")

    def step_terms(m: Any, xs: Any, y: Any) -> dict[str, Any]:
        out = m(xs, training=True)
        return {"fit": ops.mean(ops.square(out)), "sparsity": ops.mean(ops.abs(m.get_layer("h").kernel))}

    return gradviz.analyze(model, batch_size=4, loss_terms=step_terms)


BUILDERS: dict[str, Callable[[], Report]] = {
    "endpoint": _endpoint_and_compiled, "subclassed": _opaque_subclassed, "mixed_precision": _mixed_precision,
    "loss_terms": _loss_terms,
}
_CACHE: dict[str, Report] = {}


def _report(name: str) -> Report:
    if name not in _CACHE:
        _CACHE[name] = BUILDERS[name]()
    return _CACHE[name]


def test_the_reports_carry_what_they_are_meant_to() -> None:
    endpoint = _report("endpoint")
    assert [(l.name, l.source) for l in endpoint.losses] == [
        ("D", "compile"), ("end", "add_loss"), ("regularization", "regularization")]
    opaque = _report("subclassed")
    assert not opaque.topology.complete and "model 'opaque' is subclassed" in opaque.topology.missing
    half = _report("mixed_precision")
    assert half.stats.loss_scale is not None and half.meta["loss_scale"] == half.stats.loss_scale
    terms = _report("loss_terms")
    assert [(l.name, l.source) for l in terms.losses] == [("fit", "loss_terms"), ("sparsity", "loss_terms")]


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_round_trip_keeps_the_sources_the_missing_part_and_the_loss_scale(name: str) -> None:
    report = _report(name)
    text = report.to_json()
    back = Report.from_json(text)
    assert back.to_json() == text
    assert [(l.name, l.output, l.loss, l.source) for l in back.losses] == [
        (l.name, l.output, l.loss, l.source) for l in report.losses]
    assert [t.source for t in back.spec.terms] == [t.source for t in report.spec.terms]
    assert back.topology.missing == report.topology.missing
    assert back.stats.loss_scale == report.stats.loss_scale
    assert back.findings == report.findings
    assert list(back.graph.nodes(data=True)) == list(report.graph.nodes(data=True))
    assert sorted(back.graph.edges(data=True)) == sorted(report.graph.edges(data=True))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_output_is_byte_identical(name: str) -> None:
    report = _report(name)
    back = Report.from_json(report.to_json())
    for options in (RenderOptions(), RenderOptions(show_norms=True, compact=True)):
        assert build_dot(back, options) == build_dot(report, options)
    assert build_html(back) == build_html(report)
    assert to_graphml(back) == to_graphml(report)
    assert summary(back) == summary(report)


def test_reports_without_the_new_keys_still_read() -> None:
    """A format-1 report written before these keys existed: nothing was missing, nothing was scaled."""
    data = _report("endpoint").to_dict()
    del data["topology"]["missing"]
    del data["statistics"]["loss_scale"]
    back = Report.from_dict(data)
    assert back.topology.missing == "" and back.stats.loss_scale is None
