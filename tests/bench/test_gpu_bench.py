"""GPU benchmarks: every registered model, train step and inference, at L = 50, 200, 500, B = 128.

pytest-benchmark's timer reads the host clock, which does not wait for the GPU. Here the timer is
profiler.device_clock.DeviceClock: each round reads CUDA events around the step, behind a GPU spin
that keeps the host's kernel launches ahead of the GPU, so a round is the step's device time. That
is what the compare gates: the small models' steps are bound by the host launching kernels, and
their host-timed rounds moved by up to 70% between two runs minutes apart on the same H100 machine,
as the host's speed drifted. The host-timed, synchronized step time stays in ``extra_info`` as
``wall_median_ms`` beside peak allocated memory, NVML device memory, FLOPs and the parameter count;
peak allocated memory also goes through the memory gate (tests/bench/conftest.py).

Run with `make bench` (saves a baseline), then `make bench-compare`, as README.md shows. Sized for
an 80 GB GPU and a few minutes: each run of the 78 points takes about two and a half minutes on an
H100, building the models included.
"""
import gc
import os
import statistics

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.base import count_parameters
from models.registry import REGISTRY
from profiler.results.schema import MODES
from profiler.run.precision import apply_precision
from profiler.run.workload import build_workload
from profiler.trackers.device_clock import DeviceClock
from profiler.trackers.nvml import NvmlMemoryReader, NvmlPeakSampler
from profiler.trackers.timing import MIN_SPIN_MS, SPIN_OVER_LAUNCH, MeasurementBudget, warm_up

from .workload import variants

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="GPU benchmark: no CUDA GPU here (torch.cuda.is_available() is False); run `make bench` on a GPU machine",
    ),
]

MIB = 2**20
LENGTHS = (50, 200, 500)
BATCH_SIZE = 128
# Rounds fill about a second per point, within bounds: a 1-ms inference gets 200 rounds, a 300-ms
# training step 5; a round's cost includes the spin that holds the queue. Before them, the
# warm-up steps run synchronized, timed on the host for ``wall_median_ms`` and the launch time.
BUDGET = MeasurementBudget(warmup_steps=5, time_budget_s=1.0, min_reps=5, max_reps=200)

# Points left out, with the reason (results/h100-grid.csv: H100 80GB, B = 128, default profiles).
EXCLUDED = {
    ("cosrec", 500): "excluded: CosRec's (B, L, L, d) pairwise tensor runs out of memory on an 80 GB H100 "
    "(training from L = 300, 39 GB at L = 200; inference at L = 500)",
    ("cosrec-plus", 500): "excluded: CosRec+'s (B, L, L, d) pairwise tensor runs out of memory on an 80 GB H100 "
    "(training from L = 300, 40 GB at L = 200; inference from L = 400)",
    ("caser-plus", 500): "excluded: Caser+ costs O(L^3): 583 ms per training step at L = 500 on an H100, "
    "twice the next slowest point",
}


@pytest.fixture(scope="module", autouse=True)
def _one_cpu_core():
    """Pins the benchmark process to one core for the module, as the sweep pins its workers: the
    small models' steps are bound by the host launching kernels, and a launching thread that
    migrates between cores stalls, which would make ``wall_median_ms`` jitter and the spin that
    keeps the host ahead fall short more often."""
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(previous)})
    yield
    os.sched_setaffinity(0, previous)


def cases():
    for variant in variants():
        for seq_len in LENGTHS:
            for mode in MODES:
                reason = EXCLUDED.get((variant.model, seq_len))
                marks = [pytest.mark.skip(reason=f"{variant.label} L={seq_len}: {reason}")] if reason else []
                yield pytest.param(variant, mode, seq_len, marks=marks, id=f"{variant.label}-{mode}-L{seq_len}")


@pytest.fixture(scope="module")
def nvml_reader():
    reader = NvmlMemoryReader(torch.cuda.current_device())
    yield reader
    reader.close()


def _free_cuda() -> None:
    gc.collect()
    torch.cuda.empty_cache()


