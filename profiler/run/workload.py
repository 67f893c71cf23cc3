"""What one point runs: a model variant built on the device, its batch, and its step.

The step is the unit every measurement times: train = zero_grad + forward (the paper's loss) +
backward + optimizer step; inference = predict under ``torch.inference_mode()``. The sweep's worker
and the benchmark suite both build their workloads here, so they measure the same thing.
"""
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models.base import count_parameters
from models.profiles import get_profile
from profiler.results.schema import NO_ATTENTION
from profiler.run.plugins import resolve_spec
from profiler.run.precision import cast_for, forward_context
from profiler.trackers.footprint import TensorFootprint, inference_footprint, train_step_footprint
from profiler.trackers.traffic import TrafficCounter

EXECUTIONS = ("eager", "compile", "cuda-graphs")


@dataclass
class Workload:
    model: nn.Module
    batch: dict[str, torch.Tensor]
    optimizer: torch.optim.Optimizer | None  # None for inference
    step: Callable[[], None]  # what is timed: eager, compiled or a graph replay
    mode: str
    eager_step: Callable[[], None] | None = None  # the same step run eagerly, for the probes
    prepare: Callable[[], None] = lambda: None  # compiles or captures ``step``; never inside a timed step


def build_workload(
    model_name: str,
    attention: str | None,
    mode: str,
    seq_len: int,
    batch_size: int,
    profile: str,
    device: str,
    seed: int = 0,
    dtype: str = "float32",
    execution: str = "eager",
) -> Workload:
    """``attention`` is a backend name, or None / "none" for models without attention layers;
    ``dtype`` one of profiler.run.precision.DTYPES; ``execution`` one of EXECUTIONS."""
    if execution not in EXECUTIONS:
        raise ValueError(f"Unknown execution {execution!r}; choose from {list(EXECUTIONS)}")
    if execution == "cuda-graphs" and device != "cuda":
        raise ValueError("CUDA graphs need a CUDA device")
    spec = resolve_spec(model_name)
    backend = None if attention in (None, NO_ATTENTION) else attention
    config = spec.build_config(get_profile(profile), seq_len, backend)
    torch.manual_seed(seed)
    # Built in place on the device: the Beauty-profile feature tables (57k x 6.5k floats) would
    # otherwise be filled on the host and copied, seconds per point that measure nothing.
    with torch.device(device):
        model = spec.build(config)
    generator = torch.Generator(device=device).manual_seed(seed)
    batch = cast_for(dtype, model, spec.make_batch(config, batch_size, seq_len, device, generator))
    if mode not in ("train", "infer"):
        raise ValueError(f"Unknown mode {mode!r}; choose from ['train', 'infer']")
    optimizer = None
    if mode == "train":
        model.train()
        optimizer = training_optimizer(model, execution)
    else:
        model.eval()

    def step_of(forward: Callable, predict: Callable, grads_in_place: bool = False) -> Callable[[], None]:
        return step_function(mode, forward, predict, batch, optimizer, dtype, device, grads_in_place)

    if execution == "cuda-graphs":
        # The probes and the warm-up run the step that is captured, so the gradients they allocate
        # are the ones the graph goes on zeroing and filling.
        graph_step = step_of(model, model.predict, grads_in_place=True)
        workload = Workload(model, batch, optimizer, graph_step, mode, eager_step=graph_step)
        workload.prepare = lambda: _capture(workload, graph_step)
        return workload
    eager = step_of(model, model.predict)
    workload = Workload(model, batch, optimizer, eager, mode, eager_step=eager)
    if execution == "compile":
        # Every point compiles afresh, for its own shapes. Without the reset the points its worker
        # measured before count as recompilations of the same forward: shapes turn dynamic from
        # the second length on, and past torch._dynamo's recompile limit (8) the step silently
        # runs eagerly. Compilation happens at the first call: ``prepare`` makes that call, so it
        # stays out of every timed step and its cost is recorded on its own.
        torch._dynamo.reset()
        compiled = step_of(torch.compile(model, dynamic=False), torch.compile(model.predict, dynamic=False))
        workload.step = compiled
        workload.prepare = lambda: compile_by_calling(compiled)
    return workload


def compile_by_calling(step: Callable[[], None]) -> None:
    """Runs a torch.compile'd ``step`` once, which compiles it; an error if nothing was compiled
    (the step would run eagerly, and be timed as if compiled)."""
    before = _compiled_graphs()
    step()
    if _compiled_graphs() == before:
        raise RuntimeError("torch.compile compiled no graph for this step: it would run eagerly")


