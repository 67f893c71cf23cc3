"""Nothing measured is lost: interrupts, signals, kills, orphaned workers, concurrent writers,
reproducible seeds. Real subprocesses and real signals throughout."""
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import FAST_FLAGS, store_points
from typer.testing import CliRunner

from profiler.cli import app, main
from profiler.results.store import ResultsStore, read_results, sidecar_path
from profiler.run.plan import plan_points
from profiler.run.workload import build_workload

LENGTHS = "8,12,16,20,24,28"
SEQPROF = [sys.executable, "-m", "profiler.cli"]
SWEEP = [*SEQPROF, "sweep", "--models", "sasrec", "--lengths", LENGTHS, *FAST_FLAGS,
         # a longer budget per point leaves time to interrupt the sweep between its points
         "--time-budget-s", "0.5", "--min-reps", "3", "--max-reps", "200"]


# Runs the command as a terminal starts it: SIGINT handled by default and not blocked. A child
# inherits an ignored or blocked SIGINT through exec, and this test process may have either from
# what ran in it before (Ray's driver, a worker's start); seqprof rightly leaves an ignored Ctrl-C
# ignored. Exec keeps the pid, so the pid is the command's.
AS_FROM_A_TERMINAL = [sys.executable, "-c", textwrap.dedent("""
    import os, signal, sys
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGHUP, signal.SIGTERM})
    os.execv(sys.argv[1], sys.argv[1:])
""")]


