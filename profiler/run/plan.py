"""The plan of a sweep: which points, in which order, and how long each is measured."""
from dataclasses import dataclass

from models.registry import get_spec
from profiler.results.schema import NO_ATTENTION, PointSpec


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
