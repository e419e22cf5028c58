"""The JAX gradient backend: per-loss gradients of every trainable variable, reduced to statistics.

The same statistics as :mod:`gradviz.backends.tensorflow.gradient_pass`, on
Keras's JAX backend, without TensorFlow.

How the pass is built, once per input signature (shapes and dtypes of a batch):

1. The forward pass, the one both backends differentiate
   (:func:`gradviz.backends.forward.loss_values`: ``model.stateless_call`` with
   explicit weights and state, the inputs in the model's declared structure,
   random layers' seed states drawn from ``seed``, then the K losses and the
   regularization term when the model has ``model.losses``), is traced once
   into a jaxpr. Inspecting never writes a variable.
2. Which gradients exist (TensorFlow's None vs a zero) is read from the jaxpr
   of that function's forward-mode derivative
   (:mod:`gradviz.backends.jax.reachability`).
3. The pass is K separate ``jax.grad``\\ s of that jaxpr, one per loss, jitted
   together with the per-variable reduction (:mod:`gradviz.backends.jax.reduce`),
   and compiled ahead of time. XLA merges the K identical forward passes. Of
   the formulations measured (issue 16's table, and again on a small
   convolutional model), this one is the fastest warm on CPU: one
   ``jax.vjp`` whose pullback is ``vmap``\\ ped over the K unit vectors is several
   times slower on convolutions, and K pullbacks of one ``vjp`` are slower
   and would mix the losses' backward passes (``0 * inf`` turns a finite
   gradient into NaN). Differentiating the traced jaxpr instead of calling the
   model K times keeps Keras's Python out of all but one trace.
4. The compiled executable goes through JAX's persistent compilation cache
   (:mod:`gradviz.backends.jax.cache`), so another process inspecting the same
   architecture loads it instead of compiling it again.

With ``--batches N`` in mean-gradient mode, one program adds each batch's
gradients to K float32 sums (buffers donated back to it, so they are updated
in place), and the sums are reduced once at the end: on a CPU in NumPy
(:func:`~gradviz.backends.jax.reduce.host_partial_grams`, the same arithmetic:
the arrays already live in host memory, and a second program would cost a
fresh process its trace, lowering and loading), elsewhere by a second compiled
program that also hands the sums' buffers back zeroed for the next run.

``execution="eager"`` runs the same functions under ``jax.disable_jit()``
instead of compiling them: op by op, nothing compiled as a whole, nothing
cached (:mod:`gradviz.backends.execution` says why ``auto`` never picks it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from gradviz.backends.failures import explain_failure, inputs_text
from gradviz.backends.forward import batch_ranks, loss_values
from gradviz.backends.setup import PassSetup
from gradviz.backends.jax import cache
from gradviz.backends.jax.devices import Placement
from gradviz.backends.jax.reachability import existing_gradients
from gradviz.backends.jax.reduce import chunks, finish, host_partial_grams, partial_grams
from gradviz.core.spec import LossTerm
from gradviz.core.stats import MEAN_GRADIENT, GradientStats, Progress, assemble
from gradviz.data import Batch, BatchSource
from gradviz.data.batches import closing
from gradviz.errors import BackendError, DataError
from gradviz.model.randomness import seeded_state

if TYPE_CHECKING:
    import keras

    from gradviz.model.losses import ResolvedLoss


@dataclass
class _Program:
    """The traced forward pass and the compiled programs of one input signature."""

    forward: Callable[..., list[Any]]
    values: int
    #: the losses the forward found beyond the resolved ones (add_loss terms, regularization, loss_terms)
    found: tuple[LossTerm, ...]
    #: whether the last value is the summed regularizers
    regularization: bool
    exists: list[list[bool]]
    #: per variable with at least one gradient: (variable, existing losses, partial Gram matrices)
    layout: list[tuple[int, int, int]]
    compiled: dict[str, Any] = field(default_factory=dict)
    #: zeroed mean-gradient sums left by the last run's reduction, for the next run (None: make them)
    zeroed_sums: list[Any] | None = None

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """(loss, variable) of every existing gradient, variable-major (the order of the sums)."""
        return [(k, v) for v, _, _ in self.layout for k in range(self.values) if self.exists[k][v]]


class GradientPass(PassSetup):
    """The compiled JAX gradient pass of one model and its resolved losses, reusable over data.

    The first :meth:`run` on batches of a new shape traces and compiles the pass (or loads
    it from JAX's persistent compilation cache); later runs and every further batch reuse it.
    :meth:`tracing_count` says how often it compiled.

    Args (the others as :class:`~gradviz.backends.setup.PassSetup` takes them):
        execution: ``compiled`` (jitted, through the persistent cache) or ``eager``
            (``jax.disable_jit``: op by op).
        compilation_cache: use JAX's persistent compilation cache (None: on unless
            ``GRADVIZ_COMPILATION_CACHE=0``; see :mod:`gradviz.backends.jax.cache`).
        loss_scale: the mixed-precision loss scale: not supported on JAX yet (refused).

    Raises:
        DataError: unknown mode.
        BackendError: a loss scale (mixed_float16 training) was asked for.
    """

    #: the array library, as the report's ``meta.backend`` names it
    name = "jax"

    def __init__(
        self,
        model: keras.Model,
        losses: Sequence[ResolvedLoss],
        output_names: Sequence[str],
        *,
        training: bool = True,
        mode: str = MEAN_GRADIENT,
        execution: str = "compiled",
        compilation_cache: bool | None = None,
        source_names: Mapping[int, str] | None = None,
        loss_terms: Callable[..., Any] | None = None,
        loss_scale: float | None = None,
    ) -> None:
        if loss_scale is not None:
            raise BackendError(
                "the model trains in mixed_float16 with a loss scale, which gradviz applies on TensorFlow "
                "only so far; run it with KERAS_BACKEND=tensorflow (the .keras file is the same)"
            )
        if execution not in ("compiled", "eager"):
            raise DataError(f"unknown execution {execution!r}; valid: compiled, eager")
        super().__init__(model, losses, output_names, training=training, mode=mode, source_names=source_names,
                         loss_terms=loss_terms)
        #: ``compiled`` (jitted, through the persistent cache) or ``eager`` (``jax.disable_jit``: op by op)
        self.execution = execution
        #: the persistent cache directory in use (None: none; always None in eager execution)
        self.cache_dir = cache.configure(cache.wanted(compilation_cache)) if execution == "compiled" else None
        #: compilations served from the persistent cache
        self.cache_hits = 0
        #: seconds spent compiling (or loading compiled programs from the cache)
        self.compile_seconds = 0.0
        self._compiles = 0
        self._programs: dict[Any, _Program] = {}
        self._devices = 1
        self._regularization = False

    @property
    def meta(self) -> dict[str, Any]:
        """What the report's ``meta`` says of this pass."""
        return {"backend": self.name, "lockstep_fallback": None, "devices": self._devices,
                "compilation_cache": self.cache_dir}

    def tracing_count(self) -> int:
        """How many programs the pass has compiled (or loaded from the persistent cache)."""
        return self._compiles

    # -- the traced pieces -----------------------------------------------------

    def _trace(self, weights: list[Any], rest: list[Any], rest_tree: Any, ranks: tuple[Any, ...]) -> _Program:
        """Trace the forward pass once and find which gradients exist.

        The forward is the shared one (:func:`~gradviz.backends.forward.loss_values`): every
        loss value, then the new state; ``ranks`` (:func:`~gradviz.backends.forward.batch_ranks`)
        picks each ``crossentropy``'s variant as the batch's targets take it.
        """
        import jax
        from jax.extend.core import jaxpr_as_fun

        count = len(weights)
        found: list[Any] = []

        def forward(*flat: Any) -> list[Any]:
            state, x, ys, sws = jax.tree_util.tree_unflatten(rest_tree, flat[count:])
            result = loss_values(
                self.model, list(flat[:count]), state, x, ys, self.losses, self.output_names, self.training,
                sws, ranks, source_names=self.source_names, loss_terms=self.loss_terms,
            )
            found[:] = [result.found, result.regularization]
            return [*result.values, *result.new_state]

        closed = jax.make_jaxpr(forward)(*weights, *rest)
        values = len(closed.out_avals) - len(self.state_variables)
        fn = jaxpr_as_fun(closed)

        def derivative(w: list[Any], t: list[Any], r: list[Any]) -> Any:
            return jax.jvp(lambda ww: fn(*ww, *r)[:values], (w,), (t,))

        # inputs: weights, tangents, the rest; outputs: K values, then their K tangents
        jvp = jax.make_jaxpr(derivative)(weights, weights, rest)
        exists = existing_gradients(jvp, range(count, 2 * count), range(values, 2 * values))
        layout = []
        for v, variable in enumerate(self.variables):
            present = sum(1 for k in range(values) if exists[k][v])
            if present:
                layout.append((v, present, chunks(int(np.prod(variable.shape)))))
        return _Program(fn, values, tuple(found[0]), bool(found[1]), exists, layout)

    def _gradients(self, program: _Program, weights: list[Any], rest: list[Any]) -> tuple[Any, list[Any], dict[int, Any]]:
        """Traced: the loss values, the new state and loss k's gradients (for losses with any)."""
        import jax
        import jax.numpy as jnp

        outputs = None
        grads: dict[int, Any] = {}
        for k in range(program.values):
            if not any(program.exists[k]):
                continue

            def loss_k(w: list[Any], k: int = k) -> tuple[Any, list[Any]]:
                out = program.forward(*w, *rest)
                return out[k], out

            grads[k], out = jax.grad(loss_k, has_aux=True)(weights)
            outputs = out if outputs is None else outputs
        if outputs is None:  # no loss reaches any variable
            outputs = program.forward(*weights, *rest)
        values = jnp.stack([outputs[k] for k in range(program.values)])
        return values, list(outputs[program.values:]), grads

    @staticmethod
    def _reduce(program: _Program, gradient: Callable[[int, int], Any]) -> tuple[Any, Any, Any]:
        """Traced: every variable's partial Gram matrices, scales and max-abs, packed into three vectors."""
        import jax.numpy as jnp

        parts, scales, maxes = [], [], []
        for v, _, _ in program.layout:
            present = [gradient(k, v) for k in range(program.values) if program.exists[k][v]]
            partials, scale, max_abs = partial_grams(present)
            parts.append(jnp.reshape(partials, (-1,)))
            scales.append(scale)
            maxes.append(max_abs)
        if not parts:
            empty = jnp.zeros((0,), jnp.float32)
            return empty, empty, empty
        return jnp.concatenate(parts), jnp.concatenate(scales), jnp.concatenate(maxes)

    # -- compiling -------------------------------------------------------------

    def _compile(self, fn: Callable[..., Any], args: tuple[Any, ...], donate: tuple[int, ...] = ()) -> Any:
        """``fn`` jitted and compiled ahead of time for ``args`` (through the persistent cache).

        In eager execution, ``fn`` itself, run under ``jax.disable_jit()``: every primitive is
        dispatched on its own (JAX still compiles each op for its shapes, as any eager JAX does),
        no program is compiled as a whole, and nothing goes to the persistent cache.
        """
        import time

        import jax

        if self.execution == "eager":
            def eager(*call_args: Any) -> Any:
                with jax.disable_jit():
                    return fn(*call_args)

            return eager
        lowered = jax.jit(fn, donate_argnums=donate).trace(*args).lower()
        start = time.perf_counter()
        with cache.compiling() as hits:
            compiled = lowered.compile()
        self.compile_seconds += time.perf_counter() - start
        self._compiles += 1
        self.cache_hits += hits[0]
        return compiled

    def _program(self, weights: list[Any], rest: list[Any], rest_tree: Any, placement: Placement,
                 ranks: tuple[Any, ...]) -> _Program:
        # The stand-in for Keras's global SeedGenerator is read as a constant when the forward is
        # traced (unseeded keras.random calls): another --seed is another program.
        key = (rest_tree, tuple((tuple(a.shape), str(a.dtype)) for a in rest), placement.key(),
               self.global_seed.value, ranks)
        program = self._programs.get(key)
        if program is None:
            with self.global_seed.active():
                program = self._programs[key] = self._trace(weights, rest, rest_tree, ranks)
            self.found_terms = program.found
        return program

    def _stats_step(self, program: _Program, args: tuple[Any, ...]) -> Any:
        if "stats" not in program.compiled:
            def step(weights: list[Any], rest: list[Any]) -> tuple[Any, list[Any], tuple[Any, Any, Any]]:
                values, state, grads = self._gradients(program, weights, rest)
                return values, state, self._reduce(program, lambda k, v: grads[k][v])

            program.compiled["stats"] = self._compile(step, args)
        return program.compiled["stats"]

    def _accumulate_step(self, program: _Program, args: tuple[Any, ...]) -> Any:
        if "accumulate" not in program.compiled:
            import jax.numpy as jnp

            def step(weights: list[Any], rest: list[Any], sums: list[Any]) -> tuple[Any, list[Any], list[Any]]:
                values, state, grads = self._gradients(program, weights, rest)
                added = [s + grads[k][v].astype(jnp.float32) for s, (k, v) in zip(sums, program.pairs)]
                return values, state, added

            program.compiled["accumulate"] = self._compile(step, args, donate=(2,))
        return program.compiled["accumulate"]

    def _reduce_step(self, program: _Program, sums: list[Any]) -> Any:
        if "reduce" not in program.compiled:
            index = {pair: i for i, pair in enumerate(program.pairs)}

            def reduce(sums: list[Any]) -> tuple[tuple[Any, Any, Any], list[Any]]:
                import jax.numpy as jnp

                # The sums' buffers come back zeroed (donated: no new allocation) for the next run:
                # creating K float32 copies of the weights on the host and sending them costs more.
                return self._reduce(program, lambda k, v: sums[index[(k, v)]]), [jnp.zeros_like(a) for a in sums]

            program.compiled["reduce"] = self._compile(reduce, (sums,), donate=(0,))
        return program.compiled["reduce"]

    # -- running ---------------------------------------------------------------

    @staticmethod
    def flat_inputs(placement: Placement, state: list[Any], batch: Batch) -> tuple[list[Any], Any]:
        """A batch (with its sample weights) and the state, placed and flattened as the traced
        programs take them: ``(rest, rest_tree)``.

        Raises:
            DataError: a batch does not split evenly across the devices.
        """
        import jax

        xs = list(batch.x)
        keys = list(batch.y)
        weighted = list(batch.sample_weight)
        placed = placement.batches([*xs, *(batch.y[k] for k in keys), *(batch.sample_weight[k] for k in weighted)])
        n, m = len(xs), len(xs) + len(keys)
        rest, rest_tree = jax.tree_util.tree_flatten(
            (state, placed[:n], dict(zip(keys, placed[n:m])), dict(zip(weighted, placed[m:])))
        )
        return list(rest), rest_tree

    def weights_and_state(self, placement: Placement, seed: int | None) -> tuple[list[Any], list[Any]]:
        """The weights and the state a run starts from (seed-generator states drawn from ``seed``)."""
        weights = [placement.variable(v) for v in self.variables]
        if seed is None:
            state = [placement.variable(v) for v in self.state_variables]
        else:  # a loaded model's own seeds are drawn afresh on every load
            state = [placement.variable(v, value) for v, value in
                     zip(self.state_variables, seeded_state(self.state_variables, self.random_state, seed))]
        return weights, state

    def program(self, weights: list[Any], rest: list[Any], rest_tree: Any, placement: Placement,
                batch: Batch) -> _Program:
        """The traced forward of this input signature (traced on first use)."""
        return self._program(weights, rest, rest_tree, placement, batch_ranks(self.losses, batch))

    def gradients(self, program: _Program, weights: list[Any], rest: list[Any]) -> tuple[Any, list[Any], dict[int, Any]]:
        """Traceable: the loss values, the new state, and each loss's gradients (losses that reach a variable)."""
        return self._gradients(program, weights, rest)

    def compile(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """``fn`` compiled for ``args`` as this pass compiles (counted; eager: run under ``jax.disable_jit``)."""
        return self._compile(fn, args)

    @staticmethod
    def _reduce_on_host(placement: Placement) -> bool:
        """Whether the mean-gradient sums are reduced in NumPy: on one CPU device, whose memory is the host's.

        There a compiled reduction saves nothing at run time and costs a fresh process its trace,
        lowering and loading (seconds on the benchmark's MLP); on an accelerator, or sharded across
        devices, the sums stay where they are and a compiled program reduces them.
        """
        import jax

        return placement.distribution is None and jax.default_backend() == "cpu"

    @staticmethod
    def _host_reduce(program: _Program, sums: list[Any]) -> list[Any]:
        """Per variable: ``(gram, max_abs, finite)`` of the sums, reduced in NumPy (:func:`host_partial_grams`)."""
        index = {pair: i for i, pair in enumerate(program.pairs)}
        host = [np.asarray(a) for a in sums]  # on a CPU: the arrays' own memory, no copy
        out: list[Any] = [None] * len(program.exists[0]) if program.exists else []
        for v, _, _ in program.layout:
            present = [host[index[(k, v)]] for k in range(program.values) if program.exists[k][v]]
            out[v] = finish(*host_partial_grams(present))
        return out

    @staticmethod
    def _unpack(program: _Program, packed: tuple[Any, Any, Any]) -> list[Any]:
        """Per variable: ``(gram, max_abs, finite)`` of its existing gradients, or None (on the host)."""
        partials, scales, maxes = (np.asarray(a) for a in packed)
        out: list[Any] = [None] * len(program.exists[0]) if program.exists else []
        g = m = 0
        for v, present, parts in program.layout:
            block = partials[g:g + parts * present * present].reshape(parts, present, present)
            out[v] = finish(block, scales[m:m + present], maxes[m:m + present])
            g += parts * present * present
            m += present
        return out

    def run(self, data: BatchSource, progress: Progress | None = None, seed: int | None = None) -> GradientStats:
        """Stream ``data`` through the compiled pass and reduce it to statistics.

        Args:
            data: the batches.
            progress: called with ``(batches done, batches)``.
            seed: the random layers' seed-generator states start from values derived from it
                (:func:`gradviz.model.randomness.seeded_state`, as on TensorFlow: the same masks
                on both backends); None starts them from the model's own state.

        Raises:
            LossSpecError: a loss fails on the model's outputs.
            DataError: the data does not fit the model.
        """
        placement = Placement.current()
        self._devices = placement.devices
        weights, state = self.weights_and_state(placement, seed)
        self.global_seed.reset(seed)
        accumulate = self.mode == MEAN_GRADIENT and data.batches > 1
        program: _Program | None = None
        sums: list[Any] | None = None
        loss_sum: np.ndarray | None = None
        per_batch: list[Any] | None = None
        done = 0
        with closing(data.iter_batches()) as stream:  # a reader stops (workers too) even when a batch fails
            for b, batch in enumerate(stream):
                values, state, program, sums, per_batch = self._batch(
                    placement, weights, state, batch, data, accumulate, sums, per_batch)
                batch_values = np.asarray(values, np.float64)
                loss_sum = batch_values if loss_sum is None else loss_sum + batch_values
                done = b + 1
                if progress is not None:
                    progress(done, data.batches)
        if done != data.batches:  # a source that yields fewer batches than it promised
            raise DataError(f"the data yielded {done} batch(es); {data.batches} were expected")
        assert program is not None and loss_sum is not None
        if accumulate:
            assert sums is not None
            if self._reduce_on_host(placement):
                stats = self._host_reduce(program, sums)
            else:
                packed, program.zeroed_sums = self._reduce_step(program, sums)(sums)
                stats = self._unpack(program, packed)
            # Gram and max-abs of the mean gradient = those of the sum, scaled by 1/N^2 and 1/N.
            per_batch = [None if s is None else (s[0] / data.batches**2, s[1] / data.batches, s[2]) for s in stats]
            divide = 1.0
        else:
            divide = float(data.batches)
        assert per_batch is not None
        self._regularization = program.regularization
        names = tuple(loss.name for loss in self.losses) + tuple(t.name for t in program.found)
        return assemble(
            names, program.exists, per_batch, loss_sum / data.batches, divide, data.batches, self.mode,
            self._regularization,
        )

    def _batch(self, placement: Placement, weights: list[Any], state: list[Any], batch: Batch, data: BatchSource,
               accumulate: bool, sums: list[Any] | None, per_batch: list[Any] | None) -> tuple[Any, ...]:
        """One batch through the compiled pass: ``(values, new state, program, sums, per-batch statistics)``.

        Raises:
            LossSpecError: a loss fails on the model's outputs.
            DataError: the batch does not fit the model.
        """
        try:
            rest, rest_tree = self.flat_inputs(placement, state, batch)
            program = self.program(weights, rest, rest_tree, placement, batch)
            if accumulate:
                if sums is None:
                    sums = program.zeroed_sums or placement.zeros([weights[v] for _, v in program.pairs])
                    program.zeroed_sums = None
                step = self._accumulate_step(program, (weights, rest, sums))
                values, state, sums = step(weights, rest, sums)
            else:
                step = self._stats_step(program, (weights, rest))
                values, state, packed = step(weights, rest)
                stats = self._unpack(program, packed)
                per_batch = stats if per_batch is None else [
                    None if a is None else (a[0] + s[0], np.maximum(a[1], s[1]), a[2] & s[2])
                    for a, s in zip(per_batch, stats)
                ]
            values = np.asarray(values, np.float64)
        except (ValueError, TypeError) as e:
            raise explain_failure(e, inputs_text(self.model, batch.x), data.guessed) from e
        except Exception as e:  # XLA's runtime errors (jax.errors.JaxRuntimeError) are not ValueErrors
            if type(e).__name__ not in ("JaxRuntimeError", "XlaRuntimeError"):
                raise
            raise explain_failure(e, inputs_text(self.model, batch.x), data.guessed) from e
        return values, state, program, sums, per_batch
