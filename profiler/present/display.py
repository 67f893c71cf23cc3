"""What a person sees: live progress of a sweep and the summary table at its end."""
import math

import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from profiler.results.schema import KNOB_DEFAULTS, PointSpec, memory_metric, variant_name
from profiler.trackers.timing import CONFIDENCE

STATUS_STYLE = {"ok": "green", "oom": "yellow", "skipped": "dim", "error": "red"}


LAUNCH_MARK, NOISY_MARK = "*", "~"


def _flag(row, column: str) -> bool:
    return str(row.get(column, "")).lower() == "true"


def _marks(row) -> str:
    return (LAUNCH_MARK if _flag(row, "launch_bound") else "") + (NOISY_MARK if _flag(row, "noisy") else "")


def describe_row(row: dict) -> str:
    status = row["status"]
    style = STATUS_STYLE.get(status, "")
    text = f"[{style}]{status:>7}[/{style}]"
    if status == "ok":
        memory = row.get("peak_allocated_mib")
        if memory is None or (isinstance(memory, float) and math.isnan(memory)):
            memory = row["tensor_footprint_mib"]
        spread = row["time_spread"]
        # A width that holds every line's columns in place; a spread past 999% reads the same.
        spread_text = f"{spread:6.1%}" if spread < 9.995 else " >999%"
        text += f"  {row['time_median_ms']:9.2f} ms  {memory:9.1f} MiB  spread {spread_text}"
        if row.get("wall_median_ms") is not None and row.get("time_clock") != "perf-counter":
            text += f"  wall {row['wall_median_ms']:8.2f} ms"
        text += f" {_marks(row)}"
    elif row.get("error"):
        text += f"  {escape(str(row['error']))}"
    return text


class SweepProgress:
    """A progress bar (points done, elapsed, ETA) with one line per finished point above it; the
    lines' columns align when ``label_width`` is the longest label of the sweep's points."""

    def __init__(self, console: Console, label_width: int = 34):
        self.console = console
        self.label_width = label_width
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._task = None

    def __enter__(self) -> "SweepProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def on_start(self, index: int, total: int, point: PointSpec) -> None:
        if self._task is None:
            self._task = self._progress.add_task("", total=total)
        self._progress.update(self._task, description=f"measuring {escape(point.label)}")

    def on_deferred(self, point: PointSpec) -> None:
        self._progress.console.print(f"{escape(point.label)}: out of memory beside other lanes' models; measured "
                                     "again with the GPU alone once the lanes end", soft_wrap=True)

    def on_result(self, index: int, total: int, point: PointSpec, row: dict) -> None:
        # Padded before escaping: rich's escape adds a backslash to "[naive]" that is not printed.
        counter = f"{index + 1:>{len(str(total))}}/{total}"
        label = escape(f"{point.label:<{self.label_width}}")
        self._progress.console.print(f"[{counter}] {label} {describe_row(row)}", soft_wrap=True)
        self._progress.advance(self._task)


def _memory_cell(mib: float) -> str:
    """Whole MiB with separators for a GPU step's sizes (1,081), three digits for the CPU's small ones (5.21)."""
    return f"{mib:,.0f}" if mib >= 100 else f"{mib:.3g}"


