"""Bad fit-style data: one clear DataError naming the input or output, what it expects and what it got.

Most cases fail before any gradient is traced (keys, shapes and rows are checked as the
data is named, each batch before it reaches the model), so the corpus is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import tensorflow as tf

import gradviz
import robust_models as rm
from gradviz.errors import DataError, GradvizError
from test_bad_input import assert_one_error
from test_fit_data import ORDER, SW, X, Y, Batches, batches_of, heads

Case = Callable[[], dict[str, Any]]


def _y(**change: Any) -> dict[str, Any]:
    return {**Y, **change}


def _bad_generator() -> Iterator[Any]:
    yield X[:16], {k: v[:16] for k, v in Y.items()}
    yield X[16:32], {k: v[16:31] for k, v in Y.items()}  # one target row short


def _endless() -> Iterator[Any]:
    while True:
        yield X[:16], {k: v[:16] for k, v in Y.items()}


def _nothing() -> Iterator[Any]:
    return
    yield


def _dataset(x: Any = X, y: Any = None, size: int = 16) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((x, tuple(Y[k] for k in ORDER) if y is None else y)).batch(size)


CASES: list[tuple[str, Case, tuple[str, ...]]] = [
    # names
    ("x-wrong-key", lambda: {"x": {"feature": X}, "y": Y},
     ("x has key 'feature', which names no input of the model; inputs: 'features' (batch, 6) float32",)),
    ("y-wrong-key", lambda: {"x": X, "y": {**Y, "flg": Y["flag"]}},
     ("y has key 'flg', which names no output of the model; outputs: cls, reg, flag",)),
    ("y-missing-output", lambda: {"x": X, "y": {"cls": Y["cls"], "reg": Y["reg"]}},
     ("no targets for output 'flag' (binary_crossentropy, expects (batch, 1)); y has: cls, reg",)),
    ("no-y", lambda: {"x": X},
     ("no targets (y); the losses of 'cls' (sparse_categorical_crossentropy, expects class ids (batch,)), 'reg'",)),
    ("sample-weight-wrong-key", lambda: {"x": X, "y": Y, "sample_weight": {"clss": SW["cls"]}},
     ("sample_weight has key 'clss', which names no output",)),
    ("x-list-too-long", lambda: {"x": [X, X], "y": Y},
     ("x is a list of 2 arrays; the model has 1 input(s): 'features' (batch, 6) float32",)),
    ("y-one-array", lambda: {"x": X, "y": Y["reg"]},
     ("y is one array; the model has 3 outputs with a loss: cls, reg, flag",)),
    ("y-list-of-two", lambda: {"x": X, "y": [Y["cls"], Y["reg"]]},
     ("y is a list of 2 arrays; the model has 3 output(s) (cls, reg, flag), 3 with a loss",)),
    # batch dimension
    ("rows-arrays", lambda: {"x": X, "y": _y(reg=Y["reg"][:39])},
     ("input 'features': 40 rows, but targets of 'reg': 39 rows; every array needs one row per sample",)),
    ("rows-weights", lambda: {"x": X, "y": Y, "sample_weight": {"reg": SW["reg"][:30]}},
     ("input 'features': 40 rows, but sample_weight of 'reg': 30 rows",)),
    ("rows-in-a-generator-batch", lambda: {"x": _bad_generator(), "steps": 2},
     ("batch 2 of the generator: input 'features': 16 rows, but targets of 'cls': 15 rows",)),
    # shapes and dtypes
    ("x-shape", lambda: {"x": X[:, :5], "y": Y},
     ("input 'features' expects (batch, 6) float32; got (40, 5) float32",)),
    ("x-shape-in-a-dataset", lambda: {"x": _dataset(X[:, :5])},
     ("batch 1 of the tf.data.Dataset: input 'features' expects (batch, 6) float32; got (16, 5) float32",)),
    ("x-strings", lambda: {"x": np.full((40, 6), "a"), "y": Y},
     ("input 'features' expects (batch, 6) float32; got dtype <U1",)),
    ("rows-not-batches", lambda: {"x": tf.data.Dataset.from_tensor_slices((X, tuple(Y[k] for k in ORDER)))},
     ("input 'features' expects (batch, 6) float32; got (6,) float32 (single rows, not batches",)),
    ("one-hot-for-sparse", lambda: {"x": X, "y": _y(cls=np.eye(4, dtype="float32")[Y["cls"]])},
     ("targets of output 'cls' (sparse_categorical_crossentropy) expect class ids (batch,); got (40, 4) float32",)),
    ("target-shape", lambda: {"x": X, "y": _y(reg=np.zeros((40, 3), "float32"))},
     ("targets of output 'reg' (mse) expect (batch, 1); got (40, 3) float32",)),
    ("ids-out-of-range", lambda: {"x": X, "y": _y(cls=np.full(40, 7, "int32")), "batch_size": 40},
     ("targets of output 'cls' (sparse_categorical_crossentropy) hold class ids from 7 to 7; its 4 classes take "
      "ids in [0, 4)",)),
    ("nan-in-a-py-dataset", lambda: {"x": Batches((np.full_like(X, np.nan), tuple(Y[k] for k in ORDER)), 16)},
     ("batch 1 of the PyDataset Batches: input 'features': NaN or Inf values",)),
    ("sample-weight-rank", lambda: {"x": X, "y": Y, "sample_weight": {"reg": np.ones((40, 2, 2))}},
     ("sample_weight of output 'reg' expects one weight per row, (batch,)", "got (40, 2, 2)")),
    ("sample-weight-strings", lambda: {"x": X, "y": Y, "sample_weight": {"reg": np.full(40, "w")}},
     ("sample_weight of output 'reg' must be numbers; got dtype <U1",)),
    # nothing to analyse
    ("empty-dataset", lambda: {"x": _dataset().take(0)}, ("the tf.data.Dataset is empty: no batches to analyse",)),
    ("empty-arrays", lambda: {"x": X[:0], "y": {k: v[:0] for k, v in Y.items()}},
     ("input 'features' has no rows: nothing to analyse",)),
    ("empty-generator", lambda: {"x": _nothing(), "steps": 1}, ("x is a generator that yields nothing",)),
    ("empty-py-dataset", lambda: {"x": Batches((X[:0], tuple(Y[k][:0] for k in ORDER)), 16)},
     ("the PyDataset Batches is empty: no batches to analyse",)),
    # length
    ("endless-generator", lambda: {"x": _endless()},
     ("x is a Python generator, which may never end: pass steps=N, the number of batches to analyse",)),
    ("endless-dataset", lambda: {"x": _dataset().repeat()},
     ("x is an infinite tf.data.Dataset (repeat()): pass steps=N",)),
    ("unknown-length", lambda: {"x": _dataset().filter(lambda x, y: True)},
     ("x is a tf.data.Dataset of unknown length (after filter(), from_generator(), ...), which may never end: "
      "pass steps=N",)),
    ("steps-beyond-arrays", lambda: {"x": X, "y": Y, "batch_size": 16, "steps": 5},
     ("the arrays: 3 batch(es) of 16 rows; `steps=5` asks for more",)),
    ("generator-ends-early", lambda: {"x": batches_of((X, tuple(Y[k] for k in ORDER)), 16), "steps": 5},
     ("the generator ended after 3 batch(es); `steps=5` asks for more",)),
    ("steps-zero", lambda: {"x": X, "y": Y, "steps": 0}, ("`steps` must be at least 1, got 0",)),
    # arguments that do not go together
    ("batch-size-with-dataset", lambda: {"x": _dataset(), "batch_size": 8},
     ("batch_size applies to arrays; x is the tf.data.Dataset, whose own batches are used as they are",)),
    ("y-with-dataset", lambda: {"x": _dataset(), "y": Y}, ("y= goes with arrays; x is the tf.data.Dataset",)),
    ("class-weight-generator", lambda: {"x": _endless(), "steps": 1, "class_weight": {0: 1.0}},
     ("class_weight works with arrays, a tf.data.Dataset or a PyDataset (as in Keras), not with a generator",)),
    ("class-weight-three-outputs", lambda: {"x": X, "y": Y, "class_weight": {0: 1.0}},
     ("class_weight works for a model with one output carrying a loss (as in Keras); this one has 3: cls, reg, "
      "flag",)),
    ("class-and-sample-weight", lambda: {"x": X, "y": Y, "sample_weight": SW, "class_weight": {0: 1.0}},
     ("pass class_weight or sample_weight, not both",)),
    ("class-weight-not-a-dict", lambda: {"x": X, "y": Y, "class_weight": [1.0, 2.0]},
     ("class_weight must be a dict {class id: weight}, got list",)),
    ("data-and-x", lambda: {"x": X, "y": Y, "data": "batch.npz"}, ("pass data= (a file) or x= (data in memory), not both",)),
    ("batches-with-x", lambda: {"x": X, "y": Y, "batches": 2}, ("with x=..., the number of batches is steps=N",)),
    ("steps-without-x", lambda: {"steps": 2}, ("steps= goes with x=...",)),
    ("y-without-x", lambda: {"y": Y}, ("y= goes with x=...",)),
    ("array-as-data", lambda: {"data": X},
     ("data= takes the path of an .npz file or of a tf.data.Dataset.save directory, not a ndarray; pass data in "
      "memory as x=...",)),
    ("x-not-data", lambda: {"x": "features.csv"},
     ("x of type str is not data Model.fit takes; valid: NumPy arrays (one, a list in input order or a dict by "
      "input name), a tf.data.Dataset, a keras.utils.PyDataset or a Python generator",)),
    ("y-not-arrays", lambda: {"x": X, "y": {"cls": list(Y["cls"]), "reg": Y["reg"], "flag": Y["flag"]}},
     ("targets of 'cls' is a list, not an array",)),
]


@pytest.fixture(scope="module")
def session() -> Any:
    return gradviz.prepare(heads())


@pytest.mark.parametrize("make, fragments", [(m, f) for _, m, f in CASES], ids=[c[0] for c in CASES])
def test_bad_fit_data(session: Any, make: Case, fragments: tuple[str, ...]) -> None:
    with pytest.raises(DataError) as caught:
        session.run(progress=None, **make())
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_a_reading_failure_names_the_batch_and_keeps_the_cause(session: Any) -> None:
    class Broken(Batches):
        def __getitem__(self, index: int) -> Any:
            if index == 1:
                raise KeyError("row 17")
            return super().__getitem__(index)

    with pytest.raises(DataError, match=r"reading batch 2 of the PyDataset Broken failed: KeyError: 'row 17'") as caught:
        session.run(x=Broken((X, tuple(Y[k] for k in ORDER)), 16), progress=None)
    assert isinstance(caught.value.__cause__, KeyError)


def test_bad_progress_argument(session: Any) -> None:
    with pytest.raises(GradvizError, match="progress must be a callable, 'auto' or None, got 'sometimes'"):
        session.run(x=X, y=Y, progress="sometimes")


# -- through the CLI: one Error: line --------------------------------------------------------------


@pytest.fixture(scope="module")
def two_heads_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rm.save(rm.two_heads(), tmp_path_factory.mktemp("fit_cli") / "two_heads.keras")


def _saved(directory: Path, x: np.ndarray, c: np.ndarray, d: np.ndarray) -> Path:
    tf.data.Dataset.from_tensor_slices((x, (c, d))).save(str(directory))
    return directory


def test_cli_directory_that_is_no_saved_dataset(cli: Any, two_heads_file: Path, tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    assert_one_error(cli("inspect", two_heads_file, "--data", tmp_path / "plain"),
                     "is a directory but not a saved tf.data.Dataset", "dataset.save(path)")


def test_cli_saved_dataset_that_does_not_fit(cli: Any, two_heads_file: Path, tmp_path: Path) -> None:
    rows = _saved(tmp_path / "ds", np.zeros((8, 5), "float32"), np.zeros((8, 1), "float32"),
                  np.zeros((8, 1), "float32"))
    assert_one_error(cli("inspect", two_heads_file, "--data", rows, "--batch-size", "4"),
                     f"batch 1 of the saved dataset {rows}: input 'features' expects (batch, 3) float32; "
                     "got (4, 5) float32")


def test_cli_saved_dataset_shorter_than_batches(cli: Any, two_heads_file: Path, tmp_path: Path) -> None:
    rows = _saved(tmp_path / "ds", np.zeros((8, 3), "float32"), np.zeros((8, 1), "float32"),
                  np.zeros((8, 1), "float32"))
    assert_one_error(cli("inspect", two_heads_file, "--data", rows, "--batch-size", "4", "--batches", "3"),
                     f"the saved dataset {rows}: 2 batch(es); --batches 3 asks for more")
