"""What several test modules build the same way: a measurement budget and CLI flags of a few
steps, a synthetic results table of known growth, a stored results file of a few points, and a
stand-in for a worker process."""
import numpy as np
import pandas as pd
import torch

from profiler.results.schema import COLUMNS
from profiler.results.store import ResultsStore
from profiler.trackers.timing import MeasurementBudget

TINY_BUDGET = MeasurementBudget(warmup_steps=1, max_warmup_steps=1, time_budget_s=0.01, min_reps=2, max_reps=3)
# CLI flags giving the same budget, so CLI tests run in seconds.
FAST_FLAGS = ["--device", "cpu", "--profile", "tiny", "--batch-size", "4", "--warmup", "1", "--max-warmup", "1", "--no-plot",
              "--time-budget-s", "0.01", "--min-reps", "2", "--max-reps", "3"]

# The run FAST_FLAGS with --models sasrec records in a sidecar.
FAST_RUN = {"models": ["sasrec"], "modes": ["train"], "attention": ["naive"], "dtypes": ["float32"], "batch_size": 4,
            "profile": "tiny", "seed": 0}


def store_points(path, lengths) -> None:
    """A results file and sidecar as a sweep with FAST_FLAGS and --models sasrec leaves them: one
    ok row per length (made-up numbers), one recorded run."""
    with ResultsStore.create(path) as store:
        store.start_run({**FAST_RUN, "lengths": list(lengths)})
        for length in lengths:
            row = dict.fromkeys(COLUMNS)
            row.update(model="sasrec", family="attention", attention="naive", profile="tiny", mode="train",
                       batch_size=4, seq_len=length, device="cpu", dtype="float32", execution="eager", seed=0, device_name="cpu",
                       status="ok", time_median_ms=1.0 + length / 100, tensor_footprint_mib=2.0 + length / 10)
            store.append(row)
        store.finish_run(points_measured=len(lengths), interrupted=False)


# model -> (family, attention, footprint MiB (L), time ms (L)): the shapes of real models.
SYNTHETIC_MODELS = {
    "sasrec": ("attention", "naive", lambda L: 20 + 0.1 * L + 0.002 * L**2, lambda L: 2 + 0.01 * L + 1e-4 * L**2),
    "convrec-light": ("convolution", "none", lambda L: 10 + 0.05 * L, lambda L: 1.5 + 0.004 * L),
    "cosrec": ("convolution", "none", lambda L: 0.5 * L**2, lambda L: 0.01 * L**2),
    "caser": ("convolution", "none", lambda L: 5 + 0.3 * L, lambda L: 1 + 1e-6 * L**3),
}


def synthetic_results(
    lengths=(50, 100, 200, 400, 600, 800),
    batch_size: int = 8,
    profile: str = "beauty",
    oom: dict | None = None,
    errors: dict | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """A results table in the store's columns: four models of known growth, with OOM (then skipped)
    and error rows. ``oom``/``errors`` map a model to the length that fails."""
    oom = {"cosrec": lengths[3]} if oom is None else oom
    errors = {"caser": lengths[1]} if errors is None else errors
    rng = np.random.default_rng(seed)
    rows = []
    for model, (family, attention, footprint, time_ms) in SYNTHETIC_MODELS.items():
        stopped = False
        for length in lengths:
            row = dict.fromkeys(COLUMNS)
            row.update(model=model, family=family, attention=attention, profile=profile, mode="train",
                       batch_size=batch_size, seq_len=length, device="cuda", dtype="float32", execution="eager", seed=0,
                       device_name="Test GPU 80GB")
            if stopped:
                row.update(status="skipped", error="skipped: an earlier length ran out of memory")
            elif oom.get(model) == length:
                row.update(status="oom", error="OutOfMemoryError: CUDA out of memory")
                stopped = True
            elif errors.get(model) == length:
                row.update(status="error", error="RuntimeError: injected failure")
            else:
                samples = time_ms(length) * (1 + 0.02 * rng.standard_normal(15))
                memory = footprint(length)
                row.update(
                    status="ok", time_median_ms=float(np.median(samples)), reps=len(samples),
                    step_times_ms=" ".join(f"{s:.4f}" for s in samples),
                    tensor_footprint_mib=memory, peak_allocated_mib=1.2 * memory + 30,
                    nvml_peak_mib=1.2 * memory + 530, flops_per_step=2e6 * length + (4e3 * length**2 if attention == "naive" else 0),
                )
                row["achieved_tflops"] = row["flops_per_step"] / (row["time_median_ms"] * 1e-3) / 1e12
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def train_on(model, make_batch, steps: int = 60, batch_size: int = 64) -> list[float]:
    """``steps`` steps of the model's own optimizer on fresh batches; the losses, in order."""
    optimizer = model.configure_optimizer()
    losses = []
    for _ in range(steps):
        loss = model(make_batch(batch_size))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def top1_hit_rate(model, batch) -> float:
    """How often the first candidate (the true next item in a planted batch) scores highest."""
    model.eval()
    with torch.no_grad():
        scores = model.predict(batch)
    return (scores.argmax(dim=1) == 0).float().mean().item()


def successor_walk(batch: dict, num_items: int, generator) -> dict:
    """``batch`` with histories walking a cycle over the items (the next item is the previous one
    + 1), its padding kept, and candidates whose column 0 is the true next item."""
    batch_size, seq_len = batch["seq"].shape
    real = batch["seq"] != 0
    start = torch.randint(0, num_items, (batch_size, 1), generator=generator)
    walk = (start + torch.arange(seq_len + 1)) % num_items + 1  # (B, L + 1)
    negatives = walk[:, -1:] + torch.randint(1, num_items, (batch_size, 9), generator=generator) - 1
    return dict(
        batch,
        seq=walk[:, :-1] * real,
        pos=walk[:, 1:] * real,
        candidates=torch.cat([walk[:, -1:], negatives % num_items + 1], dim=1),  # distinct from the positive
    )


class StandInWorker:
    """Stands in for a worker process (profiler.run.runner.Worker): records what it was asked to
    prime for and the points it was asked to measure, and measures nothing; every point is ok.
    Subclasses change ``measure`` or ``wait_until_ready`` to fail as a real worker can."""

    started: list = []

    def __init__(self, device, cpu=None, threads=1, gpu=None, start_off=frozenset(), prime=None, share_gpu=False,
                 take_turns=False):
        self.device, self.prime, self.points_measured, self.start_s = device, prime, 0, 0.0
        self.take_turns = take_turns
        self.process = type("Alive", (), {"is_alive": staticmethod(lambda: True)})()
        self.measured: list = []
        StandInWorker.started.append(self)

    def wait_until_ready(self, timeout_s):
        pass

    def measure(self, point, budget, timeout_s, memory_limit_mib=None, memory_snapshot_dir=None):
        self.wait_until_ready(timeout_s)
        self.points_measured += 1
        self.measured.append(point)
        return {"status": "ok"}

    def close(self):
        pass

    kill = close
