"""The JAX backend as a user runs it, each case in a fresh process with ``KERAS_BACKEND=jax``.

No TensorFlow on the JAX path (its import blocked), JAX's persistent
compilation cache (a second process loads the compiled pass instead of
compiling it), several devices through Keras's distribution API (two CPU
devices), and one clear error when JAX is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("jax")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "shared_trunk.keras"

#: makes importing the named top-level packages fail, as if they were not installed
BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
"""


def run_jax(code: str, tmp_path: Path, env: dict[str, str] | None = None, blocked: tuple[str, ...] = (),
            args: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (or ``python -m gradviz.cli args``) on Keras's JAX backend with a private cache directory."""
    full = {key: value for key, value in os.environ.items() if key not in ("XLA_FLAGS", "GRADVIZ_COMPILATION_CACHE")}
    full.update({"KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT), "GRADVIZ_CACHE_DIR": str(tmp_path / "cache"),
                 **(env or {})})
    prelude = BLOCK.format(blocked=blocked) if blocked else ""
    if args is not None:
        code = prelude + "import sys\nfrom gradviz.cli import main\nsys.argv = ['gradviz'] + " + repr(args) + "\nmain()\n"
    else:
        code = prelude + code
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, cwd=ROOT,
                          timeout=900)


#: the cache figures of one session: the sample, mean of 2 batches (one program adds up; NumPy reduces on a CPU)
CACHED = """
import json, gradviz
session = gradviz.prepare(__SAMPLE__)
session.run(batch_size=8, batches=2)
backend = session.backend
cached = {"hits": backend.cache_hits, "compiles": backend.tracing_count(), "seconds": backend.compile_seconds,
          "dir": backend.cache_dir}
"""

#: a seeded Dropout model's reports (timings and command line left out), for comparison across processes
SEEDED = """
reports = {}
for seed in (3, 4):
    doc = json.loads(gradviz.analyze(__DROPOUT__, seed=seed, batch_size=8).to_json())
    doc.pop("timings"), doc.pop("command")
    reports[seed] = json.dumps(doc, sort_keys=True)
"""

FIRST = CACHED + SEEDED + """
from gradviz.cli import main

report = gradviz.analyze(__SAMPLE__, batches=2)
assert report.meta["backend"] == "jax", report.meta
session = gradviz.prepare(__ROUTER__)
session.run(batch_size=8)
for args in (["inspect", __SAMPLE__, "--json"], ["weights", __SAMPLE__, "--suggest", "--json"]):
    main(args, standalone_mode=False)

# Inspecting changes nothing: weights, BatchNorm statistics, the Dropout's seed-generator state, and the
# caller's random streams.
import random, sys
import keras, numpy as np
from keras import layers
x = keras.Input((6,))
h = layers.Dropout(0.5, seed=3)(layers.BatchNormalization()(layers.Dense(8)(x)))
model = keras.Model(x, [layers.Dense(1, name="C")(h), layers.Dense(2, name="D")(h)])
model.compile(loss="mse")
before = [np.array(v.value) for v in model.variables]
assert any("seed_generator" in v.path for v in model.variables)
random.seed(1)
np.random.seed(1)
python_state, numpy_state = random.getstate(), np.random.get_state()
gradviz.analyze(model, batches=2)
assert all(np.array_equal(a, np.array(v.value)) for a, v in zip(before, model.variables)), "a variable changed"
assert random.getstate() == python_state and np.array_equal(np.random.get_state()[1], numpy_state[1])

# What --execution means on JAX, for one batch and for three
executions = {}
for batches in (1, 3):
    for execution in ("auto", "compiled", "eager"):
        session = gradviz.prepare(__SAMPLE__, execution=execution)
        report = session.run(batch_size=8, batches=batches)
        executions[f"{execution} {batches}"] = {
            "meta": [report.meta["execution"], report.meta["execution_reason"]], "traced": session.tracing_count(),
            "gram": session.backend.run(session.data(batch_size=8, batches=batches), seed=0).gram.tolist()}
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras"))
print("RESULT:" + json.dumps({"cached": cached, "reports": reports, "executions": executions,
                              "tensorflow": loaded}))
"""

