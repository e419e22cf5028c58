"""The functional-graph walk. Pins the Keras internals topology.py reads
(``_nodes_by_depth``, ``Node.input_tensors``/``outputs``, ``Sequential._functional``)
for the installed Keras version: a Keras upgrade that changes them fails here."""

from __future__ import annotations

from typing import Any

import keras
import networkx as nx
import pytest
from keras import layers, ops

from gradviz.model.topology import build_topology, input_names, output_names

from gradviz.core.graph import input_id_ranges

def _nested() -> keras.Model:
    keras.backend.clear_session()  # op names (relu, stop_gradient) are numbered per session
    inner_in = keras.Input((8,), name="inner_in")
    inner = keras.Model(inner_in, layers.Dense(8, name="dense")(inner_in), name="block")
    x = keras.Input((8,), name="x")
    shared = layers.Dense(8, name="shared")
    h = shared(x)
    h = shared(ops.relu(h))  # a layer called twice
    h = inner(h)
    h = layers.Dense(8, name="dense")(h)  # same layer name as inside the nested model
    out = layers.Dense(1, name="out")(ops.stop_gradient(h))
    return keras.Model(x, [out, layers.Dense(2, name="side")(h)], name="outer")


def test_layers_and_ops_are_nodes_with_edges() -> None:
    topo = build_topology(_nested())
    g = topo.graph
    assert g.nodes["relu"]["kind"] == "op" and g.nodes["relu"]["class_name"] == "Relu"
    assert g.nodes["stop_gradient"]["blocks_gradient"] is True
    assert g.nodes["relu"]["blocks_gradient"] is False
    assert ("x", "shared") in g.edges and ("shared", "relu") in g.edges and ("relu", "shared") in g.edges
    assert nx.is_directed_acyclic_graph(nx.DiGraph([e for e in g.edges if e != ("relu", "shared")]))


def test_shared_layer_is_one_node_and_owns_its_variables_once() -> None:
    topo = build_topology(_nested())
    assert sum(1 for n in topo.graph if n.startswith("shared")) == 1
    assert topo.graph.nodes["shared"]["trainable_params"] == 8 * 8 + 8
    assert [v.layer for v in topo.variables].count("shared") == 2


def test_nested_model_is_expanded_with_qualified_names() -> None:
    topo = build_topology(_nested())
    g = topo.graph
    assert g.nodes["block/dense"]["parent"] == "block"
    assert ("shared", "block/dense") in g.edges and ("block/dense", "dense") in g.edges
    assert "block" not in g
    paths = [v.path for v in topo.variables]
    assert len(set(paths)) == len(paths)  # 'dense/kernel' twice in Keras: qualified where needed
    assert "block/dense/kernel" in paths


def test_outputs_and_inputs_map_to_nodes() -> None:
    model = _nested()
    topo = build_topology(model)
    assert output_names(model) == ["out", "side"]
    assert topo.outputs == {"out": "out", "side": "side"}
    assert topo.inputs == {"x": "x"}
    assert input_names(model) == ["x"]


def test_order_is_topological_and_deterministic() -> None:
    a = build_topology(_nested())
    b = build_topology(_nested())
    assert a.layer_names == b.layer_names
    order = {n: i for i, n in enumerate(a.layer_names)}
    for s, t in a.graph.edges:
        if (s, t) != ("relu", "shared"):
            assert order[s] < order[t] or t == "shared"


def test_sequential_is_walked_through_its_functional_graph(build_sample: Any) -> None:
    topo = build_topology(build_sample("chained_sequential"))
    assert list(topo.graph.edges) == [
        ("features", "trunk_1"), ("trunk_1", "trunk_2"), ("trunk_2", "head1"), ("head1", "head2"),
    ]
    assert topo.graph.nodes["head1"]["activation"] == "sigmoid"


