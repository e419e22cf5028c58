"""Per-variable statistics of K gradients, reduced inside the TensorFlow graph.

For each trainable variable, the K losses' gradients become their K x K Gram
matrix (inner products, float64), the largest absolute entry of each, and
whether each is finite. Three flat tensors carry every variable's statistics
out of the graph (:func:`gradviz.core.stats.unpack` splits them again).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: entries per float32 block of the Gram products of large variables (summed in float64)
GRAM_CHUNK = 1 << 16


def gram_stats(per_loss: list[Any]) -> tuple[Any, Any, Any]:
    """The Gram matrix, max-abs and finiteness of the gradients of one variable (those that exist).

    Args:
        per_loss: the existing gradients of one variable, one per loss, of equal shape.

    Returns:
        ``(gram (P, P) float64, max_abs (P,) float64, finite (P,) bool)``.
    """
    import tensorflow as tf

    size = int(np.prod(per_loss[0].shape))
    chunks = size // GRAM_CHUNK
    if chunks < 2 or per_loss[0].dtype == tf.float64:  # small: products and sums in float64
        # Stacked in the gradients' own precision, then one exact cast (not K casts: with
        # many losses and variables the op count is what the trace pays for).
        common = tf.float64 if any(g.dtype == tf.float64 for g in per_loss) else tf.float32
        flat = tf.cast(tf.stack([tf.reshape(tf.cast(g, common), [-1]) for g in per_loss]), tf.float64)
        gram = tf.matmul(flat, flat, transpose_b=True)
        return gram, tf.reduce_max(tf.abs(flat), axis=1), tf.reduce_all(tf.math.is_finite(flat), axis=1)
    # Large: float64 copies of K gradients cost more than the backward passes of big
    # models. float32 matrix products over chunks of GRAM_CHUNK entries, summed in
    # float64, stay within ~1e-7 of the float64 Gram (a plain float32 product over
    # millions of entries drifts to ~1e-4).
    # One float32 copy of the K gradients, (chunks, K, GRAM_CHUNK) plus a tail; everything
    # else works on it in place or reduces it (no per-gradient temporaries: a big model's
    # largest variable times K is what this step adds to the backward passes' memory).
    raw = [tf.reshape(tf.cast(g, tf.float32), [-1]) for g in per_loss]
    max_abs = tf.stack([tf.maximum(tf.reduce_max(f), -tf.reduce_min(f)) for f in raw])
    # Each gradient is divided by a power of two near its largest entry first, so float32
    # products neither underflow (gradients ~1e-21) nor overflow (~1e21); dividing by a
    # power of two is exact, and the scales are multiplied back in float64.
    usable = tf.where(tf.math.is_finite(max_abs) & (max_abs > 0), max_abs, tf.ones_like(max_abs))
    exponent = tf.clip_by_value(tf.math.floor(tf.math.log(usable) / np.log(2.0)), -126.0, 127.0)
    scale = tf.pow(tf.constant(2.0, tf.float32), exponent)
    head = chunks * GRAM_CHUNK
    blocks = tf.stack([tf.reshape(f[:head], [chunks, GRAM_CHUNK]) for f in raw], axis=1)  # (c, K, m)
    blocks = blocks / scale[None, :, None]
    gram = tf.reduce_sum(tf.cast(tf.matmul(blocks, blocks, transpose_b=True), tf.float64), axis=0)
    if head < size:
        tail = tf.cast(tf.stack([f[head:] for f in raw]) / scale[:, None], tf.float64)
        gram += tf.matmul(tail, tail, transpose_b=True)
    scale64 = tf.cast(scale, tf.float64)
    gram = gram * scale64[:, None] * scale64[None, :]
    # A NaN or infinite entry makes its sum of squares non-finite, and after the scaling
    # above no finite gradient can overflow it (entries <= 2, chunks of 2^16), so the
    # diagonal tells finiteness exactly, without a pass (or a traced cond) per gradient.
    finite = tf.math.is_finite(tf.linalg.diag_part(gram))
    return gram, tf.cast(max_abs, tf.float64), finite


def reduce_all(dense: list[list[Any]], variables: int) -> tuple[tuple[Any, Any, Any], list[list[Any]]]:
    """Every variable's statistics, packed into three flat tensors.

    Packed (Gram entries, max-abs, finiteness of every variable with a gradient, in variable
    order): three fetches per batch instead of three per variable, which dominated small
    models' pass.

    Args:
        dense: ``dense[k][v]``: loss k's gradient of variable v (None: none exists).
        variables: the number of variables.

    Returns:
        The packed statistics, and per variable the tensors whose computation ends its
        gradients' use (what :class:`~gradviz.backends.tensorflow.lockstep.Lockstep` waits for).
    """
    import tensorflow as tf

    grams, maxes, finites = [], [], []
    done: list[list[Any]] = []
    for v in range(variables):
        present = [dense[k][v] for k in range(len(dense)) if dense[k][v] is not None]
        done.append([])
        if present:
            gram, max_abs, finite = gram_stats(present)
            grams.append(tf.reshape(gram, [-1]))
            maxes.append(max_abs)
            finites.append(finite)
            done[-1] = [gram, max_abs, finite]
    if not grams:
        return (tf.zeros([0], tf.float64), tf.zeros([0], tf.float64), tf.zeros([0], tf.bool)), done
    return (tf.concat(grams, 0), tf.concat(maxes, 0), tf.concat(finites, 0)), done
