"""TensorBoard event files written with TensorFlow alone (no ``tensorboard`` package needed).

``tf.summary.scalar`` and ``tf.summary.histogram`` live in the ``tensorboard``
package; the event format itself is TensorFlow's. This writer emits the same
summaries (plugin ``scalars``: a float32 scalar; plugin ``histograms``: a
``(buckets, 3)`` float64 tensor of left edge, right edge and count) through
``tf.summary.write``, so TensorBoard shows them as its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: buckets per histogram, as TensorBoard's own default
HISTOGRAM_BUCKETS = 30


def histogram_buckets(values: np.ndarray, buckets: int = HISTOGRAM_BUCKETS) -> np.ndarray:
    """``(buckets, 3)``: left edge, right edge and count of equal-width buckets over the values' range.

    Example:
        >>> histogram_buckets(np.array([0.0, 1.0, 1.0]), 2).tolist()
        [[0.0, 0.5, 1.0], [0.5, 1.0, 2.0]]
    """
    finite = values[np.isfinite(values)].astype(np.float64)
    if finite.size == 0:
        return np.zeros((0, 3))
    low, high = float(finite.min()), float(finite.max())
    if low == high:  # one value: one bucket around it, as TensorBoard draws it
        return np.array([[low - 0.5, high + 0.5, float(finite.size)]])
    counts, edges = np.histogram(finite, bins=buckets, range=(low, high))
    return np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)


class SummaryWriter:
    """Scalars and histograms into a TensorBoard log directory (owned, flushed and closed here)."""

    def __init__(self, log_dir: str | Path) -> None:
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        self._tf = tf
        self._writer = tf.summary.create_file_writer(str(log_dir))
        self._metadata = {
            kind: summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=kind))
            for kind in ("scalars", "histograms")
        }

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Write one scalar."""
        tf = self._tf
        with self._writer.as_default():
            tf.summary.write(tag, tf.constant(value, tf.float32), step=step,
                             metadata=self._metadata["scalars"].SerializeToString())

    def histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        """Write one histogram of ``values``."""
        tf = self._tf
        with self._writer.as_default():
            tf.summary.write(tag, tf.constant(histogram_buckets(values), tf.float64), step=step,
                             metadata=self._metadata["histograms"].SerializeToString())

    def flush(self) -> None:
        """Write what is buffered to disk."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()

    def __enter__(self) -> SummaryWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
