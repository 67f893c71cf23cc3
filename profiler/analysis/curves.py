"""The fit of one series' metric with its uncertainty and what makes the curve suspect.

The uncertainty comes from refitting resampled data: the raw step times for time, the fit's
residuals over the points for the deterministic metrics. Time fits start where time starts to
grow: below that, a step is bound by launch overheads, and a flat start would bend a linear curve
into a quadratic one.
"""
import math
from dataclasses import dataclass

import numpy as np

from profiler.analysis.fit import (
    TERM_NAMES,
    VERDICTS,
    evaluate,
    exponent_at,
    finite_points,
    fit_many,
    local_slopes,
    relative_weights,
    term_shares,
    verdict_from_coefs,
    verdicts_of,
)
from profiler.results.schema import MEMORY_METRICS, SeriesKey

# Two lengths fit any curve of one growing term: a verdict needs a third to test it against.
MIN_VERDICT_LENGTHS = 3
NO_VERDICT = "n/a"
# A memory value may dip by this fraction as L grows (allocator rounding) before it is flagged.
MEMORY_DIP = 0.02
# Time that grows by less than this factor over a tenfold length range is flagged as flat.
FLAT_TIME_FACTOR = 1.15
# Short steps are bound by kernel launches and Python overhead, not by L: leading lengths where time
# grows with a log-log slope below this are the overhead floor, and the time fit starts after them.
OVERHEAD_SLOPE = 0.3
# A time fit whose constant term still carries this share at the largest length is overhead-bound.
OVERHEAD_SHARE = 0.5


@dataclass(frozen=True)
class CurveFit:
    key: SeriesKey
    family: str
    metric: str
    lengths: tuple[float, ...]
    values: tuple[float, ...]
    coefs: tuple[float, ...]  # c0..c3, y in the metric's unit, L in items
    verdict: str
    shares: tuple[float, ...]  # each term's share of y at the largest length
    exponent: float  # d ln y / d ln L of the fit at the largest length
    exponent_ci: tuple[float, float]  # 90% bootstrap interval
    verdict_support: float  # share of bootstrap refits that reach the same verdict
    slopes: tuple[float, ...]  # measured log-log slopes between neighbouring lengths
    flags: tuple[str, ...]

    @property
    def dominant_order(self) -> int:
        return int(np.argmax(self.shares))

    @property
    def dominant_term(self) -> str:
        return TERM_NAMES[self.dominant_order]

    @property
    def dominant_share(self) -> float:
        return float(self.shares[self.dominant_order])


def resample_values(lengths, values, fitted, samples: dict[int, np.ndarray] | None, n_boot: int, rng) -> np.ndarray:
    """``n_boot`` resampled versions (n_boot, n) of the values.

    With raw step times, each point's median is recomputed from its resampled repetitions; without
    them, the fit's relative residuals are resampled over the points and put back on the fit.
    """
    if samples:
        resampled = np.tile(values, (n_boot, 1))
        for i, length in enumerate(lengths):
            raw = samples.get(int(length))
            if raw is not None and len(raw):
                resampled[:, i] = np.median(rng.choice(raw, size=(n_boot, len(raw))), axis=1)
        return resampled
    with np.errstate(divide="ignore", invalid="ignore"):
        residuals = np.where(fitted > 0, (values - fitted) / fitted, 0.0)
    return fitted * (1 + rng.choice(residuals, size=(n_boot, len(values))))


def plausibility_flags(metric: str, lengths, values) -> list[str]:
    """What makes a curve suspect: memory or FLOPs that fall as L grows, time that does not grow."""
    flags = []
    if len(lengths) < 3:
        flags.append(f"only {len(lengths)} lengths: no verdict (one needs {MIN_VERDICT_LENGTHS})")
    if metric in MEMORY_METRICS or metric == "flops_per_step":
        for i in range(1, len(values)):
            if values[i] < values[i - 1] * (1 - MEMORY_DIP):
                flags.append(
                    f"non-monotonic: {values[i - 1]:.4g} at L={lengths[i - 1]:.0f} -> {values[i]:.4g} at L={lengths[i]:.0f}"
                )
                break
    if metric.startswith("time") and len(lengths) >= 2:
        for i in range(len(lengths)):
            far = lengths >= 10 * lengths[i]
            if far.any() and values[far].max() < FLAT_TIME_FACTOR * values[i]:
                j = int(np.flatnonzero(far)[-1])
                flags.append(
                    f"flat time: {values[i]:.3g} -> {values[j]:.3g} ms from L={lengths[i]:.0f} to L={lengths[j]:.0f}"
                )
                break
    return flags


def overhead_floor(lengths, values, keep: int = 3) -> int:
    """How many leading points are on the overhead floor (time that does not grow with L)."""
    slopes = local_slopes(lengths, values)
    count = 0
    while count < len(slopes) and slopes[count] < OVERHEAD_SLOPE and len(lengths) - count - 1 >= keep:
        count += 1
    return count


def fit_curve(
    key: SeriesKey,
    family: str,
    metric: str,
    lengths,
    values,
    samples: dict[int, np.ndarray] | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> CurveFit:
    """The fit of one metric of one series, with bootstrap uncertainty and plausibility flags."""
    lengths, values = finite_points(lengths, values)
    ascending = np.argsort(lengths)
    lengths, values = lengths[ascending], values[ascending]
    flags = plausibility_flags(metric, lengths, values)
    if metric.startswith("time"):
        floor = overhead_floor(lengths, values)
        if floor:
            flags.append(f"fitted from L={lengths[floor]:.0f}: flat below (overhead-bound)")
            lengths, values = lengths[floor:], values[floor:]
    weights = relative_weights(values)
    coefs = fit_many(lengths, values, weights)[0]
    verdict = verdict_from_coefs(coefs, lengths) if len(lengths) >= MIN_VERDICT_LENGTHS else NO_VERDICT
    longest = lengths.max()
    shares = term_shares(coefs, longest)
    if metric.startswith("time") and shares[0] >= OVERHEAD_SHARE:
        flags.append(f"overhead-bound: constant term is {shares[0]:.0%} of the time at L={longest:.0f}")
    dominant = int(np.argmax(shares))
    if verdict in VERDICTS and VERDICTS.index(verdict) != dominant:
        flags.append(f"{verdict} by its growing term, but {TERM_NAMES[dominant]} dominates at L={longest:.0f} "
                     f"({shares[dominant]:.0%})")
    exponent_ci, support = (math.nan, math.nan), math.nan
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        resampled = resample_values(lengths, values, evaluate(coefs, lengths), samples, n_boot, rng)
        # The weights stay those of the measured values: resampling the data, not the metric.
        boot = fit_many(lengths, resampled, weights)
        exponents = np.array([exponent_at(c, longest) for c in boot])
        exponent_ci = (float(np.quantile(exponents, 0.05)), float(np.quantile(exponents, 0.95)))
        support = float(np.mean([v == verdict for v in verdicts_of(boot, lengths)]))
    return CurveFit(
        key=key,
        family=family,
        metric=metric,
        lengths=tuple(lengths.tolist()),
        values=tuple(values.tolist()),
        coefs=tuple(coefs.tolist()),
        verdict=verdict,
        shares=tuple(shares.tolist()),
        exponent=exponent_at(coefs, longest),
        exponent_ci=exponent_ci,
        verdict_support=support,
        slopes=tuple(local_slopes(lengths, values).tolist()),
        flags=tuple(flags),
    )
