"""The monitor's probe: fit-style arrays and datasets through the fit-style data path, bad probes refused in one line."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from gradviz.data import Layout, TensorInfo
from gradviz.data.probe import probe_data
from gradviz.errors import DataError

INPUTS = (TensorInfo("a", (None, 3), "float32"), TensorInfo("b", (None, 2), "float32"))
TARGETS = (TensorInfo("C", (None, 1), "float32"), TensorInfo("D", (None, 1), "float32"))
LAYOUT = Layout(INPUTS, TARGETS, ("C", "D"), {"C": "binary_crossentropy", "D": "mse"})


def arrays(rows: int = 8) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    x = {"a": rng.standard_normal((rows, 3)).astype("float32"), "b": rng.standard_normal((rows, 2)).astype("float32")}
    return x, {"C": np.ones((rows, 1), "float32"), "D": np.zeros((rows, 1), "float32")}


def read(data: object) -> list[object]:
    return list(data.iter_batches())  # type: ignore[attr-defined]


def test_dicts_lists_and_batches() -> None:
    x, y = arrays()
    by_name = probe_data((x, y), LAYOUT, batch_size=4)
    in_order = probe_data(([x["a"], x["b"]], [y["C"], y["D"]]), LAYOUT, batch_size=4)
    for d in (by_name, in_order):
        assert (d.batches, d.batch_size, d.synthetic, d.guessed) == (2, 4, False, ())
        batches = read(d)
        assert np.array_equal(np.concatenate([b.x[0] for b in batches]), x["a"])  # type: ignore[attr-defined]
        assert np.array_equal(np.concatenate([b.y["D"] for b in batches]), y["D"])  # type: ignore[attr-defined]
    whole = probe_data((x, y), LAYOUT)
    assert (whole.batches, whole.batch_size) == (1, 8)
    cut = read(probe_data((x, y), LAYOUT, batch_size=3))
    assert [b.rows for b in cut] == [3, 3]  # type: ignore[attr-defined]  # whole batches only: one trace


def test_sample_weights_reach_every_batch() -> None:
    x, y = arrays()
    weights = {"C": np.arange(8, dtype="float32"), "D": np.full(8, 2.0, "float32")}
    batches = read(probe_data((x, y, weights), LAYOUT, batch_size=4))
    assert [b.sample_weight["C"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # type: ignore[attr-defined]
    one = read(probe_data((x, y, np.full(8, 3.0, "float32")), LAYOUT))[0]  # one array weighs every loss
    assert sorted(one.sample_weight) == ["C", "D"]  # type: ignore[attr-defined]


def test_a_dataset_keeps_its_batches_as_fit_reads_them() -> None:
    x, y = arrays(10)
    weights = np.linspace(0, 1, 10).astype("float32")
    d = probe_data(tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(4), LAYOUT)
    batches = read(d)
    assert d.batches == 3 and [b.rows for b in batches] == [4, 4, 2]  # type: ignore[attr-defined]
    assert np.array_equal(np.concatenate([b.sample_weight["D"] for b in batches]), weights)  # type: ignore[attr-defined]
    assert len(read(d)) == 3  # read again at the next probe: the same batches


def test_a_py_dataset_probe() -> None:
    x, y = arrays()

    class Probe(keras.utils.PyDataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> object:
            rows = slice(4 * i, 4 * i + 4)
            return {k: v[rows] for k, v in x.items()}, {k: v[rows] for k, v in y.items()}

    assert probe_data(Probe(), LAYOUT).batches == 2


@pytest.mark.parametrize("probe, message", [
    ("not data", "the probe must be (x, y), (x, y, sample_weight), a tf.data.Dataset"),
    ((b for b in [arrays()]), "generator, which can be read only once"),
    (({"a": np.zeros((8, 3), "float32")}, arrays()[1]), "x has no array for input 'b' (expects (batch, 2) float32)"),
    (({**arrays()[0], "zz": np.zeros((8, 1))}, arrays()[1]), "x has key 'zz', which names no input of the model"),
    ((arrays()[0], {"C": np.ones((8, 1))}), "no targets for output 'D' (mse, expects (batch, 1)); y has: C"),
    ((arrays()[0], np.ones((8, 1))), "y is one array; the model has 2 outputs with a loss"),
    (({"a": np.zeros((8, 3), "float32"), "b": np.zeros((7, 2), "float32")}, arrays()[1]),
     "input 'a': 8 rows, but input 'b': 7 rows"),
    (({"a": np.zeros((8, 4), "float32"), "b": np.zeros((8, 2), "float32")}, arrays()[1]),
     "input 'a' expects (batch, 3) float32; got (8, 4) float32"),
    ((arrays()[0], arrays()[1], {"Q": np.ones(8)}), "sample_weight has key 'Q', which names no output"),
])
def test_bad_probes_are_refused_in_one_line(probe: object, message: str) -> None:
    with pytest.raises(DataError) as caught:
        probe_data(probe, LAYOUT)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_nan_in_a_probe_is_refused_when_read() -> None:
    x, y = arrays()
    d = probe_data(({"a": np.full((8, 3), np.nan, "float32"), "b": x["b"]}, y), LAYOUT)
    with pytest.raises(DataError, match="input 'a': NaN or Inf"):
        read(d)


def test_batch_size_is_for_arrays_and_at_most_the_rows() -> None:
    x, y = arrays()
    with pytest.raises(DataError, match="fewer than its `batch_size` 9"):
        probe_data((x, y), LAYOUT, batch_size=9)
    with pytest.raises(DataError, match="a dataset probe keeps its own batches"):
        probe_data(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), LAYOUT, batch_size=2)
