"""Units and how numbers are written: one place, so every table and message agrees.

Memory is in MiB (2**20 bytes) everywhere, written as GiB from 1024 MiB on where a figure or a
line shows it; times are in ms.
"""
import math

MIB = 2**20
MIB_PER_GIB = 1024
GIB = MIB * MIB_PER_GIB  # bandwidths are in GiB/s


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


def format_memory(mib: float) -> str:
    """A size with its unit: MiB below 1024 MiB, GiB from there on (0.535 MiB, 512 MiB, 1.5 GiB,
    106 GiB): three significant digits, whole numbers from 100 on."""
    if not math.isfinite(mib):
        return "-"
    value, unit = (mib / MIB_PER_GIB, "GiB") if abs(mib) >= MIB_PER_GIB else (mib, "MiB")
    return f"{value:,.0f} {unit}" if abs(value) >= 100 else f"{value:.3g} {unit}"
