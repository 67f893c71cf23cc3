"""The runner: failures are results, an OOM ends its series, a dead worker is replaced."""
import dataclasses
import gc
import time
import weakref

import pandas as pd
import pytest
from helpers import TINY_BUDGET, StandInWorker

from profiler.results.store import ResultsStore, read_results
from profiler.run import runner as runner_module
from profiler.run import worker as worker_module
from profiler.run.faults import FAULT_ENV, START
from profiler.run.oom import may_fit_alone, oom_columns
from profiler.run.plan import plan_points
from profiler.run.runner import Lane, RunnerOptions, SweepRunner, Worker, WorkerDied


def run(tmp_path, points, **options):
    store = ResultsStore.create(tmp_path / "r.csv")
    with store:
        rows = SweepRunner(store, RunnerOptions(budget=TINY_BUDGET, **options)).run(points)
    return rows, read_results(tmp_path / "r.csv")


def sasrec_points(lengths, modes=("train",)):
    return plan_points(["sasrec"], list(lengths), list(modes), ["naive"], 4, "tiny", "cpu")


def test_an_oom_is_a_result_and_skips_the_longer_lengths_of_its_series(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "sasrec[naive] train L=12=oom")
    rows, frame = run(tmp_path, sasrec_points([8, 12, 16, 24], modes=("train", "infer")))
    status = {(r["mode"], r["seq_len"]): r["status"] for r in rows}
    assert status == {
        ("train", 8): "ok", ("train", 12): "oom", ("train", 16): "skipped", ("train", 24): "skipped",
        # the other mode is its own series and is measured in full
        ("infer", 8): "ok", ("infer", 12): "ok", ("infer", 16): "ok", ("infer", 24): "ok",
    }
    skipped = frame[frame["status"] == "skipped"]
    assert (skipped["error"] == "OOM at L=12").all()
    assert frame.loc[frame["status"] == "oom", "error"].str.contains("injected out-of-memory").all()
    # An OOM is a result, not a broken process: the worker that ran out of memory measures on.
    measured = frame[frame["status"].isin(["ok", "oom"])]
    assert measured["worker_pid"].nunique() == 1
    assert not frame.loc[(frame["mode"] == "infer") & (frame["seq_len"] == 8), "worker_fresh"].item()


@pytest.mark.parametrize(
    "fault, cause",
    [
        ("error", "RuntimeError: injected failure"),
        ("exit", "worker exited with code 3"),
        ("segfault", "worker died from signal SIGSEGV"),
    ],
)
def test_a_failing_point_is_recorded_and_the_sweep_goes_on_with_a_fresh_worker(tmp_path, monkeypatch, fault, cause):
    monkeypatch.setenv(FAULT_ENV, f"sasrec[naive] train L=12={fault}")
    rows, frame = run(tmp_path, sasrec_points([8, 12, 16]))
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert rows[1]["error"] == cause
    # the point after the failure ran in a new process
    assert rows[2]["worker_fresh"] and rows[2]["worker_pid"] != rows[0]["worker_pid"]
    assert len(frame) == 3


def test_a_hanging_point_times_out_as_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "sasrec[naive] train L=8=hang")
    # The limit leaves a healthy point ample time even on a loaded two-core machine.
    rows, _ = run(tmp_path, sasrec_points([8, 12]), point_timeout_s=15.0)
    assert rows[0]["status"] == "error" and "point took longer than 15 s" in rows[0]["error"]
    assert rows[1]["status"] == "ok"


def test_a_worker_stuck_while_starting_honours_the_point_time_limit(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, f"{START}=hang")
    started = time.monotonic()
    rows, _ = run(tmp_path, sasrec_points([8]), point_timeout_s=5.0)
    assert rows[0]["status"] == "error" and rows[0]["error"] == "worker start took longer than 5 s; worker killed"
    assert time.monotonic() - started < 60  # not the 300 s a start may take when the point limit allows it


def test_a_worker_that_died_between_points_is_reported_dead_not_as_a_broken_pipe():
    worker = Worker("cpu")
    point = sasrec_points([8])[0]
    try:
        assert worker.measure(point, TINY_BUDGET, 60.0)["status"] == "ok"
        worker.process.kill()  # as the kernel's OOM killer would, while it waits for its next point
        worker.process.join(10)
        with pytest.raises(WorkerDied, match="worker died from signal SIGKILL"):
            worker.measure(point, TINY_BUDGET, 60.0)
    finally:
        worker.close()


