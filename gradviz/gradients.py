"""Per-loss gradients of every trainable variable, reduced to statistics.

The only module that runs ``tf.GradientTape``. One compiled function does one
forward pass under a persistent tape and one backward pass per loss, and
reduces the gradients inside the graph to, per variable, the loss-by-loss
matrix of inner products (the Gram matrix) plus max-abs and finiteness flags.
From the Gram matrix, the norm of any weighted sum of the losses' gradients
follows (``sqrt(w^T G w)``), which is what analysis and the what-if use.
The K backward passes move through the model together, layer by layer
(:class:`_Lockstep`), so only a layer or two's K gradients are alive at a time.

The forward pass is ``model.stateless_call``: weights, BatchNorm moving
statistics and seed-generator states are read, never written, so inspecting
leaves the model as it was.

A gradient that does not exist (no differentiable path: TensorFlow returns
None) is kept apart from one that is zero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from gradviz.data import GUESSED_IDS, Data
from gradviz.errors import DataError, LossSpecError
from gradviz.keras_structure import to_model_inputs
from gradviz.spec import LossTerm, regularization_name, resolve_loss
from gradviz.topology import input_names, output_tensors

if TYPE_CHECKING:
    import keras

#: statistics of the gradient averaged over the batches (what training on them applies)
MEAN_GRADIENT = "mean-gradient"
#: average of per-batch statistics (no per-parameter accumulators)
PER_BATCH = "per-batch"
BATCH_MODES = (MEAN_GRADIENT, PER_BATCH)

Progress = Callable[[int, int], None]

#: what TensorFlow's runtime says of a graph whose control edges form a cycle
LOCKSTEP_CYCLE = "nodes in a cycle"

#: entries per float32 block of the Gram products of large variables (summed in float64)
GRAM_CHUNK = 1 << 16


@dataclass(frozen=True)
class GradientStats:
    """Reduced per-loss gradient statistics.

    Attributes:
        loss_names: the terms, in order (``regularization`` last, if the model has one).
        gram: ``(V, K, K)`` float64: for variable v, ``gram[v, i, j]`` is the
            inner product of loss i's and loss j's gradients (0 where one does not exist).
        exists: ``(V, K)`` bool: loss k's gradient exists for variable v.
        max_abs: ``(V, K)`` float64: the largest absolute gradient entry (0 where none).
        finite: ``(V, K)`` bool: every entry of the gradient is finite.
        loss_values: ``(K,)`` float64: unweighted loss values, averaged over batches.
        batches: number of batches.
        mode: ``mean-gradient`` or ``per-batch``.
    """

    loss_names: tuple[str, ...]
    gram: np.ndarray
    exists: np.ndarray
    max_abs: np.ndarray
    finite: np.ndarray
    loss_values: np.ndarray
    batches: int
    mode: str
    has_regularization: bool = False


def model_outputs(model: keras.Model, output_names: Sequence[str], y_pred: Any) -> dict[str, Any]:
    """Name a model call's outputs."""
    if isinstance(y_pred, dict):
        return {str(k): v for k, v in y_pred.items()}
    if isinstance(y_pred, (list, tuple)):
        return dict(zip(output_names, y_pred))
    return {output_names[0]: y_pred}


