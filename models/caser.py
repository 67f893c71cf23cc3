"""Caser (Tang & Wang, WSDM 2018): convolutional sequence embedding over the last L items.

Follows the authors' code (graytowne/caser_pytorch, caser.py and train_caser.py). The L x d
embedding "image" of the last L items goes through nv vertical filters (L x 1, one weighted sum of
the rows per filter, no activation) and nh horizontal filters of every height h = 1..L (h x d), each
max-pooled over the windows that fit; dropout; an FC layer to d; the user embedding is appended and
targets are scored with per-item output embeddings W2 and biases b2. Training scores T = 3 targets
and 3 sampled negatives per sequence with BCE: train_caser.py draws neg_samples = 3 per sequence
(its docstring's "9 negatives" for T = 3 is not what the code does). There is no padding mask: id 0
is an ordinary learned embedding that short histories are left-padded with, as in the authors' code.

The authors run one Conv2d(1, nh, (h, d)) per height in a Python loop. ``HorizontalConvolutions``
computes the same filters as a few 1-D convolutions over the d embedding channels, one per group of
consecutive heights: each filter of height h sits in the last h taps of its group's widest kernel,
the other taps fixed at zero. The parameters stay exactly the authors' (packed per group, so the
count is sum_h nh (h d + 1)); the zero taps cost extra multiply-adds, bounded by the group count.
The pooled horizontal features are ordered (height, filter) where the authors' are (filter, height):
a fixed permutation of the FC layer's input columns, the same function.
"""
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.base import Batch, fused_on_cuda, left_padded_lengths_mask, random_items

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "relu": F.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"Unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}") from None


def split_heights(max_height: int, num_groups: int) -> list[tuple[int, int]]:
    """Heights 1..max_height split into at most ``num_groups`` runs of nearly equal size (lo, hi)."""
    num_groups = max(1, min(num_groups, max_height))
    bounds = [round(max_height * g / num_groups) for g in range(num_groups + 1)]
    return [(bounds[g] + 1, bounds[g + 1]) for g in range(num_groups)]