def start_sweep(out) -> subprocess.Popen:
    # A session of its own, so the signal reaches the sweep and its worker as a terminal's Ctrl-C would.
    return subprocess.Popen([*AS_FROM_A_TERMINAL, *SWEEP, "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_rows(path, count: int, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size and len(pd.read_csv(path)) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"no {count} rows in {path} after {timeout_s} s")


def wait_until(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.01)
    raise AssertionError(f"no {what} after {timeout_s} s")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has ended; it only waits for its parent to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def spawned_worker(pid: int) -> int | None:
    """A worker process the sweep ``pid`` has started, if any (not multiprocessing's tracker)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return None
    for child in map(int, children):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        except FileNotFoundError:
            continue
    return None


def loading_torch(pid: int) -> bool:
    """Whether process ``pid`` has loaded torch's library, so is importing torch or past it."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False


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


def test_a_sweep_that_comes_while_a_resume_reads_the_file_is_refused_and_no_point_is_lost(tmp_path, monkeypatch):
    # The other sweep runs, whole, in the moment the resume has read the file: a resume that took
    # the lock after reading would write back what it read and drop the other's point.
    out = tmp_path / "r.csv"
    store_points(out, [8])
    other = []
    read_results_then = read_results

    def read_while_another_sweep_runs(path):
        frame = read_results_then(path)
        if not other:
            command = [*SEQPROF, "sweep", "--models", "sasrec", "--lengths", "8,12", *FAST_FLAGS, "--out", str(out),
                       "--resume"]
            other.append(subprocess.run(command, capture_output=True, text=True, timeout=300, check=False))
        return frame

    monkeypatch.setattr("profiler.results.store.read_results", read_while_another_sweep_runs)
    assert main(["sweep", "--models", "sasrec", "--lengths", "8,16", *FAST_FLAGS, "--out", str(out), "--resume"]) == 0
    assert other[0].returncode == 2, other[0].stderr
    assert other[0].stderr.splitlines() == [f"seqprof: error: results file {out} is in use by another sweep"]
    assert read_results(out)["seq_len"].tolist() == [8, 16]


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


def test_the_seed_fixes_the_weights_and_the_batch_and_is_part_of_the_point_key():
    def workload(seed: int):
        return build_workload("sasrec", "naive", "train", 8, 4, "tiny", "cpu", seed=seed)

    first, again, other = workload(7), workload(7), workload(8)
    for a, b, c in zip(first.model.state_dict().values(), again.model.state_dict().values(),
                       other.model.state_dict().values()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, c) for a, c in zip(first.model.state_dict().values(), other.model.state_dict().values()))
    assert all(torch.equal(first.batch[k], again.batch[k]) for k in first.batch)
    assert not torch.equal(first.batch["seq"], other.batch["seq"])
    seven, eight = (plan_points(["sasrec"], [8], ["train"], ["naive"], 4, "tiny", "cpu", seed=s)[0] for s in (7, 8))
    assert seven.key != eight.key  # a resume with another seed measures anew


@pytest.mark.slow
@pytest.mark.parametrize("signum, to_group", [(signal.SIGTERM, False), (signal.SIGHUP, True)],
                         ids=["SIGTERM to the sweep", "SIGHUP to its group"])
def test_sigterm_and_sighup_stop_after_the_point_in_flight_and_the_printed_command_resumes(tmp_path, signum, to_group):
    # A path that a shell would split or unquote, to show the printed command pastes as it is.
    out = tmp_path / "my results" / "run 'one'.csv"
    proc = start_sweep(out)
    wait_for_rows(out, 1)
    worker = int(pd.read_csv(out)["worker_pid"].iloc[0])
    (os.killpg if to_group else os.kill)(proc.pid, signum)  # a hangup reaches the worker too
    _, stderr = proc.communicate(timeout=240)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, stderr
    assert f"Stopped by {name}." in stderr and "Traceback" not in stderr
    kept = read_results(out)
    assert 1 <= len(kept) < 6 and set(kept["status"]) == {"ok"}  # the point in flight finished, no more
    run = json.loads(sidecar_path(out).read_text())["runs"][-1]
    assert run["interrupted"] and run["stopped_by"] == name and run["points_measured"] == len(kept)
    assert not alive(worker)
    command = shlex.split(stderr.strip().splitlines()[-1])
    assert command[0] == "seqprof" and command[command.index("--out") + 1] == str(out)
    finished = subprocess.run([*SEQPROF, *command[1:]], capture_output=True, text=True, timeout=600, check=False)
    assert finished.returncode == 0, finished.stderr
    assert f"{6 - len(kept)} points measured" in finished.stderr
    assert_complete_without_duplicates(out)


# Runs the sweep given as arguments under a subreaper, as systemd, tini -s or docker --init do:
# an orphan is adopted by this process rather than by pid 1. Exits once every descendant has.
UNDER_SUBREAPER = textwrap.dedent("""
    import ctypes, os, subprocess, sys
    ctypes.CDLL(None).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    sweep = subprocess.Popen(sys.argv[1:])
    print(sweep.pid, flush=True)
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break
""")


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["while the worker starts", "while the worker measures"])
def test_a_sweep_killed_with_sigkill_takes_its_worker_with_it(tmp_path, moment):
    out = tmp_path / "r.csv"
    wrapper = subprocess.Popen([sys.executable, "-c", UNDER_SUBREAPER, *SWEEP, "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    sweep = int(wrapper.stdout.readline())
    worker = wait_until(lambda: spawned_worker(sweep), 240, "worker")
    if moment == "while the worker starts":
        wait_until(lambda: loading_torch(worker), 120, "torch loading in the worker")
    else:
        wait_for_rows(out, 1)
    os.kill(sweep, signal.SIGKILL)
    _, stderr = wrapper.communicate(timeout=120)  # returns once the worker, adopted by the wrapper, is gone
    assert not alive(worker)
    assert "Traceback" not in stderr, stderr


@pytest.mark.slow
def test_ctrl_c_while_torch_loads_is_one_line(tmp_path):
    proc = start_sweep(tmp_path / "r.csv")

    wait_until(lambda: loading_torch(proc.pid), 120, "torch loading")
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert (proc.returncode, stderr) == (130, "seqprof: interrupted\n")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ctrl_c_while_a_worker_starts_keeps_its_point_and_prints_no_traceback(tmp_path):
    out = tmp_path / "r.csv"
    proc = start_sweep(out)
    worker = wait_until(lambda: spawned_worker(proc.pid), 240, "worker")
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the worker, importing torch, gets it too
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Stopped by Ctrl-C." in stderr
    kept = read_results(out)
    assert kept["status"].tolist() == ["ok"] and kept["worker_pid"].tolist() == [worker]
