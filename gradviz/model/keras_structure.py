"""The model's declared input structure, and gradviz's flat inputs put back into it.

gradviz keeps a model's inputs as a flat list of arrays, named by
:func:`gradviz.model.topology.input_names`, in the order Keras flattens the inputs
the model was built with (``keras.tree.flatten``: dict values by sorted key,
nested lists and dicts depth first). Keras 3 calls a model with that
structure: a model declared with ``{"text": ..., "numbers": ...}`` refuses a
flat list, because its keys are not in sorted order. :func:`to_model_inputs`
is the one place that packs the flat list back.

This reads ``Functional._inputs_struct`` (what ``model.input`` returns), a
private attribute: it belongs with the other Keras internals, and
``tests/test_keras_structure.py`` pins it for the Keras versions gradviz supports.
"""

from __future__ import annotations

from typing import Any, Sequence

#: what a model without a known input structure is called with (a subclassed model)
_NO_STRUCTURE = object()


def input_structure(model: Any) -> Any:
    """The nested structure of symbolic inputs the model was built with, or None when it has none.

    A functional model's ``inputs`` argument as given (a tensor, a list, a dict in
    its own key order, nested); a Sequential model's single input.
    """
    for candidate in (model, getattr(model, "_functional", None)):
        if candidate is None:
            continue
        struct = getattr(candidate, "_inputs_struct", _NO_STRUCTURE)
        if struct is not _NO_STRUCTURE and struct is not None:
            return struct
    return None


def flat_input_tensors(model: Any) -> list[Any]:
    """The model's symbolic inputs in gradviz's (and Keras's) flat order.

    The order of ``keras.tree.flatten(model.input)``, which is also ``model.inputs``
    for a functional model: the order of :func:`gradviz.model.topology.input_names`.
    """
    import keras

    struct = input_structure(model)
    if struct is not None:
        return list(keras.tree.flatten(struct))
    inputs = getattr(model, "inputs", None) or []
    return list(keras.tree.flatten(inputs))


def to_model_inputs(model: Any, flat: Sequence[Any]) -> Any:
    """Pack one array (or tensor) per input, in the flat order, into the model's declared structure.

    Dicts come back with the model's own keys in its own order, nested lists and
    dicts as declared, a single input as a bare tensor. A model without a known
    structure (subclassed) gets a single tensor or the list.

    Example:
        >>> import keras
        >>> a, b = keras.Input((2,), name="text"), keras.Input((3,), name="numbers")
        >>> model = keras.Model({"text": a, "numbers": b}, keras.layers.Concatenate()([a, b]))
        >>> to_model_inputs(model, ["numbers array", "text array"])
        {'text': 'text array', 'numbers': 'numbers array'}

    Raises:
        ValueError: ``flat`` does not hold one entry per input.
    """
    import keras

    struct = input_structure(model)
    items = list(flat)
    if struct is None:
        return items[0] if len(items) == 1 else items
    expected = len(keras.tree.flatten(struct))
    if len(items) != expected:
        raise ValueError(f"{model.name!r} takes {expected} input(s), got {len(items)}")
    return keras.tree.pack_sequence_as(struct, items)
