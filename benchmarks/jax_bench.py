"""The JAX rows of the benchmark: gradviz's JAX pass against the hand-written JAX floor.

Run through ``python benchmarks/run.py --backend jax`` (which runs this
module's :func:`run` with ``KERAS_BACKEND=jax``). For each model:

* **warm**, in one process: seconds per gradient pass over all batches, gradviz
  (``Session.backend.run``) vs the **floor**, K separate ``jax.grad``\\ s of
  ``model.stateless_call``'s losses jitted together, returning each loss's
  squared gradient norm (what issue 16 measured as the fastest formulation on
  CPU), medians of interleaved repeats after warm-up;
* **first call**, in the same process without any persistent cache: trace +
  compile + one pass, for both;
* **time to answer**, each a fresh interpreter timed from outside: ``gradviz``
  (``gradviz.analyze(file)``, what ``gradviz inspect`` runs) and the floor
  script (load the file, compile, one pass), each with an empty JAX
  persistent compilation cache, then again with the cache the first run left.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: targets of issue 16 (ratios), the same as on TensorFlow
TARGET_WARM = 1.15
TARGET_PROCESS = 1.2


def build_floor(model: Any, outputs: Sequence[str], heads: Sequence[str], loss_fns: Sequence[Any],
                training: bool = True) -> Callable[..., Any]:
    """The hand-written JAX floor: K separate ``jax.grad``\\ s jitted together -> per-loss squared norms."""
    import jax
    import jax.numpy as jnp

    def step(weights: list[Any], state: list[Any], x: list[Any], ys: dict[str, Any]) -> Any:
        def loss(w: list[Any], k: int) -> Any:
            y_pred, _ = model.stateless_call(w, state, x if len(x) > 1 else x[0], training=training)
            named = dict(zip(outputs, y_pred if isinstance(y_pred, (list, tuple)) else [y_pred]))
            return jnp.asarray(loss_fns[k](ys[heads[k]], named[heads[k]]), jnp.float32)

        norms = []
        for k in range(len(loss_fns)):
            grads = jax.grad(loss, argnums=0)(weights, k)
            norms.append(sum(jnp.sum(jnp.square(g)) for g in grads))
        return jnp.stack(norms)

    return jax.jit(step)


def run_floor(step: Callable[..., Any], model: Any, data: Any) -> Any:
    """The floor over every batch, fetched to NumPy (NumPy batches passed to the jitted step, as gradviz does)."""
    import numpy as np

    weights = [v.value for v in model.trainable_variables]
    state = [v.value for v in model.non_trainable_variables]
    total = None
    for b in range(data.batches):
        xs, ys = data.batch(b)
        out = np.asarray(step(weights, state, xs, ys))
        total = out if total is None else total + out
    return total


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_in_process(case: Any, repeats: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Warm medians and first calls of gradviz's JAX pass and the floor (no persistent cache)."""
    import models

    import gradviz
    from gradviz.backends.jax.gradient_pass import GradientPass

    model = models.build(case.name)
    session = gradviz.prepare(model, compilation_cache=False)
    data = session.data(batch_size=case.batch_size, batches=case.batches, seed=0)
    terms = session.losses
    xs, ys = data.batch(0)
    loss_fns = [t.for_targets(tuple(ys[t.output].shape)) for t in terms]
    result: dict[str, Any] = {
        "model": case.name, "losses": len(terms), "batch_size": case.batch_size, "batches": case.batches,
        "params": int(sum(int(v.numpy().size) for v in model.trainable_variables)), "repeats": repeats,
        "first_call": {}, "median": {}, "compile_seconds": None,
    }
    cold = GradientPass(model, terms, session.outputs, compilation_cache=False)
    result["first_call"]["gradviz"] = _timed(lambda: cold.run(data))
    result["compile_seconds"] = cold.compile_seconds
    floor = build_floor(model, session.outputs, [t.output for t in terms], loss_fns)
    result["first_call"]["floor"] = _timed(lambda: run_floor(floor, model, data))
    log(f"  first call: gradviz {result['first_call']['gradviz']:.1f}s (compiling {cold.compile_seconds:.1f}s), "
        f"floor {result['first_call']['floor']:.1f}s")
    methods = {"gradviz": lambda: cold.run(data), "floor": lambda: run_floor(floor, model, data)}
    for fn in methods.values():
        fn()  # warm-up
    runs: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(repeats):
        order = list(methods)
        for name in order[r % 2:] + order[:r % 2]:
            runs[name].append(_timed(methods[name]))
    result["median"] = {name: statistics.median(times) for name, times in runs.items()}
    log("  warm: " + ", ".join(f"{k} {v:.4f}s" for k, v in result["median"].items()))
    return result


# ---------------------------------------------------------------- whole processes


