"""The public seam: ``prepare(model) -> Session``, ``Session.run(data) -> Report``, and ``analyze``.

The data flows one way::

    load -> losses (resolved once) -> data -> gradient backend -> statistics -> analysis -> Report

:func:`prepare` does everything that depends only on the model and the loss
spec (loading, the graph, resolving each loss once, building the gradient
backend); :meth:`Session.run` does what depends on the data, and can be called
many times: the compiled pass is traced once. :func:`analyze` is
``prepare(...).run(...)``. The CLI, the benchmark and the tests all go through
here.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from gradviz.core.analysis import analyze_stats
from gradviz.core.findings import Thresholds
from gradviz.core.report import Report
from gradviz.core.spec import (
    REGULARIZATION,
    REGULARIZATION_LOSS,
    LossSpec,
    build_spec,
    keras_refusal,
    no_loss_message,
)
from gradviz.core.stats import MEAN_GRADIENT, Progress
from gradviz.errors import DataError, LossSpecError, ModelLoadError, NoLossError

#: ``fn(model, x, y) -> {name: scalar loss}``: the terms a custom training step sums
LossTerms = Callable[[Any, Any, Any], Mapping[str, Any]]

if TYPE_CHECKING:
    import keras

    from gradviz.backends import GradientBackend
    from gradviz.backends.execution import Execution
    from gradviz.core.graph import Topology
    from gradviz.data import Data, FitData, Layout, TensorInfo
    from gradviz.model.loading import LoadedModel
    from gradviz.model.losses import ResolvedLoss


@dataclass
class Timer:
    """Wall-clock seconds per stage, in the order they ran."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a block as stage ``name`` (added up when repeated)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class Session:
    """A model prepared for analysis: its graph, its losses resolved once, its gradient backend.

    Make one with :func:`prepare`. :meth:`run` analyses data and returns a
    :class:`~gradviz.core.report.Report`; call it as often as you like (other
    data, more batches): the gradient pass is compiled on the first run and
    reused. The model is never changed.

    Attributes:
        model: the Keras model.
        topology: its graph (:class:`~gradviz.core.graph.Topology`).
        outputs: the model's output names, in order.
        spec: the loss spec: one term per compiled loss, with its weight (the losses the
            model adds itself, and ``loss_terms``' terms, join it in each report: they are
            known once the model has run).
        losses: the output losses, resolved once (:class:`~gradviz.model.losses.ResolvedLoss`).
        loss_terms: the custom training step's terms function, or None.
        training: whether the model is called in training mode.
        batch_mode: ``mean-gradient`` or ``per-batch``.
        thresholds: when figures become findings.
        execution: ``auto``, ``eager`` or ``compiled``: how the gradient pass runs
            (:mod:`gradviz.backends.execution`); ``auto`` decides per run.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        topology: Topology,
        outputs: list[str],
        spec: LossSpec,
        losses: tuple[ResolvedLoss, ...],
        *,
        pending_weights: Mapping[str, float],
        training: bool,
        batch_mode: str,
        thresholds: Thresholds,
        timer: Timer,
        execution: str = "auto",
        source_names: Mapping[int, str] | None = None,
        loss_terms: LossTerms | None = None,
        compilation_cache: bool | None = None,
    ) -> None:
        self.loaded = loaded
        self.model: keras.Model = loaded.model
        self.topology = topology
        self.outputs = outputs
        self.spec = spec
        self.losses = losses
        self.training = training
        self.batch_mode = batch_mode
        self.thresholds = thresholds
        self.loss_terms = loss_terms
        # weights for losses known only once the model runs (add_loss, regularization, loss_terms)
        self._pending_weights = dict(pending_weights)
        self._source_names = dict(source_names or {})
        self._prepare_timings = dict(timer.seconds)
        self.execution = execution
        self._backends: dict[str, GradientBackend] = {}
        self._last_execution: str | None = None
        self._compilation_cache = compilation_cache

    @property
    def backend(self) -> GradientBackend:
        """The gradient backend the last run used; before any run, the compiled one (unless ``execution='eager'``)."""
        return self.backend_for(self._last_execution or ("eager" if self.execution == "eager" else "compiled"))

    def backend_for(self, execution: str) -> GradientBackend:
        """The ``eager`` or ``compiled`` gradient backend (built on first use; compiled on its first run)."""
        if execution not in self._backends:
            from gradviz import backends

            self._backends[execution] = backends.create(
                self.model, self.losses, self.outputs, training=self.training, mode=self.batch_mode,
                execution=execution, source_names=self._source_names, loss_terms=self.loss_terms,
                loss_scale=self.loaded.loss_scale,
                compilation_cache=self._compilation_cache,
            )
        return self._backends[execution]

    @property
    def backend_name(self) -> str:
        """Keras's backend: ``tensorflow`` or ``jax`` (what ``meta.backend`` will say)."""
        import keras

        return str(keras.backend.backend())

    def choose_execution(self, batches: int) -> Execution:
        """How a run of ``batches`` batches computes its gradients (an :class:`~gradviz.backends.execution.Execution`)."""
        import math

        from gradviz.backends import execution

        params = sum(math.prod(int(d) for d in v.shape) for v in self.model.trainable_variables)
        # The losses found when the model runs (add_loss, regularization, loss_terms) are not known yet,
        # and a choice that changed after the first run would change a session's numbers: the compiled
        # ones count, and a model with none (add_loss only, loss_terms) counts as one.
        return execution.choose(self.execution, batches=batches, losses=max(len(self.losses), 1), params=params,
                                backend=self.backend_name)

    def tracing_count(self) -> int:
        """How many times the gradient pass has been compiled (traced) so far."""
        return sum(backend.tracing_count() for backend in self._backends.values())

    def input_infos(self) -> list[TensorInfo]:
        """The model's inputs as data must match them (name, shape, dtype, id range)."""
        from gradviz.core.graph import input_id_ranges, input_value_ranges
        from gradviz.data import TensorInfo
        from gradviz.model.keras_structure import flat_input_tensors
        from gradviz.model.topology import input_names, input_tensors

        # gradviz's flat order (Keras's: dict keys sorted); keras_structure.to_model_inputs packs them back
        ranges = input_id_ranges(self.topology)
        value_ranges = input_value_ranges(self.topology)
        # a subclassed model declares no input structure: its inputs come from its build shapes
        tensors = flat_input_tensors(self.model) or input_tensors(self.model)
        return [
            TensorInfo(name, tuple(t.shape), str(getattr(t, "dtype", "float32")), ranges.get(name),
                       value_range=value_ranges.get(name))
            for name, t in zip(input_names(self.model), tensors)
        ]

    def target_infos(self) -> list[TensorInfo]:
        """The targets each output with a loss needs (shape, dtype and the kind its loss takes)."""
        from gradviz.data import TensorInfo

        if self.loss_terms is not None:  # the function's y: one target per output, shaped like it
            from gradviz.model.topology import output_tensors

            return [
                TensorInfo(name, tuple(t.shape), str(getattr(t, "dtype", "float32")), None, "real")
                for name, t in zip(self.outputs, output_tensors(self.model))
            ]
        infos = []
        seen = set()
        for loss in self.losses:
            if loss.output in seen:
                continue
            seen.add(loss.output)
            infos.append(TensorInfo(loss.output, loss.output_shape, loss.output_dtype, None, loss.target_kind))
        return infos

    def layout(self) -> Layout:
        """What data must match: the inputs, the outputs, which outputs need targets and their losses."""
        from gradviz.data import Layout

        losses: dict[str, list[str]] = {}
        for loss in self.losses:
            losses.setdefault(loss.output, []).append(loss.term.loss)
        return Layout(tuple(self.input_infos()), tuple(self.target_infos()), tuple(self.outputs),
                      {output: " + ".join(names) for output, names in losses.items()})

    def data(
        self,
        data: str | Path | Data | FitData | None = None,
        *,
        x: Any = None,
        y: Any = None,
        sample_weight: Any = None,
        class_weight: Mapping[int, float] | None = None,
        batch_size: int | None = None,
        steps: int | None = None,
        batches: int | None = None,
        seed: int = 0,
    ) -> Data | FitData:
        """The batches a run computes on: ``x`` (as ``Model.fit`` takes it), a file, or synthetic data.

        Args:
            data: an ``.npz`` file, a directory written by ``tf.data.Dataset.save``, or ready
                batches (:class:`~gradviz.data.Data`, :class:`~gradviz.data.FitData`: the training
                monitor's probe), used as they are.
            x, y, sample_weight, class_weight, steps: as :meth:`run` takes them.
            batch_size: rows per batch (default 32; for ``x``, as ``Model.fit`` picks it).
            batches: how many batches of a file or of synthetic data (default 1).
            seed: seed of the synthetic data.

        Raises:
            DataError: the data does not fit the model, or the arguments do not go together.
        """
        from gradviz import data as data_mod
        from gradviz.data import fit

        if x is not None:
            if data is not None:
                raise DataError("pass data= (a file) or x= (data in memory), not both")
            if batches is not None:
                raise DataError("with x=..., the number of batches is steps=N (batches= is for data= files and "
                                "synthetic data)")
            return fit.fit_data(x, y, sample_weight, class_weight, layout=self.layout(), batch_size=batch_size,
                                steps=steps)
        for name, value in (("y", y), ("sample_weight", sample_weight), ("class_weight", class_weight)):
            if value is not None:
                raise DataError(f"{name}= goes with x=... (the inputs); with data= a file holds the targets")
        if steps is not None:
            raise DataError("steps= goes with x=...; for data= files and synthetic data the number of batches is "
                            "batches=N")
        if isinstance(data, (data_mod.Data, fit.FitData)):  # ready batches (the training monitor's probe)
            return data
        batches = 1 if batches is None else batches
        if data is not None and not isinstance(data, (str, os.PathLike)):
            raise DataError(
                f"data= takes the path of an .npz file or of a tf.data.Dataset.save directory, not a "
                f"{type(data).__name__}; pass data in memory as x=... (and y=...), as to Model.fit"
            )
        if data is not None and Path(data).is_dir():
            data_mod.check_counts(1 if batch_size is None else batch_size, batches)
            return fit.load_saved_dataset(data, self.layout(), batch_size=batch_size, batches=batches)
        batch_size = fit.DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        data_mod.check_counts(batch_size, batches)
        inputs = self.input_infos()
        if not inputs and data is None:
            raise DataError(
                f"gradviz cannot tell the inputs of '{self.model.name}' (a subclassed model never called, or whose "
                "build shape is unknown), so it cannot make data up; pass `data=FILE.npz` with its inputs under 'x'"
            )
        if data is not None and (self.loss_terms is not None or not inputs):
            # a loss_terms function takes whatever targets the file holds (or none); unknown inputs take any shape
            return data_mod.load_npz_loose(data, batch_size=batch_size, batches=batches,
                                           input_names=[info.name for info in inputs])
        if data is not None:
            return data_mod.load_npz(data, inputs, self.target_infos(), batch_size=batch_size,
                                     batches=batches)
        from gradviz.core.graph import sequence_limit

        # unknown sequence lengths no longer than the model's position embeddings take
        unknown_dim = min(data_mod.UNKNOWN_DIM, sequence_limit(self.topology) or data_mod.UNKNOWN_DIM)
        return data_mod.synthetic(self.input_infos(), self.target_infos(), batch_size=batch_size, batches=batches,
                                  seed=seed, unknown_dim=unknown_dim)

    def run(
        self,
        data: str | Path | Data | FitData | None = None,
        *,
        x: Any = None,
        y: Any = None,
        sample_weight: Any = None,
        class_weight: Mapping[int, float] | None = None,
        batch_size: int | None = None,
        steps: int | None = None,
        batches: int | None = None,
        seed: int = 0,
        progress: Progress | str | None = "auto",
    ) -> Report:
        """Analyse how each loss's gradient flows through the model on the data.

        The data is what ``Model.fit`` takes (``x``, ``y``, ``sample_weight``, ``class_weight``,
        ``batch_size``, ``steps``), a file (``data``), or, with neither, seeded synthetic data.
        Batches are read in order (no shuffling); each loss is called with its output's sample
        weights as Keras's training step calls it, so the gradients are those ``fit`` computes.

        Args:
            data: an ``.npz`` file (keys ``x``/``y`` or ``x:<input>``/``y:<output>``) or a
                directory written by ``tf.data.Dataset.save``, ready :class:`~gradviz.data.Data` or
                :class:`~gradviz.data.FitData` batches (used as they are); None: ``x``, or synthetic data.
            x: inputs as ``Model.fit`` takes them: NumPy arrays (one, a list in input order or a
                dict by input name), a ``tf.data.Dataset`` or ``keras.utils.PyDataset`` yielding
                ``(x, y)`` or ``(x, y, sample_weight)``, or a Python generator yielding those.
            y: targets, with array ``x``: one array, a list (one per output, or one per output with
                a loss) or a dict by output name. Class ids work wherever Keras takes them
                (``sparse_categorical_crossentropy``, and ``crossentropy`` on ids).
            sample_weight: with array ``x``: one array (every loss), a list or a dict by output name.
            class_weight: ``{class id: weight}`` for a model with one output carrying a loss
                (arrays, tf.data, PyDataset; applied by Keras's data adapter, as in ``fit``).
            batch_size: rows per batch, for arrays and files (default 32).
            steps: with ``x``, how many batches to analyse (default: all of ``x``); needed when its
                length is unknown (a generator, an infinite or filtered dataset).
            batches: with a file or synthetic data, how many batches (default 1).
            seed: seed of the synthetic data and of the random layers (Dropout, noise, augmentation,
                custom layers with a ``SeedGenerator``), whose state gradviz draws from it.
            progress: called with ``(batches done, batches)``; ``"auto"`` shows a bar for more than
                one batch (``tqdm.auto`` in notebooks, rich on a terminal's stderr); None: nothing.

        Returns:
            The :class:`~gradviz.core.report.Report`.

        Raises:
            GradvizError: the data does not fit the model, or a loss fails on it.

        Example:
            >>> session = gradviz.prepare(model)  # doctest: +SKIP
            >>> report = session.run(x=features, y={"C": labels, "D": scores}, batch_size=64)  # doctest: +SKIP
        """
        from gradviz.output.progress import progress_for

        timer = Timer()
        start = time.perf_counter()
        with timer.stage("data"):
            batches_data = self.data(data, x=x, y=y, sample_weight=sample_weight, class_weight=class_weight,
                                     batch_size=batch_size, steps=steps, batches=batches, seed=seed)
        chosen = self.choose_execution(batches_data.batches)
        self._last_execution = chosen.mode
        with timer.stage("gradients"), progress_for(progress, batches_data.batches) as callback:
            backend = self.backend_for(chosen.mode)
            try:
                stats = backend.run(batches_data, progress=callback, seed=seed)
            except NoLossError:
                raise LossSpecError(no_loss_message(self.loaded.source or "the model", self.outputs)) from None
        spec = self._spec_with_found_terms(backend)
        with timer.stage("analysis"):
            report = analyze_stats(self.topology, stats, spec, model_name=self.model.name, thresholds=self.thresholds)
        import keras

        from gradviz.model.randomness import find_random_state

        random_layers = list(find_random_state(self.model).layers)
        timings = dict(self._prepare_timings)
        for stage, seconds in timer.seconds.items():
            timings[stage] = timings.get(stage, 0.0) + seconds
        timings["total"] = sum(self._prepare_timings.values()) + time.perf_counter() - start
        self._prepare_timings = {}  # a second run on the same session did not load anything
        report.timings = timings
        report.meta = {
            "source": self.loaded.source,
            "keras_version": keras.__version__,
            "batch_size": batches_data.batch_size,
            "batches": batches_data.batches,
            "batch_mode": self.batch_mode,
            # the seed drew the synthetic data and the random layers' state: null when it drew neither
            "seed": seed if batches_data.synthetic or random_layers else None,
            **_data_meta(batches_data, data),
            "training": self.training,
            "random_layers": random_layers,
            "graph_complete": self.topology.complete,
            "loss_scale": stats.loss_scale,
            **self.backend_for(chosen.mode).meta,
            "execution": chosen.mode,
            "execution_reason": chosen.reason,
        }
        return report

    def _spec_with_found_terms(self, backend: GradientBackend) -> LossSpec:
        """The spec with the losses ``backend`` found when the model ran, weighted as asked.

        Raises:
            LossSpecError: a weight names no loss of the model.
        """
        pending = dict(self._pending_weights)
        terms = list(self.spec.terms)
        for term in backend.found_terms:
            weight = pending.pop(term.name, None)
            terms.append(term if weight is None else replace(term, weight=float(weight)))
        names = [t.name for t in terms]
        for name in pending:
            if name in (REGULARIZATION, REGULARIZATION_LOSS):
                raise LossSpecError(
                    f"`loss_weights` {name}: the model has no regularization (no weight or activity regularizer); "
                    f"its losses are: {', '.join(names)}"
                )
            if name in self.outputs:
                raise LossSpecError(
                    f"`loss_weights`: output '{name}' has no loss (none compiled or given with `losses`, and no "
                    f"add_loss there) so a weight weighs nothing; its losses are: {', '.join(names)}"
                )
            hint = (f" ('{name}' is a layer, but it adds no loss with add_loss)"
                    if name in self.topology.graph else "")
            raise LossSpecError(
                f"`loss_weights`: '{name}' is not an output of the model or a layer that adds a loss; "
                f"its losses are: {', '.join(names)}{hint}"
            )
        # an output produced by an endpoint layer is trained by that layer's add_loss
        anchors = {t.output for t in terms if t.source == "add_loss"}
        unlossed = tuple(o for o in self.spec.unlossed_outputs if self.topology.outputs.get(o, o) not in anchors)
        return replace(self.spec, terms=tuple(terms), unlossed_outputs=unlossed)


