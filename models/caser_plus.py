"""Caser+ (Purificato et al., "Caser+ and CosRec+", paper 002): Caser trained to predict the next
item at every position.

Follows the authors' class Caser2 (antoniopurificato/recsys_conv_conf, new_models/Caser.py): the
vertical filters (L x 1) see the sequence left-padded with L - 1 zero rows, so step t weighs items
t - L + 1 .. t; every horizontal filter of height h sees it left-padded with h - 1 zero rows and is
max-pooled cumulatively over time (cummax), so step t pools the windows ending on items <= t.
Features per step (nv d + nh L) -> dropout -> FC to d -> Tanh; the user embedding is appended and
items are scored with per-item output embeddings W2 and biases b2. Training: the next item and one
sampled negative at every position, one BCE mean over all of them (the authors'
SequentialBCEWithLogitsLoss); inference scores the candidates from the last step.

The authors loop over the L heights, one Conv2d each (and one cummax); here the heights run as a few
grouped 1-D convolutions (``HorizontalConvolutions``), the vertical filters as one product with a
(L, L) Toeplitz matrix per filter, and inference pools only the last step (a max, not a cummax).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.base import Batch, fused_on_cuda, left_padded_lengths_mask, random_items
from models.caser import CaserLayers


@dataclass
class CaserPlusConfig:
    num_items: int = 3_416  # ML-1M
    num_users: int = 6_040
    max_len: int = 100  # the authors' ML-1M lookback
    d_model: int = 64
    num_vertical: int = 16  # nv
    num_horizontal: int = 16  # nh filters per height
    dropout: float = 0.5
    conv_activation: str = "tanh"  # phi_c, on the horizontal convolutions
    fc_activation: str = "tanh"  # phi_a, on the FC layer
    num_candidates: int = 101  # the authors' test: 1 positive + 100 negatives
    lr: float = 1e-3  # Adam's default: the authors set no learning rate
    # Convolution launches for the L heights (L reproduces the authors' loop): at most
    # (G + 1) / G = 1.125x the loop's multiply-adds.
    height_groups: int = 8


class CaserPlus(CaserLayers):
    def __init__(self, cfg: CaserPlusConfig):
        super().__init__(cfg, cfg.num_users + 1)
        L = cfg.max_len
        # Step t, item s: tap s - t + L - 1 of the zero-extended (nv, 2L - 1) filters; taps >= L
        # (items after t) are the zeros.
        steps = torch.arange(L)
        self.register_buffer("toeplitz_taps", steps - steps.unsqueeze(1) + L - 1, persistent=False)

    def _features(self, seq: torch.Tensor, last_only: bool) -> torch.Tensor:
        """(B, L) items -> (B, L', nv d + nh L) features per step; L' = 1 for the last step only."""
        if seq.shape[1] != self.cfg.max_len:
            raise ValueError(f"Caser+ reads exactly max_len = {self.cfg.max_len} items, got {seq.shape[1]}")
        e = self.item_emb(seq)  # (B, L, d)
        bias = self.vertical_bias.unsqueeze(-1)  # (nv, 1)
        if last_only:
            # The last step's window is the whole sequence: the vertical filters unpadded, and the
            # cumulative max at the last step is the max over all steps.
            out_v = (torch.einsum("ns,bsd->bnd", self.vertical_weight, e) + bias).unsqueeze(1)  # (B, 1, nv, d)
            out_h = [self.conv_act(y.amax(-1, keepdim=True)) for y in self.horizontal(e, causal=True)]
        else:
            toeplitz = F.pad(self.vertical_weight, (0, self.cfg.max_len - 1))[:, self.toeplitz_taps]  # (nv, L, L)
            out_v = torch.einsum("nts,bsd->btnd", toeplitz, e) + bias  # (B, L, nv, d)
            out_h = [self.conv_act(y).cummax(-1).values for y in self.horizontal(e, causal=True)]
        # out_h: per group (B, n_g nh, L'), read step-major by the concatenation.
        return torch.cat([out_v.flatten(2)] + [h.transpose(1, 2) for h in out_h], dim=-1)

    def _represent(self, batch: Batch, last_only: bool) -> torch.Tensor:
        z = self.fc_act(self.fc(self.dropout(self._features(batch["seq"], last_only))))  # (B, L', d)
        user = self.user_emb(batch["user"]).unsqueeze(1).expand(-1, z.shape[1], -1)  # (B, L', d)
        return torch.cat([z, user], dim=-1)  # (B, L', 2d)

    def encode(self, batch: Batch) -> torch.Tensor:
        """(user, (B, L) items) -> (B, L, 2d): step t's vector [z_t, user], from items <= t."""
        return self._represent(batch, last_only=False)

    def score(self, x: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """x: (..., 2d), items: (..., K) -> (..., K) logits x . W2[i] + b2[i]."""
        return (self.out_emb(items) @ x.unsqueeze(-1)).squeeze(-1) + self.out_bias(items).squeeze(-1)

    def forward(self, batch: Batch) -> torch.Tensor:
        x = self.encode(batch)  # (B, L, 2d)
        logits = self.score(x, torch.stack([batch["pos"], batch["neg"]], dim=-1))  # (B, L, 2)
        pos_logits, neg_logits = logits.unbind(-1)  # (B, L) each
        losses = F.binary_cross_entropy_with_logits(
            pos_logits, torch.ones_like(pos_logits), reduction="none"
        ) + F.binary_cross_entropy_with_logits(neg_logits, torch.zeros_like(neg_logits), reduction="none")
        # One mean over the positive and the negative of every real step; a weighted sum, not a
        # boolean gather, keeps the host out of the step.
        real = (batch["pos"] != 0).to(losses.dtype)  # (B, L)
        return (losses * real).sum() / (2 * real.sum()).clamp(min=1)

    def predict(self, batch: Batch) -> torch.Tensor:
        x = self._represent(batch, last_only=True).squeeze(1)  # (B, 2d)
        return self.score(x, batch["candidates"])  # (B, C)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.cfg.lr, **fused_on_cuda(self))


def make_batch(cfg: CaserPlusConfig, batch_size: int, seq_len: int, device, generator) -> Batch:
    """Left-padded histories, the user, the next item and one sampled negative per position (0 at
    padding), and ``cfg.num_candidates`` candidates for inference."""
    real = left_padded_lengths_mask(batch_size, seq_len, device, generator)
    seq = random_items(batch_size, seq_len, cfg.num_items, device, generator) * real
    user = torch.randint(1, cfg.num_users + 1, (batch_size,), device=device, generator=generator)
    pos = random_items(batch_size, seq_len, cfg.num_items, device, generator) * real
    neg = random_items(batch_size, seq_len, cfg.num_items, device, generator) * real
    candidates = random_items(batch_size, cfg.num_candidates, cfg.num_items, device, generator)
    return {"seq": seq, "user": user, "pos": pos, "neg": neg, "candidates": candidates}
