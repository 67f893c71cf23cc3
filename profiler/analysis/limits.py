"""What fits on a card: the longest sequence (or largest batch) whose step fits in N GiB.

On a GPU every probe runs the real step in a worker whose allocator is held to what a card of that
size leaves after the CUDA context; a probe that runs out of memory and leaves memory held retires
its worker (as a sweep's point does), so it poisons nothing, and ``--check`` runs the limit found
again in fresh workers of its own. The search doubles until a probe fails, then bisects between
the last fit and the first failure. Without a GPU (or asked to predict), the tensor footprint
measured on the CPU at a few lengths is fitted and solved for the budget: a prediction, labelled
so.
"""
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from profiler.analysis.fit import evaluate, fit_polynomial
from profiler.results.schema import PointSpec
from profiler.run.plugins import resolve_spec
from profiler.run.runner import Worker, WorkerDied, WorkerTimedOut, must_retire
from profiler.run.workload import build_workload, step_costs
from profiler.trackers.timing import MeasurementBudget

GIB_MIB = 1024.0
# One step is enough to know whether it fits: the first step allocates the optimizer state and
# every activation; later steps reuse the same blocks.
PROBE_BUDGET = MeasurementBudget(warmup_steps=1, max_warmup_steps=1, min_reps=1, max_reps=1, time_budget_s=0.0)
PROBE_TIMEOUT_S = 900.0
# What a CUDA process holds outside the allocator on the H200 (context and loaded kernels, NVML's
# baseline in results/h200-default-run2.csv: 808 to 828 MiB); a prediction subtracts it.
CONTEXT_MIB = 830.0
# The CPU lengths a prediction fits the footprint over, and the batch sizes when the batch varies.
PREDICTION_LADDER = (16, 32, 64, 128)
PREDICTION_BATCH_LADDER = (1, 2, 4, 8)
# A prediction over lengths measures the footprint at this batch and scales its per-example parts
# (inputs, activations: no model here mixes the examples of a batch) to the batch asked for; its
# parameters, gradients and optimizer state do not depend on the batch. Measured at the real batch,
# the footprint would have to fit in the host's memory: CosRec's is 77 GiB at L = 200, batch 128.
PREDICTION_BATCH = 2
PER_EXAMPLE_PARTS = ("inputs_mib", "activations_mib")
# Lengths are bisected until the last fit and the first failure are this close (relative to the fit):
# a probe near the limit of a long-sequence model is a step of seconds, and the last halvings of
# an exact search (from 1% to one token) would double the probes for a figure no card's user needs.
LENGTH_TOLERANCE = 0.01
# A found limit is checked by running the step alone at it (it must fit) and this much above it (it must not).
CHECK_MARGIN = 0.10
FOOTPRINT_PARTS = ("params_mib", "grads_mib", "optimizer_state_mib", "inputs_mib", "activations_mib")


class LimitError(ValueError):
    """A search that cannot be run; the message says why in one line."""


@dataclass(frozen=True)
class Probe:
    value: int  # the length or batch size probed
    fits: bool
    record: dict


def search_largest(fits: Callable[[int], bool], start: int, limit: int,
                   tolerance: float = 0.0, between: tuple[int, int] | None = None) -> tuple[int | None, int | None]:
    """The largest value in [start, limit] for which ``fits`` holds, assuming it holds below some
    boundary and fails above it; and the smallest failing value found (None if none failed).
    Doubles from ``start`` until a probe fails or ``limit`` is reached, then bisects until the
    last fit and the first failure are adjacent, or less than ``tolerance`` of the fit apart.

    ``between`` (low, high) is a bracket believed to hold the boundary, say from an earlier search
    that was stopped: both ends are probed first, so a bracket that is wrong costs two probes and
    the search goes on from what they found (doubling above ``high`` if it fits, from ``start``
    if ``low`` does not), never trusting it."""
    if start > limit:
        raise LimitError(f"the search starts at {start}, above its limit {limit}")
    good, bad = None, None
    if between is not None:
        low, high = between
        if not start <= low < high <= limit:
            raise LimitError(f"the bracket {low}:{high} is not within the search's {start}..{limit}, low below high")
        if fits(low):
            good = low
            if fits(high):
                good = high
            else:
                bad = high
        else:
            bad = low
    if good is None:
        if not fits(start):
            return None, start
        good = start
    while bad is None and good < limit:
        candidate = min(2 * good, limit)
        if fits(candidate):
            good = candidate
        else:
            bad = candidate
    while bad is not None and bad - good > max(1, math.floor(tolerance * good)):
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    return good, bad


