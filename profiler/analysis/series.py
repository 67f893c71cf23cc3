"""The series of a results table: one model variant's rows over lengths, every other knob fixed."""
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from profiler.analysis.fit import finite_points
from profiler.results.record import parse_samples
from profiler.results.schema import SERIES_FIELDS, SeriesKey


@dataclass
class Series:
    """One model variant's rows over lengths: the measured points and where measuring stopped."""

    key: SeriesKey
    family: str
    device_name: str
    ok: pd.DataFrame  # status ok, sorted by length
    oom_lengths: list[int] = field(default_factory=list)
    error_lengths: list[int] = field(default_factory=list)
    skipped_lengths: list[int] = field(default_factory=list)

    def points(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """Lengths and finite values of ``metric`` among the ok rows."""
        if metric not in self.ok:
            return np.array([]), np.array([])
        return finite_points(self.ok["seq_len"], pd.to_numeric(self.ok[metric], errors="coerce"))

    @property
    def launch_bound_lengths(self) -> list[int]:
        if "launch_bound" not in self.ok:
            return []
        flagged = self.ok["launch_bound"].map(lambda v: str(v).lower() == "true")
        return sorted(int(v) for v in self.ok.loc[flagged, "seq_len"])

    def step_samples(self) -> dict[int, np.ndarray]:
        """The raw device-time samples (ms) of each ok length, where the row kept them."""
        samples = {}
        for length, text in zip(self.ok["seq_len"], self.ok.get("step_times_ms", pd.Series(dtype=str))):
            values = parse_samples(text)
            if values:
                samples[int(length)] = np.array(values)
        return samples


def _text(value, default: str = "") -> str:
    return default if pd.isna(value) else str(value)


def series_of(frame: pd.DataFrame) -> list[Series]:
    """Splits a results table into series, in the order the variants first appear."""
    frame = frame.copy()
    for column in ("attention", "profile", "device", "dtype", "execution"):
        frame[column] = frame[column].map(lambda v: _text(v, "?"))
    frame["batch_size"] = frame["batch_size"].astype(int)
    frame["seq_len"] = frame["seq_len"].astype(int)
    series = []
    for values, rows in frame.groupby(list(SERIES_FIELDS), sort=False):
        key = SeriesKey(*values)
        rows = rows.sort_values("seq_len")
        by_status = {status: sorted(rows.loc[rows["status"] == status, "seq_len"].astype(int)) for status in ("oom", "error", "skipped")}
        family = _text(rows["family"].dropna().iloc[0] if "family" in rows and rows["family"].notna().any() else None, "?")
        names = rows["device_name"].dropna() if "device_name" in rows else pd.Series(dtype=str)
        series.append(
            Series(
                key=key,
                family=family,
                device_name=str(names.iloc[-1]) if len(names) else key.device,
                ok=rows[rows["status"] == "ok"].reset_index(drop=True),
                oom_lengths=by_status["oom"],
                error_lengths=by_status["error"],
                skipped_lengths=by_status["skipped"],
            )
        )
    return series
