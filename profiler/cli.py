"""The seqprof command line: a thin typed layer over profiler.sweep and friends."""
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import pandas as pd
import typer
from rich.console import Console
from rich.table import Table

from models.profiles import PROFILES
from models.registry import REGISTRY
from profiler import options
from profiler.display import SweepProgress, summary_table
from profiler.environment import collect_environment, resolve_device
from profiler.points import MeasurementBudget
from profiler.runner import SweepEvents
from profiler.store import ResultsFileError, ResultsStore
from profiler.sweep import SweepRequest, default_results_path, defaults_for, open_store, run_sweep

app = typer.Typer(
    help="Profile convolutional vs attention sequential recommenders as the sequence grows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Wide tables stay whole in logs and pipes, where rich would otherwise assume 80 columns.
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def fail(message: str) -> None:
    """A user error found past option parsing: one line, exit code 2, as for a bad parameter."""
    console.print(f"seqprof: error: {message}", markup=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command()
def sweep(
    lengths: Annotated[Optional[str], typer.Option(callback=options.parse_lengths, help="Sequence lengths, e.g. 50,200,500 [GPU: 50..900 step 100; CPU: 25,50,100].")] = None,
    models: Annotated[Optional[str], typer.Option(callback=options.parse_models, help="Models, comma-separated [all].")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Batch size [GPU: 128; CPU: 8].")] = None,
    mode: Annotated[Optional[str], typer.Option(callback=options.parse_mode, help="train, infer or both [GPU: both; CPU: train].")] = None,
    device: Annotated[str, typer.Option(callback=options.parse_device, help="auto, cuda or cpu; auto picks CUDA when present.")] = "auto",
    attention: Annotated[Optional[str], typer.Option(callback=options.parse_attention, help="Attention backends of attention models: naive (materialised, as the authors), sdpa (fused), or naive,sdpa [GPU: naive,sdpa; CPU: naive].")] = None,
    profile: Annotated[Optional[str], typer.Option(callback=options.parse_profile, help="Dataset profile for every model [each model's own].")] = None,
    out_path: Annotated[Optional[Path], typer.Option("--out", help="Results CSV [results/sweep-<time>.csv].")] = None,
    resume: Annotated[bool, typer.Option(help="Continue --out, measuring only the missing points.")] = False,
    time_budget_s: Annotated[Optional[float], typer.Option(min=0.0, help="Measured time per point; repetitions fill it [GPU 2.0, CPU 0.3].")] = None,
    min_reps: Annotated[Optional[int], typer.Option(min=1, help="Fewest timed repetitions per point [GPU 5, CPU 3].")] = None,
    max_reps: Annotated[Optional[int], typer.Option(min=1, help="Most timed repetitions per point [GPU 100, CPU 20].")] = None,
    warmup: Annotated[Optional[int], typer.Option(min=1, help="Warm-up steps before timing, after the probe step [GPU 3, CPU 2].")] = None,
    point_timeout_s: Annotated[float, typer.Option(min=1.0, help="A point running longer is recorded as an error.")] = 900.0,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and synthetic batches.")] = 0,
    fresh_worker_per_point: Annotated[bool, typer.Option(help="A new worker process for every point (default: one per model variant).")] = False,
    pin_cpu: Annotated[bool, typer.Option(help="On CUDA, pin the worker to one CPU core: steadier times for launch-bound steps.")] = True,
    plot: Annotated[bool, typer.Option(help="At the end, draw memory and time vs length into plots/.")] = True,
) -> None:
    """Measure memory and time per step over a grid of models and lengths."""
    try:
        resolved_device = resolve_device(device)
    except ValueError as exc:
        fail(str(exc))
    defaults = defaults_for(resolved_device)
    budget = MeasurementBudget(
        warmup_steps=defaults.budget.warmup_steps if warmup is None else warmup,
        time_budget_s=defaults.budget.time_budget_s if time_budget_s is None else time_budget_s,
        min_reps=defaults.budget.min_reps if min_reps is None else min_reps,
        max_reps=defaults.budget.max_reps if max_reps is None else max_reps,
    )
    if budget.min_reps > budget.max_reps:
        fail(f"--min-reps {budget.min_reps} is larger than --max-reps {budget.max_reps}")
    if resume and out_path is None:
        fail("--resume needs --out, the results file to continue")
    request = SweepRequest(
        models=models or list(REGISTRY),
        lengths=lengths or list(defaults.lengths),
        modes=options.modes_for(mode) if mode else list(defaults.modes),
        attentions=attention or list(defaults.attentions),
        batch_size=batch_size or defaults.batch_size,
        profile=profile,
        device=resolved_device,
        seed=seed,
        budget=budget,
        out=out_path or default_results_path(),
        resume=resume,
        point_timeout_s=point_timeout_s,
        fresh_worker_per_point=fresh_worker_per_point,
        pin_cpu=pin_cpu,
        argv=sys.argv[1:],
    )
    store, rows, interrupted, elapsed = measure_with_progress(
        request,
        cpu_notice="[bold yellow]Running on the CPU[/] (no CUDA GPU in use): times are CPU times, GPU memory "
        "columns stay empty; the tensor footprint shows how memory scales.",
    )
    frame = store.frame
    if len(frame):
        out.print(summary_table(frame, f"seqprof sweep on {frame['device_name'].iloc[-1]}, batch {request.batch_size}"))
    console.print(f"{len(rows)} points measured in {elapsed:.1f} s; results: {request.out}", soft_wrap=True)
    if plot and (frame["status"] == "ok").any():
        draw_figures(frame, PLOTS_DIR, request.out.stem)
    if interrupted:
        stop_after_interrupt(request)


def measure_with_progress(request: SweepRequest, cpu_notice: str) -> tuple[ResultsStore, list[dict], bool, float]:
    """Validates the request, opens and locks its results, and runs it with the progress display.

    Returns the store, the rows written, whether Ctrl-C stopped it, and the elapsed seconds.
    """
    try:
        request.validate()
        store = open_store(request)
        with store:
            if request.device == "cpu":
                console.print(cpu_notice)
            started = time.perf_counter()
            with SweepProgress(console) as progress:
                rows, interrupted = run_sweep(request, store, SweepEvents(progress.on_start, progress.on_result))
            elapsed = time.perf_counter() - started
    except (ResultsFileError, ValueError) as exc:
        fail(str(exc))
    return store, rows, interrupted, elapsed


def stop_after_interrupt(request: SweepRequest) -> None:
    console.print("[bold]Stopped by Ctrl-C.[/] Every finished point is kept. Resume with:")
    console.print(resume_command(request.argv, request.out), markup=False, soft_wrap=True)
    raise typer.Exit(130)


def resume_command(argv: list[str], results: Path) -> str:
    """The user's sweep command with --out pointing at ``results`` and --resume added."""
    kept, skip_next = [], False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg == "--out":
            skip_next = True
        elif not (arg.startswith("--out=") or arg == "--resume"):
            kept.append(arg)
    return " ".join(["seqprof", *kept, "--out", str(results), "--resume"])


@app.command("models")
def list_models() -> None:
    """List the registered models: family, source, parameters at the default profile."""
    from profiler.catalog import registry_rows

    table = Table(title="seqprof models (parameters at each model's default profile and paper length)")
    for column in ("name", "family", "profile", "L", "parameters", "trainable", "paper", "authors' code"):
        table.add_column(column, justify="right" if column in ("L", "parameters", "trainable") else "left")
    for row in registry_rows():
        table.add_row(
            row["name"], row["family"], row["profile"], str(row["seq_len"]),
            f"{row['param_count']:,}", f"{row['trainable_param_count']:,}", row["paper"], row["code"],
        )
    out.print(table)


@app.command("env")
def show_environment(
    device: Annotated[str, typer.Option(callback=options.parse_device, help="auto, cuda or cpu.")] = "auto",
) -> None:
    """Show the GPU, driver, CUDA, torch, python, seqprof version and git commit."""
    try:
        resolved = resolve_device(device)
    except ValueError as exc:
        fail(str(exc))
    for key, value in collect_environment(resolved).items():
        out.print(f"{key:>16}: {value}")


PLOTS_DIR = Path("plots")


def draw_figures(frame: pd.DataFrame, out_dir: Path, stem: str, baseline: str | None = None) -> None:
    from profiler.plots import plot_results

    try:
        paths = plot_results(frame, out_dir, stem, baseline)
    except ValueError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write figures to {out_dir}: {exc.strerror or exc}")
    console.print(f"{len(paths)} figures in {out_dir}/: {', '.join(p.name for p in paths if p.suffix == '.png')} (+ SVG)",
                  soft_wrap=True)


def _read(path: Path) -> pd.DataFrame:
    from profiler.store import read_results

    try:
        return read_results(path)
    except ResultsFileError as exc:
        fail(str(exc))


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="Results CSV of a sweep.")],
    markdown: Annotated[Optional[Path], typer.Option(help="Also write the report as Markdown to this file.")] = None,
    mode: Annotated[Optional[str], typer.Option(callback=options.parse_mode, help="train, infer or both (default: every mode in the file).")] = None,
) -> None:
    """Fit how memory and time grow with L: verdicts, log-log slopes, crossovers, TFLOP/s."""
    from profiler.report import make_report, markdown_report, to_rich

    frame = _read(results)
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


