"""A sweep from the user's choices to stored results: defaults per device, validation, the run."""
import datetime
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

from models.base import ATTENTION_BACKENDS
from models.profiles import get_profile
from profiler.results.files import timestamped_path
from profiler.results.schema import MODES, PointSpec
from profiler.results.store import ResultsStore
from profiler.run.lanes import LaneRunner, gpu_assignment
from profiler.run.plan import plan_points
from profiler.run.plugins import check_unchanged, resolve_spec
from profiler.run.precision import DTYPES
from profiler.run.runner import DEFAULT_SPARE_WORKERS, RunnerOptions, SweepEvents, SweepRunner
from profiler.run.snapshots import prepare_folder
from profiler.trackers.environment import collect_environment, resolve_device, visible_gpu_count
from profiler.trackers.timing import MeasurementBudget

RESULTS_DIR = Path("results")
# What stops a sweep between points: Ctrl-C, a termination request, the terminal going away.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

BACKENDS = ("local", "ray")
RAY_MISSING = 'the ray backend needs Ray, an optional extra: pip install -e ".[ray]" (or pip install "ray>=2.9")'


def ray_backend():
    """The Ray backend module; without Ray installed, a one-line error."""
    try:
        from profiler.run import ray_backend
    except ModuleNotFoundError as exc:
        if exc.name != "ray":
            raise
        raise ValueError(RAY_MISSING) from None
    return ray_backend


def resolve_sweep_device(requested: str, backend: str = "local") -> str:
    """'auto', 'cuda' or 'cpu' as this host has it, or on a Ray cluster, as the cluster has it."""
    return ray_backend().cluster_device(requested) if backend == "ray" else resolve_device(requested)


@dataclass(frozen=True)
class DeviceDefaults:
    lengths: tuple[int, ...]
    batch_size: int
    modes: tuple[str, ...]
    attentions: tuple[str, ...]
    budget: MeasurementBudget
    threads: int
    profile: str | None = None  # None: each model's own paper dataset


# The GPU defaults are the papers' grid: lengths 50 to 900, batch 128, training and inference, the
# authors' materialised attention and the fused one, each model at its paper's dataset. On a GPU
# the device time is tight (under 1% at the median), so a 1% interval is reached in a few
# repetitions. Threads: one for a GPU worker (it only launches kernels).
GPU_DEFAULTS = DeviceDefaults(
    lengths=(50, 100, 200, 300, 400, 500, 600, 700, 800, 900),
    batch_size=128,
    modes=("train", "infer"),
    attentions=("naive", "sdpa"),
    budget=MeasurementBudget(warmup_steps=2, max_warmup_steps=10, min_reps=3, max_reps=200, time_budget_s=1.0,
                             target_ci=0.01),
    threads=1,
)
# The CPU defaults show on a two-core machine, within a few minutes for every model, the scaling
# the GPU shows in the tensor footprint, which does not depend on the device. At the papers'
# datasets a small CPU batch is dominated by the embedding tables and optimizer state, so every
# model reads linear at short lengths (SASRec's footprint slope was 0.16 over L = 25..100 at batch
# 8); the tiny profile takes the tables out, and from L = 16 to 128 at batch 4 the materialised
# attention of SASRec, BERT4Rec, TiSASRec and CARCA, CosRec's pair grid and Caser's filters read
# quadratic, the others linear. CosRec and CosRec+ at L = 128 (about 3 s a step) bound the time: a
# longer length or a larger batch would double it. ProxyRCA's and HSTU's attention hides behind
# their linear parts below L = 256 to 512 (tests/bench/recorded.json). The training step with the
# authors' attention: on the CPU a training step's sdpa has no fused kernel and measures the same.
# The CPU's clock is the host's, and wider than the GPU's: a 2% interval, a shorter time cap per
# point, a fixed thread count so a CPU figure does not depend on the machine's core count.
CPU_DEFAULTS = DeviceDefaults(
    lengths=(16, 32, 64, 128),
    batch_size=4,
    modes=("train",),
    attentions=("naive",),
    budget=MeasurementBudget(warmup_steps=2, max_warmup_steps=6, min_reps=5, max_reps=40, time_budget_s=0.5,
                             target_ci=0.02),
    threads=2,
    profile="tiny",
)


def defaults_for(device: str) -> DeviceDefaults:
    return GPU_DEFAULTS if device == "cuda" else CPU_DEFAULTS


