"""The two papers' efficiency experiments: their setups, their published numbers, and the sweep
that measures them.

- convrec: hierarchical ConvRec paper, section 5.2.2 / Figure 4: ProxyRCA vs ConvRec, Beauty,
  batch 128, training, NVIDIA A40; memory in MB (what nvidia-smi shows, MiB) and time per batch.
- lightconv: lightweight ConvRec paper, section 5.6 / Table 5: SASRec vs ConvRec, training memory in
  GB at L = 50 ... 900; the GPU, batch and dataset are not stated. The paper's defaults are batch 128
  and ML-1M for its long-sequence setting (max length 200 there), so those are used.
"""
from dataclasses import dataclass, field
from pathlib import Path

from profiler.results.files import timestamped_path
from profiler.run.sweep import RESULTS_DIR, SweepRequest
from profiler.trackers.timing import MeasurementBudget


@dataclass(frozen=True)
class Setup:
    name: str
    paper: str
    source: str  # where in the paper the numbers are
    models: tuple[str, str]  # (attention model, convolution model): ratios are first / second
    labels: dict[str, str]  # the paper's names of the models
    profile: str
    batch_size: int
    mode: str
    lengths: tuple[int, ...]
    gpu: str
    cpu_max_length: int  # the CPU version measures the lengths up to this, in about a minute
    memory_unit: str  # "MB" (read as MiB, as nvidia-smi prints) or "GB" (read as GiB)
    memory: dict[str, dict[int, float | None]]  # published memory; None: the run failed
    time_s: dict[str, dict[int, float]] = field(default_factory=dict)  # published time per batch
    notes: tuple[str, ...] = ()


SETUPS = {
    "convrec": Setup(
        name="convrec",
        paper="Rethinking Convolutional Networks for Attribute-Aware Sequential Recommendation (ConvRec)",
        source="section 5.2.2, Figure 4",
        models=("proxyrca", "convrec-hier"),
        labels={"proxyrca": "ProxyRCA", "convrec-hier": "ConvRec"},
        profile="beauty",
        batch_size=128,
        mode="train",
        # The text gives L = 50 and L = 500 only; the figure's points in between are not listed.
        lengths=(50, 100, 200, 300, 400, 500),
        gpu="NVIDIA A40",
        # Both models carry the Beauty feature table (57k x 6.5k): about 1 s a step at batch 8.
        cpu_max_length=200,
        memory_unit="MB",
        memory={"proxyrca": {50: 3878.0, 500: 14280.0}, "convrec-hier": {50: 2849.0, 500: 6096.0}},
        time_s={"proxyrca": {50: 0.0893, 500: 0.382}, "convrec-hier": {50: 0.076, 500: 0.202}},
        notes=("the paper's memory is what nvidia-smi shows (CUDA context included): compare nvml_peak_mib",),
    ),
    "lightconv": Setup(
        name="lightconv",
        paper="Tanjim, ConvRec: a simple lightweight convolutional network for next item recommendation",
        source="section 5.6, Table 5",
        models=("sasrec", "convrec-light"),
        labels={"sasrec": "SASRec", "convrec-light": "ConvRec"},
        profile="ml-1m",
        batch_size=128,
        mode="train",
        lengths=(50, 200, 400, 600, 900),
        gpu="not stated",
        cpu_max_length=600,
        memory_unit="GB",
        memory={
            "sasrec": {50: 1.4, 200: 1.8, 400: 3.2, 600: 5.2, 900: None},
            "convrec-light": {50: 0.9, 200: 1.3, 400: 2.8, 600: 4.0, 900: 7.0},
        },
        notes=(
            "Table 5 names no dataset, GPU or batch size; ML-1M (the paper's long-sequence dataset) and "
            "batch 128 (its default) are assumed",
            "the paper published no times: SASRec ran in TensorFlow, ConvRec in PyTorch",
        ),
    ),
}

# On the CPU a paper's setup would take hours: a small batch and the shorter lengths by default.
CPU_BATCH_SIZE = 8


class ReproduceError(ValueError):
    """Results that cannot be compared with a paper's setup; the message says why."""


def get_setup(name: str) -> Setup:
    try:
        return SETUPS[name]
    except KeyError:
        raise ReproduceError(f"unknown setup {name!r}; choose from {', '.join(SETUPS)}") from None


def cpu_lengths(setup: Setup) -> list[int]:
    """The paper's lengths the CPU version measures."""
    return [length for length in setup.lengths if length <= setup.cpu_max_length]


def default_results_path(setup: Setup, device: str) -> Path:
    return timestamped_path(RESULTS_DIR, f"reproduce-{setup.name}-{device}")


def sweep_request(
    setup: Setup,
    device: str,
    out: Path,
    budget: MeasurementBudget,
    batch_size: int | None = None,
    lengths: list[int] | None = None,
    profile: str | None = None,
    resume: bool = False,
    argv: list[str] | None = None,
) -> SweepRequest:
    """The sweep that measures a paper's setup: its models, lengths, batch and profile, training,
    with the materialised attention the authors' code uses. On the CPU the defaults are small."""
    on_cpu = device == "cpu"
    if lengths is None:
        lengths = cpu_lengths(setup) if on_cpu else list(setup.lengths)
    if batch_size is None:
        batch_size = CPU_BATCH_SIZE if on_cpu else setup.batch_size
    return SweepRequest(
        models=list(setup.models),
        lengths=sorted(lengths),
        modes=[setup.mode],
        attentions=["naive"],
        batch_size=batch_size,
        profile=profile or setup.profile,
        device=device,
        seed=0,
        budget=budget,
        out=out,
        resume=resume,
        point_timeout_s=900.0,
        argv=list(argv or []),
    )
