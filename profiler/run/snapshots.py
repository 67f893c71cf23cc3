"""Memory snapshots: one extra step of a point recorded by the CUDA caching allocator.

With ``seqprof sweep --memory-snapshot DIR`` every CUDA point, after its timed steps and after its
peaks are read, runs its step once more with the allocator's history recorded and dumps it as a
pickle that PyTorch's memory viewer (https://pytorch.org/memory_viz) opens: every allocation and
free of that step, with the Python stack that made it, and the segments the allocator holds.
"""
import hashlib
import os
import re
import time
from pathlib import Path
from typing import Callable

import torch

from profiler.results.schema import PointSpec, model_label

# Allocation events kept; a training step of the largest models makes a few tens of thousands.
MAX_ENTRIES = 100_000
SUFFIX = ".pickle"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def snapshot_name(point: PointSpec) -> str:
    """The file of ``point``'s snapshot, named from its knobs in characters safe on any file system:
    'sasrec-sdpa-ml-1m-train-L200-B128-float32-eager.pickle'. A seed other than 0 is added; a name
    whose knobs had to be rewritten (a plug-in's path) or that leaves one out (a device other than
    CUDA) ends with a hash of the point's key, so no two points share a file."""
    parts = [model_label(point.model), point.attention, point.profile, point.mode, f"L{point.seq_len}",
             f"B{point.batch_size}", point.dtype, point.execution]
    if point.seed != 0:
        parts.append(f"seed{point.seed}")
    safe = [_UNSAFE.sub("_", part) for part in parts]
    name = "-".join(safe)
    if safe != parts or point.model != model_label(point.model) or point.device != "cuda":
        name += "-" + hashlib.sha1(repr(point.key).encode()).hexdigest()[:10]
    return name + SUFFIX


def prepare_folder(folder: Path) -> Path:
    """``folder``, created if missing and checked writable, as an absolute path; a ValueError of one
    line otherwise (before anything is measured)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create the memory snapshot folder {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write memory snapshots to {folder}: permission denied")
    return folder.resolve()


def record_snapshot(step: Callable[[], None], path: Path, max_entries: int = MAX_ENTRIES) -> float:
    """Runs ``step`` once with the allocator's history recorded, dumps the snapshot at ``path`` and
    stops recording; returns the seconds all of it took (on CUDA only)."""
    torch.cuda.synchronize()
    started = time.perf_counter()
    torch.cuda.memory._record_memory_history(max_entries=max_entries)
    try:
        step()
        torch.cuda.synchronize()
        torch.cuda.memory._dump_snapshot(str(path))
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    return time.perf_counter() - started
