"""Units and how numbers are written: one place, so every table and message agrees.

Memory is in MiB (2**20 bytes) everywhere; times are in ms.
"""
import math

MIB = 2**20


def format_mib(value: float) -> str:
    """One decimal for sizes a GPU step has (409.3 MiB), three digits for the small CPU ones (0.535)."""
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def format_significant(value: float | None, digits: int = 3) -> str:
    """``digits`` significant digits; exponent form far from 1 (fit coefficients, FLOPs); '-' for none."""
    if value is None or not math.isfinite(value):
        return "-"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def format_fixed(value: float, digits: int) -> str:
    """``digits`` decimals with thousands separators (1,234.5); a small non-zero value keeps two
    significant digits instead of printing as 0.00."""
    if not math.isfinite(value):
        return "-"
    if 0 < abs(value) < 10.0 ** (1 - digits):
        return f"{value:.2g}"
    return f"{value:,.{digits}f}"
