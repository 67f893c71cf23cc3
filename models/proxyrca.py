"""ProxyRCA (Seol et al., WSDM 2024): CARCA with proxy-based item embeddings.

Follows the authors' code (theeluwin/ProxyRCA: models/proxyrca.py, models/encoders/proxy.py,
models/layers/*). Items are encoded from a frozen feature table and the interaction's 6 context
values; an item's vector mixes P learned proxy vectors with weights predicted from its features,
plus an attribute/context vector. The profile goes through pre-LN transformer layers with a
padding-only mask (no positional embedding: order enters through the context values only), then
every candidate attends over the profile, its output is gated by the candidate's own vector and a
FFN, and Linear(d -> 1) gives its score. Training: cross-entropy over 1 positive (index 0) and 100
sampled negatives.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import MultiHeadAttention
from models.base import Batch, frozen_feature_table, fused_on_cuda
from models.item_context import make_candidate_batch
from models.layers import StdLayerNorm
from models.profiles import CONTEXT_FEATURES


@dataclass
class ProxyRCAConfig:
    num_items: int = 57_289
    item_feature_dim: int = 6_507
    d_model: int = 256
    num_proxies: int = 128
    # Items 1..K get a learned bias on their proxy weights, every other item none. The authors'
    # default is 0: the bias table keeps only its padding row, 128 parameters that stay zero.
    num_known_items: int = 0
    num_layers: int = 1
    num_heads: int = 4
    dropout: float = 0.1
    layer_norm_eps: float = 1e-6  # added to the std, not the variance (the authors' LayerNorm)
    attention: str = "naive"  # "naive" materialises (B, h, L, L) as the authors' code does
    num_candidates: int = 101  # 1 positive + 100 sampled negatives
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.1


make_batch = make_candidate_batch  # profile + contexts, 101 candidates with the positive's context


class FeedForward(nn.Module):
    """d -> 4d -> GELU (tanh approximation, fused) -> dropout -> d."""

    def __init__(self, d_model: int, dropout: float):
        super().__init__()
        self.fc_in = nn.Linear(d_model, 4 * d_model)
        self.fc_out = nn.Linear(4 * d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.dropout(F.gelu(self.fc_in(x), approximate="tanh")))


class ProxyItemEncoder(nn.Module):
    """(ids (B, n), context (B, n, 6)) -> item vectors (B, n, d).

    The authors feed concat[features, context] to the proxy selector's first Linear; here that
    Linear is split into a feature part and a context part (the same parameters, the same sum),
    which spares a (B, n, F + 6) copy of the features. Dropout on the concatenation becomes
    dropout on each part: the same independent element-wise masks.
    """

    def __init__(self, cfg: ProxyRCAConfig):
        super().__init__()
        d, f, c = cfg.d_model, cfg.item_feature_dim, CONTEXT_FEATURES
        self.num_known_items = cfg.num_known_items
        self.features = frozen_feature_table(cfg.num_items + 1, f)  # (|I| + 1, F), row 0 = padding
        self.dropout = nn.Dropout(cfg.dropout)
        # attribute/context vector
        self.feature_proj = nn.Linear(f, d)
        self.ac_proj = nn.Linear(d + c, d)
        # proxy weights: MLP(F + 6 -> 4d -> P) + a per-known-item bias
        self.selector_features = nn.Linear(f, 4 * d)
        self.selector_context = nn.Linear(c, 4 * d, bias=False)
        self.selector_out = nn.Linear(4 * d, cfg.num_proxies)
        self.proxy_bias = nn.Embedding(cfg.num_known_items + 1, cfg.num_proxies, padding_idx=0)
        self.proxies = nn.Embedding(cfg.num_proxies, d)  # (P, d)
        self.item_proj = nn.Linear(2 * d, d)
        nn.init.zeros_(self.proxy_bias.weight)  # biases start at zero, as in the authors' code

    def forward(self, ids: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        features = F.embedding(ids, self.features)  # (B, n, F)
        feature_vec = F.leaky_relu(self.feature_proj(self.dropout(features)))  # (B, n, d)
        ac_vec = self.ac_proj(torch.cat([feature_vec, context], dim=-1))  # (B, n, d)

        hidden = self.selector_features(self.dropout(features)) + self.selector_context(self.dropout(context))
        weights = self.selector_out(self.dropout(F.leaky_relu(hidden)))  # (B, n, P)
        known = torch.where(ids <= self.num_known_items, ids, 0)  # unknown items share the zero row
        probs = (weights + self.proxy_bias(known)).softmax(dim=-1)  # (B, n, P)
        proxy_vec = probs @ self.proxies.weight  # (B, n, P) @ (P, d) -> (B, n, d)
        return self.item_proj(torch.cat([proxy_vec, ac_vec], dim=-1))  # (B, n, d)


class TransformerLayer(nn.Module):
    """Pre-LN: x + dropout(attention(LN(x))), x + dropout(FFN(LN(x))), then dropout."""

    def __init__(self, cfg: ProxyRCAConfig):
        super().__init__()
        self.attention_norm = StdLayerNorm(cfg.d_model, cfg.layer_norm_eps)
        self.attention = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.dropout, cfg.attention)
        self.ffn_norm = StdLayerNorm(cfg.d_model, cfg.layer_norm_eps)
        self.ffn = FeedForward(cfg.d_model, cfg.dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        h = self.attention_norm(x)
        x = x + self.dropout(self.attention(h, h, key_padding_mask=padding))
        x = x + self.dropout(self.ffn(self.ffn_norm(x)))
        return self.dropout(x)


class CrossAttention(nn.Module):
    """Candidates (B, C, d) query the profile (B, L, d); the output is gated by the candidate, no residual."""

    def __init__(self, cfg: ProxyRCAConfig):
        super().__init__()
        self.candidate_norm = StdLayerNorm(cfg.d_model, cfg.layer_norm_eps)
        self.profile_norm = StdLayerNorm(cfg.d_model, cfg.layer_norm_eps)
        self.attention = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.dropout, cfg.attention)
        self.dropout = nn.Dropout(cfg.dropout)
        self.ffn = FeedForward(cfg.d_model, cfg.dropout)

    def forward(self, candidates: torch.Tensor, profile: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        e = self.candidate_norm(candidates)
        p = self.profile_norm(profile)
        r = self.dropout(self.attention(e, p, key_padding_mask=padding))  # (B, C, d), scores (B, h, C, L)
        return self.ffn(r * e)


class ProxyRCA(nn.Module):
    def __init__(self, cfg: ProxyRCAConfig):
        super().__init__()
        self.cfg = cfg
        self.item_encoder = ProxyItemEncoder(cfg)
        self.item_norm = StdLayerNorm(cfg.d_model, cfg.layer_norm_eps)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))
        self.cross_attention = CrossAttention(cfg)
        self.score = nn.Linear(cfg.d_model, 1)

    def predict(self, batch: Batch) -> torch.Tensor:
        """Scores (B, C) of ``batch["candidates"]`` given the profile ``batch["seq"]``."""
        seq, cand = batch["seq"], batch["candidates"]
        padding = seq == 0  # (B, L): keys only; no causal mask
        # Profile and candidates go through the encoder in one call: the same per-item function.
        ids = torch.cat([seq, cand], dim=1)  # (B, L + C)
        context = torch.cat([batch["context"], batch["candidate_context"]], dim=1)  # (B, L + C, 6)
        x = self.item_norm(self.item_encoder(ids, context))  # (B, L + C, d)
        profile, candidates = x.split([seq.shape[1], cand.shape[1]], dim=1)
        for layer in self.layers:
            profile = layer(profile, padding)  # (B, L, d)
        y = self.cross_attention(candidates, profile, padding)  # (B, C, d)
        return self.score(y).squeeze(-1)  # (B, C)

    def forward(self, batch: Batch) -> torch.Tensor:
        logits = self.predict(batch)  # (B, C)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)  # positive at index 0
        return F.cross_entropy(logits, labels)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.cfg.lr, betas=self.cfg.betas, weight_decay=self.cfg.weight_decay, **fused_on_cuda(self))
