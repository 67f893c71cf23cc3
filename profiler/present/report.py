"""Tables of a scaling analysis: verdicts, fit details, throughput, crossovers, for the terminal
(rich) and as Markdown. Tables are built once as plain rows and rendered either way."""
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from rich.markup import escape
from rich.table import Table

from profiler.analysis.curves import CurveFit
from profiler.analysis.fit import TERM_NAMES
from profiler.analysis.table import Analysis, achieved_tflops
from profiler.results.schema import METRIC_LABELS, METRICS, PANEL_FIELDS, oom_note
from profiler.units import format_fixed, format_significant

# Short metric names for column headers.
METRIC_SHORT = {
    "time_median_ms": "time",
    "peak_allocated_mib": "peak alloc",
    "nvml_peak_mib": "nvidia-smi",
    "tensor_footprint_mib": "footprint",
    "flops_per_step": "FLOPs",
}
# Crossovers are reported for these metrics (FLOPs and nvidia-smi curves cross where the others do).
CROSSOVER_METRICS = ("time_median_ms", "peak_allocated_mib", "tensor_footprint_mib")


@dataclass
class ReportTable:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    right: set[str] = field(default_factory=set)  # right-aligned columns


def _panel_text(panel: tuple) -> str:
    values = dict(zip(PANEL_FIELDS, panel))
    return f"{values['mode']}, batch {values['batch_size']}, {values['device']}, {values['dtype']}, {values['execution']}"


def _verdict_cell(fit: CurveFit) -> str:
    support = "" if not math.isfinite(fit.verdict_support) or fit.verdict_support >= 0.8 else "?"
    return f"{fit.verdict}{support} {fit.exponent:.2f}"


def _oom_text(analysis: Analysis, key) -> str:
    for series in analysis.series:
        if series.key == key:
            parts = []
            if series.oom_lengths:
                parts.append(oom_note(series.oom_lengths[0]))
            if series.error_lengths:
                parts.append(f"error at L={','.join(map(str, series.error_lengths))}")
            return "; ".join(parts)
    return ""


def verdict_table(analysis: Analysis, mode: str | None = None) -> ReportTable:
    """One row per model variant and mode: the verdict of each metric and its exponent at max L."""
    metrics = [m for m in METRICS if any(f.metric == m for f in analysis.fits)]
    table = ReportTable(
        title="Growth with sequence length" + (f" ({mode})" if mode else ""),
        columns=["model", "family", "mode", "batch", "lengths", *[METRIC_SHORT[m] for m in metrics], "stopped"],
        notes=[
            "cell: verdict, then the fitted log-log slope d ln y / d ln L at the largest length "
            "(1 = linear, 2 = quadratic); '?' when under 80% of bootstrap refits agree",
        ],
    )
    for series in analysis.series:
        if mode and series.key.mode != mode:
            continue
        by_metric = {f.metric: f for f in analysis.fits if f.key == series.key}
        if not by_metric and not series.oom_lengths and not series.error_lengths:
            continue
        lengths = series.ok["seq_len"]
        span = f"{lengths.min()}-{lengths.max()} ({len(lengths)})" if len(lengths) else "-"
        cells = [_verdict_cell(by_metric[m]) if m in by_metric else "-" for m in metrics]
        table.rows.append(
            [series.key.variant, series.family, series.key.mode, str(series.key.batch_size), span, *cells,
             _oom_text(analysis, series.key)]
        )
    return table


def fit_table(analysis: Analysis, metric: str, mode: str | None = None) -> ReportTable:
    """Details of one metric's fits: terms, shares, exponent with its interval, local slopes."""
    table = ReportTable(
        title=f"Fits of {METRIC_LABELS[metric]}: y = c0 + c1·L + c2·L² + c3·L³, c >= 0" + (f" ({mode})" if mode else ""),
        columns=["model", "mode", "L range", "y at min L", "y at max L", "verdict", "support", "dominant term",
                 "slope at max L [90% CI]", "c0", "c1", "c2", "c3", "local log-log slopes", "flags"],
        right={"y at min L", "y at max L", "support", "c0", "c1", "c2", "c3"},
    )
    for fit in analysis.fits:
        if fit.metric != metric or (mode and fit.key.mode != mode):
            continue
        low, high = fit.exponent_ci
        interval = f"{fit.exponent:.2f} [{low:.2f}, {high:.2f}]" if math.isfinite(low) else f"{fit.exponent:.2f}"
        table.rows.append([
            fit.key.variant,
            fit.key.mode,
            f"{min(fit.lengths):.0f}-{max(fit.lengths):.0f}",
            format_significant(fit.values[0]),
            format_significant(fit.values[-1]),
            fit.verdict,
            f"{fit.verdict_support:.0%}" if math.isfinite(fit.verdict_support) else "-",
            f"{fit.dominant_term} ({fit.dominant_share:.0%})",
            interval,
            *[format_significant(c) for c in fit.coefs],
            " ".join("-" if not math.isfinite(s) else f"{s:.2f}" for s in fit.slopes),
            "; ".join(fit.flags),
        ])
    return table