class HorizontalConvolutions(nn.Module):
    """nh filters of every height h = 1..L over a (B, L, d) item image, each h x d with a bias.

    Group g holds heights lo..hi; its filters are packed as rows (h, r) of a (sum_h h, nh, d)
    parameter, row r of height h weighting the r-th item of the window. ``forward`` scatters them
    into one (n_g nh, d, hi) kernel whose last h taps are the height-h filter, so a window of every
    height ends on the same item. With G groups of n = L / G heights, the multiply-adds are
    (G + 1) / G times the per-height loop's for causal windows; G = L is the authors' loop.
    """

    def __init__(self, max_height: int, d_model: int, num_filters: int, num_groups: int):
        super().__init__()
        self.max_height = max_height
        self.num_filters = num_filters
        self.groups = split_heights(max_height, num_groups)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for g, (lo, hi) in enumerate(self.groups):
            heights = range(lo, hi + 1)
            self.weights.append(nn.Parameter(torch.empty(sum(heights), num_filters, d_model)))
            self.biases.append(nn.Parameter(torch.empty(len(heights), num_filters)))
            # Packed row (h, r) goes to kernel row (i, k), local height i = h - lo, tap k = hi - h + r;
            # the taps k < hi - h of height h stay zero.
            taps = [torch.arange(h) + i * hi + hi - h for i, h in enumerate(heights)]
            self.register_buffer(f"taps{g}", torch.cat(taps), persistent=False)  # (R_g,)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv2d's default initialisation, per height: U(+-1 / sqrt(h d)) for weights and bias."""
        d_model = self.weights[0].shape[-1]
        with torch.no_grad():
            for h in range(1, self.max_height + 1):
                weight, bias = self.height_filters(h)
                bound = 1.0 / math.sqrt(h * d_model)
                weight.uniform_(-bound, bound)
                bias.uniform_(-bound, bound)

    def height_filters(self, h: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the height-h filters as the authors' Conv2d keeps them: (nh, h, d) and (nh,)."""
        for g, (lo, hi) in enumerate(self.groups):
            if lo <= h <= hi:
                start = (lo + h - 1) * (h - lo) // 2  # rows of heights lo..h-1
                weight = self.weights[g][start : start + h].transpose(0, 1)
                return weight, self.biases[g][h - lo]
        raise ValueError(f"height {h} outside 1..{self.max_height}")

    def kernel(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Group g's conv1d kernel (n_g nh, d, hi), zero in the taps before each filter, and bias."""
        lo, hi = self.groups[g]
        weight, taps = self.weights[g], getattr(self, f"taps{g}")
        num_heights = hi - lo + 1
        dense = weight.new_zeros(num_heights * hi, *weight.shape[1:]).index_copy(0, taps, weight)
        dense = dense.view(num_heights, hi, *weight.shape[1:]).permute(0, 2, 3, 1)  # (n_g, nh, d, hi)
        return dense.reshape(num_heights * self.num_filters, -1, hi), self.biases[g].reshape(-1)

    def forward(self, x: torch.Tensor, causal: bool) -> list[torch.Tensor]:
        """x: (B, L, d) -> per group (B, n_g nh, L_out), channels ordered (height, filter).

        Output j holds the window of every filter that ends on item j + L - L_out.
        causal: L_out = L; a window that would start before item 0 sees zero rows there, as the
            left-padded convolutions of Caser+.
        not causal: only windows ending on items lo - 1 .. L - 1 are computed, and windows that do
            not fit inside the sequence are -inf, so a max over time pools only whole windows.
        """
        x = x.transpose(1, 2)  # (B, d, L)
        outputs = []
        for g, (lo, hi) in enumerate(self.groups):
            kernel, bias = self.kernel(g)
            y = F.conv1d(F.pad(x, (hi - 1 if causal else hi - lo, 0)), kernel, bias)  # (B, n_g nh, L_out)
            if not causal:
                # Height lo + i needs i more items than height lo: its first i outputs are partial.
                num_heights, length = hi - lo + 1, y.shape[-1]
                partial = torch.ones(num_heights, length, dtype=torch.bool, device=y.device).tril(-1)
                y = y.view(y.shape[0], num_heights, self.num_filters, length)
                y = y.masked_fill(partial.unsqueeze(1), float("-inf")).flatten(1, 2)
            outputs.append(y)
        return outputs


@dataclass
class CaserConfig:
    num_items: int = 3_416  # ML-1M
    num_users: int = 6_040
    max_len: int = 5  # L: the last L items are the input image
    d_model: int = 50
    num_vertical: int = 4  # nv
    num_horizontal: int = 16  # nh filters per height
    dropout: float = 0.5
    conv_activation: str = "relu"  # phi_c, on the horizontal convolutions
    fc_activation: str = "relu"  # phi_a, on the FC layer
    num_targets: int = 3  # T: the next T items are all positives
    num_negatives: int = 3  # per sequence, shared by the T targets (the authors' neg_samples)
    num_candidates: int = 101
    lr: float = 1e-3
    weight_decay: float = 1e-6  # the authors' l2, through Adam's weight_decay
    # Convolution launches for the L heights (L reproduces the authors' loop). Whole windows only:
    # at most ~1.2x the loop's multiply-adds with 16 groups (1.4x with 8).
    height_groups: int = 16


class CaserLayers(nn.Module):
    """The layers Caser and Caser+ share: embeddings, vertical and horizontal filters, FC, W2 and b2.

    ``num_user_rows``: Caser numbers users from 0, Caser+ from 1 (one row more).
    """

    def __init__(self, cfg, num_user_rows: int):
        super().__init__()
        self.cfg = cfg
        d, L = cfg.d_model, cfg.max_len
        self.user_emb = nn.Embedding(num_user_rows, d)
        self.item_emb = nn.Embedding(cfg.num_items + 1, d)  # row 0: the padding item, learned
        self.vertical_weight = nn.Parameter(torch.empty(cfg.num_vertical, L))  # Conv2d(1, nv, (L, 1))
        self.vertical_bias = nn.Parameter(torch.empty(cfg.num_vertical))
        self.horizontal = HorizontalConvolutions(L, d, cfg.num_horizontal, cfg.height_groups)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(cfg.num_vertical * d + cfg.num_horizontal * L, d)
        self.out_emb = nn.Embedding(cfg.num_items + 1, 2 * d)  # W2: scores [z, user] per item
        self.out_bias = nn.Embedding(cfg.num_items + 1, 1)  # b2
        self.conv_act = get_activation(cfg.conv_activation)
        self.fc_act = get_activation(cfg.fc_activation)
        bound = 1.0 / math.sqrt(L)  # nn.Conv2d's default for the vertical filters
        nn.init.uniform_(self.vertical_weight, -bound, bound)
        nn.init.uniform_(self.vertical_bias, -bound, bound)


class Caser(CaserLayers):
    def __init__(self, cfg: CaserConfig):
        super().__init__(cfg, cfg.num_users)
        d = cfg.d_model
        # The authors' initialisation: N(0, 1 / dim) (the std, not the variance) and zero biases.
        nn.init.normal_(self.user_emb.weight, 0.0, 1.0 / d)
        nn.init.normal_(self.item_emb.weight, 0.0, 1.0 / d)
        nn.init.normal_(self.out_emb.weight, 0.0, 1.0 / (2 * d))
        nn.init.zeros_(self.out_bias.weight)

    def encode(self, batch: Batch) -> torch.Tensor:
        """(user, last L items) -> (B, 2d): the vector [z, user] every item is scored against."""
        seq = batch["seq"]
        if seq.shape[1] != self.cfg.max_len:
            raise ValueError(f"Caser reads exactly max_len = {self.cfg.max_len} items, got {seq.shape[1]}")
        e = self.item_emb(seq)  # (B, L, d)
        # Vertical filters: weighted sums of the L rows, no activation.
        out_v = torch.einsum("nl,bld->bnd", self.vertical_weight, e) + self.vertical_bias.unsqueeze(-1)
        # Horizontal filters: max over whole windows. The activation is monotone, so it commutes with
        # the max and runs on the pooled (B, nh L) values only; max keeps only the argmax for backward.
        pooled = [y.max(-1).values for y in self.horizontal(e, causal=False)]  # (B, n_g nh) each
        out_h = self.conv_act(torch.cat(pooled, dim=1))  # (B, nh L)
        features = self.dropout(torch.cat([out_v.flatten(1), out_h], dim=1))  # (B, nv d + nh L)
        z = self.fc_act(self.fc(features))  # (B, d)
        return torch.cat([z, self.user_emb(batch["user"])], dim=1)  # (B, 2d)

    def score(self, x: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """x: (B, 2d), items: (B, K) -> (B, K) logits x . W2[i] + b2[i]."""
        return torch.einsum("bkd,bd->bk", self.out_emb(items), x) + self.out_bias(items).squeeze(-1)

    def forward(self, batch: Batch) -> torch.Tensor:
        x = self.encode(batch)
        pos_logits = self.score(x, batch["targets"])  # (B, T)
        neg_logits = self.score(x, batch["negatives"])  # (B, 3)
        # -mean log sigmoid(pos) - mean log(1 - sigmoid(neg)), in the overflow-safe logits form.
        return F.binary_cross_entropy_with_logits(
            pos_logits, torch.ones_like(pos_logits)
        ) + F.binary_cross_entropy_with_logits(neg_logits, torch.zeros_like(neg_logits))

    def predict(self, batch: Batch) -> torch.Tensor:
        return self.score(self.encode(batch), batch["candidates"])  # (B, C)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, **fused_on_cuda(self))


def make_batch(cfg: CaserConfig, batch_size: int, seq_len: int, device, generator) -> Batch:
    """The last ``seq_len`` items (left-padded with 0 for short histories), the user, the next T
    items, ``cfg.num_negatives`` negatives and ``cfg.num_candidates`` candidates."""
    real = left_padded_lengths_mask(batch_size, seq_len, device, generator)
    seq = random_items(batch_size, seq_len, cfg.num_items, device, generator) * real
    user = torch.randint(0, cfg.num_users, (batch_size,), device=device, generator=generator)
    targets = random_items(batch_size, cfg.num_targets, cfg.num_items, device, generator)
    negatives = random_items(batch_size, cfg.num_negatives, cfg.num_items, device, generator)
    candidates = random_items(batch_size, cfg.num_candidates, cfg.num_items, device, generator)
    return {"seq": seq, "user": user, "targets": targets, "negatives": negatives, "candidates": candidates}
