"""Tiny models and file helpers for the robustness tests (bad input, fuzzing, side effects).

Kept tiny on purpose: a few dozen parameters, so that the hundreds of runs in
the fuzzing and bad-input tests stay fast.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
from keras import layers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRADVIZ_EXE = Path(sys.executable).with_name("gradviz")


def two_heads(compiled: bool = True, seed: int = 0) -> keras.Model:
    """features(3) -> trunk(4) -> {C: sigmoid(1), D: linear(1)}; compiled with weights 0.5 / 0.3."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((3,), name="features")
    trunk = layers.Dense(4, activation="relu", name="trunk")(x)
    c = layers.Dense(1, activation="sigmoid", name="C")(trunk)
    d = layers.Dense(1, name="D")(trunk)
    model = keras.Model(x, [c, d], name="two_heads")
    if compiled:
        model.compile(optimizer="sgd", loss=["binary_crossentropy", "mse"], loss_weights=[0.5, 0.3])
    return model


def one_head(seed: int = 0) -> keras.Model:
    """features(3) -> trunk(4) -> out(1), compiled with mse."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((3,), name="features")
    h = layers.Dense(4, activation="relu", name="trunk")(x)
    y = layers.Dense(1, name="out")(h)
    model = keras.Model(x, y, name="one_head")
    model.compile(optimizer="sgd", loss="mse")
    return model


def string_input() -> keras.Model:
    """A model whose input takes strings (StringLookup -> Embedding -> Dense)."""
    x = keras.Input((2,), dtype="string", name="words")
    ids = layers.StringLookup(vocabulary=["a", "b", "c"], name="lookup")(x)
    emb = layers.Embedding(5, 2, name="embedding")(ids)
    flat = layers.Flatten(name="flat")(emb)
    y = layers.Dense(1, name="out")(flat)
    model = keras.Model(x, y, name="strings")
    model.compile(optimizer="sgd", loss="mse")
    return model


def save(model: keras.Model, path: Path) -> Path:
    """Save ``model`` to ``path`` (.keras or .h5) and return the path."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns that .h5 is legacy
        model.save(path)
    return path


def rewrite_config(src: Path, dst: Path, edit: Callable[[Any], Any] | bytes) -> Path:
    """Copy a .keras archive, replacing config.json by ``edit(config)`` (or raw bytes)."""
    with zipfile.ZipFile(src) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    if isinstance(edit, bytes):
        members["config.json"] = edit
    else:
        members["config.json"] = json.dumps(edit(json.loads(members["config.json"]))).encode()
    with zipfile.ZipFile(dst, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return dst


def set_h5_attr(path: Path, name: str, value: Any) -> None:
    """Set (or, with None, delete) a root attribute of an HDF5 file; dicts are stored as JSON."""
    import h5py

    with h5py.File(path, "a") as h5:
        if value is None:
            if name in h5.attrs:
                del h5.attrs[name]
        else:
            h5.attrs[name] = json.dumps(value) if not isinstance(value, str) else value


def run_gradviz(*args: Any, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the real ``gradviz`` executable with this worktree on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what a user gets by default
    exe = str(GRADVIZ_EXE) if GRADVIZ_EXE.exists() else shutil.which("gradviz") or "gradviz"
    return subprocess.run(
        [exe, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout
    )
