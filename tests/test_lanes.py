"""Several GPUs of one host: lanes measure whole model variants, rows are those of an ordered sweep.

Without GPUs the lanes run on the CPU (each row's gpu_index names the lane that measured it), which
checks the scheduling: what is measured, where, and in which order.
"""
import re

import pytest
import typer
from helpers import FAST_FLAGS, TINY_BUDGET
from typer.testing import CliRunner

from profiler.cli import app, options
from profiler.results.store import ResultsStore, read_results
from profiler.run.faults import FAULT_ENV
from profiler.run.lanes import LaneRunner, gpu_assignment, split_variants
from profiler.run.plan import plan_points
from profiler.run.runner import RunnerOptions, SweepEvents, SweepRunner
from profiler.run.worker import GpuAssignment

TWO_LANES = [GpuAssignment(0), GpuAssignment(1)]
# Columns a point's seed and shapes fix, whatever process or lane measures it.
DETERMINED = ["status", "flops_per_step", "param_count", "tensor_footprint_mib", "error"]


def plan(lengths=(8, 12)):
    return plan_points(["sasrec", "convrec-light"], list(lengths), ["train"], ["naive", "sdpa"], 4, "tiny", "cpu")


def run_lanes(path, points, events=None, lanes=TWO_LANES):
    store = ResultsStore.create(path) if not path.exists() else ResultsStore.resume(path)
    with store:
        runner = LaneRunner(store, RunnerOptions(budget=TINY_BUDGET, threads=1), lanes, events)
        rows = runner.run(runner.pending(points))
    return rows, read_results(path)


def by_key(frame):
    return frame.set_index(["model", "attention", "mode", "seq_len"]).sort_index()


def test_lanes_measure_the_rows_of_an_ordered_sweep_and_keep_each_variant_on_one_lane(tmp_path):
    points = plan()  # sasrec[naive], sasrec[sdpa], convrec-light: three variants, two points each
    rows, frame = run_lanes(tmp_path / "lanes.csv", points)
    store = ResultsStore.create(tmp_path / "ordered.csv")
    with store:
        SweepRunner(store, RunnerOptions(budget=TINY_BUDGET, threads=1)).run(points)
    ordered = read_results(tmp_path / "ordered.csv")

    assert len(rows) == len(frame) == len(points)
    lanes, ordered = by_key(frame), by_key(ordered)
    assert list(lanes.index) == list(ordered.index)  # the same points, each once
    assert lanes[DETERMINED].equals(ordered[DETERMINED])
    assert ordered["gpu_index"].isna().all()  # an ordered CPU sweep names no GPU
    assert set(frame["gpu_index"]) == {0, 1}  # both lanes measured
    for variant, rows_of_variant in frame.groupby(["model", "attention"]):
        # one lane and one worker per variant, its lengths in ascending order
        assert rows_of_variant["gpu_index"].nunique() == 1, variant
        assert rows_of_variant["worker_pid"].nunique() == 1, variant
        assert list(rows_of_variant["seq_len"]) == sorted(rows_of_variant["seq_len"])


@pytest.mark.parametrize("fault, status, cause", [
    ("oom", "oom", "OutOfMemoryError: injected out-of-memory"),
    ("exit", "error", "worker exited with code 3"),
])
def test_a_failing_point_in_one_lane_is_recorded_and_its_series_follows_the_rule(tmp_path, monkeypatch, fault,
                                                                                 status, cause):
    monkeypatch.setenv(FAULT_ENV, f"sasrec[naive] train L=12={fault}")
    _, frame = run_lanes(tmp_path / "r.csv", plan(lengths=(8, 12, 16)))
    statuses = {(r.model, r.attention, r.seq_len): r.status for r in frame.itertuples()}
    after = "skipped" if fault == "oom" else "ok"  # an OOM ends its series; an error does not
    assert [statuses["sasrec", "naive", L] for L in (8, 12, 16)] == ["ok", status, after]
    assert all(s == "ok" for (model, attention, _), s in statuses.items() if (model, attention) != ("sasrec", "naive"))
    failed = frame[(frame["model"] == "sasrec") & (frame["attention"] == "naive") & (frame["seq_len"] == 12)]
    assert failed["error"].iloc[0] == cause
    if fault == "oom":
        skipped = frame[frame["status"] == "skipped"]
        assert list(skipped["error"]) == ["OOM at L=12"]


