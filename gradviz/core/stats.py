"""Per-loss gradient statistics and the figures derived from them (NumPy only).

A gradient backend reduces the K losses' gradients of every trainable variable
to that variable's K x K Gram matrix of inner products, plus max-abs and
finiteness. Everything the report says of norms, shares and cosines follows
from those matrices, under any loss weights, without recomputing a gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

#: statistics of the gradient averaged over the batches (what training on them applies)
MEAN_GRADIENT = "mean-gradient"
#: average of per-batch statistics (no per-parameter accumulators)
PER_BATCH = "per-batch"
BATCH_MODES = (MEAN_GRADIENT, PER_BATCH)

#: called with ``(batches done, batches)``
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class GradientStats:
    """Reduced per-loss gradient statistics.

    Attributes:
        loss_names: the terms, in order (``regularization`` last, if the model has one).
        gram: ``(V, K, K)`` float64: for variable v, ``gram[v, i, j]`` is the
            inner product of loss i's and loss j's gradients (0 where one does not exist).
        exists: ``(V, K)`` bool: loss k's gradient exists for variable v.
        max_abs: ``(V, K)`` float64: the largest absolute gradient entry (0 where none).
        finite: ``(V, K)`` bool: every entry of the gradient is finite.
        loss_values: ``(K,)`` float64: unweighted loss values, averaged over batches.
        batches: number of batches.
        mode: ``mean-gradient`` or ``per-batch``.
        has_regularization: the last loss is the summed regularizers.
        loss_scale: the factor the losses were scaled by before differentiating (and the
            gradients unscaled by after), as Keras's ``LossScaleOptimizer`` does in mixed
            precision; None when they were not scaled.
    """

    loss_names: tuple[str, ...]
    gram: np.ndarray
    exists: np.ndarray
    max_abs: np.ndarray
    finite: np.ndarray
    loss_values: np.ndarray
    batches: int
    mode: str
    has_regularization: bool = False
    loss_scale: float | None = None


def unpack(packed: tuple[np.ndarray, np.ndarray, np.ndarray], exists_by_loss: list[list[bool]]) -> list[Any]:
    """Split the packed statistics into one ``(gram, max_abs, finite)`` per variable (None: no gradient).

    Example:
        >>> packed = (np.arange(5.0), np.array([7.0, 8.0, 9.0]), np.array([True, True, False]))
        >>> unpack(packed, [[True, False, True], [False, False, True]])[1:]
        [None, (array([[1., 2.],
               [3., 4.]]), array([8., 9.]), array([ True, False]))]
    """
    gram, max_abs, finite = packed
    out: list[Any] = []
    g = m = 0
    for v in range(len(exists_by_loss[0]) if exists_by_loss else 0):
        p = sum(1 for per_loss in exists_by_loss if per_loss[v])
        if not p:
            out.append(None)
            continue
        out.append((gram[g:g + p * p].reshape(p, p), max_abs[m:m + p], finite[m:m + p]))
        g += p * p
        m += p
    return out


def assemble(
    names: tuple[str, ...],
    exists_by_loss: list[list[bool]],
    stats: list[Any],
    loss_values: np.ndarray,
    divide: float,
    batches: int,
    mode: str,
    has_regularization: bool = False,
    loss_scale: float | None = None,
) -> GradientStats:
    k = len(names)
    v = len(stats)
    gram = np.zeros((v, k, k))
    exists = np.zeros((v, k), dtype=bool)
    max_abs = np.zeros((v, k))
    finite = np.ones((v, k), dtype=bool)
    for var in range(v):
        present = [loss for loss in range(k) if exists_by_loss[loss][var]]
        exists[var, present] = True
        if stats[var] is None:
            continue
        g, m, f = stats[var]
        gram[var][np.ix_(present, present)] = g / divide
        max_abs[var, present] = m
        finite[var, present] = f
    return GradientStats(
        names, gram, exists, max_abs, finite, np.asarray(loss_values, dtype=np.float64), batches, mode, has_regularization,
        loss_scale,
    )


def sqrt_nonneg(x: float) -> float:
    return math.sqrt(x) if x > 0 else (x if math.isnan(x) else 0.0)


def combined_norm(gram: np.ndarray, weights: np.ndarray) -> float:
    """Norm of ``sum_k w_k g_k`` from the Gram matrix of the ``g_k``.

    Example:
        >>> g = np.array([[4.0, 0.0], [0.0, 9.0]])  # |g1| = 2, |g2| = 3, orthogonal
        >>> combined_norm(g, np.array([1.0, 1.0]))  # sqrt(4 + 9)
        3.605551275463989
    """
    return sqrt_nonneg(float(weights @ gram @ weights))


def shares(gram: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each loss's share of the combined gradient: ``w_k <g_k, g> / |g|^2``; sums to 1.

    Example:
        >>> shares(np.array([[1.0, -0.5], [-0.5, 4.0]]), np.array([1.0, 1.0])).round(3).tolist()
        [0.125, 0.875]
    """
    total = float(weights @ gram @ weights)
    if not math.isfinite(total):  # a NaN/Inf gradient: no loss's share is meaningful
        return np.full(len(weights), math.nan)
    if not total > 0:
        return np.zeros(len(weights))
    return weights * (gram @ weights) / total


def cosine(gram: np.ndarray, i: int, j: int) -> float:
    """Cosine similarity of gradients i and j (NaN when either is zero).

    Example:
        >>> cosine(np.array([[1.0, -1.0], [-1.0, 4.0]]), 0, 1)
        -0.5
    """
    denom = math.sqrt(gram[i, i] * gram[j, j]) if gram[i, i] > 0 and gram[j, j] > 0 else 0.0
    return float(gram[i, j] / denom) if denom > 0 else float("nan")


def magnitude_similarity(gram: np.ndarray, i: int, j: int) -> float:
    """``2 |g_i| |g_j| / (|g_i|^2 + |g_j|^2)``: 1 for equal norms, near 0 for very different ones.

    Example:
        >>> magnitude_similarity(np.array([[1.0, 0.0], [0.0, 1.0]]), 0, 1)
        1.0
    """
    total = gram[i, i] + gram[j, j]
    return float(2 * math.sqrt(max(gram[i, i], 0) * max(gram[j, j], 0)) / total) if total > 0 else float("nan")


def values_by_layer(
    sums: list[list[np.ndarray]], loss_names: list[str], layer_of: list[str], batches: int
) -> dict[tuple[str, str], np.ndarray]:
    """``{(loss, layer): values}``: per-variable gradient sums over ``batches`` batches, averaged and
    concatenated per layer (variables without a gradient, empty arrays, are left out).

    Example:
        >>> sums = [[np.array([2.0, 4.0]), np.array([6.0])], [np.zeros(0), np.array([8.0])]]
        >>> out = values_by_layer(sums, ["C", "D"], ["A", "A"], 2)
        >>> {k: v.tolist() for k, v in out.items()}
        {('C', 'A'): [1.0, 2.0, 3.0], ('D', 'A'): [4.0]}
    """
    result: dict[tuple[str, str], list[np.ndarray]] = {}
    for name, per_loss in zip(loss_names, sums):
        for layer, g in zip(layer_of, per_loss):
            if g.size:
                result.setdefault((name, layer), []).append(g / batches)
    return {key: np.concatenate(parts) for key, parts in result.items()}
