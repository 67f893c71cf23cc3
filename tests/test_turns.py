"""Lanes sharing a GPU: an exclusive turn excludes every other turn of other processes, shared turns
admit each other, and a point's timed steps take an exclusive turn, its building, counted step and
compiling a shared one."""
import os
import subprocess
import sys
import textwrap

import pytest

from profiler.results.schema import PointSpec
from profiler.run import measure
from profiler.run.turns import GpuTurns, turn_lock_path
from profiler.trackers.timing import MeasurementBudget

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from profiler.run.turns import GpuTurns
    turns = GpuTurns(Path(sys.argv[1]))
    time.sleep(float(sys.argv[3]))
    asked = time.time()
    with (turns.turn() if sys.argv[2] == "exclusive" else turns.shared()):
        start = time.time()
        time.sleep(0.4)
        print(start, time.time(), turns.waited_s, turns.shared_waited_s, asked)
""")


def _spans(lock, *holders) -> list[tuple[float, ...]]:
    """Each holder (kind, delay before asking) as a process: when it held its turn, the seconds it
    waited for exclusive and for shared turns, and when it asked, in the order given."""
    processes = [subprocess.Popen([sys.executable, "-c", HOLD, str(lock), kind, str(delay)], stdout=subprocess.PIPE,
                                  text=True) for kind, delay in holders]
    return [tuple(map(float, p.communicate(timeout=60)[0].split())) for p in processes]


def test_an_exclusive_turn_excludes_another_process_and_its_wait_is_counted(tmp_path):
    first, second = sorted(_spans(tmp_path / "gpu.lock", ("exclusive", 0), ("exclusive", 0)))
    assert second[0] >= first[1]  # never both in a turn
    assert second[2] > 0.2 and second[2] > first[2]  # the second waited for the first, and says so


def test_shared_turns_overlap_each_other_but_never_an_exclusive_one(tmp_path):
    shared_a, shared_b, exclusive = _spans(tmp_path / "gpu.lock", ("shared", 0), ("shared", 0), ("exclusive", 0.2))
    assert max(shared_a[0], shared_b[0]) < min(shared_a[1], shared_b[1])  # the two compilations overlapped
    for shared in (shared_a, shared_b):
        assert exclusive[0] >= shared[1] or shared[0] >= exclusive[1]


def test_a_waiting_measurement_holds_back_new_compilations(tmp_path):
    # A compilation holds a shared turn; a measurement asks for the GPU; a later compilation waits for it.
    shared, exclusive, later = _spans(tmp_path / "gpu.lock", ("shared", 0), ("exclusive", 0.15), ("shared", 0.3))
    assert exclusive[0] >= shared[1] and later[0] >= exclusive[1]
    waited = later[0] - later[4]
    assert waited > 0.05 and later[3] == pytest.approx(waited, abs=0.05)  # it counted its wait for a shared turn
    assert later[2] == exclusive[3] == 0  # shared and exclusive waits are counted apart


def test_the_lock_is_named_by_the_gpu_so_sweeps_on_one_gpu_share_it():
    assert turn_lock_path("GPU-1") == turn_lock_path("GPU-1") != turn_lock_path("GPU-2")


class RecordingTurns:
    """Turns that record which phases ran inside which kind of turn."""

    def __init__(self):
        self.inside, self.waited_s, self.shared_waited_s, self.phases, self.entered = None, 0.0, 0.0, [], []

    def _held(self, kind):
        import contextlib

        @contextlib.contextmanager
        def held():
            self.inside = kind
            self.entered.append(kind)
            try:
                yield
            finally:
                self.inside = None
        return held()

    def turn(self):
        return self._held("exclusive")

    def shared(self):
        return self._held("shared")


@pytest.mark.parametrize("execution", ["eager", "compile"])
def test_only_the_timed_steps_run_in_an_exclusive_turn(monkeypatch, execution):
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
    expected = [("build", "shared"), ("probe", "shared")] \
        + ([("compile", "shared")] if execution == "compile" else []) + [("steps", "exclusive")]
    assert turns.phases == expected
    assert record["reps"] == 2


def test_after_a_compiled_point_another_process_gets_an_exclusive_turn(tmp_path):
    # Compilation starts helper processes while this process holds a shared turn; none of them may
    # keep the lock alive after it (a flock lives as long as any process holds its file open).
    lock = tmp_path / "gpu.lock"
    point = PointSpec("convrec-light", 12, "infer", 3, "tiny", "none", "cpu", execution="compile")
    budget = MeasurementBudget(warmup_steps=1, max_warmup_steps=1, min_reps=2, max_reps=2, time_budget_s=0.0)
    record = measure.measure_point(point, budget, turns=GpuTurns(lock))
    assert record["compile_s"] > 0
    ((start, end, waited, _, _),) = _spans(lock, ("exclusive", 0))
    assert waited < 5


def test_priming_shares_the_gpu_and_the_peak_rate_probes_take_it_alone(monkeypatch):
    from profiler.run import worker

    turns = RecordingTurns()
    monkeypatch.setattr(worker, "prime_process", lambda point, given: turns.phases.append(("prime", given is turns)))
    monkeypatch.setattr(worker, "peak_rates_for", lambda point, cache: turns.phases.append(("peak", turns.inside)))

    def measured(point, budget, nvml_reader, peak=None, snapshot_dir=None, turns=None, compile_cores=None):
        turns.phases.append(("point", turns.inside))
        return {}

    point = PointSpec("sasrec", 8, "train", 2, "tiny", "naive", "cpu")
    record = worker.measure_safely(point, None, None, prime=True, measure=measured, turns=turns)
    assert record["status"] == "ok"
    # The prime takes its own shared turns (below); the peak rates are timed.
    assert turns.phases == [("prime", True), ("peak", "exclusive"), ("point", None)]


def test_a_prime_runs_each_mode_in_a_shared_turn_of_its_own(monkeypatch):
    turns = RecordingTurns()
    real_build = measure.build_workload

    def build(model, attention, mode, *args):
        workload = real_build(model, attention, mode, *args)
        real_step = workload.step

        def step():
            turns.phases.append((mode, turns.inside, len(turns.entered)))
            return real_step()

        workload.step = step
        return workload

    monkeypatch.setattr(measure, "build_workload", build)
    measure.prime_process(PointSpec("sasrec", 8, "train", 2, "tiny", "naive", "cpu"), turns)
    # Two turns, one step in each: a measurement waiting in between waits for one mode only.
    assert turns.phases == [("train", "shared", 1), ("infer", "shared", 2)]
    assert turns.entered == ["shared", "shared"] and turns.inside is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two cores to pin to one of")
def test_a_pinned_worker_builds_and_compiles_on_every_core_it_was_given_and_times_on_its_own(monkeypatch):
    given = frozenset(os.sched_getaffinity(0))
    own = {min(given)}
    seen = {}
    real_build, real_time_step = measure.build_workload, measure.time_step

    def build(*args):
        seen["build"] = os.sched_getaffinity(0)
        workload = real_build(*args[:-1], "eager")
        workload.prepare = lambda: seen.setdefault("compile", os.sched_getaffinity(0))
        return workload

    def timed(*args, **kwargs):
        seen["steps"] = os.sched_getaffinity(0)
        return real_time_step(*args, **kwargs)

    monkeypatch.setattr(measure, "build_workload", build)
    monkeypatch.setattr(measure, "time_step", timed)
    point = PointSpec("sasrec", 8, "train", 2, "tiny", "naive", "cpu", execution="compile")
    budget = MeasurementBudget(warmup_steps=1, max_warmup_steps=1, min_reps=2, max_reps=2, time_budget_s=0.0)
    os.sched_setaffinity(0, own)
    try:
        measure.measure_point(point, budget, compile_cores=given)
        after = os.sched_getaffinity(0)
    finally:
        os.sched_setaffinity(0, given)
    assert seen == {"build": given, "compile": given, "steps": own} and after == own


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs CPU affinity")
def test_a_worker_to_be_pinned_asks_inductor_for_a_compile_worker_per_given_core(monkeypatch):
    from profiler.run.worker import COMPILE_THREADS_ENV, cores_to_compile_on

    given = frozenset(os.sched_getaffinity(0))
    monkeypatch.delenv(COMPILE_THREADS_ENV, raising=False)
    assert cores_to_compile_on(None) is None and COMPILE_THREADS_ENV not in os.environ  # unpinned: torch decides
    assert cores_to_compile_on(min(given)) == given
    assert os.environ[COMPILE_THREADS_ENV] == str(min(32, len(given)))
    monkeypatch.setenv(COMPILE_THREADS_ENV, "1")  # the user's choice stands
    cores_to_compile_on(min(given))
    assert os.environ[COMPILE_THREADS_ENV] == "1"
    if len(given) > 1:  # the cores other workers measure on stay theirs; its own is in
        own, other = sorted(given)[:2]
        assert cores_to_compile_on(own, frozenset({own, other})) == given - {other}
