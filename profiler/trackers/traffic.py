"""An estimate of the memory traffic of a step: the bytes of every aten op's tensor inputs and outputs.

Each op is charged for reading its inputs and writing its outputs, as if nothing stayed in a cache
between ops and no kernel fused two of them: an upper bound on the DRAM traffic of an eager step
(caches and fusion only lower it). It is counted in the same probe step as the FLOPs, so a row's
FLOPs per byte compare the same ops.
"""
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten

# Ops whose outputs alias their inputs (a new shape, strides or offset over the same storage) or
# only read metadata: no kernel runs, no byte moves. Most views say so in their schema (an alias
# annotation without a write, see ``_is_view``); these are listed because some do not
# (``_unsafe_view``) and to name the common ones.
METADATA_ONLY = frozenset({
    aten.view, aten._unsafe_view, aten._reshape_alias, aten.reshape, aten.expand, aten.transpose, aten.t,
    aten.permute, aten.slice, aten.select, aten.as_strided, aten.detach, aten.alias, aten.unsqueeze, aten.squeeze,
    aten.split, aten.unbind, aten.view_as_real, aten.view_as_complex, aten.lift_fresh,
    aten.size, aten.sym_size, aten.stride, aten.sym_stride, aten.numel, aten.sym_numel, aten.dim,
    aten.is_contiguous, aten.storage_offset, aten.sym_storage_offset,
})
# Ops that allocate without writing: the memory is touched by whatever writes it next.
ALLOCATION_ONLY = frozenset({aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty, aten.new_empty_strided})


def _is_view(func) -> bool:
    """Every output aliases an input and none is written: a view (in-place ops write theirs)."""
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def _tensor_bytes(values) -> int:
    """Bytes of the distinct tensors in ``values`` (one tensor passed twice is read once), by their
    elements: an expanded tensor counts every element it shows, in keeping with an upper bound."""
    tensors = {id(t): t for t in tree_flatten(values)[0] if isinstance(t, torch.Tensor)}
    return sum(t.numel() * t.element_size() for t in tensors.values())


class TrafficCounter(TorchDispatchMode):
    """Context manager: ``moved_bytes``, the bytes of the tensor inputs and outputs of every op run
    inside it, views and allocations excepted. Enter it inside a FlopCounterMode so that it sees
    the ops as they run, before the FLOP counter decomposes any for its own count."""

    def __init__(self):
        super().__init__()
        self.moved_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in METADATA_ONLY or packet in ALLOCATION_ONLY or _is_view(func):
            return out
        # An ``out=`` tensor is written, not read: it is counted among the outputs only.
        inputs = (args, {k: v for k, v in kwargs.items() if k != "out"})
        self.moved_bytes += _tensor_bytes(inputs) + _tensor_bytes(out)
        return out
