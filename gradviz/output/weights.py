"""Showing what the loss weights do: the terminal summary, the sweep plot, output files.

Takes a :class:`gradviz.core.weighting.WhatIf` and turns it into text, a
matplotlib figure (PNG/SVG, Agg backend, imported only when a plot is asked
for) or files. Loss colours are :attr:`WhatIf.colors`, so the plot matches
the diagrams' legend.

``-o`` files of ``gradviz weights``: ``.json`` is the scenarios document;
``.png`` / ``.svg`` with ``--sweep`` are the sweep plot; any other format
``gradviz.output`` knows (e.g. a diagram, once registered there) is the
report of the one ``--try`` scenario (or of the current weights), the same
output ``inspect --loss-weight`` writes.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradviz import output
from gradviz.core.findings import conflicting_layers
from gradviz.core.weighting import CURRENT, TRUNK, Scenario, WhatIf
from gradviz.errors import OutputError
from gradviz.output.diagram import RenderOptions
from gradviz.output.text import SEVERITY_STYLE, fmt, folded
from gradviz.core.wording import plural
PLOT_FORMATS = ("png", "svg")
JSON = "json"


def output_kind(path: str | Path, *, sweeps: int, tries: int) -> str:
    """What ``-o path`` writes: ``json`` (the scenarios), ``plot``, or a report format of ``gradviz.output``.

    Checked before the analysis, so a bad name fails fast.

    Example:
        >>> output_kind("w.json", sweeps=0, tries=0), output_kind("s.svg", sweeps=1, tries=0)
        ('json', 'plot')

    Raises:
        OutputError: the format is unknown, or a scenario report is asked for
            with several ``--try`` (which one?), or the file cannot be written.
    """
    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix == JSON:
        output.check_target(path)
        return JSON
    if suffix in PLOT_FORMATS and sweeps:
        output.check_target(path)
        return "plot"
    if tries > 1:
        raise OutputError(f"-o {path} writes one scenario's report; give a single --try (got {tries})")
    return output.prepare(path)


def write(what_if: WhatIf, path: str | Path, kind: str, options: RenderOptions | None = None) -> Path:
    """Write ``path`` as :func:`output_kind` decided.

    Raises:
        OutputError: the file cannot be written, or there is nothing to plot.
    """
    if kind == JSON:
        return output.write_bytes(path, (what_if.to_json() + "\n").encode())
    if kind == "plot":
        dpi = options.dpi if options is not None else None
        return output.write_bytes(path, plot(what_if, Path(path).suffix.lstrip(".").lower(), dpi=dpi))
    chosen = what_if.scenarios[1] if what_if.tries else what_if.scenarios[0]
    return output.write(what_if.report(chosen), path, None, options)


# -- text --------------------------------------------------------------------------------


def summary(what_if: WhatIf, *, width: int = 120, color: bool = False) -> str:
    """The text the ``weights`` command prints: conflict, scenarios on the trunk, suggestion."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=color, no_color=not color, highlight=False)
    base = what_if.base
    names = what_if.loss_names
    shared = what_if.shared_layers
    source = base.meta.get("source") or base.model_name
    console.print(
        f"[bold]{source}[/bold]: {plural(len(names), 'loss', 'losses')}, batch {base.meta.get('batch_size')} x "
        f"{base.meta.get('batches')} ({base.meta.get('data', 'synthetic')} data); gradients computed once"
    )
    if shared:
        listed = ", ".join(shared[:6]) + (f" ... ({len(shared)} layers)" if len(shared) > 6 else "")
        console.print(f"Trunk (layers shared by 2+ losses): {listed}")
    else:
        console.print("No layer is shared by two losses: there is no trunk, the weights only scale each head.")

    if base.trunk is not None and base.trunk.pairs:
        console.print("\n[bold]Conflict[/bold]: cosine of the unweighted gradients (below 0: they pull against "
                      "each other; independent of the weights)")
        table = Table(show_edge=False)
        for column in ("losses", "trunk cosine", "magnitude similarity", "shared layers with cosine < 0"):
            table.add_column(column, justify="left" if column in ("losses", "shared layers with cosine < 0") else "right")
        shared_infos = [info for info in base.layers if info.status == "shared"]
        for pair in base.trunk.pairs:
            negative = conflicting_layers(shared_infos, pair.losses)
            table.add_row(
                f"{pair.losses[0]} / {pair.losses[1]}",
                Text(f"{pair.cosine:.3f}", style="red" if pair.cosine < 0 else ""),
                f"{pair.magnitude_similarity:.3f}",
                f"{len(negative)} of {len(shared_infos)}" + (f": {', '.join(negative[:4])}" if negative else "")
                + (" ..." if len(negative) > 4 else ""),
            )
        console.print(folded(table))

    console.print("\n[bold]Scenarios[/bold]: weights, and each loss's share of the applied gradient on the trunk"
                  if shared else "\n[bold]Scenarios[/bold]: weights")
    table = Table(show_edge=False)
    table.add_column("scenario")
    for name in names:
        table.add_column(f"w {name}", justify="right")
    if base.trunk is not None:
        table.add_column("trunk grad", justify="right")
        for name in names:
            table.add_column(f"share {name}", justify="right")
    kinds = [", ".join(sorted({f.kind for f in scenario.findings})) for scenario in what_if.scenarios]
    table.add_column("findings", min_width=max([len(k) for k in kinds] + [8]))
    for scenario in what_if.scenarios:
        row = [scenario.label] + [f"{scenario.weights[n]:.4g}" for n in names]
        if base.trunk is not None:
            row.append(fmt(scenario.trunk.combined_grad_norm if scenario.trunk else None))
            row += [_share(scenario, n) for n in names]
        row.append(kinds[what_if.scenarios.index(scenario)])
        table.add_row(*row, style="bold" if scenario.source == CURRENT else "")
    console.print(folded(table))

    suggestion = what_if.suggestion
    if suggestion is not None:
        console.print()
        if suggestion.weights is None:
            console.print("[bold]Suggested weights[/bold]: none (" + "; ".join(suggestion.notes) + ")")
        else:
            where = "the trunk" if suggestion.reference_layer == TRUNK else f"layer '{suggestion.reference_layer}'"
            console.print(
                f"[bold]Suggested weights[/bold] (every loss's weighted gradient norm on {where} = "
                f"{fmt(suggestion.balanced_grad_norm)}; same total weight as now):"
            )
            if suggestion.loss_weights_line:  # None when no loss is compile()'s
                console.print(f"  {suggestion.loss_weights_line}", soft_wrap=True)
            console.print(f"  gradviz inspect {source} {suggestion.cli_options}", soft_wrap=True)
            for loss, reason in suggestion.unbalanced.items():
                console.print(f"  not balanced: {loss}: {reason} (kept at {suggestion.weights[loss]:g})")
            for note in suggestion.notes:
                console.print(f"  note: {note}")
        for alternative in suggestion.alternatives:
            shown = (", ".join(f"{k}={alternative.weights[k]:.4g}" for k in suggestion.outputs)
                     if alternative.weights else "n/a")
            console.print(f"  {alternative.name} would start from {shown}\n    ({alternative.note})")

    conflicts = [f for f in base.findings if f.kind == "conflict"]
    if conflicts:
        console.print()
        for finding in conflicts:
            line = Text()
            line.append(f"{finding.severity.upper():8}", style=SEVERITY_STYLE[finding.severity])
            line.append(f"{finding.kind}: ", style="bold")
            line.append(finding.message)
            console.print(line)
    return buffer.getvalue()


