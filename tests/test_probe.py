"""The monitor's probe: fit-style arrays and datasets into Data, bad probes refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from gradviz.data import TensorInfo
from gradviz.data.probe import probe_data
from gradviz.errors import DataError

INPUTS = [TensorInfo("a", (None, 3), "float32"), TensorInfo("b", (None, 2), "float32")]
TARGETS = [TensorInfo("C", (None, 1), "float32"), TensorInfo("D", (None, 1), "float32")]
OUTPUTS = ["C", "D"]


def arrays(rows: int = 8) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    x = {"a": rng.standard_normal((rows, 3)).astype("float32"), "b": rng.standard_normal((rows, 2)).astype("float32")}
    return x, {"C": np.ones((rows, 1), "float32"), "D": np.zeros((rows, 1), "float32")}


def test_dicts_lists_and_batches() -> None:
    x, y = arrays()
    by_name = probe_data((x, y), INPUTS, TARGETS, OUTPUTS, batch_size=4)
    in_order = probe_data(([x["a"], x["b"]], [y["C"], y["D"]]), INPUTS, TARGETS, OUTPUTS, batch_size=4)
    for d in (by_name, in_order):
        assert (d.batches, d.batch_size, d.synthetic) == (2, 4, False)
        assert np.array_equal(d.x[0], x["a"]) and np.array_equal(d.x[1], x["b"]) and np.array_equal(d.y["D"], y["D"])
    whole = probe_data((x, y), INPUTS, TARGETS, OUTPUTS)
    assert (whole.batches, whole.batch_size) == (1, 8)
    assert probe_data((x, y), INPUTS, TARGETS, OUTPUTS, batch_size=3).x[0].shape[0] == 6  # whole batches only


def test_a_dataset_keeps_its_batches_and_drops_a_short_last_one() -> None:
    x, y = arrays(10)
    d = probe_data(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), INPUTS, TARGETS, OUTPUTS)
    assert (d.batches, d.batch_size) == (2, 4)
    assert np.array_equal(d.x[0], x["a"][:8]) and np.array_equal(d.y["C"], y["C"][:8])


@pytest.mark.parametrize("probe, message", [
    ("not data", "must be (x, y)"),
    ((arrays()[0], arrays()[1], np.ones(8)), "sample weights"),
    (({"a": np.zeros((8, 3))}, arrays()[1]), "'b' missing"),
    (({**arrays()[0], "zz": np.zeros((8, 1))}, arrays()[1]), "'zz' which the model does not have"),
    ((arrays()[0], {"C": np.ones((8, 1))}), "lacks 'D'"),
    ((arrays()[0], np.ones((8, 1))), "one array; the model has 2 outputs"),
    (({"a": np.zeros((8, 3)), "b": np.zeros((7, 2))}, arrays()[1]), "different row counts"),
    (({"a": np.full((8, 3), np.nan), "b": np.zeros((8, 2))}, arrays()[1]), "NaN or Inf"),
])
def test_bad_probes_are_refused(probe: object, message: str) -> None:
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        probe_data(probe, INPUTS, TARGETS, OUTPUTS)


def test_sample_weights_in_a_dataset_are_refused() -> None:
    x, y = arrays()
    with pytest.raises(DataError, match="sample weights"):
        probe_data(tf.data.Dataset.from_tensor_slices((x, y, np.ones(8))).batch(4), INPUTS, TARGETS, OUTPUTS)