def test_a_stop_lets_each_lane_finish_its_point_and_resume_completes_without_duplicates(tmp_path):
    path = tmp_path / "r.csv"
    points = plan(lengths=(8, 12, 16))
    runner_box = {}

    def stop_at_first_result(index, total, point, row):
        runner_box["runner"].request_stop()

    store = ResultsStore.create(path)
    with store:
        runner = LaneRunner(store, RunnerOptions(budget=TINY_BUDGET, threads=1), TWO_LANES,
                            SweepEvents(on_result=stop_at_first_result))
        runner_box["runner"] = runner
        rows = runner.run(points)
    kept = read_results(path)
    # The first row stops the sweep: each lane finishes the point it has in flight, none starts
    # another. A lane may have finished one point and started the next before the first row
    # reached the main thread: at most two points a lane.
    assert 1 <= len(rows) <= 2 * len(TWO_LANES) and len(kept) == len(rows)
    assert set(kept["status"]) == {"ok"}
    rows, frame = run_lanes(path, points)
    assert len(rows) == len(points) - len(kept)
    assert len(frame) == len(points) and not frame.duplicated(["model", "attention", "seq_len"]).any()
    assert set(frame["status"]) == {"ok"}


def test_variants_are_handed_out_whole_in_plan_order_one_arithmetic_at_a_time():
    points = plan_points(["sasrec"], [8, 12], ["train", "infer"], ["naive", "sdpa"], 4, "tiny", "cpu",
                         dtypes=("float32", "bf16"))
    variants = split_variants(points)
    assert [(v[0].attention, v[0].dtype) for v in variants] == [
        ("naive", "float32"), ("naive", "bf16"), ("sdpa", "float32"), ("sdpa", "bf16")]
    assert all(len({p.dtype for p in variant}) == 1 for variant in variants)
    # both modes of a variant share its lane (and its worker), each series in ascending length
    assert [(p.mode, p.seq_len) for p in variants[0]] == [("train", 8), ("train", 12), ("infer", 8), ("infer", 12)]


def test_lanes_sharing_a_gpu_measure_every_point_once_with_workers_that_take_turns(tmp_path, monkeypatch):
    from profiler.run import runner

    shared = []
    real_worker = runner.Worker

    def recording_worker(*args, **kwargs):
        shared.append(kwargs.get("share_gpu"))
        return real_worker(*args, **kwargs)

    monkeypatch.setattr(runner, "Worker", recording_worker)
    points = plan()
    store = ResultsStore.create(tmp_path / "shared.csv")
    with store:
        runner_ = LaneRunner(store, RunnerOptions(budget=TINY_BUDGET, threads=1, lanes_per_gpu=2), [GpuAssignment(0)])
        assert len(runner_.gpus) == 2  # two lanes on GPU 0
        rows = runner_.run(points)
    frame = read_results(tmp_path / "shared.csv")
    assert len(rows) == len(points) and not frame.duplicated(["model", "attention", "seq_len"]).any()
    assert set(frame["status"]) == {"ok"} and set(frame["gpu_index"]) == {0}
    assert frame.groupby(["model", "attention"])["worker_pid"].nunique().eq(1).all()  # a unit stays on its lane
    assert frame["worker_pid"].nunique() >= 2  # both lanes measured
    assert shared and all(shared)


def _shared_run(tmp_path, points, events=None):
    store = ResultsStore.create(tmp_path / "shared.csv")
    with store:
        rows = LaneRunner(store, RunnerOptions(budget=TINY_BUDGET, threads=1, lanes_per_gpu=2), [GpuAssignment(0)],
                          events).run(points)
    return rows, read_results(tmp_path / "shared.csv")


def test_a_point_out_of_memory_beside_other_lanes_is_measured_again_alone_with_the_rest_of_its_unit(tmp_path,
                                                                                                    monkeypatch):
    # The fault runs out of memory only in a worker whose GPU other lanes share: as a point near
    # the card's memory does beside the other lanes' models, and fits once the GPU is its own.
    monkeypatch.setenv(FAULT_ENV, "sasrec[naive] train L=12=oom-shared")
    deferred = []
    rows, frame = _shared_run(tmp_path, plan(lengths=(8, 12, 16)), SweepEvents(on_deferred=deferred.append))
    assert [p.label for p in deferred] == ["sasrec[naive] train L=12"]
    assert len(rows) == len(frame) == 9 and set(frame["status"]) == {"ok"}  # each point once, none lost
    assert not frame.duplicated(["model", "attention", "seq_len"]).any()
    naive = frame[(frame["model"] == "sasrec") & (frame["attention"] == "naive")].set_index("seq_len")
    # L = 8 was measured in its lane; L = 12 and the rest of the unit after the lanes, alone
    assert naive["alone_after_shared_oom"].fillna(False).astype(bool).to_dict() == {8: False, 12: True, 16: True}
    others = frame[~((frame["model"] == "sasrec") & (frame["attention"] == "naive"))]
    assert not others["alone_after_shared_oom"].fillna(False).astype(bool).any()


