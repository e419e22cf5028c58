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

from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from gradviz.backends.tensorflow.lockstep import LOCKSTEP_CYCLE, Lockstep, layer_key
from gradviz.backends.tensorflow.reduce import reduce_all
from gradviz.core.spec import ADD_LOSS, REGULARIZATION_LOSS, LossTerm, regularization_name
from gradviz.core.stats import BATCH_MODES, MEAN_GRADIENT, GradientStats, Progress, assemble, unpack
from gradviz.data import Data
from gradviz.errors import DataError, LossSpecError, NoLossError

if TYPE_CHECKING:
    import keras

    from gradviz.model.losses import ResolvedLoss


def model_outputs(output_names: Sequence[str], y_pred: Any) -> dict[str, Any]:
    """Name a model call's outputs."""
    if isinstance(y_pred, dict):
        return {str(k): v for k, v in y_pred.items()}
    if isinstance(y_pred, (list, tuple)):
        return dict(zip(output_names, y_pred))
    return {output_names[0]: y_pred}


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
        source_names: ``id(layer)`` -> the graph node that names the losses the layer adds
            (:func:`gradviz.model.topology.build_topology_and_sources`); a layer not in it
            names them by its own name.
        loss_terms: ``fn(model, x, y) -> {name: scalar}``, the terms of a custom training
            step; they replace the compiled and added losses.
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

        if mode not in BATCH_MODES:
            raise DataError(f"unknown batch mode {mode!r}; valid: {', '.join(BATCH_MODES)}")
        self.model = model
        self.losses = tuple(losses)
        self.output_names = list(output_names)
        self.training = training
        self.mode = mode
        self.variables = list(model.trainable_variables)
        self.state_variables = list(model.non_trainable_variables)
        self.source_names = dict(source_names or {})
        self.loss_terms = loss_terms
        #: the mixed-precision loss scale to start from; run() lowers it where gradients overflow (as Keras does)
        self.loss_scale = loss_scale
        #: read by the traced pass, so that a lower scale needs no new trace
        self._scale = None if loss_scale is None else tf.Variable(float(loss_scale), trainable=False, dtype=tf.float32)
        #: the losses found when the pass is traced, after the resolved output losses: each endpoint
        #: layer's add_loss, the summed regularizers (last), or the terms of ``loss_terms``
        self.found_terms: tuple[LossTerm, ...] = ()
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
            if self.loss_terms is not None:
                values, new_state = self._custom_terms(x, ys, weights, state)
            else:
                from gradviz.model.keras_internals import call_collecting_losses

                y_pred, new_state, collected = call_collecting_losses(
                    self.model, weights, state, x if len(x) > 1 else x[0], training=self.training
                )
                named = model_outputs(self.output_names, y_pred)
                values = [
                    tf.cast(loss.for_targets(tuple(ys[loss.output].shape))(ys[loss.output], named[loss.output]),
                            tf.float32)
                    for loss in self.losses
                ]
                values.extend(self._model_terms(collected))
            if not values:
                raise NoLossError("the model has no loss to analyse")
            # Mixed precision: differentiate the scaled losses, as Keras's training step does
            # (run() unscales the statistics); the values reported stay unscaled.
            differentiated = values if self._scale is None else [v * self._scale for v in values]
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

    def _model_terms(self, collected: Sequence[Any]) -> list[Any]:
        """The losses the model added in the call: one per endpoint layer, then the regularizers summed.

        Records them in :attr:`found_terms`. An endpoint layer's term is named after the graph
        node standing for it (``<layer>.add_loss`` when an output's loss already has that name).
        """
        import tensorflow as tf

        taken = {loss.name for loss in self.losses}
        groups: dict[str, list[Any]] = {}
        anchors: dict[str, str | None] = {}
        regularizers = []
        for item in collected:
            if item.regularizer:
                regularizers.append(item.value)
                continue
            node = self.source_names.get(id(item.layer))
            base = node or str(getattr(item.layer, "name", "add_loss"))
            name = f"{base}.add_loss" if base in taken else base
            groups.setdefault(name, []).append(item.value)
            anchors[name] = node
        found = [LossTerm(name, anchors[name], ADD_LOSS, 1.0) for name in groups]
        values = [_summed(tensors) for tensors in groups.values()]
        if regularizers:
            reg_name = regularization_name(list(self.output_names) + list(groups))
            found.append(LossTerm(reg_name, None, REGULARIZATION_LOSS, 1.0))
            values.append(_summed(regularizers))
        self.found_terms = tuple(found)
        self._regularization = bool(regularizers)
        return [tf.cast(v, tf.float32) for v in values]

    def _custom_terms(self, x: list[Any], ys: dict[str, Any], weights: list[Any],
                      state: list[Any]) -> tuple[list[Any], list[Any]]:
        """The terms of ``loss_terms(model, x, y)``, called statelessly with ``weights`` and ``state``.

        Inside a ``keras.StatelessScope`` mapping every variable to the tape-watched value, the
        function calls the model as a training step does: gradients flow to ``weights``, and
        whatever it updates (seed states, BatchNorm statistics) lands in the scope, not the model.
        """
        import keras
        import tensorflow as tf

        assert self.loss_terms is not None
        mapping = list(zip(self.model.trainable_variables, weights)) + list(zip(self.model.non_trainable_variables, state))
        x_arg = x if len(x) > 1 else (x[0] if x else None)
        y_arg: Any = None if not ys else (next(iter(ys.values())) if len(ys) == 1 else dict(ys))
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            terms = self.loss_terms(self.model, x_arg, y_arg)
        fn_name = str(getattr(self.loss_terms, "__name__", "loss_terms"))
        if not isinstance(terms, Mapping) or not terms:
            raise LossSpecError(
                f"loss_terms function {fn_name} returned {type(terms).__name__}; it must return a non-empty "
                "dict {name: scalar loss}"
            )
        values = []
        for name, value in terms.items():
            if not isinstance(name, str) or not name:
                raise LossSpecError(f"loss_terms function {fn_name}: term names must be non-empty strings, got {name!r}")
            tensor = tf.convert_to_tensor(value)
            if tensor.shape.rank not in (None, 0):
                raise LossSpecError(
                    f"loss_terms function {fn_name}: term '{name}' has shape {tuple(tensor.shape)}; a loss term is a "
                    "scalar (reduce it, e.g. with keras.ops.mean)"
                )
            values.append(tf.cast(tensor, tf.float32))
        self.found_terms = tuple(LossTerm(name, None, fn_name, 1.0) for name in terms)
        self._regularization = False
        new_state = [scope.get_current_value(v) for v in self.model.non_trainable_variables]
        return values, new_state

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

    def run(self, data: Data, progress: Progress | None = None) -> GradientStats:
        """Stream ``data`` through the compiled pass and reduce it to statistics.

        With a loss scale (mixed precision), the scale is lowered as Keras's
        ``LossScaleOptimizer`` lowers it, by halving after a step whose gradients overflow,
        until the gradients are finite: the gradient Keras applies is the one at that scale.
        Gradients that are not finite even unscaled are reported as they are.

        Args:
            data: the batches.
            progress: called with ``(batches done, batches)``.

        Raises:
            LossSpecError: a loss fails on the model's outputs.
            DataError: the data does not fit the model.
        """
        loss_sum, stat_sums, divide = self._run_batches(data, progress)
        scale = self.loss_scale
        if scale is not None and self._scale is not None and not stat_sums[2].all() and np.isfinite(loss_sum).all():
            self._scale.assign(1.0)  # not finite even unscaled? then the trouble is not the scale
            unscaled = self._run_batches(data, None)
            if unscaled[1][2].all():
                while scale > 1.0 and not stat_sums[2].all():  # an overflow: halve as Keras does
                    scale /= 2.0
                    self._scale.assign(scale)
                    loss_sum, stat_sums, divide = self._run_batches(data, None) if scale > 1.0 else unscaled
            else:
                scale, (loss_sum, stat_sums, divide) = 1.0, unscaled
            self._scale.assign(float(self.loss_scale or 1.0))  # the next run starts where Keras starts
        if scale is not None:  # the gradients of the scaled losses, unscaled (in float64)
            stat_sums = (stat_sums[0] / scale**2, stat_sums[1] / scale, stat_sums[2])
        names = tuple(loss.name for loss in self.losses) + tuple(t.name for t in self.found_terms)
        return assemble(
            names, self._exists, unpack(stat_sums, self._exists), loss_sum / data.batches, divide, data.batches,
            self.mode, self._regularization, scale,
        )

    def _run_batches(
        self, data: Data, progress: Progress | None
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray], float]:
        """Every batch through the compiled pass: summed loss values, (scaled) statistics, their divisor."""
        import tensorflow as tf

        state = [tf.convert_to_tensor(v) for v in self.state_variables]
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
                raise _explain(e) from e
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
        assert loss_sum is not None and stat_sums is not None
        return loss_sum, stat_sums, divide


def _summed(tensors: Sequence[Any]) -> Any:
    """Added losses summed as Keras's ``compute_loss`` sums them (each reduced to a scalar first)."""
    import tensorflow as tf

    return tf.add_n([tf.reduce_sum(tf.cast(t, tf.float32)) for t in tensors])


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


def _explain(error: Exception) -> Exception:
    text = " ".join(str(error).split())
    if len(text) > 400:
        text = text[:400] + "..."
    if "loss" in text.lower() or "logits" in text.lower() or "labels" in text.lower():
        return LossSpecError(f"a loss failed on the model's outputs and targets: {text}")
    return DataError(f"the model cannot run on the data: {type(error).__name__}: {text}")