def _data_meta(batches: Data | FitData, data: str | Path | Data | FitData | None) -> dict[str, Any]:
    """What the report's ``meta`` says of the data: what it was, and whether it was weighted.

    ``data``: the file, ``synthetic``, ``in-memory`` (ready :class:`~gradviz.data.Data` batches)
    or what fit-style data was (``arrays``, ``tf.data.Dataset``, a saved dataset's directory, ...).

    ``class_weight`` is written as JSON keeps it (keys are strings there), in class order.
    """
    from gradviz.data import FitData

    if isinstance(batches, FitData):
        class_weight = batches.class_weight
        return {
            "data": batches.description,
            "sample_weight": batches.weighted,
            "class_weight": None if class_weight is None else {
                str(int(k)): float(class_weight[k]) for k in sorted(class_weight)
            },
        }
    return {
        "data": "synthetic" if data is None else str(data) if isinstance(data, (str, os.PathLike)) else "in-memory",
        "sample_weight": batches.sample_weight is not None,
        "class_weight": None,
    }


def prepare(
    model: Any,
    *,
    losses: Mapping[str | None, Any] | None = None,
    loss_weights: Mapping[str, float] | None = None,
    training: bool = True,
    batch_mode: str = MEAN_GRADIENT,
    custom_objects: str | Path | None = None,
    unsafe: bool = False,
    thresholds: Thresholds = Thresholds(),
    execution: str = "auto",
    loss_terms: LossTerms | None = None,
    compilation_cache: bool | None = None,
) -> Session:
    """Load or wrap a model, walk its graph and resolve each of its losses once.

    Losses come from three sources: the compile config (or ``losses``), the layers
    that add their own with ``add_loss`` (one loss per endpoint layer, named after it;
    regularizers summed as ``regularization``), or ``loss_terms``.

    Args:
        model: a ``keras.Model`` or the path of a ``.keras`` / ``.h5`` file.
        losses: ``{output: loss}`` overriding or supplying the compiled losses;
            the key None applies a loss to every output.
        loss_weights: ``{name: weight}`` overriding the compiled weights; names are
            outputs, endpoint layers (their ``add_loss``), ``regularization``, or
            ``loss_terms``' names.
        training: call the model in training mode (dropout, batch statistics).
        batch_mode: ``mean-gradient`` (default) or ``per-batch``.
        custom_objects: a Python file defining custom layers and losses.
        unsafe: allow Lambda layers in model files (runs their code).
        thresholds: when figures become findings.
        execution: ``auto`` (default: eager for a few batches, compiled when tracing pays
            off), ``eager`` or ``compiled``; see :mod:`gradviz.backends.execution`.
        loss_terms: ``fn(model, x, y) -> {name: scalar}``: the losses a custom training
            step (``train_step`` / ``compute_loss``) sums. Each term is differentiated
            separately with the model's current weights, statelessly (seed states,
            BatchNorm statistics and variables are not written), with weight 1 unless
            ``loss_weights`` names it. It replaces the compiled and added losses.
        compilation_cache: on the JAX backend, keep the compiled gradient pass in JAX's
            persistent compilation cache, so the next process inspecting the same
            architecture does not compile it again (None: on, unless
            ``GRADVIZ_COMPILATION_CACHE=0``; see :mod:`gradviz.backends.jax.cache`).
            TensorFlow has no such cache: ignored there.

    Returns:
        A :class:`Session`; ``session.run(...)`` analyses data.

    Raises:
        GradvizError: the model cannot be loaded, or its losses cannot be resolved.

    Example:
        >>> import gradviz
        >>> session = gradviz.prepare("samples/shared_trunk.keras")  # doctest: +SKIP
        >>> report = session.run(batches=2)  # doctest: +SKIP
    """
    _quiet_tensorflow()
    from gradviz.backends import import_keras
    from gradviz.core.stats import BATCH_MODES
    from gradviz.model import loading, topology
    from gradviz.model.losses import resolve_losses

    if batch_mode not in BATCH_MODES:
        raise DataError(f"unknown batch mode {batch_mode!r}; valid: {', '.join(BATCH_MODES)}")
    from gradviz.backends.execution import check

    check(execution)
    timer = Timer()
    with timer.stage("load"):
        import_keras()  # a missing JAX (KERAS_BACKEND=jax) is one clear error, not an ImportError
        if isinstance(model, (str, Path)):
            loaded = loading.load_model(model, custom_objects_file=custom_objects, unsafe=unsafe)
        else:
            loaded = loading.from_model(model)
            if custom_objects:
                loaded = replace(loaded, custom_objects=loading.import_custom_objects(custom_objects))
    keras_model = loaded.model
    with timer.stage("graph"):
        topo, sources = topology.build_topology_and_sources(keras_model)
    outputs = list(topo.outputs) or topology.output_names(keras_model)
    if not outputs and loss_terms is None:
        why = topo.missing or "its call() cannot be traced"
        raise ModelLoadError(
            f"gradviz cannot name the outputs of {keras_model.name!r}, a subclassed model: {why}; wrap it in a "
            "functional model (x = keras.Input(shape); keras.Model(x, model(x))), or give the terms its training "
            "step sums with `loss_terms`"
        )
    weights = dict(loss_weights or {})
    pending = {k: w for k, w in weights.items() if k not in outputs or loss_terms is not None}
    for name in pending:  # named before the model runs: only what could still turn out to be a loss
        _check_late_weight_name(name, outputs, topo.graph, loss_terms is not None)
    with timer.stage("losses"):
        if loss_terms is not None:  # the custom step's terms replace the compiled losses
            spec = LossSpec(())
        else:
            _check_compile_config(keras_model, loaded, outputs, losses or {}, weights)
            spec = build_spec(
                outputs,
                loaded.loss,
                loaded.loss_weights,
                loss_overrides=losses,
                weight_overrides={k: w for k, w in weights.items() if k not in pending},
                layer_names=list(topo.graph.nodes),
                source=loaded.source or "the model",
                require_terms=False,  # endpoint layers may bring their own: checked when the model runs
            )
            # an output without a compiled loss may be an endpoint layer: its weight is for its add_loss
            pending.update({o: weights[o] for o in spec.unlossed_outputs if o in weights})
        tensors = dict(zip(outputs, topology.output_tensors(keras_model)))
        resolved = resolve_losses(spec.output_terms, tensors, loaded.custom_objects)
    return Session(
        loaded, topo, outputs, spec, resolved,
        pending_weights=pending, training=training, batch_mode=batch_mode, thresholds=thresholds,
        timer=timer, execution=execution, source_names=sources, loss_terms=loss_terms,
        compilation_cache=compilation_cache,
    )