def child_gradviz(path: str, batch_size: int, batches: int) -> dict[str, Any]:
    """In a fresh process: ``gradviz.analyze`` on the file (the cache as the environment says)."""
    import gradviz

    session = gradviz.prepare(path)
    session.run(batch_size=batch_size, batches=batches)
    backend = session.backend
    return {"cache_hits": getattr(backend, "cache_hits", 0), "compiles": backend.tracing_count(),
            "compile_seconds": getattr(backend, "compile_seconds", None)}


def child_floor(path: str, batch_size: int, batches: int, cache_dir: str | None) -> dict[str, Any]:
    """In a fresh process: the hand-written floor on the file (with JAX's cache in ``cache_dir``, if any)."""
    import jax

    if cache_dir:  # what a user enabling JAX's cache by hand would write
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    import gradviz

    # The file loaded once (keras.saving.load_model, as gradviz loads it), with gradviz's loss
    # resolution and synthetic data, so that both processes compute the same thing.
    session = gradviz.prepare(path)
    model = session.model
    data = session.data(batch_size=batch_size, batches=batches, seed=0)
    xs, ys = data.batch(0)
    terms = session.losses
    floor = build_floor(model, session.outputs, [t.output for t in terms],
                        [t.for_targets(tuple(ys[t.output].shape)) for t in terms])
    run_floor(floor, model, data)
    return {}


def _process(kind: str, path: Path, case: Any, cache_dir: Path | None) -> dict[str, Any]:
    """Run one child, timed from outside (interpreter start to exit)."""
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    if kind == "gradviz":
        if cache_dir is None:
            env["GRADVIZ_COMPILATION_CACHE"] = "0"
        else:
            env["GRADVIZ_CACHE_DIR"] = str(cache_dir)
            env.pop("GRADVIZ_COMPILATION_CACHE", None)
    cmd = [sys.executable, str(Path(__file__)), f"--child-{kind}", str(path), str(case.batch_size),
           str(case.batches), str(cache_dir or "")]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return {"seconds": seconds, **json.loads(proc.stdout.strip().splitlines()[-1])}