def _compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def training_optimizer(model: nn.Module, execution: str) -> torch.optim.Optimizer:
    """The model's own optimizer (``configure_optimizer``); for ``cuda-graphs`` made capturable.

    A captured optimizer step must keep its step counters on the device and update them there, or a
    replay would repeat the first step's bias correction forever; torch.optim's Adam and AdamW do so
    with ``capturable=True``. It is set before any state exists, so the state is created that way.
    An optimizer without the option is left as it is: its capture fails, and the error says why.
    """
    optimizer = model.configure_optimizer()
    if execution == "cuda-graphs" and "capturable" in optimizer.defaults:
        optimizer.defaults["capturable"] = True
        for group in optimizer.param_groups:
            group["capturable"] = True
    return optimizer


def step_function(
    mode: str,
    forward: Callable,
    predict: Callable,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None,
    dtype: str,
    device: str,
    grads_in_place: bool = False,
) -> Callable[[], None]:
    """The step of ``mode`` over ``batch``. ``grads_in_place``: zero_grad zeroes the gradients
    where they are (``set_to_none=False``) instead of freeing them, as a CUDA graph needs: its
    replay writes to the addresses it captured. Eager and compiled steps free them, as training
    loops do."""
    if mode == "train":
        def train_step() -> None:
            optimizer.zero_grad(set_to_none=not grads_in_place)
            with forward_context(dtype, device):
                loss = forward(batch)
            loss.backward()
            optimizer.step()
        return train_step

    def infer_step() -> None:
        with torch.inference_mode(), forward_context(dtype, device):
            predict(batch)
    return infer_step


def _capture(workload: Workload, step: Callable[[], None]) -> None:
    """Captures the whole step as one CUDA graph and makes its replay the timed step. Warm-up runs
    on a side stream first, as capture requires. A step that cannot be captured raises with the
    reason in one line, which the worker records; running out of memory stays an out-of-memory."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step()
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with what it means for this point
        raise RuntimeError(capture_failure(exc, workload.optimizer)) from exc
    workload.step = graph.replay


# How CUDA and torch word a capture broken by work the host has to wait for (a copy to the host, a
# synchronisation): "operation not permitted when stream is capturing", "operation failed due to a
# previous error during capture", "... during CUDA graph capture".
HOST_SYNC_SIGNS = ("not permitted when stream is capturing", "during capture", "during cuda graph capture")


def capture_failure(exc: BaseException, optimizer: torch.optim.Optimizer | None) -> str:
    """One line: why a step could not be captured as a CUDA graph, and the error that said so."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    if optimizer is not None and not all(group.get("capturable") for group in optimizer.param_groups):
        name = type(optimizer).__name__
        why = f"its optimizer, {name}, has no capturable option (torch.optim's Adam and AdamW have one)"
    elif any(sign in said.lower() for sign in HOST_SYNC_SIGNS):
        why = ("the step makes the host wait for the GPU (.item(), .cpu(), a data-dependent shape), "
               "which a graph cannot hold")
    else:
        return f"the step cannot be captured as a CUDA graph: {said}"
    return f"the step cannot be captured as a CUDA graph: {why} ({said})"


@dataclass(frozen=True)
class StepCosts:
    footprint: TensorFootprint  # the device-independent memory figure, by part (profiler/footprint.py)
    flops_per_step: int
    param_count: int
    moved_bytes_per_step: int  # op inputs and outputs: an upper bound on the memory traffic (trackers/traffic.py)

    @property
    def tensor_footprint_mib(self) -> float:
        return self.footprint.total_mib

    @property
    def flops_per_byte(self) -> float | None:
        return self.flops_per_step / self.moved_bytes_per_step if self.moved_bytes_per_step else None


def step_costs(workload: Workload) -> StepCosts:
    """One step under the footprint probe, the FLOP counter and the traffic counter together. A
    training step also creates the optimizer state, which the footprint counts."""
    counter = FlopCounterMode(display=False)
    traffic = TrafficCounter()

    def counted() -> None:
        with counter, traffic:  # traffic inside: it sees the ops as they run, undecomposed
            (workload.eager_step or workload.step)()

    if workload.mode == "train":
        footprint = train_step_footprint(workload.model, workload.optimizer, workload.batch, counted)
    else:
        footprint = inference_footprint(workload.model, workload.batch, counted)
    return StepCosts(footprint, counter.get_total_flops(), count_parameters(workload.model), traffic.moved_bytes)
