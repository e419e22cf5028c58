"""The losses and weights to analyse.

A :class:`LossSpec` is the list of terms whose weighted sum Keras's training
step differentiates. Losses come from three sources:

* ``compile``: one term per output that has a loss (as the model was compiled,
  or as ``--loss`` / ``--loss-weight`` override it);
* ``add_loss``: one term per layer that adds a loss of its own in ``call()``
  (an endpoint layer), named after the layer; weight regularizers (kernel, bias,
  activity) are not endpoints: they are summed into one term named
  ``regularization``;
* ``loss_terms``: the named terms a custom training step sums, from a function
  ``fn(model, x, y) -> {name: scalar}``; they replace the other two.

Which source a term has follows from its ``output`` and ``loss`` (see
:func:`loss_source`), so the JSON report keeps its fields.

The rules mirror ``keras/src/trainers/compile_utils.py`` (``CompileLoss``):
a single loss applies to every output; a list is matched to the outputs by
position (a list of several losses on a one-output model applies each to that
output); a dict is matched by output name; ``None`` means "no loss here".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

from gradviz.errors import LossSpecError

REGULARIZATION = "regularization"
#: ``LossTerm.loss`` of the summed regularizers (``model.losses`` minus the endpoint layers' terms)
REGULARIZATION_LOSS = "model.losses"
#: ``LossTerm.loss`` of an endpoint layer's ``add_loss`` term
ADD_LOSS = "add_loss"
#: the sources of losses, as :func:`loss_source` names them
SOURCES = ("compile", "add_loss", "loss_terms", "regularization")


def loss_source(output: str | None, loss: str) -> str:
    """Where a loss comes from, from the fields every report keeps (``output``, ``loss``).

    ``compile``: a compiled (or ``--loss``) loss of an output; ``add_loss``: a layer's
    own ``add_loss`` (its ``output`` is that layer); ``regularization``: the summed
    regularizers (``loss`` is ``model.losses``); ``loss_terms``: a term of a custom
    training step (no output; ``loss`` names the function).

    Example:
        >>> loss_source("C", "mse"), loss_source("ctc", "add_loss"), loss_source(None, "model.losses")
        ('compile', 'add_loss', 'regularization')
        >>> loss_source(None, "vae_terms")
        'loss_terms'
    """
    if loss == ADD_LOSS:
        return "add_loss"
    if output is not None:
        return "compile"
    return "regularization" if loss == REGULARIZATION_LOSS else "loss_terms"

#: what ``keras.losses.get`` accepts by name, listed in messages about unknown names.
COMMON_LOSSES = (
    "mse",
    "mae",
    "mape",
    "msle",
    "huber",
    "log_cosh",
    "binary_crossentropy",
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "binary_focal_crossentropy",
    "categorical_focal_crossentropy",
    "kl_divergence",
    "poisson",
    "hinge",
    "squared_hinge",
    "categorical_hinge",
    "cosine_similarity",
    "crossentropy",
)


@dataclass(frozen=True)
class LossTerm:
    """One loss of the weighted sum.

    Attributes:
        name: the output name, the endpoint layer's name (``add_loss``), the name a
            ``loss_terms`` function gives it, or ``regularization``; unique within a spec.
        output: the model output the loss applies to; for an ``add_loss`` term the
            layer that adds it (None when that is the model itself); None for
            regularization and ``loss_terms``.
        loss: the loss as users name it (``binary_crossentropy``, ``huber_loss``);
            ``add_loss``, ``model.losses`` (regularization), or the ``loss_terms``
            function's name.
        weight: its factor in the weighted sum.
        identifier: what ``keras.losses.get`` resolves (a name, a serialized
            config or a live loss object); not part of equality.
    """

    name: str
    output: str | None
    loss: str
    weight: float
    identifier: Any = field(default=None, compare=False, hash=False, repr=False)

    @property
    def source(self) -> str:
        """``compile``, ``add_loss``, ``loss_terms`` or ``regularization`` (see :func:`loss_source`)."""
        return loss_source(self.output, self.loss)

    @property
    def is_regularization(self) -> bool:
        """Whether this is the summed regularizers' term."""
        return self.source == "regularization"