def test_a_point_out_of_memory_alone_too_is_the_models_oom_and_ends_its_series(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "sasrec[naive] train L=12=oom")
    rows, frame = _shared_run(tmp_path, plan(lengths=(8, 12, 16)))
    naive = frame[(frame["model"] == "sasrec") & (frame["attention"] == "naive")].set_index("seq_len")
    assert list(naive["status"]) == ["ok", "oom", "skipped"] and len(frame) == 9
    assert naive.loc[12, "error"] == "OutOfMemoryError: injected out-of-memory"
    assert bool(naive.loc[12, "alone_after_shared_oom"]) and naive.loc[16, "error"] == "OOM at L=12"


def test_a_stop_before_the_lanes_end_leaves_a_deferred_point_to_resume(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "sasrec[naive] train L=12=oom-shared")
    box = {}

    def stop_on_deferral(point):
        box["runner"].request_stop()

    store = ResultsStore.create(tmp_path / "shared.csv")
    with store:
        runner_ = LaneRunner(store, RunnerOptions(budget=TINY_BUDGET, threads=1, lanes_per_gpu=2), [GpuAssignment(0)],
                             SweepEvents(on_deferred=stop_on_deferral))
        box["runner"] = runner_
        runner_.run(plan(lengths=(8, 12, 16)))
    kept = read_results(tmp_path / "shared.csv")
    assert set(kept["status"]) == {"ok"}  # the shared OOM wrote no row: nothing to take for the model's
    assert not ((kept["model"] == "sasrec") & (kept["attention"] == "naive") & (kept["seq_len"] == 12)).any()


def test_sharing_a_gpu_on_the_cpu_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["sweep", "--lanes-per-gpu", "2", "--models", "sasrec", "--lengths", "8",
                                      "--out", str(tmp_path / "r.csv"), *FAST_FLAGS])
    assert result.exit_code == 2
    assert "--lanes-per-gpu shares a GPU of this host between lanes; this sweep runs on the CPU" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "r.csv").exists()


def test_a_worker_sees_only_its_gpu_as_this_process_names_it():
    assert gpu_assignment(1, inherited="") == GpuAssignment(1, "1")
    # a process that itself sees a subset hands each worker that entry of it
    assert gpu_assignment(1, inherited="4,6") == GpuAssignment(1, "6")
    assert gpu_assignment(0, inherited="GPU-8f2a,GPU-1c3d") == GpuAssignment(0, "GPU-8f2a")
    with pytest.raises(ValueError, match="not among the 2"):
        gpu_assignment(2, inherited="4,6")


@pytest.mark.parametrize("value, message", [
    ("0,1", None),
    ("1,1", "repeats 1"),
    ("-1", "GPU indices start at 0; got -1"),
    ("2", "GPU 2 is not visible: this machine shows GPUs 0..1"),
    ("a", "'a' in 'a' is not an integer GPU index"),
    ("0,", "is not a comma-separated list of GPU indices"),
])
def test_gpus_are_distinct_indices_of_visible_gpus(monkeypatch, value, message):
    monkeypatch.setattr(options, "visible_gpu_count", lambda: 2)
    if message is None:
        assert options.parse_gpus(value) == [0, 1]
    else:
        with pytest.raises(typer.BadParameter, match=message):
            options.parse_gpus(value)


@pytest.mark.parametrize("visible, message", [
    (0, "GPU 0 is not visible: this machine shows no CUDA GPU"),  # no GPU here
    (2, "--gpus needs a CUDA sweep; this sweep runs on the CPU"),  # GPUs, but a CPU sweep asked for
])
def test_gpus_on_the_cpu_are_a_one_line_error(tmp_path, monkeypatch, visible, message):
    monkeypatch.setattr(options, "visible_gpu_count", lambda: visible)
    result = CliRunner().invoke(app, ["sweep", "--gpus", "0", "--models", "sasrec", "--lengths", "8",
                                      "--out", str(tmp_path / "r.csv"), *FAST_FLAGS])
    assert result.exit_code == 2
    # typer draws a bad parameter in a box, wrapping long messages; read it as one line
    text = " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split())
    assert message in text and "Traceback" not in text
    assert not (tmp_path / "r.csv").exists()
