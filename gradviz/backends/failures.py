"""One line for a failed gradient pass, whichever backend ran it: a loss's fault, ids gradviz guessed, or the data's.

Shared by the TensorFlow and JAX passes: the words are the library's (what a user
reads), the cause is whatever the array library raised.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from gradviz.data import GUESSED_IDS
from gradviz.errors import DataError, LossSpecError
from gradviz.model.topology import input_names


def explain_failure(error: Exception, inputs: str = "", guessed: Sequence[str] = ()) -> Exception:
    """One line for a failed gradient pass: a loss's fault, ids gradviz had to guess, or the data's.

    Args:
        error: what the array library (TensorFlow, JAX) or Keras raised.
        inputs: the inputs' names and shapes, for the message (see :func:`inputs_text`).
        guessed: synthetic integer inputs whose range gradviz could not infer.
    """
    text = " ".join(str(error).split())
    # TensorFlow's words for an id outside a table: "indices[0,1] = 7 is not in [0, 3)"
    bad_index = re.search(r"indices\S* = -?\d+ is not in \[[^)]*\)|out of (range|bounds)", text)
    if guessed and bad_index:
        names = ("input " if len(guessed) == 1 else "inputs ") + ", ".join(f"'{n}'" for n in guessed)
        keys = ", ".join(f"'x:{n}'" for n in guessed)
        return DataError(
            f"the model rejects the synthetic integers of {names} ({bad_index.group(0)}): gradviz cannot "
            f"tell which ids the model takes there and drew 0 to {GUESSED_IDS - 1}; pass --data FILE.npz with "
            f"real values under {keys}"
        )
    if len(text) > 400:
        text = text[:400] + "..."
    if "loss" in text.lower() or "logits" in text.lower() or "labels" in text.lower():
        return LossSpecError(f"a loss failed on the model's outputs and targets: {text}")
    return DataError(f"the model cannot run on the data{inputs}: {type(error).__name__}: {text}")


def inputs_text(model: Any, arrays: Sequence[Any]) -> str:
    """`` (inputs: a (8, 16) int32, b (8, 12) int32)`` for a model of several inputs, else empty: which
    input does not fit is easier to see next to the others.

    Example:
        >>> import keras
        >>> a, b = keras.Input((2,), name="a"), keras.Input((3,), name="b")
        >>> m = keras.Model([a, b], keras.layers.Concatenate()([a, b]))
        >>> inputs_text(m, [np.zeros((4, 2), "float32"), np.zeros((4, 5), "int32")])
        ' (inputs: a (4, 2) float32, b (4, 5) int32)'
    """
    if len(arrays) < 2:
        return ""
    try:
        names = input_names(model)
    except Exception:  # a model that cannot name its inputs: positions instead
        names = []
    names = names if len(names) == len(arrays) else [f"#{i}" for i in range(len(arrays))]
    parts = [f"{n} {tuple(int(d) for d in a.shape)} {np.dtype(a.dtype).name}" for n, a in zip(names, arrays)]
    return " (inputs: " + ", ".join(parts) + ")"