@dataclass(frozen=True)
class LossSpec:
    """The terms to analyse and the outputs that carry no loss.

    Example:
        >>> spec = LossSpec((LossTerm("C", "C", "mse", 0.5), LossTerm("D", "D", "mae", 0.3)), ())
        >>> spec.names
        ('C', 'D')
        >>> spec.with_weights({"D": 1.0}).weights
        (0.5, 1.0)
    """

    terms: tuple[LossTerm, ...]
    unlossed_outputs: tuple[str, ...] = ()
    #: what the saved config does that its author may not expect (reported as findings)
    notes: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """The term names, in order."""
        return tuple(t.name for t in self.terms)

    @property
    def weights(self) -> tuple[float, ...]:
        """The term weights, in order."""
        return tuple(t.weight for t in self.terms)

    @property
    def output_terms(self) -> tuple[LossTerm, ...]:
        """The compiled terms, attached to outputs (what Keras's ``loss_weights`` weighs)."""
        return tuple(t for t in self.terms if t.source == "compile")

    def with_weights(self, weights: Mapping[str, float]) -> LossSpec:
        """A copy with some weights replaced; names not given keep their weight.

        Raises:
            LossSpecError: a name is not one of the terms.
        """
        unknown = sorted(set(weights) - set(self.names))
        if unknown:
            raise LossSpecError(
                f"unknown loss {', '.join(map(repr, unknown))}; valid: {', '.join(self.names)}"
            )
        terms = tuple(replace(t, weight=float(weights.get(t.name, t.weight))) for t in self.terms)
        return replace(self, terms=terms)


_ASSIGNMENT = re.compile(r"^\s*([^=]+?)\s*=\s*(.*?)\s*$")


def parse_assignment(text: str, option: str) -> tuple[str, str]:
    """Split ``OUTPUT=VALUE``.

    Example:
        >>> parse_assignment("C = mse", "--loss")
        ('C', 'mse')

    Raises:
        LossSpecError: there is no ``=`` or a side is empty.
    """
    match = _ASSIGNMENT.match(text)
    if not match or not match.group(1) or not match.group(2):
        raise LossSpecError(f"{option} expects OUTPUT=VALUE, got {text!r}")
    return match.group(1), match.group(2)


def parse_weight(text: str, option: str = "--loss-weight") -> float:
    """Parse a loss weight: a finite number, zero or more.

    Example:
        >>> parse_weight("0.5")
        0.5
        >>> parse_weight("1e-3")
        0.001

    Raises:
        LossSpecError: not a number, negative, NaN or infinite.
    """
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise LossSpecError(f"{option}: {text!r} is not a number; a weight is a number >= 0") from None
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise LossSpecError(f"{option}: {text!r} is not a valid weight; a weight is a finite number >= 0")
    return value


def parse_weight_assignments(items: Iterable[str], option: str = "--loss-weight") -> dict[str, float]:
    """Parse repeated ``OUTPUT=W`` options into a dict (the last one wins).

    Example:
        >>> parse_weight_assignments(["C=0.5", "D=2"])
        {'C': 0.5, 'D': 2.0}
    """
    result: dict[str, float] = {}
    for item in items:
        key, value = parse_assignment(item, option)
        result[key] = parse_weight(value, f"{option} {key}")
    return result


