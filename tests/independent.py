"""Independent computations to check gradviz's figures against, for any input structure.

* :func:`keras_step`: one ``train_on_batch`` with SGD at learning rate 1; the weight
  change is minus the gradient Keras applied, whose norm must be each variable's
  ``combined_grad_norm``.
* :func:`tape_norms`: each loss's gradient from its own ``GradientTape`` and its own
  forward pass, as a user would write it: each variable's ``grad_norm[loss]``.
* :func:`check_report`: both, against a report, at a relative tolerance.

The model is called with ``x`` exactly as the user would pass it (a dict with the
model's keys, nested lists, a single array), never through gradviz's packing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import keras
import numpy as np
import tensorflow as tf


def flat_arrays(x: Any) -> list[np.ndarray]:
    """The arrays of a (nested) input structure in Keras's flat order (dict keys sorted)."""
    return [np.asarray(a) for a in keras.tree.flatten(x)]


def write_npz(path: Path, x: Mapping[str, np.ndarray], y: Mapping[str, np.ndarray]) -> Path:
    """``x:<input>`` and ``y:<output>`` arrays in one .npz file."""
    arrays = {f"x:{k}": v for k, v in x.items()} | {f"y:{k}": v for k, v in y.items()}
    np.savez(path, **arrays)
    return path


def keras_step(model: keras.Model, x: Any, y: Any) -> tuple[dict[str, np.ndarray], float]:
    """One Keras training step (the model must be compiled with SGD(1.0)); minus the weight change per
    variable path, and Keras's loss. Changes the model's weights: call it last."""
    before = {v.path: np.array(v.numpy(), dtype=np.float64) for v in model.trainable_variables}
    logs = model.train_on_batch(x, y, return_dict=True)
    applied = {v.path: before[v.path] - np.array(v.numpy(), dtype=np.float64) for v in model.trainable_variables}
    return applied, float(logs["loss"])


def named_outputs(model: keras.Model, y_pred: Any, names: list[str]) -> dict[str, Any]:
    if isinstance(y_pred, dict):
        return dict(y_pred)
    if isinstance(y_pred, (list, tuple)):
        return dict(zip(names, y_pred))
    return {names[0]: y_pred}


def tape_norms(model: keras.Model, x: Any, y: Mapping[str, np.ndarray], losses: Mapping[str, Any],
               output_names: list[str]) -> dict[str, dict[str, float | None]]:
    """``{loss: {variable path: gradient norm or None}}``, one tape and one forward pass per loss."""
    result: dict[str, dict[str, float | None]] = {}
    for name, identifier in losses.items():
        fn = keras.losses.get(identifier)
        with tf.GradientTape() as tape:
            outputs = named_outputs(model, model(x, training=True), output_names)
            value = fn(y[name], outputs[name])
            value = tf.reduce_mean(value)
        grads = tape.gradient(value, model.trainable_variables)
        result[name] = {
            v.path: None if g is None else float(np.linalg.norm(np.asarray(tf.convert_to_tensor(g), np.float64)))
            for v, g in zip(model.trainable_variables, grads)
        }
    return result


def check_report(report: Any, model: keras.Model, x: Any, y: Mapping[str, np.ndarray], losses: Mapping[str, Any],
                 rel: float = 1e-3) -> int:
    """Check every variable's per-loss norms against separate tapes, then its combined norm and the weighted loss
    against one Keras training step. Returns how many variables had a gradient. Runs the training step: the
    model's weights change."""
    output_names = [l.output for l in report.losses if l.output is not None]
    tapes = tape_norms(model, x, y, losses, output_names)
    weight_norms = {v.path: float(np.linalg.norm(v.numpy())) for v in model.trainable_variables}
    by_path = {v.path: v for v in report.variables}
    assert len(by_path) == len(model.trainable_variables)
    # Some gradients are exactly zero in exact arithmetic and float32 rounding noise in practice (an attention
    # key bias: softmax ignores a constant added to every score; a bias before BatchNorm): both sides are then
    # tiny, and compared to a floor a million times below the largest gradient of that loss.
    for loss, norms in tapes.items():
        floor = 1e-6 * max((n for n in norms.values() if n is not None), default=0.0)
        for path, expected in norms.items():
            got = by_path[path].grad_norm[loss]
            if expected is None or got is None:
                assert got is None and expected is None or (got or 0.0) == 0.0 == (expected or 0.0), (loss, path)
                continue
            assert abs(got - expected) <= rel * expected + floor, (loss, path, got, expected)
    if isinstance(model.output, dict):
        y_fit: Any = y
    else:
        y_fit = y[output_names[0]] if len(output_names) == 1 else [y[n] for n in output_names]
    applied, keras_loss = keras_step(model, x, y_fit)
    weighted = sum(l.weight * l.value for l in report.losses)
    assert abs(weighted - keras_loss) <= rel * abs(keras_loss), (weighted, keras_loss)
    checked = 0
    floor = 1e-6 * max(float(np.linalg.norm(d)) for d in applied.values())
    for path, delta in applied.items():
        var = by_path[path]
        norm = float(np.linalg.norm(delta))
        if var.combined_grad_norm is None:
            assert norm == 0.0, path
            continue
        rounding = 2e-7 * weight_norms[path]  # the float32 update w - g is rounded to w's precision
        assert abs(var.combined_grad_norm - norm) <= rel * norm + rounding + floor, (path, var.combined_grad_norm, norm)
        checked += 1
    return checked


def gradviz_synthetic(model: keras.Model, batch_size: int, seed: int = 0) -> tuple[dict[str, np.ndarray],
                                                                                  dict[str, np.ndarray]]:
    """The synthetic inputs (by input name) and targets (by output) gradviz makes up for ``model``, as
    ``gradviz.analyze(model, batch_size=..., seed=...)`` uses them."""
    import gradviz
    from gradviz.model import topology

    data = gradviz.prepare(model).data(batch_size=batch_size, batches=1, seed=seed)
    return dict(zip(topology.input_names(model), data.x)), dict(data.y)
