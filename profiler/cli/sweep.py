"""seqprof sweep: measure a grid of points, with progress, into a results file."""
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from models.registry import REGISTRY
from profiler.cli import options
from profiler.cli.budget import MaxReps, MaxWarmup, MinReps, TargetCi, TimeBudget, Warmup, measurement_budget
from profiler.cli.common import console, draw_figures, fail, out, plots_dir_for
from profiler.present.display import SweepProgress, outcome_counts, phase_breakdown, precision_summary, summary_table
from profiler.results.store import ResultsFileError, ResultsStore
from profiler.run.plugins import check_unchanged
from profiler.run.runner import DEFAULT_SPARE_WORKERS, SweepEvents
from profiler.run.sweep import (
    SweepRequest,
    default_results_path,
    defaults_for,
    open_store,
    resolve_sweep_device,
    run_sweep,
)

CPU_NOTICE = ("[bold yellow]Running on the CPU[/] (no CUDA GPU in use): times are CPU times, GPU memory columns "
              "stay empty; the tensor footprint (device-independent) shows how memory scales.")


def sweep(
    lengths: Annotated[Optional[str], typer.Option(
        callback=options.parse_lengths, metavar="L,L,...", show_default=options.per_device("lengths", options.length_list),
        help="Sequence lengths, comma-separated, e.g. 50,200,500.")] = None,
    models: Annotated[Optional[str], typer.Option(
        callback=options.parse_models, metavar="NAME,...", show_default="all",
        help=f"Models, comma-separated: {options.MODEL_NAMES}.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        parser=options.integer(1, options.MAX_BATCH_SIZE), metavar="N", show_default=options.per_device("batch_size"), help="Batch size.")] = None,
    mode: Annotated[Optional[str], typer.Option(
        "--mode", callback=options.parse_mode, metavar="MODE", show_default=options.per_device("modes", options.modes_text),
        help="train (zero_grad, forward, backward, optimizer step), infer (predict) or both.")] = None,
    device: Annotated[str, typer.Option(
        "--device", callback=options.parse_device, metavar="DEVICE",
        help="auto, cuda or cpu; auto takes the GPU when there is one.")] = "auto",
    attention: Annotated[Optional[str], typer.Option(
        callback=options.parse_attention, metavar="BACKEND,...", show_default=options.per_device("attentions", ",".join),
        help="Attention backends of the attention models: naive (materialised, as the authors' code) and/or "
        "sdpa (fused scaled_dot_product_attention).")] = None,
    profile: Annotated[Optional[str], typer.Option(
        callback=options.parse_profile, metavar="NAME", show_default=options.per_device("profile", options.profile_text),
        help=f"Dataset profile (item count, feature width) for every model: {options.PROFILE_NAMES}.")] = None,
    out_path: Annotated[Optional[Path], typer.Option(
        "--out", metavar="CSV", show_default="results/sweep-<time>.csv", help="Results file.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue --out, measuring only the missing points.")] = False,
    dtype: Annotated[Optional[str], typer.Option(
        callback=options.parse_dtypes, metavar="DTYPE,...", show_default="float32",
        help="Arithmetic, comma-separated: float32 (full fp32, TF32 off), tf32 (TF32 tensor cores for "
        "convolutions and matrix products), bf16 (bfloat16 weights and activations), amp-bf16 (fp32 weights "
        "under bfloat16 autocast).")] = None,
    execution: Annotated[Optional[str], typer.Option(
        callback=options.parse_executions, metavar="EXECUTION,...", show_default="eager",
        help="How the step runs, comma-separated: eager, compile (torch.compile; compile time recorded "
        "apart, never in a step), cuda-graphs (the step captured once and replayed).")] = None,
    target_ci: TargetCi = None,
    time_budget_s: TimeBudget = None,
    min_reps: MinReps = None,
    max_reps: MaxReps = None,
    warmup: Warmup = None,
    max_warmup: MaxWarmup = None,
    threads: Annotated[Optional[int], typer.Option(
        parser=options.integer(1, options.MAX_THREADS), metavar="N", show_default=options.per_device("threads"), help="torch threads of a worker.")] = None,
    point_timeout_s: Annotated[float, typer.Option(
        parser=options.number(1.0), metavar="SECONDS",
        help="A point (or a worker's start) running longer is recorded as an error.")] = 900.0,
    seed: Annotated[int, typer.Option(parser=options.integer(0, options.MAX_SEED), metavar="N", help="Seed of initialisation and synthetic batches.")] = 0,
    fresh_worker_per_point: Annotated[bool, typer.Option(
        help="A new worker process for every point, instead of one per model variant.")] = False,
    spare_workers: Annotated[int, typer.Option(
        parser=options.integer(0, options.MAX_SPARE_WORKERS), metavar="N",
        help="On CUDA, workers started ahead of need, each priming itself for one of the next model variants "
        "while the current one measures, each holding a CUDA context (about 0.8 GiB); 0 starts each "
        "when it is needed.")] = DEFAULT_SPARE_WORKERS,
    lanes_per_gpu: Annotated[int, typer.Option(
        parser=options.integer(1, options.MAX_LANES_PER_GPU), metavar="N",
        help="On CUDA, lanes sharing each GPU: they measure one at a time, in the GPU's turns, and overlap "
        "starting workers, building and compiling (a compiled sweep's compilation spreads over them); "
        "they also share its memory.")] = 1,
    pin_cpu: Annotated[bool, typer.Option(
        help="On CUDA, pin the worker to one CPU core: steadier times for launch-bound steps.")] = True,
    plot: Annotated[bool, typer.Option(help="At the end, draw memory and time vs length.")] = True,
    plots_dir: Annotated[Optional[Path], typer.Option(
        metavar="DIR", show_default="<results file without .csv>-plots/, beside it",
        help="Folder for the figures (PNG and SVG).")] = None,
    gpus: Annotated[Optional[str], typer.Option(
        callback=options.parse_gpus, metavar="INDEX,...", show_default="every visible GPU",
        help="GPUs of this host to spread the points over, one worker each, e.g. 0,1; a model variant "
        "stays on one GPU. An error on the CPU.")] = None,
    backend: Annotated[str, typer.Option(
        "--backend", callback=options.parse_backend, metavar="BACKEND",
        help="local (this host) or ray (a task per model variant on the Ray cluster in RAY_ADDRESS, "
        "else a local one; needs the ray extra).")] = "local",
    memory_snapshot: Annotated[Optional[Path], typer.Option(
        metavar="DIR", show_default="none",
        help="On CUDA, one more step of every point after its timed steps, its allocator history "
        "written to DIR as a pickle that https://pytorch.org/memory_viz opens; created if missing.")] = None,
) -> None:
    """Measure memory and time per step over a grid of models and lengths."""
    if resume and out_path is None:  # before the device: resolving a Ray cluster's takes seconds
        fail("--resume needs --out, the results file to continue")
    try:
        resolved_device = resolve_sweep_device(device, backend)
    except ValueError as exc:
        fail(str(exc))
    defaults = defaults_for(resolved_device)
    budget = measurement_budget(defaults.budget, target_ci=target_ci, time_budget_s=time_budget_s, min_reps=min_reps,
                                max_reps=max_reps, warmup=warmup, max_warmup=max_warmup)
    # Locked before it is read: the options recorded in its sidecar and its rows are those no
    # other sweep is changing.
    resumed = open_or_fail(out_path) if resume else None
    try:
        recorded = recorded_options(resumed) if resumed is not None else {}
        # What the file's run used, where the user gives nothing else: a resume continues that sweep.
        models = models or recorded.get("models")
        lengths = lengths or recorded.get("lengths")
        mode = mode or recorded.get("mode")
        attention = attention or recorded.get("attention")
        dtype = dtype or recorded.get("dtypes")
        execution = execution or recorded.get("executions")
        for option, given, kept in (("--batch-size", batch_size, recorded.get("batch_size")),
                                    ("--profile", profile, recorded.get("profile")),
                                    ("--seed", seed if seed != 0 else None, recorded.get("seed"))):
            if given is not None and kept is not None and given != kept:
                fail(f"{option} {given} conflicts with {out_path}, measured with {option} {kept}; "
                     "drop it to continue that sweep, or give another --out")
        batch_size = batch_size or recorded.get("batch_size")
        if resume:
            # A resumed sweep keeps its profile: one name, or each model's own (recorded as a mapping).
            profile = profile or (recorded.get("profile") if isinstance(recorded.get("profile"), str) else None)
        else:
            profile = profile or defaults.profile
        seed = recorded.get("seed", seed) if seed == 0 else seed
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
            spare_workers=spare_workers,
            lanes_per_gpu=lanes_per_gpu,
            dtypes=dtype or ["float32"],
            executions=execution or ["eager"],
            threads=threads or defaults.threads,
            argv=sys.argv[1:],
            gpus=gpus,
            backend=backend,
            memory_snapshot_dir=memory_snapshot,
        )
        store, rows, interrupted, elapsed = measure_with_progress(
            request,
            cpu_notice=CPU_NOTICE,
            store=resumed,
        )
    finally:
        if resumed is not None:
            resumed.close()
    frame = store.frame
    if len(frame):
        out.print(summary_table(frame, f"seqprof sweep on {frame['device_name'].iloc[-1]}, batch {request.batch_size}"))
    console.print(f"{len(rows)} points measured in {elapsed:.1f} s{outcome_counts(rows)}; results: {request.out}",
                  soft_wrap=True)
    for line in (phase_breakdown(rows), precision_summary(rows, request.budget.target_ci)):
        if line is not None:
            console.print(line, markup=False, soft_wrap=True)
    if plot and (frame["status"] == "ok").any():
        draw_figures(frame, plots_dir or plots_dir_for(request.out), request.out.stem)
    if interrupted:
        stop_after_interrupt(request, interrupted)


def open_or_fail(path: Path) -> ResultsStore:
    """The results file at ``path``, locked and read, to resume; a file that cannot be is one line."""
    try:
        return ResultsStore.resume(path)
    except ResultsFileError as exc:
        fail(str(exc))


def recorded_options(store: ResultsStore) -> dict:
    """The options of the latest run recorded beside the store's file, in the CLI's terms."""
    run = store.recorded_run()
    if not run:
        return {}
    modes = run.get("modes") or []
    return {
        "models": run.get("models"), "lengths": run.get("lengths"), "attention": run.get("attention"),
        "dtypes": run.get("dtypes"), "executions": run.get("executions"), "batch_size": run.get("batch_size"), "profile": run.get("profile"),
        "seed": run.get("seed"), "mode": "both" if set(modes) == {"train", "infer"} else (modes[0] if modes else None),
    }


def measure_with_progress(
    request: SweepRequest, cpu_notice: str, store: ResultsStore | None = None
) -> tuple[ResultsStore, list[dict], int | None, float]:
    """Validates the request, opens and locks its results (unless ``store`` is already open), and
    runs it with the progress display; the store is closed on return.

    Returns the store, the rows written, the signal that stopped it early (or None), and the
    elapsed seconds.
    """
    try:
        request.validate()
        if store is not None:
            check_unchanged(store.frame, request.models)  # a plug-in file edited since its rows
        store = store if store is not None else open_store(request)
        with store:
            if request.device == "cpu":
                console.print(cpu_notice)
            started = time.perf_counter()
            width = max((len(point.label) for point in request.plan()), default=0)
            with SweepProgress(console, width) as progress:
                events = SweepEvents(progress.on_start, progress.on_result, progress.on_deferred)
                rows, interrupted = run_sweep(request, store, events)
            elapsed = time.perf_counter() - started
    except (ResultsFileError, ValueError) as exc:
        fail(str(exc))
    return store, rows, interrupted, elapsed


def stop_after_interrupt(request: SweepRequest, signum: int) -> None:
    """What a stopped sweep prints last: how it was stopped and the command that continues it."""
    cause = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    console.print(f"[bold]Stopped by {cause}.[/] Every finished point is kept. Resume with:")
    console.print(resume_command(request.argv, request.out), markup=False, emoji=False, highlight=False, soft_wrap=True)
    raise typer.Exit(128 + signum)


def resume_command(argv: list[str], results: Path) -> str:
    """The user's sweep command with --out pointing at ``results`` and --resume added, quoted for
    a POSIX shell so that it can be pasted as it is."""
    kept, skip_next = [], False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg == "--out":
            skip_next = True
        elif not (arg.startswith("--out=") or arg == "--resume"):
            kept.append(arg)
    return shlex.join(["seqprof", *kept, "--out", str(results), "--resume"])
