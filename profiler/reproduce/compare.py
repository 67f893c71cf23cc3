"""A measurement set beside a paper's published numbers: which rows to compare, and the tables of
absolute numbers and ratios."""
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from profiler.present.report import ReportTable
from profiler.reproduce.setups import ReproduceError, Setup
from profiler.results.schema import NVML_FIRST, memory_metric
from profiler.units import MIB_PER_GIB, format_fixed

MODE_NAMES = {"train": "training", "infer": "inference"}


@dataclass
class Selection:
    rows: pd.DataFrame  # one series per model of the setup, every status
    notes: list[str]
    comparable: bool  # measured on a GPU with the paper's batch and profile
    why_not: str = ""  # what makes absolute numbers incomparable


def _prefer(rows: pd.DataFrame, column: str, wanted, what: str, notes: list[str]) -> pd.DataFrame:
    values = list(dict.fromkeys(rows[column].dropna().tolist()))
    if wanted in values:
        return rows[rows[column] == wanted]
    if not values:
        return rows
    counts = rows[column].value_counts()
    chosen = counts.index[0]
    notes.append(f"the results have no {what} {wanted}; using {what} {chosen} (the paper's is {wanted})")
    return rows[rows[column] == chosen]


def select_rows(setup: Setup, frame: pd.DataFrame) -> Selection:
    """The rows of the setup's models in its mode; the paper's batch, profile and attention where
    the results have them (the closest otherwise, with a note)."""
    notes: list[str] = []
    rows = frame[frame["mode"] == setup.mode]
    rows = rows[rows["model"].isin(setup.models)]
    missing = [m for m in setup.models if m not in set(rows["model"])]
    if missing:
        raise ReproduceError(
            f"the results have no {setup.mode} rows of {', '.join(missing)}; the {setup.name} setup compares "
            f"{' and '.join(setup.models)}"
        )
    rows = rows.assign(batch_size=rows["batch_size"].astype(int))
    rows = _prefer(rows, "batch_size", setup.batch_size, "batch size", notes)
    picked = []
    for model in setup.models:
        own = rows[rows["model"] == model]
        own = _prefer(own, "profile", setup.profile, f"{model} profile", notes)
        # The setup's backend (the authors' materialised attention, unless the paper's baseline is fused).
        wanted = setup.attention if own["attention"].ne("none").any() else "none"
        own = _prefer(own, "attention", wanted, f"{model} attention", notes)
        if own["device"].nunique() > 1:
            own = _prefer(own, "device", "cuda", f"{model} device", notes)
        picked.append(own.sort_values("seq_len"))
    rows = pd.concat(picked, ignore_index=True)
    on_gpu = (rows["device"] == "cuda").all()
    if not on_gpu:
        notes.insert(
            0,
            "measured on the CPU: absolute numbers are NOT comparable with the paper's GPU numbers; memory is "
            "the tensor footprint (no device memory on a CPU); compare the shapes and ratios only",
        )
    names = ", ".join(sorted(rows["device_name"].dropna().astype(str).unique())) or "unknown device"
    notes.insert(0, f"measured on {names}; the paper: {setup.gpu}")
    same_knobs = (rows["batch_size"] == setup.batch_size).all() and (rows["profile"] == setup.profile).all()
    why_not = "measured on the CPU" if not on_gpu else "" if same_knobs else "batch size or profile differ from the paper's"
    return Selection(rows, notes + list(setup.notes), not why_not, why_not)


def measured_values(rows: pd.DataFrame, model: str, metric: str, scale: float) -> dict[int, float | str]:
    """Length -> value (in the paper's unit) or the status of a point that has no value."""
    values: dict[int, float | str] = {}
    for _, row in rows[rows["model"] == model].iterrows():
        value = pd.to_numeric(pd.Series([row.get(metric)]), errors="coerce").iloc[0]
        if row["status"] == "ok" and np.isfinite(value):
            values[int(row["seq_len"])] = float(value) * scale
        else:
            values[int(row["seq_len"])] = "OOM" if row["status"] == "oom" else str(row["status"])
    return values


def _fmt(value, digits: int) -> str:
    if value is None:
        return "failed"
    if isinstance(value, str):
        return value
    return format_fixed(value, digits)  # a small CPU run in GB keeps its digits


def _range(values: tuple[float, float] | None) -> str:
    if values is None:
        return ""
    low, high = values
    return f"{low:.2f}" if low == high else f"{low:.2f}-{high:.2f}"


def _ratio(a, b) -> str:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a is not None and b and math.isfinite(a):
        return f"{a / b:.2f}"
    return ""


def _base_length(measured: dict, published: dict) -> int | None:
    """The length ratios are taken to: the paper's first (50) where measured, else the shortest."""
    numeric = sorted(length for length, value in measured.items() if isinstance(value, float))
    first = min(published) if published else None
    if first in numeric:
        return first
    return numeric[0] if numeric else None


