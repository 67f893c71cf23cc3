"""Figures of a results table: memory and time vs sequence length, ratios to a baseline, and where a
step's memory goes.

Functions return matplotlib Figures (no pyplot state), so tests can inspect lines and labels and
the CLI decides where they are written. Every figure encodes the same way and says so in its
legend: one colour per model (in the registry's order, so a model keeps its colour from figure to
figure), one line style per family, one marker per attention backend; hollow markers where a time
point is launch-bound; a band from p10 to p90 of the raw step times; grey guides of slope L and L²
from a little below the lowest first point (or from the baseline's); an arrow to the top of the
axes, labelled, at the length that ran out of memory. The main panel is log-log, the same curves
on linear axes beneath it; more than eight series are split into one panel per family, all on the
same axes. Memory is in MiB, written as GiB from 1024 MiB on; ratios have no unit.
"""
import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator, ScalarFormatter
from matplotlib.transforms import blended_transform_factory

from models.registry import REGISTRY
from profiler.analysis.series import Series, series_of
from profiler.results.schema import NO_ATTENTION, PANEL_FIELDS, memory_metric
from profiler.units import MIB_PER_GIB, format_memory

# One colour per registered model, in the registry's order: the attention models take the first
# six, the convolution models the next six, so the models that share a panel are far apart.
MODEL_COLOURS = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",  # attention
    "#e377c2", "#17becf", "#bcbd22", "#393b79", "#000000", "#d95f02",  # convolution
    "#1b9e77", "#e7298a", "#7570b3",  # linear attention, FFT filter, recurrence
]
EXTRA_COLOURS = ["#a55194", "#6b6ecf", "#b5cf6b", "#843c39", "#637939"]  # models outside the registry
FAMILY_ORDER = ("attention", "convolution", "linear-attention", "fft-filter", "recurrence")
FAMILY_LINESTYLE = {
    "attention": "-",
    "convolution": "--",
    "linear-attention": "-.",
    "fft-filter": (0, (5, 1.5, 1, 1.5, 1, 1.5)),
    "recurrence": (0, (1, 1.2)),
}
OTHER_LINESTYLE = (0, (8, 2))
BACKEND_MARKER = {"naive": "o", "sdpa": "^", NO_ATTENTION: "s"}
BACKEND_LABEL = {"naive": "naive (materialised)", "sdpa": "sdpa (fused)", NO_ATTENTION: "none (no attention layer)"}
GUIDE_COLOUR = "0.45"
MAX_SERIES_PER_PANEL = 8
FIGURE_FORMATS = ("png", "svg")
# SVG ids are hashes salted by this, and the SVG carries no date: the same figure, the same bytes.
SVG_HASH_SALT = "seqprof"

# What a figure calls a metric; memory carries its unit in the tick labels (MiB, GiB).
METRIC_NAMES = {
    "time_median_ms": "time per step",
    "peak_allocated_mib": "peak allocated memory",
    "nvml_peak_mib": "device memory, nvidia-smi",
    "tensor_footprint_mib": "tensor footprint",
}
BREAKDOWN_PARTS = {
    "params_mib": ("parameters", "#4c72b0"),
    "grads_mib": ("gradients", "#55a868"),
    "optimizer_state_mib": ("optimizer state", "#c44e52"),
    "inputs_mib": ("inputs", "#8172b2"),
    "activations_mib": ("activations", "#ccb974"),
}


def is_memory(metric: str) -> bool:
    return metric.endswith("_mib")


def metric_label(metric: str) -> str:
    name = METRIC_NAMES.get(metric, metric)
    return f"{name} (ms)" if metric.endswith("_ms") else name


def model_colour(model: str) -> str:
    """The model's colour in every figure: by its place in the registry."""
    names = list(REGISTRY)
    if model in names:
        return MODEL_COLOURS[names.index(model) % len(MODEL_COLOURS)]
    return EXTRA_COLOURS[sum(map(ord, model)) % len(EXTRA_COLOURS)]


