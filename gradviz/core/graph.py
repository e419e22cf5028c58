"""The model's graph as plain data: what :mod:`gradviz.model.topology` walks out of Keras.

networkx only: the analysis and the outputs read this, never Keras.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx


@dataclass(frozen=True)
class VariableInfo:
    """A trainable variable, in the order of ``model.trainable_variables``.

    Attributes:
        path: unique name (Keras's ``variable.path``, qualified by the nested
            model where two would clash).
        layer: the graph node that owns it.
        shape: its shape.
    """

    path: str
    layer: str
    shape: tuple[int, ...]



@dataclass(frozen=True)
class Topology:
    """The walked model.

    Attributes:
        graph: nodes keyed by qualified layer/op name with attributes ``kind``
            (input, layer, op, model), ``class_name``, ``parent``,
            ``trainable_params``, ``variables``, ``output_shape``,
            ``activation``, ``blocks_gradient`` and ``order`` (a stable
            topological index); edges carry ``shape``.
        outputs: model output name -> graph node producing it, in output order.
        inputs: model input name -> graph node.
        variables: one entry per trainable variable, in model order.
        complete: False when part of the model could not be walked (subclassed).
        output_calls: for an output produced by a later call of a reused layer (a tied embedding's
            output projection), the number of that call; outputs of first calls are not listed.
        missing: what an incomplete graph lacks and why, in words (empty otherwise,
            and for subclassed layers inside a functional model).
    """

    graph: nx.DiGraph
    outputs: dict[str, str]
    inputs: dict[str, str]
    variables: tuple[VariableInfo, ...]
    complete: bool = True
    output_calls: dict[str, int] = field(default_factory=dict)
    missing: str = ""

    @property
    def layer_names(self) -> list[str]:
        """Graph nodes in topological order."""
        return sorted(self.graph.nodes, key=lambda n: self.graph.nodes[n]["order"])

def loss_anchor(topology: Topology, output: str | None, source: str) -> str | None:
    """The graph node a loss hangs from: its output's node, or the layer whose ``add_loss`` it is.

    None for ``loss_terms`` and regularization (they come from no one node).
    """
    if source == "compile":
        return topology.outputs.get(output or "")
    if source == "add_loss" and output is not None and output in topology.graph:
        return output
    return None


#: weightless operations that pass integer ids on unchanged (an id input may go through them to its Embedding)
_ID_PRESERVING = frozenset({"Reshape", "Flatten", "Permute", "GetItem", "Slice", "Squeeze", "ExpandDims",
                            "RepeatVector", "Identity", "Masking"})


def upstream(graph: nx.DiGraph, node: str, call: int = 1) -> set[str]:
    """The nodes whose output reaches ``node``'s call ``call``, itself included, call by call.

    A reused layer is one node whose edges say which of its calls they join (edge attribute
    ``calls``: ``[[source call, target call], ...]``, ``[[1, 1]]`` when absent), so plain
    ancestry would wrongly put whatever feeds its second call upstream of what its first call
    feeds. Calls are told apart only on nodes that record them (``call_scopes``); on the others
    every call is the same node.

    Example:
        >>> g = nx.DiGraph()
        >>> g.add_nodes_from(["x", "mid", "A", "B"]); g.add_node("shared", call_scopes=["", ""])
        >>> g.add_edge("x", "shared", calls=[[1, 1]]); g.add_edge("shared", "mid", calls=[[1, 1]])
        >>> g.add_edge("mid", "shared", calls=[[1, 2]]); g.add_edge("shared", "A", calls=[[1, 1]])
        >>> g.add_edge("shared", "B", calls=[[2, 1]])
        >>> sorted(upstream(g, "A")), sorted(upstream(g, "B"))
        (['A', 'shared', 'x'], ['B', 'mid', 'shared', 'x'])
    """
    def state(name: str, number: int) -> tuple[str, int]:
        return (name, number if "call_scopes" in graph.nodes[name] else 1)

    start = state(node, call)
    seen = {start}
    todo = [start]
    while todo:
        target, target_call = todo.pop()
        for source in graph.predecessors(target):
            for source_call, edge_call in graph.edges[source, target].get("calls") or [[1, 1]]:
                if state(target, edge_call) != (target, target_call):
                    continue
                found = state(source, source_call)
                if found not in seen:
                    seen.add(found)
                    todo.append(found)
    return {name for name, _ in seen}


def input_id_ranges(topology: Topology) -> dict[str, int]:
    """For each model input that feeds an Embedding (at any nesting depth), its vocabulary size.

    Synthetic data draws ids in ``[0, input_dim)`` for these inputs (the smallest
    vocabulary when one input feeds several Embeddings). The input reaches the
    Embedding (or a subclass such as KerasHub's ``ReversibleEmbedding``, or a layer
    with a ``vocabulary_size`` such as ``TokenAndPositionEmbedding``) directly, inside
    a nested model, or through weightless operations that pass ids on unchanged
    (reshape, slice, ...).
    """
    graph = topology.graph
    ranges: dict[str, int] = {}
    for name, node in topology.inputs.items():
        dims: list[int] = []
        stack, seen = list(graph.successors(node)), set()
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            attrs = graph.nodes[current]
            if attrs.get("input_dim"):
                dims.append(int(attrs["input_dim"]))
            elif attrs.get("class_name") in _ID_PRESERVING and not attrs.get("trainable_params"):
                stack.extend(graph.successors(current))
        if dims:
            ranges[name] = min(dims)
    return ranges


def sequence_limit(topology: Topology) -> int | None:
    """The longest sequence the model's position embeddings take (the smallest of their lengths), or None."""
    limits = [int(a["max_length"]) for _, a in topology.graph.nodes(data=True) if a.get("max_length")]
    return min(limits) if limits else None


def input_value_ranges(topology: Topology) -> dict[str, tuple[float, float]]:
    """For inputs that feed an image preprocessor scaling pixels (``Rescaling``, KerasHub's
    ``ImageConverter``), the raw range it expects: ``(0, 255)``."""
    graph = topology.graph
    ranges: dict[str, tuple[float, float]] = {}
    for name, node in topology.inputs.items():
        found = [graph.nodes[n]["value_range"] for n in graph.successors(node) if graph.nodes[n].get("value_range")]
        if found:
            low, high = found[0]
            ranges[name] = (float(low), float(high))
    return ranges
