"""A sweep from the user's choices to stored results: defaults per device, validation, the run."""
import datetime
import signal
from dataclasses import dataclass, field
from pathlib import Path

from models.profiles import get_profile
from models.registry import REGISTRY, get_spec
from profiler.results.files import timestamped_path
from profiler.results.schema import PointSpec
from profiler.results.store import ResultsStore
from profiler.run.plan import plan_points
from profiler.run.runner import RunnerOptions, SweepEvents, SweepRunner
from profiler.trackers.environment import collect_environment
from profiler.trackers.timing import MeasurementBudget

RESULTS_DIR = Path("results")


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
    threads: int = 1
    argv: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """Raises ValueError with one line for a combination no point of which could run."""
        if self.profile is not None:
            get_profile(self.profile)
        for model in self.models:
            spec = get_spec(model)
            limit = spec.max_len_limit
            if limit is not None and max(self.lengths) > limit:
                raise ValueError(f"model {model!r} supports lengths up to {limit}; got {max(self.lengths)}")
            if min(self.lengths) < spec.min_len:
                raise ValueError(f"model {model!r} needs lengths of at least {spec.min_len}; got {min(self.lengths)}")
            profile = get_profile(self.profile or spec.default_profile)
            if spec.needs_item_features and profile.item_feature_dim is None:
                raise ValueError(f"model {model!r} needs item features; profile {profile.name!r} has none")

    def plan(self) -> list[PointSpec]:
        return plan_points(
            self.models, self.lengths, self.modes, self.attentions, self.batch_size, self.profile, self.device, self.seed,
            tuple(self.dtypes),
        )


def default_results_path() -> Path:
    return timestamped_path(RESULTS_DIR, "sweep")


def open_store(request: SweepRequest) -> ResultsStore:
    return ResultsStore.resume(request.out) if request.resume else ResultsStore.create(request.out)


def run_sweep(request: SweepRequest, store: ResultsStore, events: SweepEvents) -> tuple[list[dict], bool]:
    """Runs the pending points of the request into ``store`` (held locked by the caller).

    Returns the rows written and whether the sweep was stopped early by Ctrl-C.
    """
    environment = collect_environment(request.device)
    runner = SweepRunner(
        store,
        RunnerOptions(request.budget, request.point_timeout_s, request.fresh_worker_per_point, request.pin_cpu,
                      request.threads),
        events,
        device_name=environment["device_name"],
    )
    points = runner.pending(request.plan())
    store.start_run(
        {
            "environment": environment,
            "command": request.argv,
            "models": request.models,
            "lengths": request.lengths,
            "modes": request.modes,
            "attention": request.attentions,
            "dtypes": request.dtypes,
            "threads": request.threads,
            "batch_size": request.batch_size,
            "profile": request.profile or {m: REGISTRY[m].default_profile for m in request.models},
            "seed": request.seed,
            "budget": request.budget.__dict__,
            "points_planned": len(points),
            "started": environment["timestamp"],
        }
    )

    def stop_after_this_point(signum, frame):
        runner.request_stop()

    previous = signal.signal(signal.SIGINT, stop_after_this_point)
    try:
        rows = runner.run(points)
    finally:
        signal.signal(signal.SIGINT, previous)
    store.finish_run(
        finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        points_measured=len(rows),
        interrupted=runner.stop_requested,
    )
    return rows, runner.stop_requested
