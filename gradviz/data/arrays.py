"""Batches to compute gradients on: a user's ``.npz`` file or seeded synthetic data.

``.npz`` keys are ``x`` / ``y`` for a single input / output, or
``x:<input name>`` and ``y:<output name>``. Synthetic inputs are standard
normal floats, integer ids within the vocabulary for inputs that feed an
Embedding, ones for masks (inputs named ``*mask*``), pixel values for inputs
a preprocessor rescales; synthetic targets suit each loss (0/1 for binary crossentropy,
one-hot for categorical, class ids for sparse, positive values for Poisson,
standard normal values for regression).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from gradviz.data.batches import Batch
from gradviz.errors import DataError

#: Size used for a dimension the model leaves unknown (e.g. sequence length).
UNKNOWN_DIM = 16
#: Synthetic integers for an input whose range gradviz cannot infer are drawn in [0, GUESSED_IDS).
GUESSED_IDS = 10


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output as data must match it.

    Attributes:
        name: the input or output name.
        shape: the shape, batch dimension first (None where unknown).
        dtype: the dtype name (``float32``, ``int32``, ``string``).
        id_range: for integer inputs that feed an Embedding, the vocabulary size.
        kind: for outputs, the targets the loss expects (see :func:`gradviz.model.losses.target_kind`;
            ``classes``: one-hot or class ids, for ``crossentropy``, which Keras resolves by the targets).
        value_range: for float inputs a preprocessor rescales, the raw range it expects (pixels: 0 to 255).
    """

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    id_range: int | None = None
    kind: str = "real"
    value_range: tuple[float, float] | None = None


@dataclass(frozen=True)
class Data:
    """Rows for ``batches`` batches of ``batch_size``, held in memory.

    Attributes:
        x: one array per model input, in input order.
        y: one array per output that carries a loss.
        batch_size: rows per batch.
        batches: number of batches.
        synthetic: whether gradviz made the data up.
        guessed: synthetic integer inputs whose range gradviz could not infer (drawn in
            ``[0, GUESSED_IDS)``): if the model fails on them, these need ``--data``.
        sample_weight: per output, one weight per row (or per row and time step) that
            its loss applies, as ``Model.fit``'s ``sample_weight``; None (or an output
            missing) means unweighted.
    """

    x: tuple[np.ndarray, ...]
    y: Mapping[str, np.ndarray]
    batch_size: int
    batches: int
    synthetic: bool
    guessed: tuple[str, ...] = ()
    sample_weight: Mapping[str, np.ndarray] | None = None

    def batch(self, index: int) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """The inputs and targets of batch ``index``.

        Example:
            >>> d = Data((np.arange(6.0).reshape(6, 1),), {"y": np.zeros((6, 1))}, 2, 3, True)
            >>> d.batch(1)[0][0].ravel().tolist()
            [2.0, 3.0]
        """
        lo, hi = index * self.batch_size, (index + 1) * self.batch_size
        return [a[lo:hi] for a in self.x], {k: v[lo:hi] for k, v in self.y.items()}

    def iter_batches(self) -> Iterator[Batch]:
        """The ``batches`` batches in order, with their sample weights.

        Example:
            >>> d = Data((np.arange(4.0).reshape(4, 1),), {"y": np.zeros((4, 1))}, 2, 2, False,
            ...          sample_weight={"y": np.array([1.0, 2.0, 3.0, 4.0])})
            >>> [b.sample_weight["y"].tolist() for b in d.iter_batches()]
            [[1.0, 2.0], [3.0, 4.0]]
        """
        for index in range(self.batches):
            x, y = self.batch(index)
            lo, hi = index * self.batch_size, (index + 1) * self.batch_size
            weights = {k: v[lo:hi] for k, v in (self.sample_weight or {}).items()}
            yield Batch(tuple(x), y, weights)


def check_counts(batch_size: int, batches: int) -> None:
    """Reject a batch size or count below 1.

    Raises:
        DataError: either is below 1.
    """
    if batch_size < 1:
        raise DataError(f"`batch_size` must be at least 1, got {batch_size}")
    if batches < 1:
        raise DataError(f"`batches` must be at least 1, got {batches}")


