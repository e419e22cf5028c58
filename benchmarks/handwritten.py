"""What a user writes by hand instead of ``gradviz inspect``: one whole process per answer.

Usage::

    python benchmarks/handwritten.py eager|function MODEL.keras BATCH_SIZE BATCHES

Imports TensorFlow, loads the ``.keras`` file as user code does (``keras.saving.load_model``,
its compiled losses), makes seeded synthetic data shaped like the model's inputs and
outputs, and per batch runs one forward pass under a persistent tape and one
``tape.gradient`` per loss, reducing each gradient to its squared norm (so no backward
pass can be pruned): ``eager`` op by op, ``function`` inside one ``tf.function`` (traced
on the first batch). Prints the per-loss sums as one JSON line. The benchmark times the
whole process, from start to exit, as a user waits for it.
"""

from __future__ import annotations

import json
import sys


def main(method: str, path: str, batch_size: int, batches: int) -> None:
    import numpy as np
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(path)
    names = list(model.output_names)
    losses = model.loss if isinstance(model.loss, (list, tuple)) else [model.loss] * len(names)
    loss_fns = [keras.losses.get(loss) for loss in losses]
    rng = np.random.default_rng(0)
    rows = batch_size * batches
    x = rng.standard_normal((rows, *model.inputs[0].shape[1:])).astype("float32")
    ys = []
    for loss, out in zip(losses, model.outputs):
        units = int(out.shape[-1])
        if "categorical" in str(loss):
            ys.append(np.eye(units, dtype="float32")[rng.integers(0, units, rows)])
        elif "binary" in str(loss):
            ys.append(rng.integers(0, 2, (rows, units)).astype("float32"))
        else:
            ys.append(rng.standard_normal((rows, units)).astype("float32"))
    variables = model.trainable_variables

    def step(xb: tf.Tensor, yb: list[tf.Tensor]) -> tf.Tensor:
        with tf.GradientTape(persistent=True) as tape:
            preds = model(xb, training=True)
            preds = preds if isinstance(preds, (list, tuple)) else [preds]
            values = [tf.reduce_mean(fn(y, p)) for fn, y, p in zip(loss_fns, yb, preds)]
        norms = [tf.add_n([tf.reduce_sum(tf.square(tf.convert_to_tensor(g)))
                           for g in tape.gradient(v, variables) if g is not None]) for v in values]
        del tape
        return tf.stack(norms)

    run = tf.function(step, reduce_retracing=True) if method == "function" else step
    total = np.zeros(len(loss_fns))
    for b in range(batches):
        lo, hi = b * batch_size, (b + 1) * batch_size
        total += run(tf.convert_to_tensor(x[lo:hi]), [tf.convert_to_tensor(y[lo:hi]) for y in ys]).numpy()
    print(json.dumps({"squared_norms": total.tolist()}))


if __name__ == "__main__":
    method, path, batch_size, batches = sys.argv[1:5]
    if method not in ("eager", "function"):
        sys.exit(f"unknown method {method!r}; valid: eager, function")
    main(method, path, int(batch_size), int(batches))
