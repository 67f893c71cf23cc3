"""Figures of a results table: memory and time vs sequence length, and ratios to a baseline.

Functions return matplotlib Figures (no pyplot state), so tests can inspect lines and labels and
the CLI decides where they are written. Attention models are drawn solid in warm colours,
convolution models dashed in cool colours; a model's attention backends share its colour and differ
by marker. An OOM is an 'x' at the top of the axes, at the length that ran out of memory.
"""
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator, ScalarFormatter
from matplotlib.transforms import blended_transform_factory

from profiler.analysis.series import Series, series_of
from profiler.results.schema import METRIC_LABELS, PANEL_FIELDS, memory_metric

FAMILY_COLOURS = {
    "attention": ["#d62728", "#ff7f0e", "#8c564b", "#e377c2", "#b8860b", "#7f0000", "#f4a582", "#c51b7d"],
    "convolution": ["#1f77b4", "#2ca02c", "#17becf", "#9467bd", "#08306b", "#006d2c", "#41b6c4", "#3f007d"],
}
OTHER_COLOURS = ["#555555", "#999999"]
FAMILY_LINESTYLE = {"attention": "-", "convolution": "--"}
BACKEND_MARKER = {"naive": "o", "sdpa": "^", "none": "s"}
REFERENCE_STYLE = {"O(L)": ":", "O(L²)": "-."}
OOM_MARKER = "x"
OOM_Y = 0.97  # axes fraction: OOM marks sit at the top of the axes
FIGURE_FORMATS = ("png", "svg")


def line_styles(series: list[Series]) -> dict[str, dict]:
    """colour, linestyle and marker per variant: families told apart, backends of a model too."""
    models_by_family: dict[str, list[str]] = {}
    for s in series:
        models = models_by_family.setdefault(s.family, [])
        if s.key.model not in models:
            models.append(s.key.model)
    styles = {}
    for s in series:
        palette = FAMILY_COLOURS.get(s.family, OTHER_COLOURS)
        index = models_by_family[s.family].index(s.key.model)
        styles[s.key.variant] = {
            "color": palette[index % len(palette)],
            "linestyle": FAMILY_LINESTYLE.get(s.family, "-."),
            "marker": BACKEND_MARKER.get(s.key.attention, "D"),
        }
    return styles


def panels(series: list[Series]) -> dict[tuple, list[Series]]:
    """Series that belong on one figure: same mode, batch size, device and dtype."""
    grouped: dict[tuple, list[Series]] = {}
    for s in series:
        grouped.setdefault(s.key.panel, []).append(s)
    return grouped


def panel_title(panel: tuple, group: list[Series]) -> str:
    values = dict(zip(PANEL_FIELDS, panel))
    names = sorted({s.device_name for s in group})
    return f"{' / '.join(names)} · batch {values['batch_size']} · {values['mode']} · {values['dtype']}"


def _anchor(group: list[Series], metric: str, baseline: str | None) -> tuple[float, float, str] | None:
    """The first point the O(L) and O(L²) references start from: the baseline's, else the first series'."""
    ordered = sorted(group, key=lambda s: s.key.variant != baseline)
    for s in ordered:
        lengths, values = s.points(metric)
        if len(lengths):
            return float(lengths[0]), float(values[0]), s.key.variant
    return None


def _log_ticks(lengths) -> list[float]:
    """Measured lengths as ticks, thinned so that labels on a log axis do not overlap."""
    ticks = sorted(set(lengths))
    kept = [ticks[-1]]
    for tick in reversed(ticks[:-1]):
        if np.log10(kept[-1] / tick) >= 0.1:
            kept.append(tick)
    return kept[::-1]


def draw_metric(ax, group: list[Series], metric: str, styles: dict, log: bool, baseline: str | None = None) -> None:
    """One line per variant, the O(L)/O(L²) references, OOM marks; linear or log-log axes."""
    all_lengths, all_values = [], []
    for s in group:
        lengths, values = s.points(metric)
        if not len(lengths):
            continue
        ax.plot(lengths, values, label=s.key.variant, markersize=5, linewidth=1.6, **styles[s.key.variant])
        all_lengths.extend(lengths)
        all_values.extend(values)
    oom_lengths = [(s, s.oom_lengths[0]) for s in group if s.oom_lengths]
    all_lengths.extend(length for _, length in oom_lengths)
    if not all_values:
        ax.text(0.5, 0.5, "no measured points", transform=ax.transAxes, ha="center", va="center")
        return
    low_length, high_length = min(all_lengths), max(all_lengths)
    anchor = _anchor(group, metric, baseline)
    if anchor is not None and high_length > anchor[0]:
        length0, value0, variant = anchor
        grid = np.linspace(length0, high_length, 100)
        for name, power in (("O(L)", 1), ("O(L²)", 2)):
            ax.plot(grid, value0 * (grid / length0) ** power, color="0.45", linewidth=1.0,
                    linestyle=REFERENCE_STYLE[name], label=f"{name} from {variant}")
    # The references may climb far above the data: the axes follow the data.
    top, bottom = max(all_values), min(all_values)
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(bottom / 1.5, top * 1.6)
        ax.set_xlim(low_length / 1.1, high_length * 1.1)
        # Ticks at the measured lengths read better than powers of ten over one decade.
        ax.xaxis.set_major_locator(FixedLocator(_log_ticks(all_lengths)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
        # Plain numbers on the y axis; within about a decade the minor ticks carry them too.
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain if np.log10(top * 1.6 / (bottom / 1.5)) < 1.6 else NullFormatter())
    else:
        ax.set_ylim(0, top * 1.12)
        ax.set_xlim(0, high_length * 1.04)
    marks = blended_transform_factory(ax.transData, ax.transAxes)
    seen: dict[float, int] = {}
    for s, length in oom_lengths:
        # Marks of several models at one length stack downwards instead of hiding each other.
        stacked = seen.get(length, 0)
        seen[length] = stacked + 1
        ax.plot([length], [OOM_Y - 0.045 * stacked], linestyle="none", marker=OOM_MARKER, markersize=10, markeredgewidth=2.2,
                color=styles[s.key.variant]["color"], transform=marks, clip_on=False, label=f"{s.key.variant} OOM")
    ax.set_xlabel("sequence length L")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.grid(True, which="both" if log else "major", alpha=0.3)


def _legend(fig: Figure, ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if any(label.endswith(" OOM") for label in labels):
        keep = [(h, l) for h, l in zip(handles, labels) if not l.endswith(" OOM")]
        handles, labels = [h for h, _ in keep], [l for _, l in keep]
        handles.append(Line2D([], [], color="black", marker=OOM_MARKER, linestyle="none", markeredgewidth=2))
        labels.append("out of memory (at top)")
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.99, 0.5), fontsize=8, frameon=False)


