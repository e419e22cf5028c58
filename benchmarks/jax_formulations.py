"""Which way of computing K per-loss gradients is fastest on JAX: the measurement behind the JAX backend.

Usage::

    KERAS_BACKEND=jax python benchmarks/jax_formulations.py [K] [A A2 D B]

On a small convolutional model (three Conv-BatchNorm-ReLU blocks, 32x32x3
inputs, batch 16, K regression heads), in training mode through
``model.stateless_call``, each formulation computes the per-variable Gram
matrices of the K losses' gradients, jitted; printed: trace, lowering and
compile seconds, and the warm median.

* ``A``: K separate ``jax.grad``\\ s of the model's losses, jitted together (the floor of issue 16);
* ``A2``: the same, of the jaxpr of one traced forward pass (what gradviz does: Keras runs once);
* ``D``: one ``jax.vjp`` and K pullbacks with the unit vectors;
* ``B``: one ``jax.vjp``, its pullback ``vmap``\\ ped over the K unit vectors.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "jax")


def main(argv: list[str]) -> int:
    import jax
    import jax.numpy as jnp
    import keras
    import numpy as np
    from jax.extend.core import jaxpr_as_fun
    from keras import initializers, layers

    k_losses = int(argv[0]) if argv else 3
    which = argv[1:] or ["A", "A2", "D", "B"]
    x = inp = keras.Input((32, 32, 3))
    for i, filters in enumerate((16, 32, 32)):
        x = layers.Conv2D(filters, 3, padding="same", kernel_initializer=initializers.GlorotUniform(seed=i))(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    outs = [layers.Dense(4, name=f"h{i}", kernel_initializer=initializers.GlorotUniform(seed=10 + i))(x)
            for i in range(k_losses)]
    model = keras.Model(inp, outs)
    weights = [v.value for v in model.trainable_variables]
    state = [v.value for v in model.non_trainable_variables]
    rng = np.random.default_rng(0)
    data = jnp.asarray(rng.standard_normal((16, 32, 32, 3)), jnp.float32)
    targets = [jnp.asarray(rng.standard_normal((16, 4)), jnp.float32) for _ in range(k_losses)]

    def losses(w: list[Any], s: list[Any], d: Any, t: list[Any]) -> list[Any]:
        out, _ = model.stateless_call(w, s, d, training=True)
        return [jnp.mean((o - y) ** 2) for o, y in zip(out, t)]

    def gram(grads: list[list[Any]]) -> list[Any]:
        flat = [jnp.stack([g[v].ravel() for g in grads]) for v in range(len(grads[0]))]
        return [f @ f.T for f in flat]

    def fa(w: list[Any], s: list[Any], d: Any, t: list[Any]) -> list[Any]:
        return gram([jax.grad(lambda p, k=k: losses(p, s, d, t)[k])(w) for k in range(k_losses)])

    start = time.perf_counter()
    traced = jax.make_jaxpr(losses)(weights, state, data, targets)
    trace_forward = time.perf_counter() - start
    replay = jaxpr_as_fun(traced)

    def fa2(w: list[Any], s: list[Any], d: Any, t: list[Any]) -> list[Any]:
        return gram([jax.grad(lambda p, k=k: replay(*p, *s, d, *t)[k])(w) for k in range(k_losses)])

    def fd(w: list[Any], s: list[Any], d: Any, t: list[Any]) -> list[Any]:
        _, pull = jax.vjp(lambda p: losses(p, s, d, t), w)
        eye = jnp.eye(k_losses)
        return gram([pull([eye[k, j] for j in range(k_losses)])[0] for k in range(k_losses)])

    def fb(w: list[Any], s: list[Any], d: Any, t: list[Any]) -> list[Any]:
        _, pull = jax.vjp(lambda p: jnp.stack(losses(p, s, d, t)), w)
        stacked = jax.vmap(pull)(jnp.eye(k_losses))[0]
        return [jnp.reshape(g, (k_losses, -1)) @ jnp.reshape(g, (k_losses, -1)).T for g in stacked]

    for name in which:
        fn = {"A": fa, "A2": fa2, "D": fd, "B": fb}[name]
        t0 = time.perf_counter()
        trace = jax.jit(fn).trace(weights, state, data, targets)
        t1 = time.perf_counter()
        lowered = trace.lower()
        t2 = time.perf_counter()
        compiled = lowered.compile()
        t3 = time.perf_counter()
        jax.block_until_ready(compiled(weights, state, data, targets))
        runs = []
        for _ in range(7):
            s = time.perf_counter()
            jax.block_until_ready(compiled(weights, state, data, targets))
            runs.append(time.perf_counter() - s)
        extra = f" (+ forward jaxpr {trace_forward:.2f}s)" if name == "A2" else ""
        print(f"K={k_losses} {name}: trace {t1 - t0:.2f}s{extra}, lower {t2 - t1:.2f}s, compile {t3 - t2:.2f}s, "
              f"warm {np.median(runs) * 1000:.1f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
