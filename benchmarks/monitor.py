"""The training monitor's cost: ``python benchmarks/run.py --tables monitor``.

Each case runs in a fresh interpreter (``run.py --child-monitor CASE REPEATS EPOCHS``), so the
monitor's first call is a true first call (nothing traced before it):

1. ``fit`` with ``GradientFlowMonitor(probe)`` at its default settings (``every_n_epochs=1``,
   ``training=True``, the whole probe as one batch, no history file, no TensorBoard), between two
   timing callbacks: the first one marks each epoch's start and end before the monitor runs, the
   second one marks when the monitor is done. So the epoch's own time and the probe's time at its
   end are measured inside one ordinary training run, and the monitor's first call is its
   ``on_train_begin`` (prepare the session, trace the pass, the baseline probe).
2. Then, on the trained model and the same probe batch, interleaved and rotated: **monitor** (one
   probe as at an epoch end: ``on_epoch_end``, i.e. the gradient pass, the analysis, the history
   record), **pass** (the session's compiled gradient pass alone, ``backend.run``) and **floor**
   (``peers.build_peers``' floor: one ``tf.function`` with a persistent ``GradientTape``, one forward
   and one ``tape.gradient`` per loss, squared norms fetched to NumPy, written by hand).
"""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Any, Callable

#: the cases: model, probe rows, training rows, training batch size
CASES: dict[str, dict[str, Any]] = {
    # samples/train_with_monitor.py as it runs: its probe of 128 rows, 512 rows in batches of 32
    "sample": {"probe_rows": 128, "rows": 512, "batch_size": 32},
    # benchmarks/models.py's mlp_8 (4.1 M parameters, 8 heads): a probe of 256 rows, 16 steps of 256
    "mlp_8": {"probe_rows": 256, "rows": 4096, "batch_size": 256},
}
QUICK = ("sample",)
#: target of issue 14: the monitor's probe vs the hand-written floor, after the first call
TARGET_PROBE = 1.2


def _data(name: str) -> tuple[Any, Any, Any]:
    """The model (compiled, seeded) and its training data ``x``, ``y`` (``y`` by output name)."""
    import numpy as np

    if name == "sample":
        import importlib.util

        from models import ROOT

        spec = importlib.util.spec_from_file_location("train_with_monitor", ROOT / "samples" / "train_with_monitor.py")
        assert spec and spec.loader
        sample = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sample)
        model = sample.build()
        x, y = sample.data(CASES[name]["rows"])
        return model, x, y
    import models

    model = models.build(name)
    rows = CASES[name]["rows"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, *model.inputs[0].shape[1:])).astype("float32")
    y = {}
    for i, out in enumerate(model.outputs):
        loss, _, units = models.HEAD_KINDS[i % len(models.HEAD_KINDS)]
        if "categorical" in loss:
            y[f"head_{i}"] = np.eye(units, dtype="float32")[rng.integers(0, units, rows)]
        elif "binary" in loss:
            y[f"head_{i}"] = rng.integers(0, 2, (rows, units)).astype("float32")
        else:
            y[f"head_{i}"] = rng.standard_normal((rows, units)).astype("float32")
    return model, x, y


