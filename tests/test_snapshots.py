"""--memory-snapshot: a file per point named from its knobs, the option's way from the command line
to the worker's measurement, and every bad use a one-line error before anything is measured.
The snapshot itself needs CUDA: tests/test_gpu.py records one."""
import re
from pathlib import Path

import pytest
import torch
from helpers import TINY_BUDGET, StandInWorker
from typer.testing import CliRunner

from models.registry import REGISTRY
from profiler.cli import app
from profiler.results.schema import COLUMNS, TEXT_COLUMNS, PointSpec
from profiler.results.store import ResultsStore, read_results
from profiler.run import worker
from profiler.run.lanes import LaneRunner
from profiler.run.plan import plan_points
from profiler.run.runner import RunnerOptions, SweepRunner, Worker
from profiler.run.snapshots import prepare_folder, snapshot_name
from profiler.run.sweep import SweepRequest
from profiler.trackers.timing import MeasurementBudget

SAFE = re.compile(r"[A-Za-z0-9._-]+\.pickle")


def test_a_snapshot_is_named_from_the_points_knobs():
    point = PointSpec("sasrec", 200, "train", 128, "ml-1m", "sdpa", "cuda")
    assert snapshot_name(point) == "sasrec-sdpa-ml-1m-train-L200-B128-float32-eager.pickle"
    seeded = PointSpec("convrec-light", 50, "infer", 8, "tiny", "none", "cuda", seed=3, dtype="amp-bf16",
                       execution="cuda-graphs")
    assert snapshot_name(seeded) == "convrec-light-none-tiny-infer-L50-B8-amp-bf16-cuda-graphs-seed3.pickle"


def test_every_point_of_a_grid_has_its_own_safe_file_name():
    points = plan_points(list(REGISTRY), [8, 50], ["train", "infer"], ["naive", "sdpa"], 4, None, "cuda",
                         dtypes=("float32", "bf16", "amp-bf16"), executions=("eager", "compile", "cuda-graphs"))
    points += plan_points(["sasrec"], [8, 50], ["train"], ["naive"], 4, "tiny", "cuda", seed=1)
    points += plan_points(["sasrec"], [8, 50], ["train"], ["naive"], 16, "tiny", "cuda")
    names = [snapshot_name(point) for point in points]
    assert len(set(names)) == len({point.key for point in points}) == len(points)
    assert all(SAFE.fullmatch(name) for name in names)


def test_a_plugin_models_file_name_is_safe_and_tells_two_files_of_one_name_apart():
    one = PointSpec("/home/me/a b/my_gru.py:GRURec", 50, "train", 8, "tiny", "none", "cuda")
    other = PointSpec("/home/me/elsewhere/my_gru.py:GRURec", 50, "train", 8, "tiny", "none", "cuda")
    assert snapshot_name(one) != snapshot_name(other)
    for point in (one, other):
        assert SAFE.fullmatch(snapshot_name(point)) and snapshot_name(point).startswith("my_gru.py_GRURec-none-tiny")


def test_the_folder_is_created_and_must_be_writable(tmp_path, monkeypatch):
    assert prepare_folder(tmp_path / "a" / "b") == (tmp_path / "a" / "b").resolve()
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "plain").write_text("x")
    with pytest.raises(ValueError, match="cannot create the memory snapshot folder .*plain/s"):
        prepare_folder(tmp_path / "plain" / "s")
    # Permission bits do not bind root, so the check is made to see a read-only folder.
    monkeypatch.setattr("profiler.run.snapshots.os.access", lambda path, mode: False)
    with pytest.raises(ValueError, match="cannot write memory snapshots to .*: permission denied"):
        prepare_folder(tmp_path)


def test_rows_have_a_text_column_for_the_file_and_one_for_the_seconds():
    assert {"memory_snapshot", "snapshot_s"} <= set(COLUMNS)
    assert TEXT_COLUMNS["memory_snapshot"] == "string"


def request(device="cuda", **changes) -> SweepRequest:
    return SweepRequest(["sasrec"], [8], ["train"], ["naive"], 2, "tiny", device, 0, MeasurementBudget(), None,
                        False, 60.0, **changes)


def test_a_cpu_sweep_and_a_ray_sweep_refuse_it(tmp_path):
    with pytest.raises(ValueError, match="^--memory-snapshot records the CUDA allocator; this sweep runs on the CPU$"):
        request("cpu", memory_snapshot_dir=tmp_path).validate()
    with pytest.raises(ValueError, match="^--memory-snapshot writes its files on this host; with --backend ray"):
        request(backend="ray", memory_snapshot_dir=tmp_path).validate()


def invoke(*args):
    return CliRunner().invoke(app, ["sweep", "--models", "sasrec", "--mode", "train", "--attention", "naive",
                                    "--batch-size", "2", "--profile", "tiny", "--no-plot", *args])


