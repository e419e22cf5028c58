"""The benchmark runs on a tiny model and writes its tables (no timing is asserted: machines are noisy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_writes_tables(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--models", "shared_trunk",
         "--repeats", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=1800, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (out / "RESULTS.md").read_text()
    assert "| model | K | params | batch x batches |" in text
    assert "| shared_trunk | 2 | 1,666 |" in text
    for heading in ("## Peak memory (one batch)", "## Stages of `gradviz inspect`", "## Targets"):
        assert heading in text
    assert "Machine:" in text and "TensorFlow" in text
    results = json.loads((out / "results.json").read_text())
    timing = results["timing"][0]
    assert set(timing["median"]) == {"gradviz", "floor", "naive", "joint"}
    assert all(v > 0 for v in timing["median"].values())
    memory = results["memory"][0]["methods"]
    assert set(memory) == {"gradviz", "gradviz-unordered", "gradviz-eager", "floor", "naive", "joint"}
    assert all(m["peak_mb"] > 0 for m in memory.values())
    assert {"load", "graph", "gradients", "total"} <= set(results["stages"][0]["stages"])
    assert results["help_imports_tensorflow"] is False
    # time to the answer: whole processes of gradviz inspect and the two hand-written ones
    assert "## Time to the answer: whole processes" in text
    (row,) = results["process"]
    assert set(row["seconds"]) == {"gradviz", "hand-eager", "hand-tf.function"}, row["errors"]
    assert row["execution"] == "eager" and all(v > 0 for v in row["seconds"].values())
    assert "| shared_trunk | 32 x 1 |" in text


def test_unknown_model_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--models", "nope",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "valid: shared_trunk" in proc.stderr


def _peak_mb(model: str, method: str, batch: int) -> float:
    env = {**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "true", "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--child-memory", model, method, str(batch)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"])


def test_lockstep_bounds_the_gradients_alive() -> None:
    """Memory is not timing: TensorFlow's allocator counts live tensor bytes exactly. An MLP with 8 heads
    and 16 layers of 1 MB kernels: unordered, the first losses' gradients of every layer wait for the last
    loss (up to 7 x 16 MB); in lockstep, at most two layers' 8 gradients (16 MB) plus a reduction."""
    ordered = _peak_mb("mlp_8", "gradviz", 64)
    unordered = _peak_mb("mlp_8", "gradviz-unordered", 64)
    assert ordered < unordered / 2, (ordered, unordered)


def test_monitor_table_measures_the_probe_and_keeps_the_other_tables(tmp_path: Path) -> None:
    """`--tables monitor --quick`: the sample's probe against the floor and an epoch, in a fresh process; the
    other tables come from the results.json already in --out, dated."""
    out = tmp_path / "bench"
    out.mkdir()
    earlier = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    (out / "results.json").write_text(json.dumps(earlier))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--tables", "monitor", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=1800, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    (row,) = results["monitor"]
    assert "error" not in row, row
    assert row["model"] == "sample" and row["losses"] == 2 and row["probe_rows"] == 128
    assert set(row["median"]) == {"monitor", "pass", "floor"} and all(v > 0 for v in row["median"].values())
    assert row["first_call"]["monitor"] > 0 and row["first_call"]["floor"] > 0
    assert 0 < row["probe_in_fit"] < row["epoch"]
    assert row["tracing_count"] == 1  # one probe batch: traced once when training began, reused at every probe
    assert results["timing"] == earlier["timing"] and "timing" in results["kept"]
    text = (out / "RESULTS.md").read_text()
    assert "## Training monitor: the probe's cost" in text and "| sample | 2 | 450 | 128 | 512 x 32 |" in text
    assert "sample: monitor probe <= 1.2x the hand-written floor" in text
    assert "## Gradient pass: gradviz vs hand-written tapes" in text  # kept from the earlier run
def test_jax_tables_and_targets_from_results() -> None:
    """The JAX section of RESULTS.md and its targets, from results shaped as ``--backend jax`` writes them
    (the measurement itself runs JAX compilations for minutes: only ``make bench`` does it)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import jax_bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    results = {
        "command": "python benchmarks/run.py --backend jax", "date": "today",
        "machine": {"jax": "0.10.2", "jaxlib": "0.10.2", "keras": "3", "devices": "cpu:0", "cores": "2", "load": "1.0"},
        "load_at_end": "1.5",
        "timing": [{"model": "m", "losses": 3, "params": 1000, "batch_size": 16, "batches": 2, "repeats": 5,
                    "median": {"gradviz": 1.1, "floor": 1.0}, "first_call": {"gradviz": 9.0, "floor": 8.0},
                    "compile_seconds": 7.0}],
        "processes": [{"model": "m", "runs": {
            "gradviz no cache": {"seconds": 20.0}, "gradviz cold cache": {"seconds": 21.0},
            "gradviz warm cache": {"seconds": 12.0, "cache_hits": 2, "compiles": 2},
            "floor no cache": {"seconds": 19.0}, "floor cold cache": {"seconds": 19.5},
            "floor warm cache": {"error": "boom"}}}],
    }
    text = "\n".join(jax_bench.markdown(results))
    assert "| m | 3 | 1,000 | 16 x 2 | 5 | 1.1000 | 1.0000 | 1.10 | 9.0 (7.0) | 8.0 |" in text
    assert "| m | 20.0 | 21.0 | 12.0 (2 / 2) | 19.0 | 19.5 | failed: `boom` |" in text
    marks = {target: ok for target, _, ok in jax_bench.targets(results)}
    assert marks["m: JAX warm pass <= 1.15x floor"] is True
    # 12 s against the faster floor process that ran (19 s): met
    assert marks["m: time to answer, warm cache, <= 1.2x the faster floor process"] is True
