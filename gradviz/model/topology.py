"""The model's functional graph, as a plain networkx graph.

This is the only module that reads Keras graph internals (``_nodes_by_depth``,
``Node.input_tensors``, ``Node.outputs``, ``Sequential._functional``). They are
private API: ``tests/test_topology.py`` pins their behaviour for the Keras
versions gradviz supports, so a Keras upgrade breaks this one file.

One graph node per layer *and* per ``keras.ops`` operation (StopGradient,
Argmax, Cast, ...: where gradients get blocked). A layer called several times
(tied embeddings, a nested model called twice) is one node: it has one set of
weights and one gradient. Its calls are kept apart for drawing: node attribute
``call_scopes`` (where each call is made) and edge attribute ``calls`` (which
call of each end an edge joins), present only on reused nodes and their
edges. Nested functional and Sequential models
are expanded; their layers are named ``<model>/<layer>`` and carry the nested
model in ``parent``. Subclassed models used as layers cannot be walked and stay
one node. A top-level subclassed model is walked through a functional view of
its ``call()``, traced on symbolic inputs made from its build shapes
(:func:`functional_view`); when that fails, its layers are listed unconnected
(functional sub-models expanded) and the topology says what is missing.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import networkx as nx

from gradviz.core.graph import Topology, VariableInfo
from gradviz.errors import ModelLoadError

if TYPE_CHECKING:
    import keras

#: Operations and layers that have no gradient (or whose output is integer):
#: a loss's gradient cannot flow back through them. (``sign`` is not here: its
#: gradient exists and is zero, which shows as a dead layer; ``top_k``'s values
#: pass gradients.)
GRADIENT_BLOCKING = frozenset(
    {
        "StopGradient",
        "Argmax",
        "Argmin",
        "Argsort",
        "Round",
        "Floor",
        "Ceil",
        "Equal",
        "NotEqual",
        "Greater",
        "GreaterEqual",
        "Less",
        "LessEqual",
        "LogicalAnd",
        "LogicalOr",
        "LogicalNot",
        "LogicalXor",
        "OneHot",
        "Discretization",
        "Hashing",
        "StringLookup",
        "IntegerLookup",
        "CategoryEncoding",
    }
)


def output_names(model: keras.Model) -> list[str]:
    """The model's output names, in the order of ``model.outputs``, made unique.

    A model built with a dict of outputs is named by its keys (what ``compile``
    matches a dict of losses against), in Keras's flattening order (sorted
    keys). Otherwise Keras's ``output_names``, which repeats a name when one
    operation gives several outputs (``ops.split``): repeats get ``_1``, ``_2``
    so that every output keeps its own loss.
    """
    if _functional_of(model) is None:
        view, _ = functional_view(model)
        if view is not None:
            return output_names(view)
        return _spec_output_names(model)
    struct = getattr(model, "_outputs_struct", None)
    if isinstance(struct, dict) and struct:
        names = [str(k) for k in sorted(struct)]
    else:
        names = [str(n) for n in (getattr(model, "output_names", None) or [])]
    if not names:
        outputs = _flat(getattr(model, "outputs", None) or [])
        names = [_history(t)[0].name if _history(t) else f"output_{i}" for i, t in enumerate(outputs)]
    return unique_names(names)


def unique_names(names: list[str]) -> list[str]:
    """Suffix repeated names with ``_1``, ``_2``, ... (skipping names already taken).

    Example:
        >>> unique_names(["split", "split", "c", "split_1"])
        ['split', 'split_2', 'c', 'split_1']
    """
    taken = set(names)
    seen: set[str] = set()
    result = []
    for name in names:
        if name in seen:
            n = 1
            while f"{name}_{n}" in taken:
                n += 1
            name = f"{name}_{n}"
            taken.add(name)
        seen.add(name)
        result.append(name)
    return result


def output_tensors(model: keras.Model) -> list[Any]:
    """The model's symbolic outputs, in ``output_names`` order."""
    if _functional_of(model) is None:
        view, _ = functional_view(model)
        if view is not None:
            return output_tensors(view)
        spec = _output_spec(model)
        return _flat(spec) if spec is not None else []
    outputs = getattr(model, "outputs", None) or []
    if isinstance(outputs, dict):
        return [outputs[k] for k in outputs]
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def build_topology(model: keras.Model) -> Topology:
    """Walk a Keras model into a :class:`Topology`.

    Raises:
        ModelLoadError: the model has not been built (no known inputs).
    """
    return build_topology_and_sources(model)[0]


