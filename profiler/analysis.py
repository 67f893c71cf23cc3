"""Scaling analysis: how a metric grows with the sequence length L, per model variant.

Every curve is fitted as y(L) = c0 + c1 L + c2 L^2 + c3 L^3 with non-negative coefficients: a step's
memory and time are sums of parts that each grow as some power of L, and no part is negative. The
fit minimises relative residuals (time and memory span orders of magnitude over a sweep, and their
noise is proportional to their size), and the highest power is chosen by BIC, so that noise does
not buy a cubic term. The verdict is the highest-order term that carries a meaningful share of y at
the largest length; the uncertainty comes from refitting resampled data (the raw step times for
time, the fit's residuals over the points for the deterministic metrics). Time fits start where
time starts to grow: below that, a step is bound by launch overheads, and a flat start would bend a
linear curve into a quadratic one.
"""
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from profiler.display import variant_name

VERDICTS = ("constant", "linear", "quadratic", "cubic")
TERM_NAMES = ("c0", "c1·L", "c2·L²", "c3·L³")
MAX_ORDER = 3
# A growing term decides the verdict once it carries this share of y at the largest length.
MEANINGFUL_SHARE = 0.15
# y that grows by less than this fraction of itself over the measured range is called constant.
CONSTANT_GROWTH = 0.05
# A cubic term is rare in these models (Caser's filters of every height), and launch overheads at
# short lengths bend a quadratic curve upwards; so a cubic fit must beat the others by this much BIC
# ("very strong" evidence) to be kept.
CUBIC_EVIDENCE_BIC = 10.0
# Residuals below this fraction of y are rounding, not signal (results are stored to ~7 digits).
RESIDUAL_FLOOR = 1e-6

METRICS = ("time_median_ms", "peak_allocated_mib", "nvml_peak_mib", "tensor_footprint_mib", "flops_per_step")
MEMORY_METRICS = ("peak_allocated_mib", "nvml_peak_mib", "tensor_footprint_mib")
METRIC_LABELS = {
    "time_median_ms": "time per step (ms)",
    "peak_allocated_mib": "peak allocated (MiB)",
    "nvml_peak_mib": "device memory, nvidia-smi (MiB)",
    "tensor_footprint_mib": "tensor footprint (MiB)",
    "flops_per_step": "FLOPs per step",
}
# A series is one model variant measured over lengths with every other knob fixed.
GROUP_COLUMNS = ("model", "attention", "profile", "mode", "batch_size", "device", "dtype")
# Curves of different variants are comparable (crossovers, one figure) when these agree.
PANEL_COLUMNS = ("mode", "batch_size", "device", "dtype")
# A memory value may dip by this fraction as L grows (allocator rounding) before it is flagged.
MEMORY_DIP = 0.02
# Time that grows by less than this factor over a tenfold length range is flagged as flat.
FLAT_TIME_FACTOR = 1.15
# Short steps are bound by kernel launches and Python overhead, not by L: leading lengths where time
# grows with a log-log slope below this are the overhead floor, and the time fit starts after them.
OVERHEAD_SLOPE = 0.3
# A time fit whose constant term still carries this share at the largest length is overhead-bound.
OVERHEAD_SHARE = 0.5


# ---------------------------------------------------------------------------------------------
# The fit
# ---------------------------------------------------------------------------------------------


# Every non-empty set of powers a fit may use, fewest terms first so that ties go to the simpler.
TERM_SETS = tuple(s for size in range(1, MAX_ORDER + 2) for s in itertools.combinations(range(MAX_ORDER + 1), size))


def _highest_order(n_lengths: int) -> int:
    # Keep one degree of freedom beyond an exact fit once there are points to spare, so noise on
    # four points is not read as a cubic.
    return min(MAX_ORDER, n_lengths - 1 if n_lengths <= 3 else n_lengths - 2)


def relative_weights(values) -> np.ndarray:
    size = np.abs(np.asarray(values, dtype=float))
    return 1.0 / np.maximum(size, RESIDUAL_FLOOR * max(size.max(), 1e-300))