def test_multi_input_and_embedding_ranges(build_sample: Any) -> None:
    model = build_sample("ticket_router")
    topo = build_topology(model)
    assert set(topo.inputs) == {"text_ids", "tabular"}
    assert input_id_ranges(topo) == {"text_ids": 500}
    assert ("text_ids", "embedding") in topo.graph.edges
    assert topo.graph.nodes["concat"]["trainable_params"] == 0


def test_applications_trunk_is_expanded() -> None:
    trunk = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(32, 32, 3), alpha=0.35)
    x = keras.Input((32, 32, 3), name="img")
    f = layers.GlobalAveragePooling2D(name="gap")(trunk(x))
    model = keras.Model(x, [layers.Dense(2, name="a")(f), layers.Dense(1, name="b")(f)])
    topo = build_topology(model)
    nested = [n for n in topo.graph if topo.graph.nodes[n]["parent"] == trunk.name]
    assert len(nested) > 100
    assert sum(topo.graph.nodes[n]["trainable_params"] for n in topo.graph) == sum(
        int(v.numpy().size) for v in model.trainable_variables
    )
    assert len(topo.variables) == len(model.trainable_variables)


def test_frozen_layer_owns_no_trainable_variables() -> None:
    x = keras.Input((4,), name="x")
    frozen = layers.Dense(4, name="frozen")
    frozen.trainable = False
    model = keras.Model(x, layers.Dense(1, name="out")(frozen(x)))
    topo = build_topology(model)
    assert topo.graph.nodes["frozen"]["trainable_params"] == 0
    assert {v.layer for v in topo.variables} == {"out"}


def test_subclassed_model_is_walked_through_a_trace_of_its_call() -> None:
    class Two(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="two")
            self.a = layers.Dense(4, name="a")
            self.b = layers.Dense(1, name="b")

        def call(self, x: Any) -> Any:
            return self.b(ops.relu(self.a(x)))

    model = Two()
    model(keras.ops.zeros((1, 3)))
    topo = build_topology(model)
    assert topo.complete is True and topo.missing == ""
    assert topo.inputs == {"x": "x"} and topo.outputs == {"b": "b"}  # the input is named after call()'s argument
    (relu,) = [n for n in topo.graph if topo.graph.nodes[n]["class_name"] == "Relu"]
    assert set(topo.graph.edges) == {("x", "a"), ("a", relu), (relu, "b")}
    assert {v.layer for v in topo.variables} == {"a", "b"}


def test_subclassed_model_that_cannot_be_traced_is_listed_but_incomplete() -> None:
    import tensorflow as tf

    class Opaque(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="opaque")
            self.a = layers.Dense(4, name="a")
            self.b = layers.Dense(1, name="b")

        def call(self, x: Any) -> Any:
            return self.b(tf.nn.relu(self.a(x)))  # a TensorFlow op: runs in a graph, not on KerasTensors

    model = Opaque()
    model(keras.ops.zeros((1, 3)))
    topo = build_topology(model)
    assert topo.complete is False
    assert "model 'opaque' is subclassed and its call() cannot run on symbolic inputs" in topo.missing
    assert {"a", "b", "opaque.call"} <= set(topo.graph.nodes) and not topo.graph.edges
    assert {v.layer for v in topo.variables} == {"a", "b"}


@pytest.mark.parametrize("op_name", ["argmax", "cast"])
def test_argmax_and_integer_cast_block(op_name: str) -> None:
    x = keras.Input((3,), name="x")
    picked = ops.argmax(x, axis=-1) if op_name == "argmax" else ops.cast(x, "int32")
    model = keras.Model(x, layers.Dense(1, name="o")(ops.cast(ops.expand_dims(picked, -1), "float32")))
    g = build_topology(model).graph
    blocking = {g.nodes[n]["class_name"] for n in g if g.nodes[n]["blocks_gradient"]}
    assert blocking == {"Argmax" if op_name == "argmax" else "Cast"}
    assert {g.nodes[n]["class_name"] for n in g if g.nodes[n]["kind"] == "op"} >= {"Cast", "ExpandDims"}