def time_processes(case: Any, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Time to answer of fresh processes: gradviz and the floor, cold and with a warm persistent cache."""
    import models

    if case.name == "shared_trunk":
        path = ROOT / "samples" / "shared_trunk.keras"
    else:
        path = workdir / f"{case.name}.keras"
        if not path.exists():
            models.build(case.name).save(path)
    out: dict[str, Any] = {}
    for kind in ("gradviz", "floor"):
        cache = workdir / f"cache-{kind}-{case.name}"
        out[f"{kind} no cache"] = _process(kind, path, case, None)
        out[f"{kind} cold cache"] = _process(kind, path, case, cache)
        out[f"{kind} warm cache"] = _process(kind, path, case, cache)
    log("  processes: " + ", ".join(f"{k} {v.get('seconds', float('nan')):.1f}s" for k, v in out.items()))
    return out


# ---------------------------------------------------------------- report


def machine() -> dict[str, str]:
    import jax
    import keras

    return {"jax": jax.__version__, "jaxlib": getattr(__import__("jaxlib"), "__version__", "?"),
            "keras": keras.__version__, "devices": ", ".join(str(d) for d in jax.devices()),
            "cores": str(os.cpu_count()), "load": _load()}


def _load() -> str:
    """The 1-minute load average (others' work on a shared machine slows every number here)."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:  # pragma: no cover - no load average on this platform
        return "unknown"


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for issue 16's two targets."""
    out: list[tuple[str, str, bool | None]] = []
    for t in results["timing"]:
        r = _ratio(t["median"].get("gradviz"), t["median"].get("floor"))
        out.append((f"{t['model']}: JAX warm pass <= {TARGET_WARM}x floor", f"{_f(r, 2)}x",
                    None if r is None else r <= TARGET_WARM))
    for p in results["processes"]:
        runs = p["runs"]
        mine = runs.get("gradviz warm cache", {}).get("seconds")
        theirs = [runs.get(k, {}).get("seconds") for k in ("floor no cache", "floor warm cache")]
        best = min((s for s in theirs if s is not None), default=None)
        r = _ratio(mine, best)
        out.append((f"{p['model']}: time to answer, warm cache, <= {TARGET_PROCESS}x the faster floor process",
                    f"{_f(mine, 1)} s / {_f(best, 1)} s = {_f(r, 2)}x", None if r is None else r <= TARGET_PROCESS))
    return out


def markdown(results: dict[str, Any]) -> list[str]:
    """The JAX section of RESULTS.md."""
    m = results["machine"]
    lines = [
        "## JAX backend: gradviz vs the hand-written JAX floor",
        "",
        f"Generated by `{results['command']}` on {results['date']}: JAX {m['jax']} (jaxlib {m['jaxlib']}), "
        f"Keras {m['keras']}, devices: {m['devices']}; {m['cores']} cores, load average "
        f"{m['load']} at the start and {results.get('load_at_end', '?')} at the end (the machine is shared: "
        "a load above the core count slows every number, first calls most).",
        "",
        "**gradviz**: the JAX backend's pass (`Session.backend.run`): K `jax.grad`s of the traced "
        "`stateless_call` jitted together with the per-variable Gram reduction (float32 chunks, summed in float64 "
        "on the host; on a CPU the mean-gradient sums are reduced in NumPy, the same arithmetic), mean-gradient mode. **floor**: K separate `jax.grad`s of `stateless_call`'s losses jitted "
        "together, returning each loss's squared gradient norm (issue 16's fastest formulation on CPU). Warm: "
        "median seconds per pass over all batches, after warm-up, repeats interleaved; first call: trace + "
        "compile + one pass in the same process, without a persistent cache.",
        "",
        "| model | K | params | batch x batches | repeats | gradviz s | floor s | gradviz / floor "
        "| first call gradviz s (compiling) | first call floor s |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for t in results["timing"]:
        med, first = t["median"], t["first_call"]
        lines.append(
            f"| {t['model']} | {t['losses']} | {t['params']:,} | {t['batch_size']} x {t['batches']} | {t['repeats']} "
            f"| {_f(med.get('gradviz'), 4)} | {_f(med.get('floor'), 4)} "
            f"| {_f(_ratio(med.get('gradviz'), med.get('floor')), 2)} "
            f"| {_f(first.get('gradviz'), 1)} ({_f(t.get('compile_seconds'), 1)}) | {_f(first.get('floor'), 1)} |"
        )
    lines += [
        "",
        "### Time to answer (fresh processes)",
        "",
        "Each a fresh interpreter, timed from outside (start to exit: imports, loading the file, tracing, compiling "
        "or loading from JAX's persistent compilation cache, the pass; gradviz also analyses). **no cache**: JAX's "
        "persistent cache off; **cold cache**: an empty cache directory (compiles and writes); **warm cache**: the "
        "directory the cold run left (loads instead of compiling). The floor process enables JAX's cache by hand "
        "(`jax_compilation_cache_dir`, minimum compile time 0).",
        "",
        "| model | gradviz no cache s | gradviz cold cache s | gradviz warm cache s (loaded / compiled) "
        "| floor no cache s | floor cold cache s | floor warm cache s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for p in results["processes"]:
        runs = p["runs"]

        def cell(key: str) -> str:
            run = runs.get(key, {})
            return f"failed: `{run['error']}`" if "error" in run else _f(run.get("seconds"), 1)

        warm = runs.get("gradviz warm cache", {})
        loaded = f" ({warm.get('cache_hits', '-')} / {warm.get('compiles', '-')})" if "seconds" in warm else ""
        lines.append(
            f"| {p['model']} | {cell('gradviz no cache')} | {cell('gradviz cold cache')} | "
            f"{cell('gradviz warm cache')}{loaded} | {cell('floor no cache')} | {cell('floor cold cache')} "
            f"| {cell('floor warm cache')} |"
        )
    lines += ["", "### JAX targets", "", "| target | measured | |", "|---|---|---|"]
    for target, measured, ok in targets(results):
        lines.append(f"| {target} | {measured} | {'n/a' if ok is None else ('met' if ok else '**missed**')} |")
    lines.append("")
    for note in results.get("notes", []):  # measurements added by hand after the run (see results_jax.json)
        lines += [note, ""]
    return lines


def run(cases: list[Any], repeats: int | None, quick: bool, command: str, log: Callable[[str], None],
        save: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every JAX measurement for ``cases`` (in this process and in fresh ones); ``save`` gets the results
    so far after each model (a long run that is stopped keeps what it measured)."""
    import datetime

    results: dict[str, Any] = {
        "command": command, "machine": machine(), "timing": [], "processes": [],
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }
    with tempfile.TemporaryDirectory(prefix="gradviz-bench-jax-") as tmp:
        for case in cases:
            count = repeats or (3 if quick else case.repeats)
            log(f"{case.name} (jax): timing ({count} repeats, batch {case.batch_size} x {case.batches})")
            results["timing"].append(time_in_process(case, count, log))
            log(f"{case.name} (jax): fresh processes")
            results["processes"].append({"model": case.name, "runs": time_processes(case, Path(tmp), log)})
            results["load_at_end"] = _load()
            if save is not None:
                save(results)
    return results


def main(argv: list[str]) -> int:
    kind, path, batch, batches, cache_dir = (argv + [""])[:5]
    if kind == "--child-gradviz":
        print(json.dumps(child_gradviz(path, int(batch), int(batches))))
    elif kind == "--child-floor":
        print(json.dumps(child_floor(path, int(batch), int(batches), cache_dir or None)))
    else:
        raise SystemExit(f"unknown child {kind!r}")
    return 0


if __name__ == "__main__":
    sys.path[:0] = [str(ROOT), str(HERE)]
    os.environ.setdefault("KERAS_BACKEND", "jax")
    sys.exit(main(sys.argv[1:]))