def parse_loss_assignments(items: Iterable[str]) -> dict[str | None, str]:
    """Parse repeated ``--loss OUTPUT=LOSS``; a bare ``LOSS`` applies to every output.

    Example:
        >>> parse_loss_assignments(["C=mse", "huber"])
        {'C': 'mse', None: 'huber'}
    """
    result: dict[str | None, str] = {}
    for item in items:
        if "=" in item:
            key, value = parse_assignment(item, "--loss")
            result[key] = value
        elif item.strip():
            result[None] = item.strip()
        else:
            raise LossSpecError("--loss expects OUTPUT=LOSS or LOSS, got an empty value")
    return result


def build_spec(
    output_names: Sequence[str],
    saved_loss: Any = None,
    saved_weights: Any = None,
    *,
    loss_overrides: Mapping[str | None, Any] | None = None,
    weight_overrides: Mapping[str, float] | None = None,
    has_regularization: bool = False,
    layer_names: Iterable[str] = (),
    source: str = "the model",
    require_terms: bool = True,
) -> LossSpec:
    """Decide which loss applies to which output, with which weight.

    Args:
        output_names: the model's outputs, in order.
        saved_loss: the ``loss`` the model was compiled with (any Keras form).
        saved_weights: the ``loss_weights`` it was compiled with.
        loss_overrides: ``{output: loss}`` from ``--loss``; the key None sets every output.
        weight_overrides: ``{output: weight}`` from ``--loss-weight``
            (``regularization`` is accepted too).
        has_regularization: whether ``model.losses`` is non-empty.
        layer_names: the model's layer names, to explain a name that is not an output.
        source: how to name the model in messages.
        require_terms: refuse a spec without a compiled loss. False when the model may
            still bring its own (``add_loss`` terms, found when it runs): the caller
            checks then, with :func:`no_loss_message`.

    Returns:
        The spec; a term's ``identifier`` is still unresolved (see :func:`resolve_losses`).

    Example:
        >>> spec = build_spec(["C", "D"], ["binary_crossentropy", "mse"], [0.5, 0.3])
        >>> [(t.name, t.loss, t.weight) for t in spec.terms]
        [('C', 'binary_crossentropy', 0.5), ('D', 'mse', 0.3)]
        >>> build_spec(["C", "D"], "mse").names
        ('C', 'D')

    Raises:
        LossSpecError: no loss at all, an override names no output, or the
            saved config cannot be matched to the outputs.
    """
    outputs = list(output_names)
    loss_overrides = dict(loss_overrides or {})
    weight_overrides = dict(weight_overrides or {})
    layers = set(layer_names)
    reg_name = regularization_name(outputs)
    valid_weight_names = set(outputs) | ({reg_name} if has_regularization else set())
    for name in [k for k in loss_overrides if k is not None]:
        _check_output(name, outputs, layers, "`losses`")
    for name in weight_overrides:
        if name not in valid_weight_names:
            _check_output(name, outputs, layers, "`loss_weights`")

    per_output = _losses_per_output(outputs, saved_loss)
    notes: list[str] = []
    leaves = len(saved_loss) if isinstance(saved_loss, (list, tuple)) else None
    if outputs and all(name in weight_overrides for name in outputs):
        saved_weights = None  # every weight is given: the saved ones, right or wrong, do not count
    weights = _weights_per_output(outputs, saved_weights, per_output, _loss_form(outputs, saved_loss), notes, leaves)
    if None in loss_overrides:
        per_output = [[loss_overrides[None]] for _ in outputs]
    for index, name in enumerate(outputs):
        if name in loss_overrides:
            per_output[index] = [loss_overrides[name]]

    terms: list[LossTerm] = []
    unlossed: list[str] = []
    for index, name in enumerate(outputs):
        losses = [(k, loss) for k, loss in enumerate(per_output[index]) if loss is not None]
        if not losses:
            unlossed.append(name)
            continue
        for count, (k, identifier) in enumerate(losses):
            term_name = name if count == 0 else f"{name}_{count + 1}"
            saved = weights[index]
            weight = weight_overrides.get(name, saved[k] if isinstance(saved, list) else saved)
            terms.append(LossTerm(term_name, name, display_name(identifier), float(weight), identifier))
    if not terms and require_terms:
        raise LossSpecError(no_loss_message(source, outputs))
    if has_regularization:
        terms.append(
            LossTerm(
                reg_name,
                None,
                REGULARIZATION_LOSS,
                float(weight_overrides.get(reg_name, 1.0)),
            )
        )
    return LossSpec(tuple(terms), tuple(unlossed), tuple(notes))


