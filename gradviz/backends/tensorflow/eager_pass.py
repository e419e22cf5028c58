"""The eager TensorFlow gradient pass: no tracing, for when tracing would cost more than it saves.

The same computation as the compiled :class:`~gradviz.backends.tensorflow.gradient_pass.GradientPass`
(the same forward, :func:`~gradviz.backends.forward.loss_values`, and the same
reduction, :mod:`~gradviz.backends.tensorflow.reduce`), run op by op: one forward pass under
a persistent ``tf.GradientTape``, one ``tape.gradient`` call per loss, then every variable's
Gram matrix, max-abs and finiteness. Tracing a big model's pass costs 10-30 s before
the first batch; eagerly, the first batch costs about what a hand-written eager loop costs.

Memory: a Gram matrix needs every loss's gradient of a variable at once, and an eager
``tape.gradient`` call returns one loss's gradients of every variable, so before the
reduction the K gradient lists are all alive: K float32 copies of the trainable weights
(what the compiled pass keeps for ``--batches N`` in mean-gradient mode too), plus the
forward activations until the last backward pass. The tape is dropped before the
reduction and each variable's K gradients are freed as soon as they are reduced.
:func:`gradviz.backends.execution.choose` picks the compiled lockstep pass instead when
those copies would be large.

A gradient that does not exist (no differentiable path: TensorFlow returns None) is
kept apart from one that is zero, as in the compiled pass. The losses the model adds itself
(endpoint layers' ``add_loss``, regularizers) or a ``loss_terms`` function's terms, and the
mixed-precision loss scale (:mod:`~gradviz.backends.tensorflow.loss_scale`), are handled as
there too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradviz.backends.forward import loss_values
from gradviz.backends.setup import PassSetup
from gradviz.backends.tensorflow.distribution import single_device
from gradviz.backends.tensorflow.loss_scale import replayable, run_scaled
from gradviz.backends.tensorflow.reduce import GRAM_CHUNK, gram_stats
from gradviz.core.stats import MEAN_GRADIENT, GradientStats, Progress, assemble
from gradviz.data import BatchSource
from gradviz.data.batches import closing
from gradviz.model.randomness import seeded_state
from gradviz.errors import DataError


class EagerPass(PassSetup):
    """The eager gradient pass of one model and its resolved losses (nothing traced).

    Built from what :class:`~gradviz.backends.setup.PassSetup` takes (model, losses,
    outputs, training, mode, loss sources, loss scale).
    """

    #: the array library, as the report's ``meta.backend`` names it
    name = "tensorflow"

    @property
    def meta(self) -> dict[str, Any]:
        """What the report's ``meta`` says of this pass."""
        return {"backend": self.name, "lockstep_fallback": None}

    def tracing_count(self) -> int:
        """Always 0: nothing is traced."""
        return 0

    def gradients(
        self, x: list[Any], ys: dict[str, Any], state: list[Any], sample_weights: dict[str, Any] | None = None,
        scale: float = 1.0,
    ) -> tuple[Any, list[list[Any]], Any, bool]:
        """One forward pass and one backward pass per loss (of the loss times ``scale``), eagerly.

        Each loss is called with its output's ``sample_weights`` as Keras's ``CompileLoss`` calls it
        (:func:`~gradviz.backends.forward.loss_values`, as in the compiled pass).

        Returns:
            ``(values (K,), dense, new_state, has_regularization)`` with ``dense[k][v]`` loss k's
            gradient of variable v (None: no differentiable path).
        """
        import tensorflow as tf

        weights = [tf.convert_to_tensor(v) for v in self.variables]
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(weights)
            forward = loss_values(
                self.model, weights, state, x, ys, self.losses, self.output_names, self.training, sample_weights,
                source_names=self.source_names, loss_terms=self.loss_terms,
            )
            # Mixed precision: differentiate the scaled losses, as the compiled pass does
            differentiated = forward.values if scale == 1.0 else [v * scale for v in forward.values]
        self.found_terms = forward.found
        dense = [
            [None if g is None else tf.convert_to_tensor(g)
             for g in tape.gradient(v, weights, unconnected_gradients=tf.UnconnectedGradients.NONE)]
            for v in differentiated
        ]
        del tape  # the forward activations: gone before the reduction needs room
        return tf.stack(forward.values), dense, forward.new_state, forward.regularization

    @single_device  # under a tf.distribute scope: the whole data on one device, losses unscaled
    def run(self, data: BatchSource, progress: Progress | None = None, seed: int | None = None) -> GradientStats:
        """Statistics of every trainable variable's per-loss gradients over ``data``'s batches.

        ``seed`` seeds the random layers' state as the compiled pass does (same masks in both modes).

        Raises:
            LossSpecError: a loss fails on the model's outputs.
            DataError: the data does not fit the model.
        """
        source = replayable(data, self.loss_scale)  # a lower scale reruns the same batches

        def run_at(scale: float, progress: Progress | None) -> tuple[Any, ...]:
            return self._run_batches(source, progress, seed, scale)

        (loss_sum, stat_sums, divide, exists, regularization), scale = run_scaled(
            run_at, self.loss_scale, lambda r: all(s is None or bool(s[2].all()) for s in r[1]),
            lambda r: bool(np.isfinite(r[0]).all()), progress,
        )
        if scale is not None:  # the gradients of the scaled losses, unscaled (in float64)
            stat_sums = [None if s is None else (s[0] / scale**2, s[1] / scale, s[2]) for s in stat_sums]
        names = tuple(loss.name for loss in self.losses) + tuple(t.name for t in self.found_terms)
        return assemble(names, exists, stat_sums, loss_sum / data.batches, divide, data.batches, self.mode,
                        regularization, scale)

    def _run_batches(
        self, data: BatchSource, progress: Progress | None, seed: int | None, scale: float
    ) -> tuple[np.ndarray, list[Any], float, list[list[bool]], bool]:
        """Every batch, the random state from ``seed`` and the losses scaled by ``scale``: summed loss
        values, (scaled) statistics per variable, their divisor, which gradients exist, regularization."""
        import tensorflow as tf

        from gradviz.backends.failures import explain_failure as _explain
        from gradviz.backends.failures import inputs_text as _inputs_text

        if seed is None:
            state = [tf.convert_to_tensor(v) for v in self.state_variables]
        else:  # a loaded model's own seeds are drawn afresh on every load
            state = seeded_state(self.state_variables, self.random_state, seed)
        self.global_seed.reset(seed)
        accumulate = self.mode == MEAN_GRADIENT and data.batches > 1
        sums: list[list[Any]] | None = None
        exists: list[list[bool]] = []
        regularization = False
        loss_sum: np.ndarray | None = None
        stat_sums: list[Any] | None = None
        done = 0
        with closing(data.iter_batches()) as stream:  # a reader stops (workers too) even when a batch fails
            for b, batch in enumerate(stream):
                x = [tf.convert_to_tensor(a) for a in batch.x]
                y = {k: tf.convert_to_tensor(v) for k, v in batch.y.items()}
                weights = {k: tf.convert_to_tensor(v) for k, v in batch.sample_weight.items()}
                try:
                    with self.global_seed.active():
                        values, dense, state, regularization = self.gradients(x, y, state, weights, scale)
                except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
                    raise _explain(e, _inputs_text(self.model, batch.x), data.guessed) from e
                exists = [[g is not None for g in per_loss] for per_loss in dense]
                if accumulate:
                    # The float32 sum per loss and variable, as the compiled pass keeps it.
                    if sums is None:
                        sums = [[None if g is None else tf.cast(g, tf.float32) for g in per_loss]
                                for per_loss in dense]
                    else:
                        sums = [[None if s is None else s + tf.cast(g, tf.float32) for s, g in zip(srow, grow)]
                                for srow, grow in zip(sums, dense)]
                else:
                    stats = reduce_eagerly(dense)
                    stat_sums = stats if stat_sums is None else [_add(a, s) for a, s in zip(stat_sums, stats)]
                del dense
                loss_sum = values.numpy().astype(np.float64) if loss_sum is None else loss_sum + values.numpy()
                done = b + 1
                if progress is not None:
                    progress(done, data.batches)
        if done != data.batches:  # a source that yields fewer batches than it promised
            raise DataError(f"the data yielded {done} batch(es); {data.batches} were expected")
        if accumulate:
            assert sums is not None
            n = data.batches
            # Gram and max-abs of the mean gradient = those of the sum, scaled by 1/N^2 and 1/N.
            stat_sums = [None if s is None else (s[0] / n**2, s[1] / n, s[2]) for s in reduce_eagerly(sums)]
            divide = 1.0
        else:
            divide = float(data.batches)
        assert loss_sum is not None and stat_sums is not None
        return loss_sum, stat_sums, divide, exists, regularization