@dataclass(frozen=True)
class LimitQuery:
    model: str
    attention: str
    mode: str
    profile: str
    vary: str  # "seq_len" or "batch_size"
    fixed: int  # the batch size when varying the length, the length when varying the batch
    memory_gib: float
    dtype: str = "float32"

    def point(self, value: int, device: str) -> PointSpec:
        seq_len, batch_size = (value, self.fixed) if self.vary == "seq_len" else (self.fixed, value)
        return PointSpec(self.model, seq_len, self.mode, batch_size, self.profile, self.attention, device,
                         dtype=self.dtype)


def _probe_with(worker: Worker, query: LimitQuery, value: int) -> Probe:
    try:
        record = worker.measure(query.point(value, "cuda"), PROBE_BUDGET, PROBE_TIMEOUT_S, query.memory_gib * GIB_MIB)
    except (WorkerDied, WorkerTimedOut) as exc:
        raise LimitError(f"{query.model} at {query.vary} {value}: {exc}") from None
    if record["status"] == "error":
        raise LimitError(f"{query.model} at {query.vary} {value}: {record.get('error')}")
    return Probe(value, record["status"] == "ok", record)


def probe_on_gpu(query: LimitQuery, value: int) -> Probe:
    """One real step in a fresh worker of its own under the emulated card's memory."""
    worker = Worker("cuda")
    try:
        return _probe_with(worker, query, value)
    finally:
        worker.close()


