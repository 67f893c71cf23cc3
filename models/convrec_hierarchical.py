"""ConvRec, hierarchical convolution down-scaling (Elsayed, Le, Rashed & Schmidt-Thieme, IJCAI 2026):
an attribute- and context-aware recommender that collapses the history to one vector with strided
convolutions instead of attention.

Follows the authors' code (ismll-research/ConvRec: models/convrec.py, models/encoders/convencoder.py):
- item encoder: frozen feature table -> Linear(F -> 4d); Linear(6 -> d) context; Linear(5d -> 4d);
  concat with an id embedding (d) -> Linear(5d -> d);
- (year, month, day) differences between consecutive interactions (the first is 1) are appended:
  GELU -> dropout -> LayerNorm(d + 3) -> Linear(d + 3 -> d) -> GELU, padded positions zeroed;
- Convolution Down-Scaling: per (kernel k, stride s) layer, left zero-padding to a whole number of
  windows, a head-split strided conv -> Linear(d -> d) -> GELU -> dropout, and
  LayerNorm(conv + w1 AvgPool(x) + w2 AvgPool(x_res)), x_res being the progressively pooled input;
- a mean over what is left of the length gives the sequence vector; candidates (1 positive + 100
  negatives) go through the same encoder with their interval to the last history item; logits are
  dot products; cross-entropy with the positive first; AdamW.
Every activation is O(B L d): the conv layers shrink the length geometrically.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.base import Batch, frozen_feature_table, fused_on_cuda, left_padded_lengths_mask, random_items
from models.layers import StdLayerNorm
from models.profiles import CONTEXT_FEATURES

TIME_FEATURES = 3  # year, month, day: the context columns whose differences are the intervals


@dataclass
class HierarchicalConvRecConfig:
    num_items: int = 57_289
    num_users: int = 52_204
    item_feature_dim: int = 6_507
    d_model: int = 256
    num_conv_heads: int = 1
    # (kernel, stride) per layer; Table 5 of the paper lists alternatives, e.g. ((10, 10), (7, 7)).
    conv_schedule: tuple[tuple[int, int], ...] = ((2, 2), (5, 5), (7, 7))
    dropout: float = 0.1  # the authors' default config; the paper's per dataset: PRESETS
    # Ids 1..K get their own embedding, the rest share one generic id (ProxyRCA's trick); None gives
    # every item its own. 0 is what the authors' Beauty parameter count (383,590,143) implies:
    # a 2-row table (padding, generic), so items are told apart by their features alone.
    num_known_items: int | None = 0
    user_dim: int = 20  # the authors' user embedding, built but unused (see `unused` below)
    layer_norm_eps: float = 1e-6  # added to the std, as the authors' LayerNorm does
    num_candidates: int = 101  # 1 positive + 100 sampled negatives
    lr: float = 1e-4  # the authors' default config; the paper's per dataset: PRESETS
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)


# The paper's Appendix C, tuned per dataset (embedding size 256 and batch 128 everywhere). Its best
# lengths (70, 50, 50, 30) have no field here: the harness sets the length.
PRESETS: dict[str, dict] = {
    "beauty": {"dropout": 0.45, "lr": 4e-5, "weight_decay": 0.2},
    "games": {"dropout": 0.35, "lr": 1e-4, "weight_decay": 0.1},
    "fashion": {"dropout": 0.35, "lr": 5e-5, "weight_decay": 0.1},
    "men": {"dropout": 0.3, "lr": 1e-4, "weight_decay": 0.1},
}


class ItemEncoder(nn.Module):
    """(items (B, N), context (B, N, 6)) -> (B, N, d), for the history and the candidates alike."""

    def __init__(self, cfg: HierarchicalConvRecConfig):
        super().__init__()
        d = cfg.d_model
        self.features = frozen_feature_table(cfg.num_items + 1, cfg.item_feature_dim)
        if cfg.num_known_items is None:
            vocab, self.generic_id = cfg.num_items + 1, cfg.num_items  # every item known: no clamping
        else:
            vocab, self.generic_id = cfg.num_known_items + 2, cfg.num_known_items + 1
        self.id_emb = nn.Embedding(vocab, d, padding_idx=0)
        self.feature_proj = nn.Linear(cfg.item_feature_dim, 4 * d)
        self.context_proj = nn.Linear(CONTEXT_FEATURES, d)
        self.attr_ctx_proj = nn.Linear(5 * d, 4 * d)
        self.item_proj = nn.Linear(5 * d, d)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, items: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        features = self.feature_proj(F.embedding(items, self.features))  # (B, N, 4d), no activation
        attr_ctx = torch.cat([features, self.context_proj(context)], dim=-1)  # (B, N, 5d)
        attr_ctx = self.dropout(self.attr_ctx_proj(attr_ctx))  # (B, N, 4d)
        ids = items.clamp(max=self.generic_id)  # ids are >= 0, so only unknown items change
        return self.item_proj(torch.cat([self.id_emb(ids), attr_ctx], dim=-1))  # (B, N, d)


class DownScaleLayer(nn.Module):
    """(B, L, d) -> (B, L', d), L' = ceil((L - k) / s) + 1 (1 when L <= k)."""

    def __init__(self, cfg: HierarchicalConvRecConfig, kernel_size: int, stride: int):
        super().__init__()
        d = cfg.d_model
        if d % cfg.num_conv_heads:
            raise ValueError(f"d_model {d} is not divisible by num_conv_heads {cfg.num_conv_heads}")
        self.kernel_size, self.stride = kernel_size, stride
        # The authors keep one Conv1d(d/h -> d/h) per head on contiguous channel chunks; a grouped
        # conv holds the same weights and computes all heads in one call.
        self.conv = nn.Conv1d(d, d, kernel_size, stride=stride, groups=cfg.num_conv_heads)
        self.out_proj = nn.Linear(d, d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.norm = StdLayerNorm(d, cfg.layer_norm_eps)
        self.pool_weight = nn.Parameter(torch.tensor(0.5))  # w1, on the pooled input
        self.res_weight = nn.Parameter(torch.tensor(0.5))  # w2, on the progressively pooled residual

    def left_pad(self, length: int) -> int:
        """Zeros to put in front so the windows tile the sequence exactly, as the authors pad."""
        if length < self.kernel_size:
            return self.kernel_size - length
        return -(length - self.kernel_size) % self.stride

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool1d(x.transpose(1, 2), self.kernel_size, self.stride).transpose(1, 2)

    def forward(self, x: torch.Tensor, x_res: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x_res None: the first layer, whose residual is its own input (pooled once, not twice)."""
        pad = self.left_pad(x.shape[1])
        if pad:
            x = F.pad(x, (0, 0, pad, 0))  # (B, L + pad, d)
            x_res = None if x_res is None else F.pad(x_res, (0, 0, pad, 0))
        x_pool = self.pool(x)  # (B, L', d)
        x_res = x_pool if x_res is None else self.pool(x_res)
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, L', d)
        h = self.dropout(F.gelu(self.out_proj(h)))
        return self.norm(h + self.pool_weight * x_pool + self.res_weight * x_res), x_res


class HierarchicalConvRec(nn.Module):
    def __init__(self, cfg: HierarchicalConvRecConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.item_encoder = ItemEncoder(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.interval_norm = StdLayerNorm(d + TIME_FEATURES, cfg.layer_norm_eps)
        self.interval_proj = nn.Linear(d + TIME_FEATURES, d)
        self.layers = nn.ModuleList(DownScaleLayer(cfg, k, s) for k, s in cfg.conv_schedule)
        # Modules the authors' model builds whose outputs never reach the logits: a user embedding
        # and its Linear(20 -> d) (handed to the conv stack, which ignores it), a Linear(4d -> d)
        # on the features, a Linear(d -> 1) and one spare LayerNorm per conv layer. They hold
        # parameters (and weight memory) in the authors' count, so they are kept, never computed.
        self.unused = nn.ModuleDict(
            {
                "user_emb": nn.Embedding(cfg.num_users + 1, cfg.user_dim, padding_idx=0),
                "user_proj": nn.Linear(cfg.user_dim, d),
                "feature_out": nn.Linear(4 * d, d),
                "time_linear": nn.Linear(d, 1),
                "layer_norms_out": nn.ModuleList(StdLayerNorm(d, cfg.layer_norm_eps) for _ in cfg.conv_schedule),
            }
        )

    def fuse_intervals(self, items: torch.Tensor, intervals: torch.Tensor, dropout: bool) -> torch.Tensor:
        """(B, N, d), (B, N, 3) -> (B, N, d); the authors drop out on the history side only."""
        x = F.gelu(torch.cat([items, intervals], dim=-1))  # (B, N, d + 3)
        if dropout:
            x = self.dropout(x)
        return F.gelu(self.interval_proj(self.interval_norm(x)))

    def score(self, batch: Batch) -> torch.Tensor:
        seq = batch["seq"]  # (B, L)
        real = (seq != 0).unsqueeze(-1)  # (B, L, 1)
        # Padded contexts are zeros in the authors' loader, so the first real interval is measured
        # from zero; zeroing them here makes that a property of the model, not of the data.
        context = batch["context"] * real  # (B, L, 6)
        times = context[..., :TIME_FEATURES]  # (B, L, 3)
        first = torch.ones_like(times[:, :1])
        intervals = torch.cat([first, times.diff(dim=1)], dim=1)  # (B, L, 3)
        x = self.fuse_intervals(self.item_encoder(seq, context), intervals, dropout=True) * real

        x_res = None
        for layer in self.layers:
            x, x_res = layer(x, x_res)  # the length shrinks by each layer's stride
        user = x.mean(dim=1)  # (B, d): the adaptive average pool to one position

        cand_context = batch["candidate_context"]  # (B, C, 6)
        cand_intervals = cand_context[..., :TIME_FEATURES] - times[:, -1:]  # to the last history item
        cands = self.item_encoder(batch["candidates"], cand_context)  # (B, C, d)
        cands = self.fuse_intervals(cands, cand_intervals, dropout=False)
        return (cands @ user.unsqueeze(-1)).squeeze(-1)  # (B, C)

    def forward(self, batch: Batch) -> torch.Tensor:
        logits = self.score(batch)  # (B, C), the positive is candidate 0
        return F.cross_entropy(logits, torch.zeros_like(logits[:, 0], dtype=torch.long))

    def predict(self, batch: Batch) -> torch.Tensor:
        return self.score(batch)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.cfg.lr, betas=self.cfg.betas, weight_decay=self.cfg.weight_decay, **fused_on_cuda(self))


def synthetic_context(days: torch.Tensor, num_years: torch.Tensor) -> torch.Tensor:
    """(...) integer day counts -> (..., 6) context, normalised as the authors' preprocessing does:
    year (0..1 over the span), month / 12, day / 31, day of week / 7, day of year / 365, week / 4.
    A calendar of twelve 31-day months stands in for the real one: only the shapes matter."""
    day_of_year = days % 365
    parts = (
        (days // 365) / num_years,
        (day_of_year // 31 + 1) / 12,
        (day_of_year % 31 + 1) / 31,
        (days % 7) / 7,
        day_of_year / 365,
        (day_of_year // 7 + 1) / 4,
    )
    return torch.stack(parts, dim=-1).float()


def make_batch(cfg: HierarchicalConvRecConfig, batch_size: int, seq_len: int, device, generator) -> Batch:
    """Left-padded histories with their contexts (zeros at padding, as the authors' loader pads),
    and ``cfg.num_candidates`` candidates, the positive first, all sharing the positive's context."""
    real = left_padded_lengths_mask(batch_size, seq_len, device, generator)  # (B, L)
    seq = random_items(batch_size, seq_len, cfg.num_items, device, generator) * real
    start = torch.randint(0, 365 * 5, (batch_size, 1), device=device, generator=generator)
    gaps = torch.randint(0, 8, (batch_size, seq_len + 1), device=device, generator=generator)
    days = start + gaps.cumsum(dim=1)  # (B, L + 1): non-decreasing; the last one is the target's
    num_years = (days.max() // 365).clamp(min=1)  # the span the year column is scaled to, on device
    context = synthetic_context(days[:, :-1], num_years) * real.unsqueeze(-1)  # (B, L, 6)
    target_context = synthetic_context(days[:, -1:], num_years)  # (B, 1, 6)
    candidates = random_items(batch_size, cfg.num_candidates, cfg.num_items, device, generator)
    return {
        "seq": seq,
        "context": context,
        "candidates": candidates,
        "candidate_context": target_context.expand(-1, cfg.num_candidates, -1).contiguous(),  # (B, C, 6)
    }
