"""Shared fixtures: one CPU thread for the test process and the GPU spin rate. Shared builders are
in helpers.py."""
import pytest
import torch

from profiler.trackers.device_clock import spin_cycles_per_ms


@pytest.fixture(autouse=True)
def _few_threads():
    # Two cores: tests that spawn workers run faster when the parent does not compete for both.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cycles_per_ms():
    """The GPU's spin rate for profiler.device_clock, measured once (needs CUDA)."""
    return spin_cycles_per_ms()
