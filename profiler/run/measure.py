"""Measures one point: build its workload, probe its costs, warm up, time, read memory.

Returns a flat record (column -> value) for the results table. Runs inside a worker process; an
out-of-memory error propagates to the worker, which records it as a result.
"""
import contextlib
import gc
import os
import time
from pathlib import Path
from typing import Iterator

import torch

from models.base import count_trainable_parameters
from profiler.results.record import samples_text
from profiler.results.schema import PointSpec
from profiler.run.plugins import plugin_columns, resolve_spec, unsupported
from profiler.run.precision import apply_precision, precision_flags
from profiler.run.snapshots import record_snapshot, snapshot_name
from profiler.run.turns import NO_TURNS, GpuTurns, NoTurns
from profiler.run.workload import build_workload, step_costs
from profiler.trackers.nvml import NvmlPeakSampler
from profiler.trackers.peak_rate import PeakRates, roofline_columns
from profiler.trackers.timing import MeasurementBudget, StepTimes, time_step
from profiler.units import MIB

PRIME_LENGTH = 16
PRIME_BATCH = 8
# A point whose p90/p10 spread exceeds this is flagged noisy: its median may move between runs.
NOISY_SPREAD = 0.25


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def prime_process(point: PointSpec, turns: GpuTurns | NoTurns = NO_TURNS) -> None:
    """Runs a small training step and a prediction of the point's model and frees them again.

    CUDA loads kernels and creates library handles lazily, on first use, and keeps them for the
    life of the process (a few hundred MiB that NVML counts). A worker's first point would
    otherwise pay for them inside its measurement and later points would not; primed, every point
    starts from the same state, whether its worker is fresh or reused.

    Each mode primes in a shared turn of its own (``turns``): a worker about to measure on the
    GPU waits for one small step's kernel loading, not for both modes' in a row.
    """
    seq_len, batch_size = min(point.seq_len, PRIME_LENGTH), min(point.batch_size, PRIME_BATCH)
    spec = resolve_spec(point.model)
    for mode in (m for m in ("train", "infer") if unsupported(spec, m) is None):
        with turns.shared():
            workload = build_workload(
                point.model, point.attention, mode, seq_len, batch_size, point.profile, point.device, point.seed,
                point.dtype,
            )
            workload.step()
            _synchronize(point.device)  # its kernels end inside the turn, never beside a measurement
            del workload  # its tensors go back to the cache before the next mode builds


def timing_columns(times: StepTimes) -> dict:
    device, wall = times.device, times.wall
    low, high = device.median_ci_ms
    return dict(
        reps=len(device.samples_ms),
        warmup_steps=times.warmup_steps,
        time_median_ms=device.median_ms,
        time_mean_ms=device.mean_ms,
        time_p10_ms=device.p10_ms,
        time_p90_ms=device.p90_ms,
        time_cv=device.cv,
        time_spread=device.spread,
        time_ci_low_ms=low,
        time_ci_high_ms=high,
        time_ci_rel=device.median_ci_rel,
        time_ci_confidence=device.median_ci_confidence,
        time_clock=times.clock,
        wall_median_ms=wall.median_ms,
        wall_p10_ms=wall.p10_ms,
        wall_p90_ms=wall.p90_ms,
        launch_bound=times.launch_bound,
        noisy=device.spread > NOISY_SPREAD,
        spin_ms=times.spin_ms,
        host_paced_rounds=times.host_paced_rounds,
        measured_wall_s=times.timed_wall_s,
        step_times_ms=samples_text(device.samples_ms),
        wall_times_ms=samples_text(wall.samples_ms),
    )


@contextlib.contextmanager
def on_cores(cores: frozenset[int] | None) -> Iterator[None]:
    """This process on ``cores`` meanwhile (None: where it is), then back on its own.

    A worker measuring on CUDA is pinned to one core, which would leave torch.compile one core to
    compile Triton kernels on. The worker asks inductor for a compile worker per core it compiles on
    (worker.cores_to_compile_on); started while this process is on them, those processes keep that
    affinity for later compilations too, and sit idle while steps are timed."""
    if cores is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, own)


