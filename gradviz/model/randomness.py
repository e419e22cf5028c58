"""Random layers (Dropout, noise, augmentation, custom SeedGenerators): their state, drawn from ``--seed``.

A Keras layer that draws random numbers keeps a ``keras.random.SeedGenerator``,
whose state variable (``[seed, counter]``) is one of the model's
``non_trainable_variables``. A model rebuilt from a file gets a fresh seed
from Python's ``random`` for every such layer, so two loads of one file drop
different units. gradviz therefore never runs on the model's own seed state:
:func:`seeded_state` replaces it, in the state list given to
``model.stateless_call``, with values derived from ``--seed`` and the layer's
name. The same seed gives the same masks in every process; the model's own
variables are never assigned.

The state variables are found with public API only: ``layer.variables`` holds
a layer's seed states, ``layer.weights`` does not. Random calls without a seed
(``keras.random.uniform(shape)`` in a custom layer) draw from Keras's global
SeedGenerator instead; :class:`GlobalSeedGenerator` stands in for it, seeded
the same way, while gradviz runs the model.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

#: the key the stand-in for Keras's global SeedGenerator derives its seed from
GLOBAL_KEY = "keras.random (unseeded calls)"
#: seeds are conceptually uint32; a derived seed stays within [1, 2**31 - 1] (any backend's int type)
_SEED_RANGE = 2**31 - 1


@dataclass(frozen=True)
class RandomState:
    """Where a model keeps random state.

    Attributes:
        keys: ``id(state variable) -> key``: a stable name for each seed-generator state
            variable (its layer's qualified name, then a number when a layer holds several).
        layers: the qualified names of the layers holding them (``<model>/<layer>`` inside a
            nested model), sorted.
    """

    keys: dict[int, str]
    layers: tuple[str, ...]


def find_random_state(model: Any) -> RandomState:
    """The seed-generator state variables of ``model`` and the layers holding them.

    A layer's own seed states are the entries of ``layer.variables`` missing from
    ``layer.weights``. Each is attributed to the innermost layer that holds it,
    descending through nested models (``model.layers``) as the graph does.

    Args:
        model: a Keras model.

    Returns:
        The :class:`RandomState` (empty for a model without random layers).
    """
    seeds = _seed_variables(model)
    if not seeds:
        return RandomState({}, ())
    owner: dict[int, str] = {}
    for name, layer in _named_layers(model, ""):
        for variable in _seed_variables(layer):
            owner.setdefault(id(variable), name)  # the innermost layer comes first
    keys: dict[int, str] = {}
    count: dict[str, int] = {}
    for variable in seeds:
        name = owner.get(id(variable), str(getattr(model, "name", "model")))
        number = count.get(name, 0)
        count[name] = number + 1
        keys[id(variable)] = name if number == 0 else f"{name}#{number}"
    return RandomState(keys, tuple(sorted(set(owner.get(id(v), str(model.name)) for v in seeds))))


def derived_seed(seed: int, key: str) -> int:
    """The seed a random layer's generator starts from: a hash of ``--seed`` and the layer's key.

    Stable across processes and platforms (SHA-256, not Python's salted ``hash``).

    Example:
        >>> derived_seed(0, "dropout") == derived_seed(0, "dropout")
        True
        >>> derived_seed(0, "dropout") != derived_seed(1, "dropout")
        True
        >>> 1 <= derived_seed(7, "trunk/dropout") <= 2**31 - 1
        True
    """
    digest = hashlib.sha256(f"gradviz:{seed}:{key}".encode("utf-8")).digest()
    return 1 + int.from_bytes(digest[:8], "big") % (_SEED_RANGE - 1)


def seeded_state(variables: Sequence[Any], random: RandomState, seed: int) -> list[Any]:
    """The state list for ``stateless_call``, with every seed-generator state drawn from ``seed``.

    Args:
        variables: ``model.non_trainable_variables``, in order.
        random: the model's :class:`RandomState`.
        seed: the ``--seed``.

    Returns:
        One tensor of Keras's backend per variable: its current value, or ``[derived seed, 0]``
        (in the variable's dtype) for a seed-generator state. No variable is assigned.
    """
    import numpy as np
    from keras import ops

    state = []
    for variable in variables:
        key = random.keys.get(id(variable))
        if key is None:
            state.append(ops.convert_to_tensor(variable))
        else:  # the backend's own tensor: a TensorFlow tensor, a JAX array
            state.append(ops.convert_to_tensor(np.array([derived_seed(seed, key), 0], dtype=variable.dtype)))
    return state


class GlobalSeedGenerator:
    """A stand-in for Keras's global SeedGenerator, seeded from ``--seed``, while gradviz runs the model.

    ``keras.random`` calls without a seed draw from a process-wide generator whose seed
    Python's ``random`` picked. :meth:`active` puts this pass's own generator in its place
    (and the caller's back afterwards; the caller's generator is never assigned). A compiled
    function reads the generator that was in place when it was traced, so one instance
    belongs to one set of compiled functions.
    """

    def __init__(self) -> None:
        self.generator: Any = None
        self.enabled = False
        self._assigned: int | None = None
        #: the derived seed the generator starts from (None: not enabled). A JAX program reads the
        #: generator's state as a constant when it is traced, so the JAX pass keys its programs by it.
        self.value: int | None = None

    def reset(self, seed: int | None) -> None:
        """Start from ``seed`` (None: leave Keras's own global generator in place)."""
        self.enabled = seed is not None
        if seed is None:
            self.value = None
            return
        value = self.value = derived_seed(seed, GLOBAL_KEY)
        if self.generator is None:
            import keras

            # A fixed name: an automatic one would advance Keras's name counters for the caller.
            self.generator = keras.random.SeedGenerator(value, name="gradviz_global_seed_generator")
        elif value != self._assigned:  # gradviz's own variable, not the model's or the caller's
            self.generator.state.assign([value, 0])
        # Drawing from it inside the stateless call records the new state in the stateless scope and never
        # writes it, so the same seed needs no assign (the monitor's probe: ~0.5 ms a call, a third of a
        # small model's pass).
        self._assigned = value

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Make this generator Keras's global one for the duration of the block (when enabled)."""
        if not self.enabled:
            yield
            return
        # private: where Keras keeps its global SeedGenerator (loading._random_streams_kept reads it too)
        from keras.src.backend.common import global_state
        from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR

        previous = global_state.get_global_attribute(GLOBAL_SEED_GENERATOR)
        global_state.set_global_attribute(GLOBAL_SEED_GENERATOR, self.generator)
        try:
            yield
        finally:
            global_state.set_global_attribute(GLOBAL_SEED_GENERATOR, previous)


def _seed_variables(layer: Any) -> list[Any]:
    """The seed-generator states in ``layer`` (its sublayers' included), in ``layer.variables`` order."""
    try:
        weights = {id(w) for w in layer.weights}
        return [v for v in layer.variables if id(v) not in weights]
    except (AttributeError, TypeError, ValueError):  # not a layer, or one that cannot list its state
        return []


def _named_layers(model: Any, prefix: str) -> list[tuple[str, Any]]:
    """Every layer under ``model`` with the name the report gives it, innermost first.

    Layers of nested models are named ``<model>/<layer>``, as in the graph.
    """
    named: list[tuple[str, Any]] = []
    for layer in getattr(model, "layers", None) or []:
        name = f"{prefix}{layer.name}"
        if _is_graph_model(layer):
            named.extend(_named_layers(layer, f"{name}/"))
        named.append((name, layer))
    return named


def _is_graph_model(layer: Any) -> bool:
    """A nested functional or Sequential model (expanded in the graph), not a subclassed one."""
    import keras

    if not isinstance(layer, keras.Model):
        return False
    return isinstance(layer, keras.Sequential) or any(
        cls.__name__ == "Functional" for cls in type(layer).__mro__
    )