def _minor_log_label(ax: Any) -> Callable[[float, Any], str]:
    """Labels for a log axis's minor ticks: all of them within a decade, 2 and 5 within two, none beyond
    (matplotlib's own thresholds), written as plain numbers."""

    def label(value: float, _: Any) -> str:
        low, high = sorted(ax.get_ylim())
        decades = math.log10(high / low) if low > 0 else math.inf
        mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9)) if value > 0 else 0
        if decades <= 1 or (decades <= 2 and mantissa in (2, 5)):
            return f"{value:g}"
        return ""

    return label


def _share(scenario: Scenario, name: str) -> str:
    if scenario.trunk is None or name not in scenario.trunk.share:
        return "-"
    return f"{scenario.trunk.share[name]:.1%}"


# -- the sweep plot ------------------------------------------------------------------------------


#: resolution of the sweep plot's PNG unless ``--dpi`` says otherwise
PLOT_DPI = 120


def plot(what_if: WhatIf, fmt_name: str = "png", dpi: int | None = None) -> bytes:
    """The sweep plot: each loss's share of the trunk's gradient against the swept weight.

    One panel per ``--sweep``; the trunk's combined gradient norm on a second
    axis (dashed), the current weight marked above the panel, one legend
    below the panels (outside them, so no line crosses it). Colours:
    :attr:`WhatIf.colors`.

    Args:
        what_if: the scenarios, with at least one sweep.
        fmt_name: ``png`` or ``svg``.
        dpi: resolution of a PNG (default :data:`PLOT_DPI`).

    Raises:
        OutputError: no sweep, or no trunk to show shares of.
    """
    figure = sweep_figure(what_if)
    buffer = io.BytesIO()
    metadata = {"Date": None} if fmt_name == "svg" else {}
    import matplotlib

    with matplotlib.rc_context({"svg.hashsalt": "gradviz"}):
        figure.savefig(buffer, format=fmt_name, metadata=metadata, dpi=dpi or PLOT_DPI)
    return buffer.getvalue()


