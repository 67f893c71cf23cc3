"""seqprof report and seqprof plot: the scaling analysis and the figures of a results file."""
from pathlib import Path
from typing import Annotated, Optional

import typer

from profiler.cli import options
from profiler.cli.common import console, draw_figures, fail, out, plots_dir_for, read_or_fail


def report(
    results: Annotated[Path, typer.Argument(metavar="RESULTS", show_default=False, help="Results CSV of a sweep.")],
    markdown: Annotated[Optional[Path], typer.Option(
        metavar="FILE", help="Also write the report as Markdown to this file.")] = None,
    mode: Annotated[Optional[str], typer.Option(
        callback=options.parse_mode, metavar="MODE", show_default="every mode in the file",
        help="train, infer or both.")] = None,
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
    results: Annotated[Path, typer.Argument(metavar="RESULTS", show_default=False, help="Results CSV of a sweep.")],
    plots_dir: Annotated[Optional[Path], typer.Option(
        metavar="DIR", show_default="<results file without .csv>-plots/, beside it",
        help="Folder for the PNG and SVG figures.")] = None,
    baseline: Annotated[Optional[str], typer.Option(
        metavar="MODEL", show_default="no ratio figure",
        help="Model or variant (e.g. sasrec, convrec-hier) the ratio figure divides by.")] = None,
) -> None:
    """Draw memory and time vs length (log-log, linear beneath), where the memory goes, and ratios to a
    baseline model."""
    frame = read_or_fail(results)
    if not (frame["status"] == "ok").any():
        fail(f"results file {results} has no measured (ok) points to draw")
    draw_figures(frame, plots_dir or plots_dir_for(results), results.stem, baseline)