def synthetic(
    inputs: Sequence[TensorInfo],
    targets: Sequence[TensorInfo],
    *,
    batch_size: int,
    batches: int,
    seed: int,
    unknown_dim: int = UNKNOWN_DIM,
) -> Data:
    """Seeded data shaped from the model's inputs and suited to each loss.

    Uses its own ``numpy.random.Generator``: the caller's global random state
    is left alone. Integer inputs take ids below their ``id_range``; masks
    (inputs named ``*mask*``) are all ones, in their own dtype (no padding);
    inputs with a ``value_range`` are uniform in it; other integer inputs are
    drawn in ``[0, GUESSED_IDS)`` and listed in ``Data.guessed``. Dimensions
    the model leaves unknown get ``unknown_dim`` entries.

    Example:
        >>> d = synthetic([TensorInfo("x", (None, 3), "float32")],
        ...               [TensorInfo("C", (None, 4), "float32", kind="sparse")],
        ...               batch_size=5, batches=2, seed=0)
        >>> d.x[0].shape, d.y["C"].shape, int(d.y["C"].max()) < 4
        ((10, 3), (10,), True)

    Raises:
        DataError: an input takes strings, which cannot be made up.
    """
    check_counts(batch_size, batches)
    rng = np.random.default_rng(seed)
    rows = batch_size * batches
    xs = []
    guessed = []
    for info in inputs:
        shape = (rows,) + tuple(unknown_dim if d is None else int(d) for d in info.shape[1:])
        if "str" in info.dtype or info.dtype == "object":
            raise DataError(
                f"input '{info.name}' takes strings, which gradviz cannot make up; "
                "pass `data=FILE.npz` with an array under 'x' or 'x:" + info.name + "'"
            )
        if is_mask(info) and not info.id_range:
            xs.append(np.ones(shape, dtype=bool if info.dtype == "bool" else info.dtype))
        elif "int" in info.dtype or info.id_range is not None:
            high = info.id_range if info.id_range else GUESSED_IDS
            if not info.id_range:
                guessed.append(info.name)
            dtype = info.dtype if "int" in info.dtype else "int32"
            xs.append(rng.integers(0, max(high, 1), size=shape).astype(dtype))
        elif info.value_range is not None and "float" in info.dtype:
            low, high_value = info.value_range
            xs.append(rng.uniform(low, high_value, size=shape).astype(info.dtype))
        elif info.dtype == "bool":
            xs.append(rng.integers(0, 2, size=shape).astype(bool))
        else:
            xs.append(rng.standard_normal(shape).astype(info.dtype if "float" in info.dtype else "float32"))
    ys = {info.name: _target(info, rows, rng, unknown_dim) for info in targets}
    return Data(tuple(xs), ys, batch_size, batches, True, tuple(guessed))


def is_mask(info: TensorInfo) -> bool:
    """Whether an input is a mask (named ``*mask*``, e.g. KerasHub's ``padding_mask``): synthetic masks are ones.

    Example:
        >>> is_mask(TensorInfo("padding_mask", (None, None), "int32")), is_mask(TensorInfo("ids", (None, 4), "int32"))
        (True, False)
    """
    return "mask" in info.name.lower()


def _target(info: TensorInfo, rows: int, rng: np.random.Generator, unknown_dim: int = UNKNOWN_DIM) -> np.ndarray:
    dims = tuple(unknown_dim if d is None else int(d) for d in info.shape[1:])
    classes = dims[-1] if dims else 1
    kind = "categorical" if info.kind == "classes" else info.kind  # one-hot, where ids would do too
    if kind == "categorical" and classes == 1:
        kind = "binary"  # 'crossentropy' on a one-unit output is binary, as in Keras
    if kind == "binary":
        return rng.integers(0, 2, size=(rows,) + dims).astype("float32")
    if kind == "sparse":
        return rng.integers(0, max(classes, 1), size=(rows,) + dims[:-1]).astype("int32")
    if kind == "categorical":
        ids = rng.integers(0, classes, size=(rows,) + dims[:-1])
        return np.eye(classes, dtype="float32")[ids]
    if kind == "positive":
        return rng.poisson(2.0, size=(rows,) + dims).astype("float32")
    return rng.standard_normal((rows,) + dims).astype("float32")