def sweep_figure(what_if: WhatIf) -> Any:
    """The matplotlib ``Figure`` :func:`plot` saves (Agg canvas attached).

    Raises:
        OutputError: no sweep, or no trunk to show shares of.
    """
    if not what_if.sweeps:
        raise OutputError("the plot shows a --sweep: give one")
    if what_if.base.trunk is None:
        raise OutputError("no layer is shared by two losses: there is no trunk share to plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    names = what_if.loss_names
    colors = what_if.colors
    panels = len(what_if.sweeps)
    figure = Figure(figsize=(6.4 * panels, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    current = what_if.scenarios[0].weights
    for ax, sweep in zip(axes, what_if.sweeps):
        points = what_if.sweep_scenarios(sweep)
        xs = [s.swept[1] if s.swept else float("nan") for s in points]
        for name in names:
            ys = [s.trunk.share.get(name, float("nan")) if s.trunk else float("nan") for s in points]
            ax.plot(xs, ys, marker="o", markersize=3, color=colors[name], label=f"share {name}")
        ax.axhline(0.0, color="#000000", linewidth=0.6)
        ax.axvline(current[sweep.loss], color="#555555", linestyle=":", linewidth=1)
        # above the panel, where no share line runs
        ax.annotate("current", (current[sweep.loss], 1.0), xycoords=("data", "axes fraction"),
                    xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=8,
                    color="#555555", annotation_clip=False)
        if sweep.scale == "log":
            ax.set_xscale("log")
        ax.set_xlabel(f"weight of '{sweep.loss}' (other weights as now)")
        ax.set_ylabel("share of the trunk's gradient")
        ax.set_title(f"Trunk gradient shares, sweeping '{sweep.loss}'", fontsize=10, pad=14)
        norm_ax = ax.twinx()
        norms = [s.trunk.combined_grad_norm if s.trunk and s.trunk.combined_grad_norm is not None else float("nan")
                 for s in points]
        norm_ax.plot(xs, norms, color="#000000", linestyle="--", linewidth=1, label="trunk grad norm")
        norm_ax.set_ylabel("trunk combined gradient norm (dashed)")
        if sweep.scale == "log" and all(n > 0 for n in norms):
            norm_ax.set_yscale("log")
            # 0.5, 2, 3 rather than 5x10^-1, 2x10^0
            norm_ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            norm_ax.yaxis.set_minor_formatter(FuncFormatter(_minor_log_label(norm_ax)))
    lines = axes[0].get_legend_handles_labels()
    extra = norm_ax.get_legend_handles_labels()
    figure.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=8, loc="outside lower center",
                  ncols=len(lines[0]) + len(extra[0]), frameon=False)
    return figure
