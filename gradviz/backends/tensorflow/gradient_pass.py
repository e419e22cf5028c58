"""The TensorFlow gradient backend: per-loss gradients of every trainable variable, reduced to statistics.

The only module that runs ``tf.GradientTape``. One compiled function does one
forward pass under a persistent tape and one backward pass per loss, and
reduces the gradients inside the graph to, per variable, the loss-by-loss
matrix of inner products (the Gram matrix) plus max-abs and finiteness flags
(:mod:`gradviz.backends.tensorflow.reduce`). The K backward passes move
through the model together, layer by layer
(:class:`~gradviz.backends.tensorflow.lockstep.Lockstep`), so only a layer or
two's K gradients are alive at a time.

The forward pass is ``model.stateless_call``: weights, BatchNorm moving
statistics and seed-generator states are read, never written, so inspecting
leaves the model as it was.

A gradient that does not exist (no differentiable path: TensorFlow returns
None) is kept apart from one that is zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from gradviz.backends.failures import explain_failure as _explain
from gradviz.backends.failures import inputs_text as _inputs_text
from gradviz.backends.forward import loss_values
from gradviz.backends.tensorflow.lockstep import LOCKSTEP_CYCLE, Lockstep, layer_key
from gradviz.backends.tensorflow.reduce import reduce_all
from gradviz.core.spec import regularization_name
from gradviz.core.stats import BATCH_MODES, MEAN_GRADIENT, GradientStats, Progress, assemble, unpack
from gradviz.data import Data
from gradviz.errors import DataError
from gradviz.model.randomness import GlobalSeedGenerator, find_random_state, seeded_state

if TYPE_CHECKING:
    import keras

    from gradviz.model.losses import ResolvedLoss


class GradientPass:
    """The compiled gradient pass of one model and its resolved losses, reusable over data.

    The first :meth:`run` traces the compiled functions; later runs (and every further
    batch) reuse them. :meth:`tracing_count` says how often it traced.

    Args:
        model: the model; it is not modified.
        losses: the resolved output losses (regularization is added when the model has any).
        output_names: the model's outputs, in order.
        training: call the model with ``training=True`` (dropout, batch statistics).
        mode: ``mean-gradient`` or ``per-batch`` (see :mod:`gradviz.core.stats`).
        lockstep: move the K backward passes through the model layer by layer together
            (see :class:`~gradviz.backends.tensorflow.lockstep.Lockstep`): the same numbers with
            two layers' K gradients alive at most instead of up to K-1 copies of all of them.
            False exists for the benchmark.

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
        self._layer_keys = [layer_key(v) for v in self.variables]
        #: the seed-generator states among the state variables, and the layers holding them
        self.random_state = find_random_state(model)
        #: stands in for Keras's global SeedGenerator (unseeded keras.random calls) while the model runs
        self.global_seed = GlobalSeedGenerator()
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
        self, x: list[Any], ys: dict[str, Any], state: list[Any], ordered: bool
    ) -> tuple[Any, list[list[Any]], Any, Lockstep | None]:
        """One forward pass and one backward pass per loss, traced.

        With ``ordered``, each loss's backward ops are kept apart so that
        :class:`~gradviz.backends.tensorflow.lockstep.Lockstep` can order them.
        """
        import tensorflow as tf

        weights = [tf.convert_to_tensor(v) for v in self.variables]
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(weights)
            values, new_state, extra = loss_values(
                self.model, weights, state, x, ys, self.losses, self.output_names, self.training
            )
        graph = tf.compat.v1.get_default_graph()
        forward = graph.get_operations() if ordered else []
        dense, chains = [], []
        for v in values:
            start = len(graph.get_operations()) if ordered else 0
            per_loss = tape.gradient(v, weights, unconnected_gradients=tf.UnconnectedGradients.NONE)
            dense.append([None if g is None else tf.convert_to_tensor(g) for g in per_loss])
            if ordered:
                chains.append(graph.get_operations()[start:])
        del tape
        self._regularization = bool(extra)
        self._exists = [[g is not None for g in per_loss] for per_loss in dense]
        backward = (
            Lockstep(weights, self._layer_keys, dense, chains, forward[-1]._id if forward else -1) if ordered else None
        )
        return tf.stack(values), dense, new_state, backward

    def _compiled_step_stats(self, lockstep: bool) -> Any:
        def step_stats(x: list[Any], ys: dict[str, Any], state: list[Any]) -> tuple[Any, Any, Any]:
            values, dense, new_state, backward = self._forward_backward(x, ys, state, lockstep)
            packed, done = reduce_all(dense, len(self.variables))
            if backward is not None:
                try:
                    backward.serialize(done)
                except AttributeError:  # a TensorFlow without the graph internals it uses
                    # unordered: the same values, more memory (edges added so far keep order)
                    self.lockstep_fallback = "this TensorFlow lacks the graph internals the ordering uses"
            return values, packed, new_state

        return _compiled(step_stats, reduce_retracing=True)

    def _step_accumulate(self, x: list[Any], ys: dict[str, Any], state: list[Any]) -> tuple[Any, Any]:
        import tensorflow as tf

        # No lockstep here: each gradient goes into its own sum as soon as it exists.
        values, dense, new_state, _ = self._forward_backward(x, ys, state, False)
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
        key = (id(fn),) + tuple((tuple(t.shape), t.dtype) for t in flat)
        concrete = self._concrete.get(key)
        with self.global_seed.active():
            if concrete is None:
                result = fn(*args)  # traces if needed; counted by tracing_count()
                self._concrete[key] = fn.get_concrete_function(*args)
                return result
            return concrete(*args)

    def _run_step_stats(self, x: list[Any], y: dict[str, Any], state: list[Any]) -> Any:
        """One batch through ``step_stats``; without lockstep if the runtime finds its edges in a cycle."""
        import tensorflow as tf

        try:
            return self._call(self.step_stats, x, y, state)
        except tf.errors.InvalidArgumentError as e:
            if not self.lockstep or LOCKSTEP_CYCLE not in str(e):
                raise
        # A graph rewrite merged ops of two layers' segments (see Lockstep): same values, more memory.
        self.lockstep = False
        self.lockstep_fallback = "the runtime found the ordering edges in a cycle (a graph rewrite merged layers)"
        self._retired_traces += int(self.step_stats.experimental_get_tracing_count())
        self.step_stats = self._compiled_step_stats(False)
        return self._call(self.step_stats, x, y, state)

    def run(self, data: Data, progress: Progress | None = None, seed: int | None = None) -> GradientStats:
        """Stream ``data`` through the compiled pass and reduce it to statistics.

        Args:
            data: the batches.
            progress: called with ``(batches done, batches)``.
            seed: the random layers' (Dropout, noise, ...) seed-generator states start from values
                derived from it (:func:`gradviz.model.randomness.seeded_state`), so one seed gives one
                set of masks in every process; None starts them from the model's own state.

        Raises:
            LossSpecError: a loss fails on the model's outputs.
            DataError: the data does not fit the model.
        """
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
        for b in range(data.batches):
            xs, ys = data.batch(b)
            x = [tf.convert_to_tensor(a) for a in xs]
            y = {k: tf.convert_to_tensor(v) for k, v in ys.items()}
            try:
                if accumulate:
                    values, state = self._call(self.step_accumulate, x, y, state)
                else:
                    values, packed, state = self._run_step_stats(x, y, state)
                    gram, max_abs, finite = (t.numpy() for t in packed)
                    if stat_sums is None:
                        stat_sums = (gram, max_abs, finite)
                    else:
                        stat_sums = (stat_sums[0] + gram, np.maximum(stat_sums[1], max_abs), stat_sums[2] & finite)
            except (ValueError, TypeError, tf.errors.InvalidArgumentError) as e:
                raise _explain(e, _inputs_text(self.model, xs), data.guessed) from e
            if first_trace:  # the graph now says which gradients exist: free the other sums
                first_trace = False
                del self.accumulators[len(self._exists):]
                for row, present in zip(self.accumulators, self._exists):
                    row[:] = [acc if here else None for acc, here in zip(row, present)]
            loss_sum = values.numpy().astype(np.float64) if loss_sum is None else loss_sum + values.numpy()
            if progress is not None:
                progress(b + 1, data.batches)
        if accumulate:
            packed = self._call(self.reduce_accumulated)
            gram, max_abs, finite = (t.numpy() for t in packed)
            # Gram and max-abs of the mean gradient = those of the sum, scaled by 1/N^2 and 1/N.
            stat_sums = (gram / data.batches**2, max_abs / data.batches, finite)
            divide = 1.0
        else:
            divide = float(data.batches)
        output_names = [loss.name for loss in self.losses]
        names = tuple(output_names) + ((regularization_name(output_names),) if self._regularization else ())
        assert loss_sum is not None and stat_sums is not None
        return assemble(
            names, self._exists, unpack(stat_sums, self._exists), loss_sum / data.batches, divide, data.batches,
            self.mode, self._regularization,
        )


def _compiled(fn: Any, reduce_retracing: bool = False) -> Any:
    """``fn`` as a ``tf.function`` of its own.

    A new function object per pass: TensorFlow counts retracing per Python function (a bound
    method counts as its class's function), and warns when one function traces often; each
    pass tracing once must not add up to that warning.
    """
    import tensorflow as tf

    def call(*args: Any) -> Any:
        return fn(*args)

    return tf.function(call, reduce_retracing=reduce_retracing, autograph=False)

