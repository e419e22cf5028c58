"""The training monitor's probe: fit-style in-memory data turned into :class:`~gradviz.data.Data`.

A probe is what ``model.fit`` would take, kept small: ``(x, y)`` or
``(x, y, sample_weight)`` with NumPy arrays (``x`` one array, a list in input
order or a dict by input name; ``y`` one array, a list in output order or a
dict by output name), or a ``tf.data.Dataset`` of a few such batches.

:func:`probe_data` is the one place this happens; it is meant to be replaced
by the shared fit-style adapter of :meth:`gradviz.session.Session.run` once
that lands.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from gradviz.data.arrays import Data, TensorInfo
from gradviz.errors import DataError

#: the message for sample weights until the gradient backend applies them
SAMPLE_WEIGHTS_UNSUPPORTED = (
    "the probe has sample weights, which gradviz's gradient pass does not apply yet; "
    "pass the probe as (x, y) without them"
)


def probe_data(
    probe: Any,
    inputs: Sequence[TensorInfo],
    targets: Sequence[TensorInfo],
    outputs: Sequence[str],
    *,
    batch_size: int | None = None,
) -> Data:
    """Turn a fit-style probe into the batches a gradient run computes on.

    Args:
        probe: ``(x, y)``, ``(x, y, sample_weight)`` (sample weights are refused
            while the backend cannot apply them) or a ``tf.data.Dataset`` of such batches.
        inputs: the model's inputs, in order (``Session.input_infos()``).
        targets: the outputs that carry a loss (``Session.target_infos()``).
        outputs: all the model's output names, in order (a list ``y`` follows it).
        batch_size: rows per batch for arrays; None: the whole probe as one batch.
            A dataset keeps its own batches (a smaller last batch is dropped).

    Returns:
        :class:`~gradviz.data.Data` with ``x`` in input order and ``y`` by output name.

    Raises:
        DataError: the probe is not one of those forms, a name or row count does
            not fit, it holds NaN/Inf, or it has sample weights.

    Example:
        >>> x = np.zeros((4, 3), "float32")
        >>> d = probe_data((x, {"C": np.ones((4, 1))}), [TensorInfo("x", (None, 3), "float32")],
        ...                [TensorInfo("C", (None, 1), "float32")], ["C"], batch_size=2)
        >>> d.batches, d.batch_size, d.x[0].shape, sorted(d.y)
        (2, 2, (4, 3), ['C'])
    """
    if _is_dataset(probe):
        return _from_dataset(probe, inputs, targets, outputs)
    if not isinstance(probe, (tuple, list)) or len(probe) not in (2, 3):
        raise DataError(
            f"the probe must be (x, y), (x, y, sample_weight) or a tf.data.Dataset of them; got {type(probe).__name__}"
        )
    if len(probe) == 3 and probe[2] is not None:
        raise DataError(SAMPLE_WEIGHTS_UNSUPPORTED)
    xs = _inputs(probe[0], inputs)
    ys = _targets(probe[1], targets, outputs)
    rows = {a.shape[0] for a in xs} | {a.shape[0] for a in ys.values()}
    if len(rows) != 1:
        raise DataError(f"the probe's arrays have different row counts: {sorted(rows)}")
    total = rows.pop()
    size = total if batch_size is None else batch_size
    if size < 1 or total < 1:
        raise DataError(f"the probe needs at least one row and a batch size of at least 1 (rows {total}, batch size {size})")
    if size > total:
        raise DataError(f"the probe has {total} rows, fewer than its batch size {size}")
    batches = total // size
    used = batches * size  # whole batches only: every batch has the same shape (one trace)
    return Data(tuple(a[:used] for a in xs), {k: v[:used] for k, v in ys.items()}, size, batches, False)


def _is_dataset(probe: Any) -> bool:
    return hasattr(probe, "as_numpy_iterator") and hasattr(probe, "element_spec")


def _from_dataset(dataset: Any, inputs: Sequence[TensorInfo], targets: Sequence[TensorInfo],
                  outputs: Sequence[str]) -> Data:
    batches_x: list[tuple[np.ndarray, ...]] = []
    batches_y: list[dict[str, np.ndarray]] = []
    for element in dataset.as_numpy_iterator():
        if not isinstance(element, (tuple, list)) or len(element) not in (2, 3):
            raise DataError("each batch of the probe dataset must be (x, y) or (x, y, sample_weight)")
        if len(element) == 3 and element[2] is not None:
            raise DataError(SAMPLE_WEIGHTS_UNSUPPORTED)
        batches_x.append(_inputs(element[0], inputs))
        batches_y.append(_targets(element[1], targets, outputs))
    if not batches_x:
        raise DataError("the probe dataset is empty")
    size = batches_x[0][0].shape[0]
    keep = [b for b in range(len(batches_x)) if batches_x[b][0].shape[0] == size]
    if keep != list(range(len(keep))) or len(keep) < len(batches_x) - 1:
        raise DataError("the probe dataset's batches must all have the same size (only the last may be smaller)")
    xs = tuple(np.concatenate([batches_x[b][i] for b in keep]) for i in range(len(inputs)))
    ys = {name: np.concatenate([batches_y[b][name] for b in keep]) for name in batches_y[0]}
    return Data(xs, ys, int(size), len(keep), False)


def _inputs(x: Any, inputs: Sequence[TensorInfo]) -> tuple[np.ndarray, ...]:
    names = [info.name for info in inputs]
    if isinstance(x, Mapping):
        unknown = sorted(set(map(str, x)) - set(names))
        missing = [n for n in names if n not in x]
        if unknown or missing:
            raise DataError(
                f"the probe's x names {', '.join(map(repr, unknown or missing))} "
                f"{'which the model does not have' if unknown else 'missing'}; inputs: {', '.join(names)}"
            )
        arrays = [x[n] for n in names]
    elif isinstance(x, (list, tuple)):
        arrays = list(x)
    else:
        arrays = [x]
    if len(arrays) != len(names):
        raise DataError(f"the probe has {len(arrays)} input array(s); the model takes {len(names)}: {', '.join(names)}")
    return tuple(_checked(np.asarray(a), f"input '{n}'") for a, n in zip(arrays, names))


def _targets(y: Any, targets: Sequence[TensorInfo], outputs: Sequence[str]) -> dict[str, np.ndarray]:
    wanted = [info.name for info in targets]
    if isinstance(y, Mapping):
        missing = [n for n in wanted if n not in y]
        if missing:
            raise DataError(
                f"the probe's y lacks {', '.join(map(repr, missing))}; outputs with a loss: {', '.join(wanted)}"
            )
        by_name = {str(k): v for k, v in y.items()}
    elif isinstance(y, (list, tuple)):
        if len(y) != len(outputs):
            raise DataError(
                f"the probe's y has {len(y)} array(s); the model has {len(outputs)} output(s): {', '.join(outputs)} "
                "(or pass a dict by output name)"
            )
        by_name = dict(zip(outputs, y))
    else:
        if len(wanted) != 1:
            raise DataError(
                f"the probe's y is one array; the model has {len(wanted)} outputs with a loss: {', '.join(wanted)} "
                "(pass a list in output order or a dict by output name)"
            )
        by_name = {wanted[0]: y}
    return {n: _checked(np.asarray(by_name[n]), f"target '{n}'") for n in wanted}


def _checked(array: np.ndarray, what: str) -> np.ndarray:
    if array.ndim == 0:
        raise DataError(f"the probe's {what} is a scalar; expected rows")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise DataError(f"the probe's {what} contains NaN or Inf values; gradients on them are meaningless")
    return array
