"""Runs a plan of points through worker processes and stores every result as it arrives.

Points of one model variant share a worker (a fresh process with its own CUDA context) until a
point ends in an error or leaves memory held; then the worker is retired and the next point gets a
fresh one. An OOM is a result, not a fault of the process: a worker that freed all the point held
serves on, and the longer lengths of that series are recorded as skipped, as are the points of a
mode a model cannot run (infer without predict, for a plug-in). An OOM beside spare workers that
the card alone might have had room for is measured again by one of them, the others ended first.
A stop request (Ctrl-C, SIGTERM, SIGHUP) takes effect between points, so the point in flight is kept.

A ``Lane`` holds that rule for one device; ``SweepRunner`` drives one lane in order (the CPU, one
GPU). ``lanes.py`` drives one lane per GPU of the host, ``ray_backend.py`` lanes in Ray tasks; in
every case the runner in the main process is the one writer of the results.
"""
import datetime
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Callable, Iterator

from models.profiles import get_profile
from profiler.results.schema import PointSpec, SeriesKey, oom_note
from profiler.results.store import ResultsStore
from profiler.run.oom import may_fit_alone
from profiler.run.plugins import plugin_columns, resolve_spec, unsupported
from profiler.run.worker import WORKER_HELD_SIGNALS, GpuAssignment, point_message, priming_key, worker_main
from profiler.trackers.timing import MeasurementBudget

# On CUDA, workers started ahead of need, each primed for one of the next model variants. On the
# H200 the default sweep took 221 s with one and 143 s with three: its fast models (a second or so
# for all their points) outrun a worker's start (imports, CUDA context, priming: 9 to 25 s).
DEFAULT_SPARE_WORKERS = 3
# A worker whose allocator still holds more than this after a point was freed is retired: the next
# point's figures would count it. Above what a library keeps from its first use (a cuBLAS workspace
# is 8 to 32 MiB); the leaks seen were tens of GiB.
HELD_AFTER_LIMIT_MIB = 64.0


@dataclass(frozen=True)
class RunnerOptions:
    budget: MeasurementBudget = MeasurementBudget()
    point_timeout_s: float = 900.0
    fresh_worker_per_point: bool = False
    pin_cpu: bool = True  # on CUDA: one core for the worker (see worker_main)
    threads: int = 1  # torch's intra-op threads in the worker
    memory_snapshot_dir: Path | None = None  # on CUDA, a memory snapshot of every point goes here
    spare_workers: int = DEFAULT_SPARE_WORKERS
    # Lanes on each GPU; more than one measure in the GPU's turns (profiler/run/turns.py).
    lanes_per_gpu: int = 1


class WorkerDied(Exception):
    pass


class WorkerStartFailed(WorkerDied):
    """The worker said it could not start (its CUDA context, NVML): it never measured."""


class WorkerTimedOut(Exception):
    pass


# Starting a worker (imports, CUDA context) is not part of a point's time limit; it has the same
# limit, up to this.
WORKER_START_TIMEOUT_S = 300.0


