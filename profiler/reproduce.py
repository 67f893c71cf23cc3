"""The two papers' efficiency experiments: their setups, their published numbers, and the
comparison of a measurement with them (tables of absolute numbers and ratios, and a figure drawn
the way the paper presents it).

- convrec: hierarchical ConvRec paper, section 5.2.2 / Figure 4: ProxyRCA vs ConvRec, Beauty,
  batch 128, training, NVIDIA A40; memory in MB (what nvidia-smi shows, MiB) and time per batch.
- lightconv: lightweight ConvRec paper, section 5.6 / Table 5: SASRec vs ConvRec, training memory in
  GB at L = 50 ... 900; the GPU, batch and dataset are not stated. The paper's defaults are batch 128
  and ML-1M for its long-sequence setting (max length 200 there), so those are used.
"""
import datetime
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from profiler.plots import FAMILY_COLOURS
from profiler.points import MeasurementBudget
from profiler.report import ReportTable
from profiler.sweep import RESULTS_DIR, SweepRequest

MIB_PER_GIB = 1024.0


@dataclass(frozen=True)
class Setup:
    name: str
    paper: str
    source: str  # where in the paper the numbers are
    models: tuple[str, str]  # (attention model, convolution model): ratios are first / second
    labels: dict[str, str]  # the paper's names of the models
    profile: str
    batch_size: int
    mode: str
    lengths: tuple[int, ...]
    gpu: str
    memory_unit: str  # "MB" (read as MiB, as nvidia-smi prints) or "GB" (read as GiB)
    memory: dict[str, dict[int, float | None]]  # published memory; None: the run failed
    time_s: dict[str, dict[int, float]] = field(default_factory=dict)  # published time per batch
    notes: tuple[str, ...] = ()


SETUPS = {
    "convrec": Setup(
        name="convrec",
        paper="Rethinking Convolutional Networks for Attribute-Aware Sequential Recommendation (ConvRec)",
        source="section 5.2.2, Figure 4",
        models=("proxyrca", "convrec-hier"),
        labels={"proxyrca": "ProxyRCA", "convrec-hier": "ConvRec"},
        profile="beauty",
        batch_size=128,
        mode="train",
        # The text gives L = 50 and L = 500 only; the figure's points in between are not listed.
        lengths=(50, 100, 200, 300, 400, 500),
        gpu="NVIDIA A40",
        memory_unit="MB",
        memory={"proxyrca": {50: 3878.0, 500: 14280.0}, "convrec-hier": {50: 2849.0, 500: 6096.0}},
        time_s={"proxyrca": {50: 0.0893, 500: 0.382}, "convrec-hier": {50: 0.076, 500: 0.202}},
        notes=("the paper's memory is what nvidia-smi shows (CUDA context included): compare nvml_peak_mib",),
    ),
    "lightconv": Setup(
        name="lightconv",
        paper="Tanjim, ConvRec: a simple lightweight convolutional network for next item recommendation",
        source="section 5.6, Table 5",
        models=("sasrec", "convrec-light"),
        labels={"sasrec": "SASRec", "convrec-light": "ConvRec"},
        profile="ml-1m",
        batch_size=128,
        mode="train",
        lengths=(50, 200, 400, 600, 900),
        gpu="not stated",
        memory_unit="GB",
        memory={
            "sasrec": {50: 1.4, 200: 1.8, 400: 3.2, 600: 5.2, 900: None},
            "convrec-light": {50: 0.9, 200: 1.3, 400: 2.8, 600: 4.0, 900: 7.0},
        },
        notes=(
            "Table 5 names no dataset, GPU or batch size; ML-1M (the paper's long-sequence dataset) and "
            "batch 128 (its default) are assumed",
            "the paper published no times: SASRec ran in TensorFlow, ConvRec in PyTorch",
        ),
    ),
}

# On the CPU a paper's setup would take hours: a small batch and the shorter lengths by default.
CPU_BATCH_SIZE = 8
CPU_MAX_LENGTH = 200


class ReproduceError(ValueError):
    """Results that cannot be compared with a paper's setup; the message says why."""


def get_setup(name: str) -> Setup:
    try:
        return SETUPS[name]
    except KeyError:
        raise ReproduceError(f"unknown setup {name!r}; choose from {', '.join(SETUPS)}") from None


def default_results_path(setup: Setup, device: str) -> Path:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return RESULTS_DIR / f"reproduce-{setup.name}-{device}-{stamp}.csv"