class ProbeWorkers:
    """The workers of one search. A probe leaves its worker as a sweep's point does (its memory
    released, nothing else changed), so the next probe reuses it and skips a start and the kernel
    priming, most of a probe's time. A search probes past its limit about half the time, so this
    holds for an OOM too: a probe that ran out of memory and freed everything keeps its worker; one
    that left memory held (``must_retire``) retires it, and the next probe runs in the spare started
    meanwhile, so an OOM poisons nothing."""

    def __init__(self, worker_factory: Callable[[], Worker] = lambda: Worker("cuda")):
        self._factory = worker_factory
        self._worker: Worker | None = None
        self._spare: Worker | None = None

    def probe(self, query: LimitQuery, value: int) -> Probe:
        if self._worker is None:
            self._worker, self._spare = self._spare or self._factory(), None
        try:
            probe = _probe_with(self._worker, query, value)
        except LimitError:
            self._retire()
            raise
        if must_retire(probe.record):
            self._retire()
        if self._spare is None:
            self._spare = self._factory()  # starts (imports, CUDA context) while this search goes on
        return probe

    def _retire(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def close(self) -> None:
        self._retire()
        if self._spare is not None:
            self._spare.close()
            self._spare = None


def measured_limit(query: LimitQuery, start: int, limit: int,
                   workers: Callable[[], ProbeWorkers] = ProbeWorkers,
                   on_probe: Callable[[Probe, float], None] = lambda probe, seconds: None,
                   between: tuple[int, int] | None = None,
                   ) -> tuple[int | None, int | None, list[Probe]]:
    """The search on the GPU; ``on_probe`` hears of each probe as it ends, with its seconds;
    ``between``: a bracket to probe first (``search_largest``)."""
    probes: list[Probe] = []
    session = workers()

    def fits(value: int) -> bool:
        started = time.perf_counter()
        probes.append(session.probe(query, value))
        on_probe(probes[-1], time.perf_counter() - started)
        return probes[-1].fits

    tolerance = LENGTH_TOLERANCE if query.vary == "seq_len" else 0.0
    try:
        good, bad = search_largest(fits, start, limit, tolerance, between)
    finally:
        session.close()
    return good, bad, probes


@dataclass(frozen=True)
class LimitCheck:
    """The found limit run again, alone: at it, and ``CHECK_MARGIN`` above it."""

    largest: int
    above: int
    fits_at_largest: bool
    fits_above: bool

    @property
    def holds(self) -> bool:
        return self.fits_at_largest and not self.fits_above

    @property
    def summary(self) -> str:
        at = "fits" if self.fits_at_largest else "OOM"
        above = "fits" if self.fits_above else "OOM"
        return f"{at} at {self.largest:,}, {above} at {self.above:,}" + ("" if self.holds else " (does not hold)")


def check_limit(query: LimitQuery, largest: int, probe: Callable[[LimitQuery, int], Probe] = probe_on_gpu) -> LimitCheck:
    """Each value in a fresh worker of its own, as a user running that model alone would."""
    above = max(largest + 1, math.ceil(largest * (1 + CHECK_MARGIN)))
    return LimitCheck(largest, above, probe(query, largest).fits, probe(query, above).fits)


def footprint_at(query: LimitQuery, value: int) -> dict:
    """The tensor footprint's parts (MiB) of one step, measured on the CPU (see PREDICTION_BATCH)."""
    point = query.point(value, "cpu")
    scale = 1.0
    if query.vary == "seq_len" and point.batch_size > PREDICTION_BATCH:
        scale = point.batch_size / PREDICTION_BATCH
        point = dataclasses.replace(point, batch_size=PREDICTION_BATCH)
    workload = build_workload(point.model, point.attention, point.mode, point.seq_len, point.batch_size,
                              point.profile, "cpu", dtype=point.dtype)
    parts = step_costs(workload).footprint
    return {name: getattr(parts, name) * (scale if name in PER_EXAMPLE_PARTS else 1.0) for name in FOOTPRINT_PARTS}


def predicted_limit(query: LimitQuery, limit: int, ladder=None) -> tuple[int | None, dict]:
    """The largest value whose fitted footprint plus the CUDA context stays within the budget."""
    budget_mib = query.memory_gib * GIB_MIB - CONTEXT_MIB
    if budget_mib <= 0:
        raise LimitError(f"a {query.memory_gib:g} GiB budget is below the CUDA context (about {CONTEXT_MIB:.0f} MiB)")
    if ladder is None:
        ladder = PREDICTION_LADDER if query.vary == "seq_len" else PREDICTION_BATCH_LADDER
    measured = {value: footprint_at(query, value) for value in ladder}
    totals = [sum(parts.values()) for parts in measured.values()]
    coefs = fit_polynomial(list(measured), totals)

    def fits(value: int) -> bool:
        return float(evaluate(coefs, value)) <= budget_mib

    good, _ = search_largest(fits, 1, limit)
    at = good or min(measured)
    # Each part fitted on its own, read at the found value: what fills the card there.
    parts = {name: float(evaluate(fit_polynomial(list(measured), [m[name] for m in measured.values()]), at))
             for name in FOOTPRINT_PARTS}
    return good, {"coefs": coefs, "parts": parts}


def dominant_part(parts: dict) -> str:
    name = max(parts, key=parts.get)
    return name.removesuffix("_mib").replace("_", " ")


def model_query(model: str, attention: str | None, mode: str, profile: str | None, vary: str, fixed: int,
                memory_gib: float, dtype: str) -> LimitQuery:
    spec = resolve_spec(model)
    backend = (attention or "sdpa") if spec.has_attention_backend else "none"
    return LimitQuery(model, backend, mode, profile or spec.default_profile, vary, fixed, memory_gib, dtype)


def limit_of(spec_limit: int | None, requested: int) -> int:
    return min(requested, spec_limit) if spec_limit is not None else requested


def footprint_parts_of(record: dict) -> dict:
    return {name: float(record[name]) for name in FOOTPRINT_PARTS if name in record and np.isfinite(record[name])}
