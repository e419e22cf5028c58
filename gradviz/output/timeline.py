"""The timeline of a training run: per-loss trunk share and weighted trunk gradient norm over time.

Reads the monitor's history file (one JSON line per probe, see
:mod:`gradviz.core.history`) and draws two panels with matplotlib (Agg, PNG or
SVG; HTML embeds the SVG with the events listed), each loss in its report
colour, a dotted line where each event began. No TensorFlow.
"""

from __future__ import annotations

import html
import io
import json
import math
from pathlib import Path
from typing import Any

from gradviz.core.history import number, weighted_trunk_norms
from gradviz.errors import DataError, OutputError
from gradviz.output.files import check_target, write_bytes

FORMATS = ("png", "svg", "html")


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """The records of a monitor history file, in order.

    Raises:
        DataError: the file is missing, empty, or a line is not a monitor record.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"no such history file: {file} (GradientFlowMonitor(path=...) writes one)")
    records = []
    for number_, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{file}:{number_} is not JSON ({e.msg}); expected one monitor record per line") from e
        if not isinstance(rec, dict) or not {"epoch", "losses", "trunk"} <= set(rec):
            raise DataError(f"{file}:{number_} is not a monitor record (needs epoch, losses, trunk)")
        records.append(rec)
    if not records:
        raise DataError(f"{file} holds no records")
    return records


def events(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every event of the run, in order (what ``timeline --json`` prints)."""
    return [event for rec in records for event in rec.get("events", [])]


def output_format(path: str | Path) -> str:
    """The format ``-o path`` writes, checked before any work.

    Example:
        >>> output_format("t.svg")
        'svg'

    Raises:
        OutputError: the extension is not png, svg or html, or the file cannot be written.
    """
    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix not in FORMATS:
        raise OutputError(f"unknown timeline format {suffix or '(none)'!r} for {path}; valid: {', '.join(FORMATS)}")
    check_target(path)
    return suffix


def write(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write the timeline as ``path``'s extension says (png, svg, html).

    Raises:
        OutputError: unknown format, or the file cannot be written.
    """
    fmt = output_format(path)
    if fmt == "html":
        return write_bytes(path, page(records).encode())
    return write_bytes(path, plot(records, fmt))


def _axis(records: list[dict[str, Any]]) -> tuple[list[float], str]:
    epochs = [int(r["epoch"]) for r in records]
    if len(set(epochs)) == len(epochs):
        return [float(e) for e in epochs], "epochs completed"
    return [float(r.get("step") or 0) for r in records], "training steps completed"


def plot(records: list[dict[str, Any]], fmt: str) -> bytes:
    """The two panels as PNG or SVG bytes (byte-identical for the same records)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    xs, xlabel = _axis(records)
    colors = {l["name"]: l.get("color") or None for l in records[-1]["losses"]}
    names = [l["name"] for l in records[-1]["losses"]]
    figure = Figure(figsize=(7.5, 5.6), layout="constrained")
    FigureCanvasAgg(figure)
    share_ax, norm_ax = figure.subplots(2, 1, sharex=True)
    for name in names:
        shares = [number((r.get("trunk") or {}).get("share", {}).get(name)) for r in records]
        norms = [weighted_trunk_norms(r).get(name, math.nan) for r in records]
        share_ax.plot(xs, shares, marker="o", markersize=3, color=colors.get(name), label=name)
        norm_ax.plot(xs, norms, marker="o", markersize=3, color=colors.get(name), label=name)
    share_ax.axhline(0.0, color="#000000", linewidth=0.6)
    share_ax.set_ylabel("share of the trunk's gradient")
    norm_ax.set_ylabel("weighted trunk gradient norm")
    norm_ax.set_xlabel(xlabel)
    share_ax.set_title("Gradient flow on the shared trunk during training", fontsize=10)
    by_x = dict(zip([id(r) for r in records], xs))
    placed = 0
    for rec in records:
        for event in rec.get("events", []):
            x = by_x[id(rec)]
            color = colors.get(event["loss"]) or "#555555"
            for ax in (share_ax, norm_ax):
                ax.axvline(x, color=color, linestyle=":", linewidth=1.2)
            # labels stacked mid-panel (lines sit at 0 and 1 most of the time), on white
            share_ax.annotate(f"{event['kind']} {event['loss']}", (x, 0.62 - 0.1 * (placed % 4)),
                              xycoords=("data", "axes fraction"), xytext=(3, 0), textcoords="offset points",
                              fontsize=7, color=color, bbox={"boxstyle": "round,pad=0.2", "fc": "white",
                                                             "ec": color, "lw": 0.5})
            placed += 1
    share_ax.legend(fontsize=8, loc="best", title="loss", title_fontsize=8)
    buffer = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else {}
    with matplotlib.rc_context({"svg.hashsalt": "gradviz"}):
        figure.savefig(buffer, format=fmt, metadata=metadata, dpi=120)
    return buffer.getvalue()


def page(records: list[dict[str, Any]]) -> str:
    """A standalone HTML page: the SVG timeline and the list of events."""
    svg = plot(records, "svg").decode()
    svg = svg[svg.index("<svg"):]
    rows = "".join(
        f"<tr><td>{e['epoch']}</td><td>{e.get('step', '')}</td><td>{html.escape(e['kind'])}</td>"
        f"<td>{html.escape(e['loss'])}</td><td>{html.escape(e['message'])}</td></tr>"
        for e in events(records)
    ) or '<tr><td colspan="5">no events</td></tr>'
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>gradviz timeline</title>"
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}</style></head><body>\n"
        f"<h1>Gradient flow during training</h1>\n{svg}\n<h2>Events</h2>\n"
        "<table><tr><th>epoch</th><th>step</th><th>kind</th><th>loss</th><th>what</th></tr>"
        f"{rows}</table>\n</body></html>\n"
    )