def _use_timer(benchmark, clock: DeviceClock) -> None:
    """pytest-benchmark takes its timer from --benchmark-timer for the whole session; this suite's
    timer belongs to the GPU benchmarks only, so it is set on their fixture."""
    if not hasattr(benchmark, "_timer"):
        pytest.fail("this pytest-benchmark keeps its timer elsewhere: the device clock cannot be set", pytrace=False)
    benchmark._timer = clock


@pytest.mark.parametrize("variant, mode, seq_len", list(cases()))
def test_step(benchmark, memory_gate, nvml_reader, cycles_per_ms, variant, mode, seq_len):
    spec = REGISTRY[variant.model]
    label = f"{variant.label} {mode} L={seq_len}"
    _free_cuda()  # the previous point's cached blocks would count in this one's NVML figure
    nvml_baseline_mib = nvml_reader.read_mib()
    workload = None
    out_of_memory = False
    apply_precision("float32")  # full fp32 for convolutions and matrix products, as the sweep's float32
    try:
        workload = build_workload(variant.model, variant.attention, mode, seq_len, BATCH_SIZE, spec.default_profile, "cuda")
        # The first step is counted: it also creates the optimizer state, before the peak is reset.
        with FlopCounterMode(display=False) as flop_counter:
            workload.step()
        # NVML is sampled during the warm-up, where the process reaches its peak (the caching
        # allocator keeps what it reserved), and read again after timing; its thread stays off
        # during the timed rounds, where it would jitter the host's kernel launches.
        with NvmlPeakSampler(nvml_reader) as sampler:
            launch_ms, wall_ms = warm_up(workload.step, BUDGET, cuda=True)
        clock = DeviceClock(max(SPIN_OVER_LAUNCH * max(launch_ms), MIN_SPIN_MS), cycles_per_ms)
        rounds = BUDGET.reps_for((clock.spin_ms + statistics.median(wall_ms)) / 1e3)
        gc.collect()
        torch.cuda.reset_peak_memory_stats()
        benchmark.group = f"{variant.label} {mode}"
        _use_timer(benchmark, clock)
        benchmark.pedantic(workload.step, setup=clock.hold_queue, rounds=rounds, iterations=1, warmup_rounds=1)
    except torch.OutOfMemoryError:
        out_of_memory = True  # failed below, once the exception no longer holds the step's tensors
    if out_of_memory:
        workload = None
        _free_cuda()
        total_gib = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30
        pytest.fail(
            f"{label}: out of memory at B={BATCH_SIZE} on {torch.cuda.get_device_name()} ({total_gib:.0f} GiB); "
            "the suite is sized for 80 GB: add the point to EXCLUDED with its reason",
            pytrace=False,
        )
    peak_allocated_mib = torch.cuda.max_memory_allocated() / MIB
    flops = flop_counter.get_total_flops()
    info = dict(
        model=variant.model,
        attention=variant.attention or "none",
        mode=mode,
        seq_len=seq_len,
        batch_size=BATCH_SIZE,
        profile=spec.default_profile,
        device_name=torch.cuda.get_device_name(),
        param_count=count_parameters(workload.model),
        flops_per_step=flops,
        peak_allocated_mib=peak_allocated_mib,
        peak_reserved_mib=torch.cuda.max_memory_reserved() / MIB,
        nvml_peak_mib=max(sampler.peak_mib, nvml_reader.read_mib()),
        nvml_baseline_mib=nvml_baseline_mib,
        nvml_source=nvml_reader.source,
        timer="device: CUDA events behind a spin that keeps the host ahead",
        wall_median_ms=statistics.median(wall_ms),
        launch_max_ms=max(launch_ms),
        spin_ms=clock.spin_ms,
        host_paced_rounds=clock.host_paced_rounds,
        held_rounds=clock.rounds,  # rounds run behind a spin, the warm-up round included
    )
    if benchmark.stats is not None:  # None under --benchmark-disable: the target ran once, untimed
        info["achieved_tflops"] = flops / benchmark.stats.stats.median / 1e12
    benchmark.extra_info.update(info)
    del workload
    _free_cuda()
    memory_gate(label, info["device_name"], {"peak_allocated_mib": peak_allocated_mib})
