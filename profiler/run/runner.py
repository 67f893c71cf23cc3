"""Runs a plan of points through worker processes and stores every result as it arrives.

Points of one model variant share a worker (a fresh process with its own CUDA context) until a
point ends in anything but ``ok``; then the worker is retired and the next point gets a fresh one.
After an OOM, the longer lengths of that series are recorded as skipped, as are the points of a mode
a model cannot run (infer without predict, for a plug-in). A stop request (Ctrl-C, SIGTERM, SIGHUP)
takes effect between points, so the point in flight is kept.
"""
import datetime
import multiprocessing
import os
import signal
import time
from dataclasses import asdict, dataclass
from multiprocessing import resource_tracker
from typing import Callable

from models.profiles import get_profile
from profiler.results.schema import PointSpec, SeriesKey, oom_note
from profiler.results.store import ResultsStore
from profiler.run.plugins import plugin_columns, resolve_spec, unsupported
from profiler.run.worker import WORKER_HELD_SIGNALS, worker_main
from profiler.trackers.timing import MeasurementBudget


@dataclass(frozen=True)
class RunnerOptions:
    budget: MeasurementBudget = MeasurementBudget()
    point_timeout_s: float = 900.0
    fresh_worker_per_point: bool = False
    pin_cpu: bool = True  # on CUDA: one core for the worker (see worker_main)
    threads: int = 1  # torch's intra-op threads in the worker


class WorkerDied(Exception):
    pass


class WorkerTimedOut(Exception):
    pass


# Starting a worker (imports, CUDA context) is not part of a point's time limit; it has the same
# limit, up to this.
WORKER_START_TIMEOUT_S = 300.0


class Worker:
    """One worker process and the pipe to it."""

    def __init__(self, device: str, cpu: int | None = None, threads: int = 1):
        ctx = multiprocessing.get_context("spawn")  # fork would copy the parent's CUDA state
        self.device = device
        self._conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child_conn, device, cpu, threads, os.getpid()),
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

    def _wait_until_ready(self, timeout_s: float) -> None:
        if self._ready:
            return
        hello = self._receive(min(WORKER_START_TIMEOUT_S, timeout_s), "worker start")
        if not hello.get("ready"):
            raise WorkerDied(f"worker failed to start: {hello.get('error')}")
        self._ready = True
        self.start_s = time.perf_counter() - self._spawned_at

    def measure(self, point: PointSpec, budget: MeasurementBudget, timeout_s: float,
                memory_limit_mib: float | None = None) -> dict:
        """``memory_limit_mib``: the device memory of a smaller card to emulate (context included)."""
        self._wait_until_ready(timeout_s)
        try:
            self._conn.send({"point": point.as_dict(), "budget": asdict(budget), "memory_limit_mib": memory_limit_mib})
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


class SweepRunner:
    def __init__(
        self, store: ResultsStore, options: RunnerOptions, events: SweepEvents | None = None, device_name: str = ""
    ):
        self.store = store
        self.device_name = device_name
        self.options = options
        self.events = events or SweepEvents()
        self.stop_requested = False
        self._worker: Worker | None = None
        self._worker_group: tuple | None = None
        self._spare: Worker | None = None  # the next worker, started while the current one measures

    def request_stop(self) -> None:
        self.stop_requested = True

    def pending(self, points: list[PointSpec]) -> list[PointSpec]:
        done = self.store.measured_keys()
        return [p for p in points if p.key not in done]

    def run(self, points: list[PointSpec]) -> list[dict]:
        """Measures ``points`` in order; returns the rows written. Stops early on request."""
        oom_at = self._stored_oom_lengths()
        rows = []
        try:
            for index, point in enumerate(points):
                if self.stop_requested:
                    break
                self.events.on_start(index, len(points), point)
                reason = unsupported(resolve_spec(point.model), point.mode)
                if reason is not None:
                    row = self._row(point, {"status": "skipped", "error": reason}, 0.0)
                elif point.series in oom_at and point.seq_len > oom_at[point.series]:
                    row = self._row(point, {"status": "skipped", "error": oom_note(oom_at[point.series])}, 0.0)
                else:
                    row = self._measure(point)
                    if row["status"] == "oom":
                        oom_at[point.series] = min(point.seq_len, oom_at.get(point.series, point.seq_len))
                self.store.append(row)
                rows.append(row)
                self.events.on_result(index, len(points), point, row)
        finally:
            self._retire_worker()
            if self._spare is not None:
                self._spare.close()
                self._spare = None
        return rows

    def _stored_oom_lengths(self) -> dict[SeriesKey, int]:
        oom_at: dict[SeriesKey, int] = {}
        frame = self.store.frame
        for row in frame[frame["status"] == "oom"].itertuples(index=False):
            series = SeriesKey.of(row)
            oom_at[series] = min(int(row.seq_len), oom_at.get(series, int(row.seq_len)))
        return oom_at

    def _measure(self, point: PointSpec) -> dict:
        group = (point.model, point.attention, point.profile, point.device)
        if self._worker is None or group != self._worker_group or self.options.fresh_worker_per_point:
            self._retire_worker()
            self._worker, self._worker_group = self._take_worker(point.device), group
        worker = self._worker
        fresh = worker.points_measured == 0
        started = time.perf_counter()
        try:
            record = worker.measure(point, self.options.budget, self.options.point_timeout_s)
        except (WorkerDied, WorkerTimedOut) as exc:
            record = {"status": "error", "error": str(exc)}
        record["worker_fresh"] = fresh
        if fresh:
            record["worker_start_s"] = worker.start_s
        if record["status"] != "ok":
            self._retire_worker()  # a fresh process for whatever comes next
        return self._row(point, record, time.perf_counter() - started)

    def _worker_cpu(self, device: str) -> int | None:
        """The last core this process may use (core 0 tends to serve interrupts), on CUDA only:
        on the CPU the step itself needs every core."""
        if device != "cuda" or not self.options.pin_cpu or not hasattr(os, "sched_getaffinity"):
            return None
        return max(os.sched_getaffinity(0))

    def _take_worker(self, device: str) -> Worker:
        """A started worker for ``device``: the spare if there is one, and a new spare behind it.

        On CUDA, starting a worker (imports, CUDA context) takes seconds; the spare does it while
        the current worker measures, on the other cores (the worker keeps off the measuring core
        until its first point), so it leaves the sweep's critical path. On the CPU the step needs
        every core, so workers start when they are needed.
        """
        worker = self._spare if self._spare is not None and self._spare.device == device else None
        if worker is None or not worker.process.is_alive():
            if self._spare is not None:
                self._spare.kill()
            worker = Worker(device, self._worker_cpu(device), self.options.threads)
        self._spare = Worker(device, self._worker_cpu(device), self.options.threads) if device == "cuda" else None
        return worker

    def _retire_worker(self) -> None:
        if self._worker is not None:
            self._worker.close()
        self._worker, self._worker_group = None, None

    def _row(self, point: PointSpec, record: dict, wall_s: float) -> dict:
        spec = resolve_spec(point.model)
        profile = get_profile(point.profile)
        row = point.as_dict()
        row.update(
            family=spec.family,
            **plugin_columns(spec),
            device_name=self.device_name,
            num_items=profile.num_items,
            item_feature_dim=profile.item_feature_dim,
            point_wall_s=wall_s,
            finished_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )
        row.update({k: v for k, v in record.items() if k != "traceback"})
        return row
