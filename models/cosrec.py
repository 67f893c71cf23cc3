"""CosRec (Yan et al., CIKM 2019) and CosRec+ (Siciliano, Purificato et al.): 2-D convolutions over the grid
of item pairs.

Both embed the last L items, form the L x L grid whose cell (j, k) is the concatenation [e_k; e_j]
(2d channels), and run two blocks of [1x1 conv -> BN -> ReLU -> 3x3 conv -> BN -> ReLU] over it.
- CosRec (zzxslp/CosRec model.py): unpadded 3x3 convs shrink the grid to (L-4) x (L-4); a global
  average pool, FC + tanh + dropout and the user embedding give one vector that scores T = 3 next
  items and 3 negatives through per-item output weights (W2, b2); BCE. Not causal, no padding mask:
  padding is item 0, embedded like any item, as in the authors' code.
- CosRec+ (antoniopurificato/recsys_conv_conf new_models/CosRec.py, CosRec2): the 3x3 convs are
  padded on the top and left, so cell (j, k) only sees items <= max(j, k) and the grid stays L x L;
  the pooling for step t averages the top-left (t+1) x (t+1) square, giving one vector per
  position, each scoring its next item and one negative (BCE over the real positions).

Same functions as the authors' code, computed with less memory and work:
- the first 1x1 conv is linear in [e_k; e_j], so it is the sum of a per-column and a per-row term:
  the (B, 2d, L, L) pair grid is never built (nor saved for backward). The sum is laid out
  channels-last, as the authors' permuted grid is: cuDNN's convolutions run in that layout, and an
  NCHW grid cost a conversion around every convolution (25% slower on an H100 at L = 100);
- CosRec+ pooling: the authors contract the grid with an (L, L, L) mask, O(L^3) work and an L^3
  tensor saved for backward; growing the square from t-1 to t adds only the border max(j, k) = t,
  so border sums and a cumulative sum give every square mean in O(L^2) (the 2-D prefix sums read
  on the diagonal);
- CosRec+ output: the authors compute logits for all items at every position, (B, L, |I| + 1), then
  gather the candidates; gathering the candidates' output weights first is the same function.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.base import Batch, fused_on_cuda, left_padded_lengths_mask, random_items
from models.next_item import make_batch as next_item_batch


@dataclass
class CosRecConfig:
    num_users: int = 6_040
    num_items: int = 3_416
    max_len: int = 5  # L, the Markov order; at least 5, as each unpadded 3x3 conv removes 2
    d_model: int = 50
    block_dims: tuple[int, ...] = (128, 256)
    fc_dim: int = 150
    dropout: float = 0.5
    num_targets: int = 3  # T: the next 3 items are predicted at once
    num_negatives: int = 3
    num_candidates: int = 101  # inference: 1 positive + 100 sampled negatives
    lr: float = 1e-3
    weight_decay: float = 5e-6  # the authors' Adam l2


@dataclass
class CosRecPlusConfig:
    num_users: int = 6_040
    num_items: int = 3_416
    max_len: int = 100  # the authors' lookback on ML-1M
    d_model: int = 64
    block_dims: tuple[int, ...] = (128, 256)
    fc_dim: int = 128
    dropout: float = 0.5
    num_candidates: int = 101  # evaluation: 1 positive + 100 negatives at the last position
    lr: float = 1e-3  # torch's Adam defaults: the authors leave the optimizer parameters unset


def pairwise_pointwise_conv(emb: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """A 1x1 conv over the pair grid, cell (j, k) = [e_k; e_j], without building the grid.

    emb: (B, L, d) -> (B, C, L, L) in channels-last memory. The conv is linear, so W [e_k; e_j] + b
    splits into W_k e_k (varies along columns) plus W_j e_j + b (varies along rows): two (B, L, C)
    maps broadcast-added. Channels-last is the layout cuDNN's convolutions run in on Hopper; the
    authors' grid (a permuted concatenation) has it too, and an NCHW grid would cost a layout
    conversion before and after every convolution.
    """
    d = emb.shape[-1]
    weight = conv.weight.flatten(1)  # (C, 2d): the first d channels carry e_k, the last d e_j
    col = F.linear(emb, weight[:, :d])  # (B, L, C): indexed by k
    row = F.linear(emb, weight[:, d:], conv.bias)  # (B, L, C): indexed by j
    return (row.unsqueeze(2) + col.unsqueeze(1)).permute(0, 3, 1, 2)  # (B, C, L, L), channels-last


class ConvBlock(nn.Module):
    """1x1 conv -> BN -> ReLU -> 3x3 conv -> BN -> ReLU; with ``causal`` the 3x3 conv is padded by 2
    on the top and left only, so cell (j, k) sees rows j-2..j and columns k-2..k."""

    def __init__(self, in_dim: int, out_dim: int, causal: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim, kernel_size=1)
        self.bn1 = nn.BatchNorm2d(out_dim)
        self.conv2 = nn.Conv2d(out_dim, out_dim, kernel_size=3)
        self.bn2 = nn.BatchNorm2d(out_dim)
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after_conv1(self.conv1(x))

    def after_conv1(self, h: torch.Tensor) -> torch.Tensor:
        """h: the 1x1 conv's output (B, C, H, W) -> (B, C, H', W')."""
        h = F.relu(self.bn1(h))
        if self.causal:
            h = F.pad(h, (2, 0, 2, 0))  # (B, C, H + 2, W + 2)
        return F.relu(self.bn2(self.conv2(h)))  # (B, C, H, W) causal, (B, C, H - 2, W - 2) otherwise


