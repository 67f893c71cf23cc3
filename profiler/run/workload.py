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


@dataclass
class Workload:
    model: nn.Module
    batch: dict[str, torch.Tensor]
    optimizer: torch.optim.Optimizer | None  # None for inference
    step: Callable[[], None]
    mode: str


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
) -> Workload:
    """``attention`` is a backend name, or None / "none" for models without attention layers;
    ``dtype`` one of profiler.run.precision.DTYPES."""
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
    if mode == "train":
        model.train()
        optimizer = model.configure_optimizer()

        def train_step() -> None:
            optimizer.zero_grad(set_to_none=True)
            with forward_context(dtype, device):
                loss = model(batch)
            loss.backward()
            optimizer.step()

        return Workload(model, batch, optimizer, train_step, mode)
    if mode != "infer":
        raise ValueError(f"Unknown mode {mode!r}; choose from ['train', 'infer']")
    model.eval()

    def infer_step() -> None:
        with torch.inference_mode(), forward_context(dtype, device):
            model.predict(batch)

    return Workload(model, batch, None, infer_step, mode)


@dataclass(frozen=True)
class StepCosts:
    footprint: TensorFootprint  # the device-independent memory figure, by part (profiler/footprint.py)
    flops_per_step: int
    param_count: int

    @property
    def tensor_footprint_mib(self) -> float:
        return self.footprint.total_mib


def step_costs(workload: Workload) -> StepCosts:
    """One step under the footprint probe and the FLOP counter together. A training step also
    creates the optimizer state, which the footprint counts."""
    counter = FlopCounterMode(display=False)

    def counted() -> None:
        with counter:
            workload.step()

    if workload.mode == "train":
        footprint = train_step_footprint(workload.model, workload.optimizer, workload.batch, counted)
    else:
        footprint = inference_footprint(workload.model, workload.batch, counted)
    return StepCosts(footprint, counter.get_total_flops(), count_parameters(workload.model))
