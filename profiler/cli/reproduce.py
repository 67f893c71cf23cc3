"""seqprof reproduce: a paper's efficiency experiment, measured and set beside its numbers."""
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from profiler.cli import options
from profiler.cli.budget import MaxReps, MaxWarmup, MinReps, TargetCi, TimeBudget, Warmup, measurement_budget
from profiler.cli.common import console, fail, out, plots_dir_for, read_or_fail
from profiler.cli.sweep import measure_with_progress, stop_after_interrupt
from profiler.reproduce import setups
from profiler.run.sweep import defaults_for
from profiler.trackers.environment import resolve_device


def _parse_setup(value: str) -> str:
    if value not in setups.SETUPS:
        raise typer.BadParameter(f"unknown setup {value!r}; choose from {', '.join(setups.SETUPS)}")
    return value


def reproduce_command(
    setup_name: Annotated[str, typer.Argument(
        metavar="SETUP", callback=_parse_setup, show_default=False,
        help="convrec (hierarchical ConvRec paper, Fig. 4), lightconv (lightweight ConvRec paper, Table 5), "
        "hstu (HSTU paper, section 4.2: SASRec / HSTU training time, L 512..8192) or lrurec (LRURec paper, "
        "section 5.5: SASRec / LRURec inference time, L 50..800).")],
    device: Annotated[str, typer.Option(
        "--device", callback=options.parse_device, metavar="DEVICE",
        help="auto, cuda or cpu: the paper's setup on a GPU; on the CPU (auto without a GPU) a small "
        "version, labelled, whose shapes and ratios compare and absolute numbers do not.")] = "auto",
    out_path: Annotated[Optional[Path], typer.Option(
        "--out", metavar="CSV", show_default="results/reproduce-<setup>-<device>-<time>.csv",
        help="Results file.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue --out, measuring only the missing points.")] = False,
    from_results: Annotated[Optional[Path], typer.Option(
        metavar="CSV", help="Compare and draw from this results file; measure nothing.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        parser=options.integer(1, options.MAX_BATCH_SIZE), metavar="N", show_default=f"the setup's (128; hstu 8); CPU {setups.CPU_BATCH_SIZE}",
        help="Batch size.")] = None,
    lengths: Annotated[Optional[str], typer.Option(
        callback=options.parse_lengths, metavar="L,L,...", show_default="the paper's; CPU: those that fit, "
        + "; ".join(f"{name} {','.join(map(str, setups.cpu_lengths(one)))}" for name, one in setups.SETUPS.items()),
        help="Lengths, comma-separated.")] = None,
    profile: Annotated[Optional[str], typer.Option(
        callback=options.parse_profile, metavar="NAME", show_default="the paper's",
        help=f"Dataset profile: {options.PROFILE_NAMES}; tiny makes a CPU run quicker.")] = None,
    plots_dir: Annotated[Optional[Path], typer.Option(
        metavar="DIR", show_default="<results file without .csv>-plots/, beside it",
        help="Folder for the figure (PNG and SVG).")] = None,
    target_ci: TargetCi = None,
    time_budget_s: TimeBudget = None,
    min_reps: MinReps = None,
    max_reps: MaxReps = None,
    warmup: Warmup = None,
    max_warmup: MaxWarmup = None,
) -> None:
    """Run a paper's efficiency experiment and set the measurements beside its published numbers."""
    from profiler.present.plots import save_figure
    from profiler.present.report import to_rich
    from profiler.reproduce import compare, figure

    setup = setups.get_setup(setup_name)
    if from_results is not None:
        measuring = [flag for flag, value in (("--out", out_path), ("--resume", resume or None), ("--batch-size", batch_size),
                                              ("--lengths", lengths), ("--profile", profile), ("--target-ci", target_ci),
                                              ("--time-budget-s", time_budget_s), ("--min-reps", min_reps),
                                              ("--max-reps", max_reps), ("--warmup", warmup),
                                              ("--max-warmup", max_warmup)) if value is not None]
        if measuring:
            fail(f"--from-results compares an existing file and measures nothing; drop {', '.join(measuring)}")
        frame, source = read_or_fail(from_results), from_results
        interrupted = None
    else:
        try:
            resolved = resolve_device(device)
        except ValueError as exc:
            fail(str(exc))
        if resume and out_path is None:
            fail("--resume needs --out, the results file to continue")
        budget = measurement_budget(defaults_for(resolved).budget, target_ci=target_ci, time_budget_s=time_budget_s,
                                    min_reps=min_reps, max_reps=max_reps, warmup=warmup, max_warmup=max_warmup)
        request = setups.sweep_request(
            setup, resolved, out_path or setups.default_results_path(setup, resolved), budget,
            batch_size=batch_size, lengths=lengths, profile=profile, resume=resume, argv=sys.argv[1:],
        )
        store, _, interrupted, _ = measure_with_progress(
            request,
            cpu_notice=f"[bold yellow]Running on the CPU[/]{' (no CUDA GPU in use)' if device == 'auto' else ''}: a "
            f"small version of the paper's setup (batch {request.batch_size}, L {','.join(map(str, request.lengths))}); "
            "absolute numbers are NOT comparable with the paper's GPU numbers, only shapes and ratios.",
        )
        frame, source = store.frame, request.out
        console.print(f"results: {request.out}", soft_wrap=True)
    try:
        selection = compare.select_rows(setup, frame)
    except setups.ReproduceError as exc:
        fail(f"{source}: {exc}")
    out.print(f"{setup.paper}, {setup.source}", markup=False, soft_wrap=True)
    for table in compare.comparison_tables(setup, selection):
        out.print(to_rich(table))
    name = Path(source).stem if Path(source).stem.startswith(f"reproduce-{setup.name}") else f"reproduce-{setup.name}-{Path(source).stem}"
    out_dir = plots_dir or plots_dir_for(Path(source))
    try:
        paths = save_figure(figure.reproduce_figure(setup, selection), out_dir, name)
    except OSError as exc:
        fail(f"cannot write figures to {out_dir}: {exc.strerror or exc}")
    console.print(f"figure: {', '.join(str(p) for p in paths)}", soft_wrap=True)
    if interrupted:
        stop_after_interrupt(request, interrupted)
