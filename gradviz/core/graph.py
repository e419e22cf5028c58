"""The model's graph as plain data: what :mod:`gradviz.model.topology` walks out of Keras.

networkx only: the analysis and the outputs read this, never Keras.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        missing: what an incomplete graph lacks and why, in words (empty otherwise,
            and for subclassed layers inside a functional model).
    """

    graph: nx.DiGraph
    outputs: dict[str, str]
    inputs: dict[str, str]
    variables: tuple[VariableInfo, ...]
    complete: bool = True
    missing: str = ""

    @property
    def layer_names(self) -> list[str]:
        """Graph nodes in topological order."""
        return sorted(self.graph.nodes, key=lambda n: self.graph.nodes[n]["order"])



def input_id_ranges(topology: Topology) -> dict[str, int]:
    """For each model input that feeds an Embedding (at any nesting depth), its vocabulary size.

    Synthetic data draws ids in ``[0, input_dim)`` for these inputs (the smallest
    vocabulary when one input feeds several Embeddings).
    """
    graph = topology.graph
    ranges: dict[str, int] = {}
    for name, node in topology.inputs.items():
        dims = [graph.nodes[n]["input_dim"] for n in graph.successors(node) if graph.nodes[n].get("input_dim")]
        if dims:
            ranges[name] = min(dims)
    return ranges
