"""The measurement budget's options, shared by the commands that measure (sweep, reproduce)."""
import dataclasses
from typing import Annotated, Optional

import typer

from profiler.cli import options
from profiler.cli.common import fail
from profiler.trackers.timing import MeasurementBudget

TargetCi = Annotated[Optional[float], typer.Option(
    parser=options.number(0.0, 1.0), metavar="FRACTION", show_default=options.per_device_budget("target_ci"),
    help="Stop repeating once the median's 95% interval is within this fraction of it.")]
TimeBudget = Annotated[Optional[float], typer.Option(
    parser=options.number(0.0), metavar="SECONDS", show_default=options.per_device_budget("time_budget_s"),
    help="Most timed seconds per point, whatever the interval.")]
MinReps = Annotated[Optional[int], typer.Option(
    parser=options.integer(1, options.MAX_REPS), metavar="N", show_default=options.per_device_budget("min_reps"),
    help="Fewest timed repetitions per point.")]
MaxReps = Annotated[Optional[int], typer.Option(
    parser=options.integer(1, options.MAX_REPS), metavar="N", show_default=options.per_device_budget("max_reps"),
    help="Most timed repetitions per point.")]
Warmup = Annotated[Optional[int], typer.Option(
    parser=options.integer(1, options.MAX_WARMUP_STEPS), metavar="N",
    show_default=options.per_device_budget("warmup_steps"),
    help="Fewest warm-up steps; more run until the step time settles.")]
MaxWarmup = Annotated[Optional[int], typer.Option(
    parser=options.integer(1, options.MAX_WARMUP_STEPS), metavar="N",
    show_default=options.per_device_budget("max_warmup_steps"), help="Most warm-up steps.")]


def measurement_budget(defaults: MeasurementBudget, *, target_ci: float | None = None,
                       time_budget_s: float | None = None, min_reps: int | None = None,
                       max_reps: int | None = None, warmup: int | None = None,
                       max_warmup: int | None = None) -> MeasurementBudget:
    """The device's budget with the options given; contradictory counts are one line and exit 2."""
    given = {"warmup_steps": warmup, "max_warmup_steps": max_warmup, "time_budget_s": time_budget_s,
             "min_reps": min_reps, "max_reps": max_reps, "target_ci": target_ci}
    budget = dataclasses.replace(defaults, **{k: v for k, v in given.items() if v is not None})
    if budget.min_reps > budget.max_reps:
        fail(f"--min-reps {budget.min_reps} is larger than --max-reps {budget.max_reps}")
    if budget.warmup_steps > budget.max_warmup_steps:
        budget = dataclasses.replace(budget, max_warmup_steps=budget.warmup_steps)
    return budget
