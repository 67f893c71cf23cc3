"""seqprof max-length: the longest history (or largest batch) whose step fits in N GiB."""
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Callable, Optional

import pandas as pd
import typer
from rich.table import Table

from models.registry import REGISTRY
from profiler.analysis.limits import (
    CONTEXT_MIB,
    GIB_MIB,
    LimitError,
    check_limit,
    dominant_part,
    footprint_parts_of,
    limit_of,
    measured_limit,
    model_query,
    predicted_limit,
)
from profiler.cli import options
from profiler.cli.common import console, fail, out
from profiler.results.files import atomic_write_text
from profiler.results.schema import model_label
from profiler.run.plugins import resolve_spec
from profiler.trackers.environment import device_name, git_commit, gpu_memory_mib, resolve_device

VARY = {"length": "seq_len", "batch-size": "batch_size"}


def _write_table(out_path: Path, rows: list[dict]) -> None:
    try:
        atomic_write_text(out_path, pd.DataFrame(rows).to_csv(index=False))
    except OSError as exc:
        fail(f"cannot write {out_path}: {exc.strerror or exc}")


def search_all(models: list[str], limit_row: Callable[[str], dict], keep: Callable[[str, dict], None],
               at_once: int) -> list[str]:
    """Runs ``limit_row`` for each model, ``at_once`` at a time, and hands each row to ``keep`` as
    its search ends (one at a time). Returns the failures' messages, in the models' order; with one
    search at a time the first failure stops the rest, as there is nothing running beside it."""
    if at_once == 1:
        for model in models:
            try:
                keep(model, limit_row(model))
            except (LimitError, ValueError) as exc:
                return [str(exc)]
        return []
    failures: dict[str, str] = {}
    lock = threading.Lock()

    def search(model: str) -> None:
        try:
            row = limit_row(model)
        except (LimitError, ValueError) as exc:
            failures[model] = str(exc)
            return
        with lock:
            keep(model, row)

    # The searches wait on their workers' pipes: threads are enough to run them side by side.
    with ThreadPoolExecutor(max_workers=at_once) as pool:
        for future in [pool.submit(search, model) for model in models]:
            future.result()
    return [failures[m] for m in models if m in failures]


def _say_probe(model: str, vary: str, probe, seconds: float) -> None:
    """A line per probe on stderr: a search near a long-sequence model's limit takes minutes."""
    peak = probe.record.get("nvml_peak_mib")
    outcome = f"fits ({peak:,.0f} MiB)" if probe.fits and peak is not None else ("fits" if probe.fits else "OOM")
    console.print(f"  {model} {vary} {probe.value:,}: {outcome}, {seconds:.1f} s", markup=False, soft_wrap=True)


