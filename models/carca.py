"""CARCA (Rashed et al., RecSys 2022): context- and attribute-aware next-item scoring by cross-attention.

Follows the authors' TensorFlow code (ahmedrashed-ml/CARCA@6f77ecc: CARCA.py) at its Beauty settings
(the others: PRESETS). An item vector is Linear(6d -> d)(concat[token embedding (d),
Linear(F + 6 -> 5d)(concat[item features, 6 context values])]); no positional embedding: order
enters through the context values. The profile goes through blocks of [attention whose query is
LN(x) and whose keys/values are x, with Q, K, V = LeakyReLU(Linear) and no output projection,
multiplied by its query -> LN -> point-wise FFN with residual -> padding zeroed], then a final LN.
Targets then attend over the profile with a second attention of the same kind, and Linear(d -> 1)
gives their score.

Two things of CARCA.py that a reader of the paper would not expect:
- Its attention masks the keys whose input vector is all zero (tf.sign of the sum of |key|), not
  padded ids; so does this file. In the self-attention the keys are the block's input, zeroed at
  padding, so the zero-vector mask is the padding mask. In the cross-attention the keys are the
  final LayerNorm's output, whose padded rows equal its shift beta: they are masked while beta is
  zero (at initialisation) and, once training moves beta, enter the softmax as keys equal to beta,
  more of them the more a history is padded. Masked scores are -2**32 + 1 rather than -inf: the
  same, except that a row whose every key is masked attends to all of them uniformly, as here
  (``fully_masked="uniform"``). Its query mask, which zeroes the outputs of all-zero queries, is
  left out: in the self-attention the output is multiplied by that zero query anyway, and an
  all-zero target vector is a padded target, which the loss leaves out.
- It builds a (maxlen, d) positional table (scope dec_pos) under the item table's L2 penalty but
  never adds it to the input (``self.seq += t`` is commented out): the table only adds
  l2_emb / 2 * |P|^2 to the loss, whose gradient shrinks P and nothing else. It is left out here:
  maxlen x d parameters (6,750 at Beauty, 75 x 90) and their optimizer state fewer, the same outputs.

Training is SASRec's: every real position t has its next item and one sampled negative, both with
the next item's context; each of them attends over the whole profile (not causal), and BCE on the
two logits plus an L2 penalty on the item embedding is the loss. Inference scores C = 101
candidates (1 positive + 100 negatives) with the same cross-attention.

The theeluwin/ProxyRCA repository ships a different PyTorch "CARCA" (ProxyRCA's transformer with a
token + attribute encoder and cross-entropy over 101 candidates); this file is the original.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models import item_context
from models.attention import attention, check_heads, merge_heads, split_heads
from models.base import Batch, frozen_feature_table, fused_on_cuda, next_item_bce, random_items
from models.profiles import CONTEXT_FEATURES


@dataclass
class CARCAConfig:
    num_items: int = 57_289
    item_feature_dim: int = 6_507
    d_model: int = 90  # per dataset: PRESETS
    num_blocks: int = 3
    num_heads: int = 1
    dropout: float = 0.5
    cross_residual: bool = True  # the cross-attention output times its query (the authors' use_res)
    leaky_slope: float = 0.2  # TensorFlow's leaky_relu default
    layer_norm_eps: float = 1e-8
    l2_emb: float = 1e-4  # L2 penalty on the item embedding table, as TensorFlow's l2_regularizer adds it
    attention: str = "naive"  # "naive" materialises (B, h, L, L) as the authors' code does
    num_candidates: int = 101  # inference: 1 positive + 100 sampled negatives
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)


# CARCA.py's Args per dataset ("Video_Games" is games). Its maxlen (75, 50, 35, 35) has no field
# here: the harness sets the length, and nothing of the model's size depends on it.
PRESETS: dict[str, dict] = {
    "beauty": {"d_model": 90, "num_heads": 1, "dropout": 0.5, "cross_residual": True, "l2_emb": 1e-4, "lr": 1e-4},
    "games": {"d_model": 90, "num_heads": 3, "dropout": 0.5, "cross_residual": True, "l2_emb": 0.0, "lr": 1e-4},
    "fashion": {"d_model": 390, "num_heads": 3, "dropout": 0.3, "cross_residual": False, "l2_emb": 1e-4, "lr": 1e-5},
    "men": {"d_model": 390, "num_heads": 3, "dropout": 0.3, "cross_residual": False, "l2_emb": 1e-4, "lr": 6e-6},
}


def make_batch(cfg: CARCAConfig, batch_size: int, seq_len: int, device, generator) -> Batch:
    """A profile with contexts, the next item and one negative per position sharing the next item's
    context (0 at padding), and ``cfg.num_candidates`` candidates (positive at index 0) for inference."""
    seq, context = item_context.profile(cfg.num_items, batch_size, seq_len, device, generator)
    real = seq != 0
    pos = random_items(batch_size, seq_len, cfg.num_items, device, generator) * real
    neg = random_items(batch_size, seq_len, cfg.num_items, device, generator) * real
    pos_context = item_context.random_context(batch_size, seq_len, device, generator) * real.unsqueeze(-1)
    cand, cand_context = item_context.candidates(cfg.num_items, batch_size, cfg.num_candidates, device, generator)
    return {
        "seq": seq, "context": context, "pos": pos, "neg": neg, "pos_context": pos_context,
        "candidates": cand, "candidate_context": cand_context,
    }


class CARCAAttention(nn.Module):
    """Q, K, V = LeakyReLU(Linear(.)); no output projection; optionally times the query."""

    def __init__(self, cfg: CARCAConfig, residual: bool):
        super().__init__()
        check_heads(cfg.d_model, cfg.num_heads, cfg.attention)
        self.cfg = cfg
        self.residual = residual
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return split_heads(F.leaky_relu(x, self.cfg.leaky_slope), self.cfg.num_heads)  # (B, h, L, dh)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor) -> torch.Tensor:
        """query (B, Lq, d), key_value (B, Lk, d) -> (B, Lq, d); all-zero key vectors are masked."""
        zero_keys = (key_value == 0).all(dim=-1)  # (B, Lk), the authors' key mask
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key_value))
        v = self._heads(self.v_proj(key_value))
        dropout_p = self.cfg.dropout if self.training else 0.0
        # The authors' masked score is finite (-2**32 + 1): a row whose keys are all zero vectors
        # (a one-item profile whose item the attention dropout zeroed) attends to all uniformly.
        out = attention(
            q, k, v, backend=self.cfg.attention, key_padding_mask=zero_keys, dropout_p=dropout_p, fully_masked="uniform"
        )
        out = merge_heads(out)  # (B, Lq, d)
        return out * query if self.residual else out  # CARCA's multiplicative "residual"


class Block(nn.Module):
    def __init__(self, cfg: CARCAConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attention = CARCAAttention(cfg, residual=True)
        self.ffn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_model)  # the authors' kernel-1 conv1d
        self.fc2 = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.leaky_slope = cfg.leaky_slope

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """x (B, L, d), zero at padding -> (B, L, d), zero at padding: its keys' mask is the padding."""
        x = self.attention(self.attention_norm(x), x)
        h = self.ffn_norm(x)
        x = h + self.dropout(self.fc2(self.dropout(F.leaky_relu(self.fc1(h), self.leaky_slope))))
        return x * ~padding.unsqueeze(-1)  # padded positions back to zero, so they stay masked keys


