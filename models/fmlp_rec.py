"""FMLP-Rec (Zhou et al., WWW 2022): SASRec's blocks with the self-attention replaced by a learnable
filter in the frequency domain.

Follows the authors' code (RUCAIBox/FMLP-Rec: models.py, modules.py, trainers.py, main.py):
item + position embedding (positions counted from the left edge of the window, padding included)
-> LayerNorm -> dropout -> blocks of [filter layer; FFN d -> 4d -> d (GELU) -> dropout ->
LayerNorm(+ residual)]. The filter layer, along the sequence axis:
    X = rfft(x, norm="ortho") (B, L//2 + 1, d);  X * W, W a learned complex (1, L//2 + 1, d);
    y = irfft(X W, n=L, norm="ortho");  LayerNorm(dropout(y) + x)
The filter has one weight per frequency, so it is sized to the window: the parameter count grows
with L (2 (L//2 + 1) d per layer, besides the L x d position table), and the batch's length must be
``max_len``, as the authors pad every window to it.

Multiplying spectra is a circular convolution: y = x (*) w, with w = irfft(W, n=L) a length-L
kernel over the window (the ortho scalings of rfft and irfft cancel). Nothing pads the window
before the transform, so position t mixes every position, later ones through the wrap-around:
the model is not causal, and the padding (item 0, which the authors' init leaves as a random
vector, plus its position) enters every position too. Training only reads the last position, which
sees the whole history and not the target, so the authors' objective does not leak.

Training: the last position scores the next item and one sampled negative with binary
cross-entropy, averaged over the batch (trainers.py ``cross_entropy``). Adam, lr 1e-3, betas
(0.9, 0.999), no weight decay.

Cost: O(L d) memory and O(L log L d) time for the FFTs. ``torch.utils.flop_counter`` has formulas
for matrix products, convolutions and attention kernels only: it counts 0 FLOPs for the FFTs
(aten._fft_r2c, aten._fft_c2r) and for the complex product, so the counted FLOPs are those of the
linear layers and read linear in L. (Counted at 2.5 N log2 N per real transform, the FFTs would add
2-4% to a step of the tiny profile at L = 32..256.)
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.base import Batch, fused_on_cuda, left_padded_lengths_mask, random_items


@dataclass
class FMLPRecConfig:
    num_items: int = 12_101  # their Beauty (item_size 12,102 with padding); the beauty profile has 57,289
    max_len: int = 50  # max_seq_length: also the filter's length
    d_model: int = 64
    num_layers: int = 2
    # hidden_dropout_prob: embeddings, filter output, FFN output. High, as in their S3-Rec base.
    # (attention_probs_dropout_prob belongs to the --no_filters SASRec variant only.)
    dropout: float = 0.5
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02  # initializer_range; the filter is initialised N(0, 0.02) too
    num_candidates: int = 101  # inference: 1 positive + 100 sampled negatives (the authors rank 1 + 99)
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0


class FilterLayer(nn.Module):
    """(B, L, d) -> (B, L, d): a learned frequency response per channel, dropout, residual, LayerNorm."""

    def __init__(self, cfg: FMLPRecConfig):
        super().__init__()
        # Real and imaginary parts on a trailing axis, the authors' layout: a real parameter, which
        # the fused Adam kernel accepts.
        self.weight = nn.Parameter(torch.empty(1, cfg.max_len // 2 + 1, cfg.d_model, 2))
        self.dropout = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)

    def filter(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, d) -> (B, L, d): the circular convolution along L, computed through the spectrum."""
        length = x.shape[1]
        spectrum = torch.fft.rfft(x, dim=1, norm="ortho")  # (B, L//2 + 1, d) complex
        spectrum = spectrum * torch.view_as_complex(self.weight)
        return torch.fft.irfft(spectrum, n=length, dim=1, norm="ortho")  # (B, L, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.filter(x)))


class FeedForward(nn.Module):
    def __init__(self, cfg: FMLPRecConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.fc2 = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.fc2(F.gelu(self.fc1(x)))))  # erf GELU, as theirs


class FMLPBlock(nn.Module):
    def __init__(self, cfg: FMLPRecConfig):
        super().__init__()
        self.filter = FilterLayer(cfg)
        self.ffn = FeedForward(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.filter(x))


class FMLPRec(nn.Module):
    def __init__(self, cfg: FMLPRecConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.d_model, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.emb_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(FMLPBlock(cfg) for _ in range(cfg.num_layers))
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # The authors' init_weights; like theirs it overwrites the padding row of the item embedding,
        # which then keeps its random value (padding_idx: no gradient) and is part of every window.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.cfg.init_std)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)
        if isinstance(module, FilterLayer):
            nn.init.normal_(module.weight, std=self.cfg.init_std)  # randn * 0.02 in theirs

    def encode(self, batch: Batch) -> torch.Tensor:
        """batch["seq"]: (B, max_len) left-padded item ids -> (B, max_len, d); every position depends
        on the whole window (not causal)."""
        seq = batch["seq"]
        if seq.shape[1] != self.cfg.max_len:
            raise ValueError(f"FMLP-Rec's filters are sized to max_len {self.cfg.max_len}; got length {seq.shape[1]}")
        positions = torch.arange(seq.shape[1], device=seq.device)  # from the window's left edge, as theirs
        x = self.emb_dropout(self.emb_norm(self.item_emb(seq) + self.pos_emb(positions)))  # (B, L, d)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, batch: Batch) -> torch.Tensor:
        h = self.encode(batch)[:, -1]  # (B, d)
        pos_logits = (h * self.item_emb(batch["pos"])).sum(-1)  # (B,)
        neg_logits = (h * self.item_emb(batch["neg"])).sum(-1)
        # The authors' -log(sigmoid(p) + 1e-24) - log(1 - sigmoid(n) + 1e-24), written with logsigmoid:
        # equal wherever a sigmoid is above ~1e-20, and finite beyond.
        return -(F.logsigmoid(pos_logits) + F.logsigmoid(-neg_logits)).mean()

    def predict(self, batch: Batch) -> torch.Tensor:
        h = self.encode(batch)[:, -1]  # (B, d)
        return (self.item_emb(batch["candidates"]) @ h.unsqueeze(-1)).squeeze(-1)  # (B, C)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            self.parameters(),
            lr=self.cfg.lr,
            betas=self.cfg.betas,
            weight_decay=self.cfg.weight_decay,
            **fused_on_cuda(self),
        )


def make_batch(cfg: FMLPRecConfig, batch_size: int, seq_len: int, device, generator) -> Batch:
    """Left-padded histories, each row's next item and one sampled negative (the authors train on every
    prefix of a history as its own window), and ``cfg.num_candidates`` candidates for inference."""
    real = left_padded_lengths_mask(batch_size, seq_len, device, generator)
    seq = random_items(batch_size, seq_len, cfg.num_items, device, generator) * real
    pos = random_items(batch_size, 1, cfg.num_items, device, generator).squeeze(1)  # (B,)
    neg = random_items(batch_size, 1, cfg.num_items, device, generator).squeeze(1)
    candidates = random_items(batch_size, cfg.num_candidates, cfg.num_items, device, generator)
    return {"seq": seq, "pos": pos, "neg": neg, "candidates": candidates}
