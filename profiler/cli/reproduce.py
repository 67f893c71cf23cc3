"""seqprof reproduce: a paper's efficiency experiment, measured and set beside its numbers."""
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from profiler.cli import options
from profiler.cli.common import PLOTS_DIR, console, fail, out, read_or_fail
from profiler.cli.sweep import measure_with_progress, stop_after_interrupt
from profiler.run.sweep import defaults_for
from profiler.trackers.environment import resolve_device


def _parse_setup(value: str) -> str:
    from profiler.reproduce.setups import SETUPS

    if value not in SETUPS:
        raise typer.BadParameter(f"unknown setup {value!r}; choose from {', '.join(SETUPS)}")
    return value


def reproduce_command(
    setup_name: Annotated[str, typer.Argument(metavar="SETUP", callback=_parse_setup, help="convrec (hierarchical ConvRec paper, Fig. 4) or lightconv (lightweight ConvRec paper, Table 5).")],
    device: Annotated[str, typer.Option(callback=options.parse_device, help="auto or cuda measure the paper's setup on a GPU; cpu runs a small version.")] = "auto",
    out_path: Annotated[Optional[Path], typer.Option("--out", help="Results CSV (default: results/reproduce-<setup>-<device>-<time>.csv).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue --out, measuring only the missing points.")] = False,
    from_results: Annotated[Optional[Path], typer.Option(help="Compare and draw from this results file; measure nothing.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(parser=options.integer(1, options.MAX_BATCH_SIZE), help="Batch size (default: the paper's, 128; CPU: 8).")] = None,
    lengths: Annotated[Optional[str], typer.Option(callback=options.parse_lengths, help="Lengths, e.g. 50,200 (default: the paper's; CPU: those up to 200).")] = None,
    profile: Annotated[Optional[str], typer.Option(callback=options.parse_profile, help="Dataset profile (default: the paper's); tiny makes a CPU run quick.")] = None,
    out_dir: Annotated[Path, typer.Option(help="Folder for the figure.")] = PLOTS_DIR,
) -> None:
    """Run a paper's efficiency experiment and set the measurements beside its published numbers."""
    from profiler.present.plots import save_figure
    from profiler.present.report import to_rich
    from profiler.reproduce import compare, figure, setups

    setup = setups.get_setup(setup_name)
    if from_results is not None:
        measuring = [flag for flag, value in (("--out", out_path), ("--resume", resume or None), ("--batch-size", batch_size),
                                              ("--lengths", lengths), ("--profile", profile)) if value is not None]
        if measuring:
            fail(f"--from-results compares an existing file and measures nothing; drop {', '.join(measuring)}")
        frame, source = read_or_fail(from_results), from_results
        interrupted = None
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
        request = setups.sweep_request(
            setup, resolved, out_path or setups.default_results_path(setup, resolved), defaults_for(resolved).budget,
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
        selection = compare.select_rows(setup, frame)
    except setups.ReproduceError as exc:
        fail(f"{source}: {exc}")
    out.print(f"{setup.paper}, {setup.source}", markup=False, soft_wrap=True)
    for table in compare.comparison_tables(setup, selection):
        out.print(to_rich(table))
    name = Path(source).stem if Path(source).stem.startswith(f"reproduce-{setup.name}") else f"reproduce-{setup.name}-{Path(source).stem}"
    try:
        paths = save_figure(figure.reproduce_figure(setup, selection), out_dir, name)
    except OSError as exc:
        fail(f"cannot write figures to {out_dir}: {exc.strerror or exc}")
    console.print(f"figure: {', '.join(str(p) for p in paths)}", soft_wrap=True)
    if interrupted:
        stop_after_interrupt(request, interrupted)
