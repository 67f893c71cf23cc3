"""Checks the per-model tests share."""
import pytest
import torch


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
    return _assert_backends_agree
