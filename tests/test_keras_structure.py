"""Every Keras input structure: models declared with a dict (any key order), nested dicts and lists, a list,
a single tensor are called with their own structure, from .npz and from synthetic data, and their figures
match separate GradientTapes and Keras's own training step.

Also pins what ``gradviz.model.keras_structure`` reads of Keras (``Functional._inputs_struct``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import keras
import numpy as np
import pytest
from keras import layers

import gradviz
from gradviz.model import topology
from gradviz.errors import DataError
from gradviz.model.keras_structure import flat_input_tensors, input_structure, to_model_inputs
from independent import check_report, gradviz_synthetic, write_npz

SGD = keras.optimizers.SGD  # learning rate 1: the weight change is minus the applied gradient


def _heads(trunk: Any) -> dict[str, Any]:
    return {
        "priority": layers.Dense(1, name="priority")(trunk),
        "dept": layers.Dense(4, activation="softmax", name="dept")(trunk),
    }


LOSSES = {"priority": "mse", "dept": "sparse_categorical_crossentropy"}


def _compile(model: keras.Model) -> keras.Model:
    model.compile(optimizer=SGD(learning_rate=1.0), loss=LOSSES, loss_weights={"priority": 0.5, "dept": 1.0})
    return model


def unsorted_dict() -> keras.Model:
    """The issue's case: ``{"text": ..., "numbers": ...}``, keys not in sorted order."""
    keras.utils.set_random_seed(0)
    text = keras.Input((6,), dtype="int32", name="text")
    numbers = keras.Input((3,), name="numbers")
    words = layers.GlobalAveragePooling1D(name="pool")(layers.Embedding(30, 4, name="emb")(text))
    trunk = layers.Dense(8, activation="tanh", name="trunk")(
        layers.Concatenate(name="cat")([words, layers.Dense(4, name="num")(numbers)]))
    return _compile(keras.Model({"text": text, "numbers": numbers}, _heads(trunk), name="unsorted_dict"))


def nested() -> keras.Model:
    """A dict of a dict and a list: ``{"tabular": {"price": .., "age": ..}, "series": [s2, s1]}``."""
    keras.utils.set_random_seed(1)
    price, age = keras.Input((2,), name="price"), keras.Input((1,), name="age")
    s2, s1 = keras.Input((4,), name="s2"), keras.Input((5,), name="s1")
    parts = [layers.Dense(3, name=f"d_{t.name}")(t) for t in (price, age, s2, s1)]
    trunk = layers.Dense(8, activation="tanh", name="trunk")(layers.Concatenate(name="cat")(parts))
    inputs = {"tabular": {"price": price, "age": age}, "series": [s2, s1]}
    return _compile(keras.Model(inputs, _heads(trunk), name="nested"))


def single_tensor() -> keras.Model:
    keras.utils.set_random_seed(2)
    x = keras.Input((5,), name="features")
    return _compile(keras.Model(x, _heads(layers.Dense(8, activation="tanh", name="trunk")(x)), name="single"))


def listed() -> keras.Model:
    """A list whose names are not in sorted order: ``[zeta, alpha]``."""
    keras.utils.set_random_seed(3)
    zeta, alpha = keras.Input((3,), name="zeta"), keras.Input((2,), name="alpha")
    trunk = layers.Dense(8, activation="tanh", name="trunk")(
        layers.Concatenate(name="cat")([layers.Dense(4, name="dz")(zeta), alpha]))
    return _compile(keras.Model([zeta, alpha], _heads(trunk), name="listed"))


def one_in_a_list() -> keras.Model:
    keras.utils.set_random_seed(4)
    x = keras.Input((5,), name="features")
    return _compile(keras.Model([x], _heads(layers.Dense(8, activation="tanh", name="trunk")(x)), name="one_list"))


#: each model, and how a user would pass arrays named by input to it (written out, not packed by gradviz)
CASES: dict[str, tuple[Callable[[], keras.Model], Callable[[dict[str, np.ndarray]], Any]]] = {
    "unsorted_dict": (unsorted_dict, lambda a: {"text": a["text"], "numbers": a["numbers"]}),
    "nested": (nested, lambda a: {"tabular": {"price": a["price"], "age": a["age"]}, "series": [a["s2"], a["s1"]]}),
    "single_tensor": (single_tensor, lambda a: a["features"]),
    "listed": (listed, lambda a: [a["zeta"], a["alpha"]]),
    "one_in_a_list": (one_in_a_list, lambda a: [a["features"]]),
}


def _targets(rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"priority": rng.standard_normal((rows, 1)).astype("float32"),
            "dept": rng.integers(0, 4, (rows,)).astype("int32")}


