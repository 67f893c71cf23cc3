"""Lanes sharing a GPU: the turn excludes other processes, and a point's measured phases take it."""
import subprocess
import sys
import textwrap

import pytest

from profiler.results.schema import PointSpec
from profiler.run import measure
from profiler.run.turns import turn_lock_path
from profiler.trackers.timing import MeasurementBudget

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from profiler.run.turns import GpuTurns
    turns = GpuTurns(Path(sys.argv[1]))
    with turns.turn():
        start = time.time()
        time.sleep(0.4)
        print(start, time.time(), turns.waited_s)
""")


def test_a_turn_excludes_another_process_which_waits_for_it(tmp_path):
    lock = tmp_path / "gpu.lock"
    holders = [subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True)
               for _ in range(2)]
    spans = sorted(tuple(map(float, h.communicate(timeout=60)[0].split())) for h in holders)
    (first_start, first_end, first_wait), (second_start, _, second_wait) = spans
    assert second_start >= first_end  # never both in a turn
    assert second_wait > 0.1 and second_wait > first_wait  # the second waited for the first


def test_the_lock_is_named_by_the_gpu_so_sweeps_on_one_gpu_share_it():
    assert turn_lock_path("GPU-1") == turn_lock_path("GPU-1") != turn_lock_path("GPU-2")


class RecordingTurns:
    """A turn that records which phases ran inside it."""

    def __init__(self):
        self.inside, self.waited_s, self.phases = False, 0.0, []

    def turn(self):
        import contextlib

        @contextlib.contextmanager
        def held():
            self.inside = True
            try:
                yield
            finally:
                self.inside = False
        return held()


@pytest.mark.parametrize("execution", ["eager", "compile"])
def test_the_counted_and_timed_steps_run_in_a_turn_and_compilation_outside(monkeypatch, execution):
    turns = RecordingTurns()

    def recorded(name, function):
        def wrapper(*args, **kwargs):
            turns.phases.append((name, turns.inside))
            return function(*args, **kwargs)
        return wrapper

    real_build = measure.build_workload

    def build(*args):
        turns.phases.append(("build", turns.inside))
        # Built eager, its preparation recorded instead of run: compiling itself is another test's.
        workload = real_build(*args[:-1], "eager")
        workload.prepare = recorded("compile", lambda: None)
        return workload

    monkeypatch.setattr(measure, "build_workload", build)
    monkeypatch.setattr(measure, "step_costs", recorded("probe", measure.step_costs))
    monkeypatch.setattr(measure, "time_step", recorded("steps", measure.time_step))
    point = PointSpec("sasrec", 8, "train", 2, "tiny", "naive", "cpu", execution=execution)
    budget = MeasurementBudget(warmup_steps=1, max_warmup_steps=1, min_reps=2, max_reps=2, time_budget_s=0.0)
    record = measure.measure_point(point, budget, turns=turns)
    expected = [("build", False), ("probe", True)] + ([("compile", False)] if execution == "compile" else []) \
        + [("steps", True)]
    assert turns.phases == expected
    assert record["reps"] == 2
