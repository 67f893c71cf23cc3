"""GPU behaviour of the harness and the models; skipped without a CUDA GPU (CI has none).

Run on a GPU machine with `pytest tests/test_gpu.py`. Each test measures real points through the
runner, in worker processes, as a sweep does.
"""
import pickle
from pathlib import Path

import pytest
import torch

from models.profiles import get_profile
from models.registry import REGISTRY
from profiler.analysis.limits import check_limit, measured_limit, model_query
from profiler.results.store import ResultsStore
from profiler.run.faults import FAULT_ENV
from profiler.run.lanes import LaneRunner, gpu_assignment
from profiler.run.oom import may_fit_alone, oom_columns
from profiler.run.plan import plan_points
from profiler.run.runner import HELD_AFTER_LIMIT_MIB, RunnerOptions, SweepRunner
from profiler.run.snapshots import prepare_folder, snapshot_name
from profiler.run.workload import build_workload
from profiler.trackers.timing import MeasurementBudget
from profiler.units import MIB

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; the CPU tests cover the rest"),
]
BUDGET = MeasurementBudget(warmup_steps=3, time_budget_s=0.3, min_reps=5, max_reps=20)


def measure(tmp_path, points, name="r.csv", **options) -> list[dict]:
    store = ResultsStore.create(tmp_path / name)
    with store:
        return SweepRunner(store, RunnerOptions(budget=BUDGET, **options)).run(points)


def cuda_points(model, lengths, mode="train", attention="naive", batch_size=128, profile=None):
    return plan_points([model], lengths, [mode], [attention], batch_size, profile, "cuda")


def test_a_point_in_a_reused_worker_matches_the_same_point_in_a_fresh_process(tmp_path):
    points = cuda_points("sasrec", [200, 500]) + cuda_points("sasrec", [300], mode="infer")
    reused = measure(tmp_path, points)
    fresh = measure(tmp_path, points, name="fresh.csv", fresh_worker_per_point=True)
    assert not reused[1]["worker_fresh"] and fresh[1]["worker_fresh"]
    # Both measured in the GPU's turns, which the spares priming beside them take too.
    assert all(r.get("turn_wait_s", -1.0) >= 0.0 for r in reused + fresh)
    for a, b in zip(reused, fresh):
        assert a["status"] == b["status"] == "ok"
        assert a["peak_allocated_mib"] == pytest.approx(b["peak_allocated_mib"], rel=0.02)
        assert a["nvml_peak_mib"] == pytest.approx(b["nvml_peak_mib"], rel=0.02)


def test_the_point_after_an_oom_matches_the_same_point_measured_alone(tmp_path):
    # SASRec-naive at L = 40,000 needs (128, 1, L, L) fp32 scores: ~760 GiB, far past any GPU.
    points = cuda_points("sasrec", [400, 40_000, 50_000]) + cuda_points("sasrec", [400], mode="infer")
    rows = measure(tmp_path, points)
    assert [r["status"] for r in rows] == ["ok", "oom", "skipped", "ok"]
    # Beside the spares, but larger than the whole card: the OOM stands, not measured again.
    assert rows[1]["oom_request_mib"] > rows[1]["oom_room_alone_mib"] > 0
    assert not rows[1].get("alone_after_shared_oom")
    # Measured by the worker that ran out of memory: the failed allocation was its first large one,
    # and the worker freed what that point held.
    assert rows[1]["held_after_mib"] <= HELD_AFTER_LIMIT_MIB
    assert rows[3]["worker_pid"] == rows[1]["worker_pid"] and not rows[3]["worker_fresh"]
    alone = measure(tmp_path, cuda_points("sasrec", [400], mode="infer"), name="alone.csv")[0]
    assert rows[3]["peak_allocated_mib"] == pytest.approx(alone["peak_allocated_mib"], rel=0.02)
    assert rows[3]["nvml_peak_mib"] == pytest.approx(alone["nvml_peak_mib"], rel=0.02)


