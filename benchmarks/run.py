"""Benchmark gradviz's gradient pass against hand-written GradientTape loops.

Usage::

    python benchmarks/run.py                 # every model; writes benchmarks/RESULTS.md (make bench)
    python benchmarks/run.py --quick         # tiny run (shared_trunk, few repeats)
    python benchmarks/run.py --models mlp_8,resnet50_3 --out /tmp/bench
    python benchmarks/run.py --backend jax   # the JAX rows (jax_bench.py); keeps the TensorFlow tables

For each model, in one process and after warm-up, it times gradviz's gradient
pass (``Session.backend.run``, what ``analyze`` runs after tracing) and the three peers of ``peers.py`` over the
same batches, interleaving repeats and reporting medians. Peak memory is
measured per method in a fresh subprocess; the stages of ``gradviz inspect``
in another fresh subprocess. Time to the answer is measured as users feel it:
whole processes of ``gradviz inspect`` against hand-written ones
(``handwritten.py``), each started fresh. The training monitor's probe is measured against the
hand-written floor for the same work, and against a training epoch (``monitor.py``, ``--tables monitor``).
The results are written as Markdown
(``RESULTS.md``) and JSON (``results.json``) into ``--out``; ``--tables`` measures
only some tables and keeps the others from the ``results.json`` already there. ``--backend jax``
measures the JAX backend instead (``jax_bench.py``) into ``results_jax.json``;
RESULTS.md is rewritten from both JSON files, whichever ran last.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]  # measure this checkout's gradviz
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import models  # noqa: E402
import monitor as monitor_table  # noqa: E402
import peers  # noqa: E402

METHODS = ("gradviz",) + peers.PEERS
#: gradviz with its backward passes left unordered (GradientPass(lockstep=False)), in the memory table
UNORDERED = "gradviz-unordered"
#: gradviz's eager pass (EagerPass: what `auto` runs for a few batches), in the memory table
EAGER = "gradviz-eager"
MEMORY_METHODS = ("gradviz", UNORDERED, EAGER) + peers.PEERS
#: the whole-process table: models, batch size, batch counts
PROCESS_CASES = (("resnet50_3", 16), ("mobilenetv2_12", 16))
PROCESS_BATCHES = (1, 8)
#: its competitors: handwritten.py's two methods
HANDWRITTEN = {"hand-eager": "eager", "hand-tf.function": "function"}
#: target of issue 12: gradviz inspect's whole process vs the faster hand-written one
TARGET_PROCESS = 1.2
TABLES = ("timing", "memory", "stages", "process", "graph", "monitor")
#: targets of issue 6 (ratios)
TARGET_VS_FLOOR = 1.15
TARGET_NAIVE_SPEEDUP = 1.3
TARGET_MEMORY = 1.2
TARGET_GRAPH_SECONDS = 1.0
#: peaks below this are fixed small buffers: their ratios are not judged
MEMORY_NOISE_MB = 4.0
#: a peer whose first call takes longer than this is timed once only
SLOW_FIRST_CALL = 120.0


# ---------------------------------------------------------------- preparation


class Prepared:
    """A model with everything gradviz and the peers need to run on it."""

    def __init__(self, name: str, batch_size: int, batches: int) -> None:
        import gradviz
        from gradviz.backends.tensorflow.eager_pass import EagerPass
        from gradviz.backends.tensorflow.gradient_pass import GradientPass

        self.name = name
        self.model = models.build(name)
        # The same steps as gradviz.analyze, through its public seam (so the data and losses are identical).
        self.session = gradviz.prepare(self.model)
        self.outputs = self.session.outputs
        self.terms = self.session.losses
        self.data = self.session.data(batch_size=batch_size, batches=batches, seed=0)
        self.gradient_pass = self.session.backend_for("compiled")
        self.unordered = GradientPass(self.model, self.terms, self.outputs, lockstep=False)
        self.eager = EagerPass(self.model, self.terms, self.outputs)
        xs, ys = self.data.batch(0)
        self.peers = peers.build_peers(
            self.model, self.outputs, [loss.output for loss in self.terms],
            [loss.for_targets(tuple(ys[loss.output].shape)) for loss in self.terms],
        )
        self.params = int(sum(int(v.numpy().size) for v in self.model.trainable_variables))

    def method(self, name: str) -> Callable[[], Any]:
        """A callable running one gradient pass of method ``name`` over all batches."""
        if name == "gradviz":
            return lambda: self.gradient_pass.run(self.data)
        if name == UNORDERED:
            return lambda: self.unordered.run(self.data)
        if name == EAGER:
            return lambda: self.eager.run(self.data)
        peer = self.peers[name]
        return lambda: peers.run_peer(peer, self.data)

    def trace(self, name: str) -> None:
        """Trace method ``name`` on the first batch without running it."""
        import tensorflow as tf

        xs, ys = self.data.batch(0)
        x = [tf.convert_to_tensor(a) for a in xs]
        y = {k: tf.convert_to_tensor(v) for k, v in ys.items()}
        if name == EAGER:
            return  # nothing to trace
        if name in ("gradviz", UNORDERED):
            gradient_pass = self.gradient_pass if name == "gradviz" else self.unordered
            gradient_pass.step_stats.get_concrete_function(*gradient_pass.step_inputs(next(self.data.iter_batches())))
        else:
            self.peers[name].get_concrete_function(x, y)

    def cold_gradviz(self) -> Any:
        """A new gradient pass from scratch (built, traced and run, as ``analyze`` does)."""
        from gradviz.backends.tensorflow.gradient_pass import GradientPass

        return GradientPass(self.model, self.terms, self.outputs).run(self.data)


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ---------------------------------------------------------------- timing (in process)


def time_methods(case: models.Case, repeats: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Median seconds per gradient pass of every method, after warm-up, repeats interleaved."""
    prepared = Prepared(case.name, case.batch_size, case.batches)
    result: dict[str, Any] = {
        "model": case.name, "losses": len(prepared.terms), "params": prepared.params,
        "batch_size": case.batch_size, "batches": case.batches, "repeats": repeats,
        "first_call": {}, "median": {}, "runs": {}, "errors": {},
    }
    result["first_call"]["gradviz"] = _timed(prepared.cold_gradviz)
    methods: dict[str, Callable[[], Any]] = {}
    for name in METHODS:
        fn = prepared.method(name)
        try:
            first = _timed(fn)  # the peers' trace; gradviz's pass traces here too (cold time above)
        except Exception as e:  # a peer that cannot run on this model (pfor limits) is reported, not fatal
            result["errors"][name] = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
            log(f"  {name}: failed: {result['errors'][name]}")
            continue
        if name != "gradviz":
            result["first_call"][name] = first
        _timed(fn)  # warm-up
        methods[name] = fn
        result["runs"][name] = []
        log(f"  {name}: first call {first:.2f}s")
    for r in range(repeats):
        order = list(methods)
        order = order[r % len(order):] + order[:r % len(order)]  # rotate so drift hits every method alike
        for name in order:
            if name in ("naive", "joint") and r > 0 and result["first_call"][name] > SLOW_FIRST_CALL:
                continue
            result["runs"][name].append(_timed(methods[name]))
    for name, runs in result["runs"].items():
        result["median"][name] = statistics.median(runs)
    log("  medians: " + ", ".join(f"{k} {v:.4f}s" for k, v in result["median"].items()))
    # One batch: statistics of that batch, which is the lockstep pass (several batches in
    # mean-gradient mode sum the gradients instead, and reduce them once at the end).
    one = dataclasses.replace(prepared.data, batches=1)
    single: dict[str, Callable[[], Any]] = {
        "gradviz": lambda: prepared.gradient_pass.run(one),
        UNORDERED: lambda: prepared.unordered.run(one),
        "floor": lambda: peers.run_peer(prepared.peers["floor"], one),
    }
    one_runs: dict[str, list[float]] = {name: [] for name in single}
    for fn in single.values():
        fn()  # trace
        fn()  # warm-up
    for r in range(repeats):
        order = list(single)
        for name in order[r % len(order):] + order[:r % len(order)]:
            one_runs[name].append(_timed(single[name]))
    result["one_batch"] = {name: statistics.median(runs) for name, runs in one_runs.items()}
    log("  one batch: " + ", ".join(f"{k} {v:.4f}s" for k, v in result["one_batch"].items()))
    return result


