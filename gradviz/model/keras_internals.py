"""Keras's private API that gradviz relies on for fit-style data, in one place.

``Model.fit`` turns whatever it is given (NumPy arrays and lists or dicts of
them, a ``tf.data.Dataset``, a ``keras.utils.PyDataset``, a Python generator)
into batches through its data adapters (``keras/src/trainers/data_adapters/``),
which also turn ``class_weight`` into sample weights. gradviz reuses them
instead of writing a second converter. They are not public API:
``tests/test_keras_internals.py`` pins what this module relies on for the Keras
versions gradviz supports, so a Keras upgrade that moves them breaks this file
and that test, nothing else.

What is relied on:

* ``keras.src.trainers.data_adapters.get_data_adapter(x, y, sample_weight,
  batch_size, steps_per_epoch, shuffle, class_weight)``: picks the adapter fit
  uses, raising ``ValueError`` for what fit refuses.
* an adapter's ``num_batches`` (None when unknown or infinite), ``batch_size``
  and ``get_numpy_iterator()``, which yields ``x``, ``(x, y)`` or
  ``(x, y, sample_weight)`` per batch as NumPy arrays in the caller's structure.
* ``PyDatasetAdapter.enqueuer``: the worker pool of a ``PyDataset`` with
  workers, which must be stopped when gradviz stops reading early.
* ``data_adapter_utils.unpack_x_y_sample_weight``: the one place Keras unpacks a batch.
* ``data_adapters.is_tf_dataset``: how Keras recognises a ``tf.data.Dataset``.

gradviz never calls an adapter's ``on_epoch_begin`` / ``on_epoch_end``: they run
the user's ``PyDataset`` epoch hooks (which may reshuffle), and analysing is not
an epoch of training.
"""

from __future__ import annotations

import types
from typing import Any, Iterator


def data_adapter(
    x: Any,
    y: Any = None,
    sample_weight: Any = None,
    class_weight: Any = None,
    batch_size: int | None = None,
    steps: int | None = None,
) -> Any:
    """The data adapter ``Model.fit`` would use for these arguments (no shuffling).

    Raises:
        ValueError: Keras refuses the combination (its own message).
    """
    from keras.src.trainers.data_adapters import get_data_adapter

    return get_data_adapter(
        x=x,
        y=y,
        sample_weight=sample_weight,
        batch_size=batch_size,
        steps_per_epoch=steps,
        shuffle=False,
        class_weight=class_weight,
    )


def numpy_batches(adapter: Any) -> Iterator[Any]:
    """The adapter's batches, as fit's NumPy iterator yields them (the caller's structure)."""
    return iter(adapter.get_numpy_iterator())


def stop_workers(adapter: Any) -> None:
    """Stop a ``PyDataset``'s worker pool, if the adapter started one (a no-op otherwise)."""
    enqueuer = getattr(adapter, "enqueuer", None)
    if enqueuer is not None and enqueuer.is_running():
        enqueuer.stop()


def unpack_x_y_sample_weight(batch: Any) -> tuple[Any, Any, Any]:
    """``x``, ``y`` and ``sample_weight`` of one batch, as Keras's training step unpacks it."""
    from keras.src.trainers.data_adapters.data_adapter_utils import unpack_x_y_sample_weight as unpack

    x, y, sample_weight = unpack(batch)
    return x, y, sample_weight


def is_tf_dataset(x: Any) -> bool:
    """Whether Keras treats ``x`` as a ``tf.data.Dataset``."""
    from keras.src.trainers.data_adapters import is_tf_dataset as check

    return bool(check(x))


def is_py_dataset(x: Any) -> bool:
    """Whether ``x`` is a ``keras.utils.PyDataset``."""
    import keras

    return isinstance(x, keras.utils.PyDataset)


def is_generator(x: Any) -> bool:
    """Whether ``x`` is what Keras's generator adapter takes (a Python generator)."""
    return isinstance(x, types.GeneratorType)
