"""The JAX backend's pure parts, on plain JAX functions: reachability from a jaxpr, the chunked Gram reduction.

These need JAX but not Keras on JAX, so they run in the test process itself.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from gradviz.backends.jax.reachability import existing_gradients  # noqa: E402
from gradviz.backends.jax.reduce import GRAM_CHUNK, chunks, finish, host_partial_grams, partial_grams  # noqa: E402


def reach(losses: Callable[..., Any], *shapes: tuple[int, ...]) -> list[list[bool]]:
    """Which losses reach which argument, as the backend asks it (the jaxpr of jax.jvp)."""
    args = tuple(jnp.ones(s) for s in shapes)
    closed = jax.make_jaxpr(lambda p, t: jax.jvp(losses, p, t))(args, args)
    count = len(closed.out_avals) // 2
    return existing_gradients(closed, range(len(args), 2 * len(args)), range(count, 2 * count))


def test_blocking_primitives_have_no_path() -> None:
    def losses(a: Any, b: Any, c: Any) -> tuple[Any, ...]:
        return (
            jnp.sum(jax.lax.stop_gradient(a) * b),             # b only
            jnp.sum(jnp.argmax(a).astype(jnp.float32) * c),    # c only: argmax is integer
            jnp.sum(a.astype(jnp.int32).astype(jnp.float32)),  # nothing: integer cast
            jnp.sum((a > 0) * c),                              # c only: comparison
            jnp.sum(a * 0.0),                                  # a: a path whose gradient is zero (dead, not absent)
        )

    assert reach(losses, (3,), (3,), (3,)) == [
        [False, True, False], [False, False, True], [False, False, False], [False, False, True], [True, False, False],
    ]


def test_jitted_bodies_are_followed_inside() -> None:
    """A primal computed in the same jit as a tangent does not inherit the tangent's dependence."""
    @jax.jit
    def both(a: Any, b: Any) -> tuple[Any, Any]:
        return jax.lax.stop_gradient(a) * 2, b * 3

    def losses(a: Any, b: Any) -> tuple[Any, ...]:
        frozen, scaled = both(a, b)
        return jnp.sum(frozen * jnp.sum(scaled)), jnp.sum(jax.nn.relu(a))

    assert reach(losses, (2,), (2,)) == [[False, True], [True, False]]


def test_control_flow() -> None:
    def losses(a: Any, b: Any, c: Any) -> tuple[Any, ...]:
        carried = jax.lax.scan(lambda h, x: (h * x + b[0], None), jnp.float32(1.0), a)[0]
        branch = jax.lax.cond(a[0] > 0, lambda z: z * 2, lambda z: jax.lax.stop_gradient(z), c)
        looped = jax.lax.while_loop(lambda s: s[0] < 3, lambda s: (s[0] + 1, s[1] * s[2], s[2]), (0, c, b))[1]
        return carried, jnp.sum(branch), jnp.sum(looped)

    # scan: a and b through the carry; cond: c through one branch; while: c, and b by the second iteration
    assert reach(losses, (3,), (3,), (3,)) == [[True, True, False], [False, False, True], [False, True, True]]


def test_custom_derivatives() -> None:
    @jax.custom_vjp
    def straight_through(x: Any) -> Any:
        return jnp.round(x)

    straight_through.defvjp(lambda x: (jnp.round(x), None), lambda _, g: (g,))

    def losses(a: Any, b: Any) -> tuple[Any, ...]:
        return jnp.sum(straight_through(a)), jnp.sum(jnp.round(b))

    # the custom rule passes gradients; plain round has none (as TensorFlow's Round)
    assert reach(losses, (2,), (2,)) == [[True, False], [False, False]]


