"""Two runs of the same points compared: per point, the candidate's time and memory over the
baseline's, with an interval from the raw samples, and whether the point changed.

Time is the ratio of median device times; its interval is a percentile bootstrap over the raw step
times of both runs, each resampled on its own. The interval covers the noise of the repetitions
inside each run, not the drift between two runs (another process, another hour of the same GPU:
1 to 3% on the H200), so a change is marked only when the interval excludes 1 *and* the ratio lies
beyond a threshold. Memory is measured once per point and is deterministic up to the allocator's
choices: its change is marked by the threshold alone.
"""
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from profiler.results.record import PointRecord
from profiler.results.schema import PointSpec, memory_metric

DEFAULT_THRESHOLD = 0.05  # a change smaller than 5% is not marked, however significant
CONFIDENCE = 0.95
N_RESAMPLES = 2000
SLOWER, FASTER, MORE_MEMORY, LESS_MEMORY = "slower", "faster", "more memory", "less memory"


@dataclass(frozen=True)
class PointComparison:
    spec: PointSpec
    family: str
    baseline_ms: float
    candidate_ms: float
    time_ratio: float  # candidate / baseline median device time
    time_ci: tuple[float, float]  # NaN where a run kept fewer than two samples of the point
    memory_metric: str
    baseline_mib: float
    candidate_mib: float
    memory_ratio: float
    time_change: str  # SLOWER, FASTER or ""
    memory_change: str  # MORE_MEMORY, LESS_MEMORY or ""

    @property
    def significant(self) -> bool:
        """The time interval excludes 1: the repetitions of the two runs differ."""
        return _excludes_one(self.time_ci)

    @property
    def changed(self) -> bool:
        return bool(self.time_change or self.memory_change)

    def worse_than(self, limit: float) -> bool:
        """Time significantly up by more than ``limit`` (a fraction), or memory up by more."""
        slower = self.significant and self.time_ratio > 1.0 + limit
        return slower or (math.isfinite(self.memory_ratio) and self.memory_ratio > 1.0 + limit)


@dataclass
class Comparison:
    points: list[PointComparison]
    threshold: float
    confidence: float
    only_baseline: list[PointSpec] = field(default_factory=list)
    only_candidate: list[PointSpec] = field(default_factory=list)
    not_ok: list[tuple[PointSpec, str, str]] = field(default_factory=list)  # (point, baseline status, candidate's)
    # The median of the points' time ratios and its interval, a bootstrap over the points: how far
    # the run as a whole moved. NaN for fewer than three points.
    run_time_ratio: float = math.nan
    run_time_ci: tuple[float, float] = (math.nan, math.nan)

    @property
    def run_change(self) -> str:
        """SLOWER or FASTER where the points moved together beyond the threshold, else ''. Points that
        all move together say more about the host or the GPU's clocks (another hour, another
        machine) than about each model."""
        return _change(self.run_time_ratio, self.threshold, SLOWER, FASTER) if _excludes_one(self.run_time_ci) else ""

    def count(self, change: str) -> int:
        return sum(change in (p.time_change, p.memory_change) for p in self.points)

    @property
    def unchanged(self) -> list[PointComparison]:
        return [p for p in self.points if not p.changed]

    def worse(self, limit: float) -> list[PointComparison]:
        return [p for p in self.points if p.worse_than(limit)]

    def frame(self) -> pd.DataFrame:
        """One row per compared point: its knobs, both values, the ratios, the interval, the changes."""
        rows = []
        for p in self.points:
            rows.append({
                **p.spec.as_dict(), "family": p.family,
                "baseline_ms": p.baseline_ms, "candidate_ms": p.candidate_ms, "time_ratio": p.time_ratio,
                "time_ratio_ci_low": p.time_ci[0], "time_ratio_ci_high": p.time_ci[1], "significant": p.significant,
                "memory_metric": p.memory_metric, "baseline_mib": p.baseline_mib, "candidate_mib": p.candidate_mib,
                "memory_ratio": p.memory_ratio, "time_change": p.time_change, "memory_change": p.memory_change,
            })
        return pd.DataFrame(rows)


def _excludes_one(interval: tuple[float, float]) -> bool:
    low, high = interval
    return math.isfinite(low) and math.isfinite(high) and (low > 1.0 or high < 1.0)


