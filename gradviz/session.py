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
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from gradviz.core.analysis import analyze_stats
from gradviz.core.findings import Thresholds
from gradviz.core.report import Report
from gradviz.core.spec import LossSpec, LossTerm, build_spec, regularization_name
from gradviz.core.stats import MEAN_GRADIENT, Progress
from gradviz.errors import LossSpecError, ModelLoadError

if TYPE_CHECKING:
    import keras

    from gradviz.backends import GradientBackend
    from gradviz.backends.execution import Execution
    from gradviz.core.graph import Topology
    from gradviz.data import Data, TensorInfo
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
        spec: the loss spec: one term per loss, with its weight.
        losses: the output losses, resolved once (:class:`~gradviz.model.losses.ResolvedLoss`).
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
        regularization_weight: float | None,
        training: bool,
        batch_mode: str,
        thresholds: Thresholds,
        timer: Timer,
        execution: str = "auto",
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
        self._regularization_weight = regularization_weight
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
                execution=execution, compilation_cache=self._compilation_cache,
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
        return execution.choose(self.execution, batches=batches, losses=len(self.losses), params=params,
                                backend=self.backend_name)

    def tracing_count(self) -> int:
        """How many times the gradient pass has been compiled (traced) so far."""
        return sum(backend.tracing_count() for backend in self._backends.values())

    def input_infos(self) -> list[TensorInfo]:
        """The model's inputs as data must match them (name, shape, dtype, id range)."""
        from gradviz.core.graph import input_id_ranges, input_value_ranges
        from gradviz.data import TensorInfo
        from gradviz.model.keras_structure import flat_input_tensors
        from gradviz.model.topology import input_names

        # gradviz's flat order (Keras's: dict keys sorted); keras_structure.to_model_inputs packs them back
        ranges = input_id_ranges(self.topology)
        value_ranges = input_value_ranges(self.topology)
        return [
            TensorInfo(name, tuple(t.shape), str(getattr(t, "dtype", "float32")), ranges.get(name),
                       value_range=value_ranges.get(name))
            for name, t in zip(input_names(self.model), flat_input_tensors(self.model))
        ]

    def target_infos(self) -> list[TensorInfo]:
        """The targets each output with a loss needs (shape, dtype and the kind its loss takes)."""
        from gradviz.data import TensorInfo

        infos = []
        seen = set()
        for loss in self.losses:
            if loss.output in seen:
                continue
            seen.add(loss.output)
            infos.append(TensorInfo(loss.output, loss.output_shape, loss.output_dtype, None, loss.target_kind))
        return infos

    def data(
        self, data: str | Path | Data | None = None, *, batch_size: int = 32, batches: int = 1, seed: int = 0
    ) -> Data:
        """The batches a run computes on: ``data`` (an ``.npz`` file or ready batches) or seeded synthetic data.

        Raises:
            DataError: the file does not fit the model, or the counts are below 1.
        """
        from gradviz import data as data_mod

        if isinstance(data, data_mod.Data):  # ready batches (the training monitor's probe): as they are
            return data
        data_mod.check_counts(batch_size, batches)
        if data is not None:
            return data_mod.load_npz(data, self.input_infos(), self.target_infos(), batch_size=batch_size,
                                     batches=batches)
        from gradviz.core.graph import sequence_limit

        # unknown sequence lengths no longer than the model's position embeddings take
        unknown_dim = min(data_mod.UNKNOWN_DIM, sequence_limit(self.topology) or data_mod.UNKNOWN_DIM)
        return data_mod.synthetic(self.input_infos(), self.target_infos(), batch_size=batch_size, batches=batches,
                                  seed=seed, unknown_dim=unknown_dim)

    def run(
        self,
        data: str | Path | Data | None = None,
        *,
        batch_size: int = 32,
        batches: int = 1,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> Report:
        """Analyse how each loss's gradient flows through the model on ``data``.

        Args:
            data: an ``.npz`` file (keys ``x``/``y`` or ``x:<input>``/``y:<output>``),
                ready :class:`~gradviz.data.Data` batches (``batch_size`` and ``batches``
                are then its own), or None for seeded synthetic data.
            batch_size: rows per batch.
            batches: number of batches; statistics describe their mean gradient.
            seed: seed of the synthetic data and of the random layers (Dropout, noise, augmentation,
                custom layers with a ``SeedGenerator``), whose state gradviz draws from it.
            progress: called with ``(batches done, batches)``.

        Returns:
            The :class:`~gradviz.core.report.Report`.

        Raises:
            GradvizError: the data does not fit the model, or a loss fails on it.
        """
        timer = Timer()
        start = time.perf_counter()
        with timer.stage("data"):
            batches_data = self.data(data, batch_size=batch_size, batches=batches, seed=seed)
        chosen = self.choose_execution(batches_data.batches)
        self._last_execution = chosen.mode
        with timer.stage("gradients"):
            stats = self.backend_for(chosen.mode).run(batches_data, progress=progress, seed=seed)
        spec = self.spec
        reg_name = regularization_name(self.outputs)
        if stats.has_regularization:
            weight = 1.0 if self._regularization_weight is None else self._regularization_weight
            spec = replace(spec, terms=spec.terms + (LossTerm(reg_name, None, "model.losses", weight),))
        elif self._regularization_weight is not None:
            raise LossSpecError(
                f"loss weight for {reg_name!r}: the model has no regularization or add_loss terms; "
                f"valid names: {', '.join(spec.names)}"
            )
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
            "seed": seed if data is None or random_layers else None,
            "data": _data_label(data),
            "training": self.training,
            "random_layers": random_layers,
            "graph_complete": self.topology.complete,
            **self.backend_for(chosen.mode).meta,
            "execution": chosen.mode,
            "execution_reason": chosen.reason,
        }
        return report