def reduce_eagerly(dense: list[list[Any]]) -> list[Any]:
    """Per variable, ``(gram, max_abs, finite)`` of the gradients that exist (None where none does).

    The compiled pass's :func:`~gradviz.backends.tensorflow.reduce.gram_stats`, called eagerly.
    Each variable's gradients are released once reduced (the lists in ``dense`` are emptied),
    so memory drains while the reduction runs instead of peaking at its end.
    """
    out: list[Any] = []
    variables = len(dense[0]) if dense else 0
    for v in range(variables):
        present = [dense[k][v] for k in range(len(dense)) if dense[k][v] is not None]
        for per_loss in dense:
            per_loss[v] = None if per_loss[v] is None else _RELEASED
        if not present:
            out.append(None)
            continue
        out.append(_variable_stats(present))
        del present
    return out


def _variable_stats(present: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One variable's ``(gram, max_abs, finite)``, computed as :func:`~gradviz.backends.tensorflow.reduce.gram_stats` does.

    Small variables (under two Gram chunks, or float64): float64 products, as the compiled
    pass computes them, but in NumPy: an eager TensorFlow op costs ~50 us to dispatch, and
    a ResNet has hundreds of small variables (BatchNorm, biases). Large ones: the compiled
    pass's chunked float32 products summed in float64, called eagerly (the same numbers).
    """
    size = int(np.prod(present[0].shape))
    if size // GRAM_CHUNK >= 2 and all(g.dtype == np.float32 for g in present):
        chunked = _chunked_stats(present)
        if chunked is not None:
            return chunked
    if size // GRAM_CHUNK >= 2 and all(g.dtype != np.float64 for g in present):
        gram, max_abs, finite_tf = gram_stats(present)
        return gram.numpy(), max_abs.numpy(), finite_tf.numpy()
    flat = np.stack([np.asarray(g).reshape(-1).astype(np.float64) for g in present])
    finite = np.asarray(np.isfinite(flat).all(axis=1))
    with np.errstate(invalid="ignore", over="ignore"):  # overflowed gradients (a loss scale backing off): NaN, flagged
        return flat @ flat.T, np.abs(flat).max(axis=1, initial=-np.inf), finite


#: gradients whose largest entry lies within [2^-SAFE, 2^SAFE] need no scaling for float32 products
SAFE_EXPONENT = 40


def _chunked_stats(present: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """:func:`~gradviz.backends.tensorflow.reduce.gram_stats`'s chunked products, in NumPy and without copies.

    The same arithmetic: float32 products over blocks of ``GRAM_CHUNK`` entries, summed in
    float64. ``gram_stats`` first divides each gradient by a power of two near its largest
    entry (a full copy) so that products neither underflow nor overflow; when every largest
    entry is within ``2^+-SAFE_EXPONENT`` (squares and their block sums stay far inside float32's
    range), that division changes no product and is skipped here, and the blocks are read
    straight from the gradients (one small (K, GRAM_CHUNK) block at a time). None otherwise
    (non-finite or extreme gradients): the caller uses ``gram_stats`` itself.
    """
    flats = [np.asarray(g).reshape(-1) for g in present]
    max_abs = np.array([max(float(f.max()), -float(f.min())) for f in flats])
    if not (np.isfinite(max_abs).all() and
            ((max_abs == 0) | ((max_abs >= 2.0**-SAFE_EXPONENT) & (max_abs <= 2.0**SAFE_EXPONENT))).all()):
        return None
    k, size = len(flats), flats[0].size
    gram = np.zeros((k, k))
    block = np.empty((k, GRAM_CHUNK), np.float32)
    for start in range(0, size, GRAM_CHUNK):
        stop = min(start + GRAM_CHUNK, size)
        if stop - start < GRAM_CHUNK:  # the tail, in float64 as gram_stats does
            tail = np.stack([f[start:stop] for f in flats]).astype(np.float64)
            gram += tail @ tail.T
            break
        for i, f in enumerate(flats):
            block[i] = f[start:stop]
        gram += (block @ block.T).astype(np.float64)
    return gram, max_abs, np.ones(k, dtype=bool)


#: marks a gradient that existed and has been reduced (so existence survives the release)
_RELEASED = object()


def _add(a: Any, b: Any) -> Any:
    """Sum two batches' statistics of one variable (per-batch mode)."""
    if a is None:
        return b
    return (a[0] + b[0], np.maximum(a[1], b[1]), a[2] & b[2])
