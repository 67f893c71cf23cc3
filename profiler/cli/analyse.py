"""seqprof report, plot and compare: the scaling analysis and the figures of results files, and two
runs set against each other."""
from pathlib import Path
from typing import Annotated, Optional

import typer

from profiler.cli import options
from profiler.cli.common import console, draw_figures, fail, out, plots_dir_for, read_many_or_fail, read_or_fail

RESULTS_HELP = "Results CSVs of one or more sweeps (their rows together)."
LaterReplaces = Annotated[bool, typer.Option(
    "--later-replaces", help="A point in several files takes the row of the last file named (points measured "
    "again); without it, two different rows of one point are an error.")]


def _source(paths: list[Path], later_replaces: bool = False) -> str:
    return ", ".join(str(p) for p in paths) + (" (a point in several: the last file's row)" if later_replaces else "")


def report(
    results: Annotated[list[Path], typer.Argument(metavar="RESULTS...", show_default=False, help=RESULTS_HELP)],
    markdown: Annotated[Optional[Path], typer.Option(
        metavar="FILE", help="Also write the report as Markdown to this file.")] = None,
    mode: Annotated[Optional[str], typer.Option(
        "--mode", callback=options.parse_mode, metavar="MODE", show_default="every mode in the files",
        help="train, infer or both.")] = None,
    later_replaces: LaterReplaces = False,
) -> None:
    """Fit how memory and time grow with L: verdicts, log-log slopes, crossovers, TFLOP/s."""
    from profiler.present.report import make_report, markdown_report, to_rich

    frame = read_many_or_fail(results, later_replaces)
    header, tables = make_report(frame, _source(results, later_replaces), options.modes_for(mode) if mode else None)
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
    results: Annotated[list[Path], typer.Argument(metavar="RESULTS...", show_default=False, help=RESULTS_HELP)],
    plots_dir: Annotated[Optional[Path], typer.Option(
        metavar="DIR", show_default="<first results file without .csv>-plots/, beside it",
        help="Folder for the PNG and SVG figures.")] = None,
    baseline: Annotated[Optional[str], typer.Option(
        metavar="MODEL", show_default="no ratio figure",
        help="Model or variant (e.g. sasrec, convrec-hier) the ratio figure divides by.")] = None,
    later_replaces: LaterReplaces = False,
) -> None:
    """Draw memory and time vs length (log-log, linear beneath), where the memory goes, and ratios to a
    baseline model."""
    frame = read_many_or_fail(results, later_replaces)
    if not (frame["status"] == "ok").any():
        fail(f"results {_source(results)} have no measured (ok) points to draw")
    draw_figures(frame, plots_dir or plots_dir_for(results[0]), "+".join(dict.fromkeys(p.stem for p in results)),
                 baseline)


def compare(
    baseline: Annotated[Path, typer.Argument(metavar="BASELINE", show_default=False,
                                             help="Results CSV of the baseline run.")],
    candidate: Annotated[Path, typer.Argument(metavar="CANDIDATE", show_default=False,
                                              help="Results CSV of the candidate run.")],
    threshold: Annotated[float, typer.Option(
        min=0.0, metavar="PCT", help="Mark changes beyond this percentage (time: when also significant).")] = 5.0,
    fail_above: Annotated[Optional[float], typer.Option(
        min=0.0, metavar="PCT", show_default="never fail",
        help="Exit with code 1 when a point got worse by more than this percentage: time significantly "
        "slower, or more memory.")] = None,
    markdown: Annotated[Optional[Path], typer.Option(
        metavar="FILE", help="Also write the comparison as Markdown to this file.")] = None,
) -> None:
    """Per common point: candidate / baseline time (with a 95% interval from the raw samples) and memory."""
    from profiler.analysis.compare import compare_runs
    from profiler.present.comparison import comparison_table, summary_lines
    from profiler.present.report import markdown_report, to_rich

    comparison = compare_runs(read_or_fail(baseline), read_or_fail(candidate), threshold=threshold / 100)
    if not comparison.points:
        fail(f"{baseline} and {candidate} share no point measured ok in both")
    table = comparison_table(comparison, str(baseline), str(candidate))
    lines = summary_lines(comparison)
    out.print(to_rich(table))
    for line in lines:
        out.print(line, markup=False, soft_wrap=True)
    if markdown is not None:
        try:
            markdown.write_text(markdown_report([table], lines, title="seqprof comparison"))
        except OSError as exc:
            fail(f"cannot write {markdown}: {exc.strerror or exc}")
        console.print(f"Markdown comparison: {markdown}", soft_wrap=True)
    if fail_above is not None:
        worse = comparison.worse(fail_above / 100)
        if worse:
            shown = ", ".join(p.spec.label for p in worse[:5]) + (f" and {len(worse) - 5} more" if len(worse) > 5 else "")
            console.print(f"seqprof: {len(worse)} of {len(comparison.points)} points worse by more than "
                          f"{fail_above:g}%: {shown}", markup=False, soft_wrap=True)
            raise typer.Exit(1)
