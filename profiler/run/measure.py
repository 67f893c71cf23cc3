"""Measures one point: build its workload, probe its costs, warm up, time, read memory.

Returns a flat record (column -> value) for the results table. Runs inside a worker process; an
out-of-memory error propagates to the worker, which records it as a result.
"""
import contextlib
import gc
import time

import torch

from models.base import count_trainable_parameters
from profiler.results.schema import PointSpec
from profiler.run.plan import MeasurementBudget
from profiler.run.workload import build_workload, step_costs
from profiler.trackers.nvml import NvmlPeakSampler
from profiler.trackers.timing import TimingStats, time_steps

MIB = 2**20
PRIME_LENGTH = 16
PRIME_BATCH = 8


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def prime_process(point: PointSpec) -> None:
    """Runs a small training step and a prediction of the point's model and frees them again.

    CUDA loads kernels and creates library handles lazily, on first use, and keeps them for the
    life of the process (a few hundred MiB that NVML counts). A worker's first point would
    otherwise pay for them inside its measurement and later points would not; primed, every point
    starts from the same state, whether its worker is fresh or reused.
    """
    seq_len, batch_size = min(point.seq_len, PRIME_LENGTH), min(point.batch_size, PRIME_BATCH)
    for mode in ("train", "infer"):
        workload = build_workload(
            point.model, point.attention, mode, seq_len, batch_size, point.profile, point.device, point.seed
        )
        workload.step()
    _synchronize(point.device)


def measure_point(point: PointSpec, budget: MeasurementBudget, nvml_reader=None) -> dict:
    """The full record of one point. ``nvml_reader`` is an ``NvmlMemoryReader`` on CUDA, else None."""
    device = point.device
    record: dict = {}
    if nvml_reader is not None:
        record["nvml_baseline_mib"] = nvml_reader.read_mib()  # context (and leftovers) before the model
        record["nvml_source"] = nvml_reader.source

    workload = build_workload(
        point.model, point.attention, point.mode, point.seq_len, point.batch_size, point.profile, device, point.seed
    )
    step = workload.step
    costs = step_costs(workload)  # the first step: it also creates the optimizer state
    record.update(
        param_count=costs.param_count,
        trainable_param_count=count_trainable_parameters(workload.model),
        params_mib=costs.footprint.params_mib,
        grads_mib=costs.footprint.grads_mib,
        optimizer_state_mib=costs.footprint.optimizer_state_mib,
        inputs_mib=costs.footprint.inputs_mib,
        activations_mib=costs.footprint.activations_mib,
        tensor_footprint_mib=costs.tensor_footprint_mib,
        flops_per_step=costs.flops_per_step,
    )

    # The NVML sampler watches the warm-up, where the process's memory reaches its peak (the caching
    # allocator keeps what it reserved, so later steps reuse it), and reads once more after timing.
    # It stays off during the timed steps, where its thread would jitter the host's kernel launches.
    sampler = NvmlPeakSampler(nvml_reader) if nvml_reader is not None else contextlib.nullcontext()
    with sampler:
        for _ in range(budget.warmup_steps - 1):
            step()
        _synchronize(device)
        # The last warm-up step is timed to size the repetition count. It is not a sample: the first
        # step after the queue drained runs measurably slower than the steady state.
        reps = budget.reps_for(time_steps(step, 1, device)[0] / 1e3)

    gc.collect()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    gc.disable()  # a collection pause inside the timed loop would land in one sample at random
    try:
        wall_start = time.perf_counter()
        samples_ms = time_steps(step, reps, device)
        record["measured_wall_s"] = time.perf_counter() - wall_start
    finally:
        gc.enable()
    if nvml_reader is not None:
        record["nvml_peak_mib"] = max(sampler.peak_mib, nvml_reader.read_mib())
        record["nvml_samples"] = sampler.samples + 1
    if device == "cuda":
        record["peak_allocated_mib"] = torch.cuda.max_memory_allocated() / MIB
        record["peak_reserved_mib"] = torch.cuda.max_memory_reserved() / MIB

    stats = TimingStats.from_samples(samples_ms)
    record.update(
        reps=len(samples_ms),
        warmup_steps=budget.warmup_steps,
        time_median_ms=stats.median_ms,
        time_mean_ms=stats.mean_ms,
        time_p10_ms=stats.p10_ms,
        time_p90_ms=stats.p90_ms,
        time_cv=stats.cv,
        time_spread=stats.spread,
        achieved_tflops=record["flops_per_step"] / (stats.median_ms * 1e-3) / 1e12,
        step_times_ms=" ".join(f"{s:.4f}" for s in samples_ms),
    )
    return record