def fit_many(lengths, values, weights) -> np.ndarray:
    """Non-negative c0..c3 (L in items) for each row of ``values`` (m, n) over the same lengths.

    Each set of terms is fitted by plain least squares; the sets whose coefficients all come out
    positive are the non-negative fits (the non-negative least-squares optimum over any set of terms
    is one of them: the plain fit on its own support). The one with the lowest BIC wins, and a set
    with a cubic term needs strong evidence.
    """
    lengths = np.asarray(lengths, dtype=float)
    values = np.atleast_2d(np.asarray(values, dtype=float))
    m, n = values.shape
    scale = lengths.max()
    x = lengths / scale  # columns of one size: x in (0, 1]
    target = values * weights  # (m, n)
    floor = n * RESIDUAL_FLOOR**2

    def bic(rss, terms):
        return n * np.log(np.maximum(rss, floor) / n) + terms * math.log(n)

    best = np.zeros((m, MAX_ORDER + 1))
    best_bic = bic(np.sum(target**2, axis=1), 0)  # all coefficients zero
    top = _highest_order(len(np.unique(lengths)))
    for terms in TERM_SETS:
        if max(terms) > top:
            continue
        design = np.stack([x**k for k in terms], axis=1) * weights[:, None]  # (n, p)
        coefs = target @ np.linalg.pinv(design).T  # (m, p)
        rss = np.sum((target - coefs @ design.T) ** 2, axis=1)
        score = bic(rss, len(terms)) + (CUBIC_EVIDENCE_BIC if 3 in terms else 0.0)
        better = (coefs > 0).all(axis=1) & (score < best_bic - 1e-9)
        best[better] = 0.0
        best[np.ix_(better, terms)] = coefs[better]
        best_bic = np.where(better, score, best_bic)
    return best / scale ** np.arange(MAX_ORDER + 1)


def fit_polynomial(lengths, values) -> np.ndarray:
    """Non-negative c0..c3 of y = sum_k c_k L^k (L in items), fitted to relative residuals."""
    return fit_many(lengths, values, relative_weights(values))[0]


def evaluate(coefs, lengths) -> np.ndarray:
    lengths = np.asarray(lengths, dtype=float)
    return sum(c * lengths**k for k, c in enumerate(coefs))


def term_shares(coefs, length: float) -> np.ndarray:
    """Each term's share of the fitted y at ``length``."""
    terms = np.asarray(coefs, dtype=float) * float(length) ** np.arange(len(coefs))
    total = terms.sum()
    return terms / total if total > 0 else np.zeros_like(terms)


def exponent_at(coefs, length: float) -> float:
    """d ln y / d ln L of the fitted curve at ``length``: the local power law the curve follows."""
    terms = np.asarray(coefs, dtype=float) * float(length) ** np.arange(len(coefs))
    total = terms.sum()
    return float(np.sum(np.arange(len(coefs)) * terms) / total) if total > 0 else 0.0


def verdicts_of(coefs, lengths) -> list[str]:
    """The verdict of each row of ``coefs`` (m, 4) over the measured ``lengths``."""
    coefs = np.atleast_2d(np.asarray(coefs, dtype=float))
    lengths = np.asarray(lengths, dtype=float)
    powers = np.arange(coefs.shape[1])
    terms_long = coefs * lengths.max() ** powers  # (m, 4)
    y_long = terms_long.sum(axis=1)
    y_short = (coefs * lengths.min() ** powers).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = terms_long / y_long[:, None]
        barely_grows = (y_long <= 0) | ((y_long - y_short) / y_long < CONSTANT_GROWTH)
    verdicts = []
    for row_shares, constant in zip(shares, barely_grows):
        if constant:
            verdicts.append("constant")
            continue
        meaningful = np.flatnonzero(row_shares[1:] >= MEANINGFUL_SHARE)
        # Growth spread thinly over several terms: name the largest growing one.
        order = 1 + (meaningful[-1] if len(meaningful) else int(np.argmax(row_shares[1:])))
        verdicts.append(VERDICTS[order])
    return verdicts


def verdict_from_coefs(coefs, lengths) -> str:
    """The highest-order term with a meaningful share of y at the largest length ("constant" when
    y grows by less than CONSTANT_GROWTH over the measured range)."""
    return verdicts_of(coefs, lengths)[0]


def _finite(lengths, values) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.asarray(lengths, dtype=float)
    values = np.asarray(values, dtype=float)
    keep = np.isfinite(lengths) & np.isfinite(values)
    return lengths[keep], values[keep]


def growth_verdict(lengths, values) -> str:
    """'constant', 'linear', 'quadratic' or 'cubic': how ``values`` grow with ``lengths``.

    Non-finite values are ignored; at least two distinct lengths must remain.
    """
    lengths, values = _finite(lengths, values)
    if len(np.unique(lengths)) < 2:
        raise ValueError(f"a growth verdict needs at least two distinct lengths; got {sorted(set(lengths.tolist()))}")
    return verdict_from_coefs(fit_polynomial(lengths, values), lengths)


