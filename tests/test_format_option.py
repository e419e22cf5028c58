"""``--format``: ``dot`` and ``.dot`` alike, its values in ``--help``, an error without ``-o``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gradviz import output
from gradviz.cli import OUTPUT_FORMATS
from test_bad_input import assert_one_error

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "shared_trunk.keras"


def test_help_lists_every_output_format(cli: Any) -> None:
    assert list(OUTPUT_FORMATS) == output.formats()
    text = " ".join(cli("inspect", "--help").stdout.split())
    assert f"overriding extensions: {', '.join(output.formats())}" in text


@pytest.mark.parametrize("spelling", ["dot", ".dot", "DOT"])
def test_format_with_or_without_a_leading_dot(cli: Any, tmp_path: Path, spelling: str) -> None:
    target = tmp_path / "flow.txt"
    result = cli("inspect", SAMPLE, "-o", target, "--format", spelling, "--batch-size", "4")
    assert result.exit_code == 0, result.stderr
    assert target.read_text().startswith("digraph")


def test_format_without_output_is_an_error(cli: Any) -> None:
    assert_one_error(cli("inspect", SAMPLE, "--format", "dot"), "--format dot sets the format of -o files",
                     "no -o FILE was given")