def _check_late_weight_name(name: str, outputs: list[str], graph: Any, custom_terms: bool) -> None:
    """Refuse at once a loss weight that no loss found when the model runs could take.

    Those losses are named after layers (``<layer>`` or ``<layer>.add_loss``), ``regularization``
    (``model.losses``), or by a ``loss_terms`` function (any name).
    """
    if custom_terms or name in (REGULARIZATION, REGULARIZATION_LOSS):
        return
    layer = name[: -len(".add_loss")] if name.endswith(".add_loss") else name
    if layer in graph and graph.nodes[layer].get("kind") in ("layer", "model"):
        return
    raise LossSpecError(
        f"`loss_weights`: '{name}' is not an output of the model; outputs are: {', '.join(outputs)} "
        "(layers that add a loss with add_loss, and 'regularization', are named too)"
    )


def _check_compile_config(model: Any, loaded: LoadedModel, outputs: list[str], losses: Mapping[str | None, Any],
                          weights: Mapping[str, float]) -> None:
    """Refuse a saved ``loss`` / ``loss_weights`` pair Keras's training step would refuse, in one line.

    Skipped where the overrides replace what is wrong (every loss, or every weight).

    Raises:
        LossSpecError: Keras cannot pack the config; the message is Keras's.
    """
    if loaded.loss is None:
        return
    from gradviz.core.spec import is_serialized_object
    from gradviz.model import keras_internals, topology

    structure = topology.output_structure(model)
    if structure is None:
        return
    # what compile() hands CompileLoss: the model's output_names (a subclassed model has none)
    names = None if topology.is_subclassed(model) else list(getattr(model, "output_names", None) or outputs)

    def is_leaf(value: Any) -> bool:
        return is_serialized_object(value) and not set(map(str, value)) <= set(outputs)

    def refusal(weights_config: Any) -> str | None:
        try:
            keras_internals.compile_loss_plan(loaded.loss, weights_config, structure, names, is_leaf)
        except (ValueError, KeyError, TypeError) as e:
            # Keras's words, its backticks dropped: they would read as gradviz's parameter names
            text = " ".join(str(e).split()).strip("\"'").rstrip(".").replace("`", "")
            return f"Keras raises {type(e).__name__}: {text[:300]}"
        return None

    why = refusal(loaded.loss_weights)
    if why is None:
        return
    all_losses = None in losses or all(o in losses for o in outputs)
    if all_losses:
        return
    if refusal(None) is None and all(o in weights for o in outputs):
        return  # only the weights were wrong, and every one is overridden
    raise LossSpecError(keras_refusal(why))


