"""Fuzzing: mutated model files and arbitrary option strings end in a GradvizError or a valid report.

Never another exception, never a hang. The archive fuzzing calls
``gradviz.analyze`` in-process (a mutant that still loads runs its
gradients: the base model is tiny); each case has a time bound enforced with
a real-time timer signal. ``GRADVIZ_FUZZ_CASES`` raises the number of cases.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import time
import traceback
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import fuzz_keras
import gradviz
import robust_models as rm
from gradviz.model import loading
from gradviz.errors import GradvizError, LossSpecError, ModelLoadError
from gradviz.core.spec import parse_assignment, parse_loss_assignments, parse_weight, parse_weight_assignments

CASES = int(os.environ.get("GRADVIZ_FUZZ_CASES", "300"))
#: seconds one mutant may take (a mutant that loads compiles its gradient function: ~0.3 s).
CASE_BOUND = 30.0


class CaseTimeout(BaseException):
    """Raised by the timer signal; a BaseException so no ``except Exception`` in gradviz swallows it."""


@pytest.fixture
def time_bound() -> Iterator[Any]:
    """``with time_bound(seconds): ...`` raises CaseTimeout when the block runs longer."""
    if not hasattr(signal, "setitimer"):
        pytest.skip("needs signal.setitimer (Unix)")

    def on_alarm(signum: int, frame: Any) -> None:
        raise CaseTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)

    class Bound:
        def __init__(self, seconds: float) -> None:
            self.seconds = seconds

        def __enter__(self) -> None:
            signal.setitimer(signal.ITIMER_REAL, self.seconds)

        def __exit__(self, *exc: Any) -> None:
            signal.setitimer(signal.ITIMER_REAL, 0)

    yield Bound
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def base_keras(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rm.save(rm.two_heads(), tmp_path_factory.mktemp("fuzz") / "base.keras")


def run_case(path: Path) -> str:
    """'ok' (a report that serializes to valid JSON) or the GradvizError's class name."""
    try:
        report = gradviz.analyze(path, batch_size=2)
    except GradvizError as e:
        message = str(e)
        assert message and "\n" not in message, f"not a one-line message: {message!r}"
        assert "Traceback" not in message
        return type(e).__name__
    json.loads(report.to_json())
    return "ok"


@pytest.mark.filterwarnings("ignore")  # Keras warns about skipped weights of damaged files
def test_mutated_archives(base_keras: Path, tmp_path: Path, time_bound: Any) -> None:
    rng = random.Random(20240501)
    outcomes: dict[str, int] = {}
    failures: list[str] = []
    slowest = (0.0, "")
    for case in range(CASES):
        mutant = tmp_path / f"mutant{case % 2}.keras"
        what = fuzz_keras.write_mutant(base_keras, mutant, rng)
        start = time.perf_counter()
        try:
            with time_bound(CASE_BOUND):
                outcome = run_case(mutant)
        except CaseTimeout:
            failures.append(f"case {case} ({what}): no result within {CASE_BOUND} s")
            continue
        except Exception as e:  # the point of the test: nothing but GradvizError may escape
            tail = traceback.format_exc(limit=-3)
            failures.append(f"case {case} ({what}): {type(e).__name__}: {e}\n{tail}")
            continue
        seconds = time.perf_counter() - start
        slowest = max(slowest, (seconds, what))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert not failures, "\n\n".join(failures[:5])
    # the mutator must exercise both paths: files that fail to load and files that still run
    assert outcomes.get("ok", 0) >= CASES // 20, outcomes
    assert outcomes.get("ModelLoadError", 0) >= CASES // 4, outcomes


HOSTILE_CONFIGS = [
    ("nested-too-deep", b"[" * 100_000, "nested too deeply"),
    ("not-utf8", b'{"class_name": "\xff\xfe"}', "not UTF-8"),
    ("nan-literal", b'{"class_name": "Functional", "config": NaN}', ""),
    ("null", b"null", "JSON object"),
    ("huge-number", b"1" * 10_000, ""),
]


