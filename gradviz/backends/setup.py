"""What every gradient pass holds of its model and losses: the set-up the TensorFlow and JAX passes share.

The passes differ in how they run the forward and backward passes (a ``tf.function``,
eager TensorFlow, a jitted JAX program); what they are given and keep of the model is the
same, so it is set up here once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from gradviz.core.spec import LossTerm
from gradviz.core.stats import BATCH_MODES, MEAN_GRADIENT
from gradviz.errors import DataError
from gradviz.model.randomness import GlobalSeedGenerator, find_random_state

if TYPE_CHECKING:
    import keras

    from gradviz.model.losses import ResolvedLoss


class PassSetup:
    """A gradient pass's model, losses and options, checked.

    Args:
        model: the model; it is not modified.
        losses: the resolved output losses (the losses found when the model runs come after them).
        output_names: the model's outputs, in order.
        training: call the model with ``training=True`` (dropout, batch statistics).
        mode: ``mean-gradient`` or ``per-batch`` (see :mod:`gradviz.core.stats`).
        source_names: ``id(layer)`` -> the graph node that names the losses the layer adds
            (:func:`gradviz.model.topology.build_topology_and_sources`); a layer not in it
            names them by its own name.
        loss_terms: ``fn(model, x, y) -> {name: scalar}``, the terms of a custom training
            step, replacing the model's own losses.
        loss_scale: the mixed-precision loss scale to start from (None: no scaling).

    Raises:
        DataError: unknown mode.
    """

    def __init__(
        self,
        model: keras.Model,
        losses: Sequence[ResolvedLoss],
        output_names: Sequence[str],
        *,
        training: bool = True,
        mode: str = MEAN_GRADIENT,
        source_names: Mapping[int, str] | None = None,
        loss_terms: Callable[..., Any] | None = None,
        loss_scale: float | None = None,
    ) -> None:
        if mode not in BATCH_MODES:
            raise DataError(f"unknown batch mode {mode!r}; valid: {', '.join(BATCH_MODES)}")
        self.model = model
        self.losses = tuple(losses)
        self.output_names = list(output_names)
        self.training = training
        self.mode = mode
        self.variables = list(model.trainable_variables)
        self.state_variables = list(model.non_trainable_variables)
        #: the seed-generator states among the state variables, and the layers holding them
        self.random_state = find_random_state(model)
        #: stands in for Keras's global SeedGenerator (unseeded keras.random calls) while the model runs
        self.global_seed = GlobalSeedGenerator()
        self.source_names = dict(source_names or {})
        self.loss_terms = loss_terms
        #: the mixed-precision loss scale to start from; a run lowers it where gradients overflow (as Keras does)
        self.loss_scale = loss_scale
        #: the losses found when the model runs, after the resolved output losses: each endpoint
        #: layer's add_loss, the summed regularizers (last), or the terms of ``loss_terms``
        self.found_terms: tuple[LossTerm, ...] = ()
