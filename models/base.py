"""The model contract every seqprof model follows, and how a registry entry builds one.

A model is an ``nn.Module`` built from a config dataclass whose defaults are the paper's:
- ``forward(batch) -> loss``: the paper's training objective, a scalar tensor;
- ``predict(batch) -> scores``: inference scores for the batch's candidates;
- ``configure_optimizer() -> Optimizer``: the paper's optimizer over the trainable parameters;
- causal models also have ``encode(batch) -> (B, L, ...)``, the per-position outputs whose
  position t depends only on inputs at positions <= t.
Every batch holds ``seq``, the (B, L) item history, left-padded with item id 0; other per-position
inputs (contexts, targets, times) are (B, L, ...) tensors aligned with it.
Next to it, ``make_batch(config, batch_size, seq_len, device, generator) -> dict[str, Tensor]``
builds the synthetic inputs of one training step directly on the device.

Configs name the knobs the harness sets with the same field names: ``max_len``, ``num_items``,
``num_users``, ``item_feature_dim``, ``attention``. Beside a config, a model module may keep
``PRESETS``: the authors' settings per dataset profile, as config overrides the registry entry
applies when it builds a config for that profile.
"""
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.profiles import PROFILES, DatasetProfile

Batch = dict[str, torch.Tensor]
Family = Literal["attention", "convolution", "linear-attention", "fft-filter", "recurrence"]
ATTENTION_BACKENDS = ("naive", "sdpa")


def check_attention_backend(name: str) -> None:
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"Unknown attention backend {name!r}; choose from {list(ATTENTION_BACKENDS)}")


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: what the model is, where it comes from, and how to build it."""

    name: str
    family: Family
    paper: str
    code: str  # the authors' repository (or the reference port) the implementation follows
    config_cls: type
    model_cls: Callable[[Any], nn.Module]
    make_batch: Callable[..., Batch]
    default_profile: str
    causal: bool  # True: position t sees items <= t; False: a position may see the whole window
    needs_item_features: bool = False
    max_len_limit: int | None = None  # longest length the model supports, None for unbounded
    min_len: int = 1  # shortest length the model supports
    # Profile name -> config overrides: the authors' settings for that dataset.
    presets: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self):
        names = self.config_fields()
        for profile, preset in self.presets.items():
            if profile not in PROFILES:
                raise ValueError(f"{self.name}: preset for unknown profile {profile!r}; choose from {sorted(PROFILES)}")
            unknown = sorted(set(preset) - names)
            if unknown:
                raise ValueError(
                    f"{self.name}: preset {profile!r} sets {unknown}, not fields of {self.config_cls.__name__}; "
                    f"choose from {sorted(names)}"
                )

    def config_fields(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self.config_cls)}

    @property
    def has_attention_backend(self) -> bool:
        return "attention" in self.config_fields()

    def build_config(self, profile: DatasetProfile, seq_len: int, attention: str | None = None, **overrides):
        """The config at ``profile``: the defaults, then the profile's preset, then the harness's
        knobs (``seq_len`` is always ``max_len``), then ``overrides``."""
        if self.needs_item_features and profile.item_feature_dim is None:
            raise ValueError(f"model {self.name!r} needs item features; profile {profile.name!r} has none")
        knobs = {
            "max_len": seq_len,
            "num_items": profile.num_items,
            "num_users": profile.num_users,
            "item_feature_dim": profile.item_feature_dim,
        }
        if attention is not None and self.has_attention_backend:
            check_attention_backend(attention)
            knobs["attention"] = attention
        knobs.update(overrides)
        names = self.config_fields()
        return self.config_cls(**{**self.presets.get(profile.name, {}), **{k: v for k, v in knobs.items() if k in names}})

    def build(self, config) -> nn.Module:
        return self.model_cls(config)


def count_parameters(model: nn.Module) -> int:
    """All parameters, frozen ones included, as the authors' code counts them."""
    return sum(p.numel() for p in model.parameters())


def count_trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def frozen_feature_table(num_rows: int, feature_dim: int) -> nn.Parameter:
    """A frozen item-feature table, row 0 being padding, as the attribute-aware models keep one.

    Random values stand in for the dataset's features: cost depends on the size only. The values
    are filled by the model's initialisation, so they follow the global seed like every weight.
    """
    table = torch.rand(num_rows, feature_dim)
    table[0] = 0.0
    return nn.Parameter(table, requires_grad=False)


def random_items(batch_size: int, seq_len: int, num_items: int, device, generator) -> torch.Tensor:
    """Item ids in [1, num_items] (0 is padding), shape (batch_size, seq_len)."""
    return torch.randint(1, num_items + 1, (batch_size, seq_len), device=device, generator=generator)


def left_padded_lengths_mask(batch_size: int, seq_len: int, device, generator) -> torch.Tensor:
    """A (B, L) bool mask of real positions for left-padded sequences.

    Real histories are shorter than the maximum length; a quarter of the rows are padded by a
    random amount (at least one real item kept) so padding paths are exercised in every step,
    while most rows are full, as in a length sweep where L is the cost driver.
    """
    lengths = torch.full((batch_size,), seq_len, device=device)
    padded_rows = torch.arange(batch_size, device=device) % 4 == 3
    short = torch.randint(1, seq_len + 1, (batch_size,), device=device, generator=generator)
    lengths = torch.where(padded_rows, short, lengths)
    positions = torch.arange(seq_len, device=device)
    return positions.unsqueeze(0) >= (seq_len - lengths).unsqueeze(1)


def fused_on_cuda(model: nn.Module) -> dict:
    """Optimizer keywords: on CUDA, Adam/AdamW's fused kernel, the same update in a few launches
    instead of several per parameter tensor (the authors' code runs the per-tensor loop)."""
    first = next(model.parameters(), None)
    return {"fused": True} if first is not None and first.is_cuda else {}


def next_item_bce(pos_logits: torch.Tensor, neg_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SASRec's loss: binary cross-entropy of the next item (label 1) plus that of a sampled
    negative (label 0), each averaged over the positions where ``target`` is true (the real ones).
    The mask weights the terms, as in the original's sum(loss * istarget) / sum(istarget), rather
    than selecting them: selecting by a mask makes the host wait mid-step for the GPU to count the
    positions, which idles the GPU between the forward and backward launches."""
    weight = target.to(pos_logits.dtype)
    pos = F.binary_cross_entropy_with_logits(pos_logits, torch.ones_like(pos_logits), weight=weight, reduction="sum")
    neg = F.binary_cross_entropy_with_logits(neg_logits, torch.zeros_like(neg_logits), weight=weight, reduction="sum")
    return (pos + neg) / weight.sum()
