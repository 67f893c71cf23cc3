"""seqprof from Python (a notebook): sweep registry models and classes of one's own into a
DataFrame, then report, plot and compare results.

    from profiler import api
    from my_gru import GRURec

    frame = api.sweep([GRURec, "sasrec"], lengths=[50, 100, 200], device="cpu")
    print(api.report(frame))
    api.plot(frame, out_dir="plots")

Each function takes what the command of the same name takes, as Python values; bad input raises
ValueError (or ResultsFileError for a results file) with the command line's one-line message.
"""
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from rich.console import Console

from models.base import ATTENTION_BACKENDS
from profiler.analysis.compare import DEFAULT_THRESHOLD, compare_runs
from profiler.present.display import SweepProgress
from profiler.present.report import make_report, markdown_report
from profiler.results.schema import MODES
from profiler.results.store import read_many, read_results
from profiler.run.plugins import model_name
from profiler.run.precision import DTYPES
from profiler.run.runner import DEFAULT_SPARE_WORKERS, SweepEvents
from profiler.run.sweep import SweepRequest, defaults_for, open_store, run_sweep
from profiler.trackers.environment import resolve_device
from profiler.trackers.timing import budget_with

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Results = pd.DataFrame | str | Path | Sequence[str | Path]


def _listed(value, what: str, choices=None) -> list | None:
    if value is None:
        return None
    items = [value] if isinstance(value, (str, type)) or not isinstance(value, Sequence) else list(value)
    if not items:
        raise ValueError(f"no {what} given")
    if choices is not None:
        for item in items:
            if item not in choices:
                raise ValueError(f"unknown {what} {item!r}; choose from {', '.join(choices)}")
    return items


def _lengths(lengths) -> list[int] | None:
    lengths = _listed(lengths, "lengths")
    if lengths is None:
        return None
    if any(isinstance(n, bool) or not isinstance(n, int) or n <= 0 for n in lengths) or len(set(lengths)) < len(lengths):
        raise ValueError(f"lengths must be distinct positive integers; got {lengths}")
    return lengths


