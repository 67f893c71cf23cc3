"""The measurement budget's options, shared by the commands that measure (sweep, reproduce)."""
from typing import Annotated, Optional

import typer

from profiler.cli import options
from profiler.cli.common import fail
from profiler.trackers.timing import MeasurementBudget, budget_with

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


def measurement_budget(defaults: MeasurementBudget, **given) -> MeasurementBudget:
    """The device's budget with the options given; contradictory counts are one line and exit 2."""
    try:
        return budget_with(defaults, **given, option=lambda name: "--" + name.replace("_", "-"))
    except ValueError as exc:
        fail(str(exc))