def build_blocks(d_model: int, block_dims: tuple[int, ...], causal: bool) -> nn.ModuleList:
    dims = (2 * d_model, *block_dims)
    return nn.ModuleList(ConvBlock(dims[i], dims[i + 1], causal) for i in range(len(block_dims)))


def run_blocks(emb: torch.Tensor, blocks: nn.ModuleList) -> torch.Tensor:
    """emb: (B, L, d) item embeddings -> the last block's grid (B, C, H, W)."""
    h = blocks[0].after_conv1(pairwise_pointwise_conv(emb, blocks[0].conv1))
    for block in blocks[1:]:
        h = block(h)
    return h


def prefix_square_mean(x: torch.Tensor) -> torch.Tensor:
    """(B, C, L, L) -> (B, L, C): row t is the mean of x[..., :t+1, :t+1].

    The square for t is the one for t-1 plus its border, the cells with max(j, k) = t. Summing each
    cell into its border (a scatter-add) then a cumulative sum over t gives every square in O(L^2)
    with no (L, L, L) mask, no (B, C, L, L) temporary in forward, and one (the gradient, a gather)
    in backward.
    """
    batch, channels, size, _ = x.shape
    steps = torch.arange(size, device=x.device)
    border_of = torch.maximum(steps.unsqueeze(1), steps.unsqueeze(0)).flatten()  # (L * L,)
    border_of = border_of.expand(batch, channels, -1)  # a view: the index costs L^2 integers
    border = x.new_zeros(batch, channels, size).scatter_add(-1, border_of, x.flatten(2))  # (B, C, L)
    cells = (steps + 1).to(x.dtype).square()  # (t + 1)^2
    return (border.cumsum(-1) / cells).transpose(1, 2)