def _percent_cell(row: pd.Series, column: str) -> str:
    """A fraction as a percentage, '-' where the row has none (a file from before the column)."""
    value = float(pd.to_numeric(row.get(column), errors="coerce"))
    return f"{format_significant(100 * value)}%" if np.isfinite(value) else "-"


def _bound_cell(row: pd.Series) -> str:
    """'memory' or 'compute': which of the device's peaks limits the step at its FLOPs per byte."""
    flag = str(row.get("memory_bound")).lower()  # a bool as written, "True" as read back
    return {"true": "memory", "false": "compute"}.get(flag, "-")


def throughput_table(analysis: Analysis, mode: str | None = None) -> ReportTable:
    """Achieved TFLOP/s (FLOPs per step over the median step time) per variant, and at the longest
    length the fractions of the device's peak rate and bandwidth and which of the two binds."""
    table = ReportTable(
        title="Achieved TFLOP/s (FLOPs per step / median step time)" + (f" ({mode})" if mode else ""),
        columns=["model", "mode", "at min L", "at max L", "best", "best at L", "GFLOPs per step at max L",
                 "% peak at max L", "% bandwidth at max L", "bound at max L"],
        right={"at min L", "at max L", "best", "best at L", "GFLOPs per step at max L", "% peak at max L",
               "% bandwidth at max L"},
        notes=["% peak, % bandwidth: of the device's matmul rate and copy bandwidth in the dtype, measured by "
               "each worker; bound: memory where FLOPs per byte moved lie below peak rate / bandwidth; the bytes "
               "are the ops' inputs and outputs, an upper bound on the traffic"],
    )
    for series in analysis.series:
        if (mode and series.key.mode != mode) or series.ok.empty:
            continue
        tflops = achieved_tflops(series.ok).to_numpy(dtype=float)
        if not np.isfinite(tflops).any():
            continue
        best = int(np.nanargmax(tflops))
        flops = pd.to_numeric(series.ok["flops_per_step"], errors="coerce").to_numpy(dtype=float)
        longest = series.ok.iloc[-1]
        table.rows.append([
            series.key.variant, series.key.mode, format_significant(tflops[0]), format_significant(tflops[-1]), format_significant(tflops[best]),
            str(int(series.ok["seq_len"].iloc[best])), format_significant(flops[-1] / 1e9),
            _percent_cell(longest, "peak_fraction"), _percent_cell(longest, "bandwidth_fraction"), _bound_cell(longest),
        ])
    return table


def crossover_table(analysis: Analysis, mode: str | None = None, cross_family_only: bool = True) -> ReportTable:
    """Lengths where one variant's fitted curve rises above another's, within both measured ranges."""
    table = ReportTable(
        title="Crossovers: past L, the first model costs more than the second" + (f" ({mode})" if mode else ""),
        columns=["metric", "panel", "L", "costs more past L", "costs less past L"],
        right={"L"},
        notes=["between an attention and a convolution model" if cross_family_only else "between any two variants"],
    )
    for crossing in sorted(analysis.crossovers, key=lambda c: (c.panel, c.metric, c.length)):
        if crossing.metric not in CROSSOVER_METRICS or (cross_family_only and not crossing.cross_family):
            continue
        if mode and dict(zip(PANEL_FIELDS, crossing.panel))["mode"] != mode:
            continue
        table.rows.append([
            METRIC_SHORT[crossing.metric], _panel_text(crossing.panel), f"{crossing.length:.0f}",
            crossing.rising, crossing.other,
        ])
    if not table.rows:
        table.notes.append("none inside the measured ranges")
    return table


BREAKDOWN_PARTS = {"params_mib": "params", "grads_mib": "grads", "optimizer_state_mib": "optimizer",
                   "inputs_mib": "inputs", "activations_mib": "activations"}