def load_npz(
    path: str | Path,
    inputs: Sequence[TensorInfo],
    targets: Sequence[TensorInfo],
    *,
    batch_size: int,
    batches: int,
) -> Data:
    """Read and check a ``.npz`` file of inputs and targets.

    Args:
        path: the file.
        inputs: the model's inputs, in order.
        targets: the outputs that carry a loss.
        batch_size: rows per batch.
        batches: number of batches; the file needs ``batch_size * batches`` rows.

    Raises:
        DataError: not an ``.npz`` file, a key missing, a shape, dtype or row
            count that does not fit, or NaN/Inf values in the rows used.
    """
    check_counts(batch_size, batches)
    file = Path(path)
    if not file.is_file():
        raise DataError(f"no such data file: {file} (expected an .npz file)")
    if file.suffix != ".npz" or not zipfile.is_zipfile(file):
        raise DataError(f"{file} is not an .npz file; save one with numpy.savez(path, x=..., y=...)")
    expected_x = _keys("x", inputs)
    expected_y = _keys("y", targets)
    # the keys this model needs, for messages: 'x, y:C, y:D' (the short form where it is allowed)
    expected = ", ".join(options[-1] for options in expected_x + expected_y)
    try:
        with np.load(file, allow_pickle=False) as archive:
            keys = set(archive.files)
            xs = tuple(
                _array(archive, keys, options, info, file, expected) for options, info in zip(expected_x, inputs)
            )
            ys = {
                info.name: _array(archive, keys, options, info, file, expected, target=True)
                for options, info in zip(expected_y, targets)
            }
    except DataError:
        raise
    except Exception as e:  # numpy raises ValueError/OSError/zipfile errors for broken files
        raise DataError(f"{file} cannot be read as .npz: {type(e).__name__}: {e}") from e
    rows_needed = batch_size * batches
    for name, array in [(i.name, a) for i, a in zip(inputs, xs)] + list(ys.items()):
        if array.shape[0] < rows_needed:
            raise DataError(
                f"{file}: '{name}' has {array.shape[0]} rows, fewer than `batch_size={batch_size}` "
                f"x `batches={batches}` = {rows_needed}"
            )
    # Only the rows the batches use are checked: they are what the gradients see.
    for options, array in zip(expected_x + expected_y, list(xs) + list(ys.values())):
        _check_finite(file, next(k for k in options if k in keys), array[:rows_needed])
    for info, array in zip(inputs, xs):
        _check_values(file, info.name, array, info.id_range)
    for name, array in ys.items():
        _check_values(file, name, array, None)
    return Data(
        tuple(a[:rows_needed] for a in xs),
        {k: v[:rows_needed] for k, v in ys.items()},
        batch_size,
        batches,
        False,
    )


