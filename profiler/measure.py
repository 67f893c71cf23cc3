"""Measures one point: build the model, optimizer and batch, warm up, time, read memory.

Returns a flat record (column -> value) for the results table. Runs inside a worker process; an
out-of-memory error propagates to the worker, which records it as a result.
"""
import contextlib
import dataclasses
import gc
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.base import count_parameters, count_trainable_parameters
from models.profiles import get_profile
from models.registry import get_spec
from profiler.footprint import inference_footprint, train_step_footprint
from profiler.nvml import NvmlPeakSampler
from profiler.points import NO_ATTENTION, MeasurementBudget, PointSpec
from profiler.timing import TimingStats, time_steps

MIB = 2**20
PRIME_LENGTH = 16
PRIME_BATCH = 8


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _count_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def prime_process(point: PointSpec) -> None:
    """Runs a small training step and a prediction of the point's model and frees them again.

    CUDA loads kernels and creates library handles lazily, on first use, and keeps them for the
    life of the process (a few hundred MiB that NVML counts). A worker's first point would
    otherwise pay for them inside its measurement and later points would not; primed, every point
    starts from the same state, whether its worker is fresh or reused.
    """
    small = dataclasses.replace(
        point, seq_len=min(point.seq_len, PRIME_LENGTH), batch_size=min(point.batch_size, PRIME_BATCH)
    )
    spec = get_spec(small.model)
    attention = None if small.attention == NO_ATTENTION else small.attention
    config = spec.build_config(get_profile(small.profile), small.seq_len, attention)
    model = spec.build(config).to(small.device)
    generator = torch.Generator(device=small.device).manual_seed(small.seed)
    batch = spec.make_batch(config, small.batch_size, small.seq_len, small.device, generator)
    optimizer = model.configure_optimizer()
    model(batch).backward()
    optimizer.step()
    model.eval()
    with torch.inference_mode():
        model.predict(batch)
    _synchronize(small.device)


def measure_point(point: PointSpec, budget: MeasurementBudget, nvml_reader=None) -> dict:
    """The full record of one point. ``nvml_reader`` is an ``NvmlMemoryReader`` on CUDA, else None."""
    device = point.device
    record: dict = {}
    if nvml_reader is not None:
        record["nvml_baseline_mib"] = nvml_reader.read_mib()  # context (and leftovers) before the model
        record["nvml_source"] = nvml_reader.source

    spec = get_spec(point.model)
    profile = get_profile(point.profile)
    attention = None if point.attention == NO_ATTENTION else point.attention
    config = spec.build_config(profile, point.seq_len, attention)
    torch.manual_seed(point.seed)
    model = spec.build(config).to(device)
    generator = torch.Generator(device=device).manual_seed(point.seed)
    batch = spec.make_batch(config, point.batch_size, point.seq_len, device, generator)
    record["param_count"] = count_parameters(model)
    record["trainable_param_count"] = count_trainable_parameters(model)

    if point.mode == "train":
        model.train()
        optimizer = model.configure_optimizer()

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            model(batch).backward()
            optimizer.step()

        # The first step also creates the optimizer state, which the footprint counts.
        footprint = train_step_footprint(model, optimizer, batch, step)
    else:
        model.eval()

        def step() -> None:
            with torch.inference_mode():
                model.predict(batch)

        footprint = inference_footprint(model, batch, step)
    record.update(
        params_mib=footprint.params_mib,
        grads_mib=footprint.grads_mib,
        optimizer_state_mib=footprint.optimizer_state_mib,
        inputs_mib=footprint.inputs_mib,
        activations_mib=footprint.activations_mib,
        tensor_footprint_mib=footprint.total_mib,
    )
    record["flops_per_step"] = _count_flops(step)

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
