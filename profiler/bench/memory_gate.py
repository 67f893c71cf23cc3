"""The memory gate: each benchmark's peak memory against a saved baseline, within a tolerance.

pytest-benchmark compares times between runs but not memory. A baseline is a JSON file that maps a
benchmark's label ("sasrec[naive] train L=200") to the device it was measured on and its memory
figures in MiB; a later run fails a benchmark whose figure lies more than the tolerance above the
baseline's. Only growth fails: memory that drops is an improvement, reported so the baseline can be
saved again.

File format::

    {"format": "seqprof-memory-baseline/1",
     "entries": {"<label>": {"device_name": "...", "peak_allocated_mib": 409.3}}}
"""
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from profiler.results.files import atomic_write_text
from profiler.units import format_mib

FORMAT = "seqprof-memory-baseline/1"
DEFAULT_TOLERANCE_PCT = 10.0
# The figures the gate compares, and how a message names them. NVML's figure is left out: it
# includes the CUDA context and library workspaces, which move with the driver, not with the code.
GATED_METRICS = {
    "peak_allocated_mib": "peak allocated",
    "tensor_footprint_mib": "tensor footprint",
}


class BaselineFileError(Exception):
    """A baseline file that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Entry:
    """One benchmark's memory figures (MiB) and the device that measured them."""

    device_name: str
    metrics_mib: dict[str, float]

    def as_dict(self) -> dict:
        return {"device_name": self.device_name, **self.metrics_mib}


@dataclass(frozen=True)
class MemoryChange:
    label: str
    metric: str
    measured_mib: float
    baseline_mib: float
    tolerance_pct: float

    @property
    def change_pct(self) -> float:
        return (self.measured_mib / self.baseline_mib - 1.0) * 100.0

    @property
    def message(self) -> str:
        direction = "above" if self.change_pct >= 0 else "below"
        return (
            f"{self.label}: {GATED_METRICS[self.metric]} {format_mib(self.measured_mib)} MiB is {abs(self.change_pct):.1f}% "
            f"{direction} the baseline {format_mib(self.baseline_mib)} MiB (tolerance {self.tolerance_pct:g}%)"
        )


@dataclass(frozen=True)
class Comparison:
    """What comparing one benchmark against the baseline found."""

    label: str
    regressions: tuple[MemoryChange, ...] = ()
    improvements: tuple[MemoryChange, ...] = ()  # more than the tolerance below the baseline
    missing: bool = False  # the baseline has no entry for this label
    other_device: str | None = None  # the baseline entry was measured on this other device

    @property
    def failed(self) -> bool:
        return bool(self.regressions) or self.other_device is not None

    @property
    def message(self) -> str:
        if self.other_device is not None:
            return (
                f"{self.label}: the memory baseline was measured on {self.other_device}, not on this device; "
                "save a baseline here first (--memory-baseline-save)"
            )
        return "\n".join(r.message for r in self.regressions)


def _check_entry(path: Path, label, raw) -> Entry:
    if not isinstance(label, str) or not isinstance(raw, dict):
        raise BaselineFileError(f"{path}: entry {label!r} is not an object of memory figures")
    device_name = raw.get("device_name")
    if not isinstance(device_name, str):
        raise BaselineFileError(f"{path}: entry {label!r} has no device_name")
    metrics = {}
    for name, value in raw.items():
        if name == "device_name":
            continue
        if name not in GATED_METRICS:
            raise BaselineFileError(f"{path}: entry {label!r} has unknown figure {name!r}; known: {sorted(GATED_METRICS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise BaselineFileError(f"{path}: entry {label!r} has {name} = {value!r}; expected a positive number of MiB")
        metrics[name] = float(value)
    return Entry(device_name, metrics)


@dataclass(frozen=True)
class MemoryBaseline:
    entries: dict[str, Entry]

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MemoryBaseline":
        path = Path(path)
        if not path.is_file():
            raise BaselineFileError(f"{path}: no such memory baseline; save one first with --memory-baseline-save")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BaselineFileError(f"{path}: not a readable JSON file ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BaselineFileError(f"{path}: not a memory baseline (expected \"format\": \"{FORMAT}\")")
        entries = data.get("entries")
        if not isinstance(entries, dict):
            raise BaselineFileError(f"{path}: \"entries\" must be an object mapping benchmark labels to figures")
        return cls({label: _check_entry(path, label, raw) for label, raw in entries.items()})

    def save(self, path: str | os.PathLike) -> None:
        """Writes the file atomically: a reader sees the old baseline or the new one, never half."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "entries": {label: self.entries[label].as_dict() for label in sorted(self.entries)}}
        atomic_write_text(path, json.dumps(data, indent=1) + "\n")

    def updated(self, measured: dict[str, Entry]) -> "MemoryBaseline":
        """This baseline with the measured entries replacing or adding theirs; others are kept, so
        saving after a run of a subset (``-k sasrec``) leaves the rest of the baseline in place."""
        return MemoryBaseline({**self.entries, **measured})

    def compare(self, label: str, measured: Entry, tolerance_pct: float) -> Comparison:
        if tolerance_pct < 0:
            raise ValueError(f"tolerance must be >= 0 percent, got {tolerance_pct}")
        saved = self.entries.get(label)
        if saved is None:
            return Comparison(label, missing=True)
        if saved.device_name != measured.device_name:
            return Comparison(label, other_device=saved.device_name)
        regressions, improvements = [], []
        for metric, value in measured.metrics_mib.items():
            if metric not in GATED_METRICS or metric not in saved.metrics_mib:
                continue
            finding = MemoryChange(label, metric, value, saved.metrics_mib[metric], tolerance_pct)
            if value > saved.metrics_mib[metric] * (1 + tolerance_pct / 100):
                regressions.append(finding)
            elif value < saved.metrics_mib[metric] * (1 - tolerance_pct / 100):
                improvements.append(finding)
        return Comparison(label, tuple(regressions), tuple(improvements))
