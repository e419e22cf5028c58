"""Mixed precision's loss scale, lowered as Keras's ``LossScaleOptimizer`` lowers it.

Both TensorFlow passes differentiate each loss times the scale and unscale the
statistics after (in float64), as Keras's training step differentiates the scaled
loss and unscales the gradients. Where the scaled gradients overflow, Keras halves
the scale after the step and tries again on the next one; gradviz reruns the
same batches at half the scale until they are finite, so the gradient reported is
the one Keras applies at the scale it settles on. Gradients that are not finite
even unscaled are reported as they are (the trouble is not the scale).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from gradviz.core.stats import Progress

if TYPE_CHECKING:
    from gradviz.data import Batch, BatchSource

R = TypeVar("R")


def run_scaled(
    run_at: Callable[[float, Progress | None], R],
    loss_scale: float | None,
    finite: Callable[[R], bool],
    losses_finite: Callable[[R], bool],
    progress: Progress | None,
) -> tuple[R, float | None]:
    """Run the batches at ``loss_scale``, halving it while the gradients overflow.

    Args:
        run_at: runs every batch with the losses scaled by the given factor (1.0: unscaled)
            and returns the (still scaled) statistics.
        loss_scale: where Keras starts; None: no scaling (``run_at(1.0, progress)`` once).
        finite: whether every gradient in a result is finite.
        losses_finite: whether every loss value in a result is finite (a non-finite loss is
            not an overflow of the scale).
        progress: given to the first run only.

    Returns:
        ``(result, scale it was computed at)``; the scale is None without scaling.

    Example:
        >>> runs = []
        >>> def run_at(scale, progress):
        ...     runs.append(scale)
        ...     return scale <= 4.0  # "finite" at 4 and below
        >>> run_scaled(run_at, 16.0, bool, lambda r: True, None), runs
        ((True, 4.0), [16.0, 1.0, 8.0, 4.0])
    """
    if loss_scale is None:
        return run_at(1.0, progress), None
    result = run_at(loss_scale, progress)
    scale = loss_scale
    if finite(result) or not losses_finite(result):
        return result, scale
    unscaled = run_at(1.0, None)
    if not finite(unscaled):  # not finite even unscaled: the scale is not the trouble
        return unscaled, 1.0
    while scale > 1.0 and not finite(result):  # an overflow: halve as Keras does
        scale /= 2.0
        result = run_at(scale, None) if scale > 1.0 else unscaled
    return result, scale


class _Replay:
    """A batch source read once and replayed from memory: a generator's batches cannot be read twice."""

    def __init__(self, source: BatchSource) -> None:
        self._source = source
        self._read: list[Batch] | None = None

    def __getattr__(self, name: str) -> Any:  # batches, batch_size, synthetic, guessed, ...
        return getattr(self._source, name)

    def iter_batches(self) -> Iterator[Batch]:
        """The source's batches: read (and kept) the first time, from memory after."""
        if self._read is not None:
            yield from self._read
            return
        read = []
        for batch in self._source.iter_batches():
            read.append(batch)
            yield batch
        self._read = read


def replayable(data: BatchSource, loss_scale: float | None) -> BatchSource:
    """``data`` as a run at ``loss_scale`` reads it: kept for a rerun at a lower scale when there is a scale.

    Example:
        >>> import numpy as np
        >>> from gradviz.data import Batch
        >>> class Once:
        ...     batches, batch_size, synthetic, guessed = 1, None, False, ()
        ...     def __init__(self): self.reads = 0
        ...     def iter_batches(self):
        ...         self.reads += 1
        ...         yield Batch((np.zeros((2, 1)),), {})
        >>> once = Once()
        >>> source = replayable(once, 32768.0)
        >>> [b.rows for b in source.iter_batches()], [b.rows for b in source.iter_batches()], once.reads
        ([2], [2], 1)
        >>> replayable(once, None) is once
        True
    """
    return data if loss_scale is None else _Replay(data)
