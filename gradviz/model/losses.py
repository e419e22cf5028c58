"""Keras loss resolution: a loss identifier -> the Keras ``Loss`` object training calls.

The pure part of the loss spec (which loss on which output, with which weight)
is :mod:`gradviz.core.spec`; this module turns its identifiers into callables,
the way ``keras/src/trainers/compile_utils.py`` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from gradviz.core.spec import COMMON_LOSSES, LossTerm, display_name, normalize_loss
from gradviz.errors import LossSpecError

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


@dataclass(frozen=True)
class ResolvedLoss:
    """One loss term of the spec, resolved once: what the data, the backend and the report use.

    Attributes:
        term: the term (name, output, display name, weight).
        fn: the Keras ``Loss`` training calls on this output.
        sparse_fn: for ``crossentropy``/``ce`` on a multi-class output, the sparse variant
            Keras picks instead of ``fn`` when the targets are class ids (see :meth:`for_targets`).
        output_shape: the output's symbolic shape, batch dimension first.
        output_dtype: the output's dtype name.
    """

    term: LossTerm
    fn: Any
    sparse_fn: Any = None
    output_shape: tuple[int | None, ...] = ()
    output_dtype: str = "float32"

    @property
    def name(self) -> str:
        """The term's name."""
        return self.term.name

    @property
    def output(self) -> str:
        """The output the loss applies to."""
        return str(self.term.output)

    @property
    def target_kind(self) -> str:
        """What targets the loss takes (see :func:`target_kind`); ``classes`` where one-hot and ids both work."""
        return "classes" if self.sparse_fn is not None else target_kind(self.fn)

    def for_targets(self, target_shape: tuple[int | None, ...]) -> Any:
        """The loss to call on targets of ``target_shape``, as ``compile_utils.get_loss`` picks it.

        Keras takes class ids (sparse) when the targets have a lower rank than the output, or a
        last dimension of 1 against a wider output.
        """
        if self.sparse_fn is None:
            return self.fn
        rank, out_rank = len(target_shape), len(self.output_shape)
        last = target_shape[-1] if target_shape else None
        out_last = self.output_shape[-1] if self.output_shape else None
        sparse = rank < out_rank or (last == 1 and (out_last or 0) > 1)
        return self.sparse_fn if sparse else self.fn


def resolve_losses(terms: Sequence[LossTerm], outputs: Mapping[str, Any],
                   custom_objects: Mapping[str, Any] | None = None) -> tuple[ResolvedLoss, ...]:
    """Resolve every output term of a spec once.

    Args:
        terms: the spec's output terms (the regularization term has no Keras loss).
        outputs: output name -> its symbolic tensor (for shape and dtype).
        custom_objects: names for custom losses.

    Raises:
        LossSpecError: a loss names nothing Keras or the custom objects know.
    """
    resolved = []
    for term in terms:
        if term.is_regularization:
            continue
        tensor = outputs.get(str(term.output))
        shape = tuple(getattr(tensor, "shape", ()) or ())
        dtype = str(getattr(tensor, "dtype", "float32"))
        last = int(shape[-1]) if shape and shape[-1] is not None else None
        fn = resolve_loss(term.identifier, last, False, custom_objects)
        sparse = None
        if _is_auto_crossentropy(term.identifier) and last != 1:
            sparse = resolve_loss(term.identifier, last, True, custom_objects)
        resolved.append(ResolvedLoss(term, fn, sparse, shape, dtype))
    return tuple(resolved)


def _is_auto_crossentropy(identifier: Any) -> bool:
    return isinstance(identifier, str) and identifier.lower() in ("crossentropy", "ce")


