"""Inspecting changes nothing: the model, its optimizer, the caller's random streams, the file, old reports.

Every variable (weights, BatchNorm moving statistics, seed-generator states,
the optimizer's iterations and slots) is compared bit for bit before and after
``gradviz.analyze``; random streams are compared by drawing after a run with
and without gradviz; files by their bytes and mtime. Report files are written
atomically: failures at any stage leave an existing report untouched and no
temporary file behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from keras import layers

import gradviz
import robust_models as rm
from gradviz.output import files as output
from test_bad_input import assert_one_error


def trained_model() -> keras.Model:
    """Two heads over a trunk with BatchNorm and Dropout, Adam, trained one step (so slots exist)."""
    keras.utils.set_random_seed(0)
    x = keras.Input((3,), name="features")
    h = layers.Dense(8, name="trunk")(x)
    h = layers.BatchNormalization(name="bn")(h)
    h = layers.Dropout(0.5, name="drop")(layers.Activation("relu")(h))
    c = layers.Dense(1, activation="sigmoid", name="C")(h)
    d = layers.Dense(1, name="D")(h)
    model = keras.Model(x, [c, d], name="trained")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=["binary_crossentropy", "mse"], loss_weights=[1.0, 0.5])
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((8, 3)).astype("float32")
    model.fit(xs, [rng.integers(0, 2, (8, 1)).astype("float32"), rng.standard_normal((8, 1)).astype("float32")],
              batch_size=8, epochs=1, verbose=0)
    return model


def snapshot(model: keras.Model) -> dict[str, np.ndarray]:
    """Every variable of the model and its optimizer, by path, as numpy copies."""
    variables = list(model.variables) + list(model.optimizer.variables)
    out: dict[str, np.ndarray] = {}
    for variable in variables:
        key = variable.path
        while key in out:
            key += "'"
        out[key] = np.array(keras.ops.convert_to_numpy(variable), copy=True)
    return out


def assert_same(before: dict[str, np.ndarray], after: dict[str, np.ndarray]) -> None:
    assert before.keys() == after.keys()
    changed = [key for key in before if not np.array_equal(before[key], after[key], equal_nan=True)]
    assert not changed, f"analyze changed: {changed}"


@pytest.mark.parametrize("options", [
    {},
    {"batches": 3},
    {"batches": 2, "batch_mode": "per-batch"},
    {"training": False},
    {"execution": "compiled"},
    {"batches": 3, "execution": "compiled"},
], ids=["training-1-batch", "mean-gradient-3-batches", "per-batch", "inference", "compiled-1-batch",
        "compiled-3-batches"])
def test_model_and_optimizer_unchanged(options: dict[str, Any]) -> None:
    model = trained_model()
    assert int(model.optimizer.iterations.numpy()) == 1
    before = snapshot(model)
    # the run must touch what we watch: BatchNorm statistics and Dropout seeds are used in training mode
    assert any("moving_mean" in key for key in before) and any("seed_generator" in key for key in before)
    assert any("adam" in key and "momentum" in key for key in before), sorted(before)
    report = gradviz.analyze(model, batch_size=4, **options)
    assert [entry["name"] for entry in report.to_dict()["losses"]] == ["C", "D"]
    assert_same(before, snapshot(model))
    assert int(model.optimizer.iterations.numpy()) == 1
    assert model.compiled and model.optimizer is not None


def test_model_still_trains_like_before() -> None:
    """The same training step after analyze gives the same weights as without it."""
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((8, 3)).astype("float32")
    ys = [rng.integers(0, 2, (8, 1)).astype("float32"), rng.standard_normal((8, 1)).astype("float32")]

    def step(analyse: bool) -> list[np.ndarray]:
        model = trained_model()
        if analyse:
            gradviz.analyze(model, batch_size=4, batches=2)
        keras.utils.set_random_seed(7)
        model.fit(xs, ys, batch_size=8, epochs=1, verbose=0, shuffle=False)
        return list(snapshot(model).values())  # two builds number their paths differently: compare in order

    without, with_gradviz = step(False), step(True)
    assert len(without) == len(with_gradviz)
    for a, b in zip(without, with_gradviz):
        np.testing.assert_array_equal(a, b)


# -- random streams --------------------------------------------------------------------------------


def draws() -> tuple[float, ...]:
    import tensorflow as tf

    return (random.random(), float(np.random.random()), float(keras.random.uniform(())),
            float(keras.random.normal((), seed=None)), float(tf.random.uniform(())))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rm.save(rm.two_heads(), tmp_path_factory.mktemp("side") / "two_heads.keras")


@pytest.mark.parametrize("source", ["file", "h5", "in-memory"])
@pytest.mark.parametrize("warm", [False, True], ids=["fresh-generator", "used-generator"])
def test_caller_random_streams_unchanged(model_file: Path, tmp_path: Path, source: str, warm: bool) -> None:
    """Loading a file rebuilds layers, which draws initializer seeds: the caller must not notice."""
    if source == "h5":
        target: Any = rm.save(rm.two_heads(), tmp_path / "m.h5")
    elif source == "file":
        target = model_file
    else:
        target = rm.two_heads()

    def run(with_gradviz: bool) -> tuple[float, ...]:
        keras.utils.set_random_seed(123)
        if warm:  # the global SeedGenerator exists and has advanced
            keras.random.uniform(())
        if with_gradviz:
            gradviz.analyze(target, batch_size=2)
        return draws()

    assert run(True) == run(False)


# -- files on disk -------------------------------------------------------------------------------------


def fingerprint(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_mtime_ns, stat.st_size


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_model_file_unchanged(cli: Any, tmp_path: Path, suffix: str) -> None:
    path = rm.save(rm.two_heads(), tmp_path / f"model{suffix}")
    os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))  # a fixed, recognisable mtime
    before = fingerprint(path)
    gradviz.analyze(path, batch_size=2)
    result = cli("inspect", path, "--batch-size", "2", "-o", tmp_path / "report.json")
    assert result.exit_code == 0, result.stderr
    assert fingerprint(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, "report.json"])


# -- atomic report files ----------------------------------------------------------------------------------

OLD_REPORT = '{"old": "report"}\n'


@pytest.fixture
def old_report(tmp_path: Path) -> Path:
    target = tmp_path / "out" / "report.json"
    target.parent.mkdir()
    target.write_text(OLD_REPORT)
    os.utime(target, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    return target


def assert_untouched(target: Path) -> None:
    assert target.read_text() == OLD_REPORT
    assert target.stat().st_mtime_ns == 1_000_000_000_000_000_000
    assert [p.name for p in target.parent.iterdir()] == ["report.json"], "a temporary file was left behind"


def test_writer_failure_leaves_old_report(cli: Any, model_file: Path, old_report: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_writer(report: Any, options: Any) -> bytes:
        raise RuntimeError("renderer exploded")

    monkeypatch.setitem(output.WRITERS, "json", broken_writer)
    assert_one_error(cli("inspect", model_file, "--batch-size", "2", "-o", old_report), "renderer exploded", "--debug")
    assert_untouched(old_report)


@pytest.mark.parametrize("fail_at", ["write", "replace"])
def test_failure_while_writing_leaves_old_report(cli: Any, model_file: Path, old_report: Path,
                                                 monkeypatch: pytest.MonkeyPatch, fail_at: str) -> None:
    """The disk fills up halfway through, or the final rename fails: the old report stays whole."""
    if fail_at == "write":
        real_fdopen = os.fdopen

        class HalfWriter:
            def __init__(self, handle: Any) -> None:
                self.handle = handle

            def __enter__(self) -> HalfWriter:
                return self

            def __exit__(self, *exc: Any) -> None:
                self.handle.close()

            def write(self, data: bytes) -> int:
                self.handle.write(data[: len(data) // 2])
                self.handle.flush()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: HalfWriter(real_fdopen(fd, *a, **k)))
    else:
        def refuse(src: Any, dst: Any) -> None:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

        monkeypatch.setattr(os, "replace", refuse)
    reason = "No space left on device" if fail_at == "write" else "Invalid cross-device link"
    assert_one_error(cli("inspect", model_file, "--batch-size", "2", "-o", old_report),
                     f"cannot write {old_report}", reason)
    assert_untouched(old_report)


def test_failed_analysis_leaves_old_report(cli: Any, model_file: Path, old_report: Path, tmp_path: Path) -> None:
    np.savez(tmp_path / "bad.npz", x=np.full((4, 3), np.nan, "float32"))
    assert_one_error(cli("inspect", model_file, "--data", tmp_path / "bad.npz", "-o", old_report))
    assert_untouched(old_report)


def test_successful_write_replaces_whole_file_keeping_mode(cli: Any, model_file: Path, old_report: Path) -> None:
    old_report.chmod(0o640)
    result = cli("inspect", model_file, "--batch-size", "2", "-o", old_report)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"{model_file}:")  # the summary; 'wrote ...' goes to stderr
    assert f"wrote {old_report}" in result.stderr
    import json

    assert json.loads(old_report.read_text())["losses"]
    assert old_report.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in old_report.parent.iterdir()] == ["report.json"]

