"""A sweep on a Ray cluster: one task per model variant, its rows streamed back to the one writer.

A task asks Ray for one GPU (on the CPU, for the cores a worker uses) and runs a ``Lane`` on the
node it lands on: the variant's points in ascending length, each measured in a worker subprocess as
in a local sweep (its own CUDA context, OOM and crashes recorded, the longer lengths of a series
skipped after an OOM). The task yields each point as it starts and ends (a streaming generator);
the runner in the main process consumes the streams with ``ray.wait`` and appends every row.

A task whose Ray worker or node dies makes its point in flight ``error`` with the cause; the rest of
the variant goes on in a new task. Ctrl-C stops submitting, cancels the tasks that have no point in
flight and lets each other task finish its point (a second Ctrl-C cancels those too); ``--resume``
measures what is missing, as for a local sweep.

Ray is an optional dependency (``pip install -e ".[ray]"``); nothing imports this module unless a
sweep asks for ``--backend ray``.
"""
import os
import socket
from dataclasses import dataclass

import ray

from profiler.results.schema import PointSpec, SeriesKey
from profiler.results.store import ResultsStore
from profiler.run.faults import FAULT_ENV, injected_fault
from profiler.run.lanes import split_variants
from profiler.run.runner import (
    Lane,
    PointFinished,
    PointStarted,
    RunnerOptions,
    SweepEvents,
    SweepRunner,
    point_row,
)
from profiler.run.worker import GpuAssignment
from profiler.trackers.environment import cpu_name

# How long the head node in RAY_ADDRESS may take to accept a connection before the sweep gives up.
HEAD_CONNECT_TIMEOUT_S = 10.0


def check_reachable(address: str, timeout_s: float = HEAD_CONNECT_TIMEOUT_S) -> None:
    """A ValueError of one line when nothing listens at ``address`` (host:port, or ray://host:port):
    Ray itself would keep retrying for minutes, printing warnings. 'auto' and 'local' are Ray's to
    resolve and are not checked."""
    host, separator, port = address.removeprefix("ray://").rpartition(":")
    if not separator or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ValueError(f"cannot reach the Ray cluster at RAY_ADDRESS={address}: "
                         f"{exc.strerror or type(exc).__name__}") from None


def connect() -> None:
    """Joins the cluster in RAY_ADDRESS, else one already running on this host, else starts one here."""
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        if address is not None:
            check_reachable(address)
        # Our workers print nothing; Ray's own messages about them would break up the progress display.
        ray.init(address=address, log_to_driver=False)


def cluster_device(requested: str) -> str:
    """'auto' -> 'cuda' when the cluster has GPUs, else 'cpu'; 'cuda' on a cluster without any is an error.

    The cluster's GPUs count, not this host's: the host that starts the sweep may have none.
    """
    if requested not in ("auto", "cuda", "cpu"):
        raise ValueError(f"Unknown device {requested!r}; choose from ['auto', 'cuda', 'cpu']")
    connect()  # here, where a cluster that cannot be reached is a one-line error of the command
    if requested == "cpu":
        return "cpu"
    gpus = ray.cluster_resources().get("GPU", 0)
    if requested == "cuda" and not gpus:
        raise ValueError("--device cuda was asked for, but the Ray cluster has no GPU")
    return "cuda" if gpus else "cpu"


def cluster_facts() -> dict:
    """What the sweep's metadata records of the cluster."""
    connect()
    resources = ray.cluster_resources()
    return {
        "ray": ray.__version__,
        "nodes": sum(1 for node in ray.nodes() if node.get("Alive")),
        "gpus": resources.get("GPU", 0),
        "cpus": resources.get("CPU", 0),
    }


def measure_variant(points: list[PointSpec], oom_at: dict[SeriesKey, int], options: RunnerOptions, device_name: str):
    """The task: measures ``points`` (one model variant, ascending length) on this node through a
    lane, and yields its PointStarted and PointFinished events as they happen."""
    gpu = None
    if points[0].device == "cuda":
        # Ray has set CUDA_VISIBLE_DEVICES to the GPU it gave the task; the worker inherits it.
        gpu = GpuAssignment(int(ray.get_gpu_ids()[0]))
    else:
        device_name = cpu_name()
    slot = gpu.index if gpu is not None else 0  # tasks on one node measure on different cores
    lane = Lane(options, device_name, gpu, slot=slot, slots=slot + 1, spare=False)
    try:
        for event in lane.measure(points, oom_at):
            yield event
            if isinstance(event, PointStarted) and injected_fault(event.point.label) == "exit-task":
                os._exit(3)
    finally:
        lane.close()


