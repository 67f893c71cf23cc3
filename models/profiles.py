"""Dataset profiles: the sizes of the source papers' datasets, used to build synthetic batches.

Only sizes matter for cost (embedding tables, feature tables, output layers), so a profile holds
the user count, item count and item-feature width of a dataset, nothing of its content.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetProfile:
    name: str
    num_users: int
    num_items: int
    item_feature_dim: int | None  # None: the dataset has no item features
    description: str


PROFILES: dict[str, DatasetProfile] = {
    p.name: p
    for p in (
        DatasetProfile("beauty", 52_204, 57_289, 6_507, "Amazon Beauty (ConvRec, ProxyRCA)"),
        DatasetProfile("games", 31_013, 23_715, 506, "Amazon Games"),
        DatasetProfile("fashion", 45_184, 166_270, 2_048, "Amazon Fashion, ResNet-50 image features"),
        DatasetProfile("men", 34_244, 110_636, 2_048, "Amazon Men, ResNet-50 image features"),
        DatasetProfile("ml-1m", 6_040, 3_416, None, "MovieLens-1M (CosRec, SASRec, lightweight ConvRec)"),
        DatasetProfile("steam", 334_730, 13_047, None, "Steam (lightweight ConvRec)"),
        # Not a paper dataset: small enough for CPU tests and quick CPU sweeps.
        DatasetProfile("tiny", 100, 300, 16, "synthetic, for tests and CPU runs"),
    )
}

# Context values per interaction, fed to the attribute-aware models (CARCA, ProxyRCA, ConvRec).
CONTEXT_FEATURES = 6  # year, month, day, day of week, day of year, week


def get_profile(name: str) -> DatasetProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"Unknown profile {name!r}; choose from {sorted(PROFILES)}") from None