def test_points_of_one_model_share_a_worker_unless_asked_otherwise(tmp_path):
    rows, _ = run(tmp_path, sasrec_points([8, 12]))
    assert rows[0]["worker_pid"] == rows[1]["worker_pid"] and not rows[1]["worker_fresh"]
    rows, _ = run(tmp_path / "fresh", sasrec_points([8, 12]), fresh_worker_per_point=True)
    assert rows[0]["worker_pid"] != rows[1]["worker_pid"] and rows[1]["worker_fresh"]


def test_resume_measures_only_missing_points_and_retries_errors(tmp_path, monkeypatch):
    path = tmp_path / "r.csv"
    monkeypatch.setenv(FAULT_ENV, "sasrec[naive] train L=12=error")
    run(tmp_path, sasrec_points([8, 12]))
    monkeypatch.delenv(FAULT_ENV)
    store = ResultsStore.resume(path)
    with store:
        runner = SweepRunner(store, RunnerOptions(budget=TINY_BUDGET))
        pending = runner.pending(sasrec_points([8, 12, 16]))
        assert [p.seq_len for p in pending] == [12, 16]
        runner.run(pending)
    frame = read_results(path)
    assert sorted(frame["seq_len"]) == [8, 12, 16]  # the error row was replaced, not duplicated
    assert set(frame["status"]) == {"ok"}


def test_rows_carry_knobs_statistics_and_units(tmp_path):
    rows, frame = run(tmp_path, sasrec_points([8]))
    row = frame.iloc[0]
    assert row["device"] == "cpu" and row["profile"] == "tiny" and row["batch_size"] == 4
    samples = [float(s) for s in row["step_times_ms"].split()]
    assert len(samples) == row["reps"] >= TINY_BUDGET.min_reps
    assert row["time_p10_ms"] <= row["time_median_ms"] <= row["time_p90_ms"]
    assert row["time_median_ms"] == pytest.approx(pd.Series(samples).median(), abs=1e-3)  # samples kept to 0.1 us
    assert row["flops_per_step"] > 0 and row["param_count"] > 0
    parts = row[["params_mib", "grads_mib", "optimizer_state_mib", "inputs_mib", "activations_mib"]].sum()
    assert row["tensor_footprint_mib"] == pytest.approx(parts)
    # Adam keeps two moments per trainable parameter; gradients match the trainable parameters
    assert row["optimizer_state_mib"] == pytest.approx(2 * row["grads_mib"], rel=0.01)


def test_a_points_wall_time_is_split_into_its_phases(tmp_path):
    from profiler.present.display import phase_breakdown

    rows, frame = run(tmp_path, sasrec_points([8, 12]))
    for row in frame.itertuples():
        phases = [row.prime_s, row.build_s, row.probe_s, row.steps_s, 0.0 if row.Index else row.worker_wait_s]
        assert all(seconds >= 0 for seconds in phases) and row.build_s > 0 and row.probe_s > 0
        assert row.measured_wall_s <= row.steps_s  # the timed steps are a part of all the steps
        assert sum(phases) <= row.point_wall_s
    assert frame["prime_s"].eq(0).all()  # priming loads CUDA kernels: nothing to do on the CPU
    # On the CPU a worker starts when its first point needs it: that point waits for all of its start.
    first, second = rows
    assert 0 < first["worker_wait_s"] <= first["worker_start_s"] + 0.5 and "worker_wait_s" not in second
    line = phase_breakdown(rows)
    assert line.startswith(f"time in 2 ok points: {frame['point_wall_s'].sum():.1f} s = "
                           f"waiting for workers {first['worker_wait_s']:.1f} + ")
    assert f"steps {frame['steps_s'].sum():.1f}" in line and "priming" not in line


def test_the_phase_breakdown_adds_up_and_leaves_out_failed_points():
    from profiler.present.display import phase_breakdown

    rows = [{"status": "ok", "point_wall_s": 10.0, "prime_s": 4.0, "build_s": 1.0, "probe_s": 0.5, "steps_s": 3.0,
             "measured_wall_s": 2.0},
            {"status": "ok", "point_wall_s": 2.0, "prime_s": 0.0, "build_s": 0.5, "probe_s": 0.5, "steps_s": 0.5,
             "compile_s": float("nan"), "measured_wall_s": 0.25},
            {"status": "oom", "point_wall_s": 100.0}]
    assert phase_breakdown(rows) == ("time in 2 ok points: 12.0 s = priming 4.0 + building 1.5 + probes 1.0 + "
                                     "steps 3.5 + other 2.0 s (timed steps alone 2.2 s)")
    rows[0].update(point_wall_s=13.0, worker_wait_s=3.0)
    assert phase_breakdown(rows[:2]) == ("time in 2 ok points: 15.0 s = waiting for workers 3.0 + priming 4.0 + "
                                         "building 1.5 + probes 1.0 + steps 3.5 + other 2.0 s (timed steps alone 2.2 s)")
    assert phase_breakdown([{"status": "error"}]) is None