def measure_point(point: PointSpec, budget: MeasurementBudget, nvml_reader=None, peak: PeakRates | None = None,
                  snapshot_dir: Path | None = None, turns: GpuTurns | NoTurns = NO_TURNS,
                  compile_cores: frozenset[int] | None = None) -> dict:
    """The full record of one point. ``nvml_reader`` is an ``NvmlMemoryReader`` on CUDA, else None;
    ``peak``: the device's peak rates in the point's arithmetic, which the row's fractions are of;
    ``snapshot_dir``: on CUDA, where one more step, after the timed ones, leaves its allocator
    history (profiler/run/snapshots.py); ``turns``: the GPU's turns where lanes share it
    (profiler/run/turns.py): the timed steps (and the snapshot's) run in an exclusive turn;
    building, the counted step and compiling in a shared one; ``compile_cores``: where building, the
    counted step and compiling or capturing run (``on_cores``), None for the cores this process is on."""
    device = point.device
    apply_precision(point.dtype)
    # A plug-in's hash as this process imported it: the file measured, even if it changed since.
    record: dict = {"torch_threads": torch.get_num_threads(), **precision_flags(),
                    **plugin_columns(resolve_spec(point.model))}
    if nvml_reader is not None:
        record["nvml_baseline_mib"] = nvml_reader.read_mib()  # context (and leftovers) before the model
        record["nvml_source"] = nvml_reader.source

    # Building, the counted first step and compiling measure no time (the counted step's figures are
    # tensor sizes and counts), so they run in one shared turn beside other lanes' doing the same,
    # and on every core the worker was given.
    with turns.shared(), on_cores(compile_cores):
        started = time.perf_counter()
        workload = build_workload(
            point.model, point.attention, point.mode, point.seq_len, point.batch_size, point.profile, device,
            point.seed, point.dtype, point.execution,
        )
        _synchronize(device)
        record["build_s"] = time.perf_counter() - started
        started = time.perf_counter()
        costs = step_costs(workload)  # the first step, eager: it also creates the optimizer state
        _synchronize(device)
        record["probe_s"] = time.perf_counter() - started
        if point.execution != "eager":
            started = time.perf_counter()
            workload.prepare()  # compile or capture, outside every timed step
            _synchronize(device)
            record["compile_s"] = time.perf_counter() - started
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
        moved_mib_per_step=costs.moved_bytes_per_step / MIB,
        flops_per_byte=costs.flops_per_byte,
    )

    with turns.turn():
        gc.collect()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        # The NVML sampler watches the steps, where the process's memory reaches its peak (the caching
        # allocator keeps what it reserved), and reads once more at the end. Its thread wakes every few
        # ms; the device time, which the spin keeps off the host's pace, does not feel it.
        sampler = NvmlPeakSampler(nvml_reader) if nvml_reader is not None else contextlib.nullcontext()
        gc.disable()  # a collection pause inside the timed loop would land in one sample at random
        started = time.perf_counter()
        try:
            with sampler:
                times = time_step(workload.step, budget, device)
        finally:
            gc.enable()
        record["steps_s"] = time.perf_counter() - started
        if nvml_reader is not None:
            record["nvml_peak_mib"] = max(sampler.peak_mib, nvml_reader.read_mib())
            record["nvml_samples"] = sampler.samples + 1
        if device == "cuda":
            record["peak_allocated_mib"] = torch.cuda.max_memory_allocated() / MIB
            record["peak_reserved_mib"] = torch.cuda.max_memory_reserved() / MIB
        if snapshot_dir is not None and device == "cuda":
            # After the peaks are read: the recorded step is neither timed nor in the memory columns.
            path = Path(snapshot_dir) / snapshot_name(point)
            record["snapshot_s"] = record_snapshot(workload.step, path)
            record["memory_snapshot"] = str(path)
    record.update(timing_columns(times))
    record["achieved_tflops"] = record["flops_per_step"] / (record["time_median_ms"] * 1e-3) / 1e12
    if peak is not None:
        record.update(roofline_columns(costs.flops_per_step, costs.moved_bytes_per_step, record["time_median_ms"], peak))
    return record