SECOND = CACHED + SEEDED + """
print("RESULT:" + json.dumps({"cached": cached, "reports": reports}))
"""


def _result(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr[-3000:]
    line = [line for line in done.stdout.splitlines() if line.startswith("RESULT:")][-1]
    return dict(json.loads(line[len("RESULT:"):]))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two JAX processes one after the other, sharing a compilation cache; the first with TensorFlow blocked."""
    tmp_path = tmp_path_factory.mktemp("jax_runtime")
    dropout = str(_dropout_file(tmp_path))

    def code(template: str) -> str:
        return (template.replace("__SAMPLE__", repr(str(SAMPLE))).replace("__DROPOUT__", repr(dropout))
                .replace("__ROUTER__", repr(str(ROOT / "samples" / "ticket_router.keras"))))

    first = run_jax(code(FIRST), tmp_path, blocked=("tensorflow", "tf_keras"))
    out = {"first": _result(first), "first_stdout": first.stdout}
    out["entries"] = sorted(p.name for p in (tmp_path / "cache").iterdir())
    out["second"] = _result(run_jax(code(SECOND), tmp_path))
    return out


def test_jax_path_imports_no_tensorflow(two_processes: dict[str, Any]) -> None:
    """analyze, prepare, inspect and weights on JAX with TensorFlow's import blocked; the model unchanged."""
    assert two_processes["first"]["tensorflow"] == []
    stdout = two_processes["first_stdout"]
    assert '"backend": "jax"' in stdout  # the inspect report's meta
    assert '"suggested"' in stdout  # the weights document


def test_second_process_loads_the_compiled_pass(two_processes: dict[str, Any], tmp_path: Path) -> None:
    first, second = two_processes["first"]["cached"], two_processes["second"]["cached"]
    assert first["dir"] is not None and first["dir"].endswith("cache")
    # mean of 2 batches: one program adds the gradients up; on a CPU the sums are reduced in NumPy
    assert first["hits"] == 0 and first["compiles"] == 1
    assert len(two_processes["entries"]) >= 1, two_processes["entries"]
    assert second["hits"] == second["compiles"] == 1  # nothing compiled again
    assert second["seconds"] < first["seconds"], (first, second)


def test_same_seed_same_report_in_separate_jax_processes(two_processes: dict[str, Any]) -> None:
    """--seed draws the Dropout masks on JAX too: two processes, one report byte for byte; another seed, other numbers."""
    first, second = two_processes["first"]["reports"], two_processes["second"]["reports"]
    assert first["3"] == second["3"] and first["4"] == second["4"]
    three, four = json.loads(first["3"]), json.loads(first["4"])
    assert three["meta"]["random_layers"] == ["drop"] and three["meta"]["backend"] == "jax"
    assert three["meta"]["seed"] == 3
    assert three["losses"] != four["losses"]


@pytest.mark.parametrize("batches", [1, 3])
def test_execution_on_jax_says_what_ran(two_processes: dict[str, Any], batches: int) -> None:
    """auto compiles on JAX (and says why); eager runs op by op (nothing compiled), with the same numbers."""
    import numpy as np

    out = {k.split()[0]: v for k, v in two_processes["first"]["executions"].items() if k.endswith(f" {batches}")}
    assert out["auto"]["meta"] == ["compiled", "JAX: one compiled program (op by op would compile every op as well)"]
    assert out["compiled"]["meta"] == ["compiled", "requested"]
    assert out["eager"]["meta"] == ["eager", "requested: JAX op by op (jax.disable_jit), nothing compiled as a whole"]
    assert out["eager"]["traced"] == 0 and out["compiled"]["traced"] >= 1
    compiled, eager = np.array(out["compiled"]["gram"]), np.array(out["eager"]["gram"])
    norms = np.sqrt(np.einsum("vii->vi", compiled))
    assert (np.abs(eager - compiled) <= 1e-5 * norms[:, :, None] * norms[:, None, :] + 1e-30).all()


def test_cache_can_be_switched_off(tmp_path: Path) -> None:
    """--no-compilation-cache leaves JAX's cache alone (the option and the environment: cache.wanted)."""
    from gradviz.backends.jax import cache

    assert cache.wanted(False) is False and cache.wanted(None) is True
    os.environ[cache.ENV_SWITCH] = "0"
    try:
        assert cache.wanted(None) is False
    finally:
        del os.environ[cache.ENV_SWITCH]
    done = run_jax("", tmp_path, args=["inspect", str(SAMPLE), "--no-compilation-cache", "--json"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["meta"]["compilation_cache"] is None
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


TWO_DEVICES = """
import json
import keras, numpy as np
import gradviz
from gradviz.errors import DataError
from keras import layers

assert len(keras.distribution.list_devices()) == 2
x = keras.Input((6,))
h = layers.BatchNormalization()(layers.Dense(8)(x))
h = layers.Dense(8, activation="relu")(h)
model = keras.Model(x, [layers.Dense(1, name="C")(h), layers.Dense(3, activation="softmax", name="D")(h)])
model.compile(loss=["mse", "categorical_crossentropy"])
single = gradviz.prepare(model)
data = single.data(batch_size=8, batches=2)
one = single.backend.run(data)
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=keras.distribution.list_devices()))
sharded = gradviz.prepare(model)
two = sharded.backend.run(data)
per_batch = gradviz.prepare(model, batch_mode="per-batch")
two_per_batch = per_batch.backend.run(data)
keras.distribution.set_distribution(None)
one_per_batch = gradviz.prepare(model, batch_mode="per-batch").backend.run(data)
try:
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=keras.distribution.list_devices()))
    sharded.backend.run(sharded.data(batch_size=7))
    odd = "no error"
except DataError as e:
    odd = str(e)
print(json.dumps({
    "devices": sharded.backend.meta["devices"],
    "gram": [one.gram.tolist(), two.gram.tolist(), one_per_batch.gram.tolist(), two_per_batch.gram.tolist()],
    "exists": [one.exists.tolist(), two.exists.tolist()],
    "loss": [one.loss_values.tolist(), two.loss_values.tolist()],
    "odd": odd,
}))
"""


def test_data_parallel_on_two_devices_equals_one(tmp_path: Path) -> None:
    """keras.distribution.DataParallel: the batch split across two CPU devices, the same statistics."""
    import numpy as np

    done = run_jax(TWO_DEVICES, tmp_path, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["devices"] == 2
    one, two, one_pb, two_pb = (np.array(g) for g in result["gram"])
    assert result["exists"][0] == result["exists"][1]
    np.testing.assert_allclose(result["loss"][1], result["loss"][0], rtol=1e-5)
    for single, sharded in ((one, two), (one_pb, two_pb)):
        norms = np.sqrt(np.einsum("vii->vi", single))
        largest = norms.max(axis=0)
        # relative to the norms, plus float32 noise where the gradient is zero in theory (the Dense
        # bias in front of BatchNorm: the batch mean removes it), relative to the losses' largest
        tolerance = 1e-5 * norms[:, :, None] * norms[:, None, :] + 1e-6 * largest[:, None] * largest[None, :]
        assert (np.abs(sharded - single) <= tolerance).all()
    assert "does not split evenly across the 2 devices" in result["odd"]


def test_missing_jax_is_one_clear_error(tmp_path: Path) -> None:
    done = run_jax("", tmp_path, blocked=("jax", "jaxlib"), args=["inspect", str(SAMPLE)])
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: Keras is set to the 'jax' backend")
    assert "pip install 'keras-gradviz[jax]'" in lines[0]


def _dropout_file(tmp_path: Path) -> Path:
    """A Dropout model saved from this (TensorFlow) process: a loaded copy gets fresh seeds on every load."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    x = keras.Input((6,), name="features")
    h = layers.Dropout(0.5, name="drop")(layers.Dense(8, activation="relu", name="A")(x))
    model = keras.Model(x, [layers.Dense(1, name="C")(h), layers.Dense(1, name="D")(h)], name="dropout_heads")
    model.compile(loss=["mse", "mse"])
    path = tmp_path / "dropout.keras"
    model.save(path)
    return path
