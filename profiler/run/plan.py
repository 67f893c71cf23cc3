"""The plan of a sweep: which points, in which order."""
import itertools

from profiler.results.schema import NO_ATTENTION, PointSpec
from profiler.run.plugins import resolve_spec


def plan_points(
    models: list[str],
    lengths: list[int],
    modes: list[str],
    attentions: list[str],
    batch_size: int,
    profile: str | None,
    device: str,
    seed: int = 0,
    dtypes: tuple[str, ...] = ("float32",),
    executions: tuple[str, ...] = ("eager",),
) -> list[PointSpec]:
    """Every combination, grouped by model variant and mode, ascending length within a series.

    ``models`` are registry names or plug-in references (profiler.run.plugins). ``profile=None``
    gives each model its own default profile (the one its paper's costs use).
    """
    points = []
    for model in models:
        spec = resolve_spec(model)
        variants = attentions if spec.has_attention_backend else [NO_ATTENTION]
        for attention in variants:
            for dtype, execution in itertools.product(dtypes, executions):
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
                                dtype=dtype,
                                execution=execution,
                            )
                        )
    return points
