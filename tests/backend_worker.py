"""Run gradviz on one Keras backend in a process of its own and print what it computed, as JSON.

``KERAS_BACKEND`` is fixed per process, so tests that compare backends run
this script once per backend::

    KERAS_BACKEND=jax python tests/backend_worker.py jobs.json out.json

``jobs.json`` is a list of ``{"name", "path", "batch_size", "batches", "mode",
"training", "independent"}``; ``out.json`` gets, per job, the gradient
statistics (Gram matrices, which gradients exist, max-abs, finiteness, loss
values), what the report says of each layer, and its findings. With
``"independent": true`` the job also records per-loss Gram matrices computed
by the backend's plain autodiff on ``model.stateless_call`` (one
``jax.grad`` / ``tf.GradientTape`` per loss, float64 products in NumPy), with
no gradviz code in the way. ``out.json`` also says which backend ran and
whether TensorFlow was imported.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _independent(session: Any, data: Any, seed: int) -> list[Any]:
    """Per loss, the float64 Gram of its gradients on batch 0: plain autodiff, one loss at a time.

    The random layers' state is gradviz's seeded one (the masks gradviz draws with ``seed``), and
    the inputs go in the model's declared structure; nothing else of gradviz is used.
    """
    import keras

    from gradviz.model.keras_structure import to_model_inputs
    from gradviz.model.randomness import find_random_state, seeded_state

    model = session.model
    x, ys = data.batch(0)
    loss_fns = [loss.for_targets(tuple(ys[loss.output].shape)) for loss in session.losses]
    weights = [v.value for v in model.trainable_variables]
    state = seeded_state(model.non_trainable_variables, find_random_state(model), seed)
    inputs = to_model_inputs(model, list(x))
    backend = keras.backend.backend()
    grads = []
    for loss, fn in zip(session.losses, loss_fns):
        def value(w: list[Any], loss: Any = loss, fn: Any = fn) -> Any:
            out, _ = model.stateless_call(w, state, inputs, training=session.training)
            named = dict(out) if isinstance(out, dict) else dict(
                zip(session.outputs, out if isinstance(out, (list, tuple)) else [out]))
            return fn(ys[loss.output], named[loss.output])

        if backend == "jax":
            import jax

            per_var = jax.grad(value)(weights)
        else:
            import tensorflow as tf

            watched = [tf.convert_to_tensor(w) for w in weights]
            with tf.GradientTape() as tape:
                tape.watch(watched)
                result = value(watched)
            per_var = tape.gradient(result, watched, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        grads.append([np.asarray(g, np.float64).ravel() for g in per_var])
    return [[[float(grads[i][v] @ grads[j][v]) for j in range(len(grads))] for i in range(len(grads))]
            for v in range(len(weights))]


def _keras_test_objects() -> None:
    """Register the custom layer the endpoint job's model file names (both processes define it alike)."""
    import keras

    if "Endpoint" in globals():
        return

    @keras.saving.register_keras_serializable(package="gradviz_tests")
    class Endpoint(keras.layers.Layer):
        """An endpoint layer as the Keras examples write them: adds its own loss, passes its input on."""

        def call(self, inputs: Any) -> Any:
            features, target = inputs
            self.add_loss(0.5 * keras.ops.mean(keras.ops.square(features[:, :1] - target)))
            return features

    globals()["Endpoint"] = Endpoint


def two_terms(model: Any, x: Any, y: Any) -> dict[str, Any]:
    """A custom training step's two losses (``loss_terms``): a squared error on C and an L1 on D."""
    import keras

    c, d = model(x)
    return {"fit": keras.ops.mean(keras.ops.square(c - y["C"])), "sparse": 0.1 * keras.ops.mean(keras.ops.abs(d))}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    import gradviz

    _keras_test_objects()
    session = gradviz.prepare(job["path"], batch_mode=job.get("mode", "mean-gradient"),
                              training=job.get("training", True),
                              loss_terms=two_terms if job.get("loss_terms") else None)
    seed = job.get("seed", 0)
    data = session.data(batch_size=job.get("batch_size", 16), batches=job.get("batches", 1), seed=seed)
    if job.get("sample_weight"):
        # the synthetic batch again, fit-style, with per-output sample weights drawn from a fixed seed
        x, ys = data.batch(0)
        rng = np.random.default_rng(7)
        weights = {name: rng.uniform(0.0, 2.0, len(x[0])).astype("float32") for name in ys}
        fit = {"x": list(x), "y": dict(ys), "sample_weight": weights, "batch_size": len(x[0])}
        data = session.data(**fit)
        report = session.run(**fit, seed=seed)
    else:
        report = session.run(batch_size=job.get("batch_size", 16), batches=job.get("batches", 1), seed=seed)
    stats = session.backend_for("compiled").run(data, seed=seed)
    doc = json.loads(report.to_json())
    out = {
        "names": list(stats.loss_names),
        "gram": stats.gram.tolist(),
        "exists": stats.exists.tolist(),
        "max_abs": stats.max_abs.tolist(),
        "finite": stats.finite.tolist(),
        "loss_values": stats.loss_values.tolist(),
        "variables": [v.path for v in session.model.trainable_variables],
        "layers": {layer["name"]: {"status": layer["status"], "reached_by": layer["reached_by"]}
                   for layer in doc["layers"]},
        "findings": sorted((f["kind"], tuple(f["losses"]), tuple(f["layers"])) for f in doc["findings"]),
        "meta_backend": doc["meta"]["backend"],
        "random_layers": doc["meta"]["random_layers"],
    }
    if job.get("independent"):
        out["independent"] = _independent(session, data, seed)
    return out


def main(argv: list[str]) -> int:
    jobs = json.loads(Path(argv[0]).read_text())
    results = {job["name"]: run_job(job) for job in jobs}
    import keras

    summary = {
        "backend": keras.backend.backend(),
        "tensorflow_imported": any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules),
        "jobs": results,
    }
    Path(argv[1]).write_text(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
