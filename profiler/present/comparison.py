"""The table of two runs compared (profiler.analysis.compare), built once and rendered for the
terminal or as Markdown like the report's tables."""
import math

from profiler.analysis.compare import Comparison, PointComparison
from profiler.present.report import ReportTable
from profiler.results.schema import METRIC_LABELS
from profiler.units import format_fixed

CHANGED_MARK = "!"


def _percent(ratio: float) -> str:
    return "-" if not math.isfinite(ratio) else f"{ratio - 1:+.1%}"


def _time_cell(point: PointComparison) -> str:
    low, high = point.time_ci
    interval = f" [{low:.3f}, {high:.3f}]" if math.isfinite(low) else " [no samples]"
    return f"{point.time_ratio:.3f}{interval}"


def _variant(point: PointComparison) -> str:
    """The point's label without the mode and length, which have columns: the variant and any
    non-default knob."""
    spec = point.spec
    return spec.label.removesuffix(f" {spec.mode} L={spec.seq_len}")


def _change_cell(point: PointComparison) -> str:
    changes = []
    if point.time_change:
        changes.append(f"{point.time_change} {_percent(point.time_ratio)}")
    if point.memory_change:
        changes.append(f"{point.memory_change} {_percent(point.memory_ratio)}")
    return f"{CHANGED_MARK} " + ", ".join(changes) if changes else ""


def comparison_table(comparison: Comparison, baseline: str, candidate: str) -> ReportTable:
    """One row per common point: both times, their ratio with its interval, both memories and theirs."""
    memory = comparison.points[0].memory_metric if comparison.points else "peak_allocated_mib"
    level = f"{comparison.confidence:.0%}"
    table = ReportTable(
        title=f"{candidate} (candidate) against {baseline} (baseline)",
        columns=["model", "mode", "batch", "L", "baseline ms", "candidate ms", f"time ratio [{level} CI]",
                 "baseline MiB", "candidate MiB", "memory ratio", "change"],
        right={"batch", "L", "baseline ms", "candidate ms", "baseline MiB", "candidate MiB", "memory ratio"},
    )
    for point in comparison.points:
        table.rows.append([
            _variant(point), point.spec.mode, str(point.spec.batch_size), str(point.spec.seq_len),
            format_fixed(point.baseline_ms, 2), format_fixed(point.candidate_ms, 2), _time_cell(point),
            format_fixed(point.baseline_mib, 1), format_fixed(point.candidate_mib, 1),
            "-" if not math.isfinite(point.memory_ratio) else f"{point.memory_ratio:.3f}", _change_cell(point),
        ])
    table.notes = [
        f"time ratio: candidate / baseline median device time; interval: percentile bootstrap over both runs' "
        f"raw step times (the repetitions' noise, not the drift between runs); memory: "
        f"{METRIC_LABELS.get(memory, memory)}",
        f"{CHANGED_MARK} marks a change beyond {comparison.threshold:.0%}: time whose interval excludes 1, memory "
        "by the ratio alone",
    ]
    return table


def _points(count: int) -> str:
    return f"{count} point" + ("" if count == 1 else "s")


def summary_lines(comparison: Comparison) -> list[str]:
    """The counts: points compared, changed by kind, unchanged; points the runs do not share."""
    total = len(comparison.points)
    unchanged = len(comparison.unchanged)
    share = f" ({unchanged / total:.0%})" if total else ""
    lines = [
        f"{_points(total)} in common: {comparison.count('slower')} slower, {comparison.count('faster')} faster, "
        f"{comparison.count('more memory')} more memory, {comparison.count('less memory')} less memory; "
        f"{unchanged}{share} without a change beyond {comparison.threshold:.0%}",
    ]
    if math.isfinite(comparison.run_time_ratio):
        low, high = comparison.run_time_ci
        line = (f"the run as a whole: median time ratio {comparison.run_time_ratio:.3f} [{low:.3f}, {high:.3f}] "
                "(bootstrap over the points)")
        if comparison.run_change:
            line += (f", {comparison.run_change} beyond {comparison.threshold:.0%}: points that move together point "
                     "at the host or the GPU's clocks, not at each model")
        lines.append(line)
    if comparison.not_ok:
        shown = ", ".join(f"{spec.label} ({b} / {c})" for spec, b, c in comparison.not_ok[:5])
        more = f" and {len(comparison.not_ok) - 5} more" if len(comparison.not_ok) > 5 else ""
        lines.append(f"{_points(len(comparison.not_ok))} of both not ok in one run or both, not compared: {shown}{more}")
    for what, specs in (("baseline", comparison.only_baseline), ("candidate", comparison.only_candidate)):
        if specs:
            shown = ", ".join(spec.label for spec in specs[:5])
            more = f" and {len(specs) - 5} more" if len(specs) > 5 else ""
            lines.append(f"{_points(len(specs))} only in the {what}: {shown}{more}")
    return lines
