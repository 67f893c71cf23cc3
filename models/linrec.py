"""LinRec (Liu et al., SIGIR 2023): SASRec with the softmax attention replaced by an L2-normalised
ELU linear attention.

Follows the authors' code (Applied-Machine-Learning-Lab/LinRec: layers.py, which replaces RecBole's
layers; run.py and ml-1m.yaml for the configuration), that is RecBole's SASRec with a new attention:
item + learned position embedding -> LayerNorm -> dropout -> post-LN Transformer layers
[attention -> dense -> dropout -> LayerNorm(+ residual); FFN d -> d_ff -> d (GELU) -> dropout ->
LayerNorm(+ residual)]; the last position scores all items against the item embedding, trained
with cross-entropy over every item (RecBole's CE loss, one target per sequence).

The attention, per head, with Q, K, V of shape (L, dh):
    Q' = l2norm(elu(Q)),  K' = l2norm(elu(K)),  out = Q' (K'^T V) / sqrt(dh)
where each query and each key is normalised over the head dimension: the authors' code divides
the (B, h, L, dh) queries by their norms over dh, and keeps the keys transposed, (B, h, dh, L),
dividing each column (one position) by its norm over dh, so neither is normalised over L.
K'^T V is (dh, dh), so time is O(L dh^2) per head and nothing of size L x L exists.

Masking. The authors' attention ignores the attention mask RecBole hands it: every position sees
the whole window, later items and padding included. That is the default here (``causal=False``),
so the model is not causal; its training signal (the last position only) still never sees the
target. ``causal=True`` is the form the mask asks for: position t sees the real items <= t,
computed in prefix form, chunk by chunk (within a chunk the masked (Q'K'^T)V of its c positions,
across chunks a running sum of K'^T V), still O(L) in time and memory.

Padding. RecBole pads on the right and counts positions from the first item; the project pads on
the left. Positions here count from the first real item, and the padded slots take the positions
that follow the last one (wrapping around), which is where RecBole's padding sits. Every other
operation treats positions alike, so the left-padded window gives at its real positions exactly
what the authors' right-padded one gives, padding's contribution in the default form included.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.base import Batch, fused_on_cuda, left_padded_lengths_mask, random_items


@dataclass
class LinRecConfig:
    num_items: int = 3_416  # the ml-1m profile; RecBole's ML-1M atomic files hold 3,706
    max_len: int = 200  # MAX_ITEM_LIST_LENGTH in their ml-1m.yaml (the paper's N)
    d_model: int = 128  # hidden_size in run.py (the paper's d); RecBole's SASRec default is 64
    num_layers: int = 2
    num_heads: int = 8  # head size 16
    d_ff: int = 256  # inner_size: 2d, not the usual 4d
    # hidden_dropout_prob. run.py also sets attn_dropout_prob = 0.2, which the linear attention never
    # uses: it has no probability matrix to drop.
    dropout: float = 0.2
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02  # initializer_range
    causal: bool = False  # False: the authors' form, which ignores the attention mask
    chunk_size: int = 32  # causal form only: positions per chunk of the prefix computation
    num_candidates: int = 101  # inference: 1 positive + 100 sampled negatives (their pop100 evaluation)
    lr: float = 1e-3  # RecBole's Adam, default betas, weight_decay 0.0 (overall.yaml)
    weight_decay: float = 0.0


def elu_l2(x: torch.Tensor) -> torch.Tensor:
    """(..., dh) -> (..., dh): ELU, then each vector scaled to unit L2 norm over its last axis.
    ``F.normalize`` guards the all-zero vector (only an exactly zero input gives one) from 0 / 0."""
    return F.normalize(F.elu(x), dim=-1)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Q'(K'^T V) / sqrt(dh) over the whole window; q, k: normalised (B, h, L, dh), v: (B, h, L, dh)."""
    kv = k.transpose(-2, -1) @ v  # (B, h, dh, dh)
    return q @ kv / math.sqrt(q.shape[-1])  # (B, h, L, dh)


def causal_linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """out_t = q_t (sum_{s <= t} k_s^T v_s) / sqrt(dh), in chunks of ``chunk_size`` positions.

    A plain cumulative sum of k_s^T v_s would keep a (dh, dh) state for every position, dh times the
    activations; per chunk, the state before the chunk and the masked (c, c) scores inside it cost
    L dh^2 / c + L c instead. Zero rows appended to fill the last chunk come after every real
    position, so they change nothing that is kept.
    """
    b, h, length, dh = q.shape
    pad = -length % chunk_size
    q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    n = (length + pad) // chunk_size
    q, k, v = (t.view(b, h, n, chunk_size, dh) for t in (q, k, v))  # (B, h, n, c, dh)
    kv = k.transpose(-2, -1) @ v  # (B, h, n, dh, dh): each chunk's sum of k_s^T v_s
    before = F.pad(kv.cumsum(dim=2), (0, 0, 0, 0, 1, 0))[:, :, :-1]  # (B, h, n, dh, dh): earlier chunks only
    scores = (q @ k.transpose(-2, -1)).tril()  # (B, h, n, c, c): s <= t within the chunk
    out = q @ before + scores @ v  # (B, h, n, c, dh)
    return out.view(b, h, n * chunk_size, dh)[:, :, :length] / math.sqrt(dh)


