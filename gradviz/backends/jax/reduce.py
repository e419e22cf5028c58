"""Per-variable statistics of K gradients: reduced on the device in float32, finished on the host in float64.

For each trainable variable, the existing gradients of the K losses become
their K x K Gram matrix, their largest absolute entries and finiteness flags
(as :mod:`gradviz.backends.tensorflow.reduce` makes them on TensorFlow).

Precision without ``jax_enable_x64``: that switch is process-wide and changes
the user's default dtypes, so the JAX backend keeps it off and never computes
in float64 on the device. Instead each gradient is first divided by a power of
two near its largest entry (exact, and it keeps float32 products from
underflowing at gradients of ~1e-21 or overflowing at ~1e21); the device then
computes float32 Gram matrices of chunks of :data:`GRAM_CHUNK` entries (at full
float32 precision, never TF32/bfloat16 on accelerators), and only those partial
matrices, ``ceil(size / GRAM_CHUNK) x K x K`` numbers per variable, travel to
the host, where they are summed in float64 and the scales multiplied back. A
plain float32 product over millions of entries drifts to ~1e-4; chunked, the
result stays within ~1e-7 of the float64 Gram.

A NaN or infinite entry makes its chunk's sum of squares non-finite, and after
the scaling no finite gradient can overflow one (entries below 2 in magnitude,
chunks of 2^14 entries), so the diagonal tells finiteness exactly.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

#: entries per float32 block of a Gram product (the blocks' matrices are summed in float64 on the host)
GRAM_CHUNK = 1 << 14


def chunks(size: int) -> int:
    """How many partial Gram matrices a variable of ``size`` entries yields.

    Example:
        >>> chunks(10), chunks(GRAM_CHUNK), chunks(GRAM_CHUNK + 1)
        (1, 1, 2)
    """
    return max(1, -(-size // GRAM_CHUNK))


def partial_grams(per_loss: Sequence[Any]) -> tuple[Any, Any, Any]:
    """Traced: the chunk-wise float32 Gram matrices of one variable's existing gradients.

    Args:
        per_loss: the P existing gradients of one variable, of equal shape.

    Returns:
        ``(partials (chunks, P, P), scale (P,), max_abs (P,))``, all float32: the Gram matrix of
        the gradients is ``sum(partials) * scale[:, None] * scale[None, :]``.
    """
    import jax
    import jax.numpy as jnp

    # No (P, n) stack of the gradients: each is read where it lies (measured faster: XLA would
    # otherwise materialize the stacked copy for the max-abs and the tail).
    flats = [jnp.reshape(g, (-1,)).astype(jnp.float32) for g in per_loss]
    size = flats[0].shape[0]
    max_abs = jnp.stack([jnp.max(jnp.abs(f)) for f in flats])
    usable = jnp.where(jnp.isfinite(max_abs) & (max_abs > 0), max_abs, jnp.ones_like(max_abs))
    _, exponent = jnp.frexp(usable)  # usable = m * 2^exponent, m in [0.5, 1)
    scale = jnp.ldexp(jnp.ones_like(usable), jnp.clip(exponent - 1, -126, 127))  # entries / scale in [-2, 2)
    highest = jax.lax.Precision.HIGHEST
    head = (size // GRAM_CHUNK) * GRAM_CHUNK
    parts = []
    if head:
        # Built chunk-major, (chunks, P, GRAM_CHUNK): a (P, chunks, ...) array would make the batched
        # product transpose all of it first (measured: the reduction of the MLP benchmark's 8 x 4M
        # gradients took 0.50 s that way, 0.31 s this way, median on a loaded machine).
        blocks = jnp.stack(
            [jnp.reshape(f[:head] / scale[p], (head // GRAM_CHUNK, GRAM_CHUNK)) for p, f in enumerate(flats)], axis=1
        )
        parts.append(jnp.matmul(blocks, jnp.swapaxes(blocks, 1, 2), precision=highest))
    if head < size or size == 0:
        tail = jnp.stack([f[head:] / scale[p] for p, f in enumerate(flats)])
        parts.append(jnp.matmul(tail, tail.T, precision=highest)[None])
    partials = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)
    return partials, scale, max_abs


def finish(partials: np.ndarray, scale: np.ndarray, max_abs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """On the host: the float64 Gram matrix, max-abs and finiteness from :func:`partial_grams`' output.

    Example:
        >>> g = finish(np.array([[[1.0, 0.5], [0.5, 1.0]], [[1.0, 0.0], [0.0, np.inf]]], np.float32),
        ...            np.array([2.0, 0.5], np.float32), np.array([3.0, 0.75], np.float32))
        >>> g[0].tolist(), g[2].tolist()
        ([[8.0, 0.5], [0.5, inf]], [True, False])
    """
    scale64 = scale.astype(np.float64)
    gram = partials.astype(np.float64).sum(axis=0) * scale64[:, None] * scale64[None, :]
    return gram, max_abs.astype(np.float64), np.isfinite(np.diag(gram))


def host_partial_grams(per_loss: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`partial_grams` in NumPy, on arrays already in host memory: the same arithmetic.

    The same power-of-two scaling and float32 Gram matrices of :data:`GRAM_CHUNK`-entry blocks,
    for the JAX pass on a CPU, where a JAX array's memory is the host's: there the final
    reduction of the mean-gradient sums needs no compiled program of its own (tracing,
    lowering and loading one cost a fresh process seconds on the benchmark's MLP).

    Example:
        >>> p, s, m = host_partial_grams([np.array([3.0, 4.0], np.float32), np.array([1.0, 0.0], np.float32)])
        >>> finish(p, s, m)[0].tolist()
        [[25.0, 3.0], [3.0, 1.0]]
    """
    flats = [np.asarray(g).reshape(-1) for g in per_loss]
    flats = [f if f.dtype == np.float32 else f.astype(np.float32) for f in flats]
    size, count = flats[0].size, len(flats)
    # max(max, -min): no |x| copy; NaN propagates through both
    max_abs = np.array([max(float(f.max()), -float(f.min())) if size else 0.0 for f in flats], np.float32)
    usable = np.where(np.isfinite(max_abs) & (max_abs > 0), max_abs, np.float32(1.0))
    _, exponent = np.frexp(usable)
    scale = np.ldexp(np.float32(1.0), np.clip(exponent - 1, -126, 127)).astype(np.float32)
    head = (size // GRAM_CHUNK) * GRAM_CHUNK
    blocks_count = head // GRAM_CHUNK
    tail = size - head
    partials = np.empty((blocks_count + (1 if tail or size == 0 else 0), count, count), np.float32)
    block = np.empty((count, GRAM_CHUNK), np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf gradients: flagged by finish(), not warned
        _host_blocks(flats, scale, partials, block, blocks_count, head, bool(tail) or size == 0)
    return partials, scale, max_abs


def _host_blocks(flats: list[np.ndarray], scale: np.ndarray, partials: np.ndarray, block: np.ndarray,
                 blocks_count: int, head: int, with_tail: bool) -> None:
    """Fill ``partials`` with the scaled blocks' float32 Gram matrices (the tail's last)."""
    for c in range(blocks_count):
        start = c * GRAM_CHUNK
        for p, f in enumerate(flats):
            np.divide(f[start:start + GRAM_CHUNK], scale[p], out=block[p])
        np.matmul(block, block.T, out=partials[c])
    if with_tail:
        rest = np.stack([f[head:] / scale[p] for p, f in enumerate(flats)]).astype(np.float32)
        partials[-1] = rest @ rest.T
