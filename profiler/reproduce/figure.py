"""The comparison drawn the way the paper presents its numbers: lines over L or bars per length."""
import numpy as np
from matplotlib.figure import Figure

from profiler.present.plots import METRIC_NAMES, model_colour
from profiler.reproduce.compare import MODE_NAMES, Selection, measured_values
from profiler.reproduce.setups import Setup
from profiler.results.schema import NVML_FIRST, memory_metric
from profiler.units import MIB_PER_GIB


def _numeric(values: dict[int, float | str]) -> tuple[list[int], list[float]]:
    points = sorted((l, v) for l, v in values.items() if isinstance(v, float))
    return [l for l, _ in points], [v for _, v in points]


def _line_panel(ax, setup: Setup, measured: dict, published: dict, ylabel: str) -> None:
    """Measured as solid lines with filled markers, published as hollow markers on dashed lines."""
    for model in setup.models:
        colour = model_colour(model)
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
        colour = model_colour(model)
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


RATIO_SPAN_FOR_LOG = 10.0


def _ratio_panel(ax, setup: Setup, time: dict) -> None:
    """First model's time over the second's: measured as a line, the paper's as hollow markers with
    its stated range as a bar."""
    first, second = setup.models
    pairs = sorted((l, v / time[second][l]) for l, v in time[first].items()
                   if isinstance(v, float) and isinstance(time[second].get(l), float) and time[second][l])
    colour = model_colour(second)
    ax.plot([l for l, _ in pairs], [r for _, r in pairs], color=colour, marker="o", linestyle="-", label="measured")
    for length, (low, high) in sorted(setup.time_ratio.items()):
        middle = (low + high) / 2
        ax.errorbar([length], [middle], yerr=[[middle - low], [high - middle]], color=colour, marker="s",
                    markerfacecolor="none", markersize=8, capsize=6, linestyle="none",
                    label=f"paper ({setup.gpu})" if length == min(setup.time_ratio) else None)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("sequence length")
    ax.set_ylabel(f"{setup.labels[first]} time / {setup.labels[second]} time")
    shown = [r for _, r in pairs if r > 0] + [bound for span in setup.time_ratio.values() for bound in span]
    if shown and max(shown) / min(shown) > RATIO_SPAN_FOR_LOG:
        # Measured and published a decade or more apart: on a linear axis the smaller reads as zero.
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def _relative(values: dict[int, float | str | None]) -> dict[int, float | str | None]:
    """Each value over the value at the shortest length that has one: the growth, unitless."""
    numeric = sorted(length for length, value in values.items() if isinstance(value, float))
    if not numeric:
        return dict(values)
    base = values[numeric[0]]
    return {length: value / base if isinstance(value, float) else value for length, value in values.items()}


def reproduce_figure(setup: Setup, selection: Selection) -> Figure:
    """The paper's figure with the measurements beside its numbers. Measured on the CPU, both are
    drawn as growth from their shortest length, since only shapes and ratios compare."""
    rows = selection.rows
    metric = memory_metric(rows, NVML_FIRST)
    names = ", ".join(sorted(rows["device_name"].dropna().astype(str).unique())) or "unknown device"
    batch = ", ".join(map(str, sorted(rows["batch_size"].astype(int).unique())))
    profile = ", ".join(sorted(rows["profile"].astype(str).unique()))
    title = (f"{setup.name} ({setup.source}): measured on {names} (batch {batch}, {profile}, {metric}) "
             f"vs published ({setup.gpu})")
    growth = (rows["device"] != "cuda").any()
    if growth:
        title += ("\nmeasured on the CPU: absolute numbers not comparable with the paper's; both drawn as growth "
                  "from their shortest length")
    elif not selection.comparable:
        title += f"\n{selection.why_not}: absolute numbers not comparable with the paper's; compare shapes and ratios"

    def shown(values: dict) -> dict:
        return {model: _relative(v) for model, v in values.items()} if growth else values

    def label(text: str) -> str:
        return f"{text.split(' (')[0]} ÷ its value at the shortest length" if growth else text

    step = MODE_NAMES[setup.mode]
    if setup.memory_unit == "GB":
        fig = Figure(figsize=(9, 5), layout="constrained")
        ax = fig.subplots()
        memory = {m: measured_values(rows, m, metric, 1.0 / MIB_PER_GIB) for m in setup.models}
        _bar_panel(ax, setup, shown(memory), shown(setup.memory),
                   label(f"{step} {METRIC_NAMES[metric]} (GiB; the paper's GB)"))
    else:
        panels = 3 if setup.time_ratio else 2
        fig = Figure(figsize=(6 * panels, 5), layout="constrained")
        memory_ax, time_ax, *ratio_ax = fig.subplots(1, panels)
        memory = {m: measured_values(rows, m, metric, 1.0) for m in setup.models}
        unit = "MiB; the paper's MB" if setup.memory else "MiB"
        _line_panel(memory_ax, setup, shown(memory), shown(setup.memory), label(f"{METRIC_NAMES[metric]} ({unit})"))
        time = {m: measured_values(rows, m, "time_median_ms", 1.0) for m in setup.models}
        published_ms = {m: {n: v * 1000.0 for n, v in values.items()} for m, values in setup.time_s.items()}
        _line_panel(time_ax, setup, shown(time), shown(published_ms), label(f"time per {step} step (ms)"))
        memory_ax.set_title("memory", fontsize=10)
        time_ax.set_title("runtime", fontsize=10)
        if ratio_ax:
            _ratio_panel(ratio_ax[0], setup, time)
            ratio_ax[0].set_title(f"speed-up of {setup.labels[setup.models[1]]}", fontsize=10)
    fig.suptitle(title, fontsize=10)
    return fig
