"""A tiny CPU benchmark that runs in every `pytest`, so the benchmark suite itself stays exercised:
pytest-benchmark, extra_info and the memory gate, in well under a second.

It runs at the fixed configuration of tests/bench/recorded.json, so its FLOPs must equal the
recorded ones; its memory figure is the tensor footprint (the CPU has no allocator peak to read).
"""
import json
from pathlib import Path

from models.base import count_parameters
from profiler.run.workload import build_workload, step_costs

from .workload import Variant

RECORDED = json.loads(Path(__file__).with_name("recorded.json").read_text())
ROUNDS = 5


def test_convrec_light_train_step_on_cpu(benchmark, memory_gate):
    variant = Variant("convrec-light")
    seq_len, batch_size = RECORDED["seq_len"], RECORDED["batch_size"]
    workload = build_workload(variant.model, variant.attention, "train", seq_len, batch_size, RECORDED["profile"], "cpu")
    costs = step_costs(workload)  # also the first (warm-up) step: it creates the optimizer state

    benchmark.group = "cpu"
    benchmark.pedantic(workload.step, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(
        model=variant.model,
        mode="train",
        seq_len=seq_len,
        batch_size=batch_size,
        profile=RECORDED["profile"],
        device_name="cpu",
        param_count=count_parameters(workload.model),
        flops_per_step=costs.flops_per_step,
        tensor_footprint_mib=costs.tensor_footprint_mib,
    )
    memory_gate(f"{variant.label} train L={seq_len} (cpu)", "cpu", {"tensor_footprint_mib": costs.tensor_footprint_mib})

    assert costs.flops_per_step == RECORDED["variants"][variant.label]["flops_per_step"]["train"]
    if benchmark.stats is not None:  # None under --benchmark-disable, which runs the step once untimed
        assert benchmark.stats.stats.rounds == ROUNDS and benchmark.stats.stats.min > 0
