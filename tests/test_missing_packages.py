"""A saved model whose classes come from a package that is not installed: one line naming what to install
(or --custom-objects for one's own classes), never Keras's nested config dump."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gradviz.model.loading import _explain_load_failure
ROOT = Path(__file__).resolve().parents[1]


def keras_message(cls: str, module: str) -> ValueError:
    return ValueError(f"Could not deserialize class '{cls}' because its parent module {module} cannot be imported. "
                      f"Full object config: {{'module': '{module}', 'class_name': '{cls}', 'config': {{...}}}}")


@pytest.mark.parametrize("module, pip", [("keras_hub_not_here.src.models", None),
                                         ("keras_cv", "keras-cv"), ("keras_nlp.models.bert", "keras-nlp")])
def test_missing_package_is_named(module: str, pip: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    top = module.split(".")[0]
    monkeypatch.setitem(sys.modules, top, None)  # not importable, whatever is installed here
    message = _explain_load_failure(Path("m.keras"), keras_message("Backbone", module))
    assert "\n" not in message and "Full object config" not in message
    assert f"from {module}, but the package {top} is not installed" in message
    if pip:  # a known package: its pip name, and nothing about custom objects
        assert message.endswith(f"pip install {pip}")
    else:  # unknown: the import name, or --custom-objects for one's own class
        assert f"pip install {top}; or, if 'Backbone' is your own class, pass `custom_objects=FILE.py`" in message


def test_installed_package_missing_a_dependency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "fakehub"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "layers.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    message = _explain_load_failure(Path("m.keras"), keras_message("Fancy", "fakehub.layers"))
    assert message == ("m.keras uses class 'Fancy' from fakehub.layers, which cannot be imported because fakehub "
                       "needs no_such_dependency_xyz, which is not installed: pip install no_such_dependency_xyz")


def test_class_from_the_saving_script() -> None:
    message = _explain_load_failure(Path("m.keras"), keras_message("Twice", "__main__"))
    assert "`custom_objects=FILE.py`" in message and "pip install" not in message


def test_saved_keras_hub_model_without_keras_hub(tmp_path: Path) -> None:
    """Save a KerasHub model, then inspect it in a fresh process where keras_hub cannot be imported."""
    pytest.importorskip("keras_hub")
    import keras
    import keras_hub
    from keras import layers

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=20, num_layers=1, num_heads=2, hidden_dim=4,
                                             intermediate_dim=8, max_sequence_length=8, dropout=0.0)
    features = backbone(backbone.input)
    model = keras.Model(backbone.input, {"a": layers.Dense(2, name="a")(features["pooled_output"]),
                                         "b": layers.Dense(1, name="b")(features["pooled_output"])})
    model.compile(loss="mse")
    path = tmp_path / "bert.keras"
    model.save(path)
    prelude = textwrap.dedent(f"""
        import sys
        sys.modules["keras_hub"] = None  # as if keras-hub were not installed
        from gradviz.cli import main
        sys.argv = ["gradviz", "inspect", {str(path)!r}]
        main()
    """)
    result = subprocess.run([sys.executable, "-c", prelude], capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: {path} uses class 'BertBackbone' from keras_hub.src.models.bert.bert_backbone, "
                      "but the package keras_hub is not installed: pip install keras-hub"], result.stderr
    assert "Traceback" not in result.stderr