def test_the_point_after_an_oom_late_in_a_step_matches_the_same_point_measured_alone(tmp_path):
    # CosRec's training at L = 500, batch 128, needs its L x L grid's activations, hundreds of GiB:
    # past any one GPU. It fails tens of GiB into the probe's forward, whose saved tensors once
    # stayed alive in its worker (61 GiB); a worker that still holds memory must be retired. No
    # spare, so nothing measures the OOM again.
    points = cuda_points("cosrec", [500]) + cuda_points("cosrec", [50], mode="infer")
    failed, after = measure(tmp_path, points, spare_workers=0)
    assert (failed["status"], after["status"]) == ("oom", "ok")
    if failed["held_after_mib"] > HELD_AFTER_LIMIT_MIB:
        assert after["worker_fresh"] and after["worker_pid"] != failed["worker_pid"]
    else:
        assert after["worker_pid"] == failed["worker_pid"]
    assert after["held_after_mib"] <= HELD_AFTER_LIMIT_MIB
    alone = measure(tmp_path, cuda_points("cosrec", [50], mode="infer"), name="alone.csv")[0]
    assert after["peak_allocated_mib"] == pytest.approx(alone["peak_allocated_mib"], rel=0.02)
    assert after["nvml_peak_mib"] == pytest.approx(alone["nvml_peak_mib"], rel=0.02)


def _growth(rows, column):
    """Second difference ratio: (y(4L) - y(2L)) / (y(2L) - y(L)); 2 for linear, 4 for quadratic."""
    a, b, c = (r[column] for r in rows)
    return (c - b) / (b - a)


def test_a_limit_searched_in_one_worker_through_its_ooms_holds_in_fresh_workers():
    # The search keeps a worker whose probe ran out of memory and freed everything: the limit it finds
    # must be the one a user finds running the model alone at it, and a little above it.
    query = model_query("sasrec", "naive", "train", None, "seq_len", 128, 4.0, "float32")
    largest, smallest_failing, probes = measured_limit(query, 128, 8192)
    ooms = [p for p in probes if not p.fits]
    assert largest is not None and smallest_failing is not None and len(ooms) >= 2
    assert all(p.record["held_after_mib"] <= HELD_AFTER_LIMIT_MIB for p in ooms)
    assert len({p.record["worker_pid"] for p in probes}) == 1  # no OOM retired the worker
    assert check_limit(query, largest).holds


def test_the_allocators_out_of_memory_error_names_the_request_and_the_room_the_card_alone_leaves():
    total_mib = torch.cuda.get_device_properties(0).total_memory / MIB
    torch.zeros(1, device="cuda")  # this process's context: what it holds when the request fails
    with pytest.raises(torch.OutOfMemoryError) as failed:
        torch.empty(int(total_mib + 1024) * MIB, dtype=torch.uint8, device="cuda")
    columns = oom_columns(str(failed.value))
    assert columns["oom_request_mib"] == pytest.approx(total_mib + 1024, rel=0.001)
    assert total_mib - 4096 < columns["oom_room_alone_mib"] < total_mib
    assert not may_fit_alone(columns)


def test_sdpa_memory_grows_linearly_and_naive_quadratically_on_cuda(tmp_path):
    naive = measure(tmp_path, cuda_points("sasrec", [512, 1024, 2048]))
    sdpa = measure(tmp_path, cuda_points("sasrec", [512, 1024, 2048], attention="sdpa"), name="sdpa.csv")
    assert _growth(naive, "peak_allocated_mib") > 3.3
    assert _growth(sdpa, "peak_allocated_mib") < 2.5
    assert _growth(sdpa, "tensor_footprint_mib") < 2.5  # the flash kernel saves O(L) on CUDA


def test_tensor_footprint_scales_the_same_on_cuda_and_cpu(tmp_path):
    """Bytes differ a little between devices (the CPU keeps dropout masks as floats, CUDA as bytes);
    the growth with length and the FLOPs must not."""
    lengths = [64, 128, 256]
    for model in ("convrec-light", "sasrec"):
        cuda = measure(tmp_path, cuda_points(model, lengths, batch_size=8, profile="tiny"), name=f"{model}-cuda.csv")
        cpu_points = plan_points([model], lengths, ["train"], ["naive"], 8, "tiny", "cpu")
        cpu = measure(tmp_path, cpu_points, name=f"{model}-cpu.csv")
        assert _growth(cuda, "tensor_footprint_mib") == pytest.approx(_growth(cpu, "tensor_footprint_mib"), rel=0.1)
        assert [r["flops_per_step"] for r in cuda] == [r["flops_per_step"] for r in cpu]