def sweep_request(
    setup: Setup,
    device: str,
    out: Path,
    budget: MeasurementBudget,
    batch_size: int | None = None,
    lengths: list[int] | None = None,
    profile: str | None = None,
    resume: bool = False,
    argv: list[str] | None = None,
) -> SweepRequest:
    """The sweep that measures a paper's setup: its models, lengths, batch and profile, training,
    with the materialised attention the authors' code uses. On the CPU the defaults are small."""
    on_cpu = device == "cpu"
    if lengths is None:
        lengths = [length for length in setup.lengths if not on_cpu or length <= CPU_MAX_LENGTH]
    if batch_size is None:
        batch_size = CPU_BATCH_SIZE if on_cpu else setup.batch_size
    return SweepRequest(
        models=list(setup.models),
        lengths=sorted(lengths),
        modes=[setup.mode],
        attentions=["naive"],
        batch_size=batch_size,
        profile=profile or setup.profile,
        device=device,
        seed=0,
        budget=budget,
        out=out,
        resume=resume,
        point_timeout_s=900.0,
        argv=list(argv or []),
    )


# ---------------------------------------------------------------------------------------------
# Choosing the rows to compare
# ---------------------------------------------------------------------------------------------


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
        # The authors' code materialises attention: compare the naive backend where both exist.
        own = _prefer(own, "attention", "naive" if own["attention"].ne("none").any() else "none", f"{model} attention", notes)
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


# ---------------------------------------------------------------------------------------------
# Comparison tables
# ---------------------------------------------------------------------------------------------


def memory_metric(rows: pd.DataFrame) -> str:
    """What the papers read (nvidia-smi) where it was measured, else the allocator, else tensors."""
    for metric in ("nvml_peak_mib", "peak_allocated_mib", "tensor_footprint_mib"):
        if metric in rows and pd.to_numeric(rows[metric], errors="coerce").notna().any():
            return metric
    return "tensor_footprint_mib"


def _measured(rows: pd.DataFrame, model: str, metric: str, scale: float) -> dict[int, float | str]:
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
    if not math.isfinite(value):
        return "-"
    if 0 < abs(value) < 10.0 ** (1 - digits):
        return f"{value:.2g}"  # a small CPU run in GB would otherwise print 0.00
    return f"{value:,.{digits}f}"


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
) -> ReportTable:
    """Measured next to published per length: absolute, ratio to the model's own first length, and
    first model over second. ``units`` = (measured unit, the paper's unit)."""
    first, second = setup.models
    has_paper = any(published.get(m) for m in setup.models)
    lengths = sorted(set(setup.lengths) | {l for m in measured.values() for l in m} | {l for p in published.values() for l in p})
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
    if has_paper:
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
        if has_paper:
            cells.append(_ratio(published.get(first, {}).get(length), published.get(second, {}).get(length)))
        table.rows.append(cells)
    return table


def comparison_tables(setup: Setup, selection: Selection) -> list[ReportTable]:
    rows = selection.rows
    metric = memory_metric(rows)
    scale = 1.0 / MIB_PER_GIB if setup.memory_unit == "GB" else 1.0
    unit = "GiB" if setup.memory_unit == "GB" else "MiB"
    memory = {m: _measured(rows, m, metric, scale) for m in setup.models}
    extra = None
    if metric == "nvml_peak_mib":
        extra = {m: ("peak alloc MiB", _measured(rows, m, "peak_allocated_mib", 1.0)) for m in setup.models}
    memory_table = comparison_table(
        setup,
        f"{setup.name}: training memory, measured ({metric}) vs the paper ({setup.gpu})",
        (unit, setup.memory_unit), 2 if setup.memory_unit == "GB" else 0, memory, setup.memory, extra,
    )
    memory_table.notes = list(selection.notes)
    time = {m: _measured(rows, m, "time_median_ms", 1e-3) for m in setup.models}
    time_table = comparison_table(
        setup, f"{setup.name}: time per training step (median), measured vs the paper", ("s", "s"), 4, time, setup.time_s,
    )
    if not setup.time_s:
        time_table.notes.append("the paper published no times for this setup")
    return [memory_table, time_table]


# ---------------------------------------------------------------------------------------------
# The figure, drawn the way the paper presents its numbers
# ---------------------------------------------------------------------------------------------


def _colour(setup: Setup, model: str) -> str:
    return FAMILY_COLOURS["attention"][0] if model == setup.models[0] else FAMILY_COLOURS["convolution"][0]