class CosRec(nn.Module):
    def __init__(self, cfg: CosRecConfig):
        super().__init__()
        min_len = 2 * len(cfg.block_dims) + 1
        if cfg.max_len < min_len:
            raise ValueError(
                f"CosRec needs max_len >= {min_len} (each block's 3x3 conv removes 2), got {cfg.max_len}"
            )
        self.cfg = cfg
        d = cfg.d_model
        self.user_emb = nn.Embedding(cfg.num_users, d)
        self.item_emb = nn.Embedding(cfg.num_items + 1, d)  # row 0: padding, embedded like an item
        self.blocks = build_blocks(d, cfg.block_dims, causal=False)
        self.fc = nn.Linear(cfg.block_dims[-1], cfg.fc_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        # Per-item output weights W2, b2, stored as tables: only the scored items are looked up.
        self.out_weight = nn.Embedding(cfg.num_items + 1, cfg.fc_dim + d)
        self.out_bias = nn.Embedding(cfg.num_items + 1, 1)
        for table in (self.user_emb, self.item_emb, self.out_weight):
            nn.init.normal_(table.weight, 0.0, 1.0 / table.embedding_dim)
        nn.init.zeros_(self.out_bias.weight)

    def represent(self, batch: Batch) -> torch.Tensor:
        """(seq (B, L), user (B,)) -> (B, fc_dim + d): one vector for the whole window (not causal,
        so no per-position ``encode``)."""
        seq = batch["seq"]
        min_len = 2 * len(self.blocks) + 1
        if seq.shape[1] < min_len:
            raise ValueError(f"CosRec needs sequences of at least {min_len} items, got {seq.shape[1]}")
        h = run_blocks(self.item_emb(seq), self.blocks)  # (B, C, L - 4, L - 4)
        h = self.dropout(torch.tanh(self.fc(h.mean((-2, -1)))))  # global average pool -> (B, fc_dim)
        return torch.cat([h, self.user_emb(batch["user"])], -1)

    def score(self, x: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """x (B, D), items (B, n) -> (B, n): W2[item] . x + b2[item]."""
        return (self.out_weight(items) @ x.unsqueeze(-1)).squeeze(-1) + self.out_bias(items).squeeze(-1)

    def forward(self, batch: Batch) -> torch.Tensor:
        targets = batch["targets"]
        logits = self.score(self.represent(batch), torch.cat([targets, batch["negatives"]], 1))
        pos, neg = logits.split([targets.shape[1], logits.shape[1] - targets.shape[1]], dim=1)
        # -mean(log sigmoid(pos)) - mean(log(1 - sigmoid(neg))), in the stable softplus form.
        return F.softplus(-pos).mean() + F.softplus(neg).mean()

    def predict(self, batch: Batch) -> torch.Tensor:
        return self.score(self.represent(batch), batch["candidates"])  # (B, C)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, **fused_on_cuda(self))


class CosRecPlus(nn.Module):
    def __init__(self, cfg: CosRecPlusConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.user_emb = nn.Embedding(cfg.num_users + 1, d)
        self.item_emb = nn.Embedding(cfg.num_items + 1, d)  # row 0: padding, embedded like an item
        self.blocks = build_blocks(d, cfg.block_dims, causal=True)
        self.fc = nn.Linear(cfg.block_dims[-1], cfg.fc_dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(cfg.fc_dim + d, cfg.num_items + 1)  # only candidates' rows are used

    def encode(self, batch: Batch) -> torch.Tensor:
        """(seq (B, L), user (B,)) -> (B, L, fc_dim + d); position t sees items <= t."""
        seq = batch["seq"]
        h = run_blocks(self.item_emb(seq), self.blocks)  # (B, C, L, L)
        h = self.dropout(torch.tanh(self.fc(prefix_square_mean(h))))  # (B, L, fc_dim)
        user = self.user_emb(batch["user"]).unsqueeze(1).expand(-1, seq.shape[1], -1)  # (B, L, d)
        return torch.cat([h, user], -1)

    def score(self, x: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """x (..., D), items (..., n) -> (..., n): the output layer's logits of those items only."""
        weight = F.embedding(items, self.out.weight)  # (..., n, D)
        bias = F.embedding(items, self.out.bias.unsqueeze(-1)).squeeze(-1)  # (..., n)
        return (weight @ x.unsqueeze(-1)).squeeze(-1) + bias

    def forward(self, batch: Batch) -> torch.Tensor:
        pos = batch["pos"]
        logits = self.score(self.encode(batch), torch.stack([pos, batch["neg"]], -1))  # (B, L, 2)
        labels = torch.zeros_like(logits)
        labels[..., 0] = 1.0
        losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        # One mean over the positive and negative logits of real positions, as the authors' BCE over
        # non-NaN targets; a weighted sum rather than boolean indexing avoids a host sync.
        real = (pos != 0).unsqueeze(-1).to(logits.dtype)  # (B, L, 1)
        return (losses * real).sum() / (2 * real.sum())

    def predict(self, batch: Batch) -> torch.Tensor:
        return self.score(self.encode(batch)[:, -1], batch["candidates"])  # (B, C)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.cfg.lr, **fused_on_cuda(self))


def make_batch(cfg: CosRecConfig, batch_size: int, seq_len: int, device, generator) -> Batch:
    """A window of L items (left-padded), its user, T next items, T negatives and candidates."""
    real = left_padded_lengths_mask(batch_size, seq_len, device, generator)
    return {
        "seq": random_items(batch_size, seq_len, cfg.num_items, device, generator) * real,
        "user": torch.randint(0, cfg.num_users, (batch_size,), device=device, generator=generator),
        "targets": random_items(batch_size, cfg.num_targets, cfg.num_items, device, generator),
        "negatives": random_items(batch_size, cfg.num_negatives, cfg.num_items, device, generator),
        "candidates": random_items(batch_size, cfg.num_candidates, cfg.num_items, device, generator),
    }


def make_plus_batch(cfg: CosRecPlusConfig, batch_size: int, seq_len: int, device, generator) -> Batch:
    """SASRec's inputs (next item and one negative per position, 0 at padding) plus the user."""
    batch = next_item_batch(cfg, batch_size, seq_len, device, generator)
    batch["user"] = torch.randint(1, cfg.num_users + 1, (batch_size,), device=device, generator=generator)
    return batch