class LinRecLayer(nn.Module):
    """One post-LN Transformer layer of RecBole with the authors' linear attention."""

    def __init__(self, cfg: LinRecConfig):
        super().__init__()
        if cfg.d_model % cfg.num_heads:
            raise ValueError(f"d_model {cfg.d_model} is not divisible by num_heads {cfg.num_heads}")
        self.num_heads = cfg.num_heads
        self.causal = cfg.causal
        self.chunk_size = cfg.chunk_size
        self.query = nn.Linear(cfg.d_model, cfg.d_model)
        self.key = nn.Linear(cfg.d_model, cfg.d_model)
        self.value = nn.Linear(cfg.d_model, cfg.d_model)
        self.dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.attention_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.ffn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        return x.view(b, length, self.num_heads, d // self.num_heads).transpose(1, 2)  # (B, h, L, dh)

    def attend(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """(B, L, d) -> (B, L, d): the attention's context vectors, before the dense projection."""
        q = elu_l2(self._heads(self.query(x)))  # (B, h, L, dh)
        k = elu_l2(self._heads(self.key(x)))
        v = self._heads(self.value(x))
        if self.causal:
            k = k * real[:, None, :, None]  # padded keys leave the state, as RecBole's mask would have them
            out = causal_linear_attention(q, k, v, self.chunk_size)
        else:
            out = linear_attention(q, k, v)
        b, _, length, _ = out.shape
        return out.transpose(1, 2).reshape(b, length, -1)

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.dropout(self.dense(self.attend(x, real))))
        return self.ffn_norm(x + self.dropout(self.fc2(F.gelu(self.fc1(x)))))  # erf GELU, as RecBole's


class LinRec(nn.Module):
    def __init__(self, cfg: LinRecConfig):
        super().__init__()
        self.cfg = cfg
        # RecBole's vocabulary: row 0 is padding, the other num_items rows are items; the CE loss
        # scores all num_items + 1 rows, padding included, as theirs does.
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)  # no padding row: RecBole's padding has positions too
        self.emb_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(LinRecLayer(cfg) for _ in range(cfg.num_layers))
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # RecBole's SASRec init. It also overwrites the padding row of the item embedding, which then
        # stays at its random value (padding_idx keeps its gradient zero): in the default form the
        # padded keys and values carry that row into every position.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.cfg.init_std)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    def positions(self, seq: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B, L) position ids: 0 at the first real item, padding after the last one (mod L)."""
        length = seq.shape[1]
        first_real = length - (seq != 0).sum(dim=1, keepdim=True)  # (B, 1): left padding
        return (torch.arange(length, device=seq.device) - first_real) % length

    def encode(self, batch: Batch) -> torch.Tensor:
        """batch["seq"]: (B, L) left-padded item ids -> (B, L, d).

        Default form: every position depends on the whole window. ``causal=True``: position t depends
        only on the items <= t; padded slots, which have no history, give zero vectors.
        """
        seq = batch["seq"]
        if seq.shape[1] > self.cfg.max_len:
            raise ValueError(f"sequence length {seq.shape[1]} exceeds max_len {self.cfg.max_len}")
        real = seq != 0
        x = self.emb_dropout(self.emb_norm(self.item_emb(seq) + self.pos_emb(self.positions(seq))))  # (B, L, d)
        for layer in self.layers:
            x = layer(x, real)
        return x * real.unsqueeze(-1) if self.cfg.causal else x

    def forward(self, batch: Batch) -> torch.Tensor:
        h = self.encode(batch)[:, -1]  # (B, d): the last item's position, RecBole's gather at length - 1
        logits = h @ self.item_emb.weight.T  # (B, |I| + 1)
        return F.cross_entropy(logits, batch["pos"])

    def predict(self, batch: Batch) -> torch.Tensor:
        h = self.encode(batch)[:, -1]  # (B, d)
        return (self.item_emb(batch["candidates"]) @ h.unsqueeze(-1)).squeeze(-1)  # (B, C)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, **fused_on_cuda(self)
        )


def make_batch(cfg: LinRecConfig, batch_size: int, seq_len: int, device, generator) -> Batch:
    """Left-padded histories, each row's next item (one target per sequence, as RecBole trains on
    every prefix as its own sequence) and ``cfg.num_candidates`` candidates for inference."""
    real = left_padded_lengths_mask(batch_size, seq_len, device, generator)
    seq = random_items(batch_size, seq_len, cfg.num_items, device, generator) * real
    pos = random_items(batch_size, 1, cfg.num_items, device, generator).squeeze(1)  # (B,)
    candidates = random_items(batch_size, cfg.num_candidates, cfg.num_items, device, generator)
    return {"seq": seq, "pos": pos, "candidates": candidates}