def compute(
    model: keras.Model,
    terms: Sequence[LossTerm],
    data: Data,
    output_names: Sequence[str],
    *,
    training: bool = True,
    mode: str = MEAN_GRADIENT,
    custom_objects: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> GradientStats:
    """Compute per-loss gradient statistics over ``data``.

    A one-off :class:`GradientPass`: traced on the first batch, reused for the others.

    Args:
        model: the model; it is not modified.
        terms: the output loss terms (regularization is added when the model has any).
        data: the batches.
        output_names: the model's outputs, in order.
        training: call the model with ``training=True`` (dropout, batch statistics).
        mode: ``mean-gradient`` or ``per-batch`` (see module constants).
        custom_objects: names for custom losses.
        progress: called with ``(batches done, batches)``.

    Raises:
        LossSpecError: a loss cannot be resolved or fails on the model's outputs.
        DataError: the data does not fit the model.
    """
    gradient_pass = GradientPass(
        model, terms, data, output_names, training=training, mode=mode, custom_objects=custom_objects
    )
    return gradient_pass.run(data, progress=progress)


class GradientPass:
    """The compiled gradient pass of one model and loss spec, reusable over data.

    Building it resolves the losses; the first :meth:`run` traces the compiled
    functions, later runs (and every further batch) reuse them. Keeping one
    around lets a caller (the benchmark, a notebook comparing data sets) pay
    the trace once; :meth:`tracing_count` says how often it traced.

    Args:
        model: the model; it is not modified.
        terms: the output loss terms (regularization is added when the model has any).
        data: data shaped like what :meth:`run` will get (target ranks pick sparse losses).
        output_names: the model's outputs, in order.
        training: call the model with ``training=True`` (dropout, batch statistics).
        mode: ``mean-gradient`` or ``per-batch`` (see module constants).
        custom_objects: names for custom losses.
        lockstep: move the K backward passes through the model layer by layer together
            (see :class:`_Lockstep`): the same numbers with two layers' K gradients alive at
            most instead of up to K-1 copies of all of them. False exists for the benchmark.

    Raises:
        LossSpecError: a loss cannot be resolved.
        DataError: unknown mode.
    """

    def __init__(
        self,
        model: keras.Model,
        terms: Sequence[LossTerm],
        data: Data,
        output_names: Sequence[str],
        *,
        training: bool = True,
        mode: str = MEAN_GRADIENT,
        custom_objects: dict[str, Any] | None = None,
        lockstep: bool = True,
    ) -> None:
        import tensorflow as tf

        if mode not in BATCH_MODES:
            raise DataError(f"unknown batch mode {mode!r}; valid: {', '.join(BATCH_MODES)}")
        self.model = model
        self.mode = mode
        self.terms = [t for t in terms if not t.is_regularization]
        out_shapes = {name: _last_dim(t) for name, t in zip(output_names, output_tensors(model))}
        loss_fns = []
        for term in self.terms:
            y = data.y[term.output or ""]
            out_rank = len(_output_shape(model, output_names, term.output or ""))
            loss_fns.append(
                resolve_loss(term.identifier, out_shapes.get(term.output or ""), y.ndim < out_rank, custom_objects)
            )
        #: the resolved loss objects, in term order (the benchmark's hand-written peers reuse them)
        self.loss_fns = loss_fns
        variables = list(model.trainable_variables)
        self.variables = variables
        layer_keys = [_layer_key(v) for v in variables]
        self.state_variables = list(model.non_trainable_variables)
        terms_ = self.terms
        structure: dict[str, Any] = {}
        self.structure = structure

        def forward_backward(
            x: list[Any], ys: dict[str, Any], state: list[Any], ordered: bool
        ) -> tuple[Any, Any, Any, _Lockstep | None]:
            weights = [tf.convert_to_tensor(v) for v in variables]
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(weights)
                # in the model's declared structure: a dict with unsorted keys refuses a flat list
                y_pred, new_state, extra = model.stateless_call(
                    weights, state, to_model_inputs(model, x), training=training, return_losses=True
                )
                named = model_outputs(model, output_names, y_pred)
                values = [
                    tf.cast(fn(ys[str(term.output)], named[str(term.output)]), tf.float32)
                    for term, fn in zip(terms_, loss_fns)
                ]
                if extra:
                    values.append(
                        tf.cast(tf.add_n([tf.reduce_sum(tf.cast(e, tf.float32)) for e in extra]), tf.float32)
                    )
            # With ``ordered``, each loss's backward ops are kept apart so that _Lockstep can order them.
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
            # Which gradients exist is fixed by the graph: record it once, at trace time.
            structure["regularization"] = bool(extra)
            structure["exists"] = [[g is not None for g in per_loss] for per_loss in dense]
            backward = (
                _Lockstep(weights, layer_keys, dense, chains, forward[-1]._id if forward else -1) if ordered else None
            )
            return tf.stack(values), dense, new_state, backward

        def reduce_one(per_loss: list[Any]) -> tuple[Any, Any, Any]:
            size = int(np.prod(per_loss[0].shape))
            chunks = size // GRAM_CHUNK
            if chunks < 2 or per_loss[0].dtype == tf.float64:  # small: products and sums in float64
                # Stacked in the gradients' own precision, then one exact cast (not K casts: with
                # many losses and variables the op count is what the trace pays for).
                common = tf.float64 if any(g.dtype == tf.float64 for g in per_loss) else tf.float32
                flat = tf.cast(tf.stack([tf.reshape(tf.cast(g, common), [-1]) for g in per_loss]), tf.float64)
                gram = tf.matmul(flat, flat, transpose_b=True)
                return gram, tf.reduce_max(tf.abs(flat), axis=1), tf.reduce_all(tf.math.is_finite(flat), axis=1)
            # Large: float64 copies of K gradients cost more than the backward passes of big
            # models. float32 matrix products over chunks of GRAM_CHUNK entries, summed in
            # float64, stay within ~1e-7 of the float64 Gram (a plain float32 product over
            # millions of entries drifts to ~1e-4).
            # One float32 copy of the K gradients, (chunks, K, GRAM_CHUNK) plus a tail; everything
            # else works on it in place or reduces it (no per-gradient temporaries: a big model's
            # largest variable times K is what this step adds to the backward passes' memory).
            raw = [tf.reshape(tf.cast(g, tf.float32), [-1]) for g in per_loss]
            max_abs = tf.stack([tf.maximum(tf.reduce_max(f), -tf.reduce_min(f)) for f in raw])
            # Each gradient is divided by a power of two near its largest entry first, so float32
            # products neither underflow (gradients ~1e-21) nor overflow (~1e21); dividing by a
            # power of two is exact, and the scales are multiplied back in float64.
            usable = tf.where(tf.math.is_finite(max_abs) & (max_abs > 0), max_abs, tf.ones_like(max_abs))
            exponent = tf.clip_by_value(tf.math.floor(tf.math.log(usable) / np.log(2.0)), -126.0, 127.0)
            scale = tf.pow(tf.constant(2.0, tf.float32), exponent)
            head = chunks * GRAM_CHUNK
            blocks = tf.stack([tf.reshape(f[:head], [chunks, GRAM_CHUNK]) for f in raw], axis=1)  # (c, K, m)
            blocks = blocks / scale[None, :, None]
            gram = tf.reduce_sum(tf.cast(tf.matmul(blocks, blocks, transpose_b=True), tf.float64), axis=0)
            if head < size:
                tail = tf.cast(tf.stack([f[head:] for f in raw]) / scale[:, None], tf.float64)
                gram += tf.matmul(tail, tail, transpose_b=True)
            scale64 = tf.cast(scale, tf.float64)
            gram = gram * scale64[:, None] * scale64[None, :]
            # A NaN or infinite entry makes its sum of squares non-finite, and after the scaling
            # above no finite gradient can overflow it (entries <= 2, chunks of 2^16), so the
            # diagonal tells finiteness exactly, without a pass (or a traced cond) per gradient.
            finite = tf.math.is_finite(tf.linalg.diag_part(gram))
            return gram, tf.cast(max_abs, tf.float64), finite

        def reduce_all(dense: list[list[Any]]) -> tuple[tuple[Any, Any, Any], list[list[Any]]]:
            # Packed into three flat tensors (Gram entries, max-abs, finiteness of every
            # variable with a gradient, in variable order): three fetches per batch instead
            # of three per variable, which dominated small models' pass (see _unpack).
            # Also returns, per variable, the tensors whose computation ends its gradients' use.
            grams, maxes, finites = [], [], []
            done: list[list[Any]] = []
            for v in range(len(variables)):
                present = [dense[k][v] for k in range(len(dense)) if dense[k][v] is not None]
                done.append([])
                if present:
                    gram, max_abs, finite = reduce_one(present)
                    grams.append(tf.reshape(gram, [-1]))
                    maxes.append(max_abs)
                    finites.append(finite)
                    done[-1] = [gram, max_abs, finite]
            if not grams:
                return (tf.zeros([0], tf.float64), tf.zeros([0], tf.float64), tf.zeros([0], tf.bool)), done
            return (tf.concat(grams, 0), tf.concat(maxes, 0), tf.concat(finites, 0)), done

        def make_step_stats(lockstep: bool) -> Any:
            @tf.function(reduce_retracing=True, autograph=False)
            def step_stats(x: list[Any], ys: dict[str, Any], state: list[Any]) -> tuple[Any, Any, Any]:
                values, dense, new_state, backward = forward_backward(x, ys, state, lockstep)
                packed, done = reduce_all(dense)
                if backward is not None:
                    try:
                        backward.serialize(done)
                    except AttributeError:  # a TensorFlow without the graph internals it uses
                        pass  # unordered: the same values, more memory (edges added so far keep order)
                return values, packed, new_state

            return step_stats

        accumulators: list[list[Any]] = []
        self.accumulators = accumulators

        @tf.function(reduce_retracing=True, autograph=False)
        def step_accumulate(x: list[Any], ys: dict[str, Any], state: list[Any]) -> tuple[Any, Any]:
            # No lockstep here: each gradient goes into its own sum as soon as it exists.
            values, dense, new_state, _ = forward_backward(x, ys, state, False)
            # The sums exist before the first call (see run()): a tf.function that creates
            # variables traces twice, and the trace of a big model costs more than its pass.
            # Only a loss nobody could foresee (add_loss inside call) still creates its row here.
            while len(accumulators) < len(dense):
                with tf.init_scope():
                    accumulators.append(
                        [None if g is None else tf.Variable(tf.zeros(g.shape, tf.float32), trainable=False)
                         for g in dense[len(accumulators)]]
                    )
            for acc_row, per_loss in zip(accumulators, dense):
                for acc, g in zip(acc_row, per_loss):
                    if acc is not None and g is not None:
                        acc.assign_add(tf.cast(g, tf.float32))
            return values, new_state

        @tf.function(autograph=False)
        def reduce_accumulated() -> tuple[Any, Any, Any]:
            # Statistics of the sums; run() scales them to the mean (saves a pass over K copies).
            packed, _ = reduce_all([[None if a is None else a.read_value() for a in row] for row in accumulators])
            return packed

        @tf.function(autograph=False)
        def zero_accumulators() -> None:
            # Traced only when a later run needs clean sums (a `gradviz inspect` run never does):
            # its op per sum was half of the final reduction's trace on big models.
            for row in accumulators:
                for acc in row:
                    if acc is not None:
                        acc.assign(tf.zeros_like(acc))

        self._dirty = False
        self._make_step_stats = make_step_stats
        #: whether the backward passes run in lockstep (see _Lockstep); False after a fallback
        self.lockstep = lockstep
        self._retired_traces = 0
        self._concrete: dict[tuple[Any, ...], Any] = {}
        self.step_stats = make_step_stats(lockstep)
        self.step_accumulate = step_accumulate
        self.reduce_accumulated = reduce_accumulated
        self.zero_accumulators = zero_accumulators

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
        # A graph rewrite merged ops of two layers' segments (see _Lockstep): same values, more memory.
        self.lockstep = False
        self._retired_traces += int(self.step_stats.experimental_get_tracing_count())
        self.step_stats = self._make_step_stats(False)
        return self._call(self.step_stats, x, y, state)

    def run(self, data: Data, progress: Progress | None = None) -> GradientStats:
        """Stream ``data`` through the compiled pass and reduce it to statistics.

        Args:
            data: the batches (shaped like the data the pass was built with).
            progress: called with ``(batches done, batches)``.

        Raises:
            LossSpecError: a loss fails on the model's outputs.
            DataError: the data does not fit the model.
        """
        import tensorflow as tf

        state = [tf.convert_to_tensor(v) for v in self.state_variables]
        accumulate = self.mode == MEAN_GRADIENT and data.batches > 1
        if accumulate and self._dirty:  # the sums of an earlier run (finished or not) are still there
            self._call(self.zero_accumulators)
        first_trace = accumulate and not self.accumulators
        if first_trace:
            # One float32 sum per loss and variable, before tracing (one trace instead of two);
            # the sums of gradients that turn out not to exist are dropped after the trace.
            rows = len(self.terms) + (1 if self._has_weight_losses() else 0)
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
                exists = self.structure["exists"]
                del self.accumulators[len(exists):]
                for row, present in zip(self.accumulators, exists):
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
        output_names = [t.name for t in self.terms]
        regularization = bool(self.structure["regularization"])
        names = tuple(output_names) + ((regularization_name(output_names),) if regularization else ())
        assert loss_sum is not None and stat_sums is not None
        exists = self.structure["exists"]
        return _assemble(
            names, exists, _unpack(stat_sums, exists), loss_sum / data.batches, divide, data.batches, self.mode,
            regularization,
        )


class _Lockstep:
    """The K backward passes of one traced step, and a way to make them move together.

    Left alone, TensorFlow runs one loss's backward pass far ahead of the others, so each
    gradient of that loss waits in memory until the last loss reaches the same variable (a
    Gram matrix needs all K gradients of a variable at once): up to K-1 extra copies of the
    model's gradients. :meth:`serialize` splits each loss's backward ops into segments, one
    per layer (the layers in backward order; segment p is what that loss still computes to
    reach the gradients of layer p), and makes the ops that enter segment p+1 wait (control
    edges) until every loss has layer p's gradients and layer p-1's statistics are done.
    Then at most two layers' K gradients are alive at a time. Control edges order ops; they
    change no value.

    Segments are whole layers, not single variables, because graph rewrites fuse a layer's
    gradient ops (oneDNN fuses a convolution's kernel and bias gradients into one op), and a
    fused op in two segments would wait for itself. :class:`GradientPass` still retraces
    without the edges if the runtime reports a cycle (see ``LOCKSTEP_CYCLE``).

    Args:
        weights: the watched weight tensors, in variable order.
        layers: a layer key per variable (variables of one layer share it).
        dense: ``dense[k][v]``: loss k's gradient of variable v (None: none exists).
        chains: ``chains[k]``: the ops the backward pass of loss k created.
        forward_end: the id of the last op of the forward pass.
    """

    def __init__(self, weights: list[Any], layers: list[str], dense: list[list[Any]], chains: list[list[Any]],
                 forward_end: int) -> None:
        self.weights = weights
        self.layers = layers
        self.dense = dense
        self.chains = chains
        self.forward_end = forward_end

    def order(self) -> list[list[int]]:
        """The variables grouped by layer, layers in backward order.

        A layer's gradients are complete once the backward passes have gone through its
        first use of a weight in the forward pass, so the latest first use comes first.
        """
        uses: dict[str, list[int]] = {}
        members: dict[str, list[int]] = {}
        for v, weight in enumerate(self.weights):
            key = self.layers[v]
            uses.setdefault(key, []).extend(op._id for op in weight.consumers() if op._id <= self.forward_end)
            members.setdefault(key, []).append(v)
        return [members[key] for key in sorted(members, key=lambda k: min(uses[k], default=-1), reverse=True)]

    def segments(self, order: list[list[int]]) -> list[list[list[Any]]]:
        """``segments[k][p]``: the ops of loss k's backward pass first needed for the layer ``order[p]``."""
        out = []
        for per_loss, ops in zip(self.dense, self.chains):
            members = {op._id for op in ops}
            seen: set[int] = set()
            chain: list[list[Any]] = []
            for group in order:
                segment: list[Any] = []
                stack = [per_loss[v].op for v in group if per_loss[v] is not None]
                while stack:
                    op = stack.pop()
                    if op._id not in members or op._id in seen:
                        continue
                    seen.add(op._id)
                    segment.append(op)
                    stack.extend(t.op for t in op.inputs)
                    stack.extend(op.control_inputs)
                chain.append(segment)
            out.append(chain)
        return out

    def serialize(self, done: list[list[Any]]) -> None:
        """Make every loss's segment p+1 wait for layer p's gradients and layer p-1's statistics (``done[v]``)."""
        import tensorflow as tf

        if len(self.chains) < 2:
            return
        order = self.order()
        segments = self.segments(order)
        for p in range(len(order) - 1):
            # Segment p+1 waits for layer p's gradients and layer p-1's statistics: the reduction
            # of one layer overlaps the backward passes through the next (no time lost), and at
            # most two layers' K gradients are alive.
            finished = [per_loss[v] for v in order[p] for per_loss in self.dense if per_loss[v] is not None]
            if p > 0:
                finished += [t for v in order[p - 1] for t in done[v]]
            later = [chain[p + 1] for chain in segments if chain[p + 1]]
            if not finished or not later:
                continue
            with tf.control_dependencies(None):
                barrier = tf.group(*finished, name="lockstep")
            for segment in later:
                # Constants are left free: they hold no memory worth ordering, and graph optimizers
                # may merge equal ones across segments, which would tie the waits into a cycle.
                # The ops reading them wait instead.
                inner = {op._id for op in segment if op.inputs}
                for op in segment:
                    if op.inputs and not any(t.op._id in inner for t in op.inputs):  # enters the segment
                        op._add_control_input(barrier)


def _layer_key(variable: Any) -> str:
    """The layer a variable belongs to, from its path (``block1/conv/kernel`` -> ``block1/conv``)."""
    path = str(getattr(variable, "path", None) or getattr(variable, "name", ""))
    return path.rsplit("/", 1)[0] if "/" in path else path


def _unpack(packed: tuple[np.ndarray, np.ndarray, np.ndarray], exists_by_loss: list[list[bool]]) -> list[Any]:
    """Split the packed statistics into one ``(gram, max_abs, finite)`` per variable (None: no gradient).

    Example:
        >>> packed = (np.arange(5.0), np.array([7.0, 8.0, 9.0]), np.array([True, True, False]))
        >>> _unpack(packed, [[True, False, True], [False, False, True]])[1:]
        [None, (array([[1., 2.],
               [3., 4.]]), array([8., 9.]), array([ True, False]))]
    """
    gram, max_abs, finite = packed
    out: list[Any] = []
    g = m = 0
    for v in range(len(exists_by_loss[0]) if exists_by_loss else 0):
        p = sum(1 for per_loss in exists_by_loss if per_loss[v])
        if not p:
            out.append(None)
            continue
        out.append((gram[g:g + p * p].reshape(p, p), max_abs[m:m + p], finite[m:m + p]))
        g += p * p
        m += p
    return out


def _assemble(
    names: tuple[str, ...],
    exists_by_loss: list[list[bool]],
    stats: list[Any],
    loss_values: np.ndarray,
    divide: float,
    batches: int,
    mode: str,
    has_regularization: bool = False,
) -> GradientStats:
    k = len(names)
    v = len(stats)
    gram = np.zeros((v, k, k))
    exists = np.zeros((v, k), dtype=bool)
    max_abs = np.zeros((v, k))
    finite = np.ones((v, k), dtype=bool)
    for var in range(v):
        present = [loss for loss in range(k) if exists_by_loss[loss][var]]
        exists[var, present] = True
        if stats[var] is None:
            continue
        g, m, f = stats[var]
        gram[var][np.ix_(present, present)] = g / divide
        max_abs[var, present] = m
        finite[var, present] = f
    return GradientStats(
        names, gram, exists, max_abs, finite, np.asarray(loss_values, dtype=np.float64), batches, mode, has_regularization
    )


def _output_shape(model: keras.Model, output_names: Sequence[str], name: str) -> tuple[Any, ...]:
    for out_name, tensor in zip(output_names, output_tensors(model)):
        if out_name == name:
            return tuple(tensor.shape)
    return ()


def _last_dim(tensor: Any) -> int | None:
    shape = tuple(getattr(tensor, "shape", ()) or ())
    return int(shape[-1]) if shape and shape[-1] is not None else None


def _explain(error: Exception, inputs: str = "", guessed: Sequence[str] = ()) -> Exception:
    """One line for a failed gradient pass: a loss's fault, ids gradviz had to guess, or the data's.

    Args:
        error: what TensorFlow or Keras raised.
        inputs: the inputs' names and shapes, for the message (see :func:`_inputs_text`).
        guessed: synthetic integer inputs whose range gradviz could not infer.
    """
    text = " ".join(str(error).split())
    # TensorFlow's words for an id outside a table: "indices[0,1] = 7 is not in [0, 3)"
    bad_index = re.search(r"indices\S* = -?\d+ is not in \[[^)]*\)|out of (range|bounds)", text)
    if guessed and bad_index:
        names = ("input " if len(guessed) == 1 else "inputs ") + ", ".join(f"'{n}'" for n in guessed)
        keys = ", ".join(f"'x:{n}'" for n in guessed)
        return DataError(
            f"the model rejects the synthetic integers of {names} ({bad_index.group(0)}): gradviz cannot "
            f"tell which ids the model takes there and drew 0 to {GUESSED_IDS - 1}; pass --data FILE.npz with "
            f"real values under {keys}"
        )
    if len(text) > 400:
        text = text[:400] + "..."
    if "loss" in text.lower() or "logits" in text.lower() or "labels" in text.lower():
        return LossSpecError(f"a loss failed on the model's outputs and targets: {text}")
    return DataError(f"the model cannot run on the data{inputs}: {type(error).__name__}: {text}")


def _inputs_text(model: keras.Model, arrays: Sequence[Any]) -> str:
    """`` (inputs: a (8, 16) int32, b (8, 12) int32)`` for a model of several inputs, else empty: which
    input does not fit is easier to see next to the others.

    Example:
        >>> import keras
        >>> a, b = keras.Input((2,), name="a"), keras.Input((3,), name="b")
        >>> m = keras.Model([a, b], keras.layers.Concatenate()([a, b]))
        >>> _inputs_text(m, [np.zeros((4, 2), "float32"), np.zeros((4, 5), "int32")])
        ' (inputs: a (4, 2) float32, b (4, 5) int32)'
    """
    if len(arrays) < 2:
        return ""
    try:
        names = input_names(model)
    except Exception:  # a model that cannot name its inputs: positions instead
        names = []
    names = names if len(names) == len(arrays) else [f"#{i}" for i in range(len(arrays))]
    parts = [f"{n} {tuple(int(d) for d in a.shape)} {np.dtype(a.dtype).name}" for n, a in zip(names, arrays)]
    return " (inputs: " + ", ".join(parts) + ")"
