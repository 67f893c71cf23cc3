"""What every command shares: the typer app, the consoles, one-line errors, reading results and
drawing figures."""
import os
import sys
from pathlib import Path

import pandas as pd
import typer
from rich.console import Console

from profiler.results.store import ResultsFileError, read_many, read_results

app = typer.Typer(
    help="Profile the memory and time of sequential recommenders as the sequence grows. "
    "Run `seqprof COMMAND --help` for a command's options and defaults.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help, wrapped to the terminal (at most 80 columns): rich's boxed panels squeeze the
    # option texts into a third of the width and read "[all]" in a help text as markup.
    rich_markup_mode=None,
)
# Wide tables stay whole in logs and pipes, where rich would otherwise assume 80 columns; a terminal,
# or COLUMNS where it is set, gives its own width.
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() or "COLUMNS" in os.environ else 200)
out = Console(highlight=False, width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200)


def fail(message: str) -> None:
    """A user error found past option parsing: one line, exit code 2, as for a bad parameter."""
    console.print(f"seqprof: error: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(2)


def plots_dir_for(results: Path) -> Path:
    """Where the figures of a results file go unless --plots-dir says otherwise: a folder beside
    it, named after it (results/mine.csv -> results/mine-plots/), so that drawing never replaces
    the reference figures of the project's plots/ folder."""
    results = Path(results)
    return results.with_name(f"{results.stem}-plots")


def draw_figures(frame: pd.DataFrame, out_dir: Path, stem: str, baseline: str | None = None) -> None:
    from profiler.present.plots import plot_results  # matplotlib only for the commands that draw

    try:
        paths = plot_results(frame, out_dir, stem, baseline)
    except ValueError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write figures to {out_dir}: {exc.strerror or exc}")
    console.print(f"{len(paths)} figures in {out_dir}/: {', '.join(p.name for p in paths if p.suffix == '.png')} (+ SVG)",
                  soft_wrap=True)


def read_or_fail(path: Path) -> pd.DataFrame:
    try:
        return read_results(path)
    except ResultsFileError as exc:
        fail(str(exc))


def read_many_or_fail(paths: list[Path], later_replaces: bool = False) -> pd.DataFrame:
    try:
        return read_many(paths, later_replaces)
    except ResultsFileError as exc:
        fail(str(exc))