def _numeric(values: dict[int, float | str]) -> tuple[list[int], list[float]]:
    points = sorted((l, v) for l, v in values.items() if isinstance(v, float))
    return [l for l, _ in points], [v for _, v in points]


def _line_panel(ax, setup: Setup, measured: dict, published: dict, ylabel: str) -> None:
    """Measured as solid lines with filled markers, published as hollow markers on dashed lines."""
    for model in setup.models:
        colour = _colour(setup, model)
        lengths, values = _numeric(measured[model])
        ax.plot(lengths, values, color=colour, marker="o", linestyle="-", label=f"{setup.labels[model]} measured")
        for length, value in measured[model].items():
            if value == "OOM":
                ax.plot([length], [0.97], transform=ax.get_xaxis_transform(), marker="x", color=colour,
                        markersize=10, markeredgewidth=2, linestyle="none", clip_on=False, label=f"{setup.labels[model]} OOM")
        own = {l: v for l, v in published.get(model, {}).items() if v is not None}
        if own:
            ax.plot(sorted(own), [own[l] for l in sorted(own)], color=colour, marker="s", markerfacecolor="none",
                    markersize=8, linestyle="--", label=f"{setup.labels[model]} paper ({setup.gpu})")
    ax.set_xlabel("sequence length")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _bar_panel(ax, setup: Setup, measured: dict, published: dict, ylabel: str) -> None:
    """Table 5 as grouped bars: per length, each model measured (filled) and published (hatched)."""
    lengths = list(setup.lengths)
    width = 0.2
    offsets = {(m, kind): (2 * i + j - 1.5) * width for i, m in enumerate(setup.models) for j, kind in enumerate(("measured", "paper"))}
    positions = np.arange(len(lengths))
    for model in setup.models:
        colour = _colour(setup, model)
        for kind, values in (("measured", measured[model]), ("paper", published.get(model, {}))):
            heights = [values.get(l) if isinstance(values.get(l), float) else 0.0 for l in lengths]
            bars = ax.bar(positions + offsets[(model, kind)], heights, width, color=colour if kind == "measured" else "none",
                          edgecolor=colour, hatch=None if kind == "measured" else "//", label=f"{setup.labels[model]} {kind}")
            for bar, length in zip(bars, lengths):
                value = values.get(length, "")
                if value is None or isinstance(value, str) and value:
                    ax.text(bar.get_x() + bar.get_width() / 2, 0.02, "failed" if value is None else value,
                            rotation=90, ha="center", va="bottom", fontsize=8, transform=ax.get_xaxis_transform())
    ax.set_xticks(positions, [str(l) for l in lengths])
    ax.set_xlabel("sequence length")
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def reproduce_figure(setup: Setup, selection: Selection) -> Figure:
    rows = selection.rows
    metric = memory_metric(rows)
    names = ", ".join(sorted(rows["device_name"].dropna().astype(str).unique())) or "unknown device"
    batch = ", ".join(map(str, sorted(rows["batch_size"].astype(int).unique())))
    profile = ", ".join(sorted(rows["profile"].astype(str).unique()))
    title = (f"{setup.name} ({setup.source}): measured on {names} (batch {batch}, {profile}, {metric}) "
             f"vs published ({setup.gpu})")
    if not selection.comparable:
        title += f"\n{selection.why_not}: absolute numbers not comparable with the paper's; compare shapes and ratios"
    if setup.memory_unit == "GB":
        fig = Figure(figsize=(9, 5), layout="constrained")
        ax = fig.subplots()
        memory = {m: _measured(rows, m, metric, 1.0 / MIB_PER_GIB) for m in setup.models}
        _bar_panel(ax, setup, memory, setup.memory, "training memory (GB)")
    else:
        fig = Figure(figsize=(12, 5), layout="constrained")
        memory_ax, time_ax = fig.subplots(1, 2)
        memory = {m: _measured(rows, m, metric, 1.0) for m in setup.models}
        _line_panel(memory_ax, setup, memory, setup.memory, "GPU memory (MB)")
        time = {m: _measured(rows, m, "time_median_ms", 1e-3) for m in setup.models}
        _line_panel(time_ax, setup, time, setup.time_s, "time per batch (s)")
        memory_ax.set_title("memory", fontsize=10)
        time_ax.set_title("runtime", fontsize=10)
    fig.suptitle(title, fontsize=10)
    return fig
