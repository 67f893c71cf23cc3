"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the item history.

Follows the reference PyTorch port at pmixer/SASRec.pytorch@756f742 (model.py and main.py, at the
repository root then): blocks of [LayerNorm -> attention whose query is the normalised input and
whose keys/values are the raw input -> residual -> LayerNorm -> point-wise FFN with its own
residual], padded positions zeroed after the embedding and after each block (the "timeline mask").
Its next commit (33bc1d8, June 2024) counts positions from 1 with a zero padding row in the
positional table, re-zeroes the padding rows after initialisation and drops the timeline mask, so
padded positions carry non-zero values into every later block; the 2025 commits then turned the
blocks post-LN.

Initialisation is main.py's: xavier_normal_ on every parameter of two or more dimensions, the
one-dimensional ones (biases, LayerNorm) left to PyTorch's defaults by its try/except. Nothing
re-zeroes the padding rows afterwards: row 0 of the item table keeps its random values (and, as a
padding_idx row, never gets a gradient); the timeline mask keeps it away from every output.

Positions: 756f742 looks up row t of a (max_len, d) table for window slot t. Here slot t reads row
t + 1 of a (max_len + 1, d) table and padded slots read row 0, which the timeline mask then zeroes:
the same function with one row that reaches no output, so the parameter count is the current
code's (2,898,150 at Beauty, L = 50) where 756f742 has 2,898,100.
"""
import math
from dataclasses import dataclass

import torch
from torch import nn

from models.attention import MultiHeadAttention
from models.base import fused_on_cuda
from models.next_item import NextItemModel, PointWiseFeedForward
from models.next_item import make_batch as make_batch


@dataclass
class SASRecConfig:
    num_items: int = 57_289
    max_len: int = 50  # per dataset: PRESETS
    d_model: int = 50
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2  # per dataset: PRESETS
    layer_norm_eps: float = 1e-8
    attention: str = "naive"  # "naive" materialises (B, h, L, L) as the original code does
    num_candidates: int = 101  # inference: 1 positive + 100 sampled negatives
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)


# The paper's settings per dataset (restated in the lightweight ConvRec paper's section 5.2; pmixer's
# README runs ML-1M so): the sparse sets drop out more and keep a shorter history.
PRESETS: dict[str, dict] = {
    "beauty": {"max_len": 50, "dropout": 0.5},
    "games": {"max_len": 50, "dropout": 0.5},
    "steam": {"max_len": 50, "dropout": 0.5},
    "ml-1m": {"max_len": 200, "dropout": 0.2},
}


def xavier_normal_std(fan_in: int, fan_out: int) -> float:
    return math.sqrt(2.0 / (fan_in + fan_out))


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
        super().__init__(cfg, SASRecBlock)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """main.py's xavier_normal_ over the parameters of the original's shapes."""
        d = self.cfg.d_model
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.xavier_normal_(p)
        # The original's positional table has max_len rows, one fewer than this one.
        nn.init.normal_(self.pos_emb.weight, std=xavier_normal_std(d, self.cfg.max_len))
        for block in self.blocks:
            attention = block.attention
            # torch MultiheadAttention packs Q, K and V in one (3d, d) in_proj_weight, whose fans
            # set the std, and its own reset zeroes in_proj_bias and out_proj.bias.
            for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
                nn.init.normal_(proj.weight, std=xavier_normal_std(d, 3 * d))
            for proj in (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj):
                nn.init.zeros_(proj.bias)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.cfg.lr, betas=self.cfg.betas, **fused_on_cuda(self))
