"""Synthetic data and .npz reading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gradviz.data import TensorInfo, load_npz, synthetic
from gradviz.errors import DataError

X = TensorInfo("x", (None, 3), "float32")
IDS = TensorInfo("ids", (None, 5), "int32", id_range=7)


@pytest.mark.parametrize(
    "kind, shape, check",
    [
        ("binary", (None, 1), lambda y: set(np.unique(y)) <= {0.0, 1.0} and y.shape == (8, 1)),
        ("categorical", (None, 4), lambda y: y.shape == (8, 4) and np.all(y.sum(axis=1) == 1)),
        ("categorical", (None, 1), lambda y: set(np.unique(y)) <= {0.0, 1.0}),
        ("sparse", (None, 4), lambda y: y.shape == (8,) and y.dtype.kind == "i" and y.max() < 4),
        ("sparse", (None, 6, 4), lambda y: y.shape == (8, 6)),
        ("positive", (None, 2), lambda y: y.min() >= 0),
        ("real", (None, 2), lambda y: y.dtype == np.float32 and y.shape == (8, 2)),
    ],
)
def test_synthetic_targets_suit_the_loss(kind, shape, check):  # type: ignore[no-untyped-def]
    data = synthetic([X], [TensorInfo("y", shape, "float32", kind=kind)], batch_size=4, batches=2, seed=0)
    assert check(data.y["y"])


def test_synthetic_is_seeded_and_ids_in_range() -> None:
    a = synthetic([X, IDS], [], batch_size=16, batches=1, seed=3)
    b = synthetic([X, IDS], [], batch_size=16, batches=1, seed=3)
    c = synthetic([X, IDS], [], batch_size=16, batches=1, seed=4)
    assert np.array_equal(a.x[0], b.x[0]) and not np.array_equal(a.x[0], c.x[0])
    assert a.x[1].dtype == np.int32 and 0 <= a.x[1].min() and a.x[1].max() < 7


def test_synthetic_leaves_global_random_state_alone() -> None:
    np.random.seed(11)
    expected = np.random.random()
    np.random.seed(11)
    synthetic([X], [], batch_size=4, batches=1, seed=0)
    assert np.random.random() == expected


def test_string_inputs_need_data() -> None:
    with pytest.raises(DataError, match="takes strings.*`data=FILE.npz`"):
        synthetic([TensorInfo("text", (None,), "string")], [], batch_size=2, batches=1, seed=0)


def test_npz_keys_plain_and_named(tmp_path: Path) -> None:
    y = TensorInfo("out", (None, 2), "float32")
    np.savez(tmp_path / "a.npz", x=np.ones((6, 3), "float32"), y=np.zeros((6, 2), "float32"))
    data = load_npz(tmp_path / "a.npz", [X], [y], batch_size=3, batches=2)
    assert data.batch(1)[0][0].shape == (3, 3) and not data.synthetic
    np.savez(tmp_path / "b.npz", **{"x:x": np.ones((4, 3), "float32"), "x:ids": np.zeros((4, 5), "int32"),
                                    "y:out": np.zeros((4, 2), "float32")})
    data = load_npz(tmp_path / "b.npz", [X, IDS], [y], batch_size=4, batches=1)
    assert [a.shape for a in data.x] == [(4, 3), (4, 5)]


@pytest.mark.parametrize(
    "arrays, batch_size, message",
    [
        ({"x": np.ones((4, 3))}, 2, r"no key 'y:out' or 'y' for 'out'; expected keys: x, y; keys found: x"),
        ({"x": np.ones((4, 2)), "y": np.ones((4, 2))}, 2, r"has shape \(4, 2\); 'x' expects \(rows, 3\)"),
        ({"x": np.ones((1, 3)), "y": np.ones((1, 2))}, 2, "has 1 rows, fewer than `batch_size=2`"),
        ({"x": np.full((4, 3), np.nan), "y": np.ones((4, 2))}, 2, r"'x' has NaN at rows 0, 1 \(2 of the 2 rows used\)"),
        ({"x": np.array([["a"] * 3] * 4), "y": np.ones((4, 2))}, 2, "dtype <U1; expected numbers"),
    ],
)
def test_npz_errors(tmp_path: Path, arrays, batch_size, message):  # type: ignore[no-untyped-def]
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_npz(tmp_path / "d.npz", [X], [TensorInfo("out", (None, 2), "float32")], batch_size=batch_size, batches=1)


def test_ids_out_of_range_are_rejected(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.full((2, 5), 9, "int32"))
    with pytest.raises(DataError, match=r"ids from 9 to 9; its Embedding takes ids in \[0, 7\)"):
        load_npz(tmp_path / "d.npz", [IDS], [], batch_size=2, batches=1)


@pytest.mark.parametrize("shape, kind, y", [
    ((None, 1), "real", np.zeros((4,), "float32")),            # regression targets without the trailing 1
    ((None, 5), "sparse", np.zeros((4, 1), "int32")),          # class ids with a trailing 1
    ((None, 5), "sparse", np.zeros((4,), "int32")),            # class ids
])
def test_npz_targets_in_shapes_keras_accepts(tmp_path: Path, shape, kind, y):  # type: ignore[no-untyped-def]
    np.savez(tmp_path / "d.npz", x=np.ones((4, 3), "float32"), y=y)
    data = load_npz(tmp_path / "d.npz", [X], [TensorInfo("out", shape, "float32", kind=kind)], batch_size=4, batches=1)
    assert data.y["out"].shape == y.shape


def test_non_finite_data_names_the_key_and_the_first_bad_rows(tmp_path: Path) -> None:
    """Bad input data is refused (a NaN in the gradients is a finding; in the data it is an input error)."""
    x = np.ones((64, 3), "float32")
    x[[3, 17, 20, 21, 40, 41], 0] = np.nan
    x[50, 2] = -np.inf
    x[63, 1] = np.nan  # beyond the rows used: not what the gradients see
    np.savez(tmp_path / "d.npz", **{"x:x": x, "y:out": np.zeros((64, 2), "float32")})
    out = [TensorInfo("out", (None, 2), "float32")]
    with pytest.raises(DataError) as caught:
        load_npz(tmp_path / "d.npz", [X], out, batch_size=20, batches=3)
    assert str(caught.value) == (
        f"{tmp_path / 'd.npz'}: 'x:x' has NaN and Inf at rows 3, 17, 20, 21, 40, ... (7 of the 60 rows used); "
        "fix or drop those rows (gradviz refuses non-finite input data)"
    )
    x[:60] = 1.0  # only the unused row is left
    np.savez(tmp_path / "d.npz", **{"x:x": x, "y:out": np.zeros((64, 2), "float32")})
    assert load_npz(tmp_path / "d.npz", [X], out, batch_size=20, batches=3).batches == 3
