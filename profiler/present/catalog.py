"""The registry as rows: each model's size at its default profile and paper length."""
import torch

from models.base import count_parameters, count_trainable_parameters
from models.profiles import get_profile
from models.registry import REGISTRY

CATALOG_LENGTH = 50


def registry_rows() -> list[dict]:
    rows = []
    for spec in REGISTRY.values():
        profile = get_profile(spec.default_profile)
        # Models whose size does not depend on the length have no max_len; any length shows them.
        seq_len = getattr(spec.config_cls(), "max_len", CATALOG_LENGTH)
        config = spec.build_config(profile, seq_len)
        with torch.device("meta"):  # sizes only: no memory for the large feature tables
            model = spec.build(config)
        rows.append(
            {
                "name": spec.name,
                "family": spec.family,
                "profile": profile.name,
                "seq_len": seq_len,
                "param_count": count_parameters(model),
                "trainable_param_count": count_trainable_parameters(model),
                "paper": spec.paper,
                "code": spec.code,
            }
        )
    return rows
