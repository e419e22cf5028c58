"""Make the K backward passes of a traced step move through the model together.

Uses private TensorFlow graph API (``Operation._add_control_input``,
``Tensor.consumers``, op ids); :class:`~gradviz.backends.tensorflow.gradient_pass.GradientPass`
falls back to an unordered pass (same values, more memory) when it is missing or
when the runtime finds the edges in a cycle.
"""

from __future__ import annotations

from typing import Any

#: what TensorFlow's runtime says of a graph whose control edges form a cycle
LOCKSTEP_CYCLE = "nodes in a cycle"


class Lockstep:
    """The K backward passes of one traced step, and a way to make them move together.

    Left alone, TensorFlow runs one loss's backward pass far ahead of the others, so each
    gradient of that loss waits in memory until the last loss reaches the same variable (a
    Gram matrix needs all K gradients of a variable at once): up to K-1 extra copies of the
    model's gradients. :meth:`serialize` splits each loss's backward ops into segments, one
    per layer (the layers in backward order; segment p is what that loss still computes to
    reach the gradients of layer p), and makes the ops that enter segment p+1 wait (control
    edges) until every loss has layer p's gradients and layer p-1's statistics are done.
    Then at most two layers' K gradients are alive at a time. Control edges order ops; they
    change no value.

    Segments are whole layers, not single variables, because graph rewrites fuse a layer's
    gradient ops (oneDNN fuses a convolution's kernel and bias gradients into one op), and a
    fused op in two segments would wait for itself. :class:`~gradviz.backends.tensorflow.gradient_pass.GradientPass` still retraces
    without the edges if the runtime reports a cycle (see ``LOCKSTEP_CYCLE``).

    Args:
        weights: the watched weight tensors, in variable order.
        layers: a layer key per variable (variables of one layer share it).
        dense: ``dense[k][v]``: loss k's gradient of variable v (None: none exists).
        chains: ``chains[k]``: the ops the backward pass of loss k created.
        forward_end: the id of the last op of the forward pass.
    """

    def __init__(self, weights: list[Any], layers: list[str], dense: list[list[Any]], chains: list[list[Any]],
                 forward_end: int) -> None:
        self.weights = weights
        self.layers = layers
        self.dense = dense
        self.chains = chains
        self.forward_end = forward_end

    def order(self) -> list[list[int]]:
        """The variables grouped by layer, layers in backward order.

        A layer's gradients are complete once the backward passes have gone through its
        first use of a weight in the forward pass, so the latest first use comes first.
        """
        uses: dict[str, list[int]] = {}
        members: dict[str, list[int]] = {}
        for v, weight in enumerate(self.weights):
            key = self.layers[v]
            uses.setdefault(key, []).extend(op._id for op in weight.consumers() if op._id <= self.forward_end)
            members.setdefault(key, []).append(v)
        return [members[key] for key in sorted(members, key=lambda k: min(uses[k], default=-1), reverse=True)]

    def segments(self, order: list[list[int]]) -> list[list[list[Any]]]:
        """``segments[k][p]``: the ops of loss k's backward pass first needed for the layer ``order[p]``."""
        out = []
        for per_loss, ops in zip(self.dense, self.chains):
            members = {op._id for op in ops}
            seen: set[int] = set()
            chain: list[list[Any]] = []
            for group in order:
                segment: list[Any] = []
                stack = [per_loss[v].op for v in group if per_loss[v] is not None]
                while stack:
                    op = stack.pop()
                    if op._id not in members or op._id in seen:
                        continue
                    seen.add(op._id)
                    segment.append(op)
                    stack.extend(t.op for t in op.inputs)
                    stack.extend(op.control_inputs)
                chain.append(segment)
            out.append(chain)
        return out

    def serialize(self, done: list[list[Any]]) -> None:
        """Make every loss's segment p+1 wait for layer p's gradients and layer p-1's statistics (``done[v]``)."""
        import tensorflow as tf

        if len(self.chains) < 2:
            return
        order = self.order()
        segments = self.segments(order)
        for p in range(len(order) - 1):
            # Segment p+1 waits for layer p's gradients and layer p-1's statistics: the reduction
            # of one layer overlaps the backward passes through the next (no time lost), and at
            # most two layers' K gradients are alive.
            finished = [per_loss[v] for v in order[p] for per_loss in self.dense if per_loss[v] is not None]
            if p > 0:
                finished += [t for v in order[p - 1] for t in done[v]]
            later = [chain[p + 1] for chain in segments if chain[p + 1]]
            if not finished or not later:
                continue
            with tf.control_dependencies(None):
                barrier = tf.group(*finished, name="lockstep")
            for segment in later:
                # Constants are left free: they hold no memory worth ordering, and graph optimizers
                # may merge equal ones across segments, which would tie the waits into a cycle.
                # The ops reading them wait instead.
                inner = {op._id for op in segment if op.inputs}
                for op in segment:
                    if op.inputs and not any(t.op._id in inner for t in op.inputs):  # enters the segment
                        op._add_control_input(barrier)


def layer_key(variable: Any) -> str:
    """The layer a variable belongs to, from its path (``block1/conv/kernel`` -> ``block1/conv``)."""
    path = str(getattr(variable, "path", None) or getattr(variable, "name", ""))
    return path.rsplit("/", 1)[0] if "/" in path else path
