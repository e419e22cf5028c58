"""How the gradient pass runs: eagerly, or compiled (traced once, then fast), chosen by the work.

Tracing the compiled pass costs seconds to tens of seconds before the first batch
(ResNet50 with 3 heads: ~13 s; MobileNetV2 with 12 heads: ~30 s), and saves a
fraction of a second per batch afterwards. For the default single batch, compiling
is the slowest way to the answer; over many batches it pays off. ``auto`` decides
from the number of batches (and falls back to compiled when eager mode's memory
would be large); the rule and the measurements behind it are in the README's
Performance section.

On JAX the rule is different: ``auto`` always compiles. An op-by-op JAX pass
compiles each op for its shapes as well, so it saves little on the first call
(issue 16's table: MobileNetV2's first call took 28.9 s op by op against 14.2 s
jitted), and the compiled program goes into JAX's persistent compilation
cache, so a second process does not compile it again. ``eager`` on JAX is
still honoured: the same functions run under ``jax.disable_jit()`` (useful to
debug a custom layer; never faster here), and the report says so.

No TensorFlow here: the choice is made before a backend is built.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradviz.errors import DataError

AUTO = "auto"
EAGER = "eager"
COMPILED = "compiled"
#: what ``--execution`` / ``execution=`` accept
EXECUTIONS = (AUTO, EAGER, COMPILED)

#: ``auto`` runs eagerly up to this many batches. Measured (benchmarks/RESULTS.md, whole
#: processes): tracing costs as many eager batches as this, or more, on every benchmark model.
EAGER_MAX_BATCHES = 16
#: why ``auto`` compiles on JAX whatever the work: op-by-op JAX compiles every op for its shapes too, so it
#: saves no compilation on the first call, and the persistent compilation cache saves the whole program's
#: compilation from the second process on (measured: README, Backends)
JAX_AUTO_REASON = "JAX: one compiled program (op by op would compile every op as well)"
#: ``auto`` compiles when eager mode's K gradient copies of the weights would exceed this
#: (the compiled lockstep pass keeps two layers' K gradients at a time instead).
EAGER_MAX_GRADIENT_BYTES = 1 << 30


@dataclass(frozen=True)
class Execution:
    """The chosen execution and why, as the report's ``meta`` states them.

    Attributes:
        mode: ``eager`` or ``compiled``.
        reason: one line a user reads in the terminal header.
    """

    mode: str
    reason: str


def check(execution: str) -> str:
    """Validate an execution name.

    Raises:
        DataError: not one of :data:`EXECUTIONS`.

    Example:
        >>> check("auto")
        'auto'
    """
    if execution not in EXECUTIONS:
        raise DataError(f"unknown execution {execution!r}; valid: {', '.join(EXECUTIONS)}")
    return execution


def choose(execution: str, *, batches: int, losses: int, params: int, backend: str = "tensorflow") -> Execution:
    """The execution for a run of ``batches`` batches on a model with ``losses`` losses and ``params`` weights.

    On JAX, ``auto`` is always ``compiled`` (:data:`JAX_AUTO_REASON`); ``eager`` runs the same
    functions under ``jax.disable_jit()``, op by op.

    Args:
        execution: ``auto``, ``eager`` or ``compiled`` (the user's request).
        batches: batches in the run.
        losses: loss terms (K).
        params: trainable weights (entries).
        backend: Keras's backend (``tensorflow`` or ``jax``).

    Raises:
        DataError: unknown execution.

    Example:
        >>> choose("auto", batches=1, losses=3, params=23_000_000).reason
        '1 batch: tracing would cost more than it saves'
        >>> choose("auto", batches=40, losses=3, params=1000).mode
        'compiled'
        >>> choose("eager", batches=40, losses=3, params=1000).reason
        'requested'
        >>> choose("auto", batches=1, losses=3, params=1000, backend="jax").mode
        'compiled'
        >>> choose("eager", batches=1, losses=3, params=1000, backend="jax").reason
        'requested: JAX op by op (jax.disable_jit), nothing compiled as a whole'
    """
    check(execution)
    if backend == "jax":
        if execution == EAGER:
            return Execution(EAGER, "requested: JAX op by op (jax.disable_jit), nothing compiled as a whole")
        return Execution(COMPILED, "requested" if execution == COMPILED else JAX_AUTO_REASON)
    if execution != AUTO:
        return Execution(execution, "requested")
    gradient_bytes = losses * params * 4
    if gradient_bytes > EAGER_MAX_GRADIENT_BYTES:
        return Execution(
            COMPILED,
            f"eager mode would hold {losses} gradient copies of the weights ({gradient_bytes / 2**20:,.0f} MB); "
            "the compiled pass keeps two layers' at a time",
        )
    counted = f"{batches} batch" + ("es" if batches != 1 else "")
    if batches <= EAGER_MAX_BATCHES:
        return Execution(EAGER, f"{counted}: tracing would cost more than it saves")
    return Execution(COMPILED, f"{counted}: tracing pays off above {EAGER_MAX_BATCHES}")