@dataclass
class SweepRequest:
    models: list[str]
    lengths: list[int]
    modes: list[str]
    attentions: list[str]
    batch_size: int
    profile: str | None
    device: str
    seed: int
    budget: MeasurementBudget
    out: Path
    resume: bool
    point_timeout_s: float
    fresh_worker_per_point: bool = False
    pin_cpu: bool = True
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    executions: list[str] = field(default_factory=lambda: ["eager"])
    threads: int = 1
    argv: list[str] = field(default_factory=list)
    gpus: list[int] | None = None  # GPUs of this host to spread the points over; None: every visible one
    backend: str = "local"
    memory_snapshot_dir: Path | None = None  # a memory snapshot of every point goes here (CUDA only)
    spare_workers: int = DEFAULT_SPARE_WORKERS  # on CUDA, workers started and primed ahead of need
    lanes_per_gpu: int = 1  # more than one measure in the GPU's turns and overlap the rest

    def validate(self) -> None:
        """Raises ValueError with one line for a combination no point of which could run."""
        if self.backend not in BACKENDS:
            raise ValueError(f"Unknown backend {self.backend!r}; choose from {list(BACKENDS)}")
        if self.backend == "ray":
            if self.gpus is not None:
                raise ValueError("--gpus picks GPUs of this host; with --backend ray the cluster gives each task its GPU")
        elif self.gpus is not None and self.device != "cuda":
            raise ValueError("--gpus needs a CUDA sweep; this sweep runs on the CPU")
        if self.lanes_per_gpu > 1 and (self.device != "cuda" or self.backend != "local"):
            where = "this sweep runs on the CPU" if self.device != "cuda" else "with --backend ray each task has its GPU"
            raise ValueError(f"--lanes-per-gpu shares a GPU of this host between lanes; {where}")
        if "cuda-graphs" in self.executions and self.device != "cuda":
            raise ValueError("--execution cuda-graphs needs a CUDA GPU; this sweep runs on the CPU")
        if self.profile is not None:
            get_profile(self.profile)
        # A resume takes these from the sidecar, where they may have been edited.
        for what, given, choices in (("mode", self.modes, MODES), ("dtype", self.dtypes, DTYPES),
                                     ("attention backend", self.attentions, ATTENTION_BACKENDS)):
            unknown = [value for value in given if value not in choices]
            if unknown:
                raise ValueError(f"unknown {what} {unknown[0]!r}; choose from {', '.join(choices)}")
        for model in self.models:
            spec = resolve_spec(model)
            limit = spec.max_len_limit
            if limit is not None and max(self.lengths) > limit:
                raise ValueError(f"model {model!r} supports lengths up to {limit}; got {max(self.lengths)}")
            if min(self.lengths) < spec.min_len:
                raise ValueError(f"model {model!r} needs lengths of at least {spec.min_len}; got {min(self.lengths)}")
            profile = get_profile(self.profile or spec.default_profile)
            if spec.needs_item_features and profile.item_feature_dim is None:
                raise ValueError(f"model {model!r} needs item features; profile {profile.name!r} has none")
        if self.memory_snapshot_dir is not None:
            if self.device != "cuda":
                raise ValueError("--memory-snapshot records the CUDA allocator; this sweep runs on the CPU")
            if self.backend == "ray":
                raise ValueError("--memory-snapshot writes its files on this host; with --backend ray the points "
                                 "run on the cluster's nodes")
        if self.backend == "ray":
            ray_backend()  # after the options: installing Ray should not be the way to learn a choice is refused
        if self.memory_snapshot_dir is not None:
            prepare_folder(self.memory_snapshot_dir)  # last: nothing else stops the sweep once it exists

    def plan(self) -> list[PointSpec]:
        return plan_points(
            self.models, self.lengths, self.modes, self.attentions, self.batch_size, self.profile, self.device, self.seed,
            tuple(self.dtypes), tuple(self.executions),
        )


def default_results_path() -> Path:
    return timestamped_path(RESULTS_DIR, "sweep")


def open_store(request: SweepRequest) -> ResultsStore:
    """The request's results, new or resumed; resuming refuses a plug-in whose file changed since its
    rows were measured (a ValueError), before anything is written."""
    if not request.resume:
        return ResultsStore.create(request.out)
    store = ResultsStore.resume(request.out)
    check_unchanged(store.frame, request.models)
    return store


def sweep_gpus(request: SweepRequest) -> list[int]:
    """The GPUs of this host a local CUDA sweep measures on: those asked for, else every visible one."""
    if request.device != "cuda" or request.backend != "local":
        return []
    return list(request.gpus) if request.gpus is not None else list(range(visible_gpu_count()))


