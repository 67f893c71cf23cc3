"""Turns on a shared GPU: lanes that share one GPU measure one at a time.

Lanes of one GPU (``--lanes-per-gpu``) overlap what barely runs on it: a worker's start, building a
model, compiling or capturing its step. What runs on it and is measured, or would disturb what
another lane measures (the peak-rate probes, priming, a point's counted first step, its warm-up
and timed steps, its memory snapshot), happens in the GPU's turn: a file lock named by the GPU's
UUID, so lanes of different sweeps on the same GPU take turns too. Compilation's own first run of
the compiled graph stays outside the turn: one step of another point, once per compiled point.
"""
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Iterator

from filelock import FileLock


def turn_lock_path(gpu_uuid: str) -> Path:
    """The lock every process measuring on ``gpu_uuid`` in turns takes (the temporary folder is
    the host's, so two sweeps share it)."""
    return Path(tempfile.gettempdir()) / f"seqprof-turns-{gpu_uuid}.lock"


class GpuTurns:
    """The GPU's turn, taken around each measured phase; ``waited_s`` adds up the waits."""

    def __init__(self, lock_path: Path):
        self._lock = FileLock(str(lock_path))
        self.waited_s = 0.0

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        started = time.perf_counter()
        with self._lock:
            self.waited_s += time.perf_counter() - started
            yield


class NoTurns:
    """A GPU this worker has to itself (or the CPU): no turn to wait for."""

    waited_s = 0.0

    def turn(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


NO_TURNS = NoTurns()
