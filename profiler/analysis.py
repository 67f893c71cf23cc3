"""Scaling analysis: how a metric grows with the sequence length L.

Every curve is fitted as y(L) = c0 + c1 L + c2 L^2 + c3 L^3 with non-negative coefficients (a step's
memory and time are sums of parts that each grow as some power of L, so no part is negative).
"""
import numpy as np

VERDICTS = ("constant", "linear", "quadratic", "cubic")
MAX_ORDER = 3
# A growing term decides the verdict once it carries this share of y at the largest length.
MEANINGFUL_SHARE = 0.15
# y that grows by less than this fraction over the measured range is called constant.
CONSTANT_GROWTH = 0.05


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """Non-negative least squares, min ||a x - b|| with x >= 0 (Lawson and Hanson's active set)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    n = a.shape[1]
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    tol = 10 * np.finfo(float).eps * np.linalg.norm(a, 1) * max(a.shape)
    for _ in range(max_iter or 3 * n + 10):
        gradient = a.T @ (b - a @ x)
        if passive.all() or gradient[~passive].max(initial=-np.inf) <= tol:
            break
        candidates = np.where(~passive, gradient, -np.inf)
        passive[int(np.argmax(candidates))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            # Step from x towards z until the first passive coefficient reaches zero, then drop it.
            blocking = passive & (z <= 0)
            alpha = np.min(x[blocking] / (x[blocking] - z[blocking]))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
            if not passive.any():
                break
    return x


def fit_powers(lengths, values, max_order: int = MAX_ORDER) -> np.ndarray:
    """Non-negative coefficients c0..c_max_order of y = sum_k c_k L^k (in the units of L itself)."""
    lengths = np.asarray(lengths, dtype=float)
    values = np.asarray(values, dtype=float)
    # Fit in x = L / L_max so the columns of the design matrix are of one size.
    scale = lengths.max()
    x = lengths / scale
    design = np.stack([x**k for k in range(max_order + 1)], axis=1)
    coefs = nnls(design, values)
    return coefs / scale ** np.arange(max_order + 1)


def term_shares(coefs: np.ndarray, length: float) -> np.ndarray:
    """Each term's share of the fitted y at ``length``."""
    terms = np.asarray(coefs) * float(length) ** np.arange(len(coefs))
    total = terms.sum()
    return terms / total if total > 0 else np.zeros_like(terms)


def verdict_from_coefs(coefs: np.ndarray, lengths) -> str:
    """The highest-order term with a meaningful share of y at the largest length."""
    lengths = np.asarray(lengths, dtype=float)
    longest, shortest = lengths.max(), lengths.min()
    powers = np.arange(len(coefs))
    y_long = float(np.sum(coefs * longest**powers))
    y_short = float(np.sum(coefs * shortest**powers))
    if y_long <= 0 or (y_long - y_short) / y_long < CONSTANT_GROWTH:
        return "constant"
    shares = term_shares(coefs, longest)
    for order in range(len(coefs) - 1, 0, -1):
        if shares[order] >= MEANINGFUL_SHARE:
            return VERDICTS[order]
    # y grows, but its growth is spread thinly: name the largest growing term.
    return VERDICTS[1 + int(np.argmax(shares[1:]))]


def growth_verdict(lengths, values) -> str:
    """'constant', 'linear', 'quadratic' or 'cubic': how ``values`` grow with ``lengths``.

    Non-finite values are ignored; at least two distinct lengths must remain.
    """
    lengths = np.asarray(lengths, dtype=float)
    values = np.asarray(values, dtype=float)
    keep = np.isfinite(lengths) & np.isfinite(values)
    lengths, values = lengths[keep], values[keep]
    if len(np.unique(lengths)) < 2:
        raise ValueError(f"a growth verdict needs at least two distinct lengths; got {sorted(set(lengths.tolist()))}")
    return verdict_from_coefs(fit_powers(lengths, values), lengths)
