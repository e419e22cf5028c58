"""``--custom-objects`` resolves names as Keras does: registered names, sibling modules, exact identifiers.

The model is saved in a separate process with ``@register_keras_serializable(package="my")``,
so this process has never registered ``my>Scale`` (as for a user loading a downloaded file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gradviz.model.loading import import_custom_objects, registered_names
from test_bad_input import assert_one_error

ROOT = Path(__file__).resolve().parents[1]

SAVE = textwrap.dedent('''
    import sys
    import keras
    from keras import layers, ops

    @keras.saving.register_keras_serializable(package="my")
    class Scale(layers.Layer):
        def call(self, x):
            return x * 3.0

    @keras.saving.register_keras_serializable(package="my")
    def scaled_mse(y_true, y_pred):
        return ops.mean(ops.square(y_true - y_pred)) * 10.0

    x = keras.Input((3,), name="features")
    trunk = layers.Dense(4, name="trunk")(x)
    c = layers.Dense(1, name="C")(Scale(name="scale")(trunk))
    d = layers.Dense(1, name="D")(trunk)
    model = keras.Model(x, [c, d])
    model.compile(loss=[scaled_mse, "mse"])
    model.save(sys.argv[1])
''')

#: what a user writes after the fact: the classes, without the registration
PLAIN = textwrap.dedent('''
    import keras
    from keras import ops

    class Scale(keras.layers.Layer):
        def call(self, x):
            return x * 3.0

    def scaled_mse(y_true, y_pred):
        return ops.mean(ops.square(y_true - y_pred)) * 10.0
''')


@pytest.fixture(scope="module")
def registered_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("registered") / "reg.keras"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", SAVE, str(path)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return path


def test_the_config_names_what_keras_looks_up(registered_model: Path) -> None:
    import zipfile

    config = json.loads(zipfile.ZipFile(registered_model).read("config.json"))
    assert registered_names(config) == {"my>Scale": "Scale", "my>scaled_mse": "scaled_mse"}


def test_registered_names_match_the_files_classes_by_class_name(cli: Any, registered_model: Path,
                                                                tmp_path: Path) -> None:
    objects = tmp_path / "plain_objects.py"
    objects.write_text(PLAIN)
    result = cli("inspect", registered_model, "--custom-objects", objects, "--batch-size", "2", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["losses"][0]["loss"] == "my>scaled_mse"
    assert "scale" in {layer["name"] for layer in report["layers"]}


def test_the_file_imports_modules_beside_it(cli: Any, registered_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "gradviz_test_sibling_objs.py").write_text(PLAIN)
    objects = folder / "objects.py"
    objects.write_text("from gradviz_test_sibling_objs import Scale, scaled_mse\n")
    path_before = list(sys.path)
    found = import_custom_objects(objects)
    assert sorted(found) == ["Scale", "scaled_mse"]  # imported from a sibling: still the file's objects
    assert sys.path == path_before  # the folder is on sys.path only while the file is imported
    result = cli("inspect", registered_model, "--custom-objects", objects, "--batch-size", "2", "--json")
    assert result.exit_code == 0, result.stderr


def test_unknown_class_names_the_registered_identifier(cli: Any, registered_model: Path) -> None:
    assert_one_error(cli("inspect", registered_model, "--batch-size", "2"),
                     "unknown class or function 'my>Scale' (class Scale)",
                     "pass --custom-objects FILE.py with a Python file that defines class Scale")


def test_a_file_without_the_class_is_named_with_what_it_defines(cli: Any, registered_model: Path,
                                                                tmp_path: Path) -> None:
    objects = tmp_path / "other.py"
    objects.write_text("import keras\n\nclass Shift(keras.layers.Layer):\n    pass\n")
    assert_one_error(cli("inspect", registered_model, "--custom-objects", objects, "--batch-size", "2"),
                     "'my>Scale' (class Scale)", f"which {objects} neither defines nor registers",
                     "it defines: Shift")


def test_unknown_loss_names_the_registered_identifier(cli: Any, registered_model: Path, tmp_path: Path) -> None:
    objects = tmp_path / "only_scale.py"
    objects.write_text("import keras\n\nclass Scale(keras.layers.Layer):\n    def call(self, x):\n"
                       "        return x * 3.0\n")
    assert_one_error(cli("inspect", registered_model, "--custom-objects", objects, "--batch-size", "2"),
                     "unknown loss 'my>scaled_mse'", "--custom-objects")
