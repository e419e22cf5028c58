"""The ``gradviz`` command: parse options, call the API, print.

TensorFlow is imported only inside commands that need it, so ``gradviz --help``
is instant. Every ``GradvizError`` becomes one ``Error: ...`` line on stderr
and exit code 1; usage errors exit 2 (click's convention); ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any, Callable, TypeVar

import click

from gradviz.errors import GradvizError

F = TypeVar("F", bound=Callable[..., Any])

FAIL_LEVELS = ("warning", "error")


class ReportedError(click.ClickException):
    """A GradvizError on its way to the terminal."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares it a ClassVar; per-instance here

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


def handle_errors(command: F) -> F:
    """Translate errors to one line and an exit code (or a traceback with ``--debug``)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug", False)
        try:
            return command(*args, **kwargs)
        except GradvizError as e:
            if debug:
                raise
            raise ReportedError(str(e), e.exit_code) from e
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            raise ReportedError("interrupted", 130) from None
        except Exception as e:  # a bug or an unexpected TensorFlow failure: still one line
            if debug:
                raise
            text = " ".join(str(e).split())[:300]
            raise ReportedError(
                f"unexpected {type(e).__name__}: {text} (run with --debug for the traceback)"
            ) from e

    return wrapper  # type: ignore[return-value]


def analysis_options(command: F) -> F:
    """The options shared by every command that computes gradients."""
    options = [
        click.option("--loss", "losses", multiple=True, metavar="OUTPUT=LOSS",
                     help="Loss for an output (repeatable); a bare LOSS applies to every output. "
                          "Overrides the compiled loss."),
        click.option("--loss-weight", "loss_weights", multiple=True, metavar="OUTPUT=W",
                     help="Weight of an output's loss (repeatable; 'regularization' weights model.losses)."),
        click.option("--data", type=click.Path(dir_okay=False), metavar="FILE.npz",
                     help="Inputs and targets: keys x/y, or x:<input>/y:<output>. Default: seeded synthetic data."),
        click.option("--batch-size", type=int, default=32, show_default=True, help="Rows per batch."),
        click.option("--batches", type=int, default=1, show_default=True,
                     help="Batches to stream; statistics describe their mean gradient."),
        click.option("--batch-mode", type=click.Choice(["mean-gradient", "per-batch"]), default="mean-gradient",
                     show_default=True,
                     help="mean-gradient: figures of the gradient averaged over batches (one float32 copy of "
                          "the weights per loss); per-batch: average of per-batch figures (no extra memory)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic data."),
        click.option("--inference", is_flag=True,
                     help="Call the model with training=False (no dropout, BatchNorm moving statistics)."),
        click.option("--custom-objects", type=click.Path(dir_okay=False), metavar="FILE.py",
                     help="Python file defining custom layers/losses (it is executed)."),
        click.option("--unsafe", is_flag=True,
                     help="Allow Lambda layers (their Python bytecode runs). Only for files you trust."),
        click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def run_analysis(model: str, **kwargs: Any) -> Any:
    """Parse the shared options and call :func:`gradviz.analyze`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from gradviz.api import analyze
    from gradviz.spec import parse_loss_assignments, parse_weight_assignments

    losses = parse_loss_assignments(kwargs["losses"])
    weights = parse_weight_assignments(kwargs["loss_weights"])
    batches = kwargs["batches"]
    with _progress(batches) as progress:
        return analyze(
            model,
            losses=losses,
            loss_weights=weights,
            data=kwargs["data"],
            batch_size=kwargs["batch_size"],
            batches=batches,
            seed=kwargs["seed"],
            training=not kwargs["inference"],
            batch_mode=kwargs["batch_mode"],
            custom_objects=kwargs["custom_objects"],
            unsafe=kwargs["unsafe"],
            progress=progress,
        )


class _progress:
    """A rich progress bar on stderr while batches stream (only for more than one batch)."""

    def __init__(self, batches: int) -> None:
        self.batches = batches
        self.bar: Any = None

    def __enter__(self) -> Callable[[int, int], None] | None:
        if self.batches <= 1:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("gradients"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=True)
        self.bar.start()
        task = self.bar.add_task("gradients", total=self.batches)
        return lambda done, total: self.bar.update(task, completed=done)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="keras-gradviz", prog_name="gradviz")
def main() -> None:
    """Which layers each loss of a multi-output Keras model really trains.

    \b
    Example:
      gradviz inspect model.keras
      gradviz inspect model.keras --loss-weight C=0.5 --json | jq .findings
    """


@main.command()
@click.argument("model", type=click.Path())
@analysis_options
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON report on stdout.")
@click.option("-o", "--output", "outputs", multiple=True, type=click.Path(), metavar="FILE",
              help="Write the report; the extension picks the format (.json). Repeatable.")
@click.option("--format", "fmt", default=None, metavar="FORMAT", help="Format of every -o file, overriding extensions.")
@click.option("--all-layers", is_flag=True, help="List operations and weightless layers in the table too.")
@click.option("--fail-on", type=click.Choice(FAIL_LEVELS), default=None,
              help="Exit 1 when a finding of this severity or worse exists (for CI).")
@handle_errors
def inspect(model: str, as_json: bool, outputs: tuple[str, ...], fmt: str | None, all_layers: bool,
            fail_on: str | None, **kwargs: Any) -> None:
    """Per-loss gradient analysis of a saved Keras model.

    Computes, for every trainable variable, the gradient of each loss (from the
    saved compile config, or --loss), and reports which layers each loss
    reaches, how strongly, where a path is blocked, dead heads and the
    effect of the loss weights on the shared trunk.

    \b
    Example:
      gradviz inspect samples/shared_trunk.keras
      gradviz inspect model.keras --data batch.npz --batches 4 -o report.json
      gradviz inspect model.keras --loss D=mse --loss-weight D=0.1 --fail-on error
    """
    from gradviz import output
    from gradviz.analysis import severity_at_least

    for path in outputs:  # fail before the (slow) analysis
        output.format_of(path, fmt)
        output.check_target(path)
    report = run_analysis(model, **kwargs)
    # Diagrams (every format but JSON) first, timed as the "render" stage, so that
    # JSON written after them carries that time in "timings" (total included).
    for path in sorted(outputs, key=lambda p: output.format_of(p, fmt) == "json"):
        start = time.perf_counter()
        written = output.write(report, path, fmt)
        if output.format_of(path, fmt) != "json":
            report.add_timing("render", time.perf_counter() - start)
        click.echo(f"wrote {written}", err=True)
    if as_json:
        click.echo(report.to_json())
    else:
        from gradviz.report import summary

        width = max(80, min(160, _terminal_width()))
        click.echo(summary(report, all_layers=all_layers, width=width, color=sys.stdout.isatty()), nl=False)
    if fail_on and severity_at_least(report.findings, fail_on):
        count = len(severity_at_least(report.findings, fail_on))
        click.echo(f"Error: {count} finding(s) of severity {fail_on} or worse (--fail-on {fail_on})", err=True)
        sys.exit(1)


def _terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((120, 24)).columns


if __name__ == "__main__":  # pragma: no cover
    main()