def build_topology_and_sources(model: keras.Model) -> tuple[Topology, dict[int, str]]:
    """:func:`build_topology`, and the graph node that stands for each layer object.

    The second value maps ``id(layer)`` to a node name for every layer of the model
    (the model itself included when a node stands for it): its own node, or the node
    of the nearest enclosing layer that has one (a layer inside a subclassed layer).
    It names the losses a layer adds with ``add_loss``.

    Raises:
        ModelLoadError: the model has not been built (no known inputs).
    """
    walker = _Walker()
    names = output_names(model)
    view, missing = (None, "") if _functional_of(model) is not None else functional_view(model)
    if _functional_of(model) is not None:
        inputs, produced = walker.walk_functional(model, prefix="", scope="", sources=None)
    elif view is not None:
        inputs, produced = walker.walk_functional(view, prefix="", scope="", sources=None)
        walker.add_unwalked_children(model)
    elif hasattr(model, "layers") and (getattr(model, "built", False) or model.trainable_variables):
        inputs, outputs = walker.walk_opaque_children(model, len(names))
        produced = [(name, 1) for name in outputs]
        walker.missing = f"model '{model.name}' is subclassed and {missing}"
    else:
        raise ModelLoadError("the model is not built: call it on data or give it an Input before saving")
    output_map = {name: produced[i][0] for i, name in enumerate(names) if i < len(produced)}
    output_calls = {name: produced[i][1] for i, name in enumerate(names) if i < len(produced) and produced[i][1] > 1}
    walker.finish_calls()
    variables = walker.assign_variables(model)
    try:
        ordered = list(nx.lexicographical_topological_sort(walker.graph, key=walker.discovery.__getitem__))
    except nx.NetworkXUnfeasible:  # a layer applied to its own output: one node, a cycle; keep call order
        ordered = sorted(walker.graph, key=walker.discovery.__getitem__)
    order = {n: i for i, n in enumerate(ordered)}
    nx.set_node_attributes(walker.graph, order, "order")
    topology = Topology(walker.graph, output_map, inputs, variables, walker.complete, output_calls, walker.missing)
    return topology, walker.source_names(model)


def input_names(model: keras.Model) -> list[str]:
    """The names of the model's inputs, in order."""
    return [_input_name(t, i) for i, t in enumerate(input_tensors(model))]


def input_tensors(model: keras.Model) -> list[Any]:
    """The model's symbolic inputs, flat and in order.

    A subclassed model has none of its own: they are those of its functional view, or
    made from the shapes it was built with; empty when neither is known.
    """
    functional = _functional_of(model)
    if functional is not None:
        return _flat(getattr(functional, "inputs", None) or [])
    view, _ = functional_view(model)
    if view is not None:
        return _flat(view.inputs)
    made = _symbolic_inputs(model)
    return _flat(made) if made is not None else []


def output_structure(model: keras.Model) -> Any:
    """The structure of what calling the model returns, with output names as leaves.

    A name (one output), a list or tuple of names, or a dict ``{key: name}``: what
    ``compile()``'s loss config is matched against. None when it cannot be known.
    """
    names = output_names(model)
    if _functional_of(model) is not None:
        struct = getattr(_functional_of(model), "_outputs_struct", None)
    else:
        view, _ = functional_view(model)
        struct = getattr(view, "_outputs_struct", None) if view is not None else _output_spec(model)
    if struct is None or not names:
        return None
    if isinstance(struct, dict):
        return {k: k for k in struct}
    if isinstance(struct, (list, tuple)):
        return type(struct)(names[: len(struct)])
    return names[0]


def is_subclassed(model: Any) -> bool:
    """Whether ``model`` is a model whose graph is its ``call()`` code (no functional graph of its own)."""
    return _functional_of(model) is None


# -- subclassed models: a functional view of call() --------------------------------

