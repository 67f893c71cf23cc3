"""Crossovers: the lengths at which one variant's fitted curve overtakes another's."""
from dataclasses import dataclass

import numpy as np

from profiler.analysis.curves import CurveFit
from profiler.analysis.fit import evaluate


@dataclass(frozen=True)
class Crossover:
    """Past ``length``, the fitted curve of ``rising`` lies above that of ``other``."""

    metric: str
    panel: tuple  # values of PANEL_FIELDS
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