# ---------------------------------------------------------------- memory (fresh subprocesses)


def child_memory(model: str, method: str, batch_size: int) -> dict[str, Any]:
    """In a fresh process: the peak of live tensor memory during a pass of ``method`` over one batch.

    TensorFlow's allocator statistics (``tf.config.experimental.get_memory_info``, the BFC
    allocator on CPU: ``TF_CPU_ALLOCATOR_USE_BFC``): the peak of the bytes held by live
    tensors during the run, minus those held before it (weights, data). Traced first, so
    tracing is not counted; two runs, the first one reported (the warm one for reference).
    """
    import tensorflow as tf

    prepared = Prepared(model, batch_size, 1)
    fn = prepared.method(method)
    prepared.trace(method)
    gc.collect()
    runs = []
    for _ in range(2):
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        fn()
        runs.append((tf.config.experimental.get_memory_info("CPU:0")["peak"] - before) / 2**20)
    return {"peak_mb": runs[0], "warm_peak_mb": runs[1]}


def measure_memory(case: models.Case, method: str) -> dict[str, Any]:
    """Run :func:`child_memory` in a fresh interpreter."""
    env = dict(os.environ)
    # The BFC allocator keeps statistics of live tensor memory (the default CPU allocator does not).
    env.update(TF_CPU_ALLOCATOR_USE_BFC="true", TF_CPP_MIN_LOG_LEVEL="3")
    cmd = [sys.executable, str(Path(__file__)), "--child-memory", case.name, method, str(case.batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------- stages of gradviz inspect (fresh subprocess)


def dot_source(report: Any) -> tuple[str, str]:
    """DOT source of the analysed graph, and what made it.

    Uses ``gradviz.output.diagram`` when it exists (it is being written on another branch);
    otherwise builds the DOT text with the graphviz package from ``report.graph``
    (no ``dot`` program either way).
    """
    try:
        from gradviz import render  # type: ignore[attr-defined]
    except ImportError:
        render = None
    for name in ("to_dot", "dot_source", "build_dot", "make_dot"):
        fn = getattr(render, name, None)
        if callable(fn):
            try:
                made = fn(report)
            except TypeError:
                continue
            return str(getattr(made, "source", made)), f"gradviz.output.diagram.{name}"
    import graphviz

    dot = graphviz.Digraph(report.model_name)
    for node, attrs in report.graph.nodes(data=True):
        label = f"{node}\\n{attrs.get('status', attrs.get('kind', ''))}"
        dot.node(str(node), label)
    for source, target in report.graph.edges():
        dot.edge(str(source), str(target))
    return dot.source, "graphviz.Digraph from report.graph (no gradviz.output.diagram yet)"


def child_stages(model: str, path: str, batch_size: int, batches: int) -> dict[str, Any]:
    """In a fresh process: the stages of ``gradviz inspect`` on a saved model."""
    start = time.perf_counter()
    import tensorflow  # noqa: F401  (what the first TensorFlow-using stage pays once)
    import keras  # noqa: F401

    imports = time.perf_counter() - start
    from gradviz import analyze

    report = analyze(path, batch_size=batch_size, batches=batches)
    dot_seconds = _timed(lambda: dot_source(report))
    text, made_by = dot_source(report)
    return {"import_tf": imports, **report.timings, "dot": dot_seconds, "dot_by": made_by,
            "nodes": report.graph.number_of_nodes(), "dot_chars": len(text),
            "execution": report.meta.get("execution")}


def measure_stages(case: models.Case, workdir: Path) -> dict[str, Any]:
    """Save the model (as a user's file) and time ``analyze`` on it in a fresh interpreter."""
    if case.name == "shared_trunk":
        path = ROOT / "samples" / "shared_trunk.keras"
    else:
        path = workdir / f"{case.name}.keras"
        if not path.exists():
            models.build(case.name).save(path)
    cmd = [sys.executable, str(Path(__file__)), "--child-stages", case.name, str(path),
           str(case.batch_size), str(case.batches)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------- time to the answer (whole processes)


def saved_model(name: str, workdir: Path) -> Path:
    """The model as a user's ``.keras`` file (the bundled sample for shared_trunk)."""
    if name == "shared_trunk":
        return ROOT / "samples" / "shared_trunk.keras"
    path = workdir / f"{name}.keras"
    if not path.exists():
        models.build(name).save(path)
    return path


def process_command(method: str, path: Path, batch_size: int, batches: int) -> list[str]:
    """The command line of one whole process: ``gradviz inspect`` or a hand-written one."""
    if method == "gradviz":
        return [sys.executable, "-m", "gradviz.cli", "inspect", str(path), "--batch-size", str(batch_size),
                "--batches", str(batches), "--json"]
    return [sys.executable, str(HERE / "handwritten.py"), HANDWRITTEN[method], str(path), str(batch_size),
            str(batches)]


def measure_processes(name: str, batch_size: int, batch_counts: tuple[int, ...], workdir: Path,
                      log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Wall time of whole fresh processes, start to exit: gradviz inspect and the two hand-written ones.

    Each process runs once per row (they are long); the order of the three rotates from row to row.
    """
    path = saved_model(name, workdir)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")]).rstrip(os.pathsep)}
    methods = ["gradviz", *HANDWRITTEN]
    rows = []
    for i, batches in enumerate(batch_counts):
        row: dict[str, Any] = {"model": name, "batch_size": batch_size, "batches": batches, "seconds": {},
                               "errors": {}, "execution": None, "load_before": os.getloadavg()[0]}
        for method in methods[i % 3:] + methods[:i % 3]:
            start = time.perf_counter()
            proc = subprocess.run(process_command(method, path, batch_size, batches), capture_output=True, text=True,
                                  timeout=3600, env=env)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                row["errors"][method] = (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]
                log(f"  {name} x {batches}: {method} failed: {row['errors'][method]}")
                continue
            row["seconds"][method] = seconds
            if method == "gradviz":
                row["execution"] = json.loads(proc.stdout)["meta"].get("execution")
            log(f"  {name} x {batches}: {method} {seconds:.1f}s")
        row["load_after"] = os.getloadavg()[0]
        rows.append(row)
    return rows


# ---------------------------------------------------------------- the training monitor (fresh subprocess)


def measure_monitor(name: str, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Run :func:`monitor.child_monitor` for case ``name`` in a fresh interpreter, with the load around it."""
    repeats = args.repeats or (5 if args.quick else (40 if name == "sample" else 20))
    epochs = 3 if args.quick else (8 if name == "sample" else 5)
    log(f"{name}: training monitor (fresh process, {repeats} repeats, {epochs} epochs)")
    load_before = os.getloadavg()[0]
    cmd = [sys.executable, str(Path(__file__)), "--child-monitor", name, str(repeats), str(epochs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    load = {"load_before": load_before, "load_after": os.getloadavg()[0]}
    if proc.returncode != 0:
        error = (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]
        log(f"  {name}: failed: {error}")
        return {"model": name, "error": error, **load}
    row = {**json.loads(proc.stdout.strip().splitlines()[-1]), **load}
    med = row["median"]
    log(f"  {name}: monitor {med['monitor'] * 1e3:.2f} ms, pass {med['pass'] * 1e3:.2f} ms, floor "
        f"{med['floor'] * 1e3:.2f} ms; epoch {row['epoch']:.3f} s, probe in fit {row['probe_in_fit']:.4f} s")
    return row


# ---------------------------------------------------------------- graph size and --help


def graph_check(repeats: int = 5) -> dict[str, Any]:
    """Topology + analysis + DOT for a model of about 800 graph nodes (synthetic gradient statistics)."""
    import numpy as np

    import gradviz
    from gradviz.core.analysis import analyze_stats
    from gradviz.core.stats import GradientStats
    from gradviz.model import topology

    model = models.build("graph_800")
    spec = gradviz.prepare(model).spec
    rng = np.random.default_rng(0)
    k, v = len(spec.terms), len(model.trainable_variables)
    factors = rng.standard_normal((v, k, 4))
    stats = GradientStats(spec.names, factors @ factors.transpose(0, 2, 1), np.ones((v, k), bool),
                          np.ones((v, k)), np.ones((v, k), bool), np.ones(k), 1, "mean-gradient")
    runs: dict[str, list[float]] = {"topology": [], "analysis": [], "dot": []}
    report: Any = None
    for _ in range(repeats):
        start = time.perf_counter()
        topo = topology.build_topology(model)
        runs["topology"].append(time.perf_counter() - start)
        start = time.perf_counter()
        report = analyze_stats(topo, stats, spec, model_name=model.name)
        runs["analysis"].append(time.perf_counter() - start)
        runs["dot"].append(_timed(lambda: dot_source(report)))
    med = {name: statistics.median(r) for name, r in runs.items()}
    return {"nodes": topo.graph.number_of_nodes(), **med, "total": sum(med.values()),
            "dot_by": dot_source(report)[1]}


def help_imports_tensorflow() -> bool:
    """Whether ``gradviz --help`` imports TensorFlow (checked in a fresh interpreter)."""
    code = ("import sys\nfrom gradviz.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TF' if any(m == 'tensorflow' or m.startswith('tensorflow.') for m in sys.modules) else 'NO-TF')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc.stdout.strip().splitlines()[-1] != "NO-TF"


# ---------------------------------------------------------------- report


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    import keras
    import tensorflow as tf

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        ram = f"{pages / 2**30:.0f} GiB"
    except (ValueError, OSError):
        ram = "unknown"
    gpus = tf.config.list_physical_devices("GPU")
    return {
        "cpu": cpu, "cores": str(os.cpu_count()), "ram": ram, "gpu": ", ".join(g.name for g in gpus) or "none",
        "python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def markdown(results: dict[str, Any]) -> str:
    """RESULTS.md from the measurements."""
    m = results["machine"]
    lines = [
        "# gradviz benchmark results",
        "",
        f"Generated by `{results['command']}` (do not edit by hand; `make bench` rewrites it).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram']} RAM, GPU: {m['gpu']}; "
        f"Python {m['python']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}; {m['date']}.",
        *kept_note(results),
        "",
        "## Gradient pass: gradviz vs hand-written tapes",
        "",
        "Seconds per gradient pass over all batches (median of the repeats, after warm-up, methods interleaved), "
        "one process. **gradviz**: `GradientPass.run` - what `analyze` runs after "
        "tracing: one compiled forward + K backward passes with the per-variable Gram matrices reduced in the graph "
        "(float64, or float32 chunks summed in float64 for large variables), mean-gradient mode (K float32 accumulators for more than one batch), results fetched to NumPy; after its first call it calls the traced concrete functions directly "
        "(skipping `tf.function`'s argument matching, ~0.2 ms a call), while the peers call their `tf.function`s as "
        "written. "
        "**floor**: one compiled forward under a persistent tape + one `tape.gradient` per loss, returning each "
        "loss's squared gradient norm. **naive**: a forward + backward pass per loss, each loss its own compiled step "
        "called in turn (one tf.function holding all K forward passes would let Grappler share them). **joint**: compiled "
        "`tape.jacobian` of the stacked losses (pfor). Peers call `model(x, training=True)`; gradviz calls "
        "`model.stateless_call(..., training=True)`. Synthetic data (seed 0) as NumPy arrays, sliced and converted per "
        "batch by every method; `tf.function` without XLA.",
        "",
        "| model | K | params | batch x batches | repeats | gradviz s | floor s | naive s | joint s "
        "| gradviz / floor | naive / gradviz | joint / floor |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in results["timing"]:
        med = t["median"]
        lines.append(
            f"| {t['model']} | {t['losses']} | {t['params']:,} | {t['batch_size']} x {t['batches']} | {t['repeats']} "
            f"| {_f(med.get('gradviz'), 4)} | {_f(med.get('floor'), 4)} | {_f(med.get('naive'), 4)} "
            f"| {_f(med.get('joint'), 4)} | {_f(_ratio(med.get('gradviz'), med.get('floor')), 2)} "
            f"| {_f(_ratio(med.get('naive'), med.get('gradviz')), 2)} "
            f"| {_f(_ratio(med.get('joint'), med.get('floor')), 2)} |"
        )
    errors = [(t["model"], k, e) for t in results["timing"] for k, e in t["errors"].items()]
    if errors:
        lines += ["", "Failed: " + "; ".join(f"{mod} {k}: `{e}`" for mod, k, e in errors)]
    lines += [
        "",
        "First call (trace + compile + one pass), seconds: "
        + "; ".join(
            f"{t['model']}: " + ", ".join(f"{k} {_f(v, 1)}" for k, v in t["first_call"].items())
            for t in results["timing"]
        )
        + ".",
        "",
        "### One batch",
        "",
        "The same, on the first batch only: gradviz then reduces that batch's gradients (the lockstep pass that "
        "the memory table measures) instead of summing them for a final reduction. **unordered**: the same pass "
        "without the lockstep ordering.",
        "",
        "| model | gradviz s | gradviz unordered s | floor s | gradviz / floor | gradviz / unordered |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for t in results["timing"]:
        one = t.get("one_batch", {})
        lines.append(
            f"| {t['model']} | {_f(one.get('gradviz'), 4)} | {_f(one.get(UNORDERED), 4)} | {_f(one.get('floor'), 4)} "
            f"| {_f(_ratio(one.get('gradviz'), one.get('floor')), 2)} "
            f"| {_f(_ratio(one.get('gradviz'), one.get(UNORDERED)), 2)} |"
        )
    lines += [
        "",
        "## Peak memory (one batch)",
        "",
        "Each method in a fresh interpreter: build the model and data, trace the compiled function, then run it on "
        "one batch. Reported: the peak of live tensor memory during that first run, from TensorFlow's own "
        "allocator statistics (`tf.config.experimental.get_memory_info('CPU:0')`, BFC allocator on CPU via "
        "`TF_CPU_ALLOCATOR_USE_BFC=true`), minus what was live before it (weights, data): what the pass itself "
        "needs. Process RSS is not used: TensorFlow's CPU allocators keep freed memory pooled, so RSS shows pool "
        "growth and one-time costs, not what is live. **gradviz unordered** is gradviz's pass without its lockstep "
        "ordering (`GradientPass(lockstep=False)`): TensorFlow then runs one loss's backward pass ahead of the "
        "others, and each gradient waits for the other losses' gradients of the same variable (the Gram matrix "
        "needs all K). **gradviz eager** is the eager pass (`EagerPass`, what `--execution auto` runs for a few "
        "batches): one forward under a persistent tape, then K `tape.gradient` calls, so the K gradient lists (K "
        "float32 copies of the weights) are alive together before the reduction. Peaks below "
        f"{MEMORY_NOISE_MB:.0f} MB are small fixed buffers and not judged.",
        "",
        "| model | batch | gradviz MB | gradviz unordered MB | gradviz eager MB | floor MB | naive MB | joint MB "
        "| gradviz / floor | unordered / floor | eager / floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mem in results["memory"]:
        peak = {k: v.get("peak_mb") for k, v in mem["methods"].items()}
        lines.append(
            f"| {mem['model']} | {mem['batch_size']} | {_f(peak.get('gradviz'), 1)} | {_f(peak.get(UNORDERED), 1)} "
            f"| {_f(peak.get(EAGER), 1)} | {_f(peak.get('floor'), 1)} | {_f(peak.get('naive'), 1)} "
            f"| {_f(peak.get('joint'), 1)} | {_f(_ratio(peak.get('gradviz'), peak.get('floor')), 2)} "
            f"| {_f(_ratio(peak.get(UNORDERED), peak.get('floor')), 2)} "
            f"| {_f(_ratio(peak.get(EAGER), peak.get('floor')), 2)} |"
        )
    failed = [(mem["model"], k, v["error"]) for mem in results["memory"] for k, v in mem["methods"].items()
              if "error" in v]
    if failed:
        lines += ["", "Failed: " + "; ".join(f"{mod} {k}: `{e}`" for mod, k, e in failed)]
    lines += [
        "",
        "## Stages of `gradviz inspect`",
        "",
        "`gradviz.analyze(saved model file)` in a fresh interpreter (what `gradviz inspect FILE` runs), seconds. "
        "`import` is importing TensorFlow and Keras; `load` rebuilds the model from the file; `gradients` is the whole "
        "gradient pass including the first-call trace when compiled (also in the JSON report's `timings`); "
        "`execution` is what `--execution auto` chose for the model's batches; `warm pass` is the compiled median "
        "above, so for a compiled run `gradients - warm pass` is roughly the trace; `dot` builds the DOT text "
        "(`render`, running the `dot` program, is not timed).",
        "",
        "| model | nodes | import | load | graph | execution | gradients | warm pass | trace (approx.) | analysis "
        "| dot | total |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    warm = {t["model"]: t["median"].get("gradviz") for t in results["timing"]}
    for st in results["stages"]:
        s = st["stages"]
        if "error" in s:
            lines.append(f"| {st['model']} | failed: `{s['error']}` ||||||||||")
            continue
        w = warm.get(st["model"])
        execution = s.get("execution") or "compiled"
        trace = None if w is None or execution != "compiled" else s["gradients"] - w
        lines.append(
            f"| {st['model']} | {s['nodes']} | {_f(s['import_tf'], 2)} | {_f(s['load'], 2)} | {_f(s['graph'], 3)} "
            f"| {execution} | {_f(s['gradients'], 2)} | {_f(w, 2)} | {_f(trace, 2)} "
            f"| {_f(s['analysis'], 3)} | {_f(s['dot'], 3)} | {_f(s['total'], 2)} |"
        )
    by = {st["stages"].get("dot_by") for st in results["stages"]} - {None}
    if by:
        lines += ["", "DOT made by: " + ", ".join(sorted(by)) + "."]
    g = results.get("graph")
    if g:
        lines += [
            "",
            f"Graph size check: a residual MLP with {g['nodes']} graph nodes, synthetic statistics: topology "
            f"{_f(g['topology'])} s + analysis {_f(g['analysis'])} s + DOT {_f(g['dot'])} s = **{_f(g['total'])} s** "
            f"(DOT by {g['dot_by']}).",
        ]
    lines += process_markdown(results)
    lines += monitor_table.markdown(results.get("monitor", []))
    lines += ["", "## Targets", "", "| target | measured | |", "|---|---|---|"]
    for target, measured, ok in targets(results):
        lines.append(f"| {target} | {measured} | {_mark(ok)} |")
    lines += ["", "Machines are noisy: ratios within a few percent of a target can land on either side between runs.", ""]
    return "\n".join(lines)


def _faster_handwritten(row: dict[str, Any]) -> float | None:
    times = [row["seconds"][m] for m in HANDWRITTEN if m in row["seconds"]]
    return min(times) if times else None


def process_markdown(results: dict[str, Any]) -> list[str]:
    """The whole-process table (time to the answer)."""
    rows = results.get("process", [])
    if not rows:
        return []
    lines = [
        "",
        "## Time to the answer: whole processes",
        "",
        "Wall time of one fresh process each, from start to exit, as a user waits for it: **gradviz** is "
        "`gradviz inspect MODEL.keras --batch-size B --batches N --json` (everything: imports, loading, graph, "
        "gradients with `--execution auto`, analysis, the JSON report); **hand eager** and **hand tf.function** are "
        "`benchmarks/handwritten.py`: import TensorFlow, `keras.saving.load_model` the same file, seeded synthetic "
        "data, and per batch one forward under a persistent tape + one `tape.gradient` per loss reduced to squared "
        "norms, op by op or inside one `tf.function`. Each process ran once (they are long), the three in rotating "
        "order; `load` is the 1-minute load average before and after the row (2 cores: above 2 the machine was "
        "shared, and every time is inflated).",
        "",
        "| model | batch x batches | gradviz s (execution) | hand eager s | hand tf.function s | gradviz / faster "
        "| load |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        sec = row["seconds"]
        lines.append(
            f"| {row['model']} | {row['batch_size']} x {row['batches']} | {_f(sec.get('gradviz'), 1)} "
            f"({row.get('execution') or '-'}) | {_f(sec.get('hand-eager'), 1)} | {_f(sec.get('hand-tf.function'), 1)} "
            f"| {_f(_ratio(sec.get('gradviz'), _faster_handwritten(row)), 2)} "
            f"| {row.get('load_before', 0):.1f} / {row.get('load_after', 0):.1f} |"
        )
    failed = [(r["model"], r["batches"], k, e) for r in rows for k, e in r.get("errors", {}).items()]
    if failed:
        lines += ["", "Failed: " + "; ".join(f"{m} x {b} {k}: `{e}`" for m, b, k, e in failed)]
    return lines


def kept_note(results: dict[str, Any]) -> list[str]:
    """A line naming the tables this run did not measure (kept from an earlier run, with its date)."""
    kept = results.get("kept", {})
    if not kept:
        return []
    return ["", "Not re-measured in this run, kept from earlier runs: "
            + "; ".join(f"{table} ({date})" for table, date in sorted(kept.items())) + "."]


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each of the issue's targets."""
    out: list[tuple[str, str, bool | None]] = []
    for t in results["timing"]:
        med = t["median"]
        r = _ratio(med.get("gradviz"), med.get("floor"))
        out.append((f"{t['model']}: gradient pass <= {TARGET_VS_FLOOR}x floor", f"{_f(r, 2)}x",
                    None if r is None else r <= TARGET_VS_FLOOR))
        one = t.get("one_batch", {})
        r1 = _ratio(one.get("gradviz"), one.get("floor"))
        out.append((f"{t['model']}: one batch, gradient pass <= {TARGET_VS_FLOOR}x floor", f"{_f(r1, 2)}x",
                    None if r1 is None else r1 <= TARGET_VS_FLOOR))
        if t["losses"] >= 3:
            s = _ratio(med.get("naive"), med.get("gradviz"))
            out.append((f"{t['model']}: >= {TARGET_NAIVE_SPEEDUP}x faster than naive (K={t['losses']})",
                        f"{_f(s, 2)}x", None if s is None else s >= TARGET_NAIVE_SPEEDUP))
    for mem in results["memory"]:
        g = mem["methods"].get("gradviz", {}).get("peak_mb")
        f = mem["methods"].get("floor", {}).get("peak_mb")
        r = _ratio(g, f)
        judged = g is not None and f is not None and max(g, f) >= MEMORY_NOISE_MB
        out.append((f"{mem['model']}: peak memory <= {TARGET_MEMORY}x floor (one batch)",
                    f"{_f(g, 1)} / {_f(f, 1)} MB = {_f(r, 2)}x" + ("" if judged else " (noise level)"),
                    (r is not None and r <= TARGET_MEMORY) if judged else None))
    for row in results.get("process", []):
        faster = _faster_handwritten(row)
        r = _ratio(row["seconds"].get("gradviz"), faster)
        out.append((f"{row['model']} x {row['batches']} batch(es): `gradviz inspect` <= {TARGET_PROCESS}x the faster "
                    "hand-written process", f"{_f(r, 2)}x", None if r is None else r <= TARGET_PROCESS))
    out += monitor_table.targets(results.get("monitor", []))
    g = results.get("graph")
    if g:
        out.append((f"topology + analysis + DOT for ~800 nodes < {TARGET_GRAPH_SECONDS:.0f} s",
                    f"{_f(g['total'], 3)} s ({g['nodes']} nodes)", g["total"] < TARGET_GRAPH_SECONDS))
    tf_in_help = results.get("help_imports_tensorflow")
    if tf_in_help is not None:
        out.append(("`gradviz --help` imports no TensorFlow", "imports TensorFlow" if tf_in_help else "no TensorFlow",
                    not tf_in_help))
    return out


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="benchmarks/run.py")
    parser.add_argument("--quick", action="store_true", help="tiny run: shared_trunk, 3 repeats, no graph check")
    parser.add_argument("--models", default=None, help=f"comma-separated, of: {', '.join(models.CASES)}")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per method (default per model)")
    parser.add_argument("--out", default=str(HERE), help="directory for RESULTS.md and results.json")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--tables", default=",".join(TABLES),
                        help=f"comma-separated tables to measure, of: {', '.join(TABLES)} (default: all); the others "
                             "are kept from the results.json already in --out, and RESULTS.md says so")
    parser.add_argument("--memory-methods", default=",".join(MEMORY_METHODS),
                        help=f"comma-separated methods of the memory table, of: {', '.join(MEMORY_METHODS)}; the "
                             "others are kept from the results.json already in --out")
    parser.add_argument("--backend", choices=("tensorflow", "jax"), default="tensorflow",
                        help="which gradviz backend to measure (jax: against the hand-written JAX floor)")
    parser.add_argument("--child-memory", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--child-stages", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--child-monitor", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child_memory:
        model, method, batch = args.child_memory
        print(json.dumps(child_memory(model, method, int(batch))))
        return 0
    if args.child_stages:
        model, path, batch, batches = args.child_stages
        print(json.dumps(child_stages(model, path, int(batch), int(batches))))
        return 0
    if args.child_monitor:
        name, repeats, epochs = args.child_monitor
        print(json.dumps(monitor_table.child_monitor(name, int(repeats), int(epochs))))
        return 0

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    names = args.models.split(",") if args.models else [c.name for c in models.CASES.values() if c.quick or not args.quick]
    unknown = sorted(set(names) - set(models.CASES))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(models.CASES)}")
    tables = [t for t in args.tables.split(",") if t]
    if set(tables) - set(TABLES):
        parser.error(f"unknown table(s) {', '.join(sorted(set(tables) - set(TABLES)))}; valid: {', '.join(TABLES)}")
    if args.no_memory and "memory" in tables:
        tables.remove("memory")
    memory_methods = [m for m in args.memory_methods.split(",") if m]
    if set(memory_methods) - set(MEMORY_METHODS):
        parser.error(f"unknown memory method(s) {', '.join(sorted(set(memory_methods) - set(MEMORY_METHODS)))}; "
                     f"valid: {', '.join(MEMORY_METHODS)}")
    cases = [models.CASES[n] for n in names]
    command = "python benchmarks/run.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    if args.backend == "jax":
        return _main_jax(cases, args, command.strip(), log, argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {"command": command.strip(), "machine": machine(), "timing": [], "memory": [],
                               "stages": [], "process": [], "monitor": [], "kept": {}}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gradviz-bench-") as tmp:
        for case in cases:
            if "timing" in tables:
                repeats = args.repeats or (3 if args.quick else case.repeats)
                log(f"{case.name}: timing ({repeats} repeats, batch {case.batch_size} x {case.batches})")
                results["timing"].append(time_methods(case, repeats, log))
                gc.collect()
            if "memory" in tables:
                log(f"{case.name}: memory (fresh process per method)")
                methods = {m: measure_memory(case, m) for m in memory_methods}
                results["memory"].append({"model": case.name, "batch_size": case.batch_size, "methods": methods})
            if "stages" in tables:
                log(f"{case.name}: stages of gradviz inspect (fresh process)")
                results["stages"].append({"model": case.name, "stages": measure_stages(case, Path(tmp))})
        if "process" in tables:
            process_cases = (("shared_trunk", 32),) if args.quick else PROCESS_CASES
            for name, batch_size in process_cases:
                counts = (1,) if args.quick else PROCESS_BATCHES
                log(f"{name}: whole processes (batch {batch_size} x {', '.join(map(str, counts))})")
                results["process"] += measure_processes(name, batch_size, counts, Path(tmp), log)
        if "monitor" in tables:
            for name in monitor_table.QUICK if args.quick else monitor_table.CASES:
                results["monitor"].append(measure_monitor(name, args, log))
    if "graph" in tables and not args.quick:
        log("graph of ~800 nodes")
        results["graph"] = graph_check()
    results["help_imports_tensorflow"] = help_imports_tensorflow()
    results["seconds"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keep_earlier(results, [t for t in TABLES if t not in tables], out / "results.json",
                 [m for m in MEMORY_METHODS if m not in memory_methods])
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    _write_results_md(out)
    log(f"wrote {out / 'RESULTS.md'} ({results['seconds']:.0f} s)")
    return 0


def _measured_on(results: dict[str, Any]) -> str:
    m = results["machine"]
    return f"{m['date']} on {m['cpu']}, {m['cores']} cores"


def keep_earlier(results: dict[str, Any], tables: list[str], previous_file: Path,
                 memory_methods: list[str] | None = None) -> None:
    """Fill the tables (and memory methods) this run did not measure from an earlier ``results.json``, dated."""
    if not (tables or memory_methods) or not previous_file.exists():
        return
    previous = json.loads(previous_file.read_text())
    for key, value in previous.items():  # what an earlier run or a merge added beside the tables (process_loaded_run)
        if key not in results and key not in TABLES:
            results[key] = value
    for table in tables:
        if previous.get(table):
            results[table] = previous[table]
            # a table kept in parts ("memory of ...", "memory, all but ...") keeps its parts' dates
            parts = {k: v for k, v in previous.get("kept", {}).items()
                     if k == table or k.startswith((f"{table} ", f"{table},"))}
            results["kept"].update(parts or {table: _measured_on(previous)})
    if memory_methods and "memory" not in tables:
        earlier = {mem["model"]: mem["methods"] for mem in previous.get("memory", [])}
        kept = False
        for mem in results["memory"]:
            for method in memory_methods:
                if method in earlier.get(mem["model"], {}):
                    mem["methods"][method] = earlier[mem["model"]][method]
                    kept = True
        if kept:
            date = previous.get("kept", {}).get("memory") or _measured_on(previous)
            results["kept"][f"memory of {', '.join(memory_methods)}"] = date


def _main_jax(cases: list[models.Case], args: argparse.Namespace, command: str, log: Callable[[str], None],
              argv: list[str]) -> int:
    """``--backend jax``: measure the JAX backend into results_jax.json (in a JAX process of its own)."""
    if os.environ.get("KERAS_BACKEND") != "jax":  # Keras's backend is fixed per process
        env = {**os.environ, "KERAS_BACKEND": "jax"}
        return subprocess.run([sys.executable, str(Path(__file__)), *argv], env=env).returncode
    import jax_bench

    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save(results: dict[str, Any]) -> None:
        results["seconds"] = time.perf_counter() - started
        (out / "results_jax.json").write_text(json.dumps(results, indent=2) + "\n")
        _write_results_md(out)

    results = jax_bench.run(cases, args.repeats, args.quick, command, log, save)
    save(results)
    log(f"wrote {out / 'RESULTS.md'} ({results['seconds']:.0f} s)")
    return 0


def _write_results_md(out: Path) -> None:
    """RESULTS.md from the TensorFlow and JAX results in ``out`` (whichever exist)."""
    import jax_bench

    parts = []
    if (out / "results.json").exists():
        parts.append(markdown(json.loads((out / "results.json").read_text())))
    else:
        parts.append("# gradviz benchmark results\n")
    if (out / "results_jax.json").exists():
        parts.append("\n".join(jax_bench.markdown(json.loads((out / "results_jax.json").read_text()))))
    (out / "RESULTS.md").write_text("\n".join(parts))


if __name__ == "__main__":
    sys.exit(main())
