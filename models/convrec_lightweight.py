"""ConvRec, lightweight convolution (Tanjim, UCSD): SASRec with self-attention replaced by a causal
lightweight convolution.

A lightweight convolution (Wu et al., 2019, fairseq ``LightweightConv1d``) is a depthwise 1-D
convolution whose kernel is shared by the d/H channels of each of H heads and softmax-normalised
over its width, with dropout on the normalised kernel. Causal left padding of k - 1 keeps position t
blind to items after t. It runs as a real grouped convolution: memory and time O(B L d k), never the
(B H, L, L + k - 1) band matrices of fairseq's "expanded" path.

The paper's default block has no residual connections: its ablation (Table 4, ML-1M) lists "RC",
residual connections added, as a variant that scores lower in NDCG@10, and section 5.5 calls them
redundant in a one-block model. ``residual=True`` gives that variant, SASRec's two residuals:
around the convolution (from its normalised input, as SASRec's attention) and around the FFN.

There is no public code, so the weights keep PyTorch's initialisation rather than SASRec's port's
xavier_normal_: the paper embeds the padding item as "a constant zero vector", which the zero
padding rows of nn.Embedding are.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.base import fused_on_cuda
from models.next_item import NextItemModel, PointWiseFeedForward
from models.next_item import make_batch as make_batch  # same inputs as SASRec: next item + negative


@dataclass
class LightweightConvRecConfig:
    num_items: int = 57_289
    max_len: int = 50  # per dataset: PRESETS
    d_model: int = 50
    num_blocks: int = 1
    num_heads: int = 5  # 5 heads of d/H = 10 channels each, one kernel per head
    kernel_size: int = 31
    dropout: float = 0.2
    weight_dropout: float = 0.2  # dropout on the softmax-normalised kernel
    layer_norm_eps: float = 1e-8
    residual: bool = False  # the paper's default; True: Table 4's "RC" variant
    num_candidates: int = 101
    lr: float = 1e-3


# The paper's section 5.2: dropout 0.2 everywhere, a longer history on ML-1M only.
PRESETS: dict[str, dict] = {
    "beauty": {"max_len": 50},
    "games": {"max_len": 50},
    "steam": {"max_len": 50},
    "ml-1m": {"max_len": 200},
}


class LightweightConv1d(nn.Module):
    """(B, L, d) -> (B, L, d): causal depthwise conv with H softmax-normalised kernels of width k."""

    def __init__(self, d_model: int, num_heads: int, kernel_size: int, weight_dropout: float):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.d_model = d_model
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(num_heads, kernel_size))  # H x k: independent of L
        self.weight_dropout = weight_dropout
        nn.init.xavier_uniform_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        num_heads = self.weight.shape[0]
        kernel = F.dropout(self.weight.softmax(dim=-1), p=self.weight_dropout, training=self.training)
        # Channel c uses the kernel of head c mod H, as fairseq's (B, C/H, H, T) view does.
        kernel = kernel.repeat(self.d_model // num_heads, 1).unsqueeze(1)  # (d, 1, k)
        x = F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0))  # (B, d, L + k - 1), causal
        return F.conv1d(x, kernel, groups=self.d_model).transpose(1, 2)  # (B, L, d)


class LightweightConvBlock(nn.Module):
    """SASRec's block with the attention swapped for the lightweight convolution, its residuals
    only with ``cfg.residual``."""

    def __init__(self, cfg: LightweightConvRecConfig):
        super().__init__()
        self.residual = cfg.residual
        self.conv_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.conv = LightweightConv1d(cfg.d_model, cfg.num_heads, cfg.kernel_size, cfg.weight_dropout)
        self.dropout = nn.Dropout(cfg.dropout)
        self.ffn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.ffn = PointWiseFeedForward(cfg.d_model, cfg.dropout, residual=cfg.residual)

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        q = self.conv_norm(x)
        x = self.dropout(self.conv(q))  # (B, L, d), causal
        if self.residual:
            x = q + x
        x = self.ffn(self.ffn_norm(x))
        return x * real.unsqueeze(-1)


class LightweightConvRec(NextItemModel):
    def __init__(self, cfg: LightweightConvRecConfig):
        super().__init__(cfg, LightweightConvBlock)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.cfg.lr, **fused_on_cuda(self))
