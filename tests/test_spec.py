"""Loss spec: Keras's CompileLoss rules, overrides and parsing."""

from __future__ import annotations

import keras
import pytest

from gradviz.errors import LossSpecError
from gradviz.core.spec import REGULARIZATION, build_spec, display_name
from gradviz.model.losses import resolve_loss, target_kind

OUTS = ["C", "D"]


def _summary(spec):  # type: ignore[no-untyped-def]
    return [(t.name, t.output, t.loss, t.weight) for t in spec.terms]


@pytest.mark.parametrize(
    "loss, weights, expected",
    [
        (["bce", "mse"], [0.5, 0.3], [("C", "C", "bce", 0.5), ("D", "D", "mse", 0.3)]),
        ({"D": "mse", "C": "bce"}, {"C": 2.0, "D": 1.0}, [("C", "C", "bce", 2.0), ("D", "D", "mse", 1.0)]),
        ("mse", None, [("C", "C", "mse", 1.0), ("D", "D", "mse", 1.0)]),
        ("mse", 0.5, [("C", "C", "mse", 0.5), ("D", "D", "mse", 0.5)]),
        (["bce", None], [0.7, 0.2], [("C", "C", "bce", 0.7)]),
        ("mse", [0.5], [("C", "C", "mse", 0.5), ("D", "D", "mse", 0.5)]),
        (["mse"], None, [("C", "C", "mse", 1.0)]),
        ({"class_name": "Huber", "config": {"name": "huber_loss"}}, None,
         [("C", "C", "huber_loss", 1.0), ("D", "D", "huber_loss", 1.0)]),
    ],
)
def test_saved_forms(loss, weights, expected):  # type: ignore[no-untyped-def]
    assert _summary(build_spec(OUTS, loss, weights)) == expected


def test_list_of_losses_on_a_single_output_applies_each_as_keras_does() -> None:
    spec = build_spec(["out"], ["mse", "mae"])
    assert spec.names == ("out", "out_2")
    assert [t.output for t in spec.terms] == ["out", "out"]


def test_partial_losses_leave_unlossed_outputs() -> None:
    spec = build_spec(OUTS, {"C": "bce"})
    assert spec.names == ("C",) and spec.unlossed_outputs == ("D",)


def test_overrides_replace_and_supply() -> None:
    spec = build_spec(OUTS, None, None, loss_overrides={"D": "mae", None: "mse"}, weight_overrides={"C": 3})
    assert _summary(spec) == [("C", "C", "mse", 3.0), ("D", "D", "mae", 1.0)]


def test_regularization_term_is_last() -> None:
    spec = build_spec(OUTS, "mse", has_regularization=True, weight_overrides={REGULARIZATION: 0.1})
    assert spec.terms[-1].name == REGULARIZATION and spec.terms[-1].weight == 0.1
    assert spec.terms[-1].is_regularization and spec.output_terms == spec.terms[:2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"saved_loss": None}, "no loss to analyse"),
        ({"saved_loss": "mse", "loss_overrides": {"E": "mse"}}, "'E' is not an output of the model; outputs are: C, D"),
        ({"saved_loss": "mse", "loss_overrides": {"B": "mse"}, "layer_names": ["A", "B"]}, "intermediate layer"),
        ({"saved_loss": ["mse", "mse", "mse"]}, "3 entries for 2 outputs"),
        ({"saved_loss": {"E": "mse"}}, "not outputs"),
        ({"saved_loss": ["mse", "mse"], "saved_weights": [-1, 1]}, "not a valid weight"),
        # forms Keras 3's training step refuses (keras/src/trainers/compile_utils.py, CompileLoss.build)
        ({"saved_loss": "mse", "saved_weights": [1.0, 0.1]}, "must match the number of losses, got 1 losses and 2 weights"),
        ({"saved_loss": ["bce", None], "saved_weights": [0.7]}, "got 2 losses and 1 weights"),
        ({"saved_loss": {"D": "mse", "C": "bce"}, "saved_weights": {"C": 2.0}}, "no entry for output.*'D'"),
    ],
)
def test_errors_say_what_is_valid(kwargs, message):  # type: ignore[no-untyped-def]
    with pytest.raises(LossSpecError, match=message):
        build_spec(OUTS, **kwargs)


def test_with_weights_rejects_unknown_names() -> None:
    spec = build_spec(OUTS, "mse")
    with pytest.raises(LossSpecError, match="valid: C, D"):
        spec.with_weights({"E": 1.0})


def test_resolve_crossentropy_like_keras() -> None:
    fn = lambda obj: obj.fn.__name__  # noqa: E731
    assert fn(resolve_loss("crossentropy", 1, False)) == "binary_crossentropy"
    assert fn(resolve_loss("crossentropy", 4, True)) == "sparse_categorical_crossentropy"
    assert fn(resolve_loss("crossentropy", 4, False)) == "categorical_crossentropy"


def test_resolve_objects_and_configs() -> None:
    assert isinstance(resolve_loss({"module": "keras.losses", "class_name": "Huber", "config": {}, "registered_name": None}, 1, None), keras.losses.Huber)
    assert resolve_loss("mse", 1, None).name == "mse"
    with pytest.raises(LossSpecError, match="unknown loss 'msee'; valid: a Keras loss name"):
        resolve_loss("msee", 1, None)


def test_target_kinds() -> None:
    assert target_kind(keras.losses.CategoricalCrossentropy()) == "categorical"
    assert target_kind(keras.losses.SparseCategoricalCrossentropy()) == "sparse"
    assert target_kind(keras.losses.BinaryFocalCrossentropy()) == "binary"
    assert target_kind(keras.losses.Poisson()) == "positive"
    assert target_kind(keras.losses.Huber()) == "real"
    assert target_kind(resolve_loss("hinge", 1, None)) == "binary"
    assert display_name(keras.losses.Huber()) == "huber_loss"