def analyze(
    model: Any,
    *,
    losses: Mapping[str | None, Any] | None = None,
    loss_weights: Mapping[str, float] | None = None,
    data: str | Path | None = None,
    x: Any = None,
    y: Any = None,
    sample_weight: Any = None,
    class_weight: Mapping[int, float] | None = None,
    batch_size: int | None = None,
    steps: int | None = None,
    batches: int | None = None,
    seed: int = 0,
    training: bool = True,
    batch_mode: str = MEAN_GRADIENT,
    custom_objects: str | Path | None = None,
    unsafe: bool = False,
    thresholds: Thresholds = Thresholds(),
    progress: Progress | str | None = "auto",
    execution: str = "auto",
    loss_terms: LossTerms | None = None,
    compilation_cache: bool | None = None,
) -> Report:
    """Analyse how each loss's gradient flows through a Keras model: ``prepare(...).run(...)``.

    Args:
        model: a ``keras.Model`` or the path of a ``.keras`` / ``.h5`` file.
        losses: ``{output: loss}`` overriding or supplying the compiled losses;
            the key None applies a loss to every output.
        loss_weights: ``{name: weight}`` overriding the compiled weights; names are
            outputs, endpoint layers (their ``add_loss``), ``regularization``, or
            ``loss_terms``' names.
        data: an ``.npz`` file (keys ``x``/``y`` or ``x:<input>``/``y:<output>``) or a directory
            written by ``tf.data.Dataset.save``; with neither ``data`` nor ``x``, seeded synthetic data.
        x: inputs as ``Model.fit`` takes them: NumPy arrays (one, a list in input order or a dict
            by input name), a ``tf.data.Dataset`` or ``keras.utils.PyDataset`` yielding ``(x, y)``
            or ``(x, y, sample_weight)``, or a Python generator yielding those.
        y: targets, with array ``x``: one array, a list or a dict by output name.
        sample_weight: with array ``x``: one array (every loss), a list or a dict by output name.
        class_weight: ``{class id: weight}`` for a model with one output carrying a loss.
        batch_size: rows per batch, for arrays and files (default 32).
        steps: with ``x``, how many batches (default: all of ``x``; needed for a generator or a
            dataset of unknown length).
        batches: with a file or synthetic data, how many batches (default 1). Statistics
            describe the mean gradient over the batches.
        seed: seed of the synthetic data and of the random layers (Dropout, noise, augmentation,
            custom layers with a ``SeedGenerator``), whose state gradviz draws from it.
        training: call the model in training mode (dropout, batch statistics).
        batch_mode: ``mean-gradient`` (default) or ``per-batch``.
        custom_objects: a Python file defining custom layers and losses.
        unsafe: allow Lambda layers in model files (runs their code).
        thresholds: when figures become findings.
        progress: called with ``(batches done, batches)``; ``"auto"`` shows a bar for more than
            one batch (``tqdm.auto`` in notebooks, rich on a terminal's stderr); None: nothing.
        execution: ``auto`` (default), ``eager`` or ``compiled``: how the gradient pass runs
            (see :func:`prepare`).
        loss_terms: ``fn(model, x, y) -> {name: scalar}``, the losses a custom training step
            sums (see :func:`prepare`).
        compilation_cache: JAX backend: use JAX's persistent compilation cache (see :func:`prepare`).

    Returns:
        The :class:`~gradviz.core.report.Report` (``.graph``, ``.to_json()``).

    Raises:
        GradvizError: any problem with the model, the losses or the data.

    Example:
        >>> report = gradviz.analyze(model, x=features, y={"C": labels, "D": scores},  # doctest: +SKIP
        ...                          sample_weight={"C": weights}, batch_size=64)
    """
    session = prepare(
        model, losses=losses, loss_weights=loss_weights, training=training, batch_mode=batch_mode,
        custom_objects=custom_objects, unsafe=unsafe, thresholds=thresholds, execution=execution,
        loss_terms=loss_terms,
        compilation_cache=compilation_cache,
    )
    return session.run(data, x=x, y=y, sample_weight=sample_weight, class_weight=class_weight,
                       batch_size=batch_size, steps=steps, batches=batches, seed=seed, progress=progress)