def load_npz_loose(path: str | Path, *, batch_size: int, batches: int, input_names: Sequence[str] = ()) -> Data:
    """Read a ``.npz`` file whose arrays gradviz cannot check against the model.

    For a model whose inputs are unknown (a subclassed model never called), and for a
    ``loss_terms`` function, which takes whatever targets the file holds. Inputs are
    ``x`` or the ``x:<name>`` keys (in the order of ``input_names`` when the model's
    inputs are known, else in name order); targets ``y`` or ``y:<name>`` (none is
    fine). Rows, numbers and finiteness are checked; shapes are the model's business.

    Raises:
        DataError: not an ``.npz`` file, no inputs, too few rows, non-numeric or NaN/Inf values.
    """
    check_counts(batch_size, batches)
    file = Path(path)
    if not file.is_file():
        raise DataError(f"no such data file: {file} (expected an .npz file)")
    if file.suffix != ".npz" or not zipfile.is_zipfile(file):
        raise DataError(f"{file} is not an .npz file; save one with numpy.savez(path, x=..., y=...)")
    rows_needed = batch_size * batches
    try:
        with np.load(file, allow_pickle=False) as archive:
            keys = sorted(archive.files)
            x_keys = ["x"] if "x" in keys else [k for k in keys if k.startswith("x:")]
            if input_names and not (len(input_names) == 1 and "x" in keys):
                x_keys = [f"x:{name}" for name in input_names]  # the model's input order
                missing = [k for k in x_keys if k not in keys]
                if missing:
                    raise DataError(f"{file} has no key {', '.join(map(repr, missing))}; expected keys: "
                                    f"{', '.join(x_keys)}; keys found: {', '.join(keys) or 'none'}")
            y_keys = ["y"] if "y" in keys else [k for k in keys if k.startswith("y:")]
            if not x_keys:
                raise DataError(f"{file} has no inputs: expected a key 'x' or 'x:<input name>'; keys found: "
                                f"{', '.join(keys) or 'none'}")
            arrays = {k: np.asarray(archive[k]) for k in x_keys + y_keys}
    except DataError:
        raise
    except ValueError as e:  # object arrays need pickle, which could run code: refused
        raise DataError(f"{file}: holds Python objects, which gradviz does not unpickle; save numeric arrays") from e
    except Exception as e:  # numpy raises OSError/zipfile errors for broken files
        raise DataError(f"{file} cannot be read as .npz: {type(e).__name__}: {e}") from e
    for key, array in arrays.items():
        if array.ndim == 0 or array.dtype.kind not in "biuf":
            raise DataError(f"{file}: '{key}' must be an array of numbers with one row per example")
        if array.shape[0] < rows_needed:
            raise DataError(
                f"{file}: '{key}' has {array.shape[0]} rows, fewer than --batch-size {batch_size} "
                f"x --batches {batches} = {rows_needed}"
            )
        _check_values(file, key, array, None)
    # floats as Keras's fit() feeds them (its data adapters cast them to floatx, float32)
    arrays = {k: a.astype("float32") if a.dtype.kind == "f" and a.dtype != np.float32 else a for k, a in arrays.items()}
    xs = tuple(arrays[k][:rows_needed] for k in x_keys)
    ys = {("y" if k == "y" else k[2:]): arrays[k][:rows_needed] for k in y_keys}
    return Data(xs, ys, batch_size, batches, False)


def _keys(prefix: str, infos: Sequence[TensorInfo]) -> list[list[str]]:
    """Acceptable keys per tensor: ``x:<name>``, and plain ``x`` when there is only one."""
    return [[f"{prefix}:{info.name}"] + ([prefix] if len(infos) == 1 else []) for info in infos]


def _array(archive: np.lib.npyio.NpzFile, keys: set[str], options: list[str], info: TensorInfo, file: Path,
           expected_keys: str = "", target: bool = False) -> np.ndarray:
    key = next((k for k in options if k in keys), None)
    if key is None:
        raise DataError(
            f"{file} has no key {' or '.join(repr(k) for k in options)} for '{info.name}'; "
            f"expected keys: {expected_keys or ', '.join(options)}; keys found: {', '.join(sorted(keys)) or 'none'}"
        )
    try:
        array = np.asarray(archive[key])
    except ValueError as e:  # object arrays need pickle, which could run code: refused
        raise DataError(
            f"{file}: '{key}' holds Python objects, which gradviz does not unpickle; "
            "save numeric arrays (or strings for string inputs)"
        ) from e
    want = info.shape[1:]
    if array.ndim == 0:
        raise DataError(f"{file}: '{key}' is a scalar; expected rows of shape {_fmt(want)}")
    compare = _comparable_dims(array.shape, info, target)
    if compare is None:
        raise DataError(
            f"{file}: '{key}' has shape {_fmt(array.shape)}; '{info.name}' expects (rows, {', '.join(map(_dim, want))})"
        )
    for got, expected in zip(array.shape[1:], compare):
        if expected is not None and got != expected:
            raise DataError(
                f"{file}: '{key}' has shape {_fmt(array.shape)}; '{info.name}' expects (rows, {', '.join(map(_dim, want))})"
            )
    if array.dtype.kind not in "biuf":
        if array.dtype.kind in "USO" and ("str" in info.dtype):
            return array
        raise DataError(f"{file}: '{key}' has dtype {array.dtype}; expected numbers ({info.dtype})")
    return array