def failure_cause(exc: Exception) -> str:
    """One line for a task that failed: what Ray says happened to it."""
    cause = getattr(exc, "cause", None)  # a Python exception raised inside the task
    if isinstance(cause, BaseException):
        message = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        return f"Ray task failed: {type(cause).__name__}: {message}".rstrip(": ")
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"Ray task failed ({type(exc).__name__}): {message}".rstrip(": ")


@dataclass
class _Task:
    """A submitted task and how far its stream got."""

    points: list[PointSpec]
    finished: int = 0  # rows received: the point in flight, if any, is points[finished]
    in_flight: bool = False
    stop_after_point: bool = False


class RayRunner(SweepRunner):
    """Runs a sweep's points as Ray tasks, one per model variant; this process writes every row."""

    def __init__(self, store: ResultsStore, options: RunnerOptions, events: SweepEvents | None = None,
                 device_name: str = ""):
        super().__init__(store, options, events, device_name)
        self.cancel_now = False

    def request_stop(self) -> None:
        """The first request lets the points in flight finish; a second cancels them."""
        self.cancel_now = self.stop_requested
        self.stop_requested = True

    def run(self, points: list[PointSpec]) -> list[dict]:
        connect()
        oom_at = self._stored_oom_lengths()
        task = ray.remote(measure_variant).options(
            num_returns="streaming",
            max_retries=0,  # a failure is recorded and the rest resubmitted; a retry would measure twice
            **self._resources(points),
            runtime_env={"env_vars": {FAULT_ENV: os.environ[FAULT_ENV]}} if os.environ.get(FAULT_ENV) else None,
        )
        tasks: dict = {}

        def submit(variant: list[PointSpec]) -> None:
            series = {point.series for point in variant}
            known = {key: length for key, length in oom_at.items() if key in series}
            tasks[task.remote(variant, known, self.options, self.device_name)] = _Task(variant)

        for variant in split_variants(points):
            submit(variant)
        rows: list[dict] = []
        started = 0
        try:
            while tasks:
                if self.stop_requested:
                    self._wind_down(tasks)
                    if not tasks:
                        break
                ready, _ = ray.wait(list(tasks), num_returns=1, timeout=0.2)
                for stream in ready:
                    state = tasks[stream]
                    try:
                        event = ray.get(next(stream))
                    except StopIteration:
                        del tasks[stream]
                        continue
                    except ray.exceptions.RayError as exc:
                        del tasks[stream]
                        rest = self._record_failure(state, exc, rows, len(points))
                        if rest and not self.stop_requested:
                            submit(rest)
                        continue
                    if isinstance(event, PointStarted):
                        state.in_flight = True
                        self.events.on_start(started, len(points), event.point)
                        started += 1
                        continue
                    state.finished += 1
                    state.in_flight = False
                    if event.row["status"] == "oom":
                        point = event.point
                        oom_at[point.series] = min(point.seq_len, oom_at.get(point.series, point.seq_len))
                    self._keep(event, rows, len(points))
                    if state.stop_after_point:
                        ray.cancel(stream, force=True)
                        del tasks[stream]
        finally:
            for stream in tasks:
                ray.cancel(stream, force=True)
        return rows

    def _resources(self, points: list[PointSpec]) -> dict:
        """A GPU and a core for a CUDA task; on the CPU, the cores its worker's step uses."""
        if points and points[0].device == "cuda":
            return {"num_gpus": 1, "num_cpus": 1}
        return {"num_cpus": self.options.threads}

    def _wind_down(self, tasks: dict) -> None:
        """After Ctrl-C: cancel every task with no point in flight (or all, after a second Ctrl-C);
        the others are cancelled once their point's row has arrived."""
        for stream, state in list(tasks.items()):
            if self.cancel_now or not state.in_flight:
                ray.cancel(stream, force=True)
                del tasks[stream]
            else:
                state.stop_after_point = True

    def _record_failure(self, state: _Task, exc: Exception, rows: list[dict], total: int) -> list[PointSpec]:
        """Records the task's point in flight as an error; returns the points it did not reach."""
        if state.finished >= len(state.points):
            return []
        point = state.points[state.finished]
        row = point_row(point, {"status": "error", "error": failure_cause(exc)}, 0.0, self.device_name)
        self._keep(PointFinished(point, row), rows, total)
        return state.points[state.finished + 1:]