def test_the_phase_breakdown_names_both_waits_of_lanes_sharing_a_gpu():
    from profiler.present.display import phase_breakdown

    row = {"status": "ok", "point_wall_s": 10.0, "turn_wait_s": 2.0, "shared_turn_wait_s": 3.0, "build_s": 1.0,
           "probe_s": 1.0, "steps_s": 2.0, "measured_wall_s": 1.0}
    # the wait for shared turns is its own phase, not part of "other"
    assert phase_breakdown([row]) == ("time in 1 ok points: 10.0 s = waiting for the GPU 2.0 + waiting to share it "
                                      "3.0 + building 1.0 + probes 1.0 + steps 2.0 + other 1.0 s "
                                      "(timed steps alone 1.0 s)")


def test_the_precision_line_counts_the_points_that_reached_the_target_at_full_confidence():
    from profiler.present.display import precision_summary

    rows = [{"status": "ok", "time_ci_rel": 0.004, "time_ci_confidence": 0.96},
            {"status": "ok", "time_ci_rel": 0.002, "time_ci_confidence": 0.75},  # narrow, but of 3 samples
            {"status": "ok", "time_ci_rel": 0.03, "time_ci_confidence": 0.96},  # wide
            {"status": "oom"}, {"status": "ok", "time_ci_rel": 0.001}]  # a row from before the column
    assert precision_summary(rows, 0.01) == ("timing: 1 of 3 ok points reached ±1.0% at 95% confidence (median "
                                             "±0.40%); 2 stopped by --time-budget-s or --max-reps first "
                                             "(confidence down to 75%, interval up to ±3.0%)")
    assert precision_summary(rows[:1], 0.01) == "timing: 1 of 1 ok points reached ±1.0% at 95% confidence (median ±0.40%)"
    assert precision_summary(rows[3:], 0.01) is None


def test_each_row_records_the_confidence_its_sample_count_gives(tmp_path):
    from profiler.present.display import precision_summary
    from profiler.trackers.timing import interval_confidence

    rows, frame = run(tmp_path, sasrec_points([8, 12]))
    for row in rows:
        assert row["time_ci_confidence"] == pytest.approx(interval_confidence(row["reps"]))
    # TINY_BUDGET stops at 3 repetitions at most: no point can claim 95%.
    assert precision_summary(rows, 1.0).startswith("timing: 0 of 2 ok points reached ±100.0% at 95% confidence")


def test_the_closing_count_names_the_outcomes_only_where_some_point_is_not_ok():
    from profiler.present.display import outcome_counts

    assert outcome_counts([{"status": "ok"}, {"status": "ok"}]) == ""
    rows = [{"status": "ok"}, {"status": "error"}, {"status": "oom"}, {"status": "ok"}, {"status": "skipped"}]
    assert outcome_counts(rows) == " (2 ok, 1 oom, 1 skipped, 1 error)"


class _Node:
    pass


def test_what_a_worker_freezes_at_start_leaves_later_garbage_to_the_collector():
    gc.collect()
    try:
        worker_module._freeze_survivors()
        assert gc.get_freeze_count() > 0
        first, second = _Node(), _Node()
        first.other, second.other = second, first  # a cycle, as a model and its optimizer make
        alive = weakref.ref(first)
        del first, second
        gc.collect()
        assert alive() is None
    finally:
        gc.unfreeze()


def test_each_spare_is_primed_for_the_first_point_of_the_variant_it_will_serve(monkeypatch):
    monkeypatch.setattr(runner_module, "Worker", StandInWorker)
    StandInWorker.started = []
    points = plan_points(["sasrec", "caser"], [50, 200], ["train", "infer"], ["naive", "sdpa"], 8, None, "cuda")
    list(Lane(RunnerOptions()).measure(points, {}))
    started = StandInWorker.started
    firsts = [points[0], points[4], points[8]]  # sasrec naive, sasrec sdpa, caser: four points each
    assert [worker.prime for worker in started] == firsts + [None]  # the last spare has no variant left
    assert [worker.measured[0] for worker in started[:3]] == firsts
    assert started[3].measured == []


