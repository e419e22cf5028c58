"""The training monitor's probe: fit-style data through the same path as ``analyze(x=...)``.

A probe is what ``model.fit`` would take, kept small: ``(x, y)`` or
``(x, y, sample_weight)`` with NumPy arrays (``x`` one array, a list in input
order or a dict by input name; ``y`` and ``sample_weight`` one array, a list
in output order or a dict by output name), a ``tf.data.Dataset`` or a
``keras.utils.PyDataset`` of a few such batches.

:func:`probe_data` only decides how an array probe is cut into batches; the
batches themselves come from :func:`gradviz.data.fit.fit_data` (Keras's data
adapters, the same names, checks and messages as ``Session.run(x=...)``), and
the gradient pass applies the sample weights as Keras's training step does.
The monitor reads the probe again at every probe, so it must be data that can
be read more than once: a Python generator is refused.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from gradviz.data.fit import FitData, Layout, fit_data
from gradviz.errors import DataError
from gradviz.model import keras_internals

#: what a probe may be, for messages
PROBE_FORMS = "(x, y), (x, y, sample_weight), a tf.data.Dataset or a keras.utils.PyDataset of such batches"


def probe_data(probe: Any, layout: Layout, *, batch_size: int | None = None) -> FitData:
    """Turn a fit-style probe into the batches a gradient run computes on (read again at every probe).

    Args:
        probe: ``(x, y)`` or ``(x, y, sample_weight)`` with arrays, or a ``tf.data.Dataset`` or
            ``keras.utils.PyDataset`` of such batches.
        layout: what the data must match (``Session.layout()``).
        batch_size: rows per batch for arrays; None: the whole probe as one batch. Arrays are cut
            into whole batches only (the rows after the last whole batch are left out), so every
            probe batch has one shape and the compiled pass one trace. A dataset keeps its own
            batches, as ``fit`` reads them.

    Returns:
        :class:`~gradviz.data.FitData` whose batches carry the probe's sample weights.

    Raises:
        DataError: the probe is not one of those forms, or does not fit the model (a name, shape,
            dtype or row count; NaN/Inf), in one line naming the input or output.

    Example:
        >>> from gradviz.data import TensorInfo
        >>> layout = Layout((TensorInfo("x", (None, 3), "float32"),), (TensorInfo("C", (None, 1), "float32"),), ("C",))
        >>> x, y = np.zeros((5, 3), "float32"), {"C": np.ones((5, 1), "float32")}
        >>> d = probe_data((x, y, {"C": np.full(5, 2.0, "float32")}), layout, batch_size=2)
        >>> d.batches, d.batch_size, [b.sample_weight["C"].tolist() for b in d.iter_batches()]
        (2, 2, [[2.0, 2.0], [2.0, 2.0]])
    """
    if keras_internals.is_tf_dataset(probe) or keras_internals.is_py_dataset(probe):
        if batch_size is not None:
            raise DataError("`batch_size` applies to an array probe; a dataset probe keeps its own batches")
        return fit_data(probe, layout=layout, phrase="the probe dataset")
    if keras_internals.is_generator(probe):
        raise DataError(
            f"the probe is a Python generator, which can be read only once; the monitor reads its probe at every "
            f"probe: pass {PROBE_FORMS}"
        )
    if not isinstance(probe, (tuple, list)) or len(probe) not in (2, 3):
        raise DataError(f"the probe must be {PROBE_FORMS}; got {type(probe).__name__}")
    x, y = probe[0], probe[1]
    sample_weight = probe[2] if len(probe) == 3 else None
    total = _rows(x)
    size = total if batch_size is None else batch_size
    if size < 1 or total < 1:
        raise DataError(
            f"the probe needs at least one row and a `batch_size` of at least 1 (rows {total}, batch size {size})"
        )
    if size > total:
        raise DataError(f"the probe has {total} rows, fewer than its `batch_size` {size}")
    # whole batches only: every batch has the same shape (one trace of the compiled pass)
    return fit_data(x, y, sample_weight, layout=layout, batch_size=size, steps=total // size,
                    phrase="the probe")


def _rows(x: Any) -> int:
    """Rows of the probe's first input array (the data path checks that the others agree)."""
    if isinstance(x, Mapping):
        x = next(iter(x.values()), None)
    elif isinstance(x, (list, tuple)):
        x = x[0] if len(x) else None
    shape: tuple[int, ...] = np.shape(x) if x is not None else ()
    return int(shape[0]) if len(shape) else 0