def make_runner(request: SweepRequest, store: ResultsStore, events: SweepEvents, device_name: str) -> SweepRunner:
    """In order on the CPU or one GPU; lanes (``lanes_per_gpu`` per GPU) on several GPUs or where
    lanes share one; Ray tasks with --backend ray."""
    snapshots = request.memory_snapshot_dir
    options = RunnerOptions(request.budget, request.point_timeout_s, request.fresh_worker_per_point, request.pin_cpu,
                            request.threads, Path(snapshots).resolve() if snapshots is not None else None,
                            spare_workers=request.spare_workers, lanes_per_gpu=request.lanes_per_gpu)
    if request.backend == "ray":
        return ray_backend().RayRunner(store, options, events, device_name)
    gpus = [gpu_assignment(index) for index in sweep_gpus(request)]
    if len(gpus) > 1 or request.lanes_per_gpu > 1:
        return LaneRunner(store, options, gpus, events, device_name)
    return SweepRunner(store, options, events, device_name, gpu=gpus[0] if gpus else None)


def peak_rates_of(rows: list[dict]) -> list[dict]:
    """The peak rates a run measured, for its sidecar: one entry per device, GPU and dtype, from the
    first row that carries them (each worker measures its own; the rows keep every measurement)."""
    entries: dict[tuple, dict] = {}
    for row in rows:
        peak = row.get("peak_tflops")
        if peak is None or peak != peak:  # a failed point, or one from before the peaks
            continue
        gpu = row.get("gpu_uuid") or row.get("gpu_index")
        entries.setdefault((row["device"], gpu, row["dtype"]), {
            "device": row["device"], "gpu_index": row.get("gpu_index"), "gpu_uuid": row.get("gpu_uuid"),
            "device_name": row.get("device_name"), "dtype": row["dtype"], "peak_tflops": peak,
            "peak_bandwidth_gib_s": row.get("peak_bandwidth_gib_s"),
        })
    return list(entries.values())


def run_sweep(request: SweepRequest, store: ResultsStore, events: SweepEvents) -> tuple[list[dict], int | None]:
    """Runs the pending points of the request into ``store`` (held locked by the caller).

    Ctrl-C, SIGTERM and SIGHUP stop the sweep after the point in flight, which is kept. Returns the
    rows written and the signal that stopped the sweep early (None if it ran to the end).
    """
    stopped_by: list[int] = []
    runner: SweepRunner | None = None

    def stop_after_this_point(signum, frame):
        stopped_by.append(signum)
        if runner is not None:
            runner.request_stop()

    # Only the main thread may handle signals; a sweep started from another thread (a notebook's
    # worker thread) stops when the thread's caller interrupts it.
    handling = threading.current_thread() is threading.main_thread()
    previous = {signum: signal.signal(signum, stop_after_this_point) for signum in STOP_SIGNALS} if handling else {}
    try:
        environment = collect_environment(request.device)
        runner = make_runner(request, store, events, environment["device_name"])
        if stopped_by:
            runner.request_stop()
        points = runner.pending(request.plan())
        placement = {"backend": request.backend, "gpus": sweep_gpus(request)}
        if request.backend == "ray":
            placement["cluster"] = ray_backend().cluster_facts()
        store.start_run(
            {
                "environment": environment,
                "command": request.argv,
                "models": request.models,
                "lengths": request.lengths,
                "modes": request.modes,
                "attention": request.attentions,
                "dtypes": request.dtypes,
                "executions": request.executions,
                "threads": request.threads,
                "spare_workers": request.spare_workers,
                "lanes_per_gpu": request.lanes_per_gpu,
                "batch_size": request.batch_size,
                "profile": request.profile or {m: resolve_spec(m).default_profile for m in request.models},
                "seed": request.seed,
                "budget": request.budget.__dict__,
                "points_planned": len(points),
                "memory_snapshot_dir": str(request.memory_snapshot_dir) if request.memory_snapshot_dir else None,
                "started": environment["timestamp"],
                **placement,
            }
        )
        rows = runner.run(points)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    stop = stopped_by[0] if stopped_by else None
    store.finish_run(
        finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        points_measured=len(rows),
        peak_rates=peak_rates_of(rows),
        interrupted=stop is not None,
        stopped_by=signal.Signals(stop).name if stop is not None else None,
    )
    return rows, stop