def child_monitor(name: str, repeats: int, epochs: int) -> dict[str, Any]:
    """In a fresh process: the monitor inside ``fit``, then the probe against the floor (see the module)."""
    import keras

    import peers
    from gradviz.callbacks import GradientFlowMonitor

    warnings.simplefilter("ignore")  # the monitor's events (a loss dominating) are not under test here
    case = CASES[name]
    model, x, y = _data(name)
    rows = case["probe_rows"]
    probe = (x[:rows], {k: v[:rows] for k, v in y.items()})
    monitor = GradientFlowMonitor(probe)
    marks: dict[str, list[float]] = {"epoch_begin": [], "epoch_end": [], "probed": []}
    begin: dict[str, float] = {}

    class Before(keras.callbacks.Callback):
        def on_train_begin(self, logs: Any = None) -> None:
            begin["start"] = time.perf_counter()

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            marks["epoch_begin"].append(time.perf_counter())

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            marks["epoch_end"].append(time.perf_counter())

    class After(keras.callbacks.Callback):
        def on_train_begin(self, logs: Any = None) -> None:
            begin["end"] = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            marks["probed"].append(time.perf_counter())

    model.fit(x, y, epochs=epochs, batch_size=case["batch_size"], verbose=0, shuffle=False,
              callbacks=[Before(), monitor, After()])
    if not monitor.enabled:
        raise RuntimeError(f"the monitor turned itself off: {monitor.error!r}")
    epoch_s = [e - b for b, e in zip(marks["epoch_begin"], marks["epoch_end"])]
    probe_s = [p - e for e, p in zip(marks["epoch_end"], marks["probed"])]

    session = monitor.session
    data = monitor._data  # the probe batches the monitor made (the same arrays for every method)
    ys = next(iter(data.iter_batches())).y
    floor = peers.build_peers(
        model, session.outputs, [loss.output for loss in session.losses],
        [loss.for_targets(tuple(ys[loss.output].shape)) for loss in session.losses], training=monitor.training,
    )["floor"]
    floor_first = _timed(lambda: peers.run_peer(floor, data))
    epoch = [epochs]

    def probe_once() -> None:  # as fit calls it at an epoch end (a new epoch: no cached record)
        epoch[0] += 1
        monitor.on_epoch_end(epoch[0] - 1, {})

    methods: dict[str, Callable[[], Any]] = {
        "monitor": probe_once,
        "pass": lambda: session.backend.run(data, seed=0),  # what session.run(data) runs for the gradients
        "floor": lambda: peers.run_peer(floor, data),
    }
    for fn in methods.values():
        fn()  # warm-up
    runs: dict[str, list[float]] = {k: [] for k in methods}
    for r in range(repeats):
        order = list(methods)
        for k in order[r % len(order):] + order[:r % len(order)]:
            runs[k].append(_timed(methods[k]))
    return {
        "model": name, "losses": len(session.losses),
        "params": int(sum(int(v.numpy().size) for v in model.trainable_variables)),
        "probe_rows": rows, "rows": case["rows"], "batch_size": case["batch_size"], "epochs": epochs,
        "repeats": repeats, "tracing_count": session.tracing_count(),
        "first_call": {"monitor": begin["end"] - begin["start"], "floor": floor_first},
        "median": {k: statistics.median(v) for k, v in runs.items()},
        "fastest": {k: min(v) for k, v in runs.items()},
        # the first epoch traces Keras's train step and the first probe nothing (traced at train begin)
        "epoch": statistics.median(epoch_s[1:]), "probe_in_fit": statistics.median(probe_s[1:]),
        "epoch_first": epoch_s[0], "probe_in_fit_first": probe_s[0],
    }


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    """The monitor section of RESULTS.md."""
    if not rows:
        return []
    lines = [
        "",
        "## Training monitor: the probe's cost",
        "",
        "`GradientFlowMonitor(probe)` at its default settings (every epoch, `training=True`, the whole probe as "
        "one batch, no history file or TensorBoard), each model in a fresh process. **monitor**: one probe as "
        "at an epoch end (`on_epoch_end`: the compiled gradient pass, the analysis, the history record); "
        "**pass**: the session's compiled gradient pass alone (`session.backend.run`); **floor**: the same "
        "work written by hand: one `tf.function` with a persistent `GradientTape`, one forward and one "
        "`tape.gradient` per loss on the probe, squared norms fetched to NumPy (`peers.py`). Milliseconds per "
        "call, median of the repeats after a warm-up, the three interleaved in rotating order, on the trained "
        "model. **first call**: the monitor's `on_train_begin` (prepare the session, trace the pass, the "
        "baseline probe) and the floor's first call (trace + one pass), seconds. **epoch** and **probe in fit**: "
        "medians over the epochs after the first of one `fit` with the monitor, each epoch's own time and the "
        "probe's at its end, measured by callbacks around the monitor; **probe / epoch** is what the monitor "
        "adds to an epoch. **fastest** is the ratio of the fastest repeats: on a shared machine the median "
        "carries the others' load (each call waits its turn for a core), the fastest call much less. `load`: "
        "1-minute load average before / after the case (2 cores: above 2 the machine was shared).",
        "",
        "| model | K | params | probe rows | epoch rows x batch | monitor ms | pass ms | floor ms | monitor / floor "
        "| pass / floor | fastest: monitor / floor, pass / floor | first call: monitor s / floor s | traces | epoch s | probe in fit s | probe / epoch | load |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | failed: `{row['error']}` ||||||||||||||||")
            continue
        med, first, fast = row["median"], row["first_call"], row["fastest"]
        lines.append(
            f"| {row['model']} | {row['losses']} | {row['params']:,} | {row['probe_rows']} "
            f"| {row['rows']} x {row['batch_size']} | {_f(med['monitor'] * 1e3, 2)} | {_f(med['pass'] * 1e3, 2)} "
            f"| {_f(med['floor'] * 1e3, 2)} | {_f(med['monitor'] / med['floor'], 2)} "
            f"| {_f(med['pass'] / med['floor'], 2)} "
            f"| {_f(fast['monitor'] / fast['floor'], 2)}, {_f(fast['pass'] / fast['floor'], 2)} | {_f(first['monitor'], 2)} / {_f(first['floor'], 2)} "
            f"| {row['tracing_count']} | {_f(row['epoch'], 3)} | {_f(row['probe_in_fit'], 4)} "
            f"| {_f(row['probe_in_fit'] / row['epoch'], 3)} | {row['load_before']:.1f} / {row['load_after']:.1f} |"
        )
    return lines


def targets(rows: list[dict[str, Any]]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) rows of the monitor table."""
    out: list[tuple[str, str, bool | None]] = []
    for row in rows:
        if "error" in row:
            continue
        med = row["median"]
        r = med["monitor"] / med["floor"]
        out.append((f"{row['model']}: monitor probe <= {TARGET_PROBE}x the hand-written floor (after the first call)",
                    f"{r:.2f}x", r <= TARGET_PROBE))
        fast = row["fastest"]["monitor"] / row["fastest"]["floor"]
        out.append((f"{row['model']}: monitor probe <= {TARGET_PROBE}x the floor, fastest repeats", f"{fast:.2f}x",
                    fast <= TARGET_PROBE))
        p = med["pass"] / med["floor"]
        out.append((f"{row['model']}: the probe's gradient pass alone <= {TARGET_PROBE}x the floor", f"{p:.2f}x",
                    p <= TARGET_PROBE))
    return out
