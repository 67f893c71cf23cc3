"""TiSASRec (Li, Wang & McAuley, WSDM 2020): causal self-attention aware of time intervals.

Follows the authors' PyTorch port, pmixer/TiSASRec.pytorch (model.py, main.py, utils.py at commit
b18341f; the code last changed in 5ab2397), a port of the paper's TensorFlow code
(JiachengLi1995/TiSASRec). SASRec's blocks, with attention that adds to every key and value an
absolute-position embedding and an embedding of the clipped interval between the two interactions:

    e_ij = q_i . (k_j + P^K_j + R^K_ij) / sqrt(d),   z_i = sum_j softmax_j(e_ij) (v_j + P^V_j + R^V_ij)

R^K, R^V: (B, L, L, d) lookups of the (B, L, L) interval matrix, one pair per step shared by every
block: memory and FLOPs O(B L^2 d), the positive control of the attention family. The item input is
scaled by sqrt(d) and gets no positional embedding; positions enter through P^K and P^V only.

The interval matrix |t_i - t_j| clipped at ``time_span`` is built by the port's data loader on the
host (utils.computeRePos, in each user's time unit: timestamps minus the user's first, divided by
the user's smallest gap, plus 1; padding has time 0); the training step consumes it, so it is part
of the batch, built on the device by ``make_batch``.

As in the port: padded keys are attended (only padded queries are masked, and padded positions are
zeroed after every block; the TF original also masks padded keys, ``mask_padding_keys``), and
absolute positions count from the left edge of the window, padding included.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.base import Batch, fused_on_cuda, left_padded_lengths_mask, next_item_bce, random_items
from models.next_item import PointWiseFeedForward

# The port's masked-score value: finite, so a fully masked row gives a uniform softmax, not NaN.
MASKED_SCORE = -(2.0**32) + 1
# Synthetic interactions are this many time units apart at most (uniform from 0): with L = 50 about
# half of the intervals exceed the default span of 256 and are clipped, as on ML-1M.
SYNTHETIC_MAX_GAP = 16


@dataclass
class TiSASRecConfig:
    num_items: int = 3_416  # ML-1M, the port's dataset
    max_len: int = 50  # the port's default; its pretrained ML-1M model uses 200
    d_model: int = 50
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    time_span: int = 256  # intervals are clipped here: time_span + 1 interval embeddings
    # The loss adds l2_emb * ||W|| (the Frobenius norm, not its square) for each of the five tables.
    l2_emb: float = 5e-5
    layer_norm_eps: float = 1e-8
    mask_padding_keys: bool = False  # True: the TF original's key masking; the port attends padded keys
    num_candidates: int = 101  # inference: 1 positive + 100 sampled negatives
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)


def time_interval_matrix(timestamps: torch.Tensor, time_span: int) -> torch.Tensor:
    """(B, L) integer timestamps (0 at padding) -> (B, L, L) |t_i - t_j| clipped at ``time_span``."""
    return (timestamps.unsqueeze(2) - timestamps.unsqueeze(1)).abs().clamp(max=time_span)


class TimeAwareAttention(nn.Module):
    """Q, K, V projections and no output projection, as in the port."""

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = nn.Dropout(dropout)
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)

    def forward(
        self,
        query: torch.Tensor,
        key_value: torch.Tensor,
        pos_k: torch.Tensor,
        pos_v: torch.Tensor,
        time_k: torch.Tensor,
        time_v: torch.Tensor,
        masked: torch.Tensor,
    ) -> torch.Tensor:
        """query, key_value, pos_k, pos_v: (B, L, d); time_k, time_v: (B, L, L, d);
        masked: (B or 1, L, L) bool, True where query i must not see key j -> (B, L, d)."""
        b, length, d = query.shape
        h, dh = self.num_heads, d // self.num_heads
        q = self.q_proj(query).view(b, length, h, dh)  # (B, L, h, dh)
        # q . k_j + q . P^K_j is one product with k_j + P^K_j; likewise for the values below.
        k = (self.k_proj(key_value) + pos_k).view(b, length, h, dh)
        v = (self.v_proj(key_value) + pos_v).view(b, length, h, dh)
        time_k = time_k.view(b, length, length, h, dh)  # (B, L, L, h, dh), a view: no copy
        time_v = time_v.view(b, length, length, h, dh)
        scores = torch.einsum("bihd,bjhd->bhij", q, k)  # (B, h, L, L)
        scores = scores + torch.einsum("bihd,bijhd->bhij", q, time_k)
        scores = (scores / math.sqrt(dh)).masked_fill(masked.unsqueeze(1), MASKED_SCORE)
        probs = self.dropout(scores.softmax(dim=-1))  # (B, h, L, L)
        out = torch.einsum("bhij,bjhd->bihd", probs, v)  # (B, L, h, dh)
        out = out + torch.einsum("bhij,bijhd->bihd", probs, time_v)
        return out.reshape(b, length, d)


class TiSASRecBlock(nn.Module):
    def __init__(self, cfg: TiSASRecConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attention = TimeAwareAttention(cfg.d_model, cfg.num_heads, cfg.dropout)
        self.ffn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.ffn = PointWiseFeedForward(cfg.d_model, cfg.dropout)  # the port's two 1x1 convolutions

    def forward(self, x: torch.Tensor, real: torch.Tensor, *relations: torch.Tensor) -> torch.Tensor:
        # Query = the normalised input, keys and values = the raw input, residual from the query.
        q = self.attention_norm(x)
        x = q + self.attention(q, x, *relations)
        x = self.ffn(self.ffn_norm(x))
        return x * real.unsqueeze(-1)  # padded positions are zeroed after every block


class TiSASRec(nn.Module):
    def __init__(self, cfg: TiSASRecConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.item_emb = nn.Embedding(cfg.num_items + 1, d, padding_idx=0)
        self.abs_pos_k = nn.Embedding(cfg.max_len, d)  # position 0 = the left edge, not padding
        self.abs_pos_v = nn.Embedding(cfg.max_len, d)
        self.time_k = nn.Embedding(cfg.time_span + 1, d)
        self.time_v = nn.Embedding(cfg.time_span + 1, d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(TiSASRecBlock(cfg) for _ in range(cfg.num_blocks))
        self.final_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The port's main.py: xavier_uniform_ on every parameter it accepts (those of 2+ dims; the
        1x1 convolutions' (d, d, 1) weights have the fans of our (d, d) linears); biases and
        LayerNorms keep PyTorch's defaults. The padding row is overwritten too and not re-zeroed:
        padded inputs are zeroed and padded targets leave the loss, so it never matters."""
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.xavier_uniform_(p)

    def encode(self, batch: Batch) -> torch.Tensor:
        """batch["seq"]: (B, L) item ids, 0 = padding; batch["time_matrix"]: (B, L, L) clipped
        intervals -> (B, L, d); position t sees items and intervals of positions <= t."""
        seq = batch["seq"]
        b, length = seq.shape
        real = seq != 0
        x = self.dropout(self.item_emb(seq) * math.sqrt(self.cfg.d_model)) * real.unsqueeze(-1)
        positions = torch.arange(length, device=seq.device).expand(b, length)
        pos_k = self.dropout(self.abs_pos_k(positions))  # (B, L, d)
        pos_v = self.dropout(self.abs_pos_v(positions))
        # make_batch clips already, as the port's loader does; clipping again keeps any interval
        # matrix a valid index (one integer op on (B, L, L), next to the (B, L, L, d) lookups).
        intervals = batch["time_matrix"].clamp(max=self.cfg.time_span)
        time_k = self.dropout(self.time_k(intervals))  # (B, L, L, d)
        time_v = self.dropout(self.time_v(intervals))
        future = torch.ones(length, length, dtype=torch.bool, device=seq.device).triu(1)
        masked = future.unsqueeze(0)  # (1, L, L)
        if self.cfg.mask_padding_keys:
            masked = masked | ~real.unsqueeze(1)  # (B, L, L)
        for block in self.blocks:
            x = block(x, real, pos_k, pos_v, time_k, time_v, masked)
        return self.final_norm(x)

    def embedding_norms(self) -> torch.Tensor:
        tables = (self.item_emb, self.abs_pos_k, self.abs_pos_v, self.time_k, self.time_v)
        return sum(torch.linalg.vector_norm(t.weight) for t in tables)

    def forward(self, batch: Batch) -> torch.Tensor:
        """The port's loss: BCE of the next item and of one sampled negative at every real
        position, plus l2_emb times the norms of the embedding tables."""
        h = self.encode(batch)  # (B, L, d)
        pos_logits = (h * self.item_emb(batch["pos"])).sum(-1)  # (B, L)
        neg_logits = (h * self.item_emb(batch["neg"])).sum(-1)
        return next_item_bce(pos_logits, neg_logits, batch["pos"] != 0) + self.cfg.l2_emb * self.embedding_norms()

    def predict(self, batch: Batch) -> torch.Tensor:
        h = self.encode(batch)[:, -1]  # (B, d): the last position has seen the whole history
        return (self.item_emb(batch["candidates"]) @ h.unsqueeze(-1)).squeeze(-1)  # (B, C)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.cfg.lr, betas=self.cfg.betas, **fused_on_cuda(self))


