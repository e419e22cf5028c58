"""The terminal summary of a report (rich tables), as text.

rich gives aligned, width-aware tables and colour that degrades to plain
text when stdout is not a terminal, which hand-written padding does not.
"""

from __future__ import annotations

import io
from collections import Counter

from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradviz.core.report import STATUSES, Report
from gradviz.core.wording import noun, plural
SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
STATUS_STYLE = {"shared": "green", "exclusive": "blue", "dead": "red", "unreached": "magenta", "no-trainable-weights": "dim"}


def folded(table: Table) -> Table:
    """Wrap long cells onto more lines instead of cutting them with '…' (narrow terminals)."""
    for column in table.columns:
        column.overflow = "fold"
    return table


def fmt(x: float | None) -> str:
    """A gradient figure in 3 significant digits; '-' for a gradient that does not exist.

    Example:
        >>> fmt(None), fmt(0.0), fmt(0.000123456), fmt(12345.6)
        ('-', '0', '0.000123', '1.23e+04')
    """
    if x is None:
        return "-"
    if x == 0:
        return "0"
    return f"{x:.3g}"


def summary(report: Report, *, all_layers: bool = False, width: int = 120, color: bool = False) -> str:
    """The summary the CLI prints: losses, layers, counts and findings.

    Args:
        report: the analysis.
        all_layers: also list operations and layers without trainable weights.
        width: the line width.
        color: keep ANSI colours (for a terminal).
    """
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=color, no_color=not color, highlight=False)
    names = [l.name for l in report.losses]
    source = report.meta.get("source") or report.model_name
    data = report.meta.get("data", "synthetic")
    console.print(
        f"[bold]{source}[/bold]: {plural(len(report.losses), 'loss', 'losses')}, batch {report.meta.get('batch_size')} x "
        f"{report.meta.get('batches')} ({data} data, {'training' if report.meta.get('training', True) else 'inference'} mode)"
    )
    if report.meta.get("execution"):
        console.print(f"Gradients: {report.meta['execution']} ({report.meta.get('execution_reason', '')})",
                      style="dim")

    console.print("\n[bold]Losses[/bold]")
    losses = Table(show_edge=False)
    for column in ("loss", "function", "weight", "value", "weighted trunk grad"):
        losses.add_column(column, justify="right" if column in ("weight", "value", "weighted trunk grad") else "left")
    for loss in report.losses:
        trunk_norm = report.trunk.grad_norm.get(loss.name) if report.trunk else None
        label = Text(loss.name)
        if color and loss.color:  # the loss's colour in diagrams, the HTML and the JSON
            label = Text.assemble(("■ ", loss.color), loss.name)
        losses.add_row(
            label, loss.loss, f"{loss.weight:g}", fmt(loss.value),
            fmt(None if trunk_norm is None else loss.weight * trunk_norm),
        )
    console.print(folded(losses))

    console.print("\n[bold]Layers[/bold]: gradient L2 norm of each unweighted loss; combined = what training applies")
    layers = Table(show_edge=False)
    layers.add_column("layer")
    layers.add_column("class")
    layers.add_column("params", justify="right")
    for name in names:
        layers.add_column(name, justify="right")
    layers.add_column("combined", justify="right")
    layers.add_column("status")
    hidden = 0
    for info in report.layers:
        if not all_layers and info.trainable_params == 0:
            hidden += 1
            continue
        layers.add_row(
            info.name, info.class_name, f"{info.trainable_params:,}",
            *[fmt(info.grad_norm.get(n)) for n in names],
            fmt(info.combined_grad_norm),
            Text(info.status, style=STATUS_STYLE.get(info.status, "")),
        )
    console.print(folded(layers))
    counts = Counter(info.status for info in report.layers if info.trainable_params > 0)
    parts = [f"{counts[s]} {s}" for s in STATUSES if counts.get(s)]
    unlisted = noun(hidden, "operation or weightless layer", "operations and weightless layers")
    tail = f" ({hidden} {unlisted} not listed; --all-layers shows them)" if hidden else ""
    console.print("Layers with weights: " + (", ".join(parts) or "none") + tail)

    if report.findings:
        console.print(f"\n[bold]Findings ({len(report.findings)})[/bold]")
        for finding in report.findings:
            line = Text()
            line.append(f"{finding.severity.upper():8}", style=SEVERITY_STYLE[finding.severity])
            line.append(f"{finding.kind}: ", style="bold")
            line.append(finding.message)
            console.print(line)
    else:
        console.print("\nNo findings: every loss reaches its layers with a nonzero gradient.")
    return buffer.getvalue()
