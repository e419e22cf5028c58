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

from typing import Callable, TypeVar

from gradviz.core.stats import Progress

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