def summary_table(frame: pd.DataFrame, title: str) -> Table:
    """Model variant x length: median ms / memory MiB, or the status where no number exists."""
    memory = memory_metric(frame)
    memory_label = "peak alloc MiB" if memory == "peak_allocated_mib" else "tensor footprint MiB"
    table = Table(title=f"{title}\ncells: median device ms / {memory_label}; "
                        f"{LAUNCH_MARK} launch-bound (wall time exceeds it), {NOISY_MARK} noisy (p90/p10 spread > 25%)")
    lengths = sorted(frame["seq_len"].unique())
    table.add_column("model")
    table.add_column("mode")
    for length in lengths:
        table.add_column(f"L={length}", justify="right")
    for (model, attention, dtype, execution, mode), rows in frame.groupby(
        ["model", "attention", "dtype", "execution", "mode"], sort=False
    ):
        by_length = {int(r["seq_len"]): r for _, r in rows.iterrows()}
        cells = []
        for length in lengths:
            row = by_length.get(int(length))
            if row is None:
                cells.append("")
            elif row["status"] == "ok":
                cells.append(f"{row['time_median_ms']:.2f} / {_memory_cell(row[memory])}{_marks(row)}")
            else:
                cells.append(f"[{STATUS_STYLE[row['status']]}]{row['status']}[/]")
        knobs = {"dtype": dtype, "execution": execution}
        name = variant_name(model, attention) + "".join(f" {v}" for k, v in knobs.items() if v != KNOB_DEFAULTS[k])
        table.add_row(escape(name), mode, *cells)
    return table


def outcome_counts(rows: list[dict]) -> str:
    """' (29 ok, 6 error)': the rows' statuses, where any is not ok (an all-ok sweep needs no count)."""
    counts = {status: sum(row.get("status") == status for row in rows) for status in STATUS_STYLE}
    if counts["ok"] == len(rows):
        return ""
    return " (" + ", ".join(f"{n} {status}" for status, n in counts.items() if n) + ")"


# The phases of a point, in the order a worker runs them (the columns of profiler/results/schema.py);
# lanes sharing a GPU wait for its turns outside every phase's clock.
PHASES = {"worker_wait_s": "waiting for workers", "turn_wait_s": "waiting for the GPU",
          "shared_turn_wait_s": "waiting to share it", "prime_s": "priming", "peak_rate_s": "peak rates",
          "build_s": "building", "probe_s": "probes", "compile_s": "compiling", "steps_s": "steps",
          "snapshot_s": "snapshot"}


def phase_breakdown(rows: list[dict]) -> str | None:
    """Where the measured points' wall time went, in seconds: each phase, and the rest (the pipe,
    a first attempt measured again, writing the row). None without measured points."""
    measured = [row for row in rows if row.get("status") == "ok"]
    if not measured:
        return None

    def total(field: str) -> float:
        return sum(float(row[field]) for row in measured if row.get(field) is not None and row[field] == row[field])

    points_s = total("point_wall_s")
    phases = {label: total(field) for field, label in PHASES.items()}
    rest_s = max(points_s - sum(phases.values()), 0.0)
    parts = " + ".join(f"{label} {seconds:.1f}" for label, seconds in phases.items() if seconds > 0)
    return f"time in {len(measured)} ok points: {points_s:.1f} s = {parts} + other {rest_s:.1f} s " \
           f"(timed steps alone {total('measured_wall_s'):.1f} s)"


def precision_summary(rows: list[dict], target_ci: float) -> str | None:
    """How well the ok points' medians are known: how many reached ``target_ci`` at the interval's
    confidence, and for the rest (the time budget or the most repetitions stopped them first) the
    lowest confidence and the widest interval. None without ok points that record a confidence."""
    timed = [row for row in rows if row.get("status") == "ok" and _number(row.get("time_ci_confidence"))]
    if not timed:
        return None
    short = [row for row in timed
             if row["time_ci_confidence"] < CONFIDENCE or row["time_ci_rel"] > target_ci]
    widths = sorted(float(row["time_ci_rel"]) for row in timed)
    line = (f"timing: {len(timed) - len(short)} of {len(timed)} ok points reached ±{target_ci:.1%} at "
            f"{CONFIDENCE:.0%} confidence (median ±{widths[len(widths) // 2]:.2%})")
    if short:
        lowest = min(float(row["time_ci_confidence"]) for row in short)
        widest = max(float(row["time_ci_rel"]) for row in short)
        line += (f"; {len(short)} stopped by --time-budget-s or --max-reps first "
                 f"(confidence down to {lowest:.0%}, interval up to ±{widest:.1%})")
    return line


def _number(value) -> bool:
    return isinstance(value, (int, float)) and value == value
