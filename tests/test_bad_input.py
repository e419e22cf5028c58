"""A corpus of bad inputs: each one ends in exit 1, one ``Error:`` line on stderr and nothing on stdout.

Every case goes through the real CLI (in-process, stderr kept apart); a
handful also run the installed ``gradviz`` executable in a subprocess to see
the real stderr and exit code (TensorFlow's native log lines included).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import robust_models as rm

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Valid and broken model files, made once for the module."""
    d = tmp_path_factory.mktemp("bad_input")
    good = rm.save(rm.two_heads(), d / "good.keras")
    out: dict[str, Path] = {"dir": d, "good": good}
    out["uncompiled"] = rm.save(rm.two_heads(compiled=False), d / "uncompiled.keras")
    out["strings"] = rm.save(rm.string_input(), d / "strings.keras")
    out["one_head"] = rm.save(rm.one_head(), d / "one_head.keras")
    return out


def assert_one_error(result: Any, *fragments: str, exit_code: int = 1) -> str:
    """Exit code, exactly one ``Error:`` line on stderr, empty stdout; returns the line."""
    stdout = result.stdout
    stderr = result.stderr
    code = result.exit_code if hasattr(result, "exit_code") else result.returncode
    assert code == exit_code, (code, stdout, stderr)
    assert stdout == "", stdout
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    line = lines[0]
    assert line.startswith("Error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


# -- model files -----------------------------------------------------------------------------------


def _missing(d: Path, files: dict[str, Path]) -> Path:
    return d / "nope.keras"


def _plain_dir(d: Path, files: dict[str, Path]) -> Path:
    (d / "plain_dir").mkdir(exist_ok=True)
    return d / "plain_dir"


def _saved_model_dir(d: Path, files: dict[str, Path]) -> Path:
    sm = d / "exported"
    (sm / "variables").mkdir(parents=True, exist_ok=True)
    (sm / "saved_model.pb").write_bytes(b"\x08\x01")
    return sm


def _empty(d: Path, files: dict[str, Path]) -> Path:
    (d / "empty.keras").write_bytes(b"")
    return d / "empty.keras"


def _text(d: Path, files: dict[str, Path]) -> Path:
    (d / "notes.keras").write_text("this is not a model\n")
    return d / "notes.keras"


def _truncated(d: Path, files: dict[str, Path]) -> Path:
    raw = files["good"].read_bytes()
    (d / "truncated.keras").write_bytes(raw[: len(raw) // 2])
    return d / "truncated.keras"


def _zip_without_config(d: Path, files: dict[str, Path]) -> Path:
    with zipfile.ZipFile(d / "other.keras", "w") as archive:
        archive.writestr("readme.txt", "hello")
    return d / "other.keras"


def _bad_json(d: Path, files: dict[str, Path]) -> Path:
    return rm.rewrite_config(files["good"], d / "bad_json.keras", b'{"class_name": "Functional", ')


def _json_list(d: Path, files: dict[str, Path]) -> Path:
    return rm.rewrite_config(files["good"], d / "json_list.keras", b"[1, 2, 3]")


def _unknown_class(d: Path, files: dict[str, Path]) -> Path:
    def edit(config: Any) -> Any:
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Dense" and layer["config"]["name"] == "trunk":
                layer["class_name"] = "FancyDense"
                layer["module"] = "my_project.layers"
                layer["registered_name"] = "FancyDense"
        return config

    return rm.rewrite_config(files["good"], d / "unknown_class.keras", edit)


def _wrong_suffix(d: Path, files: dict[str, Path]) -> Path:
    (d / "model.pt").write_bytes(b"\x80\x02}q\x00.")
    return d / "model.pt"


def _text_h5(d: Path, files: dict[str, Path]) -> Path:
    (d / "text.h5").write_text("not hdf5")
    return d / "text.h5"


def _weights_only_h5(d: Path, files: dict[str, Path]) -> Path:
    path = d / "model.weights.h5"
    rm.two_heads().save_weights(path)
    return path


MODEL_FILE_CASES: list[tuple[str, Callable[[Path, dict[str, Path]], Path], tuple[str, ...]]] = [
    ("missing", _missing, ("no such file", "nope.keras", ".keras or .h5")),
    ("directory", _plain_dir, ("is a directory", ".keras or .h5")),
    ("saved-model-dir", _saved_model_dir, ("SavedModel", "model.save(")),
    ("empty", _empty, ("is empty",)),
    ("text-as-keras", _text, ("not a Keras archive", "zip")),
    ("truncated-zip", _truncated, ("truncated",)),
    ("zip-without-config", _zip_without_config, ("no config.json",)),
    ("config-invalid-json", _bad_json, ("config.json is not valid JSON",)),
    ("config-not-object", _json_list, ("config.json", "JSON object")),
    ("unknown-class", _unknown_class, ("FancyDense", "--custom-objects")),
    ("wrong-suffix", _wrong_suffix, ("model.pt", ".keras or .h5")),
    ("text-as-h5", _text_h5, ("not a readable HDF5 file",)),
    ("weights-only-h5", _weights_only_h5, ("model_config", "model.save()")),
]


@pytest.mark.parametrize("make, fragments", [c[1:] for c in MODEL_FILE_CASES], ids=[c[0] for c in MODEL_FILE_CASES])
def test_bad_model_file(cli: Any, files: dict[str, Path], make: Any, fragments: tuple[str, ...]) -> None:
    path = make(files["dir"], files)
    assert_one_error(cli("inspect", path), *fragments)


def test_unknown_class_names_only_the_class(cli: Any, files: dict[str, Path]) -> None:
    line = assert_one_error(cli("inspect", _unknown_class(files["dir"], files)))
    assert "'FancyDense'" in line
    assert len(line) < 300, line


# -- losses and weights -----------------------------------------------------------------------------

LOSS_CASES: list[tuple[str, str, tuple[str, ...], tuple[str, ...]]] = [
    ("no-compile-config", "uncompiled", (), ("no loss to analyse", "--loss OUTPUT=LOSS", "C, D")),
    ("loss-for-missing-output", "good", ("--loss", "E=mse"), ("'E' is not an output", "outputs are: C, D")),
    ("loss-for-intermediate-layer", "good", ("--loss", "trunk=mse"), ("'trunk' is an intermediate layer", "C, D")),
    ("unknown-loss-name", "good", ("--loss", "D=mean_squared_errr"), ("unknown loss 'mean_squared_errr'", "valid:")),
    ("unknown-bare-loss", "good", ("--loss", "nosuchloss"), ("unknown loss 'nosuchloss'",)),
    ("loss-without-value", "good", ("--loss", "D="), ("OUTPUT=VALUE",)),
    ("weight-negative", "good", ("--loss-weight", "C=-1"), ("'-1'", ">= 0")),
    ("weight-nan", "good", ("--loss-weight", "C=nan"), ("'nan'", "finite number >= 0")),
    ("weight-inf", "good", ("--loss-weight", "C=inf"), ("'inf'", "finite number >= 0")),
    ("weight-not-a-number", "good", ("--loss-weight", "C=heavy"), ("'heavy' is not a number",)),
    ("weight-without-name", "good", ("--loss-weight", "0.5"), ("OUTPUT=VALUE",)),
    ("weight-for-missing-output", "good", ("--loss-weight", "E=1"), ("'E' is not an output", "C, D")),
    ("weight-regularization-without-any", "good", ("--loss-weight", "regularization=1"), ("no regularization",)),
    ("batch-size-zero", "good", ("--batch-size", "0"), ("batch",)),
    ("batches-negative", "good", ("--batches", "-2"), ("batches",)),
    ("custom-objects-missing", "good", ("--custom-objects", "nope.py"), ("custom objects file not found",)),
]


@pytest.mark.parametrize(
    "model, args, fragments", [c[1:] for c in LOSS_CASES], ids=[c[0] for c in LOSS_CASES]
)
def test_bad_loss_or_option(cli: Any, files: dict[str, Path], model: str, args: tuple[str, ...],
                            fragments: tuple[str, ...]) -> None:
    assert_one_error(cli("inspect", files[model], "--batch-size", "2", *args), *fragments)


def test_custom_objects_file_that_raises(cli: Any, files: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "objects.py"
    broken.write_text("import nonexistent_module_xyz\n")
    assert_one_error(cli("inspect", files["good"], "--custom-objects", broken), "failed to import",
                     "ModuleNotFoundError")


def test_custom_objects_not_python(cli: Any, files: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "objects.txt"
    other.write_text("x")
    assert_one_error(cli("inspect", files["good"], "--custom-objects", other), "(.py)")


# -- data ---------------------------------------------------------------------------------------------


def _npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def _good_arrays(rows: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((rows, 3)).astype("float32"),
        "y:C": rng.integers(0, 2, (rows, 1)).astype("float32"),
        "y:D": rng.standard_normal((rows, 1)).astype("float32"),
    }


def _with(**changes: Any) -> dict[str, Any]:
    arrays: dict[str, Any] = _good_arrays()
    for key, value in changes.items():
        key = key.replace("__", ":")
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    return arrays


def _nan_x() -> dict[str, Any]:
    arrays = _good_arrays()
    arrays["x"][1, 2] = np.nan
    return arrays


def _inf_y() -> dict[str, Any]:
    arrays = _good_arrays()
    arrays["y:D"][0, 0] = np.inf
    return arrays


DATA_CASES: list[tuple[str, Callable[[], dict[str, Any]], tuple[str, ...]]] = [
    ("missing-target-key", lambda: _with(y__D=None), ("'y:D'", "expected keys: x, y:C, y:D", "keys found")),
    ("missing-input-key", lambda: _with(x=None), ("'x'", "expected keys: x, y:C, y:D")),
    ("wrong-shape", lambda: _with(x=np.zeros((4, 5), "float32")), ("'x' has shape (4, 5)", "expects (rows, 3)")),
    ("wrong-rank", lambda: _with(x=np.zeros((4,), "float32")), ("'x' has shape (4,)", "expects (rows, 3)")),
    ("wrong-dtype", lambda: _with(x=np.full((4, 3), "a")), ("dtype <U1", "expected numbers")),
    ("scalar", lambda: _with(x=np.float32(1.0)), ("scalar",)),
    ("too-few-rows", lambda: _with(x=np.zeros((1, 3), "float32")), ("1 rows", "--batch-size 2")),
    ("nan-in-inputs", _nan_x, ("'x' has NaN at row 1 (1 of the 2 rows used)", "non-finite input data")),
    ("inf-in-targets", _inf_y, ("'y:D' has Inf at row 0 (1 of the 2 rows used)",)),
]


@pytest.mark.parametrize("make, fragments", [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data(cli: Any, files: dict[str, Path], tmp_path: Path, make: Any, fragments: tuple[str, ...]) -> None:
    data = _npz(tmp_path / "batch.npz", **make())
    assert_one_error(cli("inspect", files["good"], "--data", data, "--batch-size", "2"), *fragments)


def test_data_not_npz(cli: Any, files: dict[str, Path], tmp_path: Path) -> None:
    csv = tmp_path / "batch.csv"
    csv.write_text("1,2,3\n")
    assert_one_error(cli("inspect", files["good"], "--data", csv), "not an .npz file", "numpy.savez")


def test_data_npz_named_but_not_zip(cli: Any, files: dict[str, Path], tmp_path: Path) -> None:
    fake = tmp_path / "batch.npz"
    fake.write_text("x,y\n")
    assert_one_error(cli("inspect", files["good"], "--data", fake), "not an .npz file")


def test_data_missing(cli: Any, files: dict[str, Path], tmp_path: Path) -> None:
    assert_one_error(cli("inspect", files["good"], "--data", tmp_path / "nope.npz"), "no such data file")


def test_data_single_array_npy(cli: Any, files: dict[str, Path], tmp_path: Path) -> None:
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros((4, 3)))
    assert_one_error(cli("inspect", files["good"], "--data", npy), "not an .npz file")


def test_data_object_array(cli: Any, files: dict[str, Path], tmp_path: Path) -> None:
    arrays: dict[str, Any] = _good_arrays()
    arrays["x"] = np.array([[{"a": 1}] * 3] * 4, dtype=object)
    data = _npz(tmp_path / "batch.npz", **arrays)
    assert_one_error(cli("inspect", files["good"], "--data", data, "--batch-size", "2"), "'x'", "pickle")


def test_string_inputs_without_data(cli: Any, files: dict[str, Path]) -> None:
    assert_one_error(cli("inspect", files["strings"], "--batch-size", "2"),
                     "input 'words' takes strings", "--data")


# -- outputs ------------------------------------------------------------------------------------------


def test_output_dir_missing(cli: Any, files: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "report.json"
    assert_one_error(cli("inspect", files["good"], "-o", target), "directory", "does not exist")
    assert not target.parent.exists()


def test_output_parent_is_a_file(cli: Any, files: dict[str, Path], tmp_path: Path) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("a file where a directory should be")
    assert_one_error(cli("inspect", files["good"], "-o", blocker / "report.json"), "is not a directory")
    assert blocker.read_text() == "a file where a directory should be"


def test_output_is_a_directory(cli: Any, files: dict[str, Path], tmp_path: Path) -> None:
    assert_one_error(cli("inspect", files["good"], "-o", tmp_path), "is a directory", "file name")


@pytest.mark.skipif(IS_ROOT, reason="root ignores permission bits; covered by the /proc and file-as-directory cases")
def test_output_dir_read_only(cli: Any, files: dict[str, Path], tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert_one_error(cli("inspect", files["good"], "-o", locked / "report.json"), "permission denied")
    finally:
        locked.chmod(0o755)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_output_unwritable_even_for_root(cli: Any, files: dict[str, Path]) -> None:
    # /proc refuses new files whatever the permission bits say, so this works as root too.
    assert_one_error(cli("inspect", files["good"], "--batch-size", "2", "-o", "/proc/gradviz-report.json"),
                     "cannot write /proc/gradviz-report.json")


@pytest.mark.parametrize("name, fragments", [
    ("report.xlsx", ("unknown output format", "'.xlsx'" , "valid: .dot, .graphml, .html, .json, .pdf, .png, .svg")),
    ("report", ("has no extension", "valid: .dot, .graphml, .html, .json, .pdf, .png, .svg")),
])
def test_output_unknown_extension(cli: Any, files: dict[str, Path], tmp_path: Path, name: str,
                                  fragments: tuple[str, ...]) -> None:
    assert_one_error(cli("inspect", files["good"], "-o", tmp_path / name), *fragments)
    assert not (tmp_path / name).exists()


def test_unknown_format_option(cli: Any, files: dict[str, Path], tmp_path: Path) -> None:
    assert_one_error(cli("inspect", files["good"], "-o", tmp_path / "r.json", "--format", "yaml"),
                     "--format 'yaml'", "valid: dot, graphml, html, json, pdf, png, svg (or .dot, .graphml,")


# -- usage errors are click's: exit 2 ------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ("--no-such-option",),
    ("--batch-mode", "sometimes"),
    ("--batch-size", "many"),
    ("--fail-on", "info"),
])
def test_usage_errors_exit_2(cli: Any, files: dict[str, Path], args: tuple[str, ...]) -> None:
    result = cli("inspect", files["good"], *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith("Error: ")


def test_missing_model_argument_exits_2(cli: Any) -> None:
    result = cli("inspect")
    assert result.exit_code == 2
    assert "Missing argument 'MODEL'" in result.stderr


# -- the real executable -------------------------------------------------------------------------------

SUBPROCESS_CASES = ["missing", "unknown-class"]


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_subprocess_bad_model_file(files: dict[str, Path], case: str) -> None:
    make, fragments = next(c[1:] for c in MODEL_FILE_CASES if c[0] == case)
    path = make(files["dir"], files)
    assert_one_error(rm.run_gradviz("inspect", path), *fragments)


def test_subprocess_bad_data_and_output(files: dict[str, Path], tmp_path: Path) -> None:
    data = _npz(tmp_path / "batch.npz", **_nan_x())
    assert_one_error(rm.run_gradviz("inspect", files["good"], "--data", data, "--batch-size", "2"),
                     "'x' has NaN at row 1")
    assert_one_error(rm.run_gradviz("inspect", files["good"], "-o", tmp_path / "r.yaml"), "unknown output format")


def test_subprocess_usage_error_exits_2(files: dict[str, Path]) -> None:
    result = rm.run_gradviz("inspect", files["good"], "--batch-mode", "sometimes")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