def _data_label(data: str | Path | Data | None) -> str:
    """What the report's ``meta.data`` says of the data: the file, ``synthetic`` or ``in-memory``."""
    if data is None:
        return "synthetic"
    return str(data) if isinstance(data, (str, Path)) else "in-memory"


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
    compilation_cache: bool | None = None,
) -> Session:
    """Load or wrap a model, walk its graph and resolve each of its losses once.

    Args:
        model: a ``keras.Model`` or the path of a ``.keras`` / ``.h5`` file.
        losses: ``{output: loss}`` overriding or supplying the compiled losses;
            the key None applies a loss to every output.
        loss_weights: ``{output: weight}`` overriding the compiled weights
            (``regularization`` weights the ``model.losses`` term).
        training: call the model in training mode (dropout, batch statistics).
        batch_mode: ``mean-gradient`` (default) or ``per-batch``.
        custom_objects: a Python file defining custom layers and losses.
        unsafe: allow Lambda layers in model files (runs their code).
        thresholds: when figures become findings.
        execution: ``auto`` (default: eager for a few batches, compiled when tracing pays
            off), ``eager`` or ``compiled``; see :mod:`gradviz.backends.execution`.
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
    from gradviz.errors import DataError
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
                loaded = loading.LoadedModel(
                    loaded.model, loaded.loss, loaded.loss_weights, None,
                    loading.import_custom_objects(custom_objects),
                )
    keras_model = loaded.model
    with timer.stage("graph"):
        topo = topology.build_topology(keras_model)
    outputs = list(topo.outputs) or topology.output_names(keras_model)
    if not outputs:
        raise ModelLoadError(
            f"gradviz cannot name the outputs of {keras_model.name!r}, a subclassed model; wrap it in a functional "
            "model: x = keras.Input(shape); keras.Model(x, model(x)), then save or pass that"
        )
    weights = dict(loss_weights or {})
    reg_weight = weights.pop(regularization_name(outputs), None)  # "model.losses" if an output is so named
    with timer.stage("losses"):
        spec = build_spec(
            outputs,
            loaded.loss,
            loaded.loss_weights,
            loss_overrides=losses,
            weight_overrides=weights,
            layer_names=list(topo.graph.nodes),
            source=loaded.source or "the model",
        )
        tensors = dict(zip(outputs, topology.output_tensors(keras_model)))
        resolved = resolve_losses(spec.output_terms, tensors, loaded.custom_objects)
    return Session(
        loaded, topo, outputs, spec, resolved,
        regularization_weight=reg_weight, training=training, batch_mode=batch_mode, thresholds=thresholds,
        timer=timer, execution=execution, compilation_cache=compilation_cache,
    )


def analyze(
    model: Any,
    *,
    losses: Mapping[str | None, Any] | None = None,
    loss_weights: Mapping[str, float] | None = None,
    data: str | Path | None = None,
    batch_size: int = 32,
    batches: int = 1,
    seed: int = 0,
    training: bool = True,
    batch_mode: str = MEAN_GRADIENT,
    custom_objects: str | Path | None = None,
    unsafe: bool = False,
    thresholds: Thresholds = Thresholds(),
    progress: Progress | None = None,
    execution: str = "auto",
    compilation_cache: bool | None = None,
) -> Report:
    """Analyse how each loss's gradient flows through a Keras model: ``prepare(...).run(...)``.

    Args:
        model: a ``keras.Model`` or the path of a ``.keras`` / ``.h5`` file.
        losses: ``{output: loss}`` overriding or supplying the compiled losses;
            the key None applies a loss to every output.
        loss_weights: ``{output: weight}`` overriding the compiled weights
            (``regularization`` weights the ``model.losses`` term).
        data: an ``.npz`` file (keys ``x``/``y`` or ``x:<input>``/``y:<output>``);
            None makes seeded synthetic data.
        batch_size: rows per batch.
        batches: number of batches; statistics describe their mean gradient.
        seed: seed of the synthetic data and of the random layers (Dropout, noise, augmentation,
            custom layers with a ``SeedGenerator``), whose state gradviz draws from it.
        training: call the model in training mode (dropout, batch statistics).
        batch_mode: ``mean-gradient`` (default) or ``per-batch``.
        custom_objects: a Python file defining custom layers and losses.
        unsafe: allow Lambda layers in model files (runs their code).
        thresholds: when figures become findings.
        progress: called with ``(batches done, batches)``.
        execution: ``auto`` (default), ``eager`` or ``compiled``: how the gradient pass runs
            (see :func:`prepare`).
        compilation_cache: JAX backend: use JAX's persistent compilation cache (see :func:`prepare`).

    Returns:
        The :class:`~gradviz.core.report.Report` (``.graph``, ``.to_json()``).

    Raises:
        GradvizError: any problem with the model, the losses or the data.
    """
    session = prepare(
        model, losses=losses, loss_weights=loss_weights, training=training, batch_mode=batch_mode,
        custom_objects=custom_objects, unsafe=unsafe, thresholds=thresholds, execution=execution,
        compilation_cache=compilation_cache,
    )
    return session.run(data, batch_size=batch_size, batches=batches, seed=seed, progress=progress)