def breakdown_table(analysis: Analysis, mode: str | None = None) -> ReportTable:
    """The tensor footprint's parts at each variant's longest measured length, and the largest."""
    table = ReportTable(
        title="Memory breakdown at the longest length: tensor footprint parts (MiB)" + (f" ({mode})" if mode else ""),
        columns=["model", "mode", "L", *BREAKDOWN_PARTS.values(), "total", "largest part"],
        right={"L", *BREAKDOWN_PARTS.values(), "total"},
    )
    for series in analysis.series:
        if (mode and series.key.mode != mode) or series.ok.empty or any(c not in series.ok for c in BREAKDOWN_PARTS):
            continue
        longest = series.ok.iloc[-1]
        parts = {name: float(pd.to_numeric(longest[column], errors="coerce")) for column, name in BREAKDOWN_PARTS.items()}
        if not all(np.isfinite(v) for v in parts.values()):
            continue
        total = sum(parts.values())
        largest = max(parts, key=parts.get)
        table.rows.append([
            series.key.variant, series.key.mode, str(int(longest["seq_len"])),
            *[format_fixed(v, 1) for v in parts.values()], format_fixed(total, 1),
            f"{largest} ({parts[largest] / total:.0%})" if total > 0 else "-",
        ])
    return table


def build_report(analysis: Analysis, modes: list[str] | None = None) -> list[ReportTable]:
    modes = modes or sorted({s.key.mode for s in analysis.series})
    tables = []
    for mode in modes:
        tables.append(verdict_table(analysis, mode))
        for metric in METRICS:
            fits = fit_table(analysis, metric, mode)
            if fits.rows:
                tables.append(fits)
        tables.append(throughput_table(analysis, mode))
        tables.append(breakdown_table(analysis, mode))
        tables.append(crossover_table(analysis, mode))
    return tables


def header_lines(frame: pd.DataFrame, source: str) -> list[str]:
    """What the results are: file, GPU, knobs, and the point counts per status."""
    counts = frame["status"].value_counts()
    status = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "oom", "skipped", "error") if counts.get(s, 0))
    names = ", ".join(sorted(frame["device_name"].dropna().astype(str).unique())) or "unknown device"
    lines = [
        f"results: {source}",
        f"device: {names}; batch {', '.join(map(str, sorted(frame['batch_size'].astype(int).unique())))}; "
        f"dtype {', '.join(sorted(frame['dtype'].dropna().astype(str).unique()))}",
        f"points: {len(frame)} ({status})",
    ]
    if (frame["device"] == "cpu").any():
        lines.append("CPU rows: times are CPU times; memory scaling is read from the tensor footprint")
    return lines


def to_rich(table: ReportTable) -> Table:
    rich_table = Table(title=escape(table.title), caption="\n".join(escape(n) for n in table.notes) or None)
    for column in table.columns:
        rich_table.add_column(escape(column), justify="right" if column in table.right else "left")
    for row in table.rows:
        rich_table.add_row(*[escape(cell) for cell in row])
    return rich_table


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(table: ReportTable) -> str:
    lines = [f"### {table.title}", ""]
    lines.append("| " + " | ".join(_markdown_cell(c) for c in table.columns) + " |")
    lines.append("| " + " | ".join("---:" if c in table.right else "---" for c in table.columns) + " |")
    for row in table.rows:
        lines.append("| " + " | ".join(_markdown_cell(cell) for cell in row) + " |")
    if not table.rows:
        lines.append("| " + " | ".join("" for _ in table.columns) + " |")
    for note in table.notes:
        lines += ["", f"_{note}_"]
    return "\n".join(lines) + "\n"


def markdown_report(tables: list[ReportTable], header: list[str], title: str = "seqprof scaling report") -> str:
    parts = [f"# {title}", "", *[f"- {line}" for line in header], ""]
    parts += [to_markdown(t) for t in tables]
    parts.append(
        "Fits: y(L) = c0 + c1·L + c2·L² + c3·L³ with non-negative coefficients, relative least squares, terms "
        "chosen by BIC; verdict = the highest power carrying at least 15% of y at the largest length. "
        f"Terms: {', '.join(TERM_NAMES)}.\n"
    )
    return "\n".join(parts)


def make_report(frame: pd.DataFrame, source: str, modes: list[str] | None = None, n_boot: int = 200) -> tuple[list[str], list[ReportTable]]:
    """The header lines and tables of a results table's scaling report."""
    from profiler.analysis.table import analyse

    header = header_lines(frame, source)
    analysis = analyse(frame, n_boot=n_boot)
    if not analysis.fits:
        header.append("no series has two measured lengths: nothing to fit")
    present = [m for m in (modes or ("train", "infer")) if (frame["mode"] == m).any()]
    return header, build_report(analysis, present)