def _gram_of(grads: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    partials, scale, max_abs = jax.jit(partial_grams)([jnp.asarray(g, jnp.float32) for g in grads])
    assert partials.shape[0] == chunks(grads[0].size)
    return finish(np.asarray(partials), np.asarray(scale), np.asarray(max_abs))


@pytest.mark.parametrize("size", [7, 3 * GRAM_CHUNK + 5, 1_000_003])
def test_gram_precision_at_any_size_and_scale(size: int) -> None:
    """Within 1e-6 of float64 (relative to the norms) from 1e-21 to 1e21, however many entries."""
    rng = np.random.default_rng(size)
    base = rng.standard_normal((3, size)).astype(np.float32)
    base[1] = 0.6 * base[0] + 0.8 * base[1]  # correlated pair
    for scale in (1e-21, 1.0, 1e21):  # one compilation per size
        grads = [(b * scale).astype(np.float32) for b in base]
        exact = np.array([[np.dot(g.astype(np.float64), h.astype(np.float64)) for h in grads] for g in grads])
        gram, max_abs, finite = _gram_of(grads)
        norms = np.sqrt(np.diag(exact))
        assert (np.abs(gram - exact) <= 1e-6 * norms[:, None] * norms[None, :]).all(), scale
        np.testing.assert_array_equal(max_abs, [np.abs(g).max() for g in grads])
        assert finite.all()


def test_non_finite_gradients_are_flagged_and_kept_apart() -> None:
    good = np.ones(GRAM_CHUNK + 3, np.float32)
    bad = good.copy()
    bad[5] = np.nan
    worse = good.copy()
    worse[-1] = np.inf
    gram, max_abs, finite = _gram_of([good, bad, worse])
    assert finite.tolist() == [True, False, False]
    assert gram[0, 0] == pytest.approx(GRAM_CHUNK + 3)
    assert np.isinf(max_abs[2])


def test_zero_gradients() -> None:
    gram, max_abs, finite = _gram_of([np.zeros(10, np.float32), np.arange(10, dtype=np.float32)])
    assert gram.tolist() == [[0.0, 0.0], [0.0, 285.0]] and max_abs.tolist() == [0.0, 9.0] and finite.all()


@pytest.mark.parametrize("size", [7, GRAM_CHUNK, 3 * GRAM_CHUNK + 5])
@pytest.mark.parametrize("scale", [1e-21, 1.0, 1e21])
def test_host_reduction_is_the_device_reduction(size: int, scale: float) -> None:
    """The NumPy reduction of the sums on a CPU: the device's numbers, NaN/Inf flagged alike, within 1e-6 of float64."""
    rng = np.random.default_rng(size)
    grads = [(rng.standard_normal(size) * scale).astype(np.float32) for _ in range(3)]
    grads[2][size // 2] = np.inf if size > 7 else np.nan
    device = finish(*(np.asarray(a) for a in jax.jit(partial_grams)([jnp.asarray(g) for g in grads])))
    host = finish(*host_partial_grams(grads))
    assert host[2].tolist() == device[2].tolist() == [True, True, False]
    np.testing.assert_array_equal(host[1], device[1])
    exact = np.stack([g.astype(np.float64) for g in grads[:2]])
    exact = exact @ exact.T
    norms = np.sqrt(np.diag(exact))
    for gram in (host[0][:2, :2], device[0][:2, :2]):
        assert (np.abs(gram - exact) <= 1e-6 * norms[:, None] * norms[None, :]).all()


def test_a_loss_scale_is_refused_on_jax_in_one_line() -> None:
    """mixed_float16 with a loss scale is differentiated as Keras trains it on TensorFlow only: JAX refuses it
    before touching the model (the check comes first, so no model is needed here)."""
    from gradviz.backends.jax.gradient_pass import GradientPass
    from gradviz.errors import BackendError

    with pytest.raises(BackendError, match=r"mixed_float16 .* KERAS_BACKEND=tensorflow") as refused:
        GradientPass(None, [], [], loss_scale=32768.0)  # type: ignore[arg-type]
    assert "\n" not in str(refused.value)
