"""Per-step timing with raw samples kept: the step's device time, the host's wall time per step, and
repetitions that stop once the median is known well enough.

On CUDA a step has two times. Its device time is what the GPU spends on it: CUDA events around the
step, behind a GPU spin that outlasts the host's launching of it (``profiler.trackers.device_clock``),
so the kernels run back to back whatever the host's speed. Its wall time is what an eager loop that
synchronises every step (a ``loss.item()`` for logging does) waits: the host clock around the step
and a synchronisation. A step whose wall time clearly exceeds its device time is bound by the host
launching kernels. On the CPU both are the host clock.
"""
import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import stats

from profiler.trackers.device_clock import DeviceClock, spin_cycles_per_ms

# Wall time over device time above this marks a launch-bound step.
LAUNCH_BOUND_RATIO = 1.2
# The spin that holds the queue outlasts the slowest warm-up launch by this factor.
SPIN_OVER_LAUNCH = 2.0
MIN_SPIN_MS = 0.5
# Warm-up is over once the last WARMUP_WINDOW step times lie within this fraction of their median.
WARMUP_WINDOW = 2
WARMUP_TOLERANCE = 0.10
CONFIDENCE = 0.95


def _interval_rank(n: int, confidence: float) -> int:
    """The 1-based rank k whose order statistics (k-th lowest, k-th highest) bound the median with
    at least ``confidence``, the largest such k; 1 (lowest and highest) where none does."""
    return max(int(stats.binom.ppf((1 - confidence) / 2, n, 0.5)), 1)