def line_styles(series: list[Series]) -> dict[str, dict]:
    """colour (the model's), linestyle (the family's) and marker (the backend's) per variant."""
    return {
        s.key.variant: {
            "color": model_colour(s.key.model),
            "linestyle": FAMILY_LINESTYLE.get(s.family, OTHER_LINESTYLE),
            "marker": BACKEND_MARKER.get(s.key.attention, "D"),
        }
        for s in series
    }


def _model_order(series: list[Series]) -> list[str]:
    names = list(REGISTRY)
    models = list(dict.fromkeys(s.key.model for s in series))
    return sorted(models, key=lambda m: (names.index(m) if m in names else len(names), m))


def _family_rank(family: str) -> int:
    return FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER)


def panels(series: list[Series]) -> dict[tuple, list[Series]]:
    """Series that belong on one figure: same mode, batch size, device and dtype."""
    grouped: dict[tuple, list[Series]] = {}
    for s in series:
        grouped.setdefault(s.key.panel, []).append(s)
    return grouped


def family_panels(group: list[Series]) -> list[tuple[str, list[Series]]]:
    """Up to eight series share one panel; more get one panel per family, and the families of a
    single series share one panel between them."""
    if len(group) <= MAX_SERIES_PER_PANEL:
        return [("", group)]
    by_family: dict[str, list[Series]] = {}
    for s in sorted(group, key=lambda s: _family_rank(s.family)):
        by_family.setdefault(s.family, []).append(s)
    result = [(family, members) for family, members in by_family.items() if len(members) > 1]
    single = [(family, members) for family, members in by_family.items() if len(members) == 1]
    if len(single) == 1:
        result.append(single[0])
    elif single:
        result.append((", ".join(f for f, _ in single), [m for _, members in single for m in members]))
    return sorted(result, key=lambda item: _family_rank(item[1][0].family))


def panel_title(panel: tuple, group: list[Series]) -> str:
    values = dict(zip(PANEL_FIELDS, panel))
    names = sorted({s.device_name for s in group})
    return f"{' / '.join(names)} · batch {values['batch_size']} · {values['mode']} · {values['dtype']}"


# --- axes ------------------------------------------------------------------------------------


def _thinned_lengths(lengths) -> list[float]:
    """Measured lengths as ticks, thinned so that labels on a log axis do not overlap."""
    ticks = sorted(set(lengths))
    kept = [ticks[-1]]
    for tick in reversed(ticks[:-1]):
        if np.log10(kept[-1] / tick) >= 0.1:
            kept.append(tick)
    return kept[::-1]


def memory_ticks(low: float, high: float, log: bool) -> list[float]:
    """Tick values in MiB: powers of two on a log axis, round numbers of the label's unit on a
    linear one (GiB once the axis passes 1024 MiB)."""
    if log:
        first, last = math.ceil(math.log2(low)), math.floor(math.log2(high))
        step = max(1, math.ceil((last - first + 1) / 7))
        return [2.0**k for k in range(first, last + 1) if (k - first) % step == 0] or [2.0 ** round(math.log2(high))]
    scale = MIB_PER_GIB if high >= MIB_PER_GIB else 1
    raw = high / scale / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step * scale for i in range(0, int(high / scale / step) + 1)]


def _memory_tick_text(value: float, scale: float) -> str:
    if value == 0:
        return "0"
    if scale == MIB_PER_GIB:
        return f"{value / MIB_PER_GIB:g} GiB"
    return format_memory(value)


def _format_y(ax, metric: str, low: float, high: float, log: bool) -> None:
    if is_memory(metric):
        ticks = memory_ticks(low, high, log)
        scale = 1 if log else (MIB_PER_GIB if high >= MIB_PER_GIB else 1)
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_memory(v) if log else _memory_tick_text(v, scale)))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_minor_formatter(NullFormatter())
    elif log:
        plain = FuncFormatter(lambda value, _: f"{value:g}")
        ax.yaxis.set_major_formatter(plain)
        # Within about a decade and a half the minor ticks carry numbers too.
        ax.yaxis.set_minor_formatter(plain if np.log10(high / low) < 1.6 else NullFormatter())