@pytest.mark.parametrize("name", [n for n, s in REGISTRY.items() if s.has_attention_backend])
def test_naive_and_sdpa_agree_on_cuda(name):
    spec = REGISTRY[name]
    torch.backends.cuda.matmul.allow_tf32 = False
    outputs = {}
    for backend in ("naive", "sdpa"):
        config = spec.build_config(get_profile("tiny"), 64, backend)
        torch.manual_seed(0)
        model = spec.build(config).cuda().eval()
        batch = spec.make_batch(config, 16, 64, "cuda", torch.Generator("cuda").manual_seed(0))
        with torch.inference_mode():
            outputs[backend] = (model(batch), model.predict(batch))
    for a, b in zip(outputs["naive"], outputs["sdpa"]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


needs_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


def test_rows_name_the_gpu_and_nvml_reads_this_process_on_it(tmp_path):
    row = measure(tmp_path, cuda_points("sasrec", [200]))[0]
    assert row["gpu_index"] == 0 and row["gpu_uuid"].startswith("GPU-")
    assert row["nvml_source"] == "process"


@needs_two_gpus
def test_a_point_measures_the_same_on_either_gpu_of_the_host(tmp_path):
    points = cuda_points("sasrec", [200, 500]) + cuda_points("convrec-light", [500], mode="infer")
    rows = {}
    for index in (0, 1):
        store = ResultsStore.create(tmp_path / f"gpu{index}.csv")
        with store:
            rows[index] = SweepRunner(store, RunnerOptions(budget=BUDGET), gpu=gpu_assignment(index)).run(points)
    for a, b in zip(rows[0], rows[1]):
        assert a["status"] == b["status"] == "ok"
        assert (a["gpu_index"], b["gpu_index"]) == (0, 1) and a["gpu_uuid"] != b["gpu_uuid"]
        # NVML found each worker's own process on its own GPU
        assert a["nvml_source"] == b["nvml_source"] == "process"
        assert a["peak_allocated_mib"] == b["peak_allocated_mib"]
        assert a["nvml_peak_mib"] == pytest.approx(b["nvml_peak_mib"], rel=0.02)
        assert a["time_median_ms"] == pytest.approx(b["time_median_ms"], rel=0.03)


@needs_two_gpus
def test_two_lanes_measure_what_one_gpu_measures(tmp_path):
    points = [p for model in ("sasrec", "convrec-light", "lrurec", "fmlp-rec") for p in cuda_points(model, [200, 500])]
    one = {(r["model"], r["seq_len"]): r for r in measure(tmp_path, points, name="one.csv")}
    store = ResultsStore.create(tmp_path / "two.csv")
    with store:
        two = LaneRunner(store, RunnerOptions(budget=BUDGET), [gpu_assignment(0), gpu_assignment(1)]).run(points)
    assert {r["gpu_index"] for r in two} == {0, 1}
    for row in two:
        alone = one[row["model"], row["seq_len"]]
        assert row["status"] == alone["status"] == "ok"
        assert row["peak_allocated_mib"] == alone["peak_allocated_mib"]
        assert row["time_median_ms"] == pytest.approx(alone["time_median_ms"], rel=0.03)


def test_lanes_sharing_the_gpu_measure_what_one_lane_measures(tmp_path):
    points = [p for model in ("sasrec", "convrec-light", "lrurec", "fmlp-rec") for p in cuda_points(model, [200, 500])]
    one = {(r["model"], r["seq_len"]): r for r in measure(tmp_path, points, name="one.csv")}
    store = ResultsStore.create(tmp_path / "shared.csv")
    with store:
        shared = LaneRunner(store, RunnerOptions(budget=BUDGET, lanes_per_gpu=3), [gpu_assignment(0)]).run(points)
    assert len({r["worker_pid"] for r in shared}) >= 3  # three lanes measured
    assert any(r["turn_wait_s"] > 0 for r in shared)  # and waited for each other
    for row in shared:
        alone = one[row["model"], row["seq_len"]]
        assert row["status"] == alone["status"] == "ok"
        assert row["peak_allocated_mib"] == alone["peak_allocated_mib"]
        assert row["time_median_ms"] == pytest.approx(alone["time_median_ms"], rel=0.03)


def test_a_point_out_of_memory_beside_other_lanes_is_measured_alone_as_one_lane_measures_it(tmp_path, monkeypatch):
    # The injected fault strikes only where lanes share the GPU, as a point near the card's memory does
    points = [p for model in ("sasrec", "convrec-light", "lrurec") for p in cuda_points(model, [200, 500])]
    one = {(r["model"], r["seq_len"]): r for r in measure(tmp_path, points, name="one.csv")}
    monkeypatch.setenv(FAULT_ENV, "sasrec[naive] train L=200=oom-shared")
    store = ResultsStore.create(tmp_path / "shared.csv")
    with store:
        shared = LaneRunner(store, RunnerOptions(budget=BUDGET, lanes_per_gpu=3), [gpu_assignment(0)]).run(points)
    assert sorted((r["model"], r["seq_len"]) for r in shared) == sorted(one)  # each point once
    for row in shared:
        alone = one[row["model"], row["seq_len"]]
        assert row["status"] == alone["status"] == "ok"
        assert row.get("alone_after_shared_oom", False) == (row["model"] == "sasrec")  # its whole unit, nothing else
        assert row["device_name"] == torch.cuda.get_device_name(0)
        # measured in the GPU's turns beside other lanes, or alone after them, without turns
        assert ("shared_turn_wait_s" in row) != row.get("alone_after_shared_oom", False)
        assert row["peak_allocated_mib"] == alone["peak_allocated_mib"]
        assert row["time_median_ms"] == pytest.approx(alone["time_median_ms"], rel=0.03)


@pytest.mark.parametrize("model, attention", [("sasrec", "sdpa"), ("convrec-light", "none")])
def test_a_graph_captured_training_step_measures_and_trains(tmp_path, model, attention):
    points = plan_points([model], [200], ["train"], [attention], 128, None, "cuda", executions=("cuda-graphs",))
    row = measure(tmp_path, points)[0]
    assert row["status"] == "ok", row["error"]
    assert row["compile_s"] > 0 and row["time_median_ms"] > 0

    workload = build_workload(model, attention, "train", 64, 16, "tiny", "cuda", execution="cuda-graphs")
    assert all(group["capturable"] for group in workload.optimizer.param_groups)
    workload.prepare()
    params = [p for p in workload.model.parameters() if p.grad is not None]
    addresses = [p.grad.data_ptr() for p in params]

    def loss() -> float:
        workload.model.eval()  # no dropout: the same batch gives the same loss
        with torch.no_grad():
            value = workload.model(workload.batch).item()
        workload.model.train()
        return value

    first, before = loss(), [p.detach().clone() for p in params]
    workload.step()
    torch.cuda.synchronize()
    after_one = [p.detach().clone() for p in params]
    assert any(not torch.equal(a, b) for a, b in zip(before, after_one))  # a replay takes a step
    for _ in range(30):
        workload.step()
    torch.cuda.synchronize()
    assert any(not torch.equal(a, p) for a, p in zip(after_one, params))  # and so does every later one
    assert loss() < first  # the replays train: the batch's loss falls
    assert [p.grad.data_ptr() for p in params] == addresses  # the gradients stayed where captured


def test_a_memory_snapshot_records_one_more_step_and_leaves_the_measured_peaks_alone(tmp_path):
    points = cuda_points("sasrec", [200], attention="sdpa")
    folder = prepare_folder(tmp_path / "snapshots")
    row = measure(tmp_path, points, memory_snapshot_dir=folder)[0]
    plain = measure(tmp_path, points, name="plain.csv")[0]
    assert row["status"] == plain["status"] == "ok"
    path = Path(row["memory_snapshot"])
    assert path == folder / snapshot_name(points[0]) and row["snapshot_s"] > 0
    with open(path, "rb") as file:
        snapshot = pickle.load(file)  # what https://pytorch.org/memory_viz reads
    events = [event for trace in snapshot["device_traces"] for event in trace]
    assert events and {"alloc", "free_requested"} <= {event["action"] for event in events}
    assert snapshot["segments"]
    # the recorded step came after the peaks were read
    assert row["peak_allocated_mib"] == pytest.approx(plain["peak_allocated_mib"], rel=0.01)
    assert "memory_snapshot" not in plain


def test_a_point_on_cuda_reaches_a_fraction_of_the_peaks_its_worker_measured(tmp_path):
    points = plan_points(["sasrec"], [200, 500], ["train"], ["naive"], 128, None, "cuda",
                         dtypes=("float32", "tf32", "bf16"))
    rows = measure(tmp_path, points)
    assert [r["status"] for r in rows] == ["ok"] * 6
    for row in rows:
        assert 0 < row["peak_fraction"] <= 1.05, row
        assert 0 < row["bandwidth_fraction"], row
        assert row["peak_bandwidth_gib_s"] > 100 and isinstance(row["memory_bound"], bool)
        assert row["moved_mib_per_step"] > 0 and row["flops_per_byte"] > 0
    peaks = {r["dtype"]: r["peak_tflops"] for r in rows}
    assert len({(r["dtype"], r["peak_tflops"]) for r in rows}) == 3  # measured once per dtype in the worker
    assert peaks["float32"] > 5  # TF32 off: tens of TFLOP/s on a data-centre GPU
    assert peaks["tf32"] > peaks["float32"] and peaks["bf16"] > peaks["float32"]  # tensor cores