@pytest.mark.parametrize("raw, fragment", [c[1:] for c in HOSTILE_CONFIGS], ids=[c[0] for c in HOSTILE_CONFIGS])
def test_hostile_config_json(base_keras: Path, tmp_path: Path, time_bound: Any, raw: bytes, fragment: str) -> None:
    path = rm.rewrite_config(base_keras, tmp_path / "hostile.keras", raw)
    with time_bound(CASE_BOUND), pytest.raises(ModelLoadError, match=fragment or None):
        gradviz.analyze(path, batch_size=2)


def test_config_size_limit(base_keras: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A zip bomb's config.json is refused from its declared size, before it is inflated."""
    monkeypatch.setattr(loading, "MAX_CONFIG_BYTES", 100)
    with pytest.raises(ModelLoadError, match=r"config.json would inflate to [\d,]+ bytes"):
        gradviz.analyze(base_keras, batch_size=2)


# -- property-based: the option parsers ------------------------------------------------------------------

KEYS = st.text(min_size=1).filter(lambda k: "=" not in k and k.strip() and "\n" not in k and "\r" not in k)
VALUES = st.text(min_size=1).filter(lambda v: v.strip() and "\n" not in v and "\r" not in v)


@given(st.text())
@example("=")
@example("C=")
@example("=mse")
@example("C==mse")
def test_parse_assignment_fails_only_with_loss_spec_error(text: str) -> None:
    try:
        key, value = parse_assignment(text, "--loss")
    except LossSpecError as e:
        assert "--loss expects OUTPUT=VALUE" in str(e)
        return
    assert key and value
    assert "=" not in key


@given(KEYS, VALUES)
def test_parse_assignment_round_trip(key: str, value: str) -> None:
    assert parse_assignment(f"{key}={value}", "--loss") == (key.strip(), value.strip())
    assert parse_assignment(f" {key} = {value} ", "--loss") == (key.strip(), value.strip())


@given(st.text())
@example("nan")
@example("-0.0")
@example("1e400")
@example("0x10")
@example("1_000")
def test_parse_weight_is_a_finite_non_negative_float_or_an_error(text: str) -> None:
    try:
        value = parse_weight(text)
    except LossSpecError as e:
        assert "weight is a" in str(e) and "number >= 0" in str(e)
        return
    assert isinstance(value, float)
    assert math.isfinite(value) and value >= 0


@given(st.floats(min_value=0, allow_nan=False, allow_infinity=False))
def test_parse_weight_reads_every_valid_weight(weight: float) -> None:
    assert parse_weight(repr(weight)) == weight
    assert parse_weight(f"{weight:.17g}") == weight


@given(st.one_of(st.floats(max_value=-1e-300, allow_nan=False), st.just(math.nan), st.just(math.inf)))
def test_parse_weight_rejects_negative_and_non_finite(weight: float) -> None:
    with pytest.raises(LossSpecError, match="not a valid weight"):
        parse_weight(repr(weight))


@given(st.lists(st.tuples(KEYS, st.floats(min_value=0, max_value=1e6, allow_nan=False))))
def test_parse_weight_assignments_last_one_wins(pairs: list[tuple[str, float]]) -> None:
    expected: dict[str, float] = {}
    for key, weight in pairs:
        expected[key.strip()] = weight
    assert parse_weight_assignments([f"{k}={w!r}" for k, w in pairs]) == expected


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text()))
def test_parse_loss_assignments_fails_only_with_loss_spec_error(items: list[str]) -> None:
    try:
        result = parse_loss_assignments(items)
    except LossSpecError:
        return
    for key, value in result.items():
        assert value == value.strip() and value
        assert key is None or (key == key.strip() and key and "=" not in key)
    bare = [item.strip() for item in items if "=" not in item]
    if bare:
        assert result[None] == bare[-1]
