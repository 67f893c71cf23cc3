"""What a row of the results table is: the point's knobs, the series it belongs to, the columns.

Everything that reads or writes rows (the runner, the store, the analysis, the tables and plots)
takes these names from here, so a knob added to a point reaches every stage through one list.
"""
import dataclasses
from dataclasses import dataclass

import pandas as pd

MODES: tuple[str, ...] = ("train", "infer")
NO_ATTENTION = "none"  # the attention knob of models without attention layers
STATUSES = ("ok", "oom", "skipped", "error")
# Knobs added after the first results files: a file without their column measured the default.
KNOB_DEFAULTS = {"dtype": "float32", "execution": "eager"}
DEFAULT_DTYPE = KNOB_DEFAULTS["dtype"]

# The knobs a series shares: its points differ only in length (and seed). An OOM ends the longer
# points of a series; the analysis fits one curve per series.
SERIES_FIELDS = ("model", "attention", "profile", "mode", "batch_size", "device", "dtype", "execution")
# Curves of different variants are comparable (crossovers, one figure) when these agree.
PANEL_FIELDS = ("mode", "batch_size", "device", "dtype", "execution")
# The knobs that identify a row: two points with equal keys measure the same thing.
KEY_FIELDS = (*SERIES_FIELDS, "seq_len", "seed")


def model_label(model: str) -> str:
    """How a model is named in tables and figures: a plug-in file's reference by the file's name
    ('my_gru.py:GRURec'), since the row's model holds its absolute path; any other name as it is."""
    where, separator, attribute = model.rpartition(":")
    if separator and (where.endswith(".py") or "/" in where):
        return f"{where.rsplit('/', 1)[-1]}:{attribute}"
    return model


def variant_name(model: str, attention: str) -> str:
    """'sasrec[sdpa]' for a model with an attention backend, the model's label otherwise."""
    return model_label(model) if attention == NO_ATTENTION else f"{model_label(model)}[{attention}]"


def oom_note(length: int) -> str:
    """How a series that ran out of memory is marked wherever it is shown."""
    return f"OOM at L={length}"


@dataclass(frozen=True)
class SeriesKey:
    model: str
    attention: str
    profile: str
    mode: str
    batch_size: int
    device: str
    dtype: str
    execution: str

    @classmethod
    def of(cls, row) -> "SeriesKey":
        """The series of a row: anything with the series fields as attributes (a point, a tuple)."""
        return cls(**{name: getattr(row, name) for name in SERIES_FIELDS})

    @property
    def variant(self) -> str:
        return variant_name(self.model, self.attention)

    @property
    def panel(self) -> tuple:
        return tuple(getattr(self, name) for name in PANEL_FIELDS)


assert tuple(f.name for f in dataclasses.fields(SeriesKey)) == SERIES_FIELDS


@dataclass(frozen=True)
class PointSpec:
    """A frozen, hashable description of one measurement: its key identifies a row, so resuming a
    sweep is a set difference between planned and stored keys."""

    model: str
    seq_len: int
    mode: str
    batch_size: int
    profile: str
    attention: str
    device: str  # "cuda" or "cpu"
    seed: int = 0
    dtype: str = "float32"  # KNOB_DEFAULTS
    execution: str = "eager"

    @property
    def key(self) -> tuple:
        return tuple(getattr(self, name) for name in KEY_FIELDS)

    @property
    def series(self) -> SeriesKey:
        return SeriesKey.of(self)

    @property
    def label(self) -> str:
        knobs = "".join(f" {getattr(self, k)}" for k, default in KNOB_DEFAULTS.items() if getattr(self, k) != default)
        return f"{variant_name(self.model, self.attention)}{knobs} {self.mode} L={self.seq_len}"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


