"""Throughput against the device's limits: the traffic counter, the peak rates and when they are
measured, the row's fractions and bound, and the peaks a run records in its sidecar."""
import json

import pytest
import torch
from helpers import TINY_BUDGET
from torch.utils.flop_counter import FlopCounterMode

from profiler.results.schema import COLUMNS, PointSpec
from profiler.results.store import ResultsStore, sidecar_path
from profiler.run.measure import measure_point
from profiler.run.precision import matmul_arithmetic
from profiler.run.sweep import peak_rates_of
from profiler.run.worker import measure_safely, peak_rates_for
from profiler.run.workload import build_workload, step_costs
from profiler.trackers.peak_rate import SIZES, PeakRateCache, PeakRates, measure_peak_rates, roofline_columns
from profiler.trackers.traffic import TrafficCounter
from profiler.units import GIB, MIB

MATRIX_BYTES = 64 * 64 * 4  # one (64, 64) float32 tensor


def test_a_matrix_product_moves_its_two_inputs_and_its_output():
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    with TrafficCounter() as traffic:
        a @ b
    assert traffic.moved_bytes == 3 * MATRIX_BYTES


@pytest.mark.parametrize("view", [
    lambda x: x.view(4096), lambda x: x.reshape(32, 128), lambda x: x.t(), lambda x: x.transpose(0, 1),
    lambda x: x.permute(1, 0), lambda x: x[1:3], lambda x: x[0], lambda x: x.expand(2, 64, 64), lambda x: x.detach(),
    lambda x: x.unsqueeze(0), lambda x: torch.empty_like(x),
])
def test_views_and_bare_allocations_move_nothing(view):
    x = torch.randn(64, 64)
    with TrafficCounter() as traffic:
        view(x)
    assert traffic.moved_bytes == 0


def test_an_in_place_op_reads_and_writes_its_tensor_and_one_tensor_twice_is_read_once():
    x = torch.randn(64, 64)
    with TrafficCounter() as traffic:
        x.add_(1.0)  # read x, write x
        x * x  # read x once, write the product
    assert traffic.moved_bytes == 4 * MATRIX_BYTES


def test_the_traffic_counter_inside_the_flop_counter_leaves_the_flops_as_they_were():
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    alone, stacked = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with alone:
        torch.nn.functional.linear(a, b).relu()
    with stacked, TrafficCounter() as traffic:
        torch.nn.functional.linear(a, b).relu()
    assert stacked.get_total_flops() == alone.get_total_flops() == 2 * 64**3
    assert traffic.moved_bytes == 5 * MATRIX_BYTES  # linear: a, b -> y; relu: y -> y'


def test_the_probe_step_counts_flops_and_bytes_of_one_step():
    costs = step_costs(build_workload("sasrec", "naive", "train", 16, 4, "tiny", "cpu"))
    assert costs.moved_bytes_per_step > 0
    assert costs.flops_per_byte == pytest.approx(costs.flops_per_step / costs.moved_bytes_per_step)


def test_roofline_columns_are_fractions_of_the_peaks_and_the_ridge_separates_the_bounds():
    peak = PeakRates(tflops=100.0, bandwidth_gib_s=1000.0)
    ridge = 100e12 / (1000 * GIB)
    assert peak.ridge_flops_per_byte == pytest.approx(ridge)
    # 10 TFLOP in 1 s: a tenth of the peak; 100 GiB in 1 s: a tenth of the bandwidth
    columns = roofline_columns(10e12, 100 * GIB, 1000.0, peak)
    assert columns["peak_fraction"] == pytest.approx(0.1)
    assert columns["bandwidth_fraction"] == pytest.approx(0.1)
    assert (columns["peak_tflops"], columns["peak_bandwidth_gib_s"]) == (100.0, 1000.0)
    moved = 1e9
    assert roofline_columns(0.99 * ridge * moved, moved, 1.0, peak)["memory_bound"] is True
    assert roofline_columns(ridge * moved, moved, 1.0, peak)["memory_bound"] is False  # at the ridge: compute
    assert roofline_columns(1e9, 0, 1.0, peak)["memory_bound"] is None  # no bytes: no ratio


def test_peak_rates_are_2n3_flops_and_read_plus_write_bytes_over_the_best_time():
    def one_ms(run, reps, device):
        return 1e-3

    rates = measure_peak_rates(torch.float32, False, "cpu", timer=one_ms)
    sizes = SIZES["cpu"]
    assert rates.tflops == pytest.approx(2 * sizes.matmul_n**3 / 1e-3 / 1e12)
    assert rates.bandwidth_gib_s == pytest.approx(2 * sizes.copy_mib * MIB / 1e-3 / GIB)


def test_the_probes_run_in_the_dtypes_arithmetic_and_restore_the_switches():
    seen = []

    def record(run, reps, device):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()))
        return 1e-3

    before = torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()
    measure_peak_rates(torch.float32, True, "cpu", timer=record)
    assert seen[0] == (True, "high")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision()) == before
    assert matmul_arithmetic("float32") == (torch.float32, False)
    assert matmul_arithmetic("tf32") == (torch.float32, True)
    assert matmul_arithmetic("bf16") == matmul_arithmetic("amp-bf16") == (torch.bfloat16, False)


def test_the_peaks_are_measured_on_the_cpu_quickly():
    rates = measure_peak_rates(torch.float32, False, "cpu")
    assert rates.tflops > 0 and rates.bandwidth_gib_s > 0


def _point(length, dtype="float32"):
    return PointSpec("sasrec", length, "train", 4, "tiny", "naive", "cpu", dtype=dtype)


