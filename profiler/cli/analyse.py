"""seqprof report and seqprof plot: the scaling analysis and the figures of a results file."""
from pathlib import Path
from typing import Annotated, Optional

import typer

from profiler.cli import options
from profiler.cli.common import PLOTS_DIR, console, draw_figures, fail, out, read_or_fail


def report(
    results: Annotated[Path, typer.Argument(help="Results CSV of a sweep.")],
    markdown: Annotated[Optional[Path], typer.Option(help="Also write the report as Markdown to this file.")] = None,
    mode: Annotated[Optional[str], typer.Option(callback=options.parse_mode, help="train, infer or both (default: every mode in the file).")] = None,
) -> None:
    """Fit how memory and time grow with L: verdicts, log-log slopes, crossovers, TFLOP/s."""
    from profiler.present.report import make_report, markdown_report, to_rich

    frame = read_or_fail(results)
    header, tables = make_report(frame, str(results), options.modes_for(mode) if mode else None)
    for line in header:
        out.print(line, markup=False, soft_wrap=True)
    for table in tables:
        out.print(to_rich(table))
    if markdown is not None:
        try:
            markdown.write_text(markdown_report(tables, header))
        except OSError as exc:
            fail(f"cannot write {markdown}: {exc.strerror or exc}")
        console.print(f"Markdown report: {markdown}", soft_wrap=True)


def plot_command(
    results: Annotated[Path, typer.Argument(help="Results CSV of a sweep.")],
    out_dir: Annotated[Path, typer.Option(help="Folder for the PNG and SVG figures.")] = PLOTS_DIR,
    baseline: Annotated[Optional[str], typer.Option(help="Model or variant (e.g. sasrec, convrec-hier) the ratio figure divides by (default: no ratio figure).")] = None,
) -> None:
    """Draw memory and time vs length (linear and log-log), and ratios to a baseline model."""
    frame = read_or_fail(results)
    if not (frame["status"] == "ok").any():
        fail(f"results file {results} has no measured (ok) points to draw")
    draw_figures(frame, out_dir, results.stem, baseline)