def synthetic_timestamps(real: torch.Tensor, generator) -> torch.Tensor:
    """(B, L) bool real positions -> (B, L) int64 times in the port's per-user unit: 1 at the first
    real interaction, then increasing by 0..SYNTHETIC_MAX_GAP, and 0 at padding."""
    gaps = torch.randint(0, SYNTHETIC_MAX_GAP + 1, real.shape, device=real.device, generator=generator)
    first = real & ~F.pad(real[:, :-1], (1, 0))  # the first real position of each row
    gaps = gaps * (real & ~first)
    return (1 + gaps.cumsum(dim=1)) * real


def make_batch(cfg: TiSASRecConfig, batch_size: int, seq_len: int, device, generator) -> Batch:
    """Left-padded histories, their clipped (B, L, L) interval matrix, the next item and one sampled
    negative per position (0 at padding), and ``cfg.num_candidates`` candidates for inference."""
    real = left_padded_lengths_mask(batch_size, seq_len, device, generator)
    seq = random_items(batch_size, seq_len, cfg.num_items, device, generator) * real
    time_matrix = time_interval_matrix(synthetic_timestamps(real, generator), cfg.time_span)
    pos = random_items(batch_size, seq_len, cfg.num_items, device, generator) * real
    neg = random_items(batch_size, seq_len, cfg.num_items, device, generator) * real
    candidates = random_items(batch_size, cfg.num_candidates, cfg.num_items, device, generator)
    return {"seq": seq, "time_matrix": time_matrix, "pos": pos, "neg": neg, "candidates": candidates}