@pytest.mark.parametrize("device, spare_workers, in_turns", [("cuda", 3, True), ("cuda", 0, False), ("cpu", 3, False)])
def test_workers_take_the_gpus_turns_where_spares_prime_beside_the_one_measuring(monkeypatch, device, spare_workers,
                                                                                 in_turns):
    # A spare priming on the GPU beside a timed step slows it; in turns it primes between them.
    monkeypatch.setattr(runner_module, "Worker", StandInWorker)
    StandInWorker.started = []
    points = plan_points(["sasrec", "caser"], [50], ["train"], ["naive"], 8, None, device)
    list(Lane(RunnerOptions(spare_workers=spare_workers)).measure(points, {}))
    assert StandInWorker.started and all(w.take_turns is in_turns for w in StandInWorker.started)


def test_with_a_fresh_worker_per_point_each_spare_is_primed_for_the_next_point(monkeypatch):
    monkeypatch.setattr(runner_module, "Worker", StandInWorker)
    StandInWorker.started = []
    points = plan_points(["sasrec"], [50, 200], ["train"], ["naive"], 8, None, "cuda")
    list(Lane(RunnerOptions(fresh_worker_per_point=True)).measure(points, {}))
    assert [worker.prime for worker in StandInWorker.started] == [points[0], points[1], None]


def test_a_prime_that_fails_while_starting_is_left_to_the_first_point(monkeypatch):
    point = sasrec_points([8])[0]
    monkeypatch.setattr(worker_module, "prime_process", lambda p, turns: None)
    assert worker_module._prime_ahead(point) == worker_module.priming_key(point)

    def broken(p, turns):
        raise RuntimeError("no kernel image")

    monkeypatch.setattr(worker_module, "prime_process", broken)
    assert worker_module._prime_ahead(point) is None
    other = dataclasses.replace(point, dtype="bf16")
    assert worker_module.priming_key(other) != worker_module.priming_key(point)


def test_several_spares_are_primed_for_the_next_variants_and_each_serves_its_own(monkeypatch):
    monkeypatch.setattr(runner_module, "Worker", StandInWorker)
    StandInWorker.started = []
    points = plan_points(["sasrec", "caser", "linrec"], [50, 200], ["train"], ["naive", "sdpa"], 8, None, "cuda")
    firsts = [points[0], points[2], points[4], points[6]]  # sasrec naive, sasrec sdpa, caser, linrec
    list(Lane(RunnerOptions(spare_workers=3)).measure(points, {}))
    started = StandInWorker.started
    # The first worker, then three spares at once, then none: every variant had its spare.
    assert [worker.prime for worker in started] == firsts + [None]
    assert [worker.measured[0] for worker in started[:4]] == firsts
    assert all(len(worker.measured) == 2 for worker in started[:4]) and started[4].measured == []


def test_a_retried_variant_takes_the_spare_needed_last_and_the_next_keeps_its_own(monkeypatch):
    class FailingFirst(StandInWorker):
        """The sweep's first point fails; every other is ok."""

        def measure(self, point, *args, **kwargs):
            super().measure(point, *args, **kwargs)
            return {"status": "error", "error": "boom"} if point == points[0] else {"status": "ok"}

    monkeypatch.setattr(runner_module, "Worker", FailingFirst)
    StandInWorker.started = []
    points = plan_points(["sasrec", "caser", "linrec"], [50, 200], ["train"], ["naive"], 8, None, "cuda")
    list(Lane(RunnerOptions(spare_workers=2)).measure(points, {}))
    started = StandInWorker.started
    # sasrec's first point fails: its second runs in the spare primed for linrec (needed last), and
    # caser's spare still serves caser; linrec gets a new spare, primed for it.
    assert started[0].measured == [points[0]]
    assert started[2].prime == points[4] and started[2].measured == [points[1]]
    assert started[1].prime == points[2] and started[1].measured == points[2:4]
    primed_for_linrec = [worker for worker in started[3:] if worker.prime == points[4]]
    assert len(primed_for_linrec) == 1 and primed_for_linrec[0].measured == points[4:6]


# What PyTorch's caching allocator raises, with the sizes of an OOM that the card alone has room for
# (1 GiB asked where the card less this process leaves 1.19 GiB) and one it has not (2 GiB).
def allocator_message(request: str, held: str) -> str:
    return (f"CUDA out of memory. Tried to allocate {request}. GPU 0 has a total capacity of 79.19 GiB of which "
            f"204.06 MiB is free. Process 4711 has 830.00 MiB memory in use. Including non-PyTorch memory, this "
            f"process has {held} memory in use. Of the allocated memory 76.10 GiB is allocated by PyTorch, and "
            "1.20 GiB is reserved by PyTorch but unallocated.")