def local_slopes(lengths, values) -> np.ndarray:
    """log-log slopes between neighbouring lengths (NaN where a value is not positive)."""
    lengths = np.asarray(lengths, dtype=float)
    values = np.asarray(values, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        slopes = np.diff(np.log(values)) / np.diff(np.log(lengths))
    return np.where(np.isfinite(slopes), slopes, np.nan)


# ---------------------------------------------------------------------------------------------
# Series of a results table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesKey:
    model: str
    attention: str
    profile: str
    mode: str
    batch_size: int
    device: str
    dtype: str

    @property
    def variant(self) -> str:
        return variant_name(self.model, self.attention)

    @property
    def panel(self) -> tuple:
        return tuple(getattr(self, c) for c in PANEL_COLUMNS)


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
        return _finite(self.ok["seq_len"], pd.to_numeric(self.ok[metric], errors="coerce"))

    def step_samples(self) -> dict[int, np.ndarray]:
        """The raw step times (ms) of each ok length, where the row kept them."""
        samples = {}
        for length, text in zip(self.ok["seq_len"], self.ok.get("step_times_ms", pd.Series(dtype=str))):
            if isinstance(text, str) and text.strip():
                samples[int(length)] = np.array([float(v) for v in text.split()])
        return samples


def _text(value, default: str = "") -> str:
    return default if pd.isna(value) else str(value)


def series_of(frame: pd.DataFrame) -> list[Series]:
    """Splits a results table into series, in the order the variants first appear."""
    frame = frame.copy()
    for column in ("attention", "profile", "device", "dtype"):
        frame[column] = frame[column].map(lambda v: _text(v, "?"))
    frame["batch_size"] = frame["batch_size"].astype(int)
    frame["seq_len"] = frame["seq_len"].astype(int)
    series = []
    for values, rows in frame.groupby(list(GROUP_COLUMNS), sort=False):
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


# ---------------------------------------------------------------------------------------------
# Curve fits with uncertainty and plausibility flags
# ---------------------------------------------------------------------------------------------


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
        flags.append(f"only {len(lengths)} lengths")
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
    lengths, values = _finite(lengths, values)
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
    verdict = verdict_from_coefs(coefs, lengths)
    longest = lengths.max()
    shares = term_shares(coefs, longest)
    if metric.startswith("time") and shares[0] >= OVERHEAD_SHARE:
        flags.append(f"overhead-bound: constant term is {shares[0]:.0%} of the time at L={longest:.0f}")
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


# ---------------------------------------------------------------------------------------------
# Crossovers between variants
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Crossover:
    """Past ``length``, the fitted curve of ``rising`` lies above that of ``other``."""

    metric: str
    panel: tuple  # values of PANEL_COLUMNS
    rising: str
    rising_family: str
    other: str
    other_family: str
    length: float

    @property
    def cross_family(self) -> bool:
        return self.rising_family != self.other_family


def crossovers(a: CurveFit, b: CurveFit) -> list[Crossover]:
    """Lengths inside both measured ranges where the fitted curves of a and b cross."""
    low = max(min(a.lengths), min(b.lengths))
    high = min(max(a.lengths), max(b.lengths))
    if high <= low:
        return []
    difference = np.array(a.coefs) - np.array(b.coefs)  # a - b, c0 first
    if not difference.any():
        return []
    roots = np.roots(np.trim_zeros(difference[::-1], "f"))
    found = []
    for root in sorted(r.real for r in roots if abs(r.imag) < 1e-9 * max(1.0, abs(r)) and low < r.real < high):
        step = 1e-3 * (high - low)
        before = evaluate(difference, root - step)
        after = evaluate(difference, root + step)
        if before * after >= 0:
            continue  # touches without crossing
        rising, other = (a, b) if after > 0 else (b, a)
        found.append(
            Crossover(a.metric, a.key.panel, rising.key.variant, rising.family, other.key.variant, other.family, float(root))
        )
    return found


def all_crossovers(fits: list[CurveFit]) -> list[Crossover]:
    found = []
    for i, a in enumerate(fits):
        for b in fits[i + 1 :]:
            if a.metric == b.metric and a.key.panel == b.key.panel:
                found.extend(crossovers(a, b))
    return found


# ---------------------------------------------------------------------------------------------
# A whole results table
# ---------------------------------------------------------------------------------------------


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
            fits.append(fit_curve(s.key, s.family, metric, lengths, values, samples, n_boot, seed))
    return Analysis(series, fits, all_crossovers(fits))