def comparison_table(
    setup: Setup,
    title: str,
    units: tuple[str, str],
    digits: int,
    measured: dict[str, dict[int, float | str]],
    published: dict[str, dict[int, float | None]],
    extra: dict[str, tuple[str, dict[int, float | str]]] | None = None,
    published_ratio: dict[int, tuple[float, float]] | None = None,
) -> ReportTable:
    """Measured next to published per length: absolute, ratio to the model's own first length, and
    first model over second. ``units`` = (measured unit, the paper's unit). ``published_ratio``:
    the paper's first over second where it states only that (a range as "low-high")."""
    first, second = setup.models
    has_paper = any(published.get(m) for m in setup.models)
    has_pair = has_paper or bool(published_ratio)
    lengths = sorted(set(setup.lengths) | {l for m in measured.values() for l in m} | {l for p in published.values() for l in p}
                     | set(published_ratio or {}))
    bases = {m: _base_length(measured[m], published.get(m, {})) for m in setup.models}
    paper_bases = {m: min(published[m]) if published.get(m) else None for m in setup.models}
    pair = f"{setup.labels[first]} / {setup.labels[second]}"
    columns = ["L"]
    for model in setup.models:
        name = setup.labels[model]
        columns.append(f"{name} measured {units[0]}")
        if has_paper:
            columns.append(f"{name} paper {units[1]}")
        if extra and model in extra:
            columns.append(f"{name} {extra[model][0]}")
    for model in setup.models:
        columns.append(f"{setup.labels[model]} measured / L={bases[model] or '-'}")
        if has_paper:
            columns.append(f"{setup.labels[model]} paper / L={paper_bases[model]}")
    columns.append(f"{pair} measured")
    if has_pair:
        columns.append(f"{pair} paper")
    table = ReportTable(title=title, columns=columns, right=set(columns))
    for length in lengths:
        cells = [str(length)]
        for model in setup.models:
            cells.append(_fmt(measured[model].get(length, "-"), digits))
            if has_paper:
                cells.append(_fmt(published.get(model, {}).get(length, ""), digits))
            if extra and model in extra:
                cells.append(_fmt(extra[model][1].get(length, "-"), 0))
        for model in setup.models:
            cells.append(_ratio(measured[model].get(length), measured[model].get(bases[model])))
            if has_paper:
                own = published.get(model, {})
                cells.append(_ratio(own.get(length), own.get(paper_bases[model])))
        cells.append(_ratio(measured[first].get(length), measured[second].get(length)))
        if published_ratio:
            cells.append(_range(published_ratio.get(length)))
        elif has_paper:
            cells.append(_ratio(published.get(first, {}).get(length), published.get(second, {}).get(length)))
        table.rows.append(cells)
    return table


def comparison_tables(setup: Setup, selection: Selection) -> list[ReportTable]:
    """Memory in MiB (GiB where the paper wrote GB) and time in ms, measured beside published."""
    rows = selection.rows
    step = MODE_NAMES[setup.mode]
    metric = memory_metric(rows, NVML_FIRST)
    in_gib = setup.memory_unit == "GB"
    scale = 1.0 / MIB_PER_GIB if in_gib else 1.0
    unit = "GiB" if in_gib else "MiB"
    memory = {m: measured_values(rows, m, metric, scale) for m in setup.models}
    extra = None
    if metric == "nvml_peak_mib":
        extra = {m: ("peak alloc MiB", measured_values(rows, m, "peak_allocated_mib", 1.0)) for m in setup.models}
    memory_table = comparison_table(
        setup,
        f"{setup.name}: {step} memory, measured ({metric}) vs the paper ({setup.gpu})",
        (unit, unit), 2 if in_gib else 0, memory, setup.memory, extra,
    )
    memory_table.notes = list(selection.notes) + (
        [f"the paper's {setup.memory_unit} are read as {unit}, the unit nvidia-smi and PyTorch count in"]
        if setup.memory else ["the paper published no memory for this setup"])
    time = {m: measured_values(rows, m, "time_median_ms", 1.0) for m in setup.models}
    published_ms = {m: {n: v * 1000.0 for n, v in values.items()} for m, values in setup.time_s.items()}
    time_table = comparison_table(
        setup, f"{setup.name}: time per {step} step (median), measured vs the paper", ("ms", "ms"), 1, time,
        published_ms, published_ratio=setup.time_ratio,
    )
    if setup.time_ratio:
        first, second = (setup.labels[m] for m in setup.models)
        ranged = any(low != high for low, high in setup.time_ratio.values())
        time_table.notes.append(
            f"the paper states {first} / {second} time at L = {', '.join(map(str, sorted(setup.time_ratio)))} only"
            + (" (a range, as low-high)" if ranged else "")
            + f", not absolute times: compare the {first} / {second} columns")
    elif not setup.time_s:
        time_table.notes.append("the paper published no times for this setup")
    return [memory_table, time_table]