@app.command("plot")
def plot_command(
    results: Annotated[Path, typer.Argument(help="Results CSV of a sweep.")],
    out_dir: Annotated[Path, typer.Option(help="Folder for the PNG and SVG figures.")] = PLOTS_DIR,
    baseline: Annotated[Optional[str], typer.Option(help="Model or variant (e.g. sasrec, convrec-hier) the ratio figure divides by (default: no ratio figure).")] = None,
) -> None:
    """Draw memory and time vs length (linear and log-log), and ratios to a baseline model."""
    frame = _read(results)
    if not (frame["status"] == "ok").any():
        fail(f"results file {results} has no measured (ok) points to draw")
    draw_figures(frame, out_dir, results.stem, baseline)


def _parse_setup(value: str) -> str:
    from profiler.reproduce import SETUPS

    if value not in SETUPS:
        raise typer.BadParameter(f"unknown setup {value!r}; choose from {', '.join(SETUPS)}")
    return value


@app.command("reproduce")
def reproduce_command(
    setup_name: Annotated[str, typer.Argument(metavar="SETUP", callback=_parse_setup, help="convrec (hierarchical ConvRec paper, Fig. 4) or lightconv (lightweight ConvRec paper, Table 5).")],
    device: Annotated[str, typer.Option(callback=options.parse_device, help="auto or cuda measure the paper's setup on a GPU; cpu runs a small version.")] = "auto",
    out_path: Annotated[Optional[Path], typer.Option("--out", help="Results CSV (default: results/reproduce-<setup>-<device>-<time>.csv).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue --out, measuring only the missing points.")] = False,
    from_results: Annotated[Optional[Path], typer.Option(help="Compare and draw from this results file; measure nothing.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Batch size (default: the paper's, 128; CPU: 8).")] = None,
    lengths: Annotated[Optional[str], typer.Option(callback=options.parse_lengths, help="Lengths, e.g. 50,200 (default: the paper's; CPU: those up to 200).")] = None,
    profile: Annotated[Optional[str], typer.Option(callback=options.parse_profile, help="Dataset profile (default: the paper's); tiny makes a CPU run quick.")] = None,
    out_dir: Annotated[Path, typer.Option(help="Folder for the figure.")] = PLOTS_DIR,
) -> None:
    """Run a paper's efficiency experiment and set the measurements beside its published numbers."""
    from profiler import reproduce as reproducing
    from profiler.plots import save_figure
    from profiler.report import to_rich

    setup = reproducing.get_setup(setup_name)
    if from_results is not None:
        measuring = [flag for flag, value in (("--out", out_path), ("--resume", resume or None), ("--batch-size", batch_size),
                                              ("--lengths", lengths), ("--profile", profile)) if value is not None]
        if measuring:
            fail(f"--from-results compares an existing file and measures nothing; drop {', '.join(measuring)}")
        frame, source = _read(from_results), from_results
        interrupted = False
    else:
        try:
            resolved = resolve_device(device)
        except ValueError as exc:
            fail(str(exc))
        if device == "auto" and resolved == "cpu":
            fail("no CUDA GPU: reproduce measures the paper's GPU setup; pass --device cpu for a small CPU version "
                 "(absolute numbers not comparable) or --from-results FILE to compare existing results")
        if resume and out_path is None:
            fail("--resume needs --out, the results file to continue")
        request = reproducing.sweep_request(
            setup, resolved, out_path or reproducing.default_results_path(setup, resolved), defaults_for(resolved).budget,
            batch_size=batch_size, lengths=lengths, profile=profile, resume=resume, argv=sys.argv[1:],
        )
        store, _, interrupted, _ = measure_with_progress(
            request,
            cpu_notice="[bold yellow]Running on the CPU[/]: a small version of the paper's setup; absolute "
            "numbers are NOT comparable with the paper's GPU numbers, only shapes and ratios.",
        )
        frame, source = store.frame, request.out
        console.print(f"results: {request.out}", soft_wrap=True)
    try:
        selection = reproducing.select_rows(setup, frame)
    except reproducing.ReproduceError as exc:
        fail(f"{source}: {exc}")
    out.print(f"{setup.paper}, {setup.source}", markup=False, soft_wrap=True)
    for table in reproducing.comparison_tables(setup, selection):
        out.print(to_rich(table))
    name = Path(source).stem if Path(source).stem.startswith(f"reproduce-{setup.name}") else f"reproduce-{setup.name}-{Path(source).stem}"
    try:
        paths = save_figure(reproducing.reproduce_figure(setup, selection), out_dir, name)
    except OSError as exc:
        fail(f"cannot write figures to {out_dir}: {exc.strerror or exc}")
    console.print(f"figure: {', '.join(str(p) for p in paths)}", soft_wrap=True)
    if interrupted:
        stop_after_interrupt(request)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user errors print as one line (`seqprof: error: ...`), exit code 2."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="seqprof", standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        print("seqprof: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # typer's usage errors (its own click, or the click it wraps) carry these two attributes.
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            print(f"seqprof: error: {exc.format_message()}", file=sys.stderr)
            return exc.exit_code
        raise
    # An Exit raised inside a command comes back as its exit code in non-standalone mode.
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