def _imported_by_a_worker() -> bool:
    """Whether this call runs while a spawned process imports the main script (as ``__mp_main__``)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__") == "__mp_main__":
            return True
        frame = frame.f_back
    return False


def sweep(
    models: Any,
    lengths: Sequence[int] | None = None,
    *,
    mode: str | Sequence[str] | None = None,
    attention: str | Sequence[str] | None = None,
    dtype: str | Sequence[str] | None = None,
    batch_size: int | None = None,
    profile: str | None = None,
    device: str = "auto",
    seed: int = 0,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    target_ci: float | None = None,
    time_budget_s: float | None = None,
    min_reps: int | None = None,
    max_reps: int | None = None,
    warmup: int | None = None,
    max_warmup: int | None = None,
    threads: int | None = None,
    point_timeout_s: float = 900.0,
    fresh_worker_per_point: bool = False,
    pin_cpu: bool = True,
    spare_workers: int = DEFAULT_SPARE_WORKERS,
    lanes_per_gpu: int = 1,
) -> pd.DataFrame:
    """Measures every point of ``models`` x ``lengths`` x modes (x backends, x dtypes) and returns the
    rows, as ``seqprof sweep`` writes them.

    ``models``: one or a list of registry names, plug-in references ('./my_gru.py:GRURec',
    'mypkg.models:GRURec') and plug-in classes (defined in a file: workers import them). ``mode``:
    'train', 'infer', 'both' or a list. Unset options take the device's defaults, as on the command
    line. ``out``: also keep the results (CSV and sidecar) there; with ``resume``, continue that file.
    Ctrl-C stops after the point in flight and returns what was measured.
    """
    if _imported_by_a_worker():
        # A spawned worker imports the script that started the sweep before it serves points; an
        # unguarded call there would start a sweep of its own on the same results file.
        raise RuntimeError("api.sweep was called while a worker process imported the script that calls it; "
                           "put the call under `if __name__ == \"__main__\":`")
    names = [model_name(m) for m in _listed(models, "models")]
    if len(set(names)) < len(names):
        raise ValueError(f"models repeat: {names}")
    resolved = resolve_device(device)
    defaults = defaults_for(resolved)
    modes = _listed(mode, "mode", (*MODES, "both"))
    modes = list(MODES) if modes == ["both"] else modes
    budget = budget_with(defaults.budget, target_ci=target_ci, time_budget_s=time_budget_s, min_reps=min_reps,
                         max_reps=max_reps, warmup=warmup, max_warmup=max_warmup)
    if resume and out is None:
        raise ValueError("resume needs out, the results file to continue")
    if spare_workers < 0:
        raise ValueError(f"spare_workers must be 0 or more; got {spare_workers}")
    if lanes_per_gpu < 1:
        raise ValueError(f"lanes_per_gpu must be 1 or more; got {lanes_per_gpu}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive; got {batch_size}")
    with tempfile.TemporaryDirectory(prefix="seqprof-") as scratch:
        request = SweepRequest(
            models=names,
            lengths=_lengths(lengths) or list(defaults.lengths),
            modes=modes or list(defaults.modes),
            attentions=_listed(attention, "attention backend", ATTENTION_BACKENDS) or list(defaults.attentions),
            batch_size=batch_size or defaults.batch_size,
            profile=profile,
            device=resolved,
            seed=seed,
            budget=budget,
            out=Path(out) if out is not None else Path(scratch) / "sweep.csv",
            resume=resume,
            point_timeout_s=point_timeout_s,
            fresh_worker_per_point=fresh_worker_per_point,
            pin_cpu=pin_cpu,
            spare_workers=spare_workers,
            lanes_per_gpu=lanes_per_gpu,
            dtypes=_listed(dtype, "dtype", DTYPES) or ["float32"],
            threads=threads or defaults.threads,
            argv=["profiler.api.sweep"],
        )
        request.validate()
        store = open_store(request)
        with store:
            if progress:
                with SweepProgress(Console(stderr=True, highlight=False)) as display:
                    run_sweep(request, store, SweepEvents(display.on_start, display.on_result, display.on_deferred))
            else:
                run_sweep(request, store, SweepEvents())
        return read_results(request.out)


def results_frame(results: Results) -> pd.DataFrame:
    """A results table from a DataFrame, a results file, or several files (their rows together)."""
    if isinstance(results, pd.DataFrame):
        return results
    if isinstance(results, (str, Path)):
        return read_results(Path(results))
    return read_many([Path(p) for p in results])


def report(results: Results, mode: str | None = None, markdown: str | Path | None = None) -> str:
    """The scaling report of ``seqprof report`` as Markdown text (also written to ``markdown``)."""
    frame = results_frame(results)
    modes = _listed(mode, "mode", (*MODES, "both"))
    source = "DataFrame" if isinstance(results, pd.DataFrame) else (
        str(results) if isinstance(results, (str, Path)) else ", ".join(map(str, results)))
    header, tables = make_report(frame, source, list(MODES) if modes == ["both"] else modes)
    text = markdown_report(tables, header)
    if markdown is not None:
        Path(markdown).write_text(text)
    return text


def plot(results: Results, out_dir: str | Path | None = None, baseline: str | None = None,
         stem: str = "seqprof") -> dict[str, "Figure"]:
    """The figures of ``seqprof plot`` by name; also written as PNG and SVG into ``out_dir``."""
    # Imported here: the figures module selects matplotlib's file-only backend, which a notebook
    # that never plots through seqprof should keep out of.
    from profiler.present.plots import build_figures, save_figures

    figures = build_figures(results_frame(results), baseline, stem)
    if out_dir is not None:
        save_figures(figures, Path(out_dir))
    return figures


def compare(baseline: Results, candidate: Results, threshold: float = DEFAULT_THRESHOLD) -> pd.DataFrame:
    """``seqprof compare`` as a table: per common point, both values, the time ratio with its 95%
    interval, the memory ratio, and the changes beyond ``threshold`` (a fraction: 0.05 is 5%)."""
    return compare_runs(results_frame(baseline), results_frame(candidate), threshold=threshold).frame()
