"""The Ray backend on a local CPU cluster: the rows of a local sweep, a dead Ray worker recorded as
an error while the sweep goes on, Ctrl-C and --resume as for a local sweep, and a one-line error
without Ray. Deselect with -m "not ray"; `make test` installs Ray and runs them."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import FAST_FLAGS, TINY_BUDGET
from typer.testing import CliRunner

# A single-node cluster on the loopback interface (read when Ray is imported, so before it).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
try:
    import ray
except ImportError:
    ray = None

import profiler.run
from profiler.cli import app
from profiler.results.store import ResultsStore, read_results
from profiler.run.faults import FAULT_ENV
from profiler.run.plan import plan_points
from profiler.run.runner import RunnerOptions, SweepRunner
from profiler.run.sweep import SweepRequest
from profiler.trackers.environment import cpu_name
from profiler.trackers.timing import MeasurementBudget

pytestmark = pytest.mark.ray
needs_ray = pytest.mark.skipif(ray is None, reason='needs Ray: pip install -e ".[ray]"')
# One core per task (a worker with one torch thread): two tasks run at once on the two-CPU cluster.
OPTIONS = RunnerOptions(budget=TINY_BUDGET, threads=1)
KEY = ["model", "attention", "mode", "seq_len"]
DETERMINED = ["status", "flops_per_step", "param_count", "tensor_footprint_mib"]


@pytest.fixture(scope="module")
def cluster():
    from ray._private import ray_constants

    assert not ray_constants.ENABLE_RAY_CLUSTER, "Ray was imported before the loopback setting"
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def plan(lengths=(8, 12)):
    return plan_points(["sasrec", "convrec-light"], list(lengths), ["train"], ["naive"], 4, "tiny", "cpu")


def run_on_ray(path, points):
    from profiler.run.ray_backend import RayRunner

    store = ResultsStore.create(path)
    with store:
        runner = RayRunner(store, OPTIONS)
        rows = runner.run(runner.pending(points))
    return rows, read_results(path)


def assert_each_point_once(frame, points):
    assert len(frame) == len(points) and not frame.duplicated(KEY).any()
    assert sorted(frame[KEY].itertuples(index=False, name=None)) == sorted(
        (p.model, p.attention, p.mode, p.seq_len) for p in points)


@needs_ray
def test_a_ray_sweep_stores_the_rows_of_a_local_sweep(tmp_path, cluster):
    points = plan()
    rows, frame = run_on_ray(tmp_path / "ray.csv", points)
    store = ResultsStore.create(tmp_path / "local.csv")
    with store:
        SweepRunner(store, OPTIONS).run(points)
    local = read_results(tmp_path / "local.csv")

    assert len(rows) == len(points)
    assert_each_point_once(frame, points)
    assert set(frame["status"]) == {"ok"}
    ray_rows, local_rows = frame.set_index(KEY).sort_index(), local.set_index(KEY).sort_index()
    assert ray_rows[DETERMINED].equals(local_rows[DETERMINED])
    assert (frame["device_name"] == cpu_name()).all()  # the node's CPU, as the environment names it
    # a task per variant: its points in one worker, in ascending length
    for variant, rows_of_variant in frame.groupby(["model", "attention"]):
        assert rows_of_variant["worker_pid"].nunique() == 1, variant
        assert list(rows_of_variant["seq_len"]) == sorted(rows_of_variant["seq_len"])


@needs_ray
@pytest.mark.parametrize("fault, cause", [
    ("exit-task", "Ray task failed (WorkerCrashedError)"),  # the Ray worker running the task dies
    ("exit", "worker exited with code 3"),  # the task's measuring subprocess dies
])
def test_a_death_mid_point_is_an_error_and_the_sweep_goes_on(tmp_path, cluster, monkeypatch, fault, cause):
    monkeypatch.setenv(FAULT_ENV, f"sasrec[naive] train L=12={fault}")
    points = plan(lengths=(8, 12, 16))
    _, frame = run_on_ray(tmp_path / "r.csv", points)
    assert_each_point_once(frame, points)
    status = {(r.model, r.seq_len): r.status for r in frame.itertuples()}
    assert [status["sasrec", L] for L in (8, 12, 16)] == ["ok", "error", "ok"]
    assert [status["convrec-light", L] for L in (8, 12, 16)] == ["ok", "ok", "ok"]
    error = frame.loc[frame["status"] == "error", "error"].iloc[0]
    assert error.startswith(cause), error


SWEEP = [sys.executable, "-m", "profiler.cli", "sweep", "--backend", "ray", "--models", "sasrec,convrec-light",
         "--lengths", "8,12,16", *FAST_FLAGS, "--threads", "1",
         # a longer budget per point leaves time to interrupt the sweep between its points
         "--time-budget-s", "0.5", "--min-reps", "3", "--max-reps", "200"]


@needs_ray
@pytest.mark.slow
def test_ctrl_c_stops_a_ray_sweep_after_the_points_in_flight_and_resume_completes(tmp_path, cluster):
    out = tmp_path / "r.csv"
    env = {**os.environ, "RAY_ADDRESS": cluster}  # the sweep joins the running cluster
    # A session of its own, so the signal reaches the sweep as a terminal's Ctrl-C would.
    proc = subprocess.Popen([*SWEEP, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (out.exists() and out.stat().st_size and len(read_results(out))):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else "no row"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 130, stderr
    assert "Resume with:" in stderr and "--backend ray" in stderr and "Traceback" not in stderr
    kept = read_results(out)
    assert 1 <= len(kept) < 6 and set(kept["status"]) == {"ok"}
    finished = subprocess.run([*SWEEP, "--out", str(out), "--resume"], capture_output=True, text=True, env=env,
                              timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert f"{6 - len(kept)} points measured" in finished.stderr
    frame = read_results(out)
    assert len(frame) == 6 and not frame.duplicated(KEY).any() and set(frame["status"]) == {"ok"}


@pytest.fixture
def without_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the extra has
    monkeypatch.delitem(sys.modules, "profiler.run.ray_backend", raising=False)
    monkeypatch.delattr(profiler.run, "ray_backend", raising=False)


def test_without_ray_the_ray_backend_is_a_one_line_error(tmp_path, without_ray):
    result = CliRunner().invoke(app, ["sweep", "--backend", "ray", "--models", "sasrec", "--lengths", "8",
                                      "--out", str(tmp_path / "r.csv"), *FAST_FLAGS])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        'seqprof: error: the ray backend needs Ray, an optional extra: pip install -e ".[ray]" (or pip install "ray>=2.9")'
    ]
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize("refused, problem", [
    ("gpus", "--gpus picks GPUs of this host"),
    ("memory_snapshot_dir", "--memory-snapshot writes its files on this host"),
])
def test_without_ray_a_choice_the_ray_backend_refuses_is_named_before_the_missing_extra(
        tmp_path, without_ray, refused, problem):
    value = {"gpus": [0], "memory_snapshot_dir": tmp_path / "snapshots"}[refused]
    request = SweepRequest(["sasrec"], [8], ["train"], ["naive"], 2, "tiny", "cuda", 0, MeasurementBudget(),
                           tmp_path / "r.csv", False, 60.0, backend="ray", **{refused: value})
    with pytest.raises(ValueError, match=f"^{re.escape(problem)}"):
        request.validate()
    assert not (tmp_path / "snapshots").exists()


@needs_ray
def test_a_cluster_nobody_listens_at_is_one_line_and_exit_2(monkeypatch):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process, whatever ran before
    started = time.monotonic()
    result = CliRunner().invoke(app, ["sweep", "--backend", "ray", "--models", "sasrec", "--lengths", "8",
                                      "--device", "cpu", "--no-plot"])
    assert result.exit_code == 2, result.output
    assert f"cannot reach the Ray cluster at RAY_ADDRESS=127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output
    assert time.monotonic() - started < 60