def _change(ratio: float, threshold: float, up: str, down: str) -> str:
    if not math.isfinite(ratio):
        return ""
    return up if ratio > 1.0 + threshold else down if ratio < 1.0 - threshold else ""


def ratio_interval(baseline, candidate, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                   seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of median(candidate) / median(baseline), each sample resampled on
    its own; NaN where either has fewer than two values."""
    baseline, candidate = np.asarray(baseline, dtype=float), np.asarray(candidate, dtype=float)
    if len(baseline) < 2 or len(candidate) < 2:
        return math.nan, math.nan

    def ratio_of_medians(base, cand, axis):
        return np.median(cand, axis=axis) / np.median(base, axis=axis)

    result = stats.bootstrap((baseline, candidate), ratio_of_medians, n_resamples=n_resamples, vectorized=True,
                             confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def median_interval_over_points(ratios, confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                                seed: int = 0) -> tuple[float, tuple[float, float]]:
    """The median of ``ratios`` (one per point) and its percentile-bootstrap interval, the points
    resampled; NaN for fewer than three."""
    ratios = np.asarray([r for r in ratios if math.isfinite(r)], dtype=float)
    if len(ratios) < 3:
        return math.nan, (math.nan, math.nan)
    result = stats.bootstrap((ratios,), lambda r, axis: np.median(r, axis=axis), n_resamples=n_resamples,
                             vectorized=True, confidence_level=confidence, method="percentile",
                             rng=np.random.default_rng(seed))
    return float(np.median(ratios)), (float(result.confidence_interval.low), float(result.confidence_interval.high))


def _records(frame: pd.DataFrame) -> dict[PointSpec, tuple[PointRecord, dict]]:
    # A row seen twice (a hand-edited file) counts once, the later one.
    return {record.spec: (record, row) for row in frame.to_dict("records") for record in [PointRecord.from_row(row)]}


def _number(row: dict, column: str) -> float:
    value = pd.to_numeric(pd.Series([row.get(column)]), errors="coerce").iloc[0]
    return float(value) if pd.notna(value) else math.nan


def _median_ms(record: PointRecord, row: dict) -> float:
    return float(np.median(record.step_times_ms)) if record.step_times_ms else _number(row, "time_median_ms")


def compare_runs(baseline: pd.DataFrame, candidate: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD,
                 confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES, seed: int = 0) -> Comparison:
    """Every point both runs measured (ok in both), in the baseline's order, and those they do not share."""
    memory = memory_metric(pd.concat([baseline, candidate], ignore_index=True))
    base, cand = _records(baseline), _records(candidate)
    comparison = Comparison([], threshold, confidence,
                            only_baseline=[s for s in base if s not in cand],
                            only_candidate=[s for s in cand if s not in base])
    for spec, (base_record, base_row) in base.items():
        if spec not in cand:
            continue
        cand_record, cand_row = cand[spec]
        if base_record.status != "ok" or cand_record.status != "ok":
            comparison.not_ok.append((spec, base_record.status, cand_record.status))
            continue
        baseline_ms, candidate_ms = _median_ms(base_record, base_row), _median_ms(cand_record, cand_row)
        time_ratio = candidate_ms / baseline_ms if baseline_ms > 0 else math.nan
        time_ci = ratio_interval(base_record.step_times_ms, cand_record.step_times_ms, confidence, n_resamples, seed)
        baseline_mib, candidate_mib = _number(base_row, memory), _number(cand_row, memory)
        memory_ratio = candidate_mib / baseline_mib if baseline_mib > 0 else math.nan
        comparison.points.append(PointComparison(
            spec=spec, family=str(base_row.get("family") or ""), baseline_ms=baseline_ms, candidate_ms=candidate_ms,
            time_ratio=time_ratio, time_ci=time_ci, memory_metric=memory, baseline_mib=baseline_mib,
            candidate_mib=candidate_mib, memory_ratio=memory_ratio,
            time_change=_change(time_ratio, threshold, SLOWER, FASTER) if _excludes_one(time_ci) else "",
            memory_change=_change(memory_ratio, threshold, MORE_MEMORY, LESS_MEMORY),
        ))
    comparison.run_time_ratio, comparison.run_time_ci = median_interval_over_points(
        [p.time_ratio for p in comparison.points], confidence, n_resamples, seed)
    return comparison
