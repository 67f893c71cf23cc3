"""What the device can do in one arithmetic: its peak matrix-product rate and memory bandwidth.

Measured, not taken from a data sheet: the best of a few large square matrix products (2 n^3 FLOPs
each) in the arithmetic a point runs with, and the best of a few large device-to-device copies
(the bytes read plus the bytes written). A ``PeakRateCache`` measures each arithmetic once per
process, at its first request, outside every timed step; a row's fractions of these peaks say how
far its step is from the limit, and the ridge point (peak FLOP/s over peak bytes/s) whether its
FLOPs per byte leave it bound by memory or by arithmetic.

On the CPU the same probes run at sizes that take well under a second (a shared host's peak is a
rough figure, but the columns keep one meaning on both devices).
"""
import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import torch

from profiler.units import GIB, MIB


@dataclass(frozen=True)
class ProbeSizes:
    matmul_n: int  # the side of the square matrices multiplied
    copy_mib: int  # the size of the buffer copied, well beyond the last-level cache
    reps: int  # timed repetitions after one untimed warm-up; the best counts


# On a GPU: 8192^2 fp32 matrices (256 MiB each) keep every SM busy for milliseconds, and a 1 GiB
# copy runs long enough for the events' resolution. On the CPU: a 512^2 product and a 64 MiB copy
# take a few to tens of milliseconds on two shared cores, about 0.1 s for the whole probe, which
# every CPU worker pays once per arithmetic.
SIZES = {"cuda": ProbeSizes(matmul_n=8192, copy_mib=1024, reps=5), "cpu": ProbeSizes(matmul_n=512, copy_mib=64, reps=3)}


@dataclass(frozen=True)
class PeakRates:
    tflops: float  # matrix products in the arithmetic, TFLOP/s
    bandwidth_gib_s: float  # device-to-device copy, read + write, GiB/s

    @property
    def ridge_flops_per_byte(self) -> float:
        """Below this many FLOPs per byte moved, a step at peak rates waits for memory."""
        return self.tflops * 1e12 / (self.bandwidth_gib_s * GIB)


def best_seconds(run: Callable[[], None], reps: int, device: str) -> float:
    """The fastest of ``reps`` runs after a warm-up: CUDA events around each on a GPU, the host
    clock on the CPU. The best, since interference only ever slows a run."""
    run()  # loads the kernel and lets the library choose its algorithm
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
    return min(times)


@contextlib.contextmanager
def _matmul_tf32(enabled: bool):
    """TF32 matrix products on or off for the probe, and the switches as they were afterwards."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous[0]
        torch.set_float32_matmul_precision(previous[1])


def _matmul_tflops(operand: torch.dtype, tf32: bool, device: str, sizes: ProbeSizes, timer) -> float:
    n = sizes.matmul_n
    a = torch.randn(n, n, device=device, dtype=operand)
    b = torch.randn(n, n, device=device, dtype=operand)
    out = torch.empty(n, n, device=device, dtype=operand)
    with _matmul_tf32(tf32):
        seconds = timer(lambda: torch.mm(a, b, out=out), sizes.reps, device)
    return 2 * n**3 / seconds / 1e12


def _copy_gib_s(device: str, sizes: ProbeSizes, timer) -> float:
    source = torch.empty(sizes.copy_mib * MIB // 4, device=device, dtype=torch.float32).fill_(1.0)
    target = torch.empty_like(source)
    seconds = timer(lambda: target.copy_(source), sizes.reps, device)
    return 2 * sizes.copy_mib * MIB / seconds / GIB  # each byte read once and written once


def measure_peak_rates(operand: torch.dtype, tf32: bool, device: str, timer=best_seconds) -> PeakRates:
    """Peak rates of ``device`` for matrix products of ``operand`` tensors (TF32 on or off)."""
    sizes = SIZES[device]
    rates = PeakRates(tflops=_matmul_tflops(operand, tf32, device, sizes, timer),
                      bandwidth_gib_s=_copy_gib_s(device, sizes, timer))
    if device == "cuda":
        torch.cuda.empty_cache()  # the probes' GiBs are no part of the point's memory or NVML baseline
    return rates


class PeakRateCache:
    """The peak rates of this process's device, each arithmetic measured at its first request."""

    def __init__(self, measure: Callable[[torch.dtype, bool, str], PeakRates] = measure_peak_rates):
        self._measure = measure
        self._rates: dict[tuple[torch.dtype, bool, str], PeakRates] = {}

    def get(self, operand: torch.dtype, tf32: bool, device: str) -> PeakRates:
        key = (operand, tf32, device)
        if key not in self._rates:
            self._rates[key] = self._measure(operand, tf32, device)
        return self._rates[key]


def roofline_columns(flops_per_step: float, moved_bytes_per_step: float, time_median_ms: float,
                     peak: PeakRates) -> dict:
    """A row's place under the peaks: the peaks themselves, the fractions of each that the step's
    median reached, and whether its FLOPs per byte lie below the ridge point (bound by memory)."""
    seconds = time_median_ms * 1e-3
    columns = {"peak_tflops": peak.tflops, "peak_bandwidth_gib_s": peak.bandwidth_gib_s,
               "peak_fraction": flops_per_step / seconds / 1e12 / peak.tflops,
               "bandwidth_fraction": moved_bytes_per_step / seconds / (peak.bandwidth_gib_s * GIB),
               "memory_bound": None}
    if moved_bytes_per_step > 0:
        columns["memory_bound"] = bool(flops_per_step / moved_bytes_per_step < peak.ridge_flops_per_byte)
    return columns