def _arrays(model: keras.Model, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = {}
    for t in flat_input_tensors(model):
        name = t._keras_history[0].name
        shape = (rows,) + tuple(t.shape[1:])
        out[name] = rng.integers(0, 30, shape).astype("int32") if "int" in t.dtype else \
            rng.standard_normal(shape).astype("float32")
    return out


# -- the one packing function ---------------------------------------------------------------


def test_to_model_inputs_gives_each_declared_structure() -> None:
    flat = ["numbers array", "text array"]  # Keras's flat order: sorted keys
    assert to_model_inputs(unsorted_dict(), flat) == {"text": "text array", "numbers": "numbers array"}
    assert list(to_model_inputs(unsorted_dict(), flat)) == ["text", "numbers"]  # the model's own key order
    model = nested()
    names = topology.input_names(model)
    assert names == ["s2", "s1", "age", "price"]  # "series" < "tabular"; inside tabular "age" < "price"
    assert to_model_inputs(model, names) == {"tabular": {"price": "price", "age": "age"}, "series": ["s2", "s1"]}
    assert to_model_inputs(single_tensor(), ["x"]) == "x"
    assert to_model_inputs(listed(), ["z", "a"]) == ["z", "a"]
    assert to_model_inputs(one_in_a_list(), ["x"]) == ["x"]
    with pytest.raises(ValueError, match="takes 2 input"):
        to_model_inputs(listed(), ["z"])


def test_sequential_and_keras_internals_it_reads() -> None:
    """Pins Functional._inputs_struct (model.input) and the flat order for the Keras versions gradviz supports."""
    model = unsorted_dict()
    assert input_structure(model) is model.input
    assert [t.name for t in flat_input_tensors(model)] == [t.name for t in model.inputs] == ["numbers", "text"]
    seq = keras.Sequential([keras.Input((3,), name="s_in"), layers.Dense(2, name="s_d")])
    assert to_model_inputs(seq, ["only"]) == "only"
    assert [t.name for t in flat_input_tensors(seq)] == topology.input_names(seq) == ["s_in"]


def test_flat_list_of_an_unsorted_dict_model_is_refused_by_keras() -> None:
    """Why the packing exists: if Keras starts accepting this, the packing is still right, but say so."""
    model = unsorted_dict()
    rng = np.random.default_rng(0)
    arrays = _arrays(model, 2, rng)
    with pytest.raises(ValueError, match="structure"):
        model([arrays["numbers"], arrays["text"]])


# -- the numbers, per structure ----------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_structure_from_npz_matches_tapes_and_keras_step(case: str, tmp_path: Path) -> None:
    build, pack = CASES[case]
    model = build()
    rng = np.random.default_rng(10)
    arrays, y = _arrays(model, 8, rng), _targets(8, rng)
    report = gradviz.analyze(model, data=write_npz(tmp_path / "d.npz", arrays, y), batch_size=8)
    assert {n for n, a in report.graph.nodes(data=True) if a["kind"] == "input"} == set(arrays)
    assert check_report(report, model, pack(arrays), y, LOSSES) == len(model.trainable_variables)


@pytest.mark.parametrize("case", sorted(CASES))
def test_structure_from_synthetic_data_matches_tapes_and_keras_step(case: str, tmp_path: Path) -> None:
    build, pack = CASES[case]
    model = build()
    synthetic = gradviz.analyze(model, batch_size=6, seed=3)
    # the very arrays the synthetic run used, written out and passed by name
    arrays, y = gradviz_synthetic(model, 6, seed=3)
    from_file = gradviz.analyze(model, data=write_npz(tmp_path / "s.npz", arrays, y), batch_size=6)
    assert [v.combined_grad_norm for v in synthetic.variables] == [v.combined_grad_norm for v in from_file.variables]
    if case == "unsorted_dict":
        assert arrays["text"].max() < 30  # ids below the Embedding's vocabulary
    assert check_report(synthetic, model, pack(arrays), y, LOSSES) == len(model.trainable_variables)


def test_unsorted_dict_through_the_cli(cli: Any, tmp_path: Path) -> None:
    model = unsorted_dict()
    path = tmp_path / "m.keras"
    model.save(path)
    result = cli("inspect", path, "--json", "--batch-size", "4")
    assert result.exit_code == 0, result.stderr
    assert '"name": "text"' in result.stdout and '"name": "numbers"' in result.stdout


# -- errors that name the input -------------------------------------------------------------------


def test_npz_shape_mismatch_names_the_input(tmp_path: Path) -> None:
    model = unsorted_dict()
    rng = np.random.default_rng(0)
    arrays, y = _arrays(model, 4, rng), _targets(4, rng)
    arrays["numbers"] = arrays["numbers"][:, :2]
    with pytest.raises(DataError, match=r"'x:numbers' has shape \(4, 2\); 'numbers' expects \(rows, 3\)"):
        gradviz.analyze(model, data=write_npz(tmp_path / "d.npz", arrays, y), batch_size=4)


def test_model_failure_lists_the_inputs_it_got(tmp_path: Path) -> None:
    """Inputs of unknown length that must agree: which one does not is in the message."""
    keras.utils.set_random_seed(0)
    a, b = keras.Input((None, 2), name="a"), keras.Input((None, 2), name="b")
    out = layers.Dense(1, name="out")(layers.GlobalAveragePooling1D(name="pool")(layers.Add(name="add")([a, b])))
    model = keras.Model({"b": b, "a": a}, out)
    model.compile(loss="mse")
    arrays = {"a": np.zeros((4, 5, 2), "float32"), "b": np.zeros((4, 7, 2), "float32")}
    with pytest.raises(DataError, match=r"cannot run on the data \(inputs: a \(4, 5, 2\) float32, b \(4, 7, 2\) float32\)"):
        gradviz.analyze(model, data=write_npz(tmp_path / "d.npz", arrays, {"out": np.zeros((4, 1), "float32")}),
                        batch_size=4)
