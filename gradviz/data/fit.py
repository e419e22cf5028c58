"""Data as ``Model.fit`` takes it: arrays, ``tf.data``, ``PyDataset``, generators, saved datasets.

Keras's own data adapters turn the data into batches and apply
``class_weight``, exactly as ``fit`` does without shuffling (through
:mod:`gradviz.model.keras_internals`, the one module that touches Keras
internals). This module decides how many batches to read, names every batch's
arrays by the model's inputs and outputs (``y`` and ``sample_weight`` as a
single array, a list or a dict, as ``fit`` takes them), and checks them: bad
data is one :class:`~gradviz.errors.DataError` naming the input or output,
what it expects and what it got.

Reading never changes the data: arrays are sliced, a ``tf.data.Dataset`` is
read through a new iterator of its own, a ``PyDataset``'s epoch hooks are not
called. A Python generator is consumed: gradviz reads the batches it
analyses, and Keras's adapter reads up to two ahead to learn their shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from gradviz.data.arrays import TensorInfo, _comparable_dims, _dim, _fmt
from gradviz.data.batches import Batch
from gradviz.errors import DataError, GradvizError
from gradviz.model import keras_internals

#: rows per batch when neither the data nor the caller says (Keras's default too)
DEFAULT_BATCH_SIZE = 32

#: what ``x`` may be, for messages
ACCEPTED = (
    "NumPy arrays (one, a list in input order or a dict by input name), a tf.data.Dataset, "
    "a keras.utils.PyDataset or a Python generator"
)


@dataclass(frozen=True)
class Layout:
    """What batches must match: the model's inputs and outputs, and which outputs carry a loss.

    Attributes:
        inputs: the model's inputs, in order.
        targets: the outputs whose losses need targets (shape, dtype, the kind of targets).
        outputs: every output name, in model order (a list ``y`` may name all of them).
        losses: output name -> its loss as users name it (for messages).
    """

    inputs: tuple[TensorInfo, ...]
    targets: tuple[TensorInfo, ...]
    outputs: tuple[str, ...]
    losses: Mapping[str, str] = field(default_factory=dict)

    @property
    def target_outputs(self) -> tuple[str, ...]:
        """The outputs that need targets, in model order (how a short list ``y`` is read)."""
        names = {t.name for t in self.targets}
        ordered = tuple(o for o in self.outputs if o in names)
        return ordered + tuple(t.name for t in self.targets if t.name not in ordered)

    def target(self, name: str) -> TensorInfo:
        """The target info of output ``name``."""
        return next(t for t in self.targets if t.name == name)


class FitData:
    """Batches read through Keras's data adapter, in order, checked one by one.

    Make one with :func:`fit_data` or :func:`load_saved_dataset`.

    Attributes:
        batches: how many batches :meth:`iter_batches` yields.
        batch_size: rows per batch when known in advance (arrays, a batched dataset), else None.
        description: what the data is, for the report (``arrays``, ``tf.data.Dataset``, ...).
        class_weight: the ``class_weight`` Keras applies, or None.
        weighted: whether the batches read so far carried sample weights.
    """

    synthetic = False
    #: no input is guessed: the data is the user's (the backends' error message reads it)
    guessed: tuple[str, ...] = ()

    def __init__(self, adapter: Any, layout: Layout, *, batches: int, batch_size: int | None, description: str,
                 phrase: str, class_weight: Mapping[int, float] | None = None, count_name: str = "steps") -> None:
        self._adapter = adapter
        self.layout = layout
        self.batches = batches
        self.batch_size = batch_size
        self.description = description
        self._phrase = phrase
        self._count_name = count_name
        self.class_weight = class_weight
        self.weighted = False

    def iter_batches(self) -> Iterator[Batch]:
        """Read, name and check the batches (a generator's are consumed).

        Raises:
            DataError: a batch does not fit the model, reading it fails, or the data ends early.
        """
        iterator = keras_internals.numpy_batches(self._adapter)
        try:
            for index in range(self.batches):
                where = f"batch {index + 1} of {self._phrase}"
                try:
                    raw = next(iterator)
                except StopIteration:
                    raise DataError(
                        f"{self._phrase} ended after {index} batch(es); `{self._count_name}={self.batches}` asks for more"
                    ) from None
                except GradvizError:
                    raise
                except Exception as e:  # Keras's adapter, tf.data or the user's own batch code
                    raise DataError(f"reading {where} failed: {type(e).__name__}: {_short(e)}") from e
                batch = to_batch(raw, self.layout, where)
                self.weighted = self.weighted or bool(batch.sample_weight)
                yield batch
        finally:
            keras_internals.stop_workers(self._adapter)


def fit_data(
    x: Any,
    y: Any = None,
    sample_weight: Any = None,
    class_weight: Mapping[int, float] | None = None,
    *,
    layout: Layout,
    batch_size: int | None = None,
    steps: int | None = None,
    description: str | None = None,
    phrase: str | None = None,
    count_name: str = "steps",
) -> FitData:
    """Batches from what ``Model.fit`` takes, through the adapter ``fit`` would use.

    Args:
        x: arrays (one, a list or a dict by input name), a ``tf.data.Dataset`` or a
            ``keras.utils.PyDataset`` yielding ``(x, y)`` or ``(x, y, sample_weight)``, or a
            Python generator yielding those.
        y: targets, with array ``x`` only: one array, a list (one per output, or one per
            output with a loss) or a dict by output name.
        sample_weight: with array ``x`` only: one array (for every loss), a list or a dict by output name.
        class_weight: ``{class id: weight}`` for a model with one output carrying a loss; Keras's
            adapter turns it into sample weights (not with a generator, as in Keras).
        layout: the model's inputs and outputs.
        batch_size: rows per batch, for arrays (default 32, or as ``steps`` divides them).
        steps: how many batches to read (default: all of ``x``); needed when the data's length is
            unknown (a generator, an infinite or filtered dataset).
        description: what the report calls the data (default: its kind).
        phrase: how messages name the data (default: ``the <kind>``).
        count_name: the parameter that set ``steps``, as messages name it (``batches`` for a saved
            dataset read with ``batches=N``, which the CLI calls ``--batches``).

    Raises:
        DataError: the data cannot feed the model, or its length is unknown and ``steps`` missing.
    """
    if steps is not None and steps < 1:
        raise DataError(f"`{count_name}` must be at least 1, got {steps}")
    if batch_size is not None and batch_size < 1:
        raise DataError(f"`batch_size` must be at least 1, got {batch_size}")
    kind = _kind(x)
    description = description or {"arrays": "arrays", "tf.data": "tf.data.Dataset", "generator": "generator"}.get(
        kind, f"PyDataset {type(x).__name__}"
    )
    phrase = phrase or f"the {description}"
    if kind != "arrays":
        if batch_size is not None:
            raise DataError(f"batch_size applies to arrays; x is {phrase}, whose own batches are used as they are")
        for name, value in (("y", y), ("sample_weight", sample_weight)):
            if value is not None:
                raise DataError(
                    f"{name}= goes with arrays; x is {phrase}, which must yield its own: "
                    "(x, y) or (x, y, sample_weight)"
                )
    if class_weight is not None and kind == "generator":
        raise DataError(
            "class_weight works with arrays, a tf.data.Dataset or a PyDataset (as in Keras), not with a "
            "generator: yield (x, y, sample_weight) batches instead"
        )
    if class_weight is not None:
        _check_class_weight(class_weight, sample_weight, layout)
        if kind == "arrays" and y is not None:  # Keras takes class_weight with y as one array
            (y,) = _map_targets(y, layout, "").values()
    if kind == "generator":
        if steps is None:
            raise DataError(
                "x is a Python generator, which may never end: pass steps=N, the number of batches to analyse"
            )
        x = _peeked(x)
    if kind == "arrays":
        _check_arrays(x, y, sample_weight, layout)
        if isinstance(sample_weight, (Mapping, list, tuple)):
            # Keras wants one weight array per target; an output left out is unweighted (weights of 1:
            # the same loss, since sum_over_batch_size divides by the batch size, not the weights' sum)
            weights = _map_weights(sample_weight, layout, "")
            y = _map_targets(y, layout, "")
            sample_weight = {name: weights.get(name, np.ones(_rows(target), "float32")) for name, target in y.items()}
    try:
        adapter = keras_internals.data_adapter(x, y, sample_weight, class_weight, batch_size, steps)
    except ValueError as e:
        raise DataError(f"{phrase}: {_short(e)}") from e
    batches = _count(adapter, x, kind, steps, phrase, count_name)
    known = adapter.batch_size
    return FitData(adapter, layout, batches=batches, batch_size=int(known) if isinstance(known, int) else None,
                   description=description, phrase=phrase, class_weight=class_weight, count_name=count_name)


def is_saved_dataset(path: str | Path) -> bool:
    """Whether ``path`` is a directory that ``tf.data.Dataset.save`` wrote."""
    directory = Path(path)
    return (directory / "dataset_spec.pb").is_file() and (directory / "snapshot.metadata").is_file()


def load_saved_dataset(path: str | Path, layout: Layout, *, batch_size: int | None, batches: int) -> FitData:
    """The first ``batches`` batches of a directory written by ``tf.data.Dataset.save``.

    Elements that are single rows (one rank below the model's inputs) are batched by
    ``batch_size`` (default 32); elements that are batches already keep their size
    unless ``batch_size`` is given (then they are re-batched to it).

    Raises:
        DataError: not such a directory, unreadable, or its batches do not fit the model.
    """
    directory = Path(path)
    if not is_saved_dataset(directory):
        raise DataError(
            f"{directory} is a directory but not a saved tf.data.Dataset (no dataset_spec.pb and snapshot.metadata, "
            "which dataset.save(path) writes); data is an .npz file or such a directory"
        )
    import tensorflow as tf

    try:
        dataset = tf.data.Dataset.load(str(directory))
    except Exception as e:  # TensorFlow raises its own errors for damaged snapshots
        raise DataError(
            f"{directory} cannot be read as a saved tf.data.Dataset: {type(e).__name__}: {_short(e)}"
        ) from e
    if _yields_rows(dataset.element_spec, layout):
        dataset = dataset.batch(batch_size or DEFAULT_BATCH_SIZE)
    elif batch_size is not None:
        dataset = dataset.rebatch(batch_size)
    return fit_data(dataset, layout=layout, steps=batches, description=str(directory),
                    phrase=f"the saved dataset {directory}", count_name="batches")


# -- naming and checking one batch -------------------------------------------------------------


def to_batch(raw: Any, layout: Layout, where: str = "") -> Batch:
    """Name one batch (``x``, ``(x, y)`` or ``(x, y, sample_weight)``) by the model and check it.

    Raises:
        DataError: a key names nothing, an input's or output's array is missing, a shape, dtype
            or value does not fit, or the arrays disagree on the number of rows.
    """
    x, y, sample_weight = keras_internals.unpack_x_y_sample_weight(raw)
    prefix = f"{where}: " if where else ""
    named_x = _map_inputs(x, layout, prefix)
    named_y = _map_targets(y, layout, prefix)
    named_w = _map_weights(sample_weight, layout, prefix)
    xs = tuple(_check_input(info, named_x[info.name], prefix) for info in layout.inputs)
    ys = {t.name: _check_target(t, named_y[t.name], layout, prefix) for t in layout.targets}
    weights = {name: _check_weight(layout.target(name), w, prefix) for name, w in named_w.items()}
    _check_rows(
        [(f"input '{info.name}'", a.shape[0]) for info, a in zip(layout.inputs, xs)]
        + [(f"targets of '{name}'", a.shape[0]) for name, a in ys.items()]
        + [(f"sample_weight of '{name}'", a.shape[0]) for name, a in weights.items()],
        prefix,
    )
    return Batch(xs, ys, weights)


def _map_inputs(x: Any, layout: Layout, prefix: str) -> dict[str, Any]:
    names = [info.name for info in layout.inputs]
    listed = _describe_inputs(layout)
    if x is None:
        raise DataError(f"{prefix}no inputs (x); the model takes {listed}")
    if isinstance(x, Mapping):
        keys = [str(k) for k in x]
        unknown = [k for k in keys if k not in names]
        if unknown:
            raise DataError(f"{prefix}x has key {unknown[0]!r}, which names no input of the model; inputs: {listed}")
        missing = [n for n in names if n not in keys]
        if missing:
            info = layout.inputs[names.index(missing[0])]
            raise DataError(
                f"{prefix}x has no array for input '{info.name}' (expects {_expects(info)}); x has: {', '.join(keys)}"
            )
        return {n: x[n] for n in names}
    if isinstance(x, (list, tuple)):
        if len(x) != len(names):
            raise DataError(
                f"{prefix}x is a {type(x).__name__} of {len(x)} arrays; the model has {len(names)} input(s): {listed} "
                "(pass them in this order, or a dict by input name)"
            )
        return dict(zip(names, x))
    if len(names) != 1:
        raise DataError(
            f"{prefix}x is one array; the model has {len(names)} inputs: {listed} "
            "(pass a list in this order, or a dict by input name)"
        )
    return {names[0]: x}


def _map_targets(y: Any, layout: Layout, prefix: str) -> dict[str, Any]:
    wanted = layout.target_outputs
    if not wanted:
        return {}
    if y is None:
        raise DataError(
            f"{prefix}no targets (y); the losses of {_describe_targets(layout, wanted)} need them "
            "(pass y=..., or batches of (x, y))"
        )
    named = _by_output(y, "y", layout, prefix)
    for name in wanted:
        if named.get(name) is None:
            given = ", ".join(k for k, v in named.items() if v is not None) or "nothing"
            raise DataError(f"{prefix}no targets for output {_describe_targets(layout, [name])}; y has: {given}")
    return {name: named[name] for name in wanted}


def _map_weights(sample_weight: Any, layout: Layout, prefix: str) -> dict[str, Any]:
    if sample_weight is None:
        return {}
    wanted = layout.target_outputs
    if not isinstance(sample_weight, (Mapping, list, tuple)):
        return {name: sample_weight for name in wanted}  # one array weighs every loss, as in CompileLoss
    named = _by_output(sample_weight, "sample_weight", layout, prefix)
    return {name: named[name] for name in wanted if named.get(name) is not None}


def _by_output(value: Any, role: str, layout: Layout, prefix: str) -> dict[str, Any]:
    """``y`` or ``sample_weight`` by output name: a dict by name, a list by position, or one array."""
    wanted = layout.target_outputs
    outputs = list(layout.outputs)
    if isinstance(value, Mapping):
        unknown = [str(k) for k in value if str(k) not in outputs]
        if unknown:
            raise DataError(
                f"{prefix}{role} has key {unknown[0]!r}, which names no output of the model; outputs: "
                f"{', '.join(outputs)}"
            )
        return {str(k): v for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if len(value) == len(outputs):
            return dict(zip(outputs, value))
        if len(value) == len(wanted):
            return dict(zip(wanted, value))
        raise DataError(
            f"{prefix}{role} is a {type(value).__name__} of {len(value)} arrays; the model has {len(outputs)} "
            f"output(s) ({', '.join(outputs)}), {len(wanted)} with a loss ({', '.join(wanted)}): pass one per output "
            "or one per output with a loss, in this order, or a dict by output name"
        )
    if len(wanted) != 1:
        raise DataError(
            f"{prefix}{role} is one array; the model has {len(wanted)} outputs with a loss: "
            f"{', '.join(wanted)} (pass a list in this order, or a dict by output name)"
        )
    return {wanted[0]: value}


def _check_input(info: TensorInfo, value: Any, prefix: str, values: bool = True) -> np.ndarray:
    array = np.asarray(value)
    what = f"input '{info.name}'"
    if array.ndim == 0 or _mismatch(array.shape, _comparable_dims(array.shape, info, False)):
        rows = array.ndim == len(info.shape) - 1 and not _mismatch((0,) + array.shape, info.shape[1:])
        hint = " (single rows, not batches: batch them, e.g. dataset.batch(32))" if rows else ""
        raise DataError(f"{prefix}{what} expects {_expects(info)}; got {_fmt(array.shape)} {array.dtype}{hint}")
    strings = "str" in info.dtype or info.dtype == "object"
    if strings != (array.dtype.kind in "USO") or array.dtype.kind not in "biufUSO":
        raise DataError(f"{prefix}{what} expects {_expects(info)}; got dtype {array.dtype}")
    if not values:
        return array
    _check_finite(array, what, prefix)
    if info.id_range is not None and array.dtype.kind in "iu" and array.size:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= info.id_range:
            raise DataError(
                f"{prefix}{what} holds ids from {low} to {high}; its Embedding takes ids in [0, {info.id_range})"
            )
    return array


def _check_target(info: TensorInfo, value: Any, layout: Layout, prefix: str, values: bool = True) -> np.ndarray:
    array = np.asarray(value)
    what = f"targets of output '{info.name}' ({layout.losses.get(info.name, 'its loss')})"
    one_hot_for_ids = (
        info.kind == "sparse" and array.ndim == len(info.shape) and array.shape[-1:] != (1,)
        and (info.shape[-1] or 0) > 1
    )
    if array.ndim == 0 or one_hot_for_ids or _mismatch(array.shape, _comparable_dims(array.shape, info, True)):
        raise DataError(f"{prefix}{what} expect {_expects(info, target=True)}; got {_fmt(array.shape)} {array.dtype}")
    if array.dtype.kind not in "biuf":
        raise DataError(f"{prefix}{what} expect numbers; got dtype {array.dtype}")
    if not values:
        return array
    _check_finite(array, what, prefix)
    classes = info.shape[-1] if info.shape else None
    if _takes_ids(info, array.shape) and classes and array.size:
        low, high = float(array.min()), float(array.max())
        if low < 0 or high >= classes:
            raise DataError(
                f"{prefix}{what} hold class ids from {low:g} to {high:g}; "
                f"its {classes} classes take ids in [0, {classes})"
            )
    return array


def _check_weight(info: TensorInfo, value: Any, prefix: str, values: bool = True) -> np.ndarray:
    array = np.asarray(value)
    what = f"sample_weight of output '{info.name}'"
    if array.dtype.kind not in "biuf":
        raise DataError(f"{prefix}{what} must be numbers; got dtype {array.dtype}")
    if array.ndim == 0 or array.ndim > max(len(info.shape), 1):
        raise DataError(
            f"{prefix}{what} expects one weight per row, (batch,), or per row and step up to the output's shape "
            f"{_fmt(info.shape)}; got {_fmt(array.shape)}"
        )
    if values:
        _check_finite(array, what, prefix)
    return array


def _check_finite(array: np.ndarray, what: str, prefix: str) -> None:
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise DataError(f"{prefix}{what}: NaN or Inf values, on which gradients are meaningless")


def _check_rows(rows: Sequence[tuple[str, int]], prefix: str) -> None:
    first_name, first = rows[0] if rows else ("", 0)
    for name, count in rows[1:]:
        if count != first:
            raise DataError(
                f"{prefix}{first_name}: {first} rows, but {name}: {count} rows; every array needs one row per sample"
            )


def _takes_ids(info: TensorInfo, shape: tuple[int, ...]) -> bool:
    """Whether the loss reads these targets as class ids (as ``ResolvedLoss.for_targets`` picks the variant)."""
    if info.kind == "sparse":
        return True
    if info.kind != "classes":
        return False
    out_last = info.shape[-1] if info.shape else None
    return len(shape) < len(info.shape) or (shape[-1:] == (1,) and (out_last or 0) > 1)


def _mismatch(shape: tuple[int, ...], dims: tuple[int | None, ...] | None) -> bool:
    return dims is None or any(want is not None and got != want for got, want in zip(shape[1:], dims))


def _expects(info: TensorInfo, target: bool = False) -> str:
    """What an input or output's data looks like, for messages.

    Example:
        >>> _expects(TensorInfo("x", (None, 16), "float32"))
        '(batch, 16) float32'
        >>> _expects(TensorInfo("c", (None, 5), "float32", kind="classes"), target=True)
        'one-hot (batch, 5) or class ids (batch,)'
    """
    def shape(dims: Sequence[int | None]) -> str:
        return "(batch" + "".join(f", {_dim(d)}" for d in dims) + (",)" if not dims else ")")

    if target and info.kind in ("sparse", "classes") and info.shape[1:]:
        ids = f"class ids {shape(info.shape[1:-1])}"
        return ids if info.kind == "sparse" else f"one-hot {shape(info.shape[1:])} or {ids}"
    if target:
        return shape(info.shape[1:])
    dtype = "strings" if "str" in info.dtype else info.dtype
    return f"{shape(info.shape[1:])} {dtype}"


def _describe_inputs(layout: Layout) -> str:
    return ", ".join(f"'{i.name}' {_expects(i)}" for i in layout.inputs)


def _describe_targets(layout: Layout, names: Sequence[str]) -> str:
    """Outputs with their losses and the targets they take: ``'C' (mse, expects (batch, 1)), ...``."""
    return ", ".join(
        f"'{name}' ({layout.losses.get(name, 'its loss')}, expects {_expects(layout.target(name), target=True)})"
        for name in names
    )


# -- the data as a whole ---------------------------------------------------------------------------


def _kind(x: Any) -> str:
    if keras_internals.is_tf_dataset(x):
        return "tf.data"
    if keras_internals.is_py_dataset(x):
        return "PyDataset"
    if keras_internals.is_generator(x):
        return "generator"
    leaves = list(x.values()) if isinstance(x, Mapping) else list(x) if isinstance(x, (list, tuple)) else [x]
    if leaves and all(_is_array(leaf) for leaf in leaves):
        return "arrays"
    raise DataError(f"x of type {type(x).__name__} is not data Model.fit takes; valid: {ACCEPTED}")


def _is_array(value: Any) -> bool:
    return hasattr(value, "__array__") or (hasattr(value, "shape") and hasattr(value, "dtype"))


def _rows(value: Any) -> int:
    shape = np.shape(value)
    return int(shape[0]) if len(shape) else 0


def _check_arrays(x: Any, y: Any, sample_weight: Any, layout: Layout) -> None:
    """Keys, shapes, dtypes and row counts of array data, named, before Keras's adapter sees them.

    Values (NaN, ids out of range) are checked batch by batch as they are read.
    """
    inputs = _map_inputs(x, layout, "")
    targets = _map_targets(y, layout, "")
    if sample_weight is not None and y is None:
        raise DataError("sample_weight without y: weights apply to the losses' targets")
    weights = _map_weights(sample_weight, layout, "")
    named = [(f"input '{k}'", v) for k, v in inputs.items()] + [(f"targets of '{k}'", v) for k, v in targets.items()]
    named += [(f"sample_weight of '{k}'", v) for k, v in weights.items()]
    for name, value in named:
        if not _is_array(value):
            raise DataError(f"{name} is a {type(value).__name__}, not an array; valid: {ACCEPTED}")
        if len(np.shape(value)) == 0:
            raise DataError(f"{name} is a scalar; expected one row per sample")
        if _rows(value) == 0:
            raise DataError(f"{name} has no rows: nothing to analyse")
    for info in layout.inputs:  # NumPy arrays are checked whole (no copy); other arrays batch by batch
        if isinstance(inputs[info.name], np.ndarray):
            _check_input(info, inputs[info.name], "", values=False)
    for name, value in targets.items():
        if isinstance(value, np.ndarray):
            _check_target(layout.target(name), value, layout, "", values=False)
    for name, value in weights.items():
        if isinstance(value, np.ndarray):
            _check_weight(layout.target(name), value, "", values=False)
    _check_rows([(name, _rows(value)) for name, value in named], "")


def _check_class_weight(class_weight: Any, sample_weight: Any, layout: Layout) -> None:
    if not isinstance(class_weight, Mapping) or not all(isinstance(k, (int, np.integer)) for k in class_weight):
        raise DataError(f"class_weight must be a dict {{class id: weight}}, got {type(class_weight).__name__}")
    if sample_weight is not None:
        raise DataError("pass class_weight or sample_weight, not both (as in Keras)")
    wanted = layout.target_outputs
    if len(wanted) > 1:
        raise DataError(
            f"class_weight works for a model with one output carrying a loss (as in Keras); this one has "
            f"{len(wanted)}: {', '.join(wanted)}; pass sample_weight per output instead"
        )


def _peeked(generator: Iterator[Any]) -> Iterator[Any]:
    """The generator with its first batch read: an empty one fails here, with a clear message."""
    try:
        first = next(generator)
    except StopIteration:
        raise DataError("x is a generator that yields nothing: no batches to analyse") from None
    except Exception as e:  # the user's generator code
        raise DataError(f"reading batch 1 of the generator failed: {type(e).__name__}: {_short(e)}") from e

    def chained() -> Iterator[Any]:
        yield first
        for batch in generator:  # not `yield from`: closing this reader must not close the caller's generator
            yield batch

    return chained()


def _count(adapter: Any, x: Any, kind: str, steps: int | None, phrase: str, count_name: str = "steps") -> int:
    """How many batches to read: ``steps``, or all of them when the data knows how many it has."""
    known = adapter.num_batches
    if known is None:
        if steps is not None:
            return steps
        if kind == "tf.data":
            import tensorflow as tf

            if int(x.cardinality()) == int(tf.data.INFINITE_CARDINALITY):
                raise DataError("x is an infinite tf.data.Dataset (repeat()): pass steps=N, the number of batches "
                                "to analyse")
            raise DataError("x is a tf.data.Dataset of unknown length (after filter(), from_generator(), ...), which "
                            "may never end: pass steps=N, the number of batches to analyse")
        raise DataError(f"x is {phrase} without num_batches, which may never end: pass steps=N, the number of "
                        "batches to analyse")
    known = int(known)
    if known == 0:
        raise DataError(f"{phrase} is empty: no batches to analyse")
    if steps is None:
        return known
    if steps > known:
        size = f" of {adapter.batch_size} rows" if kind == "arrays" else ""
        raise DataError(f"{phrase}: {known} batch(es){size}; `{count_name}={steps}` asks for more")
    return steps


def _yields_rows(element_spec: Any, layout: Layout) -> bool:
    """Whether a dataset's elements are single rows (one rank below the model's inputs)."""
    x, _, _ = keras_internals.unpack_x_y_sample_weight(element_spec)
    try:
        named = _map_inputs(x, layout, "")
    except DataError:
        return False  # the batches' own check names the problem
    ranks = [getattr(named[i.name], "shape", None) for i in layout.inputs]
    return all(s is not None and s.rank is not None and s.rank == len(i.shape) - 1
               for s, i in zip(ranks, layout.inputs))


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:300] + "..." if len(text) > 300 else text
