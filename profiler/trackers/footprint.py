"""A device-independent memory figure: the bytes of the tensors a step needs, counted by storage.

The same model gives the same figure on a GPU and on a CPU, so CPU runs and CI see the scaling the
GPU shows. For a training step: parameters (frozen ones too), gradients, optimizer state, inputs,
and the tensors autograd saves for backward (unique storages, excluding parameters and inputs,
which are already counted). For inference: parameters, inputs, and the peak of intermediate tensors
alive at once, tracked per storage through a dispatch mode.
"""
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

MIB = 2**20


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _unique_bytes(tensors) -> tuple[int, set[int]]:
    seen: dict[int, int] = {}
    for t in tensors:
        if t is not None and t.device.type != "meta":
            seen.setdefault(_storage_key(t), t.untyped_storage().nbytes())
    return sum(seen.values()), set(seen)


@dataclass(frozen=True)
class TensorFootprint:
    params_mib: float
    grads_mib: float
    optimizer_state_mib: float
    inputs_mib: float
    activations_mib: float

    @property
    def total_mib(self) -> float:
        return self.params_mib + self.grads_mib + self.optimizer_state_mib + self.inputs_mib + self.activations_mib


class SavedTensorsCounter:
    """Context manager: unique storages autograd saves for backward, minus ``exclude`` storages."""

    def __init__(self, exclude: set[int]):
        self._exclude = exclude
        self._bytes: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in self._exclude:
            self._bytes.setdefault(key, t.untyped_storage().nbytes())
        # Saved as a detached alias (the same storage, no autograd history). A node that saves its
        # own output would otherwise hold that output, which holds the node: a cycle through C++
        # that Python's collector cannot see. backward() breaks it by freeing what it used; a step
        # that fails before backward (an OOM in the forward) would leave every saved tensor alive.
        return t.detach()

    @property
    def saved_bytes(self) -> int:
        return sum(self._bytes.values())

    def __enter__(self) -> "SavedTensorsCounter":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


class LiveTensorTracker(TorchDispatchMode):
    """Peak bytes of storages created inside the mode and still referenced by a live tensor.

    CPython frees a tensor as soon as its last reference goes, and the finalizer runs then, so the
    running total follows the program's real lifetimes. Views share their base's storage and are
    counted once.
    """

    def __init__(self):
        super().__init__()
        self._refs: dict[int, list[int]] = {}  # storage key -> [bytes, live tensors]
        self.current_bytes = 0
        self.peak_bytes = 0

    def _release(self, key: int) -> None:
        entry = self._refs[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.current_bytes -= entry[0]
            del self._refs[key]

    def _track(self, t: torch.Tensor) -> None:
        key = _storage_key(t)
        if key in self._refs:
            self._refs[key][1] += 1
        else:
            nbytes = t.untyped_storage().nbytes()
            self._refs[key] = [nbytes, 1]
            self.current_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        weakref.finalize(t, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


def train_step_footprint(model, optimizer, batch: dict, step_fn) -> TensorFootprint:
    """Runs one full training step under the saved-tensor counter and returns its footprint."""
    params = list(model.parameters())
    inputs = list(batch.values())
    params_bytes, param_keys = _unique_bytes(params)
    inputs_bytes, input_keys = _unique_bytes(inputs)
    with SavedTensorsCounter(exclude=param_keys | input_keys) as counter:
        step_fn()
    grads_bytes, _ = _unique_bytes(p.grad for p in params)
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    state_bytes, _ = _unique_bytes(state)
    return TensorFootprint(
        params_mib=params_bytes / MIB,
        grads_mib=grads_bytes / MIB,
        optimizer_state_mib=state_bytes / MIB,
        inputs_mib=inputs_bytes / MIB,
        activations_mib=counter.saved_bytes / MIB,
    )


def inference_footprint(model, batch: dict, step_fn) -> TensorFootprint:
    """Runs one inference step under the live-tensor tracker and returns its footprint."""
    params_bytes, _ = _unique_bytes(model.parameters())
    inputs_bytes, _ = _unique_bytes(batch.values())
    tracker = LiveTensorTracker()
    with tracker:
        step_fn()
    return TensorFootprint(
        params_mib=params_bytes / MIB,
        grads_mib=0.0,
        optimizer_state_mib=0.0,
        inputs_mib=inputs_bytes / MIB,
        activations_mib=tracker.peak_bytes / MIB,
    )
