"""Shared fixtures: one CPU thread for the test process, the GPU spin rate, and the check that two
attention backends agree. Shared builders are in helpers.py."""
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


def _assert_backends_agree(naive, sdpa, batch) -> None:
    """``sdpa`` (with ``naive``'s weights, both in eval mode) gives the same scores and, from the
    loss, the same gradient for every trainable parameter."""
    torch.testing.assert_close(sdpa.predict(batch), naive.predict(batch), atol=1e-5, rtol=1e-5)
    naive(batch).backward()
    sdpa(batch).backward()
    for (name, p), q in zip(naive.named_parameters(), sdpa.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.fixture
def assert_backends_agree():
    """The per-model tests' check that the naive and sdpa attention backends compute one function."""
    return _assert_backends_agree
