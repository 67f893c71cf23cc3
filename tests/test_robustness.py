"""Nothing measured is lost: interrupts, kills, concurrent writers, reproducible seeds."""
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import FAST_FLAGS, TINY_BUDGET
from profiler.cli import app
from profiler.points import plan_points
from profiler.runner import RunnerOptions, SweepRunner
from profiler.store import ResultsStore, read_results

LENGTHS = "8,12,16,20,24,28"
SWEEP = [sys.executable, "-m", "profiler.cli", "sweep", "--models", "sasrec", "--lengths", LENGTHS, *FAST_FLAGS,
         # a longer budget per point leaves time to interrupt the sweep between its points
         "--time-budget-s", "0.5", "--min-reps", "3", "--max-reps", "200"]


def start_sweep(out) -> subprocess.Popen:
    # A session of its own, so the signal reaches the sweep and its worker as a terminal's Ctrl-C would.
    return subprocess.Popen([*SWEEP, "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def wait_for_rows(path, count: int, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size and len(pd.read_csv(path)) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {count} rows in {path} after {timeout_s} s")


def resume(out) -> subprocess.CompletedProcess:
    return subprocess.run([*SWEEP, "--out", str(out), "--resume"], capture_output=True, text=True, timeout=600)


def assert_complete_without_duplicates(out) -> None:
    frame = read_results(out)
    assert sorted(frame["seq_len"]) == [int(x) for x in LENGTHS.split(",")]
    assert set(frame["status"]) == {"ok"}


@pytest.mark.slow
def test_ctrl_c_stops_after_the_current_point_and_resume_completes(tmp_path):
    out = tmp_path / "r.csv"
    proc = start_sweep(out)
    wait_for_rows(out, 1)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 130, stderr
    assert "Resume with:" in stderr and "--resume" in stderr and "Traceback" not in stderr
    kept = read_results(out)
    assert 1 <= len(kept) < 6 and set(kept["status"]) == {"ok"}  # the point in flight finished, no more
    finished = resume(out)
    assert finished.returncode == 0, finished.stderr
    assert f"{6 - len(kept)} points measured" in finished.stderr
    assert_complete_without_duplicates(out)


@pytest.mark.slow
def test_a_killed_sweep_keeps_every_finished_point_and_resume_completes(tmp_path):
    out = tmp_path / "r.csv"
    proc = start_sweep(out)
    wait_for_rows(out, 2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    kept = read_results(out)  # readable: rows are written whole or not at all
    assert len(kept) >= 2 and set(kept["status"]) == {"ok"}
    finished = resume(out)
    assert finished.returncode == 0, finished.stderr
    assert_complete_without_duplicates(out)


def test_a_second_sweep_on_the_same_results_is_refused(tmp_path):
    out = tmp_path / "r.csv"
    store = ResultsStore.create(out)
    with store:
        store.start_run({"command": ["first"]})
        result = CliRunner().invoke(app, ["sweep", "--models", "sasrec", "--lengths", "8", "--out", str(out),
                                          "--resume", *FAST_FLAGS])
    assert result.exit_code == 2
    assert "is in use by another sweep" in result.output
    assert read_results(out).empty  # the file the first sweep holds is untouched


def test_the_seed_makes_device_independent_figures_reproducible(tmp_path):
    columns = ["tensor_footprint_mib", "activations_mib", "flops_per_step", "param_count"]

    def figures(name: str, seed: int) -> pd.DataFrame:
        store = ResultsStore.create(tmp_path / name)
        with store:
            points = plan_points(["sasrec", "convrec-light"], [8, 16], ["train", "infer"], ["naive"], 4, "tiny", "cpu",
                                 seed=seed)
            SweepRunner(store, RunnerOptions(budget=TINY_BUDGET)).run(points)
        return read_results(tmp_path / name)[["model", "mode", "seq_len", "seed", *columns]]

    first, again = figures("a.csv", seed=7), figures("b.csv", seed=7)
    pd.testing.assert_frame_equal(first, again)
    assert (first["seed"] == 7).all()
