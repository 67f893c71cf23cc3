"""A sweep over several GPUs of one host: lanes per GPU, the results written by the main thread.

Each lane is a thread that drives its own workers, each worker seeing only the lane's GPU. A model
variant's points of one arithmetic and execution are handed out whole, in plan order, to whichever
lane is free, and a lane measures them in ascending length, so their worker reuse and their series'
OOM skips are those of a sequential sweep. Lanes send their rows to the main thread, which alone
appends them to the store and fires the events.

Several lanes may share one GPU (``--lanes-per-gpu``): they measure in the GPU's turns
(profiler/run/turns.py), one at a time and with nothing else on the GPU, and overlap building and
compilation. They also share its memory: a point near the card's memory may run out of it there
and fit alone, so a point that runs out of memory in such a lane is not the model's OOM yet. Its
row is not written; it and the rest of its unit are measured again after the lanes end, with one
lane per GPU and no other worker on it, and those rows say so (``alone_after_shared_oom``).
"""
import dataclasses
import os
import queue
import threading

from profiler.results.schema import PointSpec
from profiler.results.store import ResultsStore
from profiler.run.runner import Lane, PointStarted, RunnerOptions, SweepEvents, SweepRunner, UnitDeferred, worker_group
from profiler.run.worker import GpuAssignment


def gpu_assignment(index: int, inherited: str | None = None) -> GpuAssignment:
    """GPU ``index`` of this process (its CUDA ordinal) as a worker's only device.

    Where this process itself sees a subset (CUDA_VISIBLE_DEVICES, ``inherited``), the worker gets
    that entry of it (an ordinal, a UUID or a MIG name), so it sees the GPU this process calls ``index``.
    """
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES") if inherited is None else inherited
    entries = [entry.strip() for entry in inherited.split(",")] if inherited else []
    if entries and index >= len(entries):
        raise ValueError(f"GPU {index} is not among the {len(entries)} in CUDA_VISIBLE_DEVICES={inherited}")
    return GpuAssignment(index, entries[index] if entries else str(index))


def split_variants(points: list[PointSpec]) -> list[list[PointSpec]]:
    """The points of each model variant in each arithmetic and execution, in plan order (a
    variant's points need not be adjacent): the units lanes take. A compiled point compiles anew
    whatever worker runs it, so a compiled sweep spreads its compilation over every lane."""
    variants: dict[tuple, list[PointSpec]] = {}
    for point in points:
        variants.setdefault((*worker_group(point), point.dtype, point.execution), []).append(point)
    return list(variants.values())


class _LaneDone:
    pass


class LaneRunner(SweepRunner):
    """Runs a sweep's points on the GPUs ``gpus`` of this host, ``options.lanes_per_gpu`` lanes each.

    On CUDA a lane's workers see only its GPU. On the CPU the lanes share the cores and a row's
    ``gpu_index`` names its lane: the way tests check the scheduling without GPUs.
    """

    def __init__(self, store: ResultsStore, options: RunnerOptions, gpus: list[GpuAssignment],
                 events: SweepEvents | None = None, device_name: str = ""):
        super().__init__(store, options, events, device_name)
        self.gpus = [gpu for gpu in gpus for _ in range(options.lanes_per_gpu)]

    def run(self, points: list[PointSpec]) -> list[dict]:
        """Measures ``points`` over the lanes; returns the rows written, in the order they finished."""
        rows: list[dict] = []
        sharing = self.options.lanes_per_gpu > 1
        lanes = [Lane(self.options, self.device_name, gpu, slot, len(self.gpus), defer_oom=sharing)
                 for slot, gpu in enumerate(self.gpus)]
        deferred = self._run_lanes(lanes, points, len(points), rows)
        if deferred and not self.stop_requested:
            # The other lanes' workers have ended: each GPU's memory is the one lane's alone.
            gpus = list({gpu.index: gpu for gpu in self.gpus}.values())
            alone = dataclasses.replace(self.options, lanes_per_gpu=1)
            lanes = [Lane(alone, self.device_name, gpu, slot, len(gpus), marks={"alone_after_shared_oom": True})
                     for slot, gpu in enumerate(gpus)]
            self._run_lanes(lanes, deferred, len(points), rows)
        return rows

    def _run_lanes(self, lanes: list[Lane], points: list[PointSpec], total: int, rows: list[dict]) -> list[PointSpec]:
        """Measures ``points`` over ``lanes``, appending the rows written to ``rows``; returns the
        points the lanes deferred (``UnitDeferred``), in the order they were deferred."""
        oom_at = self._stored_oom_lengths()
        work: queue.SimpleQueue = queue.SimpleQueue()
        for variant in split_variants(points):
            work.put(variant)
        events: queue.SimpleQueue = queue.SimpleQueue()

        def drive(lane: Lane) -> None:
            # A lane's workers are started and closed by its own thread: Linux's parent-death signal,
            # which ends a worker whose runner died, follows the thread that started the process.
            try:
                while not self.stop_requested:
                    try:
                        variant = work.get_nowait()
                    except queue.Empty:
                        break
                    for event in lane.measure(variant, oom_at, lambda: self.stop_requested):
                        events.put(event)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
                events.put(exc)
            finally:
                lane.close()
                events.put(_LaneDone())

        threads = [threading.Thread(target=drive, args=(lane,), name=f"lane-gpu{lane.gpu.index}", daemon=True)
                   for lane in lanes]
        for thread in threads:
            thread.start()
        deferred: list[PointSpec] = []
        started, running, failure = len(rows), len(threads), None
        try:
            while running:
                try:
                    # A timeout, so that Ctrl-C's handler runs promptly in this thread.
                    event = events.get(timeout=0.2)
                except queue.Empty:
                    continue
                if isinstance(event, _LaneDone):
                    running -= 1
                elif isinstance(event, BaseException):
                    self.stop_requested, failure = True, failure or event
                elif isinstance(event, PointStarted):
                    self.events.on_start(started, total, event.point)
                    started += 1
                elif isinstance(event, UnitDeferred):
                    self.events.on_deferred(event.points[0])
                    deferred.extend(event.points)
                else:
                    self._keep(event, rows, total)
        except BaseException:
            self.stop_requested = True
            for lane in lanes:
                lane.abort()
            raise
        finally:
            for thread in threads:
                thread.join()
        if failure is not None:
            raise failure
        return deferred