#: model -> (its functional view or None, why there is none); traced once per model
_VIEWS: weakref.WeakKeyDictionary[Any, tuple[Any, str]] = weakref.WeakKeyDictionary()
_INPUTS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_SPECS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def functional_view(model: keras.Model) -> tuple[Any, str]:
    """A functional model with the same layers as subclassed ``model``, traced from its ``call()``.

    ``call()`` runs once on symbolic inputs shaped as the model was built (its build
    config, which a ``.keras`` file keeps); its layers record the graph, which becomes a
    functional model to walk. This works when ``call()`` is made of layer calls and
    ``keras.ops`` (the usual case); Python branching on tensor values, backend-specific
    ops or a model never built make it fail. Nothing of the model is changed: the nodes
    the trace records and the names it uses are undone.

    Returns:
        ``(view, "")``, or ``(None, why)`` when ``call()`` cannot be traced.
    """
    if model in _VIEWS:
        return _VIEWS[model]
    from gradviz.model import keras_internals as internals

    inputs = _symbolic_inputs(model)
    if not _has_own_call(model):
        result: tuple[Any, str] = (
            None, "has no call() of its own (its training step calls its sub-models): only its layers are drawn, "
            "unconnected; reach comes from the gradients",
        )
    elif inputs is None:
        result = (
            None, "its input shape is unknown (Keras records it when it builds a model whose call() it can trace; "
            "this one was never called, or not traceable), so its call() cannot be traced: only its layers are "
            "drawn, unconnected; reach comes from the gradients",
        )
    else:
        import keras

        try:
            with internals.symbolic_calls_undone(model), _own_add_loss_ignored(model):
                outputs = internals.call_on_symbolic(model, inputs)
                view = keras.Model(inputs, outputs, name=model.name)
            result = (view, "")
        except Exception as e:  # anything call() may raise on symbolic tensors
            text = " ".join(str(e).split()).split(". ")[0]  # Keras's first sentence says what failed
            text = text[:160] + ("..." if len(text) > 160 else "")
            result = (
                None, f"its call() cannot run on symbolic inputs ({type(e).__name__}: {text}): only its layers are "
                "drawn, unconnected; paths between them are unknown, reach comes from the gradients",
            )
    _VIEWS[model] = result
    return result


def _has_own_call(model: Any) -> bool:
    import keras

    return getattr(type(model), "call", None) is not getattr(keras.Model, "call", None)


def _symbolic_inputs(model: Any) -> Any:
    """``keras.Input``s shaped as the model was built (named after ``call()``'s argument), or None."""
    if model in _INPUTS:
        return _INPUTS[model]
    from gradviz.model import keras_internals as internals

    shapes = internals.build_input_shapes(model)
    arg = internals.call_argument_name(model)
    made: Any = None
    if shapes is not None:
        import keras

        with internals.symbolic_calls_undone(model):
            if _is_shape(shapes):
                made = keras.Input(tuple(shapes[1:]), name=arg)
            elif isinstance(shapes, dict) and all(_is_shape(v) for v in shapes.values()):
                made = {str(k): keras.Input(tuple(v[1:]), name=str(k)) for k, v in shapes.items()}
            elif isinstance(shapes, (list, tuple)) and all(_is_shape(v) for v in shapes):
                made = [keras.Input(tuple(v[1:]), name=f"{arg}_{i}") for i, v in enumerate(shapes)]
    _INPUTS[model] = made
    return made


