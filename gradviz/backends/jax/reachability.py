"""Which per-loss gradients exist: JAX's own notion of "no differentiable path", read from a jaxpr.

``jax.grad`` returns zeros for a variable its loss cannot reach, where
TensorFlow returns None. gradviz keeps the two apart (no path: ``unreached``
or ``blocked``; a path whose gradient is zero: ``dead``), so the JAX backend
asks JAX itself: it traces the forward-mode derivative (``jax.jvp``) of the
losses with respect to every trainable variable and follows which tangent
inputs each tangent output depends on. JAX propagates *symbolic zeros* through
``stop_gradient``, ``argmax``, integer casts, comparisons and unused inputs: a
tangent output that is one of those is a constant zero in the jaxpr, with no
dependence on any variable's tangent, exactly where TensorFlow's tape finds no
differentiable op path and returns None.

The walk is a dependence analysis over the jaxpr's equations, one bit per
variable. Calls with a body of their own (``jit``, custom derivatives, ``cond``,
``while``, ``scan``) are followed inside, so a primal value computed in the
same call as a tangent does not inherit the tangent's dependence; any other
primitive makes each output depend on all of its inputs, which can only add
paths (over-approximate), never lose one.
"""

from __future__ import annotations

from typing import Any, Sequence

from jax.extend.core import Literal


def existing_gradients(closed_jvp: Any, tangent_positions: Sequence[int], outputs: Sequence[int]) -> list[list[bool]]:
    """Which outputs depend on which tangent inputs of a traced ``jax.jvp``.

    Args:
        closed_jvp: the ``ClosedJaxpr`` of a function returning ``jax.jvp``'s primals and tangents.
        tangent_positions: positions (in the jaxpr's inputs) of the variables' tangents, in variable order.
        outputs: positions (in the jaxpr's outputs) of the losses' tangents, in loss order.

    Returns:
        ``exists[k][v]``: loss k's tangent depends on variable v's (a differentiable path exists).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> def losses(a, b):
        ...     return jnp.sum(a * b), jnp.sum(jax.lax.stop_gradient(a) + jnp.argmax(b))
        >>> closed = jax.make_jaxpr(lambda p, t: jax.jvp(losses, p, t))((jnp.ones(2), jnp.ones(2)),
        ...                                                               (jnp.ones(2), jnp.ones(2)))
        >>> existing_gradients(closed, [2, 3], [2, 3])
        [[True, True], [False, False]]
    """
    jaxpr = closed_jvp.jaxpr
    seeds = [0] * len(jaxpr.invars)
    for bit, position in enumerate(tangent_positions):
        seeds[position] = 1 << bit
    found = _Dependence().run(jaxpr, seeds)
    return [[bool(found[o] >> v & 1) for v in range(len(tangent_positions))] for o in outputs]


class _Dependence:
    """Bitmask dependence of a jaxpr's outputs on its inputs (memoized per body and input masks)."""

    def __init__(self) -> None:
        self._memo: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        self._keep: list[Any] = []  # bodies whose ids key the memo stay alive

    def run(self, jaxpr: Any, inputs: Sequence[int]) -> list[int]:
        """Masks of ``jaxpr``'s outputs given its inputs' masks (constants depend on nothing)."""
        jaxpr = getattr(jaxpr, "jaxpr", jaxpr)  # a ClosedJaxpr's body
        key = (id(jaxpr), tuple(inputs))
        done = self._memo.get(key)
        if done is not None:
            return done
        env: dict[Any, int] = dict(zip(jaxpr.invars, inputs))
        for eqn in jaxpr.eqns:
            masks = [_read(env, a) for a in eqn.invars]
            outs = self._equation(eqn, masks) if any(masks) else [0] * len(eqn.outvars)
            for var, mask in zip(eqn.outvars, outs):
                env[var] = mask
        result = [_read(env, v) for v in jaxpr.outvars]
        self._memo[key] = result
        self._keep.append(jaxpr)
        return result

    def _equation(self, eqn: Any, masks: list[int]) -> list[int]:
        name = eqn.primitive.name
        params = eqn.params
        if name == "cond":  # index, operands; every branch may run
            outs = [masks[0]] * len(eqn.outvars)
            for branch in params["branches"]:
                outs = [a | b for a, b in zip(outs, self.run(branch, masks[1:]))]
            return outs
        if name == "while":
            nc, nb = params["cond_nconsts"], params["body_nconsts"]
            consts, carry = masks[nc:nc + nb], masks[nc + nb:]
            return self._fixpoint(lambda c: self.run(params["body_jaxpr"], consts + c), carry, len(carry))
        if name == "scan":
            nc, ncarry = params["num_consts"], params["num_carry"]
            consts, carry, xs = masks[:nc], masks[nc:nc + ncarry], masks[nc + ncarry:]
            body = params["jaxpr"]
            carry = self._fixpoint(lambda c: self.run(body, consts + c + xs)[:ncarry], carry, ncarry)
            return carry + self.run(body, consts + carry + xs)[ncarry:]
        body = _body(eqn)
        if body is not None:  # jit, custom_jvp_call, custom_vjp_call, remat, closed_call, ...
            return self.run(body, masks)
        everything = 0
        for mask in masks:
            everything |= mask
        return [everything] * len(eqn.outvars)

    @staticmethod
    def _fixpoint(step: Any, carry: list[int], size: int) -> list[int]:
        """Carry masks of a loop: grow until one more iteration adds nothing."""
        while True:
            grown = [a | b for a, b in zip(carry, step(carry)[:size])]
            if grown == carry:
                return carry
            carry = grown


def _body(eqn: Any) -> Any:
    """The one sub-jaxpr an equation calls with its own inputs and outputs, if any."""
    for value in eqn.params.values():
        inner = getattr(value, "jaxpr", value)
        if hasattr(inner, "eqns") and hasattr(inner, "invars"):
            if len(inner.invars) == len(eqn.invars) and len(inner.outvars) == len(eqn.outvars):
                return inner
    return None


def _read(env: dict[Any, int], atom: Any) -> int:
    """A variable's mask; literals (constants) depend on nothing."""
    if isinstance(atom, Literal):
        return 0
    return env.get(atom, 0)
