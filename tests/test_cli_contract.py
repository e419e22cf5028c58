"""The CLI's contract: exit codes, stdout only for the report, --debug for tracebacks.

``gradviz inspect m.keras --json | python -m json.tool`` must always work, even
when TensorFlow logs natively at import, Keras warns, and a custom layer
prints (to Python's stdout and, through ``tf.print``, to file descriptor 1).
Checked with the real executable in a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import robust_models as rm
from test_bad_input import assert_one_error

NOISY_OBJECTS = '''
import logging
import sys
import warnings

import keras
import tensorflow as tf

print("noisy objects imported")  # stdout, at import


@keras.saving.register_keras_serializable(package="noisy")
class Noisy(keras.layers.Layer):
    """Writes to every stream it can while the model is traced."""

    def call(self, x):
        print("Noisy.call traced")
        warnings.warn("Noisy layer warns", UserWarning)
        logging.getLogger("tensorflow").warning("a TensorFlow logger warning")
        tf.print("native tf.print to stdout", output_stream=sys.stdout)
        return x * 1.0
'''


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A model with the Noisy layer, saved, and the objects file that defines it."""
    d = tmp_path_factory.mktemp("noisy")
    objects = d / "noisy_objects.py"
    objects.write_text(NOISY_OBJECTS)
    import keras
    from keras import layers

    import warnings

    namespace: dict[str, Any] = {}
    exec(compile(NOISY_OBJECTS, str(objects), "exec"), namespace)
    x = keras.Input((3,), name="features")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the layer's own noise while building here is not under test
        h = namespace["Noisy"](name="noisy")(layers.Dense(4, name="trunk")(x))
    model = keras.Model(x, [layers.Dense(1, name="C", activation="sigmoid")(h), layers.Dense(1, name="D")(h)])
    model.compile(loss=["binary_crossentropy", "mse"])
    path = rm.save(model, d / "noisy.keras")
    return path, objects


def test_json_stdout_survives_noise(noisy: tuple[Path, Path]) -> None:
    path, objects = noisy
    result = rm.run_gradviz("inspect", path, "--custom-objects", objects, "--batch-size", "2", "--json")
    assert result.returncode == 0, result.stderr
    # the noise went to stderr ...
    assert "noisy objects imported" in result.stderr
    assert "Noisy.call traced" in result.stderr
    assert "native tf.print to stdout" in result.stderr
    assert "Noisy layer warns" in result.stderr
    # ... and stdout is the report, as `python -m json.tool` reads it
    tool = subprocess.run([sys.executable, "-m", "json.tool"], input=result.stdout, capture_output=True, text=True)
    assert tool.returncode == 0, (result.stdout[:500], tool.stderr)
    report = json.loads(result.stdout)
    assert [entry["name"] for entry in report["losses"]] == ["C", "D"]
    assert "noisy" in {layer["name"] for layer in report["layers"]}


def test_clean_run_has_clean_stderr(tmp_path: Path) -> None:
    """No TensorFlow import chatter: a plain run prints the report and nothing else."""
    path = rm.save(rm.two_heads(), tmp_path / "m.keras")
    result = rm.run_gradviz("inspect", path, "--batch-size", "2", "--json", "-o", tmp_path / "r.json")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"wrote {tmp_path / 'r.json'}"]
    assert json.loads(result.stdout) == json.loads((tmp_path / "r.json").read_text()) | {
        "timings": json.loads(result.stdout)["timings"]}


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = rm.run_gradviz("inspect", tmp_path / "nope.keras", "--debug")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback (most recent call last)" in result.stderr
    assert "gradviz.errors.ModelLoadError: no such file" in result.stderr


def test_debug_in_process_raises(cli: Any, tmp_path: Path) -> None:
    from gradviz.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="no such file"):
        cli("inspect", tmp_path / "nope.keras", "--debug")


def test_unexpected_exception_is_one_line(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug (not a GradvizError) is still one line, naming its type and --debug."""
    import gradviz.session

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("internal")

    monkeypatch.setattr(gradviz.session, "prepare", boom)  # the CLI calls prepare() then Session.run()
    path = rm.save(rm.two_heads(), tmp_path / "m.keras")
    assert_one_error(cli("inspect", path), "unexpected KeyError", "--debug")


@pytest.mark.parametrize("fail_on, findings, code", [
    (None, True, 0),
    ("error", True, 1),
    ("warning", True, 1),
    ("error", False, 0),
])
def test_fail_on_exit_codes(cli: Any, sample_path: Any, fail_on: str | None, findings: bool, code: int) -> None:
    path = sample_path("dead_head" if findings else "shared_trunk")
    args = ["inspect", path, "--batch-size", "4", "--json"] + (["--fail-on", fail_on] if fail_on else [])
    result = cli(*args)
    assert result.exit_code == code, result.stderr
    report = json.loads(result.stdout)  # the report is printed whether or not the run fails
    kinds = {f["kind"] for f in report["findings"]}
    assert ("dead-head" in kinds) == findings
    if code:
        assert result.stderr.splitlines()[-1].startswith("Error: ")
        assert f"--fail-on {fail_on}" in result.stderr


def test_help_is_usage_not_error(cli: Any) -> None:
    result = cli("inspect", "--help")
    assert result.exit_code == 0
    assert "--unsafe" in result.stdout and "--custom-objects" in result.stdout
