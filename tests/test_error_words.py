"""Errors speak the library's words in Python (parameter names) and the CLI's words on the command line (flags)."""

from __future__ import annotations

from typing import Any, Callable

import pytest

import gradviz
from gradviz.cli import FLAGS, cli_words
from gradviz.errors import DataError, LossSpecError


def test_python_errors_name_parameters(sample_path: Callable[[str], Any]) -> None:
    with pytest.raises(DataError, match=r"^`batch_size` must be at least 1, got 0$"):
        gradviz.analyze(sample_path("shared_trunk"), batch_size=0)
    with pytest.raises(LossSpecError, match=r"^`loss_weights`: 'B' is not an output of the model"):
        gradviz.analyze(sample_path("shared_trunk"), loss_weights={"B": 2.0})


def test_cli_errors_name_flags(cli: Any, sample_path: Callable[[str], Any]) -> None:
    result = cli("inspect", sample_path("shared_trunk"), "--batch-size", "0")
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: --batch-size must be at least 1, got 0"
    result = cli("inspect", sample_path("shared_trunk"), "--loss-weight", "B=2")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: --loss-weight: 'B' is not an output of the model")
    assert "`" not in result.stderr


def test_every_flag_the_translation_names_exists() -> None:
    """The flags the translation produces are options of the CLI's commands (no stale names)."""
    from gradviz.cli import main

    options = {opt for command in main.commands.values() for param in command.params for opt in param.opts}
    assert set(FLAGS.values()) <= options, set(FLAGS.values()) - options
    assert cli_words("`nothing_known` stays") == "`nothing_known` stays"