def test_an_allocator_oom_names_the_request_and_the_room_the_card_alone_leaves_it():
    columns = oom_columns(allocator_message("1.00 GiB", "78.00 GiB"))
    assert columns == pytest.approx({"oom_request_mib": 1024.0, "oom_room_alone_mib": 1.19 * 1024})
    assert may_fit_alone(columns)  # 1.00 GiB into 1.19 GiB: the other process's 830 MiB was in the way
    assert not may_fit_alone(oom_columns(allocator_message("2.00 GiB", "78.00 GiB")))
    assert oom_columns(allocator_message("300.00 MiB", "78.90 GiB"))["oom_request_mib"] == 300.0
    # Within the message's rounding of the room: taken to have fitted.
    assert may_fit_alone({"oom_request_mib": 1224.0, "oom_room_alone_mib": 1218.6})
    assert oom_columns("injected out-of-memory") == {} and may_fit_alone({})


def lane_with_an_oom_at(points, failing, first_message, spare_workers=2):
    """A lane of stand-in workers: the first measurement of ``failing`` runs out of memory with
    ``first_message``; its measurement again, and every other point, is ok."""
    attempts = []

    class OutOfMemoryOnce(StandInWorker):
        def measure(self, point, *args, **kwargs):
            super().measure(point, *args, **kwargs)
            if point == failing:
                attempts.append(self)
                if len(attempts) == 1:
                    return {"status": "oom", "error": "OutOfMemoryError: CUDA out of memory",
                            **oom_columns(first_message)}
            return {"status": "ok"}

        def kill(self):
            self.killed = True

    StandInWorker.started = []
    lane = Lane(RunnerOptions(spare_workers=spare_workers))
    return lane, attempts, OutOfMemoryOnce


def test_an_oom_beside_spares_that_the_card_alone_might_hold_is_measured_again_without_them(monkeypatch):
    points = plan_points(["sasrec", "caser", "linrec"], [50, 200], ["train"], ["naive"], 8, None, "cuda")
    lane, attempts, worker_class = lane_with_an_oom_at(points, points[1], allocator_message("1.00 GiB", "78.00 GiB"))
    monkeypatch.setattr(runner_module, "Worker", worker_class)
    rows = [event.row for event in lane.measure(points, {}) if isinstance(event, runner_module.PointFinished)]
    assert [row["status"] for row in rows] == ["ok"] * 6
    first, for_caser, for_linrec = StandInWorker.started[:3]
    assert (for_caser.prime, for_linrec.prime) == (points[2], points[4])
    # Measured again in the spare needed last, the other spare ended first: one worker on the GPU
    assert attempts == [first, for_linrec] and for_caser.killed and not getattr(for_linrec, "killed", False)
    assert rows[1]["alone_after_shared_oom"] is True and rows[1]["worker_fresh"] is True
    assert points[2] not in for_caser.measured and points[2] in StandInWorker.started[3].measured
    assert not any(row.get("alone_after_shared_oom") for row in rows[:1] + rows[2:])