def _is_shape(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(d is None or isinstance(d, int) for d in value) and len(value) > 0


def _output_spec(model: Any) -> Any:
    """What calling the model returns, as symbolic tensors (``compute_output_spec``), or None."""
    if model in _SPECS:
        return _SPECS[model]
    from gradviz.model import keras_internals as internals

    inputs = _symbolic_inputs(model)
    spec = None
    if inputs is not None:
        try:
            with internals.symbolic_calls_undone(model), _own_add_loss_ignored(model):
                spec = model.compute_output_spec(inputs)
        except Exception:  # call() cannot even run in a graph: the outputs stay unknown
            spec = None
    _SPECS[model] = spec
    return spec


def _spec_output_names(model: Any) -> list[str]:
    """Output names of a model that can only be called: dict keys, ``output_0``, ... or ``output``."""
    spec = _output_spec(model)
    if spec is None:
        return []
    if isinstance(spec, dict):
        return [str(k) for k in sorted(spec)]
    if isinstance(spec, (list, tuple)):
        return [f"output_{i}" for i in range(len(_flat(spec)))]
    return ["output"]


class _own_add_loss_ignored:
    """While ``call()`` runs on symbolic tensors, the model's own ``add_loss`` (which takes
    only real tensors) does nothing; the losses themselves are found when the model runs."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __enter__(self) -> None:
        object.__setattr__(self.model, "add_loss", lambda *args, **kwargs: None)

    def __exit__(self, *exc: Any) -> None:
        try:
            object.__delattr__(self.model, "add_loss")
        except AttributeError:  # pragma: no cover - set in __enter__
            pass


# -- internals ---------------------------------------------------------------


def _flat(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [v for k in sorted(value) for v in _flat(value[k])]
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _flat(item)]
    return [value]


def _history(tensor: Any) -> Any:
    return getattr(tensor, "_keras_history", None)


def _input_name(tensor: Any, index: int) -> str:
    history = _history(tensor)
    if history is not None:
        return str(history[0].name)
    return str(getattr(tensor, "name", None) or f"input_{index}")


def _functional_of(model: Any) -> Any:
    """The functional graph behind a model: itself, a Sequential's, or None."""
    if hasattr(model, "_nodes_by_depth") and getattr(model, "inputs", None) is not None:
        return model
    inner = getattr(model, "_functional", None)
    if inner is not None and hasattr(inner, "_nodes_by_depth"):
        return inner
    return None


def _nodes_in_order(functional: Any) -> list[Any]:
    depths = sorted(functional._nodes_by_depth, reverse=True)
    return [node for depth in depths for node in functional._nodes_by_depth[depth]]


def _shape_text(tensors: Any) -> str:
    shapes = []
    for t in _flat(tensors):
        shape = getattr(t, "shape", None)
        if shape is not None:
            shapes.append("(" + ", ".join("None" if d is None else str(d) for d in shape) + ")")
    return shapes[0] if len(shapes) == 1 else "[" + ", ".join(shapes) + "]"


def _is_blocking(op: Any) -> bool:
    name = type(op).__name__
    if name in GRADIENT_BLOCKING:
        return True
    if name == "Cast":
        dtype = str(getattr(op, "dtype", "") or "")
        return "int" in dtype or "bool" in dtype
    return False


class _Walker:
    def __init__(self) -> None:
        self.graph = nx.DiGraph()
        self.discovery: dict[str, int] = {}
        self.owner: dict[int, str] = {}  # id(layer) -> node name
        self.objects: dict[str, Any] = {}  # node name -> layer or op
        self.complete = True
        self.call_scopes: dict[str, list[str]] = {}  # node name -> the scope of each of its calls
        self.model_calls: dict[str, int] = {}  # nested model prefix -> how often it has been expanded
        self.missing = ""  # what a graph that is not complete lacks, in words

    def add_node(self, name: str, op: Any, kind: str, parent: str, output: Any) -> str:
        if name in self.graph:
            return name
        activation = getattr(op, "activation", None)
        self.graph.add_node(
            name,
            kind=kind,
            class_name=type(op).__name__,
            parent=parent,
            trainable_params=0,  # counted in assign_variables, once per variable
            variables=[],
            output_shape=_shape_text(output),
            activation=getattr(activation, "__name__", None) if activation is not None else None,
            compute_dtype=str(getattr(op, "compute_dtype", "") or ""),
            blocks_gradient=_is_blocking(op),
            input_dim=_vocabulary_size(op),
            max_length=_position_limit(op),
            value_range=_pixel_range(op),
        )
        self.discovery[name] = len(self.discovery)
        self.owner.setdefault(id(op), name)
        self.objects[name] = op
        return name

    def add_edge(self, source: str, target: str, tensor: Any, calls: tuple[int, int] = (1, 1)) -> None:
        """An edge from call ``calls[0]`` of ``source`` to call ``calls[1]`` of ``target`` (1: the first call)."""
        if source != target:
            if not self.graph.has_edge(source, target):
                self.graph.add_edge(source, target, shape=_shape_text(tensor), calls=[])
            pairs = self.graph.edges[source, target]["calls"]
            if list(calls) not in pairs:
                pairs.append(list(calls))

    def add_call(self, name: str, scope: str) -> int:
        """Record one more call of node ``name``, made inside ``scope`` (nested model calls, ``a/b#2``);
        return its number (1 for the first)."""
        scopes = self.call_scopes.setdefault(name, [])
        scopes.append(scope)
        return len(scopes)

    def finish_calls(self) -> None:
        """Keep call sites only where a node is called more than once: node attribute ``call_scopes`` (the scope
        of each call) and edge attribute ``calls`` (pairs ``[source call, target call]``) on the edges of such
        nodes. Graphs without reused layers carry neither."""
        reused = {name for name, scopes in self.call_scopes.items() if len(scopes) > 1}
        for name in reused:
            self.graph.nodes[name]["call_scopes"] = list(self.call_scopes[name])
        for source, target, attrs in self.graph.edges(data=True):
            if source not in reused and target not in reused:
                del attrs["calls"]

    def walk_functional(
        self, model: Any, prefix: str, scope: str, sources: list[tuple[str, int]] | None
    ) -> tuple[dict[str, str], list[tuple[str, int]]]:
        """Add the nodes of one call of a functional model, made inside ``scope``; return its input map and
        output producers. Sources and outputs are ``(node, call)`` pairs, so that a layer (or nested model)
        called twice keeps its calls apart."""
        functional = _functional_of(model)
        parent = prefix.rstrip("/")
        producer: dict[int, tuple[str, int]] = {}
        inputs: dict[str, str] = {}
        for i, tensor in enumerate(_flat(functional.inputs)):
            if sources is None:
                name = _input_name(tensor, i)
                history = _history(tensor)
                self.add_node(name, history[0] if history else tensor, "input", parent, tensor)
                inputs[name] = name
                producer[id(tensor)] = (name, self.add_call(name, scope.rstrip("/")))
            elif i < len(sources):
                producer[id(tensor)] = sources[i]
        for node in _nodes_in_order(functional):
            op = node.operation
            if type(op).__name__ == "InputLayer":
                continue
            fed = [(producer[id(t)], t) for t in node.input_tensors if id(t) in producer]
            if _functional_of(op) is not None and hasattr(op, "trainable_variables") and op is not model:
                # a nested model: expand it in place, fed by this call's inputs; a second call of it gets its
                # own scope (``encoder#2``) but the same node names
                inner = f"{prefix}{op.name}/"
                count = self.model_calls[inner] = self.model_calls.get(inner, 0) + 1
                inner_scope = f"{scope}{op.name}" + (f"#{count}" if count > 1 else "") + "/"
                _, outs = self.walk_functional(op, inner, inner_scope, [source for source, _ in fed])
                for tensor, out in zip(_flat(node.outputs), outs):
                    producer[id(tensor)] = out
                continue
            kind = "layer" if hasattr(op, "trainable_variables") and hasattr(op, "built") else "op"
            if kind == "layer" and type(op).__module__.startswith("keras.src.ops"):
                kind = "op"
            if kind == "layer" and hasattr(op, "layers") and getattr(op, "layers", None):
                kind = "model"  # a subclassed model used as a layer: opaque
                self.complete = False
            name = self.owner.get(id(op)) or f"{prefix}{op.name}"
            self.add_node(name, op, kind, parent, node.outputs)
            call = self.add_call(name, scope.rstrip("/"))
            for (source, source_call), tensor in fed:
                self.add_edge(source, name, tensor, (source_call, call))
            for tensor in _flat(node.outputs):
                producer[id(tensor)] = (name, call)
        outputs = [producer.get(id(t), ("", 1)) for t in _flat(functional.outputs)]
        return inputs, outputs

    def walk_opaque_children(self, model: Any, n_outputs: int) -> tuple[dict[str, str], list[str]]:
        """A model whose call() is Python code: its layers, unconnected, and one call node.

        Functional sub-models (a VAE's encoder and decoder) are expanded: their own graphs are known.
        """
        self.complete = False
        for layer in getattr(model, "layers", []):
            if _functional_of(layer) is not None:
                self.walk_functional(layer, prefix=f"{layer.name}/", scope=f"{layer.name}/", sources=None)
            else:
                self.add_node(layer.name, layer, "layer", "", None)
        if not n_outputs:  # no known output to hang losses from (a VAE without call(), analysed by loss_terms)
            return {}, []
        call = self.add_node(f"{model.name}.call", model, "model", "", None)
        return {}, [call] * n_outputs

    def add_unwalked_children(self, model: Any) -> None:
        """The model's layers its traced call() did not use: unconnected nodes, so their weights have an owner."""
        for layer in getattr(model, "layers", []):
            if id(layer) not in self.owner and getattr(layer, "trainable_variables", None):
                self.add_node(layer.name, layer, "layer", "", None)

    def source_names(self, model: Any) -> dict[int, str]:
        """``id(layer)`` -> the node standing for it (its own, or its nearest walked ancestor's)."""
        from gradviz.model.keras_internals import sublayers

        names: dict[int, str] = {}
        stack: list[tuple[Any, str | None]] = [(model, None)]
        while stack:
            layer, inherited = stack.pop()
            if id(layer) in names:
                continue
            name = self.owner.get(id(layer), inherited)
            if name is not None:
                names[id(layer)] = name
            stack.extend((child, name) for child in reversed(sublayers(layer)))
        return names

    def assign_variables(self, model: Any) -> tuple[VariableInfo, ...]:
        """Map every trainable variable to the first node whose layer owns it."""
        owner_of_var: dict[int, str] = {}
        for name in sorted(self.objects, key=self.discovery.__getitem__):
            for variable in getattr(self.objects[name], "trainable_variables", []) or []:
                owner_of_var.setdefault(id(variable), name)
        fallback = ""
        infos: list[tuple[Any, str]] = []
        for variable in model.trainable_variables:
            owner = owner_of_var.get(id(variable))
            if owner is None:  # a variable the model creates itself, outside any layer
                if not fallback:
                    fallback = self.add_node(f"{model.name} (own variables)", model, "model", "", None)
                owner = fallback
            infos.append((variable, owner))
        paths = [str(getattr(v, "path", None) or v.name) for v, _ in infos]
        clashes = {p for p in paths if paths.count(p) > 1}
        seen: dict[str, int] = {}
        result = []
        for (variable, owner), path in zip(infos, paths):
            if path in clashes:
                parent = self.graph.nodes[owner]["parent"]
                path = f"{parent}/{path}" if parent else f"{owner}/{getattr(variable, 'name', path)}"
            count = seen.get(path, 0)
            seen[path] = count + 1
            if count:  # still clashing (the same layer name twice): number them
                path = f"{path}_{count}"
            self.graph.nodes[owner]["variables"].append(path)
            self.graph.nodes[owner]["trainable_params"] += _size(variable)
            result.append(VariableInfo(path, owner, tuple(int(d) for d in variable.shape)))
        return tuple(result)


def _class_names(op: Any) -> set[str]:
    return {cls.__name__ for cls in type(op).__mro__}


def _vocabulary_size(op: Any) -> int | None:
    """The ids a layer takes: an Embedding's (or a subclass's, e.g. KerasHub's ReversibleEmbedding)
    ``input_dim``, or a token layer's ``vocabulary_size`` (KerasHub's TokenAndPositionEmbedding)."""
    if "Embedding" in _class_names(op) and isinstance(getattr(op, "input_dim", None), int):
        return int(op.input_dim) or None
    size = getattr(op, "vocabulary_size", None)
    if isinstance(size, int) and not isinstance(size, bool) and size > 0 and hasattr(op, "trainable_variables"):
        return size
    return None


def _position_limit(op: Any) -> int | None:
    """The longest sequence a position embedding takes (KerasHub's ``sequence_length``)."""
    if not any("Position" in name for name in _class_names(op)):
        return None
    length = getattr(op, "sequence_length", None)
    return int(length) if isinstance(length, int) and not isinstance(length, bool) and length > 0 else None


#: the raw pixel range assumed for an input a preprocessor rescales by about 1/255
PIXEL_RANGE = (0.0, 255.0)


def _pixel_range(op: Any) -> tuple[float, float] | None:
    """``(0, 255)`` when ``op`` rescales pixels: a ``Rescaling`` or KerasHub ``ImageConverter`` whose
    scale takes 255 to between 0.5 and 8 (1/255, 1/127.5, ImageNet's per-channel 1/(255 std))."""
    if not _class_names(op) & {"Rescaling", "ImageConverter"}:
        return None
    scale = getattr(op, "scale", None)
    values: list[Any] = list(scale) if isinstance(scale, (list, tuple)) else [scale]
    try:
        spans = [float(v) * PIXEL_RANGE[1] for v in values]
    except (TypeError, ValueError):
        return None
    if spans and all(0.5 <= s <= 8.0 for s in spans):
        return PIXEL_RANGE
    return None


def _has_output(layer: Any) -> bool:
    try:
        return layer.output is not None
    except (AttributeError, ValueError):
        return False


def _size(variable: Any) -> int:
    total = 1
    for d in variable.shape:
        total *= int(d)
    return total
