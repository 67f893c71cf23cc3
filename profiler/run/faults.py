"""Faults on purpose, for the tests that check a sweep survives them.

With ``SEQPROF_INJECT_FAULT="<point label>=<fault>"`` in a worker's environment, the worker measures
through ``with_injected_faults``, which fails at that one point: oom, error, exit, segfault or hang;
``oom-shared`` runs out of memory only in a worker whose GPU other lanes share (as a point near the
card's memory does beside other lanes' models) and measures where it has the GPU alone.
With ``"worker start=<fault>"`` every worker fails so while it starts, before it is ready. Without
the variable the worker measures directly and nothing here runs. ``exit-task`` is a fault of the
process that drives the worker instead (a Ray task), which exits as that point starts.
"""
import functools
import os
import signal

import torch

FAULT_ENV = "SEQPROF_INJECT_FAULT"
START = "worker start"  # the label of a fault in a worker's start rather than at a point
TASK_FAULTS = ("exit-task",)
SHARED_OOM = "oom-shared"


def injected_fault(label: str) -> str | None:
    """The fault ``SEQPROF_INJECT_FAULT`` asks for at the point labelled ``label``, if any."""
    target, _, fault = os.environ.get(FAULT_ENV, "").rpartition("=")
    return fault if target == label else None


def inject_fault(label: str, fault: str) -> None:
    if fault == "oom":
        raise torch.OutOfMemoryError("injected out-of-memory")
    if fault == "error":
        raise RuntimeError("injected failure")
    if fault == "exit":
        os._exit(3)
    if fault == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if fault == "hang":
        signal.pause()
    raise ValueError(f"unknown fault {fault!r} for {label!r} in {FAULT_ENV}")


def with_injected_faults(measure, share_gpu: bool = False):
    """``measure`` that first fails as ``SEQPROF_INJECT_FAULT`` asks, at the point it names;
    ``share_gpu``: the worker's GPU is shared by other lanes."""

    @functools.wraps(measure)
    def measure_with_faults(point, *args, **kwargs):
        fault = injected_fault(point.label)
        if fault == SHARED_OOM:
            fault = "oom" if share_gpu else None
        if fault is not None and fault not in TASK_FAULTS:
            inject_fault(point.label, fault)
        return measure(point, *args, **kwargs)

    return measure_with_faults


def inject_start_fault() -> None:
    """Fails as ``SEQPROF_INJECT_FAULT`` asks if it names the worker's start."""
    fault = injected_fault(START)
    if fault is not None:
        inject_fault(START, fault)