def resolve_loss(identifier: Any, output_dim: int | None, target_rank_lower: bool | None,
                 custom_objects: Mapping[str, Any] | None = None) -> Any:
    """Turn a loss identifier into the Keras ``Loss`` object that training would call.

    ``crossentropy``/``ce`` is resolved the way Keras does from the output's
    last dimension and the targets' shape: binary for one unit, sparse when
    the targets are class ids, categorical otherwise.

    Args:
        identifier: a name, a serialized config, a function or a Loss.
        output_dim: the last dimension of the output.
        target_rank_lower: whether the targets are class ids (None: unknown, assume one-hot).
        custom_objects: names from ``--custom-objects``.

    Raises:
        LossSpecError: the identifier names no known loss.
    """
    import keras

    if isinstance(identifier, str) and identifier.lower() in ("crossentropy", "ce"):
        if output_dim == 1:
            return _wrap(keras.losses.binary_crossentropy, identifier)
        if target_rank_lower:
            return _wrap(keras.losses.sparse_categorical_crossentropy, identifier)
        return _wrap(keras.losses.categorical_crossentropy, identifier)
    identifier = normalize_loss(identifier)  # legacy .h5 files hold Keras 2 forms
    custom = dict(custom_objects or {})
    try:
        if isinstance(identifier, str) and identifier in custom:  # keras.losses.get ignores the scope for names
            obj = custom[identifier]
        else:
            with keras.saving.custom_object_scope(custom):
                obj = keras.losses.get(identifier)
    except Exception as e:  # Keras raises ValueError/TypeError for unknown identifiers
        raise LossSpecError(
            f"unknown loss {display_name(identifier)!r}; valid: a Keras loss name "
            f"({', '.join(COMMON_LOSSES)}), or a custom loss defined in `custom_objects=FILE.py`"
        ) from e
    if obj is None:
        raise LossSpecError(f"unknown loss {display_name(identifier)!r}")
    if not isinstance(obj, keras.losses.Loss):
        if not callable(obj):
            raise LossSpecError(f"loss {display_name(identifier)!r} is not callable")
        obj = _wrap(obj, display_name(identifier))
    return obj


def _wrap(fn: Any, name: str) -> Any:
    """Wrap a loss function the way ``compile()`` does (mean over the batch).

    The wrapper's name becomes a TensorFlow name scope, which refuses names such as
    ``<lambda>``; the name users see (``LossTerm.loss``) is kept apart and unchanged.
    """
    from keras.src.losses import LossFunctionWrapper  # what compile_utils.get_loss uses

    return LossFunctionWrapper(fn, name=scope_name(name))


def scope_name(name: str) -> str:
    """A name TensorFlow accepts as a name scope.

    Example:
        >>> scope_name("<lambda>"), scope_name("mse"), scope_name("my loss")
        ('lambda', 'mse', 'my_loss')
    """
    cleaned = re.sub(r"[^A-Za-z0-9_./-]", "_", name).strip("_")
    return cleaned if re.match(r"[A-Za-z0-9.]", cleaned) else f"loss_{cleaned}".rstrip("_")


def target_kind(loss: Any) -> str:
    """What targets a resolved loss expects, for synthetic data.

    Returns one of ``binary`` (0/1), ``categorical`` (one-hot), ``sparse``
    (class ids), ``positive`` (counts/rates) or ``real``.

    Example:
        >>> target_kind("binary_crossentropy"), target_kind("sparse_categorical_crossentropy")
        ('binary', 'sparse')
        >>> target_kind("mse")
        'real'
    """
    names: list[str] = []
    if isinstance(loss, str):
        names.append(loss)
    else:
        fn = getattr(loss, "fn", None)
        if fn is not None:
            names.append(getattr(fn, "__name__", ""))
        names.append(_CAMEL.sub("_", type(loss).__name__).lower())
        names.append(str(getattr(loss, "name", "")))
    text = " ".join(names).lower()
    if "sparse" in text:
        return "sparse"
    if "binary" in text or re.search(r"(^|[ _])(squared_)?hinge", text):
        return "binary"
    if "categorical" in text or "kl_divergence" in text or "kld" in text.split():
        return "categorical"
    if "poisson" in text:
        return "positive"
    if text.strip() in ("crossentropy", "ce"):
        return "categorical"
    return "real"