def no_loss_message(source: str, outputs: Sequence[str]) -> str:
    """What to say when a model has no loss at all: none compiled, none added, no regularizer.

    Example:
        >>> no_loss_message("m.keras", ["C", "D"])[:40]
        'm.keras has no loss to analyse (it was s'
    """
    return (
        f"{source} has no loss to analyse (it was saved without compile() or with loss=None, and no layer "
        f"adds one with add_loss); give one with `losses={{OUTPUT: LOSS}}` for outputs: "
        f"{', '.join(outputs) or '(none)'}, or the terms of a custom training step with `loss_terms`"
    )


def _check_output(name: str, outputs: Sequence[str], layers: set[str], option: str) -> None:
    if name in outputs:
        return
    hint = f" ('{name}' is an intermediate layer: only outputs carry a loss)" if name in layers else ""
    raise LossSpecError(f"{option}: '{name}' is not an output of the model; outputs are: {', '.join(outputs)}{hint}")


def regularization_name(taken: Iterable[str]) -> str:
    """The name of the ``model.losses`` term: ``regularization``, unless an output has that name.

    Example:
        >>> regularization_name(["C", "D"]), regularization_name(["regularization"])
        ('regularization', 'model.losses')
    """
    return REGULARIZATION if REGULARIZATION not in set(taken) else "model.losses"


def is_serialized_object(value: Any) -> bool:
    """Whether ``value`` is one serialized Keras object (``{"class_name": ..., "config": ...}``),
    as opposed to a dict of losses by output name.

    Example:
        >>> is_serialized_object({"class_name": "Huber", "config": {"delta": 1.0}})
        True
        >>> is_serialized_object({"C": "mse", "D": "mae"})
        False
    """
    return isinstance(value, dict) and "class_name" in value and set(value) <= _SERIALIZED_KEYS


_SERIALIZED_KEYS = frozenset({"module", "class_name", "config", "registered_name", "build_config", "compile_config"})

#: Keras 2 loss names that Keras 3 no longer resolves, and their Keras 3 names.
LEGACY_LOSS_NAMES = {
    "logcosh": "log_cosh",
    "huber_loss": "huber",
    "kullback_leibler_divergence": "kl_divergence",
}

#: Keras's built-in Loss classes; their configs never take ``fn`` (Keras 2 wrote it anyway).
_BUILTIN_LOSS_CLASSES = frozenset({
    "MeanSquaredError", "MeanAbsoluteError", "MeanAbsolutePercentageError", "MeanSquaredLogarithmicError",
    "CosineSimilarity", "Huber", "LogCosh", "Hinge", "SquaredHinge", "CategoricalHinge", "KLDivergence",
    "Poisson", "BinaryCrossentropy", "BinaryFocalCrossentropy", "CategoricalCrossentropy",
    "CategoricalFocalCrossentropy", "SparseCategoricalCrossentropy",
})