def _format_log_x(ax, lengths) -> None:
    ax.xaxis.set_major_locator(FixedLocator(_thinned_lengths(lengths)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


# --- what is drawn ---------------------------------------------------------------------------


def spread_band(s: Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lengths, p10 and p90 of the raw device-time samples of each measured length."""
    samples = s.step_samples()
    lengths = sorted(length for length, values in samples.items() if len(values))
    return (np.array(lengths, dtype=float), np.array([np.percentile(samples[n], 10) for n in lengths]),
            np.array([np.percentile(samples[n], 90) for n in lengths]))


def _draw_series(ax, s: Series, metric: str, style: dict, thin: bool = False) -> None:
    """The line, its markers (hollow where launch-bound, for time) and the p10-p90 band."""
    lengths, values = s.points(metric)
    if not len(lengths):
        return
    colour, marker = style["color"], style["marker"]
    ax.plot(lengths, values, color=colour, linestyle=style["linestyle"], linewidth=1.2 if thin else 1.6,
            label=s.key.variant, zorder=3)
    if thin:
        ax.plot(lengths, values, linestyle="none", marker=style["marker"], markersize=3, color=colour,
                label=f"_markers {s.key.variant}", zorder=4)
        return
    launch = set(s.launch_bound_lengths) if metric == "time_median_ms" else set()
    hollow = np.array([int(n) in launch for n in lengths], dtype=bool)
    ax.plot(lengths[~hollow], values[~hollow], linestyle="none", marker=marker, markersize=6, color=colour,
            label=f"_markers {s.key.variant}", zorder=4)
    if hollow.any():
        ax.plot(lengths[hollow], values[hollow], linestyle="none", marker=marker, markersize=6, color=colour,
                markerfacecolor="white", markeredgewidth=1.4, label=f"_launch-bound {s.key.variant}", zorder=4)
    if metric == "time_median_ms":
        band_lengths, p10, p90 = spread_band(s)
        if len(band_lengths):
            ax.fill_between(band_lengths, p10, p90, color=colour, alpha=0.2, linewidth=0,
                            label=f"_p10-p90 {s.key.variant}", zorder=2)


def _data_range(group: list[Series], metric: str) -> tuple[list[float], list[float]]:
    """Every length (measured or out of memory) and every value (bands included) of the group."""
    lengths, values = [], []
    for s in group:
        xs, ys = s.points(metric)
        lengths.extend(xs)
        values.extend(ys)
        lengths.extend(s.oom_lengths[:1])
        if metric == "time_median_ms":
            _, p10, p90 = spread_band(s)
            values.extend(v for v in (*p10, *p90) if v > 0)
    return lengths, values


def _guide_anchor(group: list[Series], metric: str, baseline: str | None) -> tuple[float, float, str]:
    """Where the L and L² guides start: the baseline's first point where it is in the panel, else
    a little below the lowest first point, so the guides run beside the curves they are read against."""
    firsts = []
    for s in group:
        lengths, values = s.points(metric)
        if len(lengths):
            firsts.append((float(lengths[0]), float(values[0]), s.key.variant))
    for length, value, variant in firsts:
        if variant == baseline:
            return length, value, variant
    shortest = min(length for length, _, _ in firsts)
    lowest = min(value for length, value, _ in firsts if length == shortest)
    return shortest, lowest / GUIDE_BELOW, ""


def _draw_guides(ax, group: list[Series], metric: str, baseline: str | None, x_high: float, y_top: float) -> None:
    length0, value0, variant = _guide_anchor(group, metric, baseline)
    if x_high <= length0:
        return
    bottom, top = ax.get_ylim()
    # A guide ends at the longest length, or below the band at the top that the OOM labels use.
    ceiling = min(y_top, bottom * (top / bottom) ** 0.85)
    for name, power in (("L", 1), ("L²", 2)):
        end = min(x_high, length0 * (ceiling / value0) ** (1 / power))
        if end <= length0:
            continue
        grid = np.geomspace(length0, end, 50)
        label = f"∝ {name}" + (f" from {variant}" if variant else "")
        ax.plot(grid, value0 * (grid / length0) ** power, color=GUIDE_COLOUR, linewidth=1.0,
                linestyle=(0, (4, 2)), label=f"_guide {label}", zorder=1)
        ax.annotate(f"∝{name}", (end, value0 * (end / length0) ** power), xytext=(3, 0), textcoords="offset points",
                    fontsize=8, color=GUIDE_COLOUR, ha="left", va="center")


OOM_TOP = 0.93  # axes fraction where the arrows to an OOM length end


def _draw_oom(ax, group: list[Series], metric: str, styles: dict) -> None:
    """An arrow from a series' last point to the top of the axes at the length that ran out of
    memory, and one label per such length naming the series."""
    marks = blended_transform_factory(ax.transData, ax.transAxes)
    by_length: dict[int, list[str]] = {}
    for s in group:
        if not s.oom_lengths:
            continue
        length = s.oom_lengths[0]
        by_length.setdefault(length, []).append(s.key.variant)
        lengths, values = s.points(metric)
        colour = styles[s.key.variant]["color"]
        if len(lengths):
            ax.annotate("", xy=(length, OOM_TOP), xycoords=marks, xytext=(lengths[-1], values[-1]), textcoords="data",
                        arrowprops={"arrowstyle": "-|>", "color": colour, "linewidth": 1.2, "shrinkA": 4, "shrinkB": 0,
                                    "linestyle": (0, (2, 1.5))}, zorder=3)
        else:
            ax.plot([length, length], [0, OOM_TOP], transform=marks, color=colour, linewidth=1.2, linestyle=(0, (2, 1.5)),
                    label=f"_oom {s.key.variant}")
    for length, variants in by_length.items():
        ax.text(length, 0.985, f"OOM at L={length}: {', '.join(variants)}", transform=marks, ha="right", va="top",
                fontsize=7.5, color="0.15", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})


def _linear_panel(ax, group: list[Series], metric: str, styles: dict) -> None:
    """The same curves on linear axes, small, under their log-log panel: the shape of L and L²."""
    lengths, values = _data_range(group, metric)
    values = [v for v in values if np.isfinite(v)]
    for s in group:
        _draw_series(ax, s, metric, styles[s.key.variant], thin=True)
    if not values:
        return
    top = max(values) * 1.1
    ax.set_xlim(0, max(lengths) * 1.04)
    ax.set_ylim(0, top)
    _format_y(ax, metric, 0, top, log=False)
    ax.xaxis.set_major_locator(FixedLocator([0, *_thinned_lengths(lengths)]))
    ax.tick_params(labelsize=7.5)
    ax.text(0.015, 0.93, "linear axes", transform=ax.transAxes, fontsize=7.5, va="top", color="0.3")
    if not is_memory(metric):
        ax.set_ylabel("ms", fontsize=8)
    ax.grid(True, alpha=0.25)


GUIDE_BELOW = 1.4  # the guides start this factor below the lowest first point


def _headroom(low: float, high: float) -> tuple[float, float]:
    """Log-axis limits: room under the data for the guides' start, and on top for the OOM labels."""
    span = max(np.log10(high / low), 0.3)
    return low / GUIDE_BELOW / 10 ** (0.03 * span), high * 10 ** (0.14 * span)


def _scaling_panel(ax, group: list[Series], metric: str, styles: dict, baseline: str | None, limits) -> None:
    """One log-log panel: lines, bands, markers, guides and OOM arrows."""
    (x_low, x_high), (y_low, y_high), lengths = limits
    for s in group:
        _draw_series(ax, s, metric, styles[s.key.variant])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_low / 1.12, x_high * 1.12)
    ax.set_ylim(y_low, y_high)
    _format_log_x(ax, lengths)
    _format_y(ax, metric, y_low, y_high, log=True)
    ax.grid(True, which="major", alpha=0.3)
    own_lengths, _ = _data_range(group, metric)
    if any(len(s.points(metric)[0]) for s in group):
        _draw_guides(ax, group, metric, baseline, max(own_lengths), y_high)
        _draw_oom(ax, group, metric, styles)
    else:
        ax.text(0.5, 0.5, "no measured points", transform=ax.transAxes, ha="center", va="center")


def _legend_entries(group: list[Series], metric: str | None,
                    baseline_guides: bool | str = True) -> tuple[list, list[str], set[str]]:
    """Sections: models (colour), families (line), backends (marker), then the marks in use.
    ``baseline_guides``: True for guides from the lowest first point, a variant's name where a
    panel's guides start at that baseline."""
    handles, labels, headers = [], [], set()

    def header(text: str) -> None:
        handles.append(Line2D([], [], linestyle="none"))
        labels.append(text)
        headers.add(text)

    header("model (colour)")
    for model in _model_order(group):
        handles.append(Line2D([], [], color=model_colour(model), linewidth=3))
        labels.append(model)
    families = sorted({s.family for s in group}, key=_family_rank)
    header("family (line)")
    for family in families:
        handles.append(Line2D([], [], color="0.2", linewidth=1.4, linestyle=FAMILY_LINESTYLE.get(family, OTHER_LINESTYLE)))
        labels.append(family)
    header("attention backend (marker)")
    for backend in [b for b in BACKEND_MARKER if any(s.key.attention == b for s in group)]:
        handles.append(Line2D([], [], color="0.2", marker=BACKEND_MARKER[backend], linestyle="none", markersize=6))
        labels.append(BACKEND_LABEL[backend])
    if metric is None:
        return handles, labels, headers
    header("marks")
    if metric == "time_median_ms":
        if any(s.launch_bound_lengths for s in group):
            handles.append(Line2D([], [], color="0.2", marker="o", markerfacecolor="white", linestyle="none", markersize=6))
            labels.append("hollow: launch-bound\n(wall time > 1.2 × device time)")
        if any(len(spread_band(s)[0]) for s in group):
            handles.append(Patch(facecolor="0.5", alpha=0.3, linewidth=0))
            labels.append("band: p10–p90 of the\nraw step times")
    if baseline_guides:
        handles.append(Line2D([], [], color=GUIDE_COLOUR, linewidth=1.0, linestyle=(0, (4, 2))))
        labels.append("guides ∝L, ∝L²" + (f"\n(from {baseline_guides}'s first\npoint in its panel)"
                                         if isinstance(baseline_guides, str) else ""))
    if any(s.oom_lengths for s in group):
        handles.append(Line2D([], [], color="0.2", linewidth=1.2, linestyle=(0, (2, 1.5)), marker=">", markevery=[1]))
        labels.append("arrow to the top: out of\nmemory at that length")
    return handles, labels, headers


def _legend(fig: Figure, group: list[Series], metric: str | None, guides: bool | str = True, spare=None) -> None:
    """The figure's legend, in a spare cell of the panel grid where there is one, else at the right."""
    handles, labels, headers = _legend_entries(group, metric, guides)
    if spare is not None:
        spare.axis("off")
        columns = 1
        if len(handles) > 22:
            # Two columns: the models in the first, the families, backends and marks in the second;
            # matplotlib fills columns top to bottom, so the shorter one is padded with blanks.
            split = 1 + len(_model_order(group))
            first, second = list(zip(handles, labels))[:split], list(zip(handles, labels))[split:]
            blank = (Line2D([], [], linestyle="none"), "")
            rows = max(len(first), len(second))
            entries = first + [blank] * (rows - len(first)) + second + [blank] * (rows - len(second))
            handles, labels = [h for h, _ in entries], [l for _, l in entries]
            columns = 2
        legend = spare.legend(handles, labels, loc="upper left", fontsize=8, frameon=False, handlelength=2.6,
                              ncols=columns)
    else:
        legend = fig.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False, handlelength=2.6)
    for text in legend.get_texts():
        if text.get_text() in headers:
            text.set_fontweight("bold")


def _layout(count: int) -> tuple[int, int]:
    """(rows, columns) of the panel grid: two columns up to four panels, three beyond."""
    columns = 1 if count == 1 else 2 if count <= 4 else 3
    return math.ceil(count / columns), columns


def scaling_figure(group: list[Series], metric: str, title: str, baseline: str | None = None) -> Figure:
    """Log-log panels with the same curves on linear axes beneath; one panel per family when there
    are more than eight series, all on the same log-log axes."""
    parts = family_panels(group)
    rows, columns = _layout(len(parts))
    spare = rows * columns > len(parts)
    width = 7.6 if len(parts) == 1 else 5.6
    fig = Figure(figsize=(width * columns + (0 if spare else 2.9), 5.7 * rows + 0.5), layout="constrained")
    grid = fig.add_gridspec(2 * rows, columns, height_ratios=[3.0, 1.15] * rows)
    styles = line_styles(group)
    lengths, values = _data_range(group, metric)
    values = [v for v in values if np.isfinite(v) and v > 0] or [1.0]
    limits = ((min(lengths), max(lengths)), _headroom(min(values), max(values)), lengths)
    first = None
    for index, (family, members) in enumerate(parts):
        row, column = divmod(index, columns)
        ax = fig.add_subplot(grid[2 * row, column], sharex=first, sharey=first)
        first = first or ax
        _scaling_panel(ax, members, metric, styles, baseline, limits)
        linear = fig.add_subplot(grid[2 * row + 1, column])
        _linear_panel(linear, members, metric, styles)
        if family:
            ax.set_title(family, fontsize=10)
        if column == 0:
            ax.set_ylabel(metric_label(metric))
        linear.set_xlabel("sequence length L")
    fig.suptitle(f"{metric_label(metric)} vs sequence length: log-log, and linear beneath\n{title}", fontsize=11)
    spare_ax = fig.add_subplot(grid[2 * (rows - 1):, columns - 1]) if spare else None
    _legend(fig, group, metric, guides=baseline or True, spare=spare_ax)
    return fig


def ratio_figure(group: list[Series], metrics: list[str], baseline: str, title: str) -> Figure:
    """Each variant's metric divided by the baseline's, at the lengths both measured: rows are
    metrics, columns the family panels."""
    parts = family_panels(group)
    fig = Figure(figsize=(5.0 * len(parts) + 2.6, 4.2 * len(metrics) + 0.6), layout="constrained")
    axes = fig.subplots(len(metrics), len(parts), sharex=True, sharey="row", squeeze=False)
    styles = line_styles(group)
    base = next(s for s in group if s.key.variant == baseline)
    for row, metric in enumerate(metrics):
        base_lengths, base_values = base.points(metric)
        reference = dict(zip(base_lengths, base_values))
        ratios = []
        for column, (family, members) in enumerate(parts):
            ax = axes[row, column]
            for s in members:
                lengths, values = s.points(metric)
                shared = [(n, v / reference[n]) for n, v in zip(lengths, values) if n in reference and reference[n] > 0]
                if not shared:
                    continue
                xs, ys = zip(*shared)
                style = styles[s.key.variant]
                ax.plot(xs, ys, label=s.key.variant, markersize=6, linewidth=1.6, **style)
                ratios.extend(ys)
            ax.axhline(1.0, color="0.3", linewidth=0.8)
            ax.set_xscale("log")
            _format_log_x(ax, list(reference))
            ax.grid(True, alpha=0.3)
            if row == 0 and family:
                ax.set_title(family, fontsize=10)
            if row == len(metrics) - 1:
                ax.set_xlabel("sequence length L")
            if column == 0:
                ax.set_ylabel(f"{METRIC_NAMES.get(metric, metric)} ÷ {baseline}'s")
        if ratios and max(ratios) / max(min(ratios), 1e-12) > 20:
            axes[row, 0].set_yscale("log")
            axes[row, 0].yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    fig.suptitle(f"Ratio to {baseline} (unitless; 1 = the same as {baseline})\n{title}", fontsize=11)
    _legend(fig, group, None)
    return fig


def breakdown_lengths(group: list[Series]) -> list[int]:
    """Up to three lengths to break down: the shortest, the longest and one between."""
    lengths = sorted({int(n) for s in group for n in s.ok["seq_len"]} | {n for s in group for n in s.oom_lengths[:1]})
    if len(lengths) <= 3:
        return lengths
    return [lengths[0], lengths[len(lengths) // 2], lengths[-1]]


def breakdown_figure(group: list[Series], title: str) -> Figure:
    """Where the tensor footprint goes: each variant's parts as shares of its total (100% bars),
    the total written beside the bar, one panel per length."""
    ordered = sorted(group, key=lambda s: (_family_rank(s.family), _model_order(group).index(s.key.model), s.key.attention))
    lengths = breakdown_lengths(ordered)
    mode = ordered[0].key.mode
    fig = Figure(figsize=(3.6 * len(lengths) + 2.4, 0.32 * len(ordered) + 1.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(lengths), sharey=True, squeeze=False)).ravel()
    positions = np.arange(len(ordered))[::-1]
    for ax, length in zip(axes, lengths):
        for position, s in zip(positions, ordered):
            row = s.ok[s.ok["seq_len"] == length]
            if row.empty:
                status = "OOM" if length in s.oom_lengths else ("error" if length in s.error_lengths else
                                                                 ("skipped" if length in s.skipped_lengths else "-"))
                ax.text(0.02, position, status, va="center", fontsize=7.5, color="0.3")
                continue
            parts = {column: float(pd.to_numeric(row[column], errors="coerce").iloc[0]) if column in row else math.nan
                     for column in BREAKDOWN_PARTS}
            total = sum(v for v in parts.values() if np.isfinite(v))
            if total <= 0:
                ax.text(0.02, position, "no breakdown", va="center", fontsize=7.5, color="0.3")
                continue
            left = 0.0
            for column, value in parts.items():
                share = value / total if np.isfinite(value) else 0.0
                ax.barh(position, share, left=left, height=0.72, color=BREAKDOWN_PARTS[column][1],
                        label=f"_{column} {s.key.variant}")
                left += share
            ax.text(1.02, position, format_memory(total), va="center", ha="left", fontsize=7.5,
                    transform=blended_transform_factory(ax.transAxes, ax.transData), clip_on=False)
        ax.set_xlim(0, 1)
        ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "25%", "50%", "75%", "100%"])
        ax.set_title(f"L = {length}", fontsize=10, loc="left")
        ax.set_xlabel("share of the tensor footprint (total at right)", fontsize=8)
        ax.grid(True, axis="x", alpha=0.3)
        # Families apart by a thin line.
        for position, (above, below) in zip(positions[1:], zip(ordered, ordered[1:])):
            if above.family != below.family:
                ax.axhline(position + 0.5, color="0.5", linewidth=0.6)
    axes[0].set_yticks(positions, [s.key.variant for s in ordered], fontsize=8)
    axes[0].set_ylim(-0.6, len(ordered) - 0.4)
    activations = "activations (saved for backward)" if mode == "train" else "activations (peak of live intermediates)"
    # Only the parts the step has: inference keeps no gradients or optimizer state.
    present = [column for column in BREAKDOWN_PARTS
               if any(pd.to_numeric(s.ok.get(column, pd.Series(dtype=float)), errors="coerce").fillna(0).gt(0).any()
                      for s in ordered)]
    handles = [Patch(color=BREAKDOWN_PARTS[column][1]) for column in present]
    names = [BREAKDOWN_PARTS[column][0] if column != "activations_mib" else activations for column in present]
    fig.legend(handles, names, loc="outside right upper", fontsize=8, frameon=False, title="part", title_fontsize=8)
    fig.suptitle(f"Where the tensor footprint goes (device-independent, {mode})\n{title}", fontsize=11)
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
    """Every figure of a results table, by file stem: per panel, time and memory, the memory
    breakdown, and ratios to the baseline."""
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
        if any(len(s.points("tensor_footprint_mib")[0]) for s in group):
            figures[f"{name}-memory_breakdown"] = breakdown_figure(group, title)
        if chosen is not None:
            figures[f"{name}-ratio-{_slug(chosen)}"] = ratio_figure(group, metrics[:2], chosen, title)
    return figures


def save_figure(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Writes ``name``.png and ``name``.svg into ``out_dir``; the SVG has no date and fixed ids."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context({"svg.hashsalt": SVG_HASH_SALT}):
        for fmt in FIGURE_FORMATS:
            path = out_dir / f"{name}.{fmt}"
            if fmt == "svg":
                fig.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None})
            else:
                fig.savefig(path, format=fmt, dpi=130, bbox_inches="tight")
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