def median_interval(samples, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """A distribution-free interval for the median: the order statistics whose ranks a binomial
    (n, 1/2) puts outside it with probability 1 - confidence. Step times are skewed (rare host
    stalls), so no normal approximation. Below ``MIN_SAMPLES_FOR_CONFIDENCE`` samples even the
    lowest and highest fall short of ``confidence``; ``interval_confidence`` says by how much."""
    ordered = np.sort(np.asarray(samples, dtype=float))
    rank = _interval_rank(len(ordered), confidence)
    return float(ordered[rank - 1]), float(ordered[len(ordered) - rank])


def interval_confidence(n: int, confidence: float = CONFIDENCE) -> float:
    """How often ``median_interval`` of n samples covers the true median: ``confidence`` or more,
    except below ``MIN_SAMPLES_FOR_CONFIDENCE`` (3 samples: 75%)."""
    rank = _interval_rank(n, confidence)
    return float(1 - 2 * stats.binom.cdf(rank - 1, n, 0.5))


# The fewest samples whose interval bounds the median with CONFIDENCE (6 for 95%: 1 - 2 / 2^6).
MIN_SAMPLES_FOR_CONFIDENCE = next(n for n in range(1, 64) if interval_confidence(n) >= CONFIDENCE)


@dataclass(frozen=True)
class TimingStats:
    samples_ms: tuple[float, ...]

    @classmethod
    def from_samples(cls, samples_ms) -> "TimingStats":
        if not len(samples_ms):
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

    @property
    def median_ci_ms(self) -> tuple[float, float]:
        return median_interval(self.samples_ms)

    @property
    def median_ci_confidence(self) -> float:
        return interval_confidence(len(self.samples_ms))

    @property
    def median_ci_rel(self) -> float:
        """Half the width of the median's interval over the median."""
        low, high = self.median_ci_ms
        return (high - low) / 2 / self.median_ms if self.median_ms > 0 else 0.0


@dataclass(frozen=True)
class MeasurementBudget:
    """Warm up until the step time is stable (within bounds), then repeat until the median's
    interval is within ``target_ci`` of it, or ``time_budget_s`` is spent, within min/max counts."""

    warmup_steps: int = 2  # at least this many warm-up steps
    max_warmup_steps: int = 10
    min_reps: int = 10
    max_reps: int = 200
    time_budget_s: float = 2.0  # a cap on the timed steps' wall time, not a target
    target_ci: float = 0.01

    def reps_for(self, step_time_s: float) -> int:
        """A fixed count that fills the time budget, within bounds (for timers that take a count)."""
        wanted = int(self.time_budget_s / max(step_time_s, 1e-9))
        return max(self.min_reps, min(self.max_reps, wanted))


def budget_with(defaults: MeasurementBudget, *, target_ci: float | None = None, time_budget_s: float | None = None,
                min_reps: int | None = None, max_reps: int | None = None, warmup: int | None = None,
                max_warmup: int | None = None, option=lambda name: name) -> MeasurementBudget:
    """``defaults`` with the values given (None keeps a default). A ValueError where the counts
    contradict each other, naming the options as ``option`` spells them; more warm-up steps than
    the most allowed raise the most."""
    given = {"warmup_steps": warmup, "max_warmup_steps": max_warmup, "time_budget_s": time_budget_s,
             "min_reps": min_reps, "max_reps": max_reps, "target_ci": target_ci}
    budget = dataclasses.replace(defaults, **{k: v for k, v in given.items() if v is not None})
    if budget.min_reps > budget.max_reps:
        raise ValueError(f"{option('min_reps')} {budget.min_reps} is larger than {option('max_reps')} {budget.max_reps}")
    if budget.warmup_steps > budget.max_warmup_steps:
        budget = dataclasses.replace(budget, max_warmup_steps=budget.warmup_steps)
    return budget


@dataclass(frozen=True)
class StepTimes:
    """What timing a step gives: device-time samples (the CPU's wall time on the CPU), wall-time
    samples, and how the clock behaved."""

    device: TimingStats
    wall: TimingStats
    warmup_steps: int
    clock: str  # "cuda-events-behind-spin" or "perf-counter"
    spin_ms: float = 0.0
    host_paced_rounds: int = 0
    timed_wall_s: float = 0.0

    @property
    def launch_bound(self) -> bool:
        return self.clock != "perf-counter" and self.wall.median_ms > LAUNCH_BOUND_RATIO * self.device.median_ms


def _wall_step_ms(step: Callable[[], object], cuda: bool) -> tuple[float, float]:
    """One synchronised step: (launch ms, wall ms). Launch is the host's time to issue the step."""
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    launched = time.perf_counter()
    if cuda:
        torch.cuda.synchronize()
    return (launched - start) * 1e3, (time.perf_counter() - start) * 1e3


def warm_up(step: Callable[[], object], policy: MeasurementBudget, cuda: bool) -> tuple[list[float], list[float]]:
    """Synchronised steps until the wall time settles; returns their launch and wall times."""
    launches, walls = [], []
    while len(walls) < policy.max_warmup_steps:
        launch_ms, wall_ms = _wall_step_ms(step, cuda)
        launches.append(launch_ms)
        walls.append(wall_ms)
        if len(walls) >= max(policy.warmup_steps, WARMUP_WINDOW):
            window = walls[-WARMUP_WINDOW:]
            if max(window) - min(window) <= WARMUP_TOLERANCE * statistics.median(window):
                break
    return launches, walls


def _repeat(time_one: Callable[[], float], policy: MeasurementBudget) -> tuple[list[float], float]:
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < policy.max_reps:
        samples.append(time_one())
        if len(samples) >= policy.min_reps:
            if time.perf_counter() - started >= policy.time_budget_s:
                break
            # An interval of fewer samples is narrow by chance as often as not: 3 samples within
            # 2% of each other bound the median only 75% of the time, whatever their spread.
            if len(samples) >= MIN_SAMPLES_FOR_CONFIDENCE and \
                    TimingStats.from_samples(samples).median_ci_rel <= policy.target_ci:
                break
    return samples, time.perf_counter() - started


def time_step(step: Callable[[], object], policy: MeasurementBudget, device: str) -> StepTimes:
    """Warms ``step`` up and times it as the policy says. The step must not wait for the GPU itself."""
    cuda = device == "cuda"
    launches, walls = warm_up(step, policy, cuda)
    if not cuda:
        samples, spent = _repeat(lambda: _wall_step_ms(step, False)[1], policy)
        stats_ = TimingStats.from_samples(samples)
        return StepTimes(stats_, stats_, len(walls), "perf-counter", timed_wall_s=spent)
    # Sized from the settled launches: the first steps' launches include one-off work (kernel
    # loading, autotuning). A spin that proves too short doubles itself.
    clock = DeviceClock(max(SPIN_OVER_LAUNCH * max(launches[-WARMUP_WINDOW:]), MIN_SPIN_MS), spin_cycles_per_ms())

    def device_ms() -> float:
        clock.hold_queue()
        start = clock()
        step()
        return (clock() - start) * 1e3

    device_samples, spent = _repeat(device_ms, policy)
    # The settled warm-up steps are synchronised steps: the wall time an eager loop that synchronises
    # every step sees, at no extra cost. No target applies to their spread, which is the host's.
    return StepTimes(
        TimingStats.from_samples(device_samples),
        TimingStats.from_samples(walls[-WARMUP_WINDOW:]),
        len(walls),
        "cuda-events-behind-spin",
        spin_ms=clock.spin_ms,
        host_paced_rounds=clock.host_paced_rounds,
        timed_wall_s=spent,
    )
