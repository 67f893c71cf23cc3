"""Multi-head attention with two interchangeable backends.

``naive`` materialises the (B, h, Lq, Lk) score and probability tensors, as the authors' code does
(torch MultiheadAttention with weights, or explicit matmul + softmax): memory O(Lq Lk).
``sdpa`` calls ``scaled_dot_product_attention``, which picks a fused kernel (flash or
memory-efficient) that computes the same function without keeping those tensors: memory O(Lq + Lk).
A query row whose every key is masked outputs zeros in both (and gets zero gradients), as the
fused kernels give, not the NaN of a softmax over -inf; or, with ``fully_masked="uniform"``, the
mean of all values, as code that masks with a large finite score (CARCA's -2**32 + 1) gives.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.base import check_attention_backend

FULLY_MASKED = ("zero", "uniform")  # what a query row with every key masked outputs


# The fused kernels (flash, memory-efficient) need a head size that is a multiple of 8; for any
# other size PyTorch silently falls back to the math kernel, which materialises (B, h, Lq, Lk).
FUSED_HEAD_MULTIPLE = 8


def _fused_attention(q, k, v, *, causal: bool, key_padding_mask, dropout_p: float, fully_masked: str) -> torch.Tensor:
    """scaled_dot_product_attention, with the head size padded to a multiple of 8 when needed.

    Zero columns in q and k leave q k^T unchanged and zero columns in v only add output columns,
    which are dropped; the scale stays 1 / sqrt(true head size). SASRec (d 50, 1 head) and CARCA
    (d 90) would otherwise never reach a fused kernel.

    A boolean mask gives zeros for a row with no key. For "uniform" the mask is additive instead,
    the lowest finite score at masked keys: next to a real key they get zero weight, and in a row
    with none the score is absorbed (s + min == min in floating point), so every key weighs the same.
    """
    head_dim = q.shape[-1]
    pad = -head_dim % FUSED_HEAD_MULTIPLE
    if pad:
        q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
    mask = None
    if key_padding_mask is not None:
        mask = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Lk), True = attend
        if causal:
            lq, lk = q.shape[-2], k.shape[-2]
            mask = mask & torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()
        if fully_masked == "uniform":
            mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, torch.finfo(q.dtype).min)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal and mask is None, scale=head_dim**-0.5
    )
    return out[..., :head_dim] if pad else out


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, d) -> (B, h, L, d / h), head i holding channels i d/h .. (i + 1) d/h - 1."""
    b, length, d = x.shape
    return x.view(b, length, num_heads, d // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, h, L, dh) -> (B, L, h dh), the inverse of ``split_heads``."""
    b, _, length, _ = x.shape
    return x.transpose(1, 2).reshape(b, length, -1)


def check_heads(d_model: int, num_heads: int, backend: str) -> None:
    if d_model % num_heads:
        raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
    check_attention_backend(backend)


def fully_masked_rows(lq: int, causal: bool, key_padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, 1, Lq, 1), True for the query rows that have no key to attend to; None when none can.

    The causal mask alone always leaves key 0; with padding, query q (seeing keys 0..q) is empty
    when all of those are padding. O(B L) work, no host sync.
    """
    if key_padding_mask is None:
        return None
    if causal:
        no_real_key_yet = (~key_padding_mask).cumsum(dim=-1) == 0  # (B, Lk)
        lk = key_padding_mask.shape[-1]
        empty = no_real_key_yet[:, torch.arange(lq, device=key_padding_mask.device).clamp(max=lk - 1)]
    else:
        empty = key_padding_mask.all(dim=-1, keepdim=True).expand(-1, lq)  # (B, Lq)
    return empty[:, None, :, None]


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    backend: str,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    fully_masked: str = "zero",
) -> torch.Tensor:
    """softmax(q k^T / sqrt(dh) + mask) v over heads.

    q: (B, h, Lq, dh); k, v: (B, h, Lk, dh); key_padding_mask: (B, Lk), True where the key is padding.
    fully_masked: what a row with every key masked gives, "zero" or "uniform" (the mean of v).
    """
    if fully_masked not in FULLY_MASKED:
        raise ValueError(f"Unknown fully_masked {fully_masked!r}; choose from {list(FULLY_MASKED)}")
    check_attention_backend(backend)
    if backend == "sdpa":
        return _fused_attention(
            q, k, v, causal=causal, key_padding_mask=key_padding_mask, dropout_p=dropout_p, fully_masked=fully_masked
        )
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, h, Lq, Lk)
    # The lowest finite score rather than -inf: a masked key still gets exactly zero weight next to
    # any real one, and a row with none stays finite (uniform) instead of NaN, then is zeroed below.
    lowest = torch.finfo(scores.dtype).min
    lq, lk = scores.shape[-2], scores.shape[-1]
    if causal:
        future = torch.ones(lq, lk, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, lowest)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], lowest)
    probs = F.dropout(scores.softmax(dim=-1), p=dropout_p)  # (B, h, Lq, Lk)
    out = probs @ v  # (B, h, Lq, dh)
    empty = fully_masked_rows(lq, causal, key_padding_mask) if fully_masked == "zero" else None
    return out if empty is None else out.masked_fill(empty, 0.0)


class MultiHeadAttention(nn.Module):
    """Projections in, attention, projection out; the same parameters as torch MultiheadAttention."""

    def __init__(self, d_model: int, num_heads: int, dropout: float, backend: str, bias: bool = True):
        super().__init__()
        check_heads(d_model, num_heads, backend)
        self.num_heads = num_heads
        self.dropout = dropout
        self.backend = backend
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(
        self,
        query: torch.Tensor,
        key_value: torch.Tensor,
        *,
        causal: bool = False,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query: (B, Lq, d); key_value: (B, Lk, d) -> (B, Lq, d)."""
        q = split_heads(self.q_proj(query), self.num_heads)  # (B, h, Lq, dh)
        k = split_heads(self.k_proj(key_value), self.num_heads)  # (B, h, Lk, dh)
        v = split_heads(self.v_proj(key_value), self.num_heads)
        out = attention(
            q, k, v,
            backend=self.backend,
            causal=causal,
            key_padding_mask=key_padding_mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(merge_heads(out))
