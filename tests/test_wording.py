"""Messages read as sentences: counts agree with their nouns and verbs, no "(s)", no "''s".

The messages come from real analyses of small models built to produce each
finding with one and with several layers, then every text gradviz prints for
them is checked against the slips a bare f-string makes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import keras
import pytest
from keras import layers

import gradviz
from gradviz.core import weighting
from gradviz.output import weights as weighting_report
from gradviz.output.text import summary
SLIPS = [
    (re.compile(r"\w\(s\)|\w\(es\)"), "a '(s)' plural"),
    (re.compile(r"''s"), "a possessive after a quoted name"),
    (re.compile(r"(?<![\d.])1 (layers|operations|losses|findings|shared layers)\b"), "'1' with a plural noun"),
    (re.compile(r"none\. [a-z]"), "a sentence starting in lower case"),
    (re.compile(r"\b(?:in \w+ overall but, on some layers,)"), "the conflict phrase that lost its noun"),
]


def assert_grammatical(text: str) -> None:
    for pattern, slip in SLIPS:
        match = pattern.search(text)
        assert match is None, f"{slip}: ...{text[max(0, match.start() - 60):match.end() + 60]}..."


def _regularized_side_branch() -> keras.Model:
    """x -> trunk -> C (lossed); x -> E (L2) -> F (no loss): E gets only the regularization gradient."""
    keras.utils.set_random_seed(0)
    x = keras.Input((4,), name="x")
    trunk = layers.Dense(4, activation="relu", name="trunk")(x)
    c = layers.Dense(1, name="C")(trunk)
    e = layers.Dense(3, name="E", kernel_regularizer=keras.regularizers.l2(0.1))(x)
    f = layers.Dense(1, name="F")(e)
    model = keras.Model(x, [c, f], name="side_branch")
    model.compile(loss=["mse", None])
    return model


def test_single_unreached_layers_get_singular_verbs() -> None:
    report = gradviz.analyze(_regularized_side_branch(), batch_size=4)
    finding = next(f for f in report.findings if f.kind == "unreached-layer")
    assert finding.message == (
        "2 layers with trainable weights are reached by no loss: F gets no gradient at all (Keras warns "
        "'Gradients do not exist' for its variables); E gets only the regularization gradient (weight decay, "
        "no learning)"
    )
    text = summary(report, width=120)  # the input is the one layer without weights
    assert "(1 operation or weightless layer not listed; --all-layers shows them)" in text
    assert "side_branch: 2 losses," in text
    for f in report.findings:
        assert_grammatical(f.message)
    assert_grammatical(text)


def test_vanishing_names_the_other_loss_without_a_double_quote(sample_path: Callable[[str], Path]) -> None:
    report = gradviz.analyze(sample_path("shared_trunk"), loss_weights={"D": 1e-7}, batch_size=8)
    finding = next(f for f in report.findings if f.kind == "vanishing")
    assert finding.losses == ("D", "C")
    assert re.search(r"x smaller than that of 'C' \([\d.e+-]+\); it barely trains the trunk$", finding.message), \
        finding.message
    assert_grammatical(finding.message)


@pytest.mark.parametrize("sample", ["shared_trunk", "stop_gradient_head", "dead_head", "chained_sequential",
                                    "ticket_router"])
def test_every_printed_text_of_the_samples_is_grammatical(sample_path: Callable[[str], Path], sample: str) -> None:
    report = gradviz.analyze(sample_path(sample), batch_size=8)
    texts = [f.message for f in report.findings] + [summary(report, width=120, all_layers=True),
                                                    summary(report, width=120)]
    what_if = weighting.explore(report, suggest_weights=True)
    texts.append(weighting_report.summary(what_if, width=120))
    for text in texts:
        assert_grammatical(text)


def test_no_suggestion_reads_as_one_sentence(sample_path: Callable[[str], Path]) -> None:
    what_if = weighting.explore(gradviz.analyze(sample_path("stop_gradient_head"), batch_size=8),
                                suggest_weights=True)
    text = " ".join(weighting_report.summary(what_if, width=200).split())
    assert "Suggested weights: none (no layer is shared by two losses (the model has no trunk)" in text


def test_fail_on_counts_one_finding(cli: Any, sample_path: Callable[[str], Path]) -> None:
    result = cli("inspect", sample_path("dead_head"), "--fail-on", "error", "--batch-size", "4")
    assert result.exit_code == 1
    report = gradviz.analyze(sample_path("dead_head"), batch_size=4)
    count = sum(1 for f in report.findings if f.severity == "error")
    noun = "finding" if count == 1 else "findings"
    assert result.stderr.strip().splitlines()[-1].startswith(f"Error: {count} {noun} of severity error or worse")

