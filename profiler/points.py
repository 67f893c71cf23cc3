"""What one measured point is, and the plan of points a sweep runs.

A ``PointSpec`` is a frozen, hashable description of one measurement: its knobs identify a row of
the results table, so resuming a sweep is a set difference between planned and stored keys.
"""
import dataclasses
from dataclasses import dataclass
from typing import Literal

from models.registry import get_spec

Mode = Literal["train", "infer"]
MODES: tuple[str, ...] = ("train", "infer")
NO_ATTENTION = "none"  # the attention knob of models without attention layers


@dataclass(frozen=True)
class MeasurementBudget:
    """How long a point is measured: enough repetitions to fill the time budget, within bounds.

    Before the warm-up steps, one full step runs under the footprint and FLOP probes; it warms up
    too, so a point runs ``warmup_steps + 1`` steps before the timed ones. The last warm-up step is
    timed to size the repetition count.
    """

    warmup_steps: int = 3  # at least 1: the step that sizes the repetition count
    time_budget_s: float = 2.0
    min_reps: int = 5
    max_reps: int = 100

    def reps_for(self, step_time_s: float) -> int:
        wanted = int(self.time_budget_s / max(step_time_s, 1e-9))
        return max(self.min_reps, min(self.max_reps, wanted))


@dataclass(frozen=True)
class PointSpec:
    model: str
    seq_len: int
    mode: str
    batch_size: int
    profile: str
    attention: str
    device: str  # "cuda" or "cpu"
    seed: int = 0
    dtype: str = "float32"

    # The knobs that identify a row: two points with equal keys measure the same thing.
    KEY_FIELDS = ("model", "attention", "profile", "mode", "batch_size", "seq_len", "device", "dtype", "seed")

    @property
    def key(self) -> tuple:
        return tuple(getattr(self, name) for name in self.KEY_FIELDS)

    @property
    def series(self) -> tuple:
        """Points of one series differ only in length: an OOM ends the longer ones."""
        return (self.model, self.attention, self.profile, self.mode, self.batch_size, self.device)

    @property
    def label(self) -> str:
        name = self.model if self.attention == NO_ATTENTION else f"{self.model}[{self.attention}]"
        return f"{name} {self.mode} L={self.seq_len}"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def plan_points(
    models: list[str],
    lengths: list[int],
    modes: list[str],
    attentions: list[str],
    batch_size: int,
    profile: str | None,
    device: str,
    seed: int = 0,
) -> list[PointSpec]:
    """Every combination, grouped by model variant and mode, ascending length within a series.

    ``profile=None`` gives each model its own default profile (the one its paper's costs use).
    """
    points = []
    for model in models:
        spec = get_spec(model)
        variants = attentions if spec.has_attention_backend else [NO_ATTENTION]
        for attention in variants:
            for mode in modes:
                for seq_len in sorted(lengths):
                    points.append(
                        PointSpec(
                            model=model,
                            seq_len=seq_len,
                            mode=mode,
                            batch_size=batch_size,
                            profile=profile or spec.default_profile,
                            attention=attention,
                            device=device,
                            seed=seed,
                        )
                    )
    return points
