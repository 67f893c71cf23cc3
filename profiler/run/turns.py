"""Turns on a shared GPU: lanes that share one GPU never run anything beside a measurement.

Lanes of one GPU (``--lanes-per-gpu``) overlap what times nothing: priming, building a model, its
counted first step (tensor sizes and counts), compiling or capturing its step. Those run in a
shared turn, any number of lanes at once. What is timed (the peak-rate probes, a point's warm-up
and timed steps, its memory snapshot's step) runs in an exclusive turn: no other lane runs
anything on the GPU meanwhile, not even the kernels a compilation runs to try out and run its
graph. A lane waiting for an exclusive turn holds back new shared turns, so measurements are not
starved by a stream of compilations; lanes thus go in waves: they compile together, then measure
one after another.

Priming and the counted step once took exclusive turns too. Every point then needed the GPU alone
between building and compiling: that waited for every compilation in flight and held back every
new one, so the lanes compiled one after another.

The turns are ``flock`` locks on two files named by the GPU's UUID in the host's temporary folder,
so lanes of different sweeps on the same GPU take turns too: ``<uuid>.lock`` (shared or exclusive)
and ``<uuid>.gate`` (held by a lane that waits for, or holds, an exclusive turn).
"""
import contextlib
import fcntl
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator


def turn_lock_path(gpu_uuid: str) -> Path:
    """The lock every process measuring on ``gpu_uuid`` in turns takes (beside it, its gate)."""
    return Path(tempfile.gettempdir()) / f"seqprof-turns-{gpu_uuid}.lock"


@contextlib.contextmanager
def _flocked(path: Path, mode: int) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing lets go of the lock


class GpuTurns:
    """The GPU's turns; ``waited_s`` adds up the waits for exclusive ones (measurements),
    ``shared_waited_s`` those for shared ones (behind a measurement, or a lane waiting for one)."""

    def __init__(self, lock_path: Path):
        self._lock = Path(lock_path)
        self._gate = self._lock.with_suffix(".gate")
        self.waited_s = 0.0
        self.shared_waited_s = 0.0

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """The GPU to this lane alone."""
        started = time.perf_counter()
        with _flocked(self._gate, fcntl.LOCK_EX), _flocked(self._lock, fcntl.LOCK_EX):
            self.waited_s += time.perf_counter() - started
            yield

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """The GPU beside other lanes' shared turns, never beside a measurement."""
        started = time.perf_counter()
        with _flocked(self._gate, fcntl.LOCK_EX):
            pass  # no lane waits for an exclusive turn now
        with _flocked(self._lock, fcntl.LOCK_SH):
            self.shared_waited_s += time.perf_counter() - started
            yield


class NoTurns:
    """A GPU this worker has to itself (or the CPU): no turn to wait for."""

    waited_s = 0.0
    shared_waited_s = 0.0

    def turn(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def shared(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


NO_TURNS = NoTurns()
