"""Faults on purpose, for the tests that check a sweep survives them.

With ``SEQPROF_INJECT_FAULT="<point label>=<fault>"`` in a worker's environment, the worker measures
through ``with_injected_faults``, which fails at that one point: oom, error, exit, segfault or hang.
With ``"worker start=<fault>"`` every worker fails so while it starts, before it is ready. Without
the variable the worker measures directly and nothing here runs.
"""
import functools
import os
import signal

import torch

FAULT_ENV = "SEQPROF_INJECT_FAULT"
START = "worker start"  # the label of a fault in a worker's start rather than at a point


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


def with_injected_faults(measure):
    """``measure`` that first fails as ``SEQPROF_INJECT_FAULT`` asks, at the point it names."""
    label, _, fault = os.environ.get(FAULT_ENV, "").rpartition("=")

    @functools.wraps(measure)
    def measure_with_faults(point, *args, **kwargs):
        if point.label == label:
            inject_fault(label, fault)
        return measure(point, *args, **kwargs)

    return measure_with_faults


def inject_start_fault() -> None:
    """Fails as ``SEQPROF_INJECT_FAULT`` asks if it names the worker's start."""
    label, _, fault = os.environ.get(FAULT_ENV, "").rpartition("=")
    if label == START:
        inject_fault(label, fault)
