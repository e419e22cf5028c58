"""The ``gradviz`` command: parse options, call the API, print.

TensorFlow (or JAX, with ``KERAS_BACKEND=jax``) is imported only inside commands
that need it, so ``gradviz --help`` is instant. Every ``GradvizError`` becomes one ``Error: ...`` line on stderr
and exit code 1; usage errors exit 2 (click's convention); ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import functools
import re
import sys
import time
from dataclasses import replace
from typing import Any, Callable, NoReturn, TypeVar

import click

from gradviz.backends.execution import EAGER_MAX_BATCHES, EAGER_MAX_GRADIENT_BYTES, EXECUTIONS
from gradviz.errors import GradvizError
F = TypeVar("F", bound=Callable[..., Any])

FAIL_LEVELS = ("warning", "error")
#: gradviz.output.formats(), spelled out so that --help imports no NumPy (a test keeps them equal)
OUTPUT_FORMATS = ("dot", "graphml", "html", "json", "pdf", "png", "svg")


def fail(message: str, exit_code: int = 1) -> NoReturn:
    """Print one ``Error: ...`` line on stderr and exit."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(exit_code)


#: the Python API's parameter -> the CLI flag that sets it (library messages name parameters in backticks)
FLAGS = {
    "batch_size": "--batch-size",
    "batches": "--batches",
    "data": "--data",
    "custom_objects": "--custom-objects",
    "unsafe": "--unsafe",
    "losses": "--loss",
    "loss_weights": "--loss-weight",
    "loss_terms": "--loss-terms",
    "reference": "--reference",
    "suggest_weights": "--suggest",
    "tries": "--try",
    "sweeps": "--sweep",
    "fmt": "--format",
}
_PARAMETER = re.compile(r"`(\w+)(?:=([^`]*))?`")
_MAPPING = re.compile(r"^\{'?([^':{}]+)'?: ([^{}]+)\}$")


