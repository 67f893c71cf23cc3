"""Per-step timing: CUDA events on the GPU, the performance counter on the CPU, raw samples kept."""
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class TimingStats:
    samples_ms: tuple[float, ...]

    @classmethod
    def from_samples(cls, samples_ms) -> "TimingStats":
        if not samples_ms:
            raise ValueError("no timing samples")
        return cls(tuple(float(s) for s in samples_ms))

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def mean_ms(self) -> float:
        return statistics.fmean(self.samples_ms)

    @property
    def p10_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 10))

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.samples_ms, 90))

    @property
    def cv(self) -> float:
        """Coefficient of variation (std / mean), 0 for a single sample."""
        if len(self.samples_ms) < 2:
            return 0.0
        return statistics.stdev(self.samples_ms) / self.mean_ms

    @property
    def spread(self) -> float:
        """p90 / p10 - 1: the relative width of the central 80% of the samples."""
        return self.p90_ms / self.p10_ms - 1.0


def time_steps_cuda(step: Callable[[], object], reps: int) -> list[float]:
    """Times ``reps`` back-to-back steps with one pair of events each; one sync at the end, so the
    host never stalls the queue between steps and each sample is the step's device time."""
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def time_steps_cpu(step: Callable[[], object], reps: int) -> list[float]:
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def time_steps(step: Callable[[], object], reps: int, device: str) -> list[float]:
    return time_steps_cuda(step, reps) if device == "cuda" else time_steps_cpu(step, reps)
