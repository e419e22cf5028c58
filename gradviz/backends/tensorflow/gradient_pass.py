"""The TensorFlow gradient backend: per-loss gradients of every trainable variable, reduced to statistics.

The only module that runs ``tf.GradientTape``. One compiled function does one
forward pass under a persistent tape and one backward pass per loss, and
reduces the gradients inside the graph to, per variable, the loss-by-loss
matrix of inner products (the Gram matrix) plus max-abs and finiteness flags
(:mod:`gradviz.backends.tensorflow.reduce`). The K backward passes move
through the model together, layer by layer
(:class:`~gradviz.backends.tensorflow.lockstep.Lockstep`), so only a layer or
two's K gradients are alive at a time.

The forward pass runs the model statelessly, as ``model.stateless_call``
does (:func:`gradviz.model.keras_internals.call_collecting_losses`): weights,
BatchNorm moving statistics and seed-generator states are read, never
written, so inspecting leaves the model as it was. The losses the model adds
itself come back with the layer that added them: each endpoint layer's
``add_loss`` is a loss of its own, the regularizers are summed into one. With
``loss_terms`` (a custom training step's terms) the function is called in a
``keras.StatelessScope`` instead and its terms are the losses.

In mixed precision each loss is scaled before differentiating and the
gradients unscaled after, as Keras's ``LossScaleOptimizer`` does.

A gradient that does not exist (no differentiable path: TensorFlow returns
None) is kept apart from one that is zero.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from gradviz.backends.failures import explain_failure as _explain
from gradviz.backends.failures import inputs_text as _inputs_text
from gradviz.backends.forward import batch_ranks, loss_values
from gradviz.backends.setup import PassSetup
from gradviz.backends.tensorflow.distribution import single_device
from gradviz.backends.tensorflow.lockstep import LOCKSTEP_CYCLE, Lockstep, layer_key
from gradviz.backends.tensorflow.reduce import reduce_all
from gradviz.backends.tensorflow.loss_scale import replayable, run_scaled
from gradviz.core.stats import MEAN_GRADIENT, GradientStats, Progress, assemble, unpack
from gradviz.data import Batch, BatchSource
from gradviz.data.batches import closing
from gradviz.errors import DataError, LossSpecError
from gradviz.model.randomness import seeded_state

if TYPE_CHECKING:
    import keras

    from gradviz.model.losses import ResolvedLoss


class GradientPass(PassSetup):
    """The compiled gradient pass of one model and its resolved losses, reusable over data.

    The first :meth:`run` traces the compiled functions; later runs (and every further
    batch) reuse them. :meth:`tracing_count` says how often it traced.

    Args (the others as :class:`~gradviz.backends.setup.PassSetup` takes them):
        lockstep: move the K backward passes through the model layer by layer together
            (see :class:`~gradviz.backends.tensorflow.lockstep.Lockstep`): the same numbers with
            two layers' K gradients alive at most instead of up to K-1 copies of all of them.
            False exists for the benchmark.
        loss_scale: scale each loss by this before differentiating and the gradients back
            after (mixed precision, as Keras's ``LossScaleOptimizer``); None: no scaling.

    Raises:
        DataError: unknown mode.
    """

    #: the array library, as the report's ``meta.backend`` names it
    name = "tensorflow"

    def __init__(
        self,
        model: keras.Model,
        losses: Sequence[ResolvedLoss],
        output_names: Sequence[str],
        *,
        training: bool = True,
        mode: str = MEAN_GRADIENT,
        lockstep: bool = True,
        source_names: Mapping[int, str] | None = None,
        loss_terms: Callable[..., Any] | None = None,
        loss_scale: float | None = None,
    ) -> None:
        import tensorflow as tf

        super().__init__(model, losses, output_names, training=training, mode=mode, source_names=source_names,
                         loss_terms=loss_terms, loss_scale=loss_scale)
        #: read by the traced pass, so that a lower scale needs no new trace
        self._scale = None if loss_scale is None else tf.Variable(float(loss_scale), trainable=False, dtype=tf.float32)
        self._layer_keys = [layer_key(v) for v in self.variables]
        #: whether the backward passes run in lockstep; False after a fallback
        self.lockstep = lockstep
        #: why the lockstep ordering was dropped (None while it holds)
        self.lockstep_fallback: str | None = None
        # Fixed by the graph and recorded at trace time: which gradients exist, and whether
        # the model adds losses of its own (``model.losses``).
        self._exists: list[list[bool]] = []
        self._regularization = False
        #: per loss and variable, the float32 sum of the gradient over batches (mean-gradient mode)
        self.accumulators: list[list[Any]] = []
        self._dirty = False
        self._retired_traces = 0
        self._concrete: dict[tuple[Any, ...], Any] = {}
        self.step_stats = self._compiled_step_stats(lockstep)
        self.step_accumulate = _compiled(self._step_accumulate, reduce_retracing=True)
        self.reduce_accumulated = _compiled(self._reduce_accumulated)
        self.zero_accumulators = _compiled(self._zero_accumulators)

    @property
    def meta(self) -> dict[str, Any]:
        """What the report's ``meta`` says of this pass."""
        return {"backend": self.name, "lockstep_fallback": self.lockstep_fallback}

    # -- the traced pieces -----------------------------------------------------

    def _forward_backward(
        self, x: list[Any], ys: dict[str, Any], state: list[Any], ordered: bool,
        sample_weights: dict[str, Any] | None = None, ranks: Any = None,
    ) -> tuple[Any, list[list[Any]], Any, Lockstep | None]:
        """One forward pass and one backward pass per loss, traced.

        Each loss is called as Keras's ``CompileLoss`` calls it: ``loss(y, y_pred, sample_weight)``
        with its output's sample weights (None when the output has none), so the weights and the
        loss's reduction (``sum_over_batch_size``: the weighted sum over the batch's size) are
        Keras's own (:func:`~gradviz.backends.forward.loss_values`). With ``ordered``, each
        loss's backward ops are kept apart so that :class:`~gradviz.backends.tensorflow.lockstep.Lockstep`
        can order them. ``ranks`` (see :func:`~gradviz.backends.forward.batch_ranks`) says
        which variant of a ``crossentropy`` loss the targets take.
        """
        import tensorflow as tf

        weights = [tf.convert_to_tensor(v) for v in self.variables]
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(weights)
            forward_pass = loss_values(
                self.model, weights, state, x, ys, self.losses, self.output_names, self.training,
                sample_weights, ranks, source_names=self.source_names, loss_terms=self.loss_terms,
            )
            values, new_state = forward_pass.values, forward_pass.new_state
            # Mixed precision: differentiate the scaled losses, as Keras's training step does
            # (run() unscales the statistics); the values reported stay unscaled.
            differentiated = values if self._scale is None else [v * self._scale for v in values]
        self.found_terms, self._regularization = forward_pass.found, forward_pass.regularization
        graph = tf.compat.v1.get_default_graph()
        forward = graph.get_operations() if ordered else []
        dense, chains = [], []
        for v in differentiated:
            start = len(graph.get_operations()) if ordered else 0
            per_loss = tape.gradient(v, weights, unconnected_gradients=tf.UnconnectedGradients.NONE)
            dense.append([None if g is None else tf.convert_to_tensor(g) for g in per_loss])
            if ordered:
                chains.append(graph.get_operations()[start:])
        del tape
        self._exists = [[g is not None for g in per_loss] for per_loss in dense]
        backward = (
            Lockstep(weights, self._layer_keys, dense, chains, forward[-1]._id if forward else -1) if ordered else None
        )
        return tf.stack(values), dense, new_state, backward

    def _compiled_step_stats(self, lockstep: bool) -> Any:
        def step_stats(x: list[Any], ys: dict[str, Any], state: list[Any], sws: dict[str, Any],
                       ranks: Any) -> tuple[Any, Any, Any]:
            values, dense, new_state, backward = self._forward_backward(x, ys, state, lockstep, sws, ranks)
            packed, done = reduce_all(dense, len(self.variables))
            if backward is not None:
                try:
                    backward.serialize(done)
                except AttributeError:  # a TensorFlow without the graph internals it uses
                    # unordered: the same values, more memory (edges added so far keep order)
                    self.lockstep_fallback = "this TensorFlow lacks the graph internals the ordering uses"
            return values, packed, new_state

        return _compiled(step_stats, reduce_retracing=True)

    def _step_accumulate(
        self, x: list[Any], ys: dict[str, Any], state: list[Any], sws: dict[str, Any], ranks: Any
    ) -> tuple[Any, Any]:
        import tensorflow as tf

        # No lockstep here: each gradient goes into its own sum as soon as it exists.
        values, dense, new_state, _ = self._forward_backward(x, ys, state, False, sws, ranks)
        # The sums exist before the first call (see run()): a tf.function that creates
        # variables traces twice, and the trace of a big model costs more than its pass.
        # Only a loss nobody could foresee (add_loss inside call) still creates its row here.
        while len(self.accumulators) < len(dense):
            with tf.init_scope():
                self.accumulators.append(
                    [None if g is None else tf.Variable(tf.zeros(g.shape, tf.float32), trainable=False)
                     for g in dense[len(self.accumulators)]]
                )
        for acc_row, per_loss in zip(self.accumulators, dense):
            for acc, g in zip(acc_row, per_loss):
                if acc is not None and g is not None:
                    acc.assign_add(tf.cast(g, tf.float32))
        return values, new_state

    def _reduce_accumulated(self) -> tuple[Any, Any, Any]:
        # Statistics of the sums; run() scales them to the mean (saves a pass over K copies).
        rows = [[None if a is None else a.read_value() for a in row] for row in self.accumulators]
        packed, _ = reduce_all(rows, len(self.variables))
        return packed

    def _zero_accumulators(self) -> None:
        import tensorflow as tf

        # Traced only when a later run needs clean sums (a `gradviz inspect` run never does):
        # its op per sum was half of the final reduction's trace on big models.
        for row in self.accumulators:
            for acc in row:
                if acc is not None:
                    acc.assign(tf.zeros_like(acc))

    # -- running ---------------------------------------------------------------

    def _has_weight_losses(self) -> bool:
        """Whether the model has regularization losses before any call (weight regularizers)."""
        try:
            return bool(self.model.losses)
        except Exception:  # a model that cannot tell before a call: the trace creates that row
            return False

    def step_inputs(self, batch: Batch, state: list[Any] | None = None) -> tuple[Any, ...]:
        """The arguments of the compiled steps for one batch (``step_stats(*step_inputs(batch))``).

        Inputs, targets, the model's state (its current non-trainable variables unless given),
        sample weights and :func:`batch_ranks`.
        """
        import tensorflow as tf

        if state is None:
            state = [tf.convert_to_tensor(v) for v in self.state_variables]
        return (
            [tf.convert_to_tensor(a) for a in batch.x],
            {k: tf.convert_to_tensor(v) for k, v in batch.y.items()},
            state,
            {k: tf.convert_to_tensor(v) for k, v in batch.sample_weight.items()},
            batch_ranks(self.losses, batch),
        )

    def tracing_count(self) -> int:
        """How many times the compiled functions have been traced, all together."""
        return self._retired_traces + sum(
            int(fn.experimental_get_tracing_count())
            for fn in (self.step_stats, self.step_accumulate, self.reduce_accumulated, self.zero_accumulators)
        )

    def _call(self, fn: Any, *args: Any) -> Any:
        """Call the compiled ``fn``; once traced for these input shapes, through its concrete function.

        A ``tf.function`` call matches its arguments against its traces first (~0.2 ms): most
        of a small model's batch. Inputs of the same shapes and dtypes reuse the trace directly.
        """
        import tensorflow as tf

        flat = tf.nest.flatten(args)
        key = (id(fn),) + tuple((tuple(t.shape), t.dtype) if hasattr(t, "shape") else t for t in flat)
        concrete = self._concrete.get(key)
        with self.global_seed.active():
            if concrete is None:
                result = fn(*args)  # traces if needed; counted by tracing_count()
                self._concrete[key] = fn.get_concrete_function(*args)
                return result
            return concrete(*args)

    def _run_step_stats(self, x: list[Any], y: dict[str, Any], state: list[Any], sw: dict[str, Any],
                        ranks: Any) -> Any:
        """One batch through ``step_stats``; without lockstep if the runtime finds its edges in a cycle."""
        import tensorflow as tf

        try:
            return self._call(self.step_stats, x, y, state, sw, ranks)
        except tf.errors.InvalidArgumentError as e:
            if not self.lockstep or LOCKSTEP_CYCLE not in str(e):
                raise
        # A graph rewrite merged ops of two layers' segments (see Lockstep): same values, more memory.
        self.lockstep = False
        self.lockstep_fallback = "the runtime found the ordering edges in a cycle (a graph rewrite merged layers)"
        self._retired_traces += int(self.step_stats.experimental_get_tracing_count())
        self.step_stats = self._compiled_step_stats(False)
        return self._call(self.step_stats, x, y, state, sw, ranks)

    @single_device  # under a tf.distribute scope: the whole data on one device, losses unscaled
    def run(self, data: BatchSource, progress: Progress | None = None, seed: int | None = None) -> GradientStats:
        """Stream ``data`` through the compiled pass and reduce it to statistics.

        With a loss scale (mixed precision), the scale is lowered as Keras's
        ``LossScaleOptimizer`` lowers it, by halving after a step whose gradients overflow,
        until the gradients are finite: the gradient Keras applies is the one at that scale.
        Gradients that are not finite even unscaled are reported as they are.

        Args:
            data: the batches (with their sample weights, if any).
            progress: called with ``(batches done, batches)``.
            seed: the random layers' (Dropout, noise, ...) seed-generator states start from values
                derived from it (:func:`gradviz.model.randomness.seeded_state`), so one seed gives one
                set of masks in every process; None starts them from the model's own state.

        Raises:
            LossSpecError: a loss fails on the model's outputs.
            DataError: the data does not fit the model.
        """
        source = replayable(data, self.loss_scale)  # a lower scale reruns the same batches

        def run_at(scale: float, progress: Progress | None) -> tuple[Any, Any, float]:
            if self._scale is not None:
                self._scale.assign(scale)  # read by the trace: no new one
            return self._run_batches(source, progress, seed)

        try:
            (loss_sum, stat_sums, divide), scale = run_scaled(
                run_at, self.loss_scale, lambda r: bool(r[1][2].all()), lambda r: bool(np.isfinite(r[0]).all()),
                progress,
            )
        finally:
            if self._scale is not None:
                self._scale.assign(float(self.loss_scale or 1.0))  # the next run starts where Keras starts
        if scale is not None:  # the gradients of the scaled losses, unscaled (in float64)
            stat_sums = (stat_sums[0] / scale**2, stat_sums[1] / scale, stat_sums[2])
        names = tuple(loss.name for loss in self.losses) + tuple(t.name for t in self.found_terms)
        return assemble(
            names, self._exists, unpack(stat_sums, self._exists), loss_sum / data.batches, divide, data.batches,
            self.mode, self._regularization, scale,
        )

    def _run_batches(
        self, data: BatchSource, progress: Progress | None, seed: int | None
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray], float]:
        """Every batch through the compiled pass, the random state from ``seed``: summed loss values,
        (scaled) statistics, their divisor."""
        import tensorflow as tf

        if seed is None:
            state = [tf.convert_to_tensor(v) for v in self.state_variables]
        else:  # a loaded model's own seeds are drawn afresh on every load
            state = seeded_state(self.state_variables, self.random_state, seed)
        self.global_seed.reset(seed)
        accumulate = self.mode == MEAN_GRADIENT and data.batches > 1
        if accumulate and self._dirty:  # the sums of an earlier run (finished or not) are still there
            self._call(self.zero_accumulators)
        first_trace = accumulate and not self.accumulators
        if first_trace:
            # One float32 sum per loss and variable, before tracing (one trace instead of two);
            # the sums of gradients that turn out not to exist are dropped after the trace.
            rows = len(self.losses) + (1 if self._has_weight_losses() else 0)
            self.accumulators.extend(
                [tf.Variable(tf.zeros(v.shape, tf.float32), trainable=False) for v in self.variables]
                for _ in range(rows)
            )
        self._dirty = self._dirty or accumulate  # sums stay until zeroed
        loss_sum: np.ndarray | None = None
        stat_sums: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        done = 0
        with closing(data.iter_batches()) as stream:  # a reader stops (workers too) even when a batch fails
            for b, batch in enumerate(stream):
                x, y, _, sw, ranks = self.step_inputs(batch, state)
                try:
                    if accumulate:
                        values, state = self._call(self.step_accumulate, x, y, state, sw, ranks)
                    else:
                        values, packed, state = self._run_step_stats(x, y, state, sw, ranks)
                        gram, max_abs, finite = (t.numpy() for t in packed)
                        if stat_sums is None:
                            stat_sums = (gram, max_abs, finite)
                        else:
                            stat_sums = (stat_sums[0] + gram, np.maximum(stat_sums[1], max_abs), stat_sums[2] & finite)
                except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
                    raise _explain(e, _inputs_text(self.model, batch.x), data.guessed) from e
                if first_trace:  # the graph now says which gradients exist: free the other sums
                    first_trace = False
                    del self.accumulators[len(self._exists):]
                    for row, present in zip(self.accumulators, self._exists):
                        row[:] = [acc if here else None for acc, here in zip(row, present)]
                loss_sum = values.numpy().astype(np.float64) if loss_sum is None else loss_sum + values.numpy()
                done = b + 1
                if progress is not None:
                    progress(done, data.batches)
        if done != data.batches:  # a source that yields fewer batches than it promised
            raise DataError(f"the data yielded {done} batch(es); {data.batches} were expected")
        if accumulate:
            packed = self._call(self.reduce_accumulated)
            gram, max_abs, finite = (t.numpy() for t in packed)
            # Gram and max-abs of the mean gradient = those of the sum, scaled by 1/N^2 and 1/N.
            stat_sums = (gram / data.batches**2, max_abs / data.batches, finite)
            divide = 1.0
        else:
            divide = float(data.batches)
        assert loss_sum is not None and stat_sums is not None
        return loss_sum, stat_sums, divide


def _compiled(fn: Any, reduce_retracing: bool = False) -> Any:
    """``fn`` as a ``tf.function`` of its own.

    A new function object per pass: TensorFlow counts retracing per Python function (a bound
    method counts as its class's function), and warns when one function traces often; each
    pass tracing once must not add up to that warning. TensorFlow tells functions apart by
    their code object, which compares by value, so each one gets a code object of its own
    name: many passes in one process (a notebook) or a last partial batch's second trace
    stay below the warning.
    """
    import tensorflow as tf

    def call(*args: Any) -> Any:
        return fn(*args)

    call.__code__ = call.__code__.replace(co_name=f"gradviz_{getattr(fn, '__name__', 'step')}_{next(_PASS_IDS)}")
    return tf.function(call, reduce_retracing=reduce_retracing, autograph=False)



_PASS_IDS = itertools.count()