class Worker:
    """One worker process and the pipe to it."""

    def __init__(self, device: str, cpu: int | None = None, threads: int = 1, gpu: GpuAssignment | None = None,
                 start_off: frozenset[int] = frozenset(), prime: PointSpec | None = None, share_gpu: bool = False,
                 take_turns: bool = False):
        """``prime``: the point this worker will most likely measure first; on CUDA it primes for it
        while it starts (see worker._serve). ``share_gpu``: other lanes measure on its GPU, and it
        measures in the GPU's turns; ``take_turns``: it takes them beside its own lane's spares."""
        ctx = multiprocessing.get_context("spawn")  # fork would copy the parent's CUDA state
        self.device = device
        self.prime = prime
        self._conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=worker_main,
                                   args=(child_conn, device, cpu, threads, os.getpid(), gpu, start_off,
                                         None if prime is None else prime.as_dict(), share_gpu, take_turns),
                                   daemon=True)
        self._spawned_at = time.perf_counter()
        # The worker starts with these blocked, so a Ctrl-C while it imports torch stays pending
        # until it ignores them, rather than ending it with a traceback; here they wait a moment.
        # Starting multiprocessing's resource tracker (once) unblocks SIGINT: it is started first,
        # then the signals are blocked again.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_HELD_SIGNALS)
        try:
            resource_tracker.ensure_running()
            signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_HELD_SIGNALS)
            self.process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        child_conn.close()
        self.start_s: float | None = None  # spawn to ready: imports, CUDA context, NVML
        self.points_measured = 0
        self._ready = False

    def _receive(self, timeout_s: float, what: str) -> dict:
        deadline = time.monotonic() + timeout_s
        while not self._conn.poll(0.1):
            if not self.process.is_alive():
                if self._conn.poll(0):
                    break
                raise WorkerDied(self._death_cause())
            if time.monotonic() > deadline:
                self.kill()
                raise WorkerTimedOut(f"{what} took longer than {timeout_s:g} s; worker killed")
        try:
            return self._conn.recv()
        except (EOFError, ConnectionResetError):
            raise WorkerDied(self._death_cause()) from None

    def wait_until_ready(self, timeout_s: float) -> None:
        if self._ready:
            return
        hello = self._receive(min(WORKER_START_TIMEOUT_S, timeout_s), "worker start")
        if not hello.get("ready"):
            raise WorkerStartFailed(f"worker failed to start: {hello.get('error')}")
        self._ready = True
        self.start_s = time.perf_counter() - self._spawned_at

    def measure(self, point: PointSpec, budget: MeasurementBudget, timeout_s: float,
                memory_limit_mib: float | None = None, memory_snapshot_dir: Path | None = None) -> dict:
        """``memory_limit_mib``: the device memory of a smaller card to emulate (context included);
        ``memory_snapshot_dir``: where the point's memory snapshot goes (on CUDA)."""
        self.wait_until_ready(timeout_s)
        try:
            self._conn.send(point_message(point, budget, memory_limit_mib, memory_snapshot_dir))
        except OSError:  # the pipe broke: the worker died since its last point
            raise WorkerDied(self._death_cause()) from None
        record = self._receive(timeout_s, "point")
        self.points_measured += 1
        return record

    def _death_cause(self) -> str:
        self.process.join(timeout=5)
        code = self.process.exitcode
        if code is not None and code < 0:
            return f"worker died from signal {signal.Signals(-code).name}"
        return f"worker exited with code {code}"

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self._conn.send(None)
            except (BrokenPipeError, OSError):
                pass
            self.process.join(timeout=10)
        self.kill()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=10)


@dataclass
class SweepEvents:
    """Callbacks the caller (the CLI's progress display) receives; measurement code never prints."""

    on_start: Callable[[int, int, PointSpec], None] = lambda index, total, point: None
    on_result: Callable[[int, int, PointSpec, dict], None] = lambda index, total, point, row: None
    # a point that ran out of memory beside other lanes on its GPU, to be measured again alone
    on_deferred: Callable[[PointSpec], None] = lambda point: None


def worker_group(point: PointSpec) -> tuple:
    """The points that may share a worker: one model variant (all its modes, dtypes and lengths)."""
    return point.model, point.attention, point.profile, point.device


