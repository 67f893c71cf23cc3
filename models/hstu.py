"""HSTU (Zhai et al., ICML 2024): pointwise-attention sequential transduction units.

Follows the authors' reference for their public sequential experiments, meta-recsys/
generative-recommenders at commit db1bf8f: generative_recommenders/research/modeling/sequential/
hstu.py (HSTU, SequentialTransductionUnitJagged, RelativeBucketedTimeAndPositionBasedBias), the
modules research/trainer/train.py builds around it (item embedding, learnable positional input,
L2-normalised output, sampled softmax over local negatives, AdamW), and the ML-1M configuration
configs/ml-1m/hstu-sampled-softmax-n128-final.gin. One block, for x (B, L, d):

    U, V, Q, K = split(SiLU(LayerNorm(x) @ W_uvqk))                  no bias, LayerNorm without affine
    A = SiLU(Q K^T + rab_pos(j - i) + rab_time(bucket(t_next_i - t_j))) / n,  causal   (B, h, L, L)
    x = x + Linear(Dropout(U * LayerNorm(A V)))

A is pointwise: no softmax, divided by the window length n (a constant, the configured maximum,
not each user's length). The dense masked attention materialises (B, h, L, L) per block, O(L^2).

Simplifications, none changing the function at the real positions:
- The authors run jagged tensors (fbgemm) and pad q, k, v to dense (B, n, ...) inside the
  attention; here the batch is dense and left-padded, and padded keys contribute nothing because
  their values are zeroed, as the authors' zero padding does. A jagged variant saves the padded
  rows' projections but not the L^2 of the dense attention for full-length sequences.
- Positions count from the first real item (the authors' histories start at position 0), and the
  relative bias depends on j - i only, so left padding is invisible.
- The authors' tensors are 11 slots wider than the history (the target and 10 generative-output
  slots: gr_output_length = 10), with position tables to match; here the window is the history
  itself and the next item of every position, the target included, is in ``pos``. ``max_len``
  sizes the tables and the divisor n: 211 reproduces the authors' ML-1M tables exactly.
- The time buckets have no parameters: computed once per step, not once per block.
- Negatives are drawn by ``make_batch`` (uniform over the items, as the authors' local sampler
  draws them inside the step), so the step is a function of its batch.
The authors' timestamps are Unix seconds; the query at position i is timed by the next
interaction (the authors shift the timestamps by one), given here as ``next_timestamps``.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.base import Batch, fused_on_cuda, left_padded_lengths_mask, random_items

# Synthetic interactions are up to this many seconds apart (uniform from 0): about 18 hours.
SYNTHETIC_MAX_GAP_S = 2**16
# The authors mask a sampled negative equal to the positive by this logit (after the temperature).
COLLIDING_NEGATIVE_LOGIT = -5e4


@dataclass
class HSTUConfig:
    num_items: int = 3_416  # the ML-1M profile; the authors index raw MovieLens ids (3,953 rows)
    max_len: int = 200  # ML-1M history; the authors' tensors are 211 wide (see the module docstring)
    d_model: int = 50  # item_embedding_dim
    num_blocks: int = 2
    num_heads: int = 1
    attention_dim: int = 50  # dqk, per head
    linear_dim: int = 50  # dv, per head
    dropout: float = 0.2  # on the input embeddings
    linear_dropout: float = 0.2  # on U * LayerNorm(A V), before the output projection
    num_time_buckets: int = 128
    # bucket = floor(ln(max(|dt|, 1)) / 0.301): the natural log, though 0.301 is log10(2).
    time_bucket_divisor: float = 0.301
    layer_norm_eps: float = 1e-6
    num_negatives: int = 128
    temperature: float = 0.05
    l2_norm_eps: float = 1e-6
    num_candidates: int = 101  # inference: 1 positive + 100 sampled negatives (the authors rank all items)
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0


def l2_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=eps)


def time_buckets(cfg: HSTUConfig, timestamps: torch.Tensor, next_timestamps: torch.Tensor) -> torch.Tensor:
    """(B, L) times of the items and of each position's next interaction -> (B, L, L) bucket of
    next_timestamps[i] - timestamps[j], in [0, num_time_buckets]."""
    gap = (next_timestamps.unsqueeze(2) - timestamps.unsqueeze(1)).abs().clamp(min=1)
    buckets = (torch.log(gap) / cfg.time_bucket_divisor).long()
    return buckets.clamp(min=0, max=cfg.num_time_buckets)


class STULayer(nn.Module):
    """One sequential transduction unit, with its own relative position and time bias."""

    def __init__(self, cfg: HSTUConfig):
        super().__init__()
        self.cfg = cfg
        h, dqk, dv = cfg.num_heads, cfg.attention_dim, cfg.linear_dim
        self.uvqk = nn.Parameter(torch.empty(cfg.d_model, 2 * h * dv + 2 * h * dqk))
        self.out = nn.Linear(h * dv, cfg.d_model)
        self.dropout = nn.Dropout(cfg.linear_dropout)
        # Offsets j - i from -(max_len - 1) to max_len - 1; the causal mask reaches only j <= i.
        self.rel_pos_bias = nn.Parameter(torch.empty(2 * cfg.max_len - 1))
        self.rel_time_bias = nn.Parameter(torch.empty(cfg.num_time_buckets + 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.uvqk, std=0.02)
        nn.init.xavier_uniform_(self.out.weight)
        nn.init.normal_(self.rel_pos_bias, std=0.02)
        nn.init.normal_(self.rel_time_bias, std=0.02)

    def position_bias(self, length: int) -> torch.Tensor:
        """(L, L) bias of offset j - i, [i, j] = rel_pos_bias[max_len - 1 + j - i]: the table's middle
        2L - 1 weights laid out as a Toeplitz matrix by padding, tiling and reshaping, as the
        authors build it. No gather: its backward is a sum over the tiles, where an index tensor's
        backward (``index_put_`` with accumulation) sorts L^2 indices on CUDA."""
        middle = self.rel_pos_bias[self.cfg.max_len - length : self.cfg.max_len + length - 1]  # (2L - 1,)
        tiled = F.pad(middle, (0, length)).repeat(length)[:-length]  # rows of 3L - 2, shifted by one
        return tiled.view(length, 3 * length - 2)[:, length - 1 : 2 * length - 1]

    def time_bias(self, buckets: torch.Tensor) -> torch.Tensor:
        """(B, L, L) buckets -> their weights, looked up with ``index_select`` as the authors do: its
        backward adds the B L^2 gradients into the 129 weights with atomics."""
        return self.rel_time_bias.index_select(0, buckets.reshape(-1)).view(buckets.shape)

    def forward(
        self, x: torch.Tensor, real: torch.Tensor, buckets: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """x: (B, L, d); real: (B, L) bool; buckets: (B, L, L) time buckets; scale: (L, L), 1 / n
        where j <= i, else 0 -> (B, L, d)."""
        cfg = self.cfg
        b, length, d = x.shape
        h, dqk, dv = cfg.num_heads, cfg.attention_dim, cfg.linear_dim
        normed = F.layer_norm(x, (d,), eps=cfg.layer_norm_eps)
        u, v, q, k = F.silu(normed @ self.uvqk).split([h * dv, h * dv, h * dqk, h * dqk], dim=-1)
        v = v * real.unsqueeze(-1)  # padded keys add nothing, as the authors' zero-padded values
        scores = torch.einsum("bnhd,bmhd->bhnm", q.view(b, length, h, dqk), k.view(b, length, h, dqk))  # (B, h, L, L)
        bias = self.position_bias(length) + self.time_bias(buckets)  # (B, L, L)
        attn = F.silu(scores + bias.unsqueeze(1)) * scale  # (B, h, L, L)
        av = torch.einsum("bhnm,bmhd->bnhd", attn, v.view(b, length, h, dv)).reshape(b, length, h * dv)
        gated = u * F.layer_norm(av, (h * dv,), eps=cfg.layer_norm_eps)  # (B, L, h dv)
        return self.out(self.dropout(gated)) + x


class HSTU(nn.Module):
    def __init__(self, cfg: HSTUConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)  # position 0 = the first real item
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(STULayer(cfg) for _ in range(cfg.num_blocks))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As the authors' modules: item table truncated normal (std 0.02, cut at 2 std, the padding
        row included; its gradient is zero). The positional table is initialised truncated normal
        by its module and then overwritten by HSTU.reset_params' xavier_normal_, so xavier it is."""
        nn.init.trunc_normal_(self.item_emb.weight, std=0.02, a=-0.04, b=0.04)
        nn.init.xavier_normal_(self.pos_emb.weight)

    def encode(self, batch: Batch) -> torch.Tensor:
        """batch["seq"]: (B, L) item ids, 0 = padding; batch["timestamps"], batch["next_timestamps"]:
        (B, L) times of the items and of the interaction after each -> (B, L, d) L2-normalised,
        0 at padding; position t depends only on positions <= t."""
        cfg = self.cfg
        seq = batch["seq"]
        length = seq.shape[1]
        real = seq != 0
        positions = (real.cumsum(dim=1) - 1).clamp(min=0)  # (B, L), from the first real item
        x = self.item_emb(seq) * math.sqrt(cfg.d_model) + self.pos_emb(positions)
        x = self.emb_dropout(x) * real.unsqueeze(-1)  # (B, L, d)
        buckets = time_buckets(cfg, batch["timestamps"], batch["next_timestamps"])  # (B, L, L)
        causal = torch.ones(length, length, device=seq.device, dtype=x.dtype).tril()
        scale = causal / cfg.max_len  # the pointwise attention's 1 / n and its causal mask in one
        for layer in self.layers:
            x = layer(x, real, buckets, scale)
        return l2_normalize(x * real.unsqueeze(-1), cfg.l2_norm_eps)

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        return l2_normalize(self.item_emb(ids), self.cfg.l2_norm_eps)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Sampled softmax: at every real position the next item against ``num_negatives`` sampled
        items, cosine similarities divided by the temperature; mean over real positions."""
        cfg = self.cfg
        user = self.encode(batch)  # (B, L, d)
        pos, neg = batch["pos"], batch["neg"]  # (B, L), (B, L, R)
        pos_logits = (user * self.item_vectors(pos)).sum(-1, keepdim=True) / cfg.temperature  # (B, L, 1)
        neg_logits = torch.einsum("bld,blrd->blr", user, self.item_vectors(neg)) / cfg.temperature  # (B, L, R)
        neg_logits = neg_logits.masked_fill(neg == pos.unsqueeze(-1), COLLIDING_NEGATIVE_LOGIT)
        losses = -torch.cat([pos_logits, neg_logits], dim=-1).log_softmax(dim=-1)[..., 0]  # (B, L)
        # Weighted by the real positions rather than selected: selecting makes the host wait.
        weight = (pos != 0).to(losses.dtype)
        return (losses * weight).sum() / weight.sum()

    def predict(self, batch: Batch) -> torch.Tensor:
        """Cosine similarity of the last position with each candidate, as the authors rank items."""
        user = self.encode(batch)[:, -1]  # (B, d)
        return (self.item_vectors(batch["candidates"]) @ user.unsqueeze(-1)).squeeze(-1)  # (B, C)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(), lr=self.cfg.lr, betas=self.cfg.betas, weight_decay=self.cfg.weight_decay,
            **fused_on_cuda(self),
        )


def make_batch(cfg: HSTUConfig, batch_size: int, seq_len: int, device, generator) -> Batch:
    """Left-padded histories with increasing Unix-second timestamps, each position's next item and
    the time of that interaction, ``cfg.num_negatives`` sampled items per position (all 0 at
    padding), and ``cfg.num_candidates`` candidates for inference."""
    real = left_padded_lengths_mask(batch_size, seq_len, device, generator)
    seq = random_items(batch_size, seq_len, cfg.num_items, device, generator) * real
    pos = random_items(batch_size, seq_len, cfg.num_items, device, generator) * real
    negatives = random_items(batch_size, seq_len * cfg.num_negatives, cfg.num_items, device, generator)
    neg = negatives.view(batch_size, seq_len, cfg.num_negatives) * real.unsqueeze(-1)
    # Times of the L history items and of the target after them: (B, L + 1), 0 at padding.
    start = torch.randint(0, 2**30, (batch_size, 1), device=device, generator=generator)
    gaps = torch.randint(0, SYNTHETIC_MAX_GAP_S + 1, (batch_size, seq_len + 1), device=device, generator=generator)
    times = start + (gaps * F.pad(real, (0, 1), value=True)).cumsum(dim=1)
    timestamps = times[:, :-1] * real
    next_timestamps = times[:, 1:] * real
    candidates = random_items(batch_size, cfg.num_candidates, cfg.num_items, device, generator)
    return {
        "seq": seq, "timestamps": timestamps, "next_timestamps": next_timestamps,
        "pos": pos, "neg": neg, "candidates": candidates,
    }