class CARCA(nn.Module):
    def __init__(self, cfg: CARCAConfig):
        super().__init__()
        self.cfg = cfg
        d, f = cfg.d_model, cfg.item_feature_dim
        self.item_emb = nn.Embedding(cfg.num_items + 1, d, padding_idx=0)
        self.features = frozen_feature_table(cfg.num_items + 1, f)  # (|I| + 1, F), row 0 = padding
        # The authors' Linear(F + 6 -> 5d) on concat[features, context], split in its feature and
        # context parts: the same parameters and sum without a (B, L, F + 6) copy of the features.
        self.feature_proj = nn.Linear(f, 5 * d)
        self.context_proj = nn.Linear(CONTEXT_FEATURES, 5 * d, bias=False)
        self.item_proj = nn.Linear(6 * d, d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_blocks))
        self.final_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.cross_attention = CARCAAttention(cfg, residual=cfg.cross_residual)
        self.score = nn.Linear(d, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        """TensorFlow's initialisers: Glorot-uniform kernels and embedding, zero biases; the item
        encoder and the score layer N(0, 0.01) as the authors set them."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for module in (self.feature_proj, self.context_proj, self.item_proj, self.score):
            nn.init.normal_(module.weight, std=0.01)
        nn.init.xavier_uniform_(self.item_emb.weight)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def embed(self, ids: torch.Tensor, context: torch.Tensor, scale: float) -> torch.Tensor:
        """ids (..., n), context broadcastable to (..., n, 6) -> item vectors (..., n, d)."""
        token = self.item_emb(ids) * scale
        attributes = self.feature_proj(F.embedding(ids, self.features)) + self.context_proj(context)  # (..., n, 5d)
        return self.item_proj(torch.cat([token, attributes], dim=-1))

    def encode_profile(self, seq: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Profile (B, L), contexts (B, L, 6) -> (B, L, d); padding-masked, not causal."""
        padding = seq == 0
        # Only the profile's token embedding is scaled by sqrt(d), as in the authors' code.
        x = self.dropout(self.embed(seq, context, math.sqrt(self.cfg.d_model))) * ~padding.unsqueeze(-1)
        for block in self.blocks:
            x = block(x, padding)
        return self.final_norm(x)

    def _scores(self, targets: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
        """targets (B, n, d) attend over the profile (B, L, d) -> scores (B, n). Padded profile rows
        are the final LayerNorm's shift: masked keys only while it is zero, as the authors'."""
        return self.score(self.cross_attention(targets, profile)).squeeze(-1)

    def forward(self, batch: Batch) -> torch.Tensor:
        seq, pos = batch["seq"], batch["pos"]
        b, length = seq.shape
        profile = self.encode_profile(seq, batch["context"])  # (B, L, d)
        # The next item and the negative share the next item's context: one (B, 2L) query set over
        # the profile computes the profile's keys and values once for both.
        ids = torch.stack([pos, batch["neg"]], dim=1)  # (B, 2, L)
        targets = self.embed(ids, batch["pos_context"].unsqueeze(1), 1.0).view(b, 2 * length, -1)  # (B, 2L, d)
        logits = self._scores(targets, profile).view(b, 2, length)  # scores (B, h, 2L, L)
        return next_item_bce(logits[:, 0], logits[:, 1], pos != 0) + 0.5 * self.cfg.l2_emb * self.item_emb.weight.square().sum()

    def predict(self, batch: Batch) -> torch.Tensor:
        """Scores (B, C) of ``batch["candidates"]`` at the positive's context."""
        seq = batch["seq"]
        profile = self.encode_profile(seq, batch["context"])
        candidates = self.embed(batch["candidates"], batch["candidate_context"], 1.0)  # (B, C, d)
        return self._scores(candidates, profile)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.cfg.lr, betas=self.cfg.betas, **fused_on_cuda(self))
