"""Per-loss gradient values of each layer, for the training monitor's TensorBoard histograms.

The gradient statistics (:class:`~gradviz.backends.tensorflow.gradient_pass.GradientPass`)
keep only inner products; a histogram needs the values. This pass computes
them with the same forward/backward code, compiled once, statelessly (the
model is not written), and averages them over the probe's batches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from gradviz.core.stats import values_by_layer

from gradviz.backends.tensorflow.distribution import single_device

if TYPE_CHECKING:
    from gradviz.backends.tensorflow.gradient_pass import GradientPass
    from gradviz.data import BatchSource


class GradientValues:
    """Each loss's mean gradient over the probe, flattened per layer.

    Args:
        gradient_pass: the session's compiled pass (its model, losses and forward/backward code).
    """

    def __init__(self, gradient_pass: GradientPass) -> None:
        import tensorflow as tf

        self.gradient_pass = gradient_pass

        def values(x: list[Any], ys: dict[str, Any], state: list[Any], sws: dict[str, Any],
                   ranks: Any) -> list[list[Any]]:
            _, dense, _, _ = gradient_pass._forward_backward(x, ys, state, False, sws, ranks)
            scale = gradient_pass._scale  # mixed precision: the pass differentiates the scaled losses

            def flat(g: Any) -> Any:
                g = tf.reshape(tf.cast(g, tf.float32), (-1,))
                return g if scale is None else g / scale

            return [[tf.zeros((0,), tf.float32) if g is None else flat(g) for g in per_loss] for per_loss in dense]

        self._values = tf.function(values, reduce_retracing=True, autograph=False)

    def tracing_count(self) -> int:
        """How many times the pass has been traced."""
        return int(self._values.experimental_get_tracing_count())

    @single_device  # under a tf.distribute scope: the whole data on one device, losses unscaled
    def run(self, data: BatchSource, loss_names: list[str], layer_of: list[str]) -> dict[tuple[str, str], np.ndarray]:
        """``{(loss, layer): values}``: each loss's gradient averaged over the batches, per layer.

        Args:
            data: the probe's batches (each loss applies their sample weights, as in the statistics).
            loss_names: the losses in the pass's order (``GradientStats.loss_names``).
            layer_of: the layer of each trainable variable, in the pass's order.
        """
        import tensorflow as tf

        state = [tf.convert_to_tensor(v) for v in self.gradient_pass.state_variables]
        sums: list[list[np.ndarray]] | None = None
        for batch in data.iter_batches():
            out = self._values(*self.gradient_pass.step_inputs(batch, state))
            arrays = [[g.numpy() for g in per_loss] for per_loss in out]
            sums = arrays if sums is None else [[s + a for s, a in zip(rs, ra)] for rs, ra in zip(sums, arrays)]
        assert sums is not None
        return values_by_layer(sums, loss_names, layer_of, data.batches)
