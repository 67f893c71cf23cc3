"""The embedding and prediction layers SASRec and the lightweight ConvRec share.

Scaled item embedding + learned positional embedding -> dropout -> padded positions zeroed (the
original SASRec's timeline mask, whatever the padding rows of the tables hold) -> a stack of
blocks -> final LayerNorm; training scores the next item and one sampled negative at every position with BCE
on dot products with the shared item embedding; inference scores candidates from the last position.
The models differ only in their blocks, initialisation and optimizer.
"""
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.base import Batch, left_padded_lengths_mask, next_item_bce, random_items


class PointWiseFeedForward(nn.Module):
    """Two position-wise d -> d maps with ReLU; with ``residual`` the input is added inside, as in
    SASRec."""

    def __init__(self, d_model: int, dropout: float, residual: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_model)
        self.fc2 = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.fc2(self.dropout(F.relu(self.fc1(x)))))
        return x + out if self.residual else out


class NextItemModel(nn.Module):
    """``cfg`` has num_items, max_len, d_model, num_blocks, dropout, layer_norm_eps; ``block(cfg)``
    builds one block, a module mapping (x (B, L, d), real (B, L)) -> (B, L, d)."""

    def __init__(self, cfg, block: Callable[[Any], nn.Module]):
        super().__init__()
        self.cfg = cfg
        self.d_model = cfg.d_model
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len + 1, cfg.d_model, padding_idx=0)  # position 0 = padding
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(block(cfg) for _ in range(cfg.num_blocks))
        self.final_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)

    def encode(self, batch: Batch) -> torch.Tensor:
        """batch["seq"]: (B, L) item ids, 0 = padding -> (B, L, d); position t sees items <= t."""
        seq = batch["seq"]
        real = seq != 0
        x = self.item_emb(seq) * math.sqrt(self.d_model)
        positions = torch.arange(1, seq.shape[1] + 1, device=seq.device) * real  # (B, L), 0 at padding
        x = self.emb_dropout(x + self.pos_emb(positions)) * real.unsqueeze(-1)
        for block in self.blocks:
            x = block(x, real)
        return self.final_norm(x)

    def forward(self, batch: Batch) -> torch.Tensor:
        h = self.encode(batch)  # (B, L, d)
        pos_logits = (h * self.item_emb(batch["pos"])).sum(-1)  # (B, L)
        neg_logits = (h * self.item_emb(batch["neg"])).sum(-1)
        return next_item_bce(pos_logits, neg_logits, batch["pos"] != 0)

    def predict(self, batch: Batch) -> torch.Tensor:
        h = self.encode(batch)[:, -1]  # (B, d): the last position has seen the whole history
        return (self.item_emb(batch["candidates"]) @ h.unsqueeze(-1)).squeeze(-1)  # (B, C)


def make_batch(cfg, batch_size: int, seq_len: int, device, generator) -> Batch:
    """Left-padded histories, the next item and one sampled negative per position (0 at padding),
    and ``cfg.num_candidates`` candidates for inference."""
    real = left_padded_lengths_mask(batch_size, seq_len, device, generator)
    seq = random_items(batch_size, seq_len, cfg.num_items, device, generator) * real
    pos = random_items(batch_size, seq_len, cfg.num_items, device, generator) * real
    neg = random_items(batch_size, seq_len, cfg.num_items, device, generator) * real
    candidates = random_items(batch_size, cfg.num_candidates, cfg.num_items, device, generator)
    return {"seq": seq, "pos": pos, "neg": neg, "candidates": candidates}