def cli_words(message: str) -> str:
    """A library message in the CLI's words: each backticked parameter becomes its flag.

    Example:
        >>> cli_words("`batch_size` must be at least 1, got 0")
        '--batch-size must be at least 1, got 0'
        >>> cli_words("give one with `losses={OUTPUT: LOSS}`; or `loss_weights={'C': W}`; `unsafe=True`")
        'give one with --loss OUTPUT=LOSS; or --loss-weight C=W; --unsafe'
        >>> cli_words("fewer than `batch_size=8` x `batches=2` = 16; `other` stays")
        'fewer than --batch-size 8 x --batches 2 = 16; `other` stays'
    """

    def flag(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        if name not in FLAGS:
            return match.group(0)
        if value is None or value == "True":
            return FLAGS[name]
        mapping = _MAPPING.match(value)
        return f"{FLAGS[name]} {mapping.group(1)}={mapping.group(2)}" if mapping else f"{FLAGS[name]} {value}"

    return _PARAMETER.sub(flag, message)


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
            fail(cli_words(str(e)), e.exit_code)
        except (click.exceptions.Exit, click.ClickException):
            raise
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except Exception as e:  # a bug or an unexpected TensorFlow failure: still one line
            if debug:
                raise
            text = " ".join(str(e).split())[:300]
            fail(f"unexpected {type(e).__name__}: {text} (run with --debug for the traceback)")

    return wrapper  # type: ignore[return-value]


def analysis_options(command: F) -> F:
    """The options shared by every command that computes gradients."""
    options = [
        click.option("--loss", "losses", multiple=True, metavar="OUTPUT=LOSS",
                     help="Loss for an output (repeatable); a bare LOSS applies to every output. "
                          "Overrides the compiled loss."),
        click.option("--loss-weight", "loss_weights", multiple=True, metavar="NAME=W",
                     help="Weight of a loss (repeatable): an output's, an endpoint layer's add_loss (by layer "
                          "name), a --loss-terms term's, or 'regularization' (the summed regularizers; "
                          "'model.losses' when an output is called 'regularization')."),
        click.option("--loss-terms", "loss_terms", metavar="FILE.py:FUNCTION",
                     help="The losses of a custom training step: FUNCTION(model, x, y) returns {name: scalar}; "
                          "each term is analysed as a loss (weight 1), replacing the compiled ones. The file is "
                          "executed."),
        click.option("--data", type=click.Path(), metavar="FILE.npz|DIR",
                     help="Inputs and targets: an .npz file (keys x/y, or x:<input>/y:<output>) or a directory "
                          "written by tf.data.Dataset.save (elements (x, y) or (x, y, sample_weight)). "
                          "Default: seeded synthetic data."),
        click.option("--batch-size", type=int, default=None,
                     help="Rows per batch (default 32; a saved dataset of batches keeps its own unless given)."),
        click.option("--batches", type=int, default=1, show_default=True,
                     help="Batches to stream; statistics describe their mean gradient."),
        click.option("--batch-mode", type=click.Choice(["mean-gradient", "per-batch"]), default="mean-gradient",
                     show_default=True,
                     help="mean-gradient: figures of the gradient averaged over batches (one float32 copy of "
                          "the weights per loss); per-batch: average of per-batch figures (no extra memory)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic data and of random layers (Dropout, noise, augmentation)."),
        click.option("--execution", type=click.Choice(list(EXECUTIONS)), default="auto",
                     show_default=True,
                     help="How gradients are computed: eager (no tracing: fastest for a few batches), compiled "
                          f"(traced once, then fastest per batch), or auto: eager up to {EAGER_MAX_BATCHES} batches, "
                          "compiled above, and when eager mode's per-loss gradient copies of the weights would pass "
                          f"{EAGER_MAX_GRADIENT_BYTES // 2**20:,} MB. On JAX (KERAS_BACKEND=jax) auto always "
                          "compiles; eager runs op by op under jax.disable_jit."),
        click.option("--inference", is_flag=True,
                     help="Call the model with training=False (no dropout, BatchNorm moving statistics)."),
        click.option("--custom-objects", type=click.Path(dir_okay=False), metavar="FILE.py",
                     help="Python file defining custom layers/losses (it is executed)."),
        click.option("--unsafe", is_flag=True,
                     help="Allow Lambda layers (their Python bytecode runs). Only for files you trust."),
        click.option("--no-compilation-cache", is_flag=True,
                     help="JAX backend: do not keep the compiled pass in JAX's persistent compilation cache "
                          "(default: on, in ~/.cache/gradviz/jax; GRADVIZ_COMPILATION_CACHE=0 also turns it off)."),
        click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def render_options(command: F) -> F:
    """The options of diagrams and the HTML report (``-o FILE.svg/.png/.pdf/.dot/.html``)."""
    options = [
        click.option("--show-shapes", is_flag=True, help="Diagrams: add output shapes to the boxes."),
        click.option("--show-norms", is_flag=True, help="Diagrams: add per-loss and combined gradient norms."),
        click.option("--rankdir", type=click.Choice(["TB", "LR"]), default="TB", show_default=True,
                     help="Diagrams: top-to-bottom or left-to-right."),
        click.option("--expand-nested/--collapse-nested", default=True, show_default=True,
                     help="Diagrams: draw nested models as clusters of their layers, or as one box each."),
        click.option("--compact", is_flag=True,
                     help="Diagrams: merge chains of layers with the same reach and status into one box."),
        click.option("--dpi", type=click.IntRange(10, 1200), default=None, metavar="N",
                     help="Resolution of PNG files: diagrams (default 96) and sweep plots (default 120). "
                          "SVG, PDF and HTML are vector and ignore it."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def make_render_options(kwargs: dict[str, Any]) -> Any:
    """Pop the :func:`render_options` values from ``kwargs`` into a ``RenderOptions`` (with the command line)."""
    import shlex

    from gradviz.output.diagram import RenderOptions
    return RenderOptions(
        show_shapes=kwargs.pop("show_shapes"),
        show_norms=kwargs.pop("show_norms"),
        rankdir=kwargs.pop("rankdir"),
        expand_nested=kwargs.pop("expand_nested"),
        compact=kwargs.pop("compact"),
        command=shlex.join(["gradviz", *sys.argv[1:]]),
        dpi=kwargs.pop("dpi"),
    )


def run_analysis(model: str, **kwargs: Any) -> Any:
    """Parse the shared options, then :func:`gradviz.prepare` and ``Session.run``, showing the wait on a terminal."""
    from gradviz.core.spec import parse_loss_assignments, parse_weight_assignments
    losses = parse_loss_assignments(kwargs["losses"])
    weights = parse_weight_assignments(kwargs["loss_weights"])
    # Robustness (issue 5): TensorFlow's native import-time log lines must not turn a one-line
    # error into six, and prints from custom layers must not reach stdout (the report's).
    from gradviz.model.loading import check_path
    from gradviz.backends import configured_backend, library_name
    from gradviz.quiet import import_keras_quietly, stdout_to_stderr
    check_path(model)  # a missing or empty file fails before the seconds-long TensorFlow/JAX import
    batches = kwargs["batches"]
    with Waiting(enabled=_stderr_is_terminal()) as waiting:
        waiting.stage(f"importing {library_name(configured_backend())}")
        import_keras_quietly(debug=kwargs.get("debug", False))
        from gradviz.session import prepare

        loss_terms = None
        if kwargs.get("loss_terms"):
            from gradviz.model.loading import import_loss_terms

            with stdout_to_stderr():
                loss_terms = import_loss_terms(kwargs["loss_terms"])

        with stdout_to_stderr():
            waiting.stage(f"loading {model}")
            session = prepare(
                model,
                losses=losses,
                loss_weights=weights,
                training=not kwargs["inference"],
                batch_mode=kwargs["batch_mode"],
                custom_objects=kwargs["custom_objects"],
                unsafe=kwargs["unsafe"],
                execution=kwargs["execution"],
                loss_terms=loss_terms,
                compilation_cache=False if kwargs["no_compilation_cache"] else None,
            )
            chosen = session.choose_execution(batches)
            waiting.stage(f"gradients ({chosen.mode})", total=batches if batches > 1 else None)
            return session.run(
                kwargs["data"],
                batch_size=kwargs["batch_size"],
                batches=batches,
                seed=kwargs["seed"],
                progress=waiting.batches,
            )


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Waiting:
    """What the terminal shows while the user waits: a spinner with the current stage, a bar over batches.

    Only on a terminal's stderr (never on stdout, never in a pipe or a log); rich is imported
    only then. It writes to its own duplicate of file descriptor 2, taken before anything
    redirects it, so it stays visible while TensorFlow's native import-time logs are
    discarded and while custom code's prints are sent to stderr.

    Args:
        enabled: show anything at all.
        file: where to draw (tests); default: a duplicate of stderr.
    """

    def __init__(self, enabled: bool, file: Any = None) -> None:
        self.enabled = enabled
        self.file = file
        self._own_file = False
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> Waiting:
        if not self.enabled:
            return self
        import os

        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        if self.file is None:
            sys.stderr.flush()
            self.file = os.fdopen(os.dup(2), "w", encoding="utf-8", errors="replace")
            self._own_file = True
        console = Console(file=self.file, force_terminal=True, stderr=True)
        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                            TextColumn("{task.fields[count]}"), TimeElapsedColumn(), console=console, transient=True,
                            redirect_stdout=False, redirect_stderr=False)
        self.bar.start()
        self.task = self.bar.add_task("starting", total=None, count="")
        return self

    def stage(self, text: str, total: int | None = None) -> None:
        """Show ``text`` as what is happening now (with a bar over ``total`` steps, if given)."""
        if self.bar is not None:
            self.bar.update(self.task, description=text, total=total, completed=0,
                            count=f"0/{total}" if total else "")

    def batches(self, done: int, total: int) -> None:
        """A :data:`~gradviz.core.stats.Progress` callback: ``done`` of ``total`` batches."""
        if self.bar is not None and total > 1:
            self.bar.update(self.task, completed=done, total=total, count=f"{done}/{total}")

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        if self._own_file:
            self.file.close()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="keras-gradviz", prog_name="gradviz")
def main() -> None:
    """Which layers each loss of a multi-output Keras model really trains.

    \b
    Example:
      gradviz inspect model.keras
      gradviz inspect model.keras --loss-weight C=0.5 --json | jq .findings
      gradviz render report.json -o flow.pdf --compact
    """


@main.command()
@click.argument("model", type=click.Path())
@analysis_options
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON report on stdout.")
@click.option("-o", "--output", "outputs", multiple=True, type=click.Path(), metavar="FILE",
              help="Write the report; the extension picks the format: .json, .html, .graphml, .dot, and "
                   ".svg/.png/.pdf (need Graphviz). Repeatable.")
@click.option("--format", "fmt", default=None, metavar="FORMAT",
              help=f"Format of every -o file, overriding extensions: {', '.join(OUTPUT_FORMATS)} "
                   "('.dot' alike). Needs -o.")
@render_options
@click.option("--all-layers", is_flag=True, help="List operations and weightless layers in the table too.")
@click.option("--fail-on", type=click.Choice(FAIL_LEVELS), default=None,
              help="Exit 1 when a finding of this severity or worse exists (for CI).")
@handle_errors
def inspect(model: str, as_json: bool, outputs: tuple[str, ...], fmt: str | None, all_layers: bool,
            fail_on: str | None, **kwargs: Any) -> None:
    """Per-loss gradient analysis of a saved Keras model.

    Computes, for every trainable variable, the gradient of each loss (from the
    saved compile config or --loss, each layer's add_loss, the summed
    regularizers, or the terms of a custom training step with --loss-terms),
    and reports which layers each loss reaches, how strongly, where a path is
    blocked, dead heads and the effect of the loss weights on the shared trunk.

    \b
    Example:
      gradviz inspect samples/shared_trunk.keras
      gradviz inspect model.keras --data batch.npz --batches 4 -o report.json
      gradviz inspect model.keras --loss D=mse --loss-weight D=0.1 --fail-on error
      gradviz inspect model.keras -o flow.svg -o report.html --show-norms --compact
      gradviz inspect generator.keras --loss-terms steps.py:generator_terms --data pairs.npz
    """
    from gradviz import output
    from gradviz.core.report import severity_at_least
    if fmt is not None and not outputs:
        from gradviz.errors import OutputError
        raise OutputError(f"--format {fmt} sets the format of -o files, and no -o FILE was given; "
                          f"add one, e.g. -o report.txt --format {fmt}")
    options = make_render_options(kwargs)
    formats = [output.prepare(path, fmt) for path in outputs]  # fail before the (slow) analysis
    _note_html_without_dot(formats)
    report = run_analysis(model, **kwargs)
    report.command = options.command  # saved in the JSON: `gradviz render` shows it in the HTML, as here
    # Diagrams (every format but JSON) first, timed as the "render" stage, so that
    # JSON written after them carries that time in "timings" (total included).
    for path, name in sorted(zip(outputs, formats), key=lambda target: target[1] == "json"):
        start = time.perf_counter()
        written = output.write(report, path, fmt, options)
        if name != "json":
            report.add_timing("render", time.perf_counter() - start)
        click.echo(f"wrote {written}", err=True)
    if as_json:
        click.echo(report.to_json())
    else:
        from gradviz.output.text import summary
        width = max(80, min(160, _terminal_width()))
        click.echo(summary(report, all_layers=all_layers, width=width, color=sys.stdout.isatty()), nl=False)
    if fail_on and severity_at_least(report.findings, fail_on):
        count = len(severity_at_least(report.findings, fail_on))
        fail(f"{count} {'finding' if count == 1 else 'findings'} of severity {fail_on} or worse (--fail-on {fail_on})")


# -- gradviz render (issue 11) ------------------------------------------------------------


@main.command("render")
@click.argument("report_file", metavar="REPORT.json", type=click.Path(allow_dash=True))
@click.option("--json", "as_json", is_flag=True, help="Print only the report's JSON on stdout (as inspect wrote it).")
@click.option("-o", "--output", "outputs", multiple=True, type=click.Path(), metavar="FILE",
              help="Write the report; the extension picks the format: .svg/.png/.pdf (need Graphviz), .dot, "
                   ".html, .graphml, .json. Repeatable.")
@click.option("--format", "fmt", default=None, metavar="FORMAT", help="Format of every -o file, overriding extensions.")
@render_options
@click.option("--all-layers", is_flag=True, help="List operations and weightless layers in the table too.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@handle_errors
def render_command(report_file: str, as_json: bool, outputs: tuple[str, ...], fmt: str | None, all_layers: bool,
                   debug: bool, **kwargs: Any) -> None:
    """Draw a saved JSON report again, without TensorFlow: diagrams, HTML, GraphML, the summary.

    REPORT.json is what `gradviz inspect --json` or `-o FILE.json` wrote ('-' reads
    it from stdin). Every output is byte-identical to what inspect writes with the
    same options, so the gradients can be computed on one machine and the figures
    drawn on another. The HTML report shows the inspect command that computed it.

    \b
    Example:
      gradviz inspect model.keras -o report.json            # where the model and TensorFlow are
      gradviz render report.json -o flow.pdf --compact      # anywhere: no TensorFlow needed
      gradviz render report.json -o flow.svg -o report.html --show-norms --rankdir LR
      gradviz inspect model.keras --json | gradviz render - -o flow.png
    """
    from gradviz import output
    from gradviz.core.report_json import read_report, report_from_json
    from gradviz.errors import ReportError

    options = make_render_options(kwargs)
    formats = [output.prepare(path, fmt) for path in outputs]
    _note_html_without_dot(formats)
    if report_file == "-":
        try:
            report = report_from_json(sys.stdin.buffer.read())
        except ReportError as e:
            raise ReportError(f"stdin: {e}") from e
    else:
        report = read_report(report_file)
    options = replace(options, command=report.command)  # the command that computed the figures
    for path in outputs:
        click.echo(f"wrote {output.write(report, path, fmt, options)}", err=True)
    if as_json:
        click.echo(report.to_json())
    else:
        from gradviz.output.text import summary

        width = max(80, min(160, _terminal_width()))
        click.echo(summary(report, all_layers=all_layers, width=width, color=sys.stdout.isatty()), nl=False)


# -- gradviz weights (issue 4) ------------------------------------------------------------


@main.command("weights")
@click.argument("model", type=click.Path())
@analysis_options
@click.option("--try", "tries", multiple=True, metavar="OUTPUT=W[,OUTPUT=W...]",
              help="A scenario with these weights; unnamed losses keep theirs. Repeatable: one scenario each.")
@click.option("--sweep", "sweeps", multiple=True, metavar="OUTPUT=[log:]START:STOP:STEPS",
              help="Scenarios with OUTPUT's weight at STEPS points from START to STOP (linear, or evenly "
                   "in log scale after 'log:'); other weights as now. Repeatable.")
@click.option("--suggest", is_flag=True,
              help="Suggest weights giving every loss the same gradient norm on the last shared layer.")
@click.option("--reference", metavar="LAYER",
              help="The shared layer --suggest balances on ('trunk': all shared layers). Default: the last one.")
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON document on stdout.")
@click.option("-o", "--output", "outputs", multiple=True, type=click.Path(), metavar="FILE",
              help="Write .json (the scenarios), .png/.svg (the --sweep plot), or a diagram/report "
                   "(.svg/.png/.pdf/.dot/.html/.graphml) of the single --try scenario, or of the current "
                   "weights without --try. Repeatable.")
@render_options
@handle_errors
def weights_command(model: str, tries: tuple[str, ...], sweeps: tuple[str, ...], suggest: bool,
                    reference: str | None, as_json: bool, outputs: tuple[str, ...], **kwargs: Any) -> None:
    """What the loss weights do to the shared trunk: what-if, conflict, suggestions.

    Computes each loss's gradients once, then reports every scenario from
    them: each loss's share of the trunk's gradient and the combined gradient
    norm per layer under the current weights, each --try and each --sweep
    point; the cosine between the losses' gradients (conflict); and with
    --suggest, weights that balance the losses' gradient norms.

    \b
    Example:
      gradviz weights samples/shared_trunk.keras --suggest
      gradviz weights model.keras --try C=1,D=0.2 --try D=1 --json
      gradviz weights model.keras --sweep D=log:1e-3:10:9 -o shares.png
      gradviz weights model.keras --try D=0.1 -o flow.svg --show-norms
    """
    from gradviz.core import weighting
    from gradviz.output import weights as weighting_report
    parsed_tries = [weighting.parse_try(text) for text in tries]
    parsed_sweeps = [weighting.parse_sweep(text) for text in sweeps]
    if reference is not None and not suggest:
        raise click.UsageError("--reference only applies with --suggest")
    options = make_render_options(kwargs)
    kinds = [weighting_report.output_kind(path, sweeps=len(sweeps), tries=len(tries)) for path in outputs]
    _note_html_without_dot(kinds)
    report = run_analysis(model, **kwargs)
    what_if = weighting.explore(report, tries=parsed_tries, sweeps=parsed_sweeps,
                                suggest_weights=suggest, reference=reference)
    for path, kind in zip(outputs, kinds):
        click.echo(f"wrote {weighting_report.write(what_if, path, kind, options)}", err=True)
    if as_json:
        click.echo(what_if.to_json())
    else:
        width = max(80, min(160, _terminal_width()))
        click.echo(weighting_report.summary(what_if, width=width, color=sys.stdout.isatty()), nl=False)


# -- gradviz timeline ------------------------------------------------------------------


@main.command("timeline")
@click.argument("history", type=click.Path())
@click.option("-o", "--output", "outputs", multiple=True, type=click.Path(), metavar="FILE",
              help="Write the timeline: .png, .svg or .html (the plot and the events). Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Print the events as JSON on stdout.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@handle_errors
def timeline_command(history: str, outputs: tuple[str, ...], as_json: bool, debug: bool) -> None:
    """Per-loss trunk share and gradient norm over a training run, from a monitor history file.

    HISTORY is the JSON-lines file GradientFlowMonitor(path=...) writes; events
    (a head died, a loss started to dominate, NaN appeared) are marked where
    they began.

    \b
    Example:
      gradviz timeline flow.jsonl -o timeline.png
      gradviz timeline flow.jsonl -o timeline.html --json
    """
    import json

    from gradviz.output import timeline

    for path in outputs:
        timeline.output_format(path)  # fail before reading
    records = timeline.read_history(history)
    for path in outputs:
        click.echo(f"wrote {timeline.write(records, path)}", err=True)
    if as_json:
        click.echo(json.dumps(timeline.events(records), indent=2))
    elif not outputs:
        for event in timeline.events(records):
            click.echo(f"epoch {event['epoch']} (step {event['step']}): {event['message']}")
        click.echo(f"{len(records)} probe(s), {len(timeline.events(records))} event(s)", err=True)


def _note_html_without_dot(formats: list[str]) -> None:
    from gradviz.output.diagram import dot_available
    if "html" in formats and not dot_available():
        click.echo("note: Graphviz's dot is not installed: the HTML report is written without its diagram", err=True)


def _terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((120, 24)).columns


if __name__ == "__main__":  # pragma: no cover
    main()
