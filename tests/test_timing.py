"""Repetitions and the median's interval: the interval covers the median as often as it says, and
repetitions stop on a target only once the interval can reach its confidence."""
import time

import numpy as np
import pytest

from profiler.trackers.timing import (
    CONFIDENCE,
    MIN_SAMPLES_FOR_CONFIDENCE,
    MeasurementBudget,
    TimingStats,
    interval_confidence,
    median_interval,
    time_step,
)


@pytest.mark.parametrize("n", [3, 5, 6, 20, 60])
def test_the_interval_covers_the_median_as_often_as_its_confidence_says(n):
    # Skewed like step times: a lognormal whose median is 1.
    rng = np.random.default_rng(n)
    trials = 20_000
    covered = 0
    for samples in rng.lognormal(0.0, 0.5, size=(trials, n)):
        low, high = median_interval(samples)
        covered += low <= 1.0 <= high
    assert covered / trials == pytest.approx(interval_confidence(n), abs=0.015)
    assert (interval_confidence(n) >= CONFIDENCE) == (n >= MIN_SAMPLES_FOR_CONFIDENCE)


def test_three_samples_bound_the_median_only_three_times_in_four():
    stats = TimingStats.from_samples([1.0, 1.01, 1.02])
    assert stats.median_ci_ms == (1.0, 1.02)
    assert stats.median_ci_confidence == pytest.approx(0.75)
    assert MIN_SAMPLES_FOR_CONFIDENCE == 6


def test_a_steady_step_repeats_until_its_interval_can_reach_the_confidence():
    # Any interval meets a target of 100%: only the confidence rule keeps the repetitions going.
    budget = MeasurementBudget(warmup_steps=1, max_warmup_steps=1, min_reps=3, max_reps=50, time_budget_s=10.0,
                               target_ci=1.0)
    times = time_step(lambda: time.sleep(0.002), budget, "cpu")
    assert len(times.device.samples_ms) == MIN_SAMPLES_FOR_CONFIDENCE
    assert times.device.median_ci_confidence >= CONFIDENCE


def test_the_time_budget_still_stops_a_slow_step_at_the_fewest_repetitions():
    budget = MeasurementBudget(warmup_steps=1, max_warmup_steps=1, min_reps=3, max_reps=50, time_budget_s=0.01)
    times = time_step(lambda: time.sleep(0.02), budget, "cpu")
    assert len(times.device.samples_ms) == 3
    assert times.device.median_ci_confidence == pytest.approx(0.75)  # recorded, not claimed as 95%