def _comparable_dims(shape: tuple[int, ...], info: TensorInfo, target: bool) -> tuple[int | None, ...] | None:
    """The model dims an array's non-batch dims must match, or None when its rank cannot fit.

    Inputs take the model's rank (or one more trailing 1). Targets also take what Keras's
    losses accept (``squeeze_or_expand_to_same_rank``): one rank less when the output's last
    dim is 1, and class ids for sparse losses, as ``(rows, ...)`` or ``(rows, ..., 1)``.

    Example:
        >>> out = TensorInfo("y", (None, 1), "float32")
        >>> _comparable_dims((8,), out, True), _comparable_dims((8, 1), out, True), _comparable_dims((8,), out, False)
        ((), (1,), None)
        >>> ids = TensorInfo("y", (None, 5), "float32", kind="sparse")
        >>> _comparable_dims((8,), ids, True), _comparable_dims((8, 1), ids, True)
        ((), ())
    """
    rank = len(info.shape)
    want = info.shape[1:]
    if len(shape) == rank + 1 and shape[-1] == 1:
        return want
    ids = info.kind in ("sparse", "classes")  # class ids are valid targets
    if target and want and len(shape) == rank - 1 and (ids or want[-1] == 1):
        return want[:-1]
    if target and want and ids and len(shape) == rank and shape[-1] == 1:
        return want[:-1]
    return want if len(shape) == rank else None


#: bad rows named in a message before "..."
SHOWN_ROWS = 5


def _check_finite(file: Path, key: str, array: np.ndarray) -> None:
    """Refuse NaN or Inf in input data, naming the array's key and the first bad rows.

    Non-finite numbers *in the gradients* are a finding (``nan-gradient``); in the data they
    are an input error: every gradient they touch would be NaN, saying nothing about the model.

    Example:
        >>> a = np.zeros((40, 2)); a[[3, 17, 20, 21, 30, 33], 1] = np.nan; a[5, 0] = np.inf
        >>> _check_finite(Path("batch.npz"), "x:image", a)
        Traceback (most recent call last):
        ...
        gradviz.errors.DataError: batch.npz: 'x:image' has NaN and Inf at rows 3, 5, 17, 20, 21, ... (7 of the 40 rows used); fix or drop those rows (gradviz refuses non-finite input data)
    """
    if array.dtype.kind != "f" or not array.size:
        return
    finite = np.isfinite(array)
    if finite.all():
        return
    rows = np.flatnonzero(~finite.reshape(len(array), -1).all(axis=1))
    kinds = " and ".join(k for k, test in (("NaN", np.isnan), ("Inf", np.isinf)) if test(array).any())
    shown = ", ".join(str(int(r)) for r in rows[:SHOWN_ROWS]) + (", ..." if len(rows) > SHOWN_ROWS else "")
    counted = f"{len(rows)} of the {len(array)} rows used"
    raise DataError(
        f"{file}: '{key}' has {kinds} at {'rows' if len(rows) > 1 else 'row'} {shown} ({counted}); "
        "fix or drop those rows (gradviz refuses non-finite input data)"
    )


def _check_values(file: Path, name: str, array: np.ndarray, id_range: int | None) -> None:
    if id_range is not None and array.dtype.kind in "iu" and array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= id_range:
            raise DataError(f"{file}: '{name}' holds ids from {low} to {high}; its Embedding takes ids in [0, {id_range})")


def _dim(d: int | None) -> str:
    return "None" if d is None else str(d)


def _fmt(shape: Sequence[int | None]) -> str:
    """A shape as Python writes it.

    Example:
        >>> _fmt((4,)), _fmt((None, 3))
        ('(4,)', '(None, 3)')
    """
    return "(" + ", ".join(map(_dim, shape)) + ("," if len(shape) == 1 else "") + ")"
