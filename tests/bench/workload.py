"""The model variants the benchmarks and guards cover, and their cached CPU costs.

Workloads and their costs come from profiler/workload.py, the same code the sweep measures with.
"""
import functools
from dataclasses import dataclass

from models.base import ATTENTION_BACKENDS
from models.registry import REGISTRY
from profiler.run.workload import StepCosts, build_workload, step_costs


@dataclass(frozen=True)
class Variant:
    """A registered model, with its attention backend where it has one."""

    model: str
    attention: str | None = None

    @property
    def label(self) -> str:
        return self.model if self.attention is None else f"{self.model}[{self.attention}]"


def variants() -> list[Variant]:
    """Every registered model; attention models once per backend."""
    out = []
    for name, spec in REGISTRY.items():
        backends = ATTENTION_BACKENDS if spec.has_attention_backend else (None,)
        out.extend(Variant(name, backend) for backend in backends)
    return out


@functools.cache
def cpu_costs(variant: Variant, mode: str, seq_len: int, batch_size: int) -> StepCosts:
    """Costs at the tiny profile on the CPU, cached: the class guards and the recorded-value guards
    read the same points."""
    return step_costs(build_workload(variant.model, variant.attention, mode, seq_len, batch_size, "tiny", "cpu"))
