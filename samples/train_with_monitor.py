"""Train a small two-head model whose ReLU regression head dies part-way, watched by GradientFlowMonitor.

Head D predicts a non-negative amount that is mostly zero through a ReLU; with
a learning rate too high for it, one step pushes its pre-activation below zero
for every row, after which its gradient is exactly zero: the loss no longer
reaches the trunk, and head C gets the trunk to itself. The monitor warns once
when that happens and writes the history the timeline draws::

    python samples/train_with_monitor.py            # writes demo/flow.jsonl
    gradviz timeline demo/flow.jsonl -o docs/timeline.png
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

from gradviz.callbacks import GradientFlowMonitor  # noqa: E402


def build(seed: int = 0) -> keras.Model:
    """features -> A -> B -> {C: sigmoid (bce, w=1), D: ReLU amount (mse, w=1)}, SGD at a rate too high for D."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((8,), name="features")
    a = layers.Dense(16, activation="relu", name="A")(x)
    b = layers.Dense(16, activation="relu", name="B")(a)
    c = layers.Dense(1, activation="sigmoid", name="C")(b)
    d = layers.Dense(1, activation="relu", bias_initializer=keras.initializers.Constant(1.0), name="D")(b)
    model = keras.Model(x, [c, d], name="dying_head")
    model.compile(optimizer=keras.optimizers.SGD(0.3), loss={"C": "binary_crossentropy", "D": "mse"})
    return model


def data(rows: int = 512, seed: int = 1) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Features, a label that depends on them, and an amount that is zero for 95% of the rows."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, 8)).astype("float32")
    label = (x[:, :2].sum(axis=1, keepdims=True) > 0).astype("float32")
    amount = np.where(rng.random((rows, 1)) < 0.95, 0.0, rng.exponential(0.3, (rows, 1))).astype("float32")
    return x, {"C": label, "D": amount}


def main(out: str = "demo/flow.jsonl", epochs: int = 12) -> None:
    model = build()
    x, y = data()
    probe = (x[:128], {k: v[:128] for k, v in y.items()})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    monitor = GradientFlowMonitor(probe, path=out, training=False)
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=[monitor])
    for rec in monitor.records:
        norms = {k: round(float(v), 4) for k, v in (rec["trunk"] or {}).get("grad_norm", {}).items()}
        print(f"epoch {rec['epoch']:2d}: trunk grad norm {norms}", file=sys.stderr)
    print(f"wrote {out}; draw it with: gradviz timeline {out} -o timeline.png", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:2])
