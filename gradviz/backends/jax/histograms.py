"""Per-loss gradient values of each layer on JAX, for the training monitor's TensorBoard histograms.

The JAX counterpart of :mod:`gradviz.backends.tensorflow.histograms`: the
statistics pass keeps only inner products, a histogram needs the values. This
uses the JAX pass's own traced forward and per-loss gradients
(:meth:`~gradviz.backends.jax.gradient_pass.GradientPass.gradients`),
compiled once per input signature, statelessly, and averages them over the
probe's batches. Gradients that do not exist (no path) are left out, as on
TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from gradviz.core.stats import values_by_layer

if TYPE_CHECKING:
    from gradviz.backends.jax.gradient_pass import GradientPass
    from gradviz.data import BatchSource


class GradientValues:
    """Each loss's mean gradient over the probe, flattened per layer.

    Args:
        gradient_pass: the session's JAX pass (its model, losses, traced forward).
    """

    def __init__(self, gradient_pass: GradientPass) -> None:
        self.gradient_pass = gradient_pass
        self._compiled: dict[int, Any] = {}

    def tracing_count(self) -> int:
        """How many programs this has compiled."""
        return len(self._compiled)

    def run(self, data: BatchSource, loss_names: list[str], layer_of: list[str]) -> dict[tuple[str, str], np.ndarray]:
        """``{(loss, layer): values}``: each loss's gradient averaged over the batches, per layer.

        Args:
            data: the probe's batches.
            loss_names: the losses in the pass's order (``GradientStats.loss_names``).
            layer_of: the layer of each trainable variable, in the pass's order.
        """
        import jax.numpy as jnp

        from gradviz.backends.jax.devices import Placement

        gradient_pass = self.gradient_pass
        placement = Placement.current()
        weights, state = gradient_pass.weights_and_state(placement, None)  # the model's own state, as on TensorFlow
        sums: list[list[np.ndarray]] | None = None
        for batch in data.iter_batches():
            rest, rest_tree = gradient_pass.flat_inputs(placement, state, batch)
            program = gradient_pass.program(weights, rest, rest_tree, placement, batch)
            fn = self._compiled.get(id(program))
            if fn is None:
                def values(weights: list[Any], rest: list[Any], program: Any = program) -> list[list[Any]]:
                    _, _, grads = gradient_pass.gradients(program, weights, rest)
                    return [[jnp.reshape(grads[k][v], (-1,)).astype(jnp.float32) if program.exists[k][v]
                             else jnp.zeros((0,), jnp.float32) for v in range(len(weights))]
                            for k in range(program.values)]

                fn = self._compiled[id(program)] = gradient_pass.compile(values, (weights, rest))
            arrays = [[np.asarray(g) for g in per_loss] for per_loss in fn(weights, rest)]
            sums = arrays if sums is None else [[s + a for s, a in zip(rs, ra)] for rs, ra in zip(sums, arrays)]
        assert sums is not None
        return values_by_layer(sums, loss_names, layer_of, data.batches)
