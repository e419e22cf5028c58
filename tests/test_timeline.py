"""``gradviz timeline``: the plot, the HTML page and the events from a monitor history file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from click.testing import Result

from gradviz.core.history import FlowHistory
from gradviz.output import timeline


def history_file(tmp_path: Path) -> Path:
    """Four probes of a run in which head D stops reaching the trunk at epoch 2 (events by FlowHistory)."""
    history = FlowHistory()
    lines = []
    for epoch, d in enumerate([1.0, 0.5, 0.0, 0.0]):
        rec: dict[str, Any] = {
            "epoch": epoch, "step": 4 * epoch,
            "losses": [{"name": "C", "weight": 1.0, "value": 0.7, "color": "#0072B2"},
                       {"name": "D", "weight": 1.0, "value": 0.2, "color": "#E69F00"}],
            "layers": [],
            "trunk": {"grad_norm": {"C": 1.0, "D": d}, "share": {"C": 1 / (1 + d * d), "D": d * d / (1 + d * d)},
                      "cosine": []},
            "findings": [],
        }
        rec["events"] = [e.to_dict() for e in history.add(rec)]
        lines.append(json.dumps(rec))
    path = tmp_path / "flow.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_json_prints_the_events(tmp_path: Path, cli: Callable[..., Result]) -> None:
    result = cli("timeline", history_file(tmp_path), "--json")
    assert result.exit_code == 0, result.stderr
    events = json.loads(result.stdout)
    assert [(e["kind"], e["loss"], e["epoch"]) for e in events] == [("head-died", "D", 2), ("dominating", "C", 2)]


def test_png_svg_and_html_are_written_and_reproducible(tmp_path: Path, cli: Callable[..., Result]) -> None:
    flow = history_file(tmp_path)
    result = cli("timeline", flow, "-o", tmp_path / "t.png", "-o", tmp_path / "t.svg", "-o", tmp_path / "t.html")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (tmp_path / "t.svg").read_text()
    assert "<svg" in svg and "#e69f00" in svg.lower()  # D's colour from the report
    page = (tmp_path / "t.html").read_text()
    assert "loss &#x27;D&#x27; stopped reaching the trunk at epoch 2" in page
    records = timeline.read_history(flow)
    assert timeline.plot(records, "svg") == timeline.plot(records, "svg")


def test_bad_input_is_one_line(tmp_path: Path, cli: Callable[..., Result]) -> None:
    missing = cli("timeline", tmp_path / "none.jsonl")
    assert missing.exit_code == 1 and missing.stderr.startswith("Error: no such history file")
    flow = history_file(tmp_path)
    bad_format = cli("timeline", flow, "-o", tmp_path / "t.pdf")
    assert bad_format.exit_code == 1 and "valid: png, svg, html" in bad_format.stderr
    junk = tmp_path / "junk.jsonl"
    junk.write_text("{not json\n")
    result = cli("timeline", junk)
    assert result.exit_code == 1 and "junk.jsonl:1 is not JSON" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
