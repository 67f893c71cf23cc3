"""A measured point as a typed record, and its raw samples as the CSV keeps them.

The CSV row is the record's serialisation: ``PointRecord.from_row`` reads a row back into the same
record, raw samples as numbers, so nothing after the store parses sample text.
"""
import math
from dataclasses import dataclass, field
from typing import Mapping

from profiler.results.schema import PointSpec

SAMPLE_COLUMNS = ("step_times_ms", "wall_times_ms")


def samples_text(samples_ms) -> str:
    """Raw samples as one CSV cell: space-separated, 4 decimals (0.1 microsecond)."""
    return " ".join(f"{s:.4f}" for s in samples_ms)


def parse_samples(text) -> tuple[float, ...]:
    if not isinstance(text, str) or not text.strip():
        return ()
    return tuple(float(v) for v in text.split())


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


@dataclass(frozen=True)
class PointRecord:
    """What was measured (``spec``), how it ended, every other column's value, and the raw samples."""

    spec: PointSpec
    status: str
    values: Mapping[str, object] = field(default_factory=dict)
    step_times_ms: tuple[float, ...] = ()
    wall_times_ms: tuple[float, ...] = ()

    @classmethod
    def from_row(cls, row: Mapping) -> "PointRecord":
        spec = PointSpec(
            model=str(row["model"]), seq_len=int(row["seq_len"]), mode=str(row["mode"]),
            batch_size=int(row["batch_size"]), profile=str(row["profile"]), attention=str(row["attention"]),
            device=str(row["device"]), seed=int(row["seed"]), dtype=str(row.get("dtype", "float32")),
            execution=str(row.get("execution", "eager")),
        )
        skip = set(spec.as_dict()) | {"status", *SAMPLE_COLUMNS}
        values = {k: v for k, v in row.items() if k not in skip and _present(v)}
        return cls(spec, str(row["status"]), values, parse_samples(row.get("step_times_ms")),
                   parse_samples(row.get("wall_times_ms")))

    def to_row(self) -> dict:
        row = {**self.spec.as_dict(), "status": self.status, **self.values}
        row["step_times_ms"] = samples_text(self.step_times_ms)
        row["wall_times_ms"] = samples_text(self.wall_times_ms)
        return row
