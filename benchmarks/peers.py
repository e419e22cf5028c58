"""What a user would write by hand instead of gradviz: three compiled GradientTape loops.

All three get the same model, losses, batches and ``training`` flag as gradviz,
call the model as user code does (``model(x, training=...)``), and return every
loss's squared gradient norm so that no backward pass can be pruned away.

* ``floor``: one forward pass under a persistent tape, one ``tape.gradient`` per
  loss (K losses: 1 forward + K backward). No per-analysis code can do less.
* ``naive``: a separate forward and backward pass per loss, each loss its own compiled
  step called in turn (what most code samples do).
* ``joint``: ``tape.jacobian`` of the stacked losses (vectorized with pfor).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

#: a compiled peer: (inputs, targets) of one batch -> per-loss squared gradient norms
Peer = Callable[[list[Any], dict[str, Any]], Any]
PEERS = ("floor", "naive", "joint")


def build_peers(model: Any, outputs: Sequence[str], heads: Sequence[str], loss_fns: Sequence[Any],
                training: bool = True) -> dict[str, Peer]:
    """Compile the three hand-written peers.

    Args:
        model: the Keras model.
        outputs: the model's output names, in order.
        heads: the output each loss applies to, in loss order.
        loss_fns: the loss objects (the ones gradviz resolved), in loss order.
        training: call the model in training mode.
    """
    import tensorflow as tf

    variables = list(model.trainable_variables)

    def call(x: list[Any]) -> dict[str, Any]:
        y_pred = model(x if len(x) > 1 else x[0], training=training)
        if isinstance(y_pred, dict):
            return dict(y_pred)
        if not isinstance(y_pred, (list, tuple)):
            y_pred = [y_pred]
        return dict(zip(outputs, y_pred))

    def losses(ys: dict[str, Any], named: dict[str, Any]) -> list[Any]:
        return [tf.cast(fn(ys[h], named[h]), tf.float32) for h, fn in zip(heads, loss_fns)]

    def squared_norm(grads: Sequence[Any]) -> Any:
        return tf.add_n([tf.reduce_sum(tf.square(tf.convert_to_tensor(g))) for g in grads if g is not None])

    @tf.function(reduce_retracing=True, autograph=False)
    def floor(x: list[Any], ys: dict[str, Any]) -> Any:
        with tf.GradientTape(persistent=True) as tape:
            values = losses(ys, call(x))
        norms = [squared_norm(tape.gradient(v, variables)) for v in values]
        del tape
        return tf.stack(norms)

    def one_loss(k: int) -> Callable[[list[Any], dict[str, Any]], Any]:
        @tf.function(reduce_retracing=True, autograph=False)
        def step(x: list[Any], ys: dict[str, Any]) -> Any:
            with tf.GradientTape() as tape:
                value = losses(ys, call(x))[k]
            return squared_norm(tape.gradient(value, variables))

        return step

    # One compiled step per loss, called in turn: the loop code samples write. (K forward passes
    # inside a single tf.function would let Grappler share the identical forward work between
    # them, which measures something close to the floor, not the naive loop.)
    naive = _Steps([one_loss(k) for k in range(len(loss_fns))])

    @tf.function(reduce_retracing=True, autograph=False)
    def joint(x: list[Any], ys: dict[str, Any]) -> Any:
        with tf.GradientTape() as tape:
            stacked = tf.stack(losses(ys, call(x)))
        jacobians = tape.jacobian(stacked, variables, experimental_use_pfor=True)
        per_loss = [tf.reduce_sum(tf.reshape(tf.square(j), [len(loss_fns), -1]), axis=1)
                    for j in jacobians if j is not None]
        return tf.add_n(per_loss)

    return {"floor": floor, "naive": naive, "joint": joint}


class _Steps:
    """Compiled steps called in turn, with ``get_concrete_function`` like one tf.function (the
    memory measurement traces a peer before running it)."""

    def __init__(self, steps: Sequence[Any]) -> None:
        self.steps = list(steps)

    def __call__(self, x: list[Any], ys: dict[str, Any]) -> Any:
        import tensorflow as tf

        return tf.stack([step(x, ys) for step in self.steps])

    def get_concrete_function(self, x: list[Any], ys: dict[str, Any]) -> list[Any]:
        return [step.get_concrete_function(x, ys) for step in self.steps]


def run_peer(peer: Peer, data: Any) -> Any:
    """Run a peer over every batch of a ``gradviz.data.Data`` (or any ``BatchSource``) and fetch the result, as gradviz does.

    Batches are sliced from the NumPy arrays and converted per call, as gradviz's pass does too.
    """
    import numpy as np
    import tensorflow as tf

    total = None
    for batch in data.iter_batches():
        x = [tf.convert_to_tensor(a) for a in batch.x]
        y = {k: tf.convert_to_tensor(v) for k, v in batch.y.items()}
        out = peer(x, y).numpy()
        total = out if total is None else total + out
    return np.asarray(total)
