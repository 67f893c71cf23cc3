"""The fit of one curve y(L): non-negative polynomial terms, the verdict, log-log slopes.

Every curve is fitted as y(L) = c0 + c1 L + c2 L^2 + c3 L^3 with non-negative coefficients: a step's
memory and time are sums of parts that each grow as some power of L, and no part is negative. The
fit minimises relative residuals (time and memory span orders of magnitude over a sweep, and their
noise is proportional to their size), and the highest power is chosen by BIC, so that noise does
not buy a cubic term. The verdict is the highest-order term that carries a meaningful share of y at
the largest length.
"""
import itertools
import math

import numpy as np

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


def finite_points(lengths, values) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.asarray(lengths, dtype=float)
    values = np.asarray(values, dtype=float)
    keep = np.isfinite(lengths) & np.isfinite(values)
    return lengths[keep], values[keep]


def growth_verdict(lengths, values) -> str:
    """'constant', 'linear', 'quadratic' or 'cubic': how ``values`` grow with ``lengths``.

    Non-finite values are ignored; at least two distinct lengths must remain.
    """
    lengths, values = finite_points(lengths, values)
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