def test_on_the_command_line_a_cpu_sweep_or_an_unusable_folder_is_a_one_line_error(tmp_path, monkeypatch):
    out = tmp_path / "r.csv"
    result = invoke("--device", "cpu", "--lengths", "8", "--out", str(out), "--memory-snapshot", str(tmp_path / "s"))
    assert result.exit_code == 2
    assert result.output == "seqprof: error: --memory-snapshot records the CUDA allocator; this sweep runs on the CPU\n"

    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # a CUDA sweep, to reach the folder's checks
    (tmp_path / "plain").write_text("x")
    result = invoke("--device", "cuda", "--lengths", "8", "--out", str(out), "--memory-snapshot", str(tmp_path / "plain"))
    assert result.exit_code == 2 and len(result.output.splitlines()) == 1
    assert result.output.startswith(f"seqprof: error: cannot create the memory snapshot folder {tmp_path / 'plain'}")
    monkeypatch.setattr("profiler.run.snapshots.os.access", lambda path, mode: False)
    result = invoke("--device", "cuda", "--lengths", "8", "--out", str(out), "--memory-snapshot", str(tmp_path / "s"))
    assert result.exit_code == 2
    assert result.output == f"seqprof: error: cannot write memory snapshots to {tmp_path / 's'}: permission denied\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "s"]  # no results file: nothing measured


class FakeWorker(StandInWorker):
    """Keeps what each point's measurement was asked for, and measures none."""

    asked: list[dict] = []

    def measure(self, point, budget, timeout_s, memory_limit_mib=None, memory_snapshot_dir=None) -> dict:
        super().measure(point, budget, timeout_s)
        FakeWorker.asked.append({"point": point, "memory_snapshot_dir": memory_snapshot_dir})
        return {"status": "error", "error": "not measured: a stand-in worker"}


@pytest.fixture
def fake_workers(monkeypatch):
    monkeypatch.setattr("profiler.run.runner.Worker", FakeWorker)
    FakeWorker.asked = []
    return FakeWorker.asked


def test_the_sweep_command_hands_the_folder_to_every_points_worker(tmp_path, monkeypatch, fake_workers):
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.chdir(tmp_path)
    result = invoke("--device", "cuda", "--lengths", "8,12", "--out", "r.csv", "--memory-snapshot", "snaps")
    assert result.exit_code == 0, result.output
    assert [asked["point"].seq_len for asked in fake_workers] == [8, 12]
    # absolute, so that the rows name the file wherever they are read from
    assert {asked["memory_snapshot_dir"] for asked in fake_workers} == {tmp_path / "snaps"}
    assert (tmp_path / "snaps").is_dir()


@pytest.mark.parametrize("lanes", [False, True])
def test_runner_options_reach_the_worker_of_each_lane(tmp_path, fake_workers, lanes):
    points = plan_points(["sasrec", "convrec-light"], [8], ["train"], ["naive"], 2, "tiny", "cuda")
    options = RunnerOptions(budget=TINY_BUDGET, memory_snapshot_dir=tmp_path)
    with ResultsStore.create(tmp_path / "r.csv") as store:
        if lanes:
            LaneRunner(store, options, [worker.GpuAssignment(0), worker.GpuAssignment(1)]).run(points)
        else:
            SweepRunner(store, options).run(points)
    assert len(fake_workers) == 2 and {asked["memory_snapshot_dir"] for asked in fake_workers} == {tmp_path}
    assert len(read_results(tmp_path / "r.csv")) == 2


class FakeConnection:
    """One end of the runner's pipe: what is sent is kept, what is received comes from a list."""

    def __init__(self, incoming=()):
        self.sent, self.incoming = [], list(incoming)

    def send(self, message) -> None:
        self.sent.append(message)

    def recv(self):
        return self.incoming.pop(0)

    def poll(self, timeout=None) -> bool:
        return True


def test_the_message_to_the_worker_carries_the_folder_to_the_measurement(tmp_path, monkeypatch):
    point = plan_points(["sasrec"], [8], ["train"], ["naive"], 2, "tiny", "cpu")[0]
    runner_end = FakeConnection([{"status": "ok"}])
    sender = object.__new__(Worker)  # its pipe, without its process
    sender._conn, sender._ready, sender.points_measured = runner_end, True, 0
    sender.measure(point, TINY_BUDGET, 60.0, memory_snapshot_dir=tmp_path)
    message = runner_end.sent[0]
    assert message["memory_snapshot_dir"] == str(tmp_path)

    received = {}

    def fake_measure(point, budget, nvml_reader, peak=None, snapshot_dir=None, turns=None, compile_cores=None):
        received.update(point=point, snapshot_dir=snapshot_dir)
        return {}

    monkeypatch.setattr(worker, "measure_point", fake_measure)
    worker_end = FakeConnection([message, None])
    worker._serve(worker_end, "cpu", None, torch.get_num_threads(), None, frozenset())
    assert received == {"point": point, "snapshot_dir": Path(tmp_path)}
    assert worker_end.sent[0] == {"ready": True} and worker_end.sent[1]["status"] == "ok"