def test_spares_start_again_right_after_a_measurement_alone_for_the_variants_to_come(monkeypatch):
    points = plan_points(["sasrec", "caser", "linrec"], [50, 200], ["train"], ["naive"], 8, None, "cuda")
    lane, attempts, worker_class = lane_with_an_oom_at(points, points[0], allocator_message("1.00 GiB", "78.00 GiB"))
    events = []

    class Logged(worker_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            events.append(("started", self.prime))

        def measure(self, point, *args, **kwargs):
            events.append(("measured", point))
            return super().measure(point, *args, **kwargs)

    monkeypatch.setattr(runner_module, "Worker", Logged)
    rows = [event.row for event in lane.measure(points, {}) if isinstance(event, runner_module.PointFinished)]
    assert [row["status"] for row in rows] == ["ok"] * 6 and rows[0]["alone_after_shared_oom"] is True
    retried_at = [index for index, event in enumerate(events) if event == ("measured", points[0])][1]
    # Primed for caser and linrec while sasrec's second length is measured, not when caser's turn comes.
    assert events[retried_at + 1:retried_at + 4] == [("started", points[2]), ("started", points[4]),
                                                     ("measured", points[1])]
    assert attempts[1].measured == points[:2]  # the retrying spare serves the rest of its variant


def test_a_spare_that_could_not_start_is_replaced_by_a_worker_started_now(monkeypatch):
    class SpareFailsToStart(StandInWorker):
        """caser's spare finds the card full as its CUDA context starts; a worker started later starts."""

        def wait_until_ready(self, timeout_s):
            if self.prime == points[1] and [w.prime for w in StandInWorker.started].index(points[1]) == \
                    StandInWorker.started.index(self):
                raise runner_module.WorkerStartFailed("worker failed to start: AcceleratorError: CUDA error: out of memory")

    monkeypatch.setattr(runner_module, "Worker", SpareFailsToStart)
    StandInWorker.started = []
    points = plan_points(["sasrec", "caser"], [50], ["train"], ["naive"], 8, None, "cuda")
    rows = [event.row for event in Lane(RunnerOptions(spare_workers=1)).measure(points, {})
            if isinstance(event, runner_module.PointFinished)]
    assert [row["status"] for row in rows] == ["ok", "ok"]
    spare, started_now = [worker for worker in StandInWorker.started if worker.prime == points[1]]
    assert spare.measured == [] and started_now.measured == [points[1]]
    assert rows[1]["worker_fresh"] is True


def test_a_worker_started_when_needed_that_cannot_start_makes_the_point_an_error(monkeypatch):
    class NeverStarts(StandInWorker):
        def wait_until_ready(self, timeout_s):
            raise runner_module.WorkerStartFailed("worker failed to start: RuntimeError: no GPU")

    monkeypatch.setattr(runner_module, "Worker", NeverStarts)
    StandInWorker.started = []
    points = plan_points(["sasrec"], [50], ["train"], ["naive"], 8, None, "cuda")
    rows = [event.row for event in Lane(RunnerOptions(spare_workers=1)).measure(points, {})
            if isinstance(event, runner_module.PointFinished)]
    assert rows[0]["status"] == "error" and rows[0]["error"] == "worker failed to start: RuntimeError: no GPU"


@pytest.mark.parametrize("outcome, retired", [
    ({"status": "oom", "held_after_mib": 0.0}, False),  # freed everything: a result, the worker serves on
    ({"status": "oom", "held_after_mib": 61_000.0}, True),  # tensors of the failed step still alive
    ({"status": "ok", "held_after_mib": 4_096.0}, True),  # an ok point that left memory held
    ({"status": "ok", "held_after_mib": 8.0}, False),  # a library's workspace from its first use
    ({"status": "error", "held_after_mib": 0.0}, True),  # the context may be broken
])
def test_a_worker_serves_on_unless_its_point_failed_or_left_memory_held(monkeypatch, outcome, retired):
    class Reporting(StandInWorker):
        def measure(self, point, *args, **kwargs):
            super().measure(point, *args, **kwargs)
            return dict(outcome) if point == points[0] else {"status": "ok", "held_after_mib": 0.0}

    monkeypatch.setattr(runner_module, "Worker", Reporting)
    StandInWorker.started = []
    points = plan_points(["sasrec"], [50], ["train", "infer"], ["naive"], 8, None, "cuda")
    list(Lane(RunnerOptions(spare_workers=0)).measure(points, {}))  # no spare: an OOM is not retried
    first = StandInWorker.started[0]
    assert (points[1] not in first.measured) is retired
    assert runner_module.must_retire(outcome) is retired


@pytest.mark.parametrize("message, spare_workers", [
    (allocator_message("2.00 GiB", "78.00 GiB"), 2),  # more than the card alone would have left
    (allocator_message("1.00 GiB", "78.00 GiB"), 0),  # no spare on the GPU
])
def test_an_oom_stands_where_no_spare_held_memory_it_could_have_used(monkeypatch, message, spare_workers):
    points = plan_points(["sasrec", "caser"], [50, 200], ["train"], ["naive"], 8, None, "cuda")
    lane, attempts, worker_class = lane_with_an_oom_at(points, points[1], message, spare_workers)
    monkeypatch.setattr(runner_module, "Worker", worker_class)
    rows = [event.row for event in lane.measure(points, {}) if isinstance(event, runner_module.PointFinished)]
    assert [row["status"] for row in rows] == ["ok", "oom", "ok", "ok"]
    assert len(attempts) == 1 and not rows[1].get("alone_after_shared_oom")
    assert rows[1]["oom_request_mib"] == float(message.split("allocate ")[1].split(" GiB")[0]) * 1024
