"""What a CUDA out-of-memory error says about the card: could the step have fitted with nothing else on it?

A sweep's spare workers wait on the GPU with a CUDA context each (about 0.8 GiB), so a point can run
out of memory that would fit on the card alone. PyTorch's caching allocator names, in the error it
raises, the allocation that failed, the card's capacity and what this process held then: "Tried to
allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 3.2 GiB is free. ...
Including non-PyTorch memory, this process has 76.00 GiB memory in use." An allocation larger than
the capacity less what this process held would have failed with every other process gone: that out
of memory is the model's. A smaller one may have fitted, and the runner measures the point again
with one worker on the GPU, the spares ended (profiler/run/runner.py).
"""
import re

from profiler.units import MIB, MIB_PER_GIB

# The allocator writes sizes with two decimals: a figure is off by at most half a unit of its last
# digit, 5 MiB for GiB figures; a request within this of the room left is taken to have fitted.
ROUNDING_MIB = 16.0
_UNIT_MIB = {"bytes": 1 / MIB, "KiB": 1 / MIB_PER_GIB, "MiB": 1.0, "GiB": MIB_PER_GIB, "TiB": MIB_PER_GIB**2}
_SIZE = r"([0-9.]+) (bytes|KiB|MiB|GiB|TiB)"
_REQUEST = re.compile(rf"Tried to allocate {_SIZE}")
_CAPACITY = re.compile(rf"total capacity of {_SIZE}")
_HELD = re.compile(rf"this process has {_SIZE} memory in use")


def _mib(match: re.Match) -> float:
    return float(match.group(1)) * _UNIT_MIB[match.group(2)]


def oom_columns(message: str) -> dict:
    """``oom_request_mib`` (the allocation that failed) and ``oom_room_alone_mib`` (the card's capacity
    less what this process held: the most that allocation could have had with no other process on
    the card), from a CUDA out-of-memory error's message; nothing where it does not say so."""
    request, capacity, held = (pattern.search(message) for pattern in (_REQUEST, _CAPACITY, _HELD))
    if request is None or capacity is None or held is None:
        return {}
    return {"oom_request_mib": _mib(request), "oom_room_alone_mib": _mib(capacity) - _mib(held)}


def may_fit_alone(row: dict) -> bool:
    """Whether the out-of-memory ``row`` might not have happened with no other process on its card:
    True unless its failed allocation is larger than all the room it would then have had (and where
    the error did not say, as an injected fault does not)."""
    request, room = row.get("oom_request_mib"), row.get("oom_room_alone_mib")
    if request is None or room is None:
        return True
    return request <= room + ROUNDING_MIB
