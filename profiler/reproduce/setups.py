"""The papers' efficiency experiments: their setups, their published numbers, and the sweep that
measures them.

- convrec: hierarchical ConvRec paper, section 5.2.2 / Figure 4: ProxyRCA vs ConvRec, Beauty,
  batch 128, training, NVIDIA A40; memory in MB (what nvidia-smi shows, MiB) and time per batch.
- lightconv: lightweight ConvRec paper, section 5.6 / Table 5: SASRec vs ConvRec, training memory in
  GB at L = 50 ... 900; the GPU, batch and dataset are not stated. The paper's defaults are batch 128
  and ML-1M for its long-sequence setting (max length 200 there), so those are used.
- hstu: HSTU paper, section 4.2 ("Encoder Efficiency") / Figure 5: HSTU vs FlashAttention-2
  Transformers, training and inference speed over L = 1,024 ... 8,192. The text states ranges and
  maxima only (the per-length values are drawn, not listed): the time ratio Transformer / HSTU.
- lrurec: LRURec paper, section 5.5 ("Model Efficiency") / Figure 1 (right): SASRec vs LRURec
  incremental inference; the text states one throughput ratio, at maximum length 50.
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
    models: tuple[str, str]  # (the paper's baseline, the other model): ratios are first / second
    labels: dict[str, str]  # the paper's names of the models
    profile: str
    batch_size: int
    mode: str
    lengths: tuple[int, ...]
    gpu: str
    cpu_max_length: int  # the CPU version measures the lengths up to this, in about a minute
    memory_unit: str = "MB"  # "MB" (read as MiB, as nvidia-smi prints) or "GB" (read as GiB)
    memory: dict[str, dict[int, float | None]] = field(default_factory=dict)  # published; None: the run failed
    time_s: dict[str, dict[int, float]] = field(default_factory=dict)  # published time per batch
    # Published time of the first model over the second's, per length, as (low, high): a range the
    # paper states, or one number twice. The speed-up of the second model.
    time_ratio: dict[int, tuple[float, float]] = field(default_factory=dict)
    attention: str = "naive"  # backend of the models that have one; naive: as the authors' code
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
    "hstu": Setup(
        name="hstu",
        paper="Zhai et al., Actions Speak Louder than Words: Trillion-Parameter Sequential Transducers for "
        "Generative Recommendations (HSTU), ICML 2024",
        source="section 4.2, Figure 5; abstract and section 6",
        models=("sasrec", "hstu"),
        labels={"sasrec": "SASRec (sdpa)", "hstu": "HSTU"},
        # HSTU's default profile; SASRec has its paper's ML-1M preset (dropout 0.2), so both models
        # see the same item table.
        profile="ml-1m",
        batch_size=8,  # not stated; HSTU's dense (B, L, L) tensors at L = 8192 fit a 80-141 GB GPU
        mode="train",
        lengths=(512, 1024, 2048, 4096, 8192),  # the paper's Figure 5 spans 1,024 to 8,192
        gpu="NVIDIA H100, bfloat16",
        # On the CPU HSTU's (B, L, L) bias and time buckets bound the length: about 3 s a step at batch
        # 8, L = 1024 (the CPU version takes about a minute).
        cpu_max_length=1024,
        # Abstract and section 6: "5.3x to 15.2x faster ... on 8192 length sequences", not split
        # into training and inference. Section 4.2: "up to 15.2x and 5.6x more efficient than
        # Transformers in training and inference, respectively", over L = 1,024 to 8,192.
        time_ratio={8192: (5.3, 15.2)},
        attention="sdpa",  # the paper's Transformer runs FlashAttention-2: a fused kernel
        notes=(
            "the paper's speed-up comes from its fused, jagged (sparse) attention kernels (section 3.2, "
            "appendix G; Triton and CUDA in the authors' code) and Stochastic Length sampling in training; "
            "seqprof's HSTU is the dense masked reference, (B, L, L) per block, against SASRec's fused sdpa: "
            "the measured ratio is expected to be below the published one, and may be below 1",
            "the paper measured encoders alone (d 512, 8 heads, dqk 64, no relative bias) in bfloat16 on an "
            "H100; here whole models at their ML-1M defaults (d 50, 1 head, HSTU with its relative bias), "
            "float32, batch 8 (not stated in the paper)",
            "published: 5.3x-15.2x at L = 8192 (abstract, section 6), up to 15.2x in training (section 4.2); "
            "Figure 5's per-length values are drawn only, not recorded here",
        ),
    ),
    "lrurec": Setup(
        name="lrurec",
        paper="Yue et al., Linear Recurrent Units for Sequential Recommendation (LRURec), WSDM 2024",
        source="section 5.5, Figure 1 (right)",
        models=("sasrec", "lrurec"),
        labels={"sasrec": "SASRec", "lrurec": "LRURec"},
        profile="ml-1m",  # LRURec's default profile and the dataset of the paper's Figure 1
        # The paper states batch 128 for training (section 5.1) and none for its batched inference.
        batch_size=128,
        mode="infer",
        lengths=(50, 100, 200, 400, 800),
        gpu="not stated",
        cpu_max_length=800,
        # Section 5.5: LRURec "can achieve x7.3 increased input examples compared to SASRec with
        # maximum sequence length of 50": throughput, so SASRec's time over LRURec's.
        time_ratio={50: (7.3, 7.3)},
        notes=(
            "the paper's x7.3 is incremental inference: LRURec updates its hidden state by one item per step "
            "(O(1) a step) while SASRec reruns the window; seqprof's inference step scores the whole "
            "history at once (LRURec by its parallel scan), so the measured ratio is expected to be far below "
            "the published one",
            "the paper states no batch size for inference (128 in training, section 5.1): 128 is used",
            "Figure 1 (right) draws the cumulative time of 2,048 incremental steps on ML-1M; its values are "
            "drawn only, not recorded here",
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
    """The sweep that measures a paper's setup: its models, lengths, batch, profile, mode and
    attention backend. On the CPU the defaults are small."""
    on_cpu = device == "cpu"
    if lengths is None:
        lengths = cpu_lengths(setup) if on_cpu else list(setup.lengths)
    if batch_size is None:
        batch_size = CPU_BATCH_SIZE if on_cpu else setup.batch_size
    return SweepRequest(
        models=list(setup.models),
        lengths=sorted(lengths),
        modes=[setup.mode],
        attentions=[setup.attention],
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