def scaling_figure(group: list[Series], metric: str, title: str, baseline: str | None = None) -> Figure:
    """Linear axes on the left, log-log on the right, one line per model variant."""
    fig = Figure(figsize=(13, 5.2), layout="constrained")
    styles = line_styles(group)
    linear, loglog = fig.subplots(1, 2)
    draw_metric(linear, group, metric, styles, log=False, baseline=baseline)
    draw_metric(loglog, group, metric, styles, log=True, baseline=baseline)
    linear.set_title("linear axes", fontsize=10)
    loglog.set_title("log-log axes", fontsize=10)
    fig.suptitle(f"{METRIC_LABELS.get(metric, metric)} vs sequence length\n{title}", fontsize=11)
    _legend(fig, linear)
    return fig


def ratio_figure(group: list[Series], metrics: list[str], baseline: str, title: str) -> Figure:
    """Each variant's metric divided by the baseline's, at the lengths both measured."""
    fig = Figure(figsize=(6.5 * len(metrics), 5.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    styles = line_styles(group)
    base = next(s for s in group if s.key.variant == baseline)
    for ax, metric in zip(axes, metrics):
        base_lengths, base_values = base.points(metric)
        reference = dict(zip(base_lengths, base_values))
        ratios = []
        for s in group:
            lengths, values = s.points(metric)
            shared = [(length, value / reference[length]) for length, value in zip(lengths, values)
                      if length in reference and reference[length] > 0]
            if not shared:
                continue
            xs, ys = zip(*shared)
            ax.plot(xs, ys, label=s.key.variant, markersize=5, linewidth=1.6, **styles[s.key.variant])
            ratios.extend(ys)
        ax.axhline(1.0, color="0.3", linewidth=0.8)
        if ratios and max(ratios) / max(min(ratios), 1e-12) > 20:
            ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_ylabel(f"{METRIC_LABELS.get(metric, metric)} / {baseline}'s")
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=10)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"Ratio to {baseline}\n{title}", fontsize=11)
    _legend(fig, axes[0])
    return fig


def resolve_baseline(group: list[Series], baseline: str) -> str:
    """A variant name ('sasrec[naive]') or a model name (its naive variant first) -> variant name."""
    variants = [s.key.variant for s in group]
    if baseline in variants:
        return baseline
    matches = sorted((s for s in group if s.key.model == baseline), key=lambda s: s.key.attention != "naive")
    if matches:
        return matches[0].key.variant
    raise ValueError(f"baseline {baseline!r} is not in the results; choose from {', '.join(sorted(set(variants)))}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def build_figures(frame: pd.DataFrame, baseline: str | None = None, stem: str = "seqprof") -> dict[str, Figure]:
    """Every figure of a results table, by file stem: per panel, time and memory, and ratios."""
    series = [s for s in series_of(frame) if not s.ok.empty or s.oom_lengths]
    grouped = panels(series)
    metrics = ["time_median_ms", memory_metric(frame)]
    if metrics[1] != "tensor_footprint_mib":
        metrics.append("tensor_footprint_mib")
    modes = [panel[0] for panel in grouped]
    figures = {}
    for panel, group in grouped.items():
        title = panel_title(panel, group)
        values = dict(zip(PANEL_FIELDS, panel))
        # The mode names the file; batch, device and dtype only where one mode has several panels.
        name = f"{stem}-{values['mode']}"
        if modes.count(values["mode"]) > 1:
            name += f"-b{values['batch_size']}-{values['device']}-{values['dtype']}-{values['execution']}"
        chosen = resolve_baseline(group, baseline) if baseline else None
        for metric in metrics:
            if any(len(s.points(metric)[0]) for s in group):
                figures[f"{name}-{metric}"] = scaling_figure(group, metric, title, chosen)
        if chosen is not None:
            figures[f"{name}-ratio-{_slug(chosen)}"] = ratio_figure(group, metrics[:2], chosen, title)
    return figures


def save_figure(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FIGURE_FORMATS:
        path = out_dir / f"{name}.{fmt}"
        fig.savefig(path, dpi=130 if fmt == "png" else None, bbox_inches="tight")
        paths.append(path)
    return paths


def save_figures(figures: dict[str, Figure], out_dir: Path) -> list[Path]:
    """Writes each figure as PNG and SVG into ``out_dir``; returns the paths."""
    paths = []
    for name, fig in figures.items():
        paths.extend(save_figure(fig, out_dir, name))
    return paths


def plot_results(frame: pd.DataFrame, out_dir: Path, stem: str, baseline: str | None = None) -> list[Path]:
    return save_figures(build_figures(frame, baseline, stem), out_dir)
