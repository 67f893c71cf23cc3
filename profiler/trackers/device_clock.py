"""A pytest-benchmark timer that reads the GPU's time of a step, with the host's launches kept off it.

A small model's eager step is bound by the host launching its kernels: timed on the host, or with
CUDA events around it, it measures how fast the host launches, which on a shared machine drifts by
tens of percent from one second to the next (the same pure-Python loop took 4 to 22 ms on the H100
machine, the GPU clock steady). Before each timed round, ``hold_queue`` enqueues a GPU spin that
outlasts the host's launching of the step; the step's kernels then wait in the queue and run back
to back, and the events around them read the step's device time, which the host's speed does not
enter. A round in which the GPU reached the step before the host had launched all of it is counted
as host-paced (its time includes waiting for the host), and the spin is doubled for the next round.

Use: ``benchmark.pedantic(step, setup=clock.hold_queue, ...)`` with the fixture's timer set to the
clock. The step must not wait for the GPU itself (no ``.item()``, no synchronize): a step that does
waits out the spin, and its rounds show up as host-paced.
"""
from __future__ import annotations

import torch

MAX_SPIN_MS = 200.0  # a step the host needs longer than this to launch is host-paced whatever we do


class DeviceInstant:
    """A reading of the clock: an event recorded on the current stream. ``later - earlier`` waits
    for ``later`` and returns the device seconds between them."""

    __slots__ = ("clock", "event")

    def __init__(self, clock: DeviceClock):
        self.clock = clock
        self.event = torch.cuda.Event(enable_timing=True)
        self.event.record()

    def __sub__(self, earlier: DeviceInstant) -> float:
        # Asked right after the host has launched the round: if the GPU is already past the start
        # event, it ran (part of) the step as the host launched it, and idled between kernels.
        if earlier.event.query():
            self.clock.note_host_paced()
        self.event.synchronize()
        return earlier.event.elapsed_time(self.event) / 1e3


def spin_cycles_per_ms() -> float:
    """How many cycles ``torch.cuda._sleep`` spins per millisecond on this GPU, measured."""
    cycles = 10_000_000
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(cycles)  # the first launch loads the kernel; time the second
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return cycles / start.elapsed_time(end)


class DeviceClock:
    """Callable as a timer; ``hold_queue`` is the per-round setup that keeps the host ahead."""

    def __init__(self, spin_ms: float, cycles_per_ms: float):
        if spin_ms <= 0:
            raise ValueError(f"spin_ms must be > 0, got {spin_ms}")
        self.spin_ms = min(spin_ms, MAX_SPIN_MS)
        self.cycles_per_ms = cycles_per_ms
        self.rounds = 0
        self.host_paced_rounds = 0

    def __call__(self) -> DeviceInstant:
        return DeviceInstant(self)

    def __str__(self) -> str:  # pytest-benchmark saves the timer's name with each run
        return "profiler.device_clock.DeviceClock"

    def hold_queue(self) -> None:
        self.rounds += 1
        torch.cuda._sleep(int(self.spin_ms * self.cycles_per_ms))

    def note_host_paced(self) -> None:
        self.host_paced_rounds += 1
        self.spin_ms = min(2 * self.spin_ms, MAX_SPIN_MS)
