"""Hardware-independent guards, run in CI on the CPU: each model's growth class and its exact cost.

The GPU benchmarks need a GPU and a baseline; these hold the architecture itself. For every model
variant and mode, the growth class (profiler.analysis.growth_verdict) of the tensor footprint and
of the FLOPs over the model's ladder of lengths must stay the recorded one, and the FLOPs and
parameter count at one small fixed configuration must equal the recorded values
(tests/bench/recorded.json, which also says why each ladder and class is what it is).
"""
import json
from pathlib import Path

import pytest
import torch

from models import convrec_lightweight
from models.registry import REGISTRY
from profiler.analysis.fit import growth_verdict
from profiler.results.schema import MODES
from profiler.run.workload import StepCosts, build_workload, step_costs

from .workload import Variant, cpu_costs, variants

RECORDED_PATH = Path(__file__).with_name("recorded.json")
RECORDED = json.loads(RECORDED_PATH.read_text())
# Each metric as a message names it (with its verb) and its unit.
METRICS = {"tensor_footprint_mib": ("tensor footprint grows", "MiB"), "flops_per_step": ("FLOPs per step grow", "FLOPs")}
UPDATE_HINT = "if the change is deliberate, update tests/bench/recorded.json"


def class_changes(label: str, lengths: list[int], costs: list[StepCosts], expected: dict[str, str]) -> list[str]:
    """One readable message per metric whose growth class differs from ``expected``."""
    messages = []
    for metric, (name, unit) in METRICS.items():
        values = [getattr(c, metric) for c in costs]
        measured = growth_verdict(lengths, values)
        if measured != expected[metric]:
            points = ", ".join(f"{v:.4g}" for v in values)
            messages.append(
                f"{label}: {name} {measured} in L, recorded {expected[metric]} "
                f"(L = {', '.join(map(str, lengths))}: {points} {unit}); {UPDATE_HINT}"
            )
    return messages


def value_changes(label: str, costs: dict[str, StepCosts], recorded: dict) -> list[str]:
    """Messages for FLOPs or parameter counts that differ from the recorded ones."""
    at = f"tiny profile, L={RECORDED['seq_len']}, B={RECORDED['batch_size']}"
    messages = []
    param_count = costs["train"].param_count
    if param_count != recorded["param_count"]:
        messages.append(f"{label}: {param_count:,} parameters, recorded {recorded['param_count']:,} ({at}); {UPDATE_HINT}")
    for mode, cost in costs.items():
        if cost.flops_per_step != recorded["flops_per_step"][mode]:
            messages.append(
                f"{label} {mode}: {cost.flops_per_step:,} FLOPs per step, recorded "
                f"{recorded['flops_per_step'][mode]:,} ({at}); {UPDATE_HINT}"
            )
    return messages


def ladder_costs(variant: Variant, mode: str) -> tuple[list[int], list[StepCosts]]:
    lengths = RECORDED["lengths"][variant.model]
    return lengths, [cpu_costs(variant, mode, n, RECORDED["batch_size"]) for n in lengths]


def test_every_registered_variant_is_recorded():
    assert sorted(RECORDED["lengths"]) == sorted(REGISTRY)
    assert sorted(RECORDED["variants"]) == sorted(v.label for v in variants())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("variant", variants(), ids=lambda v: v.label)
def test_growth_class_is_the_recorded_one(variant, mode):
    lengths, costs = ladder_costs(variant, mode)
    messages = class_changes(f"{variant.label} {mode}", lengths, costs, RECORDED["variants"][variant.label][mode])
    assert not messages, "\n".join(messages)


@pytest.mark.parametrize("variant", variants(), ids=lambda v: v.label)
def test_flops_and_parameters_are_the_recorded_ones(variant):
    costs = {mode: cpu_costs(variant, mode, RECORDED["seq_len"], RECORDED["batch_size"]) for mode in MODES}
    messages = value_changes(variant.label, costs, RECORDED["variants"][variant.label])
    assert not messages, "\n".join(messages)


def _with_token_mixing(forward):
    """A block forward that also mixes positions through a (B, L, L) score matrix: the kind of
    change that turns a convolution model into an attention model by accident."""

    def patched(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        scores = (x @ x.transpose(1, 2)).softmax(dim=-1)  # (B, L, L), saved for backward
        return forward(self, x + scores @ x, real)

    return patched


def test_an_injected_quadratic_layer_in_convrec_light_is_reported(monkeypatch):
    variant = Variant("convrec-light")
    lengths, clean = ladder_costs(variant, "train")
    expected = RECORDED["variants"][variant.label]["train"]
    assert class_changes("convrec-light train", lengths, clean, expected) == []

    block = convrec_lightweight.LightweightConvBlock
    monkeypatch.setattr(block, "forward", _with_token_mixing(block.forward))
    # Measured afresh (not from the cache the guards share), with the patched block.
    injected = [step_costs(build_workload(variant.model, variant.attention, "train", n, RECORDED["batch_size"], "tiny", "cpu")) for n in lengths]
    messages = class_changes("convrec-light train", lengths, injected, expected)

    assert [m.split(" (")[0] for m in messages] == [
        "convrec-light train: tensor footprint grows quadratic in L, recorded linear",
        "convrec-light train: FLOPs per step grow quadratic in L, recorded linear",
    ]
    assert all("L = 32, 64, 128, 256: " in m and m.endswith(UPDATE_HINT) for m in messages)
    # The exact-value guard sees it too, at its fixed configuration (the ladder's first rung): more
    # FLOPs, the same parameters (the injected layer has none).
    assert lengths[0] == RECORDED["seq_len"]
    recorded_values = RECORDED["variants"][variant.label]
    [flops_message] = value_changes(variant.label, {"train": injected[0]}, recorded_values)
    assert flops_message.startswith("convrec-light train: ") and "FLOPs per step, recorded" in flops_message
