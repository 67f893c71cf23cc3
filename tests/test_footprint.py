"""The tensor-footprint probe: what it counts, that it leaves the step's arithmetic alone, and that
a step failing under it leaves nothing alive."""
import gc
import weakref

import pytest
import torch

from profiler.trackers.footprint import SavedTensorsCounter, train_step_footprint


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    # ReLU saves its own output for backward: the case that can tie a tensor to its own node.
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def test_a_step_that_fails_before_backward_leaves_no_saved_tensor_alive():
    model = small_model()
    optimizer = torch.optim.Adam(model.parameters())
    batch = {"x": torch.randn(4, 8)}
    saved = []

    def failing_step():
        hidden = model[1](model[0](batch["x"]))
        saved.append(weakref.ref(hidden))
        raise torch.OutOfMemoryError("out of memory in the forward")  # as a long sequence's step does

    with pytest.raises(torch.OutOfMemoryError):
        train_step_footprint(model, optimizer, batch, failing_step)
    gc.collect()
    # Alive, it would be counted by the next point measured in the same process.
    assert saved[0]() is None


def test_a_step_under_the_counter_computes_the_same_gradients_and_counts_what_it_saves():
    x = torch.randn(4, 8)
    plain, counted = small_model(), small_model()
    plain(x).sum().backward()
    with SavedTensorsCounter(exclude=set()) as counter:
        loss = counted(x).sum()
    loss.backward()
    for a, b in zip(plain.parameters(), counted.parameters()):
        assert torch.equal(a.grad, b.grad)
    # The input and the ReLU output (4 x 16 floats) at least; the weights are saved too (not excluded).
    assert counter.saved_bytes >= x.numel() * 4 + 4 * 16 * 4