def normalize_loss(identifier: Any) -> Any:
    """Rewrite a Keras 2 loss identifier (legacy ``.h5`` training configs) into what Keras 3 reads.

    Keras 2 wrote ``reduction: "auto"`` (Keras 3 knows ``sum_over_batch_size``, which
    ``auto`` meant in ``compile()``), an ``fn`` entry in built-in loss configs, functions
    as ``{"class_name": "function", "config": NAME}``, and a few names Keras 3 dropped.
    Anything else is returned unchanged.

    Example:
        >>> normalize_loss({"class_name": "MeanSquaredError",
        ...                 "config": {"reduction": "auto", "name": "mean_squared_error"}})
        {'class_name': 'MeanSquaredError', 'config': {'reduction': 'sum_over_batch_size', 'name': 'mean_squared_error'}}
        >>> normalize_loss("logcosh"), normalize_loss({"class_name": "function", "config": "huber_loss"})
        ('log_cosh', 'huber')
        >>> normalize_loss("mse")
        'mse'
    """
    if isinstance(identifier, str):
        return LEGACY_LOSS_NAMES.get(identifier, identifier)
    if not is_serialized_object(identifier):
        return identifier
    config = identifier.get("config")
    if identifier.get("class_name") == "function" and isinstance(config, str):
        return LEGACY_LOSS_NAMES.get(config, config)
    if not isinstance(config, dict):
        return identifier
    config = dict(config)
    if config.get("reduction") == "auto":
        config["reduction"] = "sum_over_batch_size"
    if identifier.get("class_name") in _BUILTIN_LOSS_CLASSES and isinstance(config.get("fn"), str):
        del config["fn"]
    return {**identifier, "config": config}


def _losses_per_output(outputs: list[str], loss: Any) -> list[list[Any]]:
    """For each output, the losses Keras would apply to it."""
    n = len(outputs)
    if loss is None:
        return [[] for _ in outputs]
    if is_serialized_object(loss) and not set(map(str, loss)) <= set(outputs):
        return [[loss] for _ in outputs]  # one serialized Loss object: it applies to every output
    if isinstance(loss, dict):
        _check_saved_names(loss, outputs, "the saved loss", "`losses={OUTPUT: LOSS}`")
        return [[loss.get(name)] for name in outputs]
    if isinstance(loss, (list, tuple)):
        if len(loss) == n:
            return [[item] for item in loss]
        if n == 1:
            return [list(loss)]
        if len(loss) < n:  # CompileLoss walks the list by index: the outputs after it get no loss
            return [[item] for item in loss] + [[] for _ in range(n - len(loss))]
        raise LossSpecError(
            f"the saved loss list has {len(loss)} entries for {n} outputs ({', '.join(outputs)}); "
            "override with `losses={OUTPUT: LOSS}`"
        )
    return [[loss] for _ in outputs]


def _check_saved_names(mapping: dict[Any, Any], outputs: list[str], what: str, option: str) -> None:
    unknown = sorted(set(map(str, mapping)) - set(outputs))
    if unknown:
        raise LossSpecError(
            f"{what} names {', '.join(map(repr, unknown))}, which are not outputs; "
            f"outputs are: {', '.join(outputs)} (override with {option})"
        )


def _loss_form(outputs: list[str], loss: Any) -> str:
    """``list``, ``dict`` (by output name) or ``single`` (one loss for every output)."""
    if isinstance(loss, (list, tuple)):
        return "list"
    if isinstance(loss, dict) and not (is_serialized_object(loss) and not set(map(str, loss)) <= set(outputs)):
        return "dict"
    return "single"


