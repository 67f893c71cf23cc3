"""The analysis of a whole results table: every series, every metric's fit, the crossovers."""
import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from profiler.analysis.crossovers import Crossover, all_crossovers
from profiler.analysis.curves import CurveFit, fit_curve
from profiler.analysis.series import Series, series_of
from profiler.results.schema import METRICS


@dataclass
class Analysis:
    series: list[Series]
    fits: list[CurveFit]
    crossovers: list[Crossover]

    def fit(self, variant: str, mode: str, metric: str) -> CurveFit:
        for fit in self.fits:
            if fit.key.variant == variant and fit.key.mode == mode and fit.metric == metric:
                return fit
        raise KeyError(f"no fit of {metric} for {variant} ({mode})")


def achieved_tflops(rows: pd.DataFrame) -> pd.Series:
    """TFLOP/s of each row: the stored figure, else FLOPs per step over the median step time."""
    computed = pd.to_numeric(rows["flops_per_step"], errors="coerce") / (
        pd.to_numeric(rows["time_median_ms"], errors="coerce") * 1e-3
    ) / 1e12
    if "achieved_tflops" in rows:
        return pd.to_numeric(rows["achieved_tflops"], errors="coerce").fillna(computed)
    return computed


def analyse(frame: pd.DataFrame, metrics=METRICS, n_boot: int = 200, seed: int = 0) -> Analysis:
    """Fits every metric of every series that has at least two measured lengths."""
    series = series_of(frame)
    fits = []
    for s in series:
        for metric in metrics:
            lengths, values = s.points(metric)
            if len(np.unique(lengths)) < 2:
                continue
            samples = s.step_samples() if metric == "time_median_ms" else None
            fit = fit_curve(s.key, s.family, metric, lengths, values, samples, n_boot, seed)
            if metric == "time_median_ms" and s.launch_bound_lengths:
                # The fit is of device time; an eager loop at these lengths waits for the host.
                shown = ",".join(map(str, s.launch_bound_lengths))
                fit = dataclasses.replace(fit, flags=(*fit.flags, f"launch-bound at L={shown}: wall time exceeds device time"))
            fits.append(fit)
    return Analysis(series, fits, all_crossovers(fits))
