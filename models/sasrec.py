"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item history.

Follows the reference PyTorch port (pmixer/SASRec.pytorch): blocks of [LayerNorm -> attention whose
query is the normalised input and whose keys/values are the raw input -> residual -> LayerNorm ->
point-wise FFN with its own residual], padded positions zeroed after each block.
"""
from dataclasses import dataclass

import torch
from torch import nn

from models.base import fused_on_cuda
from models.attention import MultiHeadAttention
from models.next_item import NextItemModel, PointWiseFeedForward
from models.next_item import make_batch as make_batch


@dataclass
class SASRecConfig:
    num_items: int = 57_289
    max_len: int = 50  # 200 on ML-1M
    d_model: int = 50
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2  # 0.2 on ML-1M, 0.5 on the sparse Amazon sets
    layer_norm_eps: float = 1e-8
    attention: str = "naive"  # "naive" materialises (B, h, L, L) as the original code does
    num_candidates: int = 101  # inference: 1 positive + 100 sampled negatives
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)


class SASRecBlock(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attention = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.dropout, cfg.attention)
        self.ffn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.ffn = PointWiseFeedForward(cfg.d_model, cfg.dropout)

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        q = self.attention_norm(x)
        x = q + self.attention(q, x, causal=True)
        x = self.ffn(self.ffn_norm(x))
        return x * real.unsqueeze(-1)  # padded positions stay zero, as the original's timeline mask


class SASRec(NextItemModel):
    def __init__(self, cfg: SASRecConfig):
        super().__init__(cfg.num_items, cfg.max_len, cfg.d_model, cfg.dropout, cfg.layer_norm_eps)
        self.cfg = cfg
        self.blocks.extend(SASRecBlock(cfg) for _ in range(cfg.num_blocks))

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.cfg.lr, betas=self.cfg.betas, **fused_on_cuda(self))