def measuring_cpu(slot: int = 0) -> int | None:
    """The core the worker of GPU slot ``slot`` measures on: the last cores this process may use, one
    per slot from the top (core 0 tends to serve interrupts); None when there are too few."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    return cores[-1 - slot] if slot < len(cores) else None


def point_row(point: PointSpec, record: dict, wall_s: float, device_name: str) -> dict:
    """The results row of ``point`` from its worker's record (which may name the device itself)."""
    spec = resolve_spec(point.model)
    profile = get_profile(point.profile)
    row = point.as_dict()
    row.update(
        family=spec.family,
        **plugin_columns(spec),
        device_name=device_name,
        num_items=profile.num_items,
        item_feature_dim=profile.item_feature_dim,
        point_wall_s=wall_s,
        finished_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    row.update({k: v for k, v in record.items() if k != "traceback"})
    return row


def skipped_after_oom(point: PointSpec, oom_at: dict[SeriesKey, int]) -> str | None:
    """Why ``point`` is not measured: a shorter length of its series ran out of memory."""
    length = oom_at.get(point.series)
    return oom_note(length) if length is not None and point.seq_len > length else None


@dataclass(frozen=True)
class PointStarted:
    point: PointSpec


@dataclass(frozen=True)
class PointFinished:
    point: PointSpec
    row: dict


@dataclass(frozen=True)
class UnitDeferred:
    """The rest of a lane's unit, from a point that ran out of memory while other lanes shared the
    GPU: its row is not written, and the points are measured again once the GPU is the sweep's alone."""

    points: list[PointSpec]


class Lane:
    """Measures points on one device, one worker process at a time: the rule of a series, shared by
    every way of running a sweep (in order here, on several GPUs, on a Ray cluster).

    Points of one model variant share a worker until one ends in an error or leaves memory held
    (``must_retire``); after an OOM the longer lengths of that series are skipped. ``slot``
    numbers this lane among the ``slots`` lanes of the host, which measure on different cores.
    ``defer_oom``: an OOM ends the points handed over instead (``UnitDeferred``), as where other
    lanes share the GPU's memory; ``marks``: columns every row of this lane carries.
    """

    def __init__(self, options: RunnerOptions, device_name: str = "", gpu: GpuAssignment | None = None,
                 slot: int = 0, slots: int = 1, spare: bool = True, defer_oom: bool = False,
                 marks: dict | None = None):
        self.options = options
        self.defer_oom = defer_oom
        self.marks = marks or {}
        self.device_name = device_name
        self.gpu = gpu
        self.slot = slot
        self.slots = slots
        self.spares_wanted = options.spare_workers if spare else 0
        self._worker: Worker | None = None
        self._worker_group: tuple | None = None
        self._worker_was_spare = False  # started before it was needed, as the card was then
        self._spares: list[Worker] = []  # the next workers, started while the current one measures

    def measure(self, points: list[PointSpec], oom_at: dict[SeriesKey, int],
                stopped: Callable[[], bool] = lambda: False) -> Iterator[PointStarted | PointFinished | UnitDeferred]:
        """Measures ``points`` in order, announcing each as it starts and ends; stops between points
        once ``stopped()``. ``oom_at``: the shortest length that ran out of memory, by series."""
        oom_at = dict(oom_at)
        for index, point in enumerate(points):
            if stopped():
                return
            yield PointStarted(point)
            reason = unsupported(resolve_spec(point.model), point.mode) or skipped_after_oom(point, oom_at)
            if reason is not None:
                row = point_row(point, {"status": "skipped", "error": reason}, 0.0, self.device_name)
            else:
                row = self._measure(point, points[index + 1:])
                if row["status"] == "oom" and self.defer_oom:
                    yield UnitDeferred(points[index:])
                    return
                if row["status"] == "oom":
                    oom_at[point.series] = min(point.seq_len, oom_at.get(point.series, point.seq_len))
            yield PointFinished(point, {**row, **self.marks})

    def close(self) -> None:
        # Spares have measured nothing and hold nothing to keep: ended at once, not each in turn
        # through its CUDA teardown (about a second each).
        self._drop_spares()
        self._retire_worker()

    def abort(self) -> None:
        """Kills this lane's workers now, from any thread: the point in flight ends as an error."""
        for worker in [self._worker, *self._spares]:
            if worker is not None:
                worker.kill()

    def _next_worker_points(self, point: PointSpec, upcoming: list[PointSpec]) -> list[PointSpec]:
        """The points of ``upcoming`` that will each need a new worker if ``point``'s worker serves on,
        in order, as many as spares are wanted: the points the spares prime for. Empty where
        ``upcoming`` is (a lane given one variant at a time)."""
        if self.options.fresh_worker_per_point:
            return upcoming[:self.spares_wanted]
        firsts, groups = [], {worker_group(point)}
        for later in upcoming:
            if len(firsts) == self.spares_wanted:
                break
            if worker_group(later) not in groups:
                groups.add(worker_group(later))
                firsts.append(later)
        return firsts

    def _measure(self, point: PointSpec, upcoming: list[PointSpec]) -> dict:
        """``upcoming``: the lane's points after this one, which the spares started here prime for."""
        group = worker_group(point)
        if self._worker is None or group != self._worker_group or self.options.fresh_worker_per_point:
            self._retire_worker()
            next_points = self._next_worker_points(point, upcoming)
            self._worker, self._worker_was_spare = self._take_worker(point, next_points)
            self._worker_group = group
        started = time.perf_counter()
        record = self._measure_in(point)
        if record["status"] == "oom" and self._spares and not self.defer_oom and may_fit_alone(record):
            # Each spare holds a CUDA context on the GPU (about 0.8 GiB), memory the point may have
            # needed: measured again with no other worker there, as the card alone would run it. The
            # spare needed last measures it (it primes again for the point) rather than a new
            # worker: one context either way, without seconds of start-up.
            self._retire_worker()
            self._worker, self._worker_group, self._worker_was_spare = self._spares.pop(), group, True
            self._drop_spares()
            record = {**self._measure_in(point), "alone_after_shared_oom": True}
            # Spares again for the variants to come: without them each would wait for a start.
            self._top_up_spares(point.device, self._next_worker_points(point, upcoming))
        if must_retire(record):
            self._retire_worker()
        return point_row(point, record, time.perf_counter() - started, self.device_name)

    def _measure_in(self, point: PointSpec) -> dict:
        """The current worker's record of ``point``; a worker that dies or overruns makes it an
        error. A fresh worker's record says how long the point waited for it to be ready
        (``worker_wait_s``): a start the spares did not hide."""
        worker, fresh, waited_s = self._worker, self._worker.points_measured == 0, 0.0
        try:
            if fresh:
                worker, waited_s = self._ready_worker(point)
            record = worker.measure(point, self.options.budget, self.options.point_timeout_s,
                                    memory_snapshot_dir=self.options.memory_snapshot_dir)
        except (WorkerDied, WorkerTimedOut) as exc:
            record = {"status": "error", "error": str(exc)}
        record["worker_fresh"] = fresh
        if fresh:
            record.update(worker_start_s=worker.start_s, worker_wait_s=waited_s)
        return record

    def _ready_worker(self, point: PointSpec) -> tuple[Worker, float]:
        """The current worker once it is ready, and the seconds waited for it.

        A spare that could not start is replaced, once, by a worker started now, which measures the
        point: a spare starts while another worker may hold nearly all the card (a point about to
        run out of memory), and its CUDA context can find no room then. A worker started now that
        cannot start either makes the point an error."""
        started = time.perf_counter()
        try:
            self._worker.wait_until_ready(self.options.point_timeout_s)
        except WorkerStartFailed:
            if not self._worker_was_spare:
                raise
            self._worker.kill()
            self._worker, self._worker_was_spare = self._new_worker(point.device, point), False
            self._worker.wait_until_ready(self.options.point_timeout_s)
        return self._worker, time.perf_counter() - started

    def _drop_spares(self) -> None:
        """Ends the spares now, starting or waiting: the GPU memory their contexts hold is freed."""
        for spare in self._spares:
            spare.kill()
        self._spares = []

    def _new_worker(self, device: str, prime: PointSpec | None = None) -> Worker:
        """On CUDA the worker is pinned to its lane's core; on the CPU the step needs every core."""
        share_gpu = self.options.lanes_per_gpu > 1
        # A spare primes (a step of its model, its dataset tables) while this lane measures: in the
        # GPU's turns, so that it never runs beside a timed step (one ran beside ConvRec-light's
        # inference at L = 500 on an H100 and made it 32% slower).
        take_turns = device == "cuda" and self.spares_wanted > 0
        if device != "cuda" or not self.options.pin_cpu:
            return Worker(device, None, self.options.threads, self.gpu, prime=prime, share_gpu=share_gpu,
                          take_turns=take_turns)
        start_off = frozenset(cpu for cpu in map(measuring_cpu, range(self.slots)) if cpu is not None)
        return Worker(device, measuring_cpu(self.slot), self.options.threads, self.gpu, start_off, prime=prime,
                      share_gpu=share_gpu, take_turns=take_turns)

    def _take_worker(self, point: PointSpec, next_worker_points: list[PointSpec]) -> tuple[Worker, bool]:
        """A started worker for ``point``: the spare primed for it if there is one (else the spare
        needed last), and spares behind it, one primed for each of ``next_worker_points``; and
        whether the worker is a spare.

        On CUDA, starting a worker (imports, CUDA context, priming) takes seconds; the spares do it
        while the current worker measures, on the other cores (a worker keeps off the measuring
        cores until its first point), so it leaves the sweep's critical path. On the CPU the step
        needs every core, so workers start when they are needed.
        """
        device = point.device
        worker = next((spare for spare in self._spares if _primed_for(spare, point)), None)
        if worker is None and self._spares:
            worker = self._spares[-1]  # primed for another variant: it primes again at its first point
        if worker is not None:
            self._spares.remove(worker)
        was_spare = worker is not None
        if worker is None or worker.device != device or not worker.process.is_alive():
            if worker is not None:
                worker.kill()
            worker, was_spare = self._new_worker(device, point), False
        if device == "cuda" and self.spares_wanted:
            self._top_up_spares(device, next_worker_points)
        return worker, was_spare

    def _top_up_spares(self, device: str, wanted: list[PointSpec]) -> None:
        """Spares primed for ``wanted``, in order; those primed for a point no longer wanted closed.
        Without a point to prime for (what comes next is not known here), one spare unprimed."""
        stale = [spare for spare in self._spares if wanted and not any(_primed_for(spare, p) for p in wanted)]
        for spare in stale:
            self._spares.remove(spare)
            spare.close()
        for upcoming in wanted:
            if not any(_primed_for(spare, upcoming) for spare in self._spares):
                self._spares.append(self._new_worker(device, upcoming))
        if not wanted and not self._spares:
            self._spares.append(self._new_worker(device))

    def _retire_worker(self) -> None:
        if self._worker is not None:
            self._worker.close()
        self._worker, self._worker_group, self._worker_was_spare = None, None, False


def must_retire(record: dict) -> bool:
    """Whether the worker that produced ``record`` must not measure another point: the point ended in
    an error (a device-side assert breaks the context; a dead or overrun worker is gone) or left
    memory held that the next point would count. An OOM that freed everything is a result, and its
    worker serves on."""
    return record["status"] not in ("ok", "oom") or record.get("held_after_mib", 0.0) > HELD_AFTER_LIMIT_MIB


def _primed_for(worker: Worker, point: PointSpec) -> bool:
    return worker.prime is not None and worker.device == point.device and priming_key(worker.prime) == priming_key(point)


class SweepRunner:
    """Runs a sweep's points in order on one device (the CPU, or one GPU) and stores each row."""

    def __init__(
        self, store: ResultsStore, options: RunnerOptions, events: SweepEvents | None = None, device_name: str = "",
        gpu: GpuAssignment | None = None,
    ):
        self.store = store
        self.device_name = device_name
        self.options = options
        self.events = events or SweepEvents()
        self.stop_requested = False
        self.gpu = gpu

    def request_stop(self) -> None:
        self.stop_requested = True

    def pending(self, points: list[PointSpec]) -> list[PointSpec]:
        done = self.store.measured_keys()
        return [p for p in points if p.key not in done]

    def run(self, points: list[PointSpec]) -> list[dict]:
        """Measures ``points`` in order; returns the rows written. Stops early on request."""
        lane = Lane(self.options, self.device_name, self.gpu)
        rows = []
        try:
            for event in lane.measure(points, self._stored_oom_lengths(), lambda: self.stop_requested):
                if isinstance(event, PointStarted):
                    self.events.on_start(len(rows), len(points), event.point)
                else:
                    self._keep(event, rows, len(points))
        finally:
            lane.close()
        return rows

    def _keep(self, event: PointFinished, rows: list[dict], total: int) -> None:
        """Stores a finished point's row: the one place a sweep writes results."""
        self.store.append(event.row)
        rows.append(event.row)
        self.events.on_result(len(rows) - 1, total, event.point, event.row)

    def _stored_oom_lengths(self) -> dict[SeriesKey, int]:
        oom_at: dict[SeriesKey, int] = {}
        frame = self.store.frame
        for row in frame[frame["status"] == "oom"].itertuples(index=False):
            series = SeriesKey.of(row)
            oom_at[series] = min(int(row.seq_len), oom_at.get(series, int(row.seq_len)))
        return oom_at
