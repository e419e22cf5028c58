"""Gradient passes under ``tf.distribute``: run on the whole data as one device would.

A model built and trained under ``tf.distribute.MirroredStrategy`` keeps its
weights in mirrored variables, and ``fit`` called inside ``strategy.scope()``
runs its callbacks inside that scope. Two things then change a gradient pass
that is not itself distributed (it runs on the whole probe, once):

* Keras's ``Loss`` divides a mean-reduced loss by the number of replicas whenever
  a strategy is current (``keras/src/losses/loss.py``, ``scale_loss_for_distribution``:
  each replica's gradient is summed across replicas in training). Our pass is not
  summed across replicas, so every gradient came out 1/N of the whole probe's,
  while shares and cosines (ratios) looked right.
* Variables created there (the mean-gradient sums) become mirrored variables:
  one copy per device, each written at every batch.

:func:`outside_strategy` runs a pass with the thread's strategy stack (and the
variable creators the scope installed) set aside, the way a thread that never
entered the scope sees TensorFlow: the mirrored weights are read as they are
(every replica holds the same values), the losses are not scaled, new variables
are plain. Nothing of the strategy is changed; the stacks are restored after.
This touches two private attributes of TensorFlow's default graph (the strategy
stack is thread-local there); ``tests/test_distributed.py`` pins them.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

from gradviz.errors import BackendError

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def outside_strategy() -> Iterator[None]:
    """Set the current ``tf.distribute`` strategy scope aside for the block (no-op without one).

    Raises:
        BackendError: called inside ``strategy.run`` (a replica context): a gradient pass
            reduces to NumPy and cannot run per replica.
    """
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        yield
        return
    if not tf.distribute.in_cross_replica_context():
        raise BackendError("gradviz cannot run a gradient pass inside strategy.run (a replica context); "
                           "call it outside, as fit calls its callbacks")
    graph = tf.compat.v1.get_default_graph()
    strategies = graph._distribution_strategy_stack  # noqa: SLF001  (thread-local list)
    creators = graph._variable_creator_stack  # noqa: SLF001
    graph._distribution_strategy_stack = []
    graph._variable_creator_stack = []
    try:
        yield
    finally:
        graph._distribution_strategy_stack = strategies
        graph._variable_creator_stack = creators


def single_device(method: F) -> F:
    """Decorate a backend's ``run``: it runs under :func:`outside_strategy`."""

    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        with outside_strategy():
            return method(*args, **kwargs)

    return run  # type: ignore[return-value]