def max_length(
    memory_gib: Annotated[float, typer.Option(min=0.0, help="The card's memory in GiB, CUDA context included (e.g. 24).")],
    models: Annotated[Optional[str], typer.Option(callback=options.parse_models, help="Models, comma-separated [all].")] = None,
    mode: Annotated[str, typer.Option(callback=options.parse_mode, help="train or infer [train].")] = "train",
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size while the length varies [128].")] = 128,
    length: Annotated[int, typer.Option(min=1, help="Length while the batch size varies (--vary batch-size) [200].")] = 200,
    vary: Annotated[str, typer.Option(help="What to search: length or batch-size [length].")] = "length",
    attention: Annotated[Optional[str], typer.Option(callback=options.parse_attention, help="Backend of attention models [sdpa].")] = None,
    dtype: Annotated[Optional[str], typer.Option(callback=options.parse_dtypes, help="Arithmetic, one of float32, tf32, bf16, amp-bf16 [float32].")] = None,
    profile: Annotated[Optional[str], typer.Option(callback=options.parse_profile, help="Dataset profile [each model's own].")] = None,
    limit: Annotated[int, typer.Option(min=2, help="Largest value searched.")] = 65536,
    predict: Annotated[bool, typer.Option(help="Predict from the tensor footprint on the CPU instead of measuring.")] = False,
    out_path: Annotated[Optional[Path], typer.Option("--out", help="Also write the table as CSV here.")] = None,
    check: Annotated[bool, typer.Option(help="Run each found limit again alone, and 10% above it (GPU only).")] = False,
    at_once: Annotated[int, typer.Option(min=1, help="Models searched at the same time on the GPU, each on an emulated "
                                         "card of its own: N x --memory-gib must fit in the GPU's memory [1].")] = 1,
    between: Annotated[Optional[str], typer.Option(
        callback=options.parse_brackets, help="Brackets to probe first, MODEL=LOW:HIGH,... (a stopped search's "
        "last fit and first OOM); both ends are run, never trusted.")] = None,
) -> None:
    """Search the largest length (or batch) that fits in --memory-gib; on a GPU every probe is a real step."""
    if vary not in VARY:
        fail(f"unknown --vary {vary!r}; choose from {', '.join(VARY)}")
    if mode == "both":
        fail("--mode is train or infer for a memory search")
    if dtype is not None and len(dtype) > 1:
        fail("--dtype takes one value for a memory search")
    device = resolve_device("auto")
    predicting = predict or device == "cpu"
    if check and predicting:
        fail("--check runs real steps on a GPU; a prediction has nothing to check")
    if between and predicting:
        fail("--between brackets a search of real steps on a GPU; a prediction probes nothing")
    unsearched = sorted(set(between or {}) - set(models or REGISTRY))
    if unsearched:
        fail(f"--between names {', '.join(unsearched)}, which --models does not search")
    if at_once > 1:
        if predicting:
            fail("--at-once shares a GPU between searches; a prediction runs on the CPU, one model at a time")
        gpu_mib = gpu_memory_mib()
        if gpu_mib is not None and at_once * memory_gib * GIB_MIB > gpu_mib:
            fail(f"--at-once {at_once} emulates {at_once} cards of {memory_gib:g} GiB, "
                 f"{at_once * memory_gib:g} GiB in all; the GPU has {gpu_mib / GIB_MIB:.1f} GiB")
    if out_path is not None:
        folder = out_path.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            fail(f"cannot write {out_path}: {'no folder ' + str(folder) if not folder.is_dir() else 'permission denied'}")
    if predicting:
        console.print(f"[bold yellow]Predicted[/] from the tensor footprint measured on the CPU plus "
                      f"{CONTEXT_MIB:.0f} MiB of CUDA context, not measured"
                      + (" (no CUDA GPU here)" if device == "cpu" else ""))
    commit, measured_on = git_commit(), device_name(device)

    def limit_row(model: str) -> dict:
        """The table's row of one model; a LimitError where its search cannot run."""
        spec = resolve_spec(model)
        fixed = batch_size if VARY[vary] == "seq_len" else length
        query = model_query(model, attention[0] if attention else None, mode, profile, VARY[vary], fixed, memory_gib,
                            dtype[0] if dtype else "float32")
        top = limit_of(spec.max_len_limit, limit) if VARY[vary] == "seq_len" else limit
        checked, bracket = None, None
        if predicting:
            best, info = predicted_limit(query, top)
            parts, peak = info["parts"], None
        else:
            start = max(spec.min_len, 16) if VARY[vary] == "seq_len" else 1
            bracket = (between or {}).get(model)
            if bracket is not None and not start <= bracket[0] < bracket[1] <= top:
                raise LimitError(f"--between {model}={bracket[0]}:{bracket[1]} is outside its search, {start}..{top}")
            best, _, probes = measured_limit(query, start, top, between=bracket,
                                             on_probe=lambda probe, seconds: _say_probe(model, vary, probe, seconds))
            fitting = [p for p in probes if p.fits and p.value == best]
            record = fitting[0].record if fitting else {}
            parts, peak = footprint_parts_of(record), record.get("nvml_peak_mib")
            if check and best is not None and best < top:
                checked = check_limit(query, best)
        return {
            "model": model, "attention": query.attention, "mode": mode, "vary": vary,
            "fixed": fixed, "memory_gib": memory_gib, "dtype": query.dtype,
            "largest": best, "at_limit": best == top, "peak_nvml_mib": peak,
            "between": "" if bracket is None else f"{bracket[0]}:{bracket[1]}",
            "dominant_part": dominant_part(parts) if parts else "", "predicted": predicting, "device": device,
            "device_name": measured_on,
            **({} if not check else {
                "check": checked.summary if checked else "", "check_holds": checked.holds if checked else None}),
            "git_commit": commit,
        }

    names = models or list(REGISTRY)
    done: dict[str, dict] = {}

    def keep(model: str, row: dict) -> None:
        done[model] = row
        if out_path is not None:  # after every model: a search stopped later keeps the models done
            _write_table(out_path, [done[m] for m in names if m in done])

    failures = search_all(names, limit_row, keep, at_once)
    if failures:
        fail(failures[0])
    rows = [done[m] for m in names]
    what = "length" if VARY[vary] == "seq_len" else "batch size"
    table = Table(title=f"largest {what} in {memory_gib:g} GiB ({mode}, "
                        f"{'batch ' + str(batch_size) if what == 'length' else 'L=' + str(length)})"
                        + (", predicted" if predicting else ""))
    columns = ("model", f"largest {what}", "peak MiB (nvidia-smi)", "memory dominated by") + (("checked alone",) if check else ())
    for column in columns:
        table.add_column(column, justify="right" if column != "model" and "dominated" not in column else "left")
    for row in rows:
        largest = "none fits" if row["largest"] is None else f"{row['largest']:,}" + ("+" if row["at_limit"] else "")
        peak = "-" if row["peak_nvml_mib"] is None else f"{row['peak_nvml_mib']:,.0f}"
        table.add_row(model_label(row["model"]), largest, peak, row["dominant_part"], *((row["check"],) if check else ()))
    out.print(table)
    if out_path is not None:
        console.print(f"table: {out_path}", soft_wrap=True)