def _weights_per_output(outputs: list[str], weights: Any, per_output: list[list[Any]], loss_form: str,
                        notes: list[str], leaves: int | None = None) -> list[float | list[float]]:
    """The saved weight of each output as ``CompileLoss.build`` packs it (a list of one weight per
    loss where one output has several), or a refusal in Keras's words where it cannot train.

    ``leaves`` is the length of a list ``loss`` (None entries count, as in Keras's tree).
    """
    n = len(outputs)
    if weights is None:
        return [1.0] * n
    count = leaves if loss_form == "list" and leaves is not None else (n if loss_form == "dict" else 1)
    values: list[Any]
    if isinstance(weights, dict) and loss_form == "dict":
        # CompileLoss turns a dict loss into a list by output name, and a dict of weights with it.
        missing = [name for name in outputs if name not in weights]
        if missing:
            raise LossSpecError(keras_refusal(
                f"loss_weights has no entry for output(s) {', '.join(map(repr, missing))} of the dict loss "
                f"(Keras raises KeyError: {missing[0]!r})"
            ))
        values = [weights[name] for name in outputs]  # other keys are ignored, as in Keras
    elif isinstance(weights, (dict, list, tuple)):
        flat = [weights[key] for key in sorted(weights)] if isinstance(weights, dict) else list(weights)
        if len(flat) != count:
            raise LossSpecError(keras_refusal(
                f"Keras raises ValueError: loss_weights must match the number of losses, got {count} losses and "
                f"{len(weights)} weights"
            ))
        if loss_form == "single":
            # One loss for every output and one weight: every output gets it, whatever a dict names it.
            if isinstance(weights, dict) and n > 1:
                notes.append(
                    f"loss is one loss for every output but loss_weights a dict ({', '.join(map(str, weights))}): "
                    f"Keras gives its one value, {flat[0]:g}, to every output; gradviz analyses what Keras trains"
                )
            values = [flat[0]] * n
        elif n == 1 and count > 1:  # several losses on the one output: one weight each
            return [[_saved_weight(outputs[0], w) for w in flat]]
        else:
            values = flat + [1.0] * (n - len(flat))  # a shorter list of losses leaves the last outputs unlossed
            if isinstance(weights, dict):
                by_name = [weights.get(name) for name in outputs]
                if by_name != values[:len(by_name)]:
                    # CompileLoss cannot match a dict of weights to a list of losses by name: it flattens
                    # the dict (sorted keys) and pairs the values with the losses by position.
                    notes.append(
                        "loss is a list but loss_weights a dict: Keras pairs the dict's values with the outputs by "
                        "position in sorted-key order, so training uses "
                        + ", ".join(f"{o}={w:g}" for o, w in zip(outputs, values))
                        + " (not " + ", ".join(f"{o}={weights[o]:g}" if o in weights else f"{o}=?" for o in outputs)
                        + "); gradviz analyses what Keras trains. Compile with a dict loss, or list weights"
                    )
    else:
        values = [weights] * n
    return [_saved_weight(name, value) for name, value in zip(outputs, values)]


def _saved_weight(name: str, value: Any) -> float:
    try:
        return parse_weight(str(value), f"the saved loss weight of {name}")
    except LossSpecError as e:
        raise LossSpecError(f"{e} (override with `loss_weights={{{name!r}: W}}`)") from None


def keras_refusal(why: str) -> str:
    """One line for a compile config Keras's training step refuses.

    Example:
        >>> keras_refusal("Keras raises X")[:53]
        'the saved compile config cannot train: Keras raises X'
    """
    return (
        f"the saved compile config cannot train: {why}; gradviz analyses only what Keras trains: fix compile(), "
        "or override with `losses={OUTPUT: LOSS}` / `loss_weights={OUTPUT: W}`"
    )


_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def display_name(identifier: Any) -> str:
    """How users name a loss: its string, its config name or its function name.

    Example:
        >>> display_name("mse")
        'mse'
        >>> display_name({"class_name": "Huber", "config": {"name": "huber_loss"}})
        'huber_loss'
        >>> display_name({"class_name": "MeanSquaredError", "config": {}})
        'mean_squared_error'
    """
    if isinstance(identifier, str):
        return identifier
    if isinstance(identifier, dict):
        config = identifier.get("config")
        if isinstance(config, dict) and isinstance(config.get("name"), str):
            return str(config["name"])
        if isinstance(config, str):  # a serialized plain function
            return config
        return _CAMEL.sub("_", str(identifier.get("class_name", "loss"))).lower()
    if identifier is None or isinstance(identifier, (bool, int, float, list)):
        return repr(identifier)  # a damaged config: show the value, not its type
    name = getattr(identifier, "name", None) or getattr(identifier, "__name__", None)
    return str(name) if name else type(identifier).__name__