KEY_COLUMNS = list(KEY_FIELDS)
COLUMNS = [
    # what was measured
    "model", "family", "attention", "profile", "mode", "batch_size", "seq_len", "device", "dtype", "execution", "seed",
    "device_name", "num_items", "item_feature_dim",
    # a plug-in model: its resolved reference (also its model name) and the sha256 of its file
    "plugin_ref", "plugin_sha256",
    # outcome
    "status", "error",
    # time per step: the device's (CUDA events behind a spin; the host clock on the CPU) ...
    "time_median_ms", "time_p10_ms", "time_p90_ms", "time_mean_ms", "time_cv", "time_spread",
    "time_ci_low_ms", "time_ci_high_ms", "time_ci_rel", "time_ci_confidence", "reps", "warmup_steps", "time_clock",
    # ... and the host's wall time of a synchronised step, which launch-bound steps exceed
    "wall_median_ms", "wall_p10_ms", "wall_p90_ms", "launch_bound", "noisy", "spin_ms", "host_paced_rounds",
    # compiling or capturing the step, outside every timed step
    "compile_s",
    # arithmetic and threads the step ran with
    "matmul_tf32", "cudnn_tf32", "torch_threads",
    # device memory
    "peak_allocated_mib", "peak_reserved_mib", "nvml_peak_mib", "nvml_baseline_mib", "nvml_source", "nvml_samples",
    # --memory-snapshot: the file holding the allocator's history of one more step, after the timed
    # steps and the peaks above, and the seconds that step took, recorded and written
    "memory_snapshot", "snapshot_s",
    # device-independent memory: the tensors a step needs
    "params_mib", "grads_mib", "optimizer_state_mib", "inputs_mib", "activations_mib", "tensor_footprint_mib",
    # size and work; the bytes moved are the step's op inputs and outputs, an upper bound on its traffic
    "param_count", "trainable_param_count", "flops_per_step", "achieved_tflops", "moved_mib_per_step", "flops_per_byte",
    # against the device's limits in the point's arithmetic, measured once per worker and dtype: the
    # peak matmul rate and copy bandwidth, the fractions of them the median step reached, and whether
    # the step's FLOPs per byte lie below the ridge point peak_tflops / peak_bandwidth
    "peak_tflops", "peak_bandwidth_gib_s", "peak_fraction", "bandwidth_fraction", "memory_bound",
    # bookkeeping; where a point's wall time went: priming a fresh worker, measuring the peak rates
    # (at a worker's first point of a dtype), building the model and batch, the footprint, FLOP and
    # traffic probe, warm-up and timed steps together, the timed steps alone; a fresh worker's
    # start (spawn to ready) and the part of it the point waited for; on CUDA, what the worker's
    # allocator still held once the point was freed (a worker holding memory is retired)
    "point_wall_s", "prime_s", "peak_rate_s", "build_s", "probe_s", "steps_s", "measured_wall_s", "worker_pid", "worker_cpu", "worker_fresh", "worker_start_s", "worker_wait_s", "held_after_mib", "finished_at",
    # lanes sharing a GPU (--lanes-per-gpu): the seconds this point waited for the GPU's exclusive
    # turns (to be timed) and for its shared ones (to build, probe and compile: behind a measurement
    # or a lane waiting for one); whether the row was measured again with no other worker of the
    # sweep on the GPU, because the point ran out of memory beside the other lanes' models
    # (profiler/run/lanes.py) or beside spare workers (profiler/run/runner.py); and for an OOM, the
    # allocation that failed and the room the card alone would have left it (profiler/run/oom.py)
    "turn_wait_s", "shared_turn_wait_s", "alone_after_shared_oom", "oom_request_mib", "oom_room_alone_mib",
    # the GPU that measured the point: its index on its host (as --gpus names it) and NVML's UUID
    "gpu_index", "gpu_uuid",
    # raw samples, last because they are long
    "step_times_ms", "wall_times_ms",
]
# Columns read as text whatever they hold (an empty error column would otherwise read as floats).
TEXT_COLUMNS = {name: "string" for name in ("error", "nvml_source", "time_clock", "plugin_ref", "plugin_sha256",
                                            "step_times_ms", "wall_times_ms", "gpu_uuid", "memory_snapshot")}
# A file must have these to be read; later-added columns are optional and read as empty.
REQUIRED_COLUMNS = [c for c in KEY_COLUMNS if c not in KNOB_DEFAULTS] + ["status", "error", "time_median_ms", "tensor_footprint_mib", "peak_allocated_mib"]

# The metrics the analysis fits against L, and how axes and tables name them.
METRICS = ("time_median_ms", "peak_allocated_mib", "nvml_peak_mib", "tensor_footprint_mib", "flops_per_step")
MEMORY_METRICS = ("peak_allocated_mib", "nvml_peak_mib", "tensor_footprint_mib")
METRIC_LABELS = {
    "time_median_ms": "time per step (ms)",
    "peak_allocated_mib": "peak allocated (MiB)",
    "nvml_peak_mib": "device memory, nvidia-smi (MiB)",
    "tensor_footprint_mib": "tensor footprint (MiB)",
    "flops_per_step": "FLOPs per step",
}

# Memory figures in the order a table or figure prefers them: the allocator's peak where a GPU
# measured it, else the device-independent tensor footprint (which every device measures).
ALLOCATOR_FIRST = ("peak_allocated_mib", "tensor_footprint_mib")
# The papers read nvidia-smi: comparisons with them prefer NVML's figure.
NVML_FIRST = ("nvml_peak_mib", "peak_allocated_mib", "tensor_footprint_mib")


def memory_metric(frame: pd.DataFrame, preference: tuple[str, ...] = ALLOCATOR_FIRST) -> str:
    """The first memory column in ``preference`` that holds a value in ``frame``."""
    for metric in preference:
        if metric in frame and pd.to_numeric(frame[metric], errors="coerce").notna().any():
            return metric
    return preference[-1]
