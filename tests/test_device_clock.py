"""The device clock the GPU benchmarks time with (profiler/device_clock.py).

The GPU tests need CUDA (CI has none); run them on a GPU machine with `pytest tests/test_device_clock.py`.
"""
import statistics
import time

import pytest
import torch

from profiler.trackers.device_clock import MAX_SPIN_MS, DeviceClock

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; CI has none")


def test_a_clock_without_a_spin_is_refused():
    with pytest.raises(ValueError, match="spin_ms must be > 0"):
        DeviceClock(0, cycles_per_ms=1e6)


def test_the_spin_is_capped():
    assert DeviceClock(10 * MAX_SPIN_MS, cycles_per_ms=1e6).spin_ms == MAX_SPIN_MS


def read_rounds(clock: DeviceClock, step, rounds: int, hold: bool = True) -> list[float]:
    """Rounds as pytest-benchmark's pedantic runs them: setup, timer, step, timer."""
    seconds = []
    for _ in range(rounds):
        if hold:
            clock.hold_queue()
        start = clock()
        step()
        seconds.append(clock() - start)
    return seconds


def host_wall_s(step, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        started = time.perf_counter()
        step()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - started)
    return out


@pytest.fixture
def launch_bound_step():
    x = torch.zeros(1, device="cuda")

    def step():
        for _ in range(500):
            x.add_(1)  # each launch costs the host more than the GPU spends on it

    step()
    return step


@pytest.mark.gpu
@needs_cuda
def test_a_gpu_bound_step_reads_as_its_host_wall_time(cycles_per_ms):
    a = torch.randn(8192, 8192, device="cuda")

    def step():
        for _ in range(4):
            a @ a  # about 10 ms of device work, launched in microseconds

    step()
    clock = DeviceClock(1.0, cycles_per_ms)
    device_s = statistics.median(read_rounds(clock, step, 7))
    assert device_s == pytest.approx(statistics.median(host_wall_s(step, 7)), rel=0.05)
    assert clock.host_paced_rounds == 0


@pytest.mark.gpu
@needs_cuda
def test_a_launch_bound_step_reads_its_device_time_not_the_hosts(cycles_per_ms, launch_bound_step):
    step = launch_bound_step
    wall_s = statistics.median(host_wall_s(step, 5))
    held = DeviceClock(4 * wall_s * 1e3, cycles_per_ms)
    held_s = statistics.median(read_rounds(held, step, 7))
    unheld_s = statistics.median(read_rounds(DeviceClock(1.0, cycles_per_ms), step, 7, hold=False))
    assert held.host_paced_rounds == 0
    # Behind the spin the kernels run back to back; without it the GPU waits on every launch.
    assert held_s < 0.6 * wall_s
    assert unheld_s > 1.5 * held_s


@pytest.mark.gpu
@needs_cuda
def test_a_spin_too_short_for_the_launches_is_noticed_and_doubled(cycles_per_ms, launch_bound_step):
    clock = DeviceClock(0.001, cycles_per_ms)
    read_rounds(clock, launch_bound_step, 1)
    assert clock.host_paced_rounds == 1
    assert clock.spin_ms == pytest.approx(0.002)
