"""What a gradient backend reads: batches of inputs, targets and sample weights.

Every kind of data gradviz takes (an ``.npz`` file, synthetic data, anything
``Model.fit`` takes) ends up as a :class:`BatchSource`: a known number of
:class:`Batch` values, read in order.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Protocol

import numpy as np


@dataclass(frozen=True)
class Batch:
    """One batch, checked against the model and named by it.

    Attributes:
        x: one array per model input, in input order.
        y: the targets of every output that carries a loss, by output name.
        sample_weight: per output, the weights Keras's loss applies to its rows
            (``loss(y, y_pred, sample_weight)``); an output missing here is unweighted.
    """

    x: tuple[np.ndarray, ...]
    y: Mapping[str, np.ndarray]
    sample_weight: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        """The batch's number of rows.

        Example:
            >>> Batch((np.zeros((3, 2)),), {}).rows
            3
        """
        arrays = list(self.x) + list(self.y.values())
        return int(arrays[0].shape[0]) if arrays else 0


class BatchSource(Protocol):
    """Batches to compute gradients on (:class:`~gradviz.data.Data` or :class:`~gradviz.data.FitData`)."""

    @property
    def batches(self) -> int:
        """How many batches :meth:`iter_batches` yields."""
        ...

    @property
    def batch_size(self) -> int | None:
        """Rows per batch, when known in advance (None: the data's own batches)."""
        ...

    @property
    def synthetic(self) -> bool:
        """Whether gradviz made the data up."""
        ...

    @property
    def guessed(self) -> tuple[str, ...]:
        """Synthetic integer inputs whose id range gradviz could not infer (named when the model rejects them)."""
        ...

    def iter_batches(self) -> Iterator[Batch]:
        """The batches, in order.

        Raises:
            DataError: a batch does not fit the model, or the data ends early.
        """
        ...


@contextmanager
def closing(batches: Iterator[Any]) -> Iterator[Iterator[Any]]:
    """``batches``, closed afterwards if it is a generator (its ``finally`` runs now, not at garbage
    collection): a reader stops, with its workers, even when a batch fails."""
    try:
        yield batches
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