def test_a_process_measures_the_peaks_once_per_arithmetic_at_its_first_point():
    calls = []

    def fake(operand, tf32, device):
        calls.append((operand, tf32, device))
        return PeakRates(tflops=1.0, bandwidth_gib_s=10.0)

    cache = PeakRateCache(fake)
    records = [measure_safely(_point(length, dtype), TINY_BUDGET, None, prime=False, peak_rates=cache)
               for length, dtype in [(8, "float32"), (12, "float32"), (8, "bf16"), (12, "amp-bf16"), (8, "tf32")]]
    assert calls == [(torch.float32, False, "cpu"), (torch.bfloat16, False, "cpu"), (torch.float32, True, "cpu")]
    for record in records:
        assert record["status"] == "ok" and record["peak_tflops"] == 1.0 and record["peak_bandwidth_gib_s"] == 10.0
        assert record["peak_fraction"] == pytest.approx(record["achieved_tflops"] / 1.0)
        moved_bytes = record["moved_mib_per_step"] * MIB
        assert record["flops_per_byte"] == pytest.approx(record["flops_per_step"] / moved_bytes)
        seconds = record["time_median_ms"] * 1e-3
        assert record["bandwidth_fraction"] == pytest.approx(moved_bytes / seconds / (10.0 * GIB))
        assert record["memory_bound"] == (record["flops_per_byte"] < 1e12 / (10.0 * GIB))
        assert record["peak_rate_s"] >= 0


def test_a_failed_peak_measurement_is_the_points_error_not_its_oom():
    def out_of_memory(operand, tf32, device):
        raise torch.OutOfMemoryError("no room for the probe")

    record = measure_safely(_point(8), TINY_BUDGET, None, prime=False, peak_rates=PeakRateCache(out_of_memory))
    assert record["status"] == "error"
    assert record["error"].startswith("RuntimeError: measuring the peak rates failed: OutOfMemoryError")
    with pytest.raises(RuntimeError, match="measuring the peak rates failed"):
        peak_rates_for(_point(8), PeakRateCache(out_of_memory))


def test_a_point_measured_without_peaks_leaves_their_columns_out():
    record = measure_point(_point(8), TINY_BUDGET)
    assert record["moved_mib_per_step"] > 0 and "peak_fraction" not in record


def test_the_columns_are_in_the_schema():
    for column in ("moved_mib_per_step", "flops_per_byte", "peak_tflops", "peak_bandwidth_gib_s", "peak_fraction",
                   "bandwidth_fraction", "memory_bound", "peak_rate_s"):
        assert column in COLUMNS


def _row(dtype, gpu_index, tflops, status="ok"):
    row = {"device": "cuda", "dtype": dtype, "gpu_index": gpu_index, "gpu_uuid": f"GPU-{gpu_index}",
           "device_name": "Test GPU", "status": status}
    if status == "ok":
        row.update(peak_tflops=tflops, peak_bandwidth_gib_s=10 * tflops)
    return row


def test_the_sidecar_records_the_first_peaks_of_each_gpu_and_dtype(tmp_path):
    rows = [_row("float32", 0, 50.0, status="oom"), _row("float32", 0, 51.0), _row("float32", 0, 52.0),
            _row("bf16", 0, 700.0), _row("float32", 1, 49.0), {**_row("float32", 0, float("nan"))}]
    assert peak_rates_of(rows) == [
        {"device": "cuda", "gpu_index": 0, "gpu_uuid": "GPU-0", "device_name": "Test GPU", "dtype": "float32",
         "peak_tflops": 51.0, "peak_bandwidth_gib_s": 510.0},
        {"device": "cuda", "gpu_index": 0, "gpu_uuid": "GPU-0", "device_name": "Test GPU", "dtype": "bf16",
         "peak_tflops": 700.0, "peak_bandwidth_gib_s": 7000.0},
        {"device": "cuda", "gpu_index": 1, "gpu_uuid": "GPU-1", "device_name": "Test GPU", "dtype": "float32",
         "peak_tflops": 49.0, "peak_bandwidth_gib_s": 490.0},
    ]
    assert peak_rates_of([_row("float32", 0, 1.0, status="error")]) == []


def test_a_sweep_writes_the_peaks_it_measured_into_its_sidecar(tmp_path):
    from profiler.run.runner import SweepEvents
    from profiler.run.sweep import CPU_DEFAULTS, SweepRequest, run_sweep

    out = tmp_path / "r.csv"
    request = SweepRequest(models=["sasrec"], lengths=[8, 12], modes=["train"], attentions=["naive"], batch_size=4,
                           profile="tiny", device="cpu", seed=0, budget=TINY_BUDGET, out=out, resume=False,
                           point_timeout_s=60.0, dtypes=["float32", "bf16"], threads=CPU_DEFAULTS.threads)
    with ResultsStore.create(out) as store:
        rows, _ = run_sweep(request, store, SweepEvents())
    recorded = json.loads(sidecar_path(out).read_text())["runs"][-1]["peak_rates"]
    assert [entry["dtype"] for entry in recorded] == ["float32", "bf16"]
    first = {row["dtype"]: row for row in reversed(rows)}  # the first row of each dtype
    for entry in recorded:
        assert entry["peak_tflops"] == first[entry["dtype"]]["peak_tflops"] > 0
        assert entry["peak_bandwidth_gib_s"] == first[entry["dtype"]]["peak_bandwidth_gib_s"] > 0
    # one worker measured both dtypes, each once: every row of a dtype carries the same peaks
    assert len({(row["dtype"], row["peak_tflops"]) for row in rows}) == 2
