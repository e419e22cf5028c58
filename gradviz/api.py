"""The Python API: ``analyze(model_or_path, ...)`` runs load -> spec -> data -> gradients -> analysis.

The CLI is a thin layer over this function.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

from gradviz.analysis import Report, Thresholds, analyze_stats
from gradviz.errors import LossSpecError, ModelLoadError
from gradviz.gradients import MEAN_GRADIENT, Progress
from gradviz.spec import LossSpec, LossTerm, regularization_name


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
) -> Report:
    """Analyse how each loss's gradient flows through a Keras model.

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
        seed: seed of the synthetic data.
        training: call the model in training mode (dropout, batch statistics).
        batch_mode: ``mean-gradient`` (default) or ``per-batch``.
        custom_objects: a Python file defining custom layers and losses.
        unsafe: allow Lambda layers in model files (runs their code).
        thresholds: when figures become findings.
        progress: called with ``(batches done, batches)``.

    Returns:
        The :class:`~gradviz.analysis.Report` (``.graph``, ``.to_json()``).

    Raises:
        GradvizError: any problem with the model, the losses or the data.
    """
    _quiet_tensorflow()
    from gradviz import gradients, loading, topology

    timer = Timer()
    start = time.perf_counter()
    with timer.stage("load"):
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
    reg_name = regularization_name(outputs)  # "model.losses" if an output is called "regularization"
    reg_weight = weights.pop(reg_name, None)
    spec = _spec(loaded, outputs, losses, weights, topo)
    dataset = _dataset(loaded, topo, outputs, spec, batch_size=batch_size, batches=batches, seed=seed, data=data)
    with timer.stage("gradients"):
        stats = gradients.compute(
            keras_model, spec.output_terms, dataset, outputs, training=training, mode=batch_mode,
            custom_objects=loaded.custom_objects, progress=progress,
        )
    if stats.has_regularization:
        spec = replace(
            spec, terms=spec.terms + (LossTerm(reg_name, None, "model.losses", 1.0 if reg_weight is None else reg_weight),)
        )
    elif reg_weight is not None:
        raise LossSpecError(
            "--loss-weight regularization: the model has no regularization or add_loss terms; "
            f"valid names: {', '.join(spec.names)}"
        )
    with timer.stage("analysis"):
        report = analyze_stats(topo, stats, spec, model_name=keras_model.name, thresholds=thresholds)
    timer.seconds["total"] = time.perf_counter() - start
    import keras

    report.timings = dict(timer.seconds)
    report.meta = {
        "source": loaded.source,
        "keras_version": keras.__version__,
        "batch_size": batch_size,
        "batches": batches,
        "batch_mode": batch_mode,
        "seed": seed if data is None else None,
        "data": str(data) if data is not None else "synthetic",
        "training": training,
        "graph_complete": topo.complete,
    }
    return report


def _spec(loaded: Any, outputs: list[str], losses: Mapping[str | None, Any] | None,
          weights: dict[str, float], topo: Any) -> LossSpec:
    from gradviz.spec import build_spec

    return build_spec(
        outputs,
        loaded.loss,
        loaded.loss_weights,
        loss_overrides=losses,
        weight_overrides=weights,
        layer_names=list(topo.graph.nodes),
        source=loaded.source or "the model",
    )


def _dataset(loaded: Any, topo: Any, outputs: list[str], spec: LossSpec, *, batch_size: int, batches: int,
             seed: int = 0, data: str | Path | None = None) -> Any:
    """The batches the gradient pass runs on: ``data`` (an .npz file) or seeded synthetic data shaped from the
    model's inputs and the losses' targets. The benchmark and the tests build their data here too."""
    from gradviz import data as data_mod

    data_mod.check_counts(batch_size, batches)
    inputs = _input_infos(loaded.model, topo)
    targets = _target_infos(loaded.model, outputs, spec, loaded.custom_objects)
    if data is not None:
        return data_mod.load_npz(data, inputs, targets, batch_size=batch_size, batches=batches)
    from gradviz.topology import sequence_limit

    # unknown sequence lengths no longer than the model's position embeddings take
    unknown_dim = min(data_mod.UNKNOWN_DIM, sequence_limit(topo) or data_mod.UNKNOWN_DIM)
    return data_mod.synthetic(inputs, targets, batch_size=batch_size, batches=batches, seed=seed,
                              unknown_dim=unknown_dim)


def _input_infos(model: Any, topo: Any) -> list[Any]:
    """The model's inputs in gradviz's flat order (Keras's: dict keys sorted), named as
    ``topology.input_names`` names them; ``keras_structure.to_model_inputs`` packs them back."""
    from gradviz.data import TensorInfo
    from gradviz.keras_structure import flat_input_tensors
    from gradviz.topology import input_id_ranges, input_names, input_value_ranges

    ranges = input_id_ranges(topo)
    value_ranges = input_value_ranges(topo)
    tensors = flat_input_tensors(model)
    names = input_names(model)
    return [
        TensorInfo(name, tuple(t.shape), str(getattr(t, "dtype", "float32")), ranges.get(name),
                   value_range=value_ranges.get(name))
        for name, t in zip(names, tensors)
    ]


def _target_infos(model: Any, outputs: list[str], spec: LossSpec, custom_objects: Mapping[str, Any]) -> list[Any]:
    from gradviz.data import TensorInfo
    from gradviz.topology import output_tensors
    from gradviz.spec import resolve_loss, target_kind

    tensors = dict(zip(outputs, output_tensors(model)))
    infos = []
    seen = set()
    for term in spec.output_terms:
        if term.output in seen or term.output is None:
            continue
        seen.add(term.output)
        tensor = tensors[term.output]
        shape = tuple(tensor.shape)
        last = shape[-1] if shape else None
        loss = resolve_loss(term.identifier, last, None, custom_objects)
        infos.append(TensorInfo(term.output, shape, str(getattr(tensor, "dtype", "float32")), None, target_kind(loss)))
    return infos
