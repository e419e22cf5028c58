"""Where the JAX pass runs: one device, or several through Keras's distribution API.

When a ``keras.distribution`` distribution is set (``DataParallel``, or
``ModelParallel`` whose layout map gives variables a layout), the pass
follows it the way Keras's own JAX trainer does: every weight is placed with
the distribution's layout for it (replicated under ``DataParallel``) and every
batch is split along its first dimension across the mesh's batch axis. The
compiled pass is then partitioned by XLA: each device differentiates its share
of the batch, and the losses (means over the whole batch) and so the gradients
and their per-variable statistics are reduced across the devices inside the
program, so the numbers equal the single-device run's up to float32 summation
order. Without a distribution, arrays go to JAX's default device (a GPU or TPU
when there is one).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradviz.errors import DataError


class Placement:
    """Puts weights and batches where the pass runs them.

    Args:
        distribution: the current ``keras.distribution`` distribution, or None.
    """

    def __init__(self, distribution: Any = None) -> None:
        self.distribution = distribution

    @classmethod
    def current(cls) -> Placement:
        """The placement Keras's distribution API asks for right now."""
        import keras

        return cls(keras.distribution.distribution())

    @property
    def devices(self) -> int:
        """How many devices the pass runs on."""
        if self.distribution is None:
            return 1
        return int(np.prod(self.distribution.device_mesh.shape))

    @property
    def batch_shards(self) -> int:
        """Into how many parts a batch is split (the size of the mesh's batch axis)."""
        if self.distribution is None:
            return 1
        mesh = self.distribution.device_mesh
        name = getattr(self.distribution, "batch_dim_name", None)
        names = list(mesh.axis_names)
        return int(mesh.shape[names.index(name)]) if name in names else 1

    def variable(self, variable: Any, value: Any = None) -> Any:
        """A Keras variable's value (or ``value`` in its place), laid out as the distribution wants the variable."""
        value = variable.value if value is None else value
        if self.distribution is None:
            return value
        import keras

        layout = self.distribution.get_variable_layout(variable)
        return value if layout is None else keras.distribution.distribute_tensor(value, layout)

    def batch(self, array: np.ndarray) -> Any:
        """A batch array on the device(s), split along its first dimension under a distribution.

        Raises:
            DataError: the batch does not split evenly across the devices.
        """
        import jax

        if self.distribution is None:
            return jax.device_put(array)
        shards = self.batch_shards
        if array.shape and array.shape[0] % shards:
            raise DataError(
                f"a batch of {array.shape[0]} rows does not split evenly across the {shards} devices of "
                f"the keras.distribution {type(self.distribution).__name__}; use a --batch-size that is a "
                f"multiple of {shards}"
            )
        import keras

        return keras.distribution.distribute_tensor(array, self.distribution.get_data_layout(array.shape))

    def batches(self, arrays: list[np.ndarray]) -> list[Any]:
        """Several batch arrays placed at once (one transfer call on a single device).

        Raises:
            DataError: a batch does not split evenly across the devices.
        """
        if self.distribution is None:  # the compiled program transfers host arrays itself, cheapest
            return list(arrays)
        return [self.batch(a) for a in arrays]

    def zeros(self, like: list[Any]) -> list[Any]:
        """Float32 zeros shaped and placed like each of ``like`` (one transfer call)."""
        import jax

        zeros = [np.zeros(a.shape, np.float32) for a in like]
        if self.distribution is None:
            return list(jax.device_put(zeros))
        return list(jax.device_put(zeros, [a.sharding for a in like]))

    def key(self) -> Any:
        """What distinguishes this placement in a cache of compiled programs."""
        if self.distribution is None:
            return None
        mesh = self.distribution.device_mesh
        return (type(self.distribution).__name__, tuple(mesh.shape), tuple(mesh.axis_names),
                tuple(str(d) for d in np.asarray(mesh.devices).ravel()))
