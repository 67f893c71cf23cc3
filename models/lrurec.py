"""LRURec (Yue et al., WSDM 2024): linear recurrent units over the item history, computed by a
parallel scan.

Follows the authors' code (yueqirex/LRURec: model/lru.py, trainer/lru.py, trainer/base.py,
config.py, dataloader/sas.py): item embedding -> dropout -> LayerNorm (no position embedding: the
recurrence orders the items) -> blocks of [LRU layer; FFN d -> 4d -> d (GELU, dropout after both
maps) -> LayerNorm(+ residual)] -> every position scores all items against the item embedding plus
an output bias, trained with cross-entropy over all items at every labelled position (``make_batch``).

The LRU layer, with a state of 2d complex channels and a diagonal complex recurrence:
    lambda = exp(-exp(nu_log) + i exp(theta_log)),   gamma = exp(gamma_log)           (2d,)
    u_t = gamma * (B x_t + b)                 B: (2d, d) complex, b: (2d,) complex
    h_t = lambda * m_{t-1} * h_{t-1} + u_t    m: 1 at real items, 0 at padding
    y_t = LayerNorm(x_t + dropout(Re(C h_t + c)))   C: (d, 2d) complex, c: (d,) complex
The mask drops the state carried out of a padded slot, so with left padding a real position sees
only the real items up to it: the model is causal and its real positions ignore the padding.

The scan. The authors pad the window on the left to the next power of two, P = 2^ceil(log2 L),
and run log2 P doubling steps: at step i every block of 2^i slots adds to its second half the
state at the end of its first half times lambda^1..lambda^(2^(i-1)). That is done here too, so the
cost of a step is a step function of L: every L in (P/2, P] costs what P costs. Each step builds
one new (B, P, 2d) state, so time is O(B P d log P) for the scan (elementwise, which FLOP counters
do not count) and O(B P d) for the projections; memory is O(B P d) (see ``lru_scan``).

Training: AdamW (lr 1e-3, weight decay 0.01 but not on biases and LayerNorms, eps 1e-9), batch
128. The authors also clip the gradient norm at 5 before each step; the project's training step
(zero_grad, loss, backward, optimizer step) has no place for it, so it is left out: one more pass
over the gradients, independent of L.

Complex weights are kept as real tensors with a trailing (real, imaginary) axis: the fused Adam
kernels take real tensors only. Counted in real scalars, each complex entry counts twice: 355,993
parameters at ML-1M where the authors' trainer prints 322,841 (``numel`` of a complex tensor). The projections run as real matrix products (x is real, and only
Re(C h + c) is kept), half the work of the authors' complex products for the same values; the
imaginary part of c never reaches the output, as in theirs.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.base import Batch, fused_on_cuda, left_padded_lengths_mask, random_items


@dataclass
class LRURecConfig:
    num_items: int = 3_416  # their ML-1M (5-core): 6,040 users, 3,416 items, the ml-1m profile
    max_len: int = 200  # bert_max_len on ML-1M (50 on Beauty, Sports, Video, Steam)
    d_model: int = 64  # bert_hidden_units; the LRU state has 2d complex channels
    num_blocks: int = 2
    dropout: float = 0.2  # bert_dropout: embeddings and FFN
    lru_dropout: float = 0.2  # bert_attn_dropout: on the LRU's output projection
    r_min: float = 0.8  # |lambda| is initialised uniformly on the ring r_min <= |lambda| <= r_max
    r_max: float = 0.99
    init_std: float = 0.02  # truncated normal within 2 std, every weight but LayerNorms and params_log
    num_candidates: int = 101  # inference: 1 positive + 100 sampled negatives
    lr: float = 1e-3
    weight_decay: float = 0.01  # AdamW, not on biases and LayerNorms
    adam_eps: float = 1e-9  # adam_epsilon


def padded_length(length: int) -> int:
    """The authors' scan length: the next power of two >= length."""
    return 1 << (length - 1).bit_length()


def lru_scan(u: torch.Tensor, lam: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """h_t = lam * real_{t-1} * h_{t-1} + u_t for all t, by recursive doubling.

    u: (B, P, D) complex, P a power of two; lam: (D,) complex; real: (B, P) bool, left-padded
    (monotone), which the doubling needs: a carry is gated by the mask at the end of the block it
    leaves, and for a monotone mask that equals gating every step.

    The carry is gated before it is scaled by the powers of lam, so autograd saves the small gated
    carry (N, 1, D) rather than a view of the step's whole state; the authors' order keeps every
    step's (B, P, D) state alive for backward, O(B P D log P) instead of O(B P D).
    """
    b, length, d = u.shape
    if length & (length - 1):
        raise ValueError(f"the scan runs over a power-of-two length; got {length}")
    gate_all = real.to(u.real.dtype)
    h = u
    powers = lam.unsqueeze(0)  # (half, D): lam^1 .. lam^half
    half = 1
    while half < length:
        blocks = h.view(b * length // (2 * half), 2 * half, d)  # (N, 2 half, D)
        first, second = blocks[:, :half], blocks[:, half:]
        gate = gate_all.view(-1, 2 * half)[:, half - 1 : half].unsqueeze(-1)  # (N, 1, 1): end of first half
        second = second + powers * (first[:, -1:] * gate)  # (N, half, D)
        h = torch.cat([first, second], dim=1).view(b, length, d)
        powers = torch.cat([powers, powers * powers[-1]])  # lam^1 .. lam^(2 half)
        half *= 2
    return h


def _ring_init(size: int, r_min: float, r_max: float) -> torch.Tensor:
    """(3, size) log-parameters of lambda and gamma: |lambda|^2 uniform on [r_min^2, r_max^2], phase
    uniform on [0, 2 pi], gamma = sqrt(1 - |lambda|^2) (the LRU paper's normalisation)."""
    u1, u2 = torch.rand(size), torch.rand(size)
    nu = -0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2)  # |lambda| = exp(-nu)
    theta = 2 * math.pi * u2
    gamma = torch.sqrt(1 - torch.exp(-2 * nu))
    return torch.log(torch.stack([nu, theta, gamma]))


class LRULayer(nn.Module):
    """(B, P, d) -> (B, P, d): the linear recurrence with input and output projections, residual,
    LayerNorm. Parameters in the authors' shapes, complex ones as (..., 2) real tensors."""

    def __init__(self, cfg: LRURecConfig):
        super().__init__()
        d, state = cfg.d_model, 2 * cfg.d_model
        self.state = state
        self.params_log = nn.Parameter(_ring_init(state, cfg.r_min, cfg.r_max))  # (3, 2d): nu, theta, gamma
        self.in_weight = nn.Parameter(torch.empty(state, d, 2))  # B
        self.in_bias = nn.Parameter(torch.empty(state, 2))
        self.out_weight = nn.Parameter(torch.empty(d, state, 2))  # C
        self.out_bias = nn.Parameter(torch.empty(d, 2))  # its imaginary part is unused, as in theirs
        self.dropout = nn.Dropout(cfg.lru_dropout)
        self.norm = nn.LayerNorm(d)

    def lam_gamma(self) -> tuple[torch.Tensor, torch.Tensor]:
        nu, theta, gamma = torch.exp(self.params_log)  # (2d,) each
        return torch.polar(torch.exp(-nu), theta), gamma  # lambda = exp(-nu + i theta)

    def project_in(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P, d) real -> (B, P, 2d) complex: gamma * (B x + b)."""
        _, gamma = self.lam_gamma()
        weight = self.in_weight.permute(2, 0, 1).reshape(2 * self.state, -1)  # (4d, d): [Re B; Im B]
        bias = self.in_bias.T.reshape(-1)  # (4d,)
        u = F.linear(x, weight, bias)  # (B, P, 4d)
        return torch.complex(u[..., : self.state], u[..., self.state :]) * gamma

    def project_out(self, h: torch.Tensor) -> torch.Tensor:
        """(B, P, 2d) complex -> (B, P, d): Re(C h + c) = Re C Re h - Im C Im h + Re c."""
        weight = torch.cat([self.out_weight[..., 0], -self.out_weight[..., 1]], dim=1)  # (d, 4d)
        return F.linear(torch.cat([h.real, h.imag], dim=-1), weight, self.out_bias[:, 0])

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        lam, _ = self.lam_gamma()
        h = lru_scan(self.project_in(x), lam, real)  # (B, P, 2d) complex
        return self.norm(x + self.dropout(self.project_out(h)))


class FeedForward(nn.Module):
    def __init__(self, cfg: LRURecConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.fc2 = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.fc2(self.dropout(F.gelu(self.fc1(x))))))


class LRUBlock(nn.Module):
    def __init__(self, cfg: LRURecConfig):
        super().__init__()
        self.lru = LRULayer(cfg)
        self.ffn = FeedForward(cfg)

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.lru(x, real))


class LRURec(nn.Module):
    def __init__(self, cfg: LRURecConfig):
        super().__init__()
        self.cfg = cfg
        # No padding_idx: the authors' row 0 is an ordinary, trained row (real positions never see it).
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.d_model)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.emb_norm = nn.LayerNorm(cfg.d_model)
        self.blocks = nn.ModuleList(LRUBlock(cfg) for _ in range(cfg.num_blocks))
        self.output_bias = nn.Parameter(torch.empty(cfg.num_items + 1))
        self._init_weights()

    def _init_weights(self) -> None:
        # The authors' truncated_normal_init: N(0, 0.02) cut at +-0.04 for every parameter (biases
        # and the output bias too; real and imaginary parts alike) but LayerNorms and params_log.
        norms = {id(p) for m in self.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
        with torch.no_grad():
            for name, p in self.named_parameters():
                if id(p) not in norms and not name.endswith("params_log"):
                    nn.init.trunc_normal_(p, std=self.cfg.init_std, a=-2 * self.cfg.init_std, b=2 * self.cfg.init_std)

    def encode(self, batch: Batch) -> torch.Tensor:
        """batch["seq"]: (B, L) left-padded item ids -> (B, L, d); position t sees items <= t."""
        seq = batch["seq"]
        length = seq.shape[1]
        real = seq != 0
        x = self.emb_norm(self.emb_dropout(self.item_emb(seq)))  # (B, L, d)
        pad = padded_length(length) - length
        x = F.pad(x, (0, 0, pad, 0))  # (B, P, d): zero slots on the left, as the authors'
        real = F.pad(real, (pad, 0))
        for block in self.blocks:
            x = block(x, real)
        return x[:, pad:]  # (B, L, d)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.item_emb.weight.T + self.output_bias  # (..., |I| + 1)

    def forward(self, batch: Batch) -> torch.Tensor:
        logits = self.logits(self.encode(batch))  # (B, L, |I| + 1)
        return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=0)

    def predict(self, batch: Batch) -> torch.Tensor:
        h = self.encode(batch)[:, -1]  # (B, d)
        candidates = batch["candidates"]
        return (self.item_emb(candidates) @ h.unsqueeze(-1)).squeeze(-1) + self.output_bias[candidates]  # (B, C)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        # The authors' groups: no decay for parameters named *bias* or *layer_norm*; params_log decays.
        norms = {id(p) for m in self.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
        plain = [p for n, p in self.named_parameters() if id(p) in norms or n.endswith("bias")]
        decay = [p for n, p in self.named_parameters() if not (id(p) in norms or n.endswith("bias"))]
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": plain, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.cfg.lr, eps=self.cfg.adam_eps, **fused_on_cuda(self))


def make_batch(cfg: LRURecConfig, batch_size: int, seq_len: int, device, generator) -> Batch:
    """Left-padded histories, the next item at every position as ``labels`` (0 = no loss), and
    ``cfg.num_candidates`` candidates for inference.

    As in the authors' training windows (labels are the window shifted by one, padded separately),
    a padded row also has a label at the slot just before its first item: the first item, to be
    predicted from the padding."""
    real = left_padded_lengths_mask(batch_size, seq_len, device, generator)
    seq = random_items(batch_size, seq_len, cfg.num_items, device, generator) * real
    labelled = real | F.pad(real[:, 1:], (0, 1))
    labels = random_items(batch_size, seq_len, cfg.num_items, device, generator) * labelled
    candidates = random_items(batch_size, cfg.num_candidates, cfg.num_items, device, generator)
    return {"seq": seq, "labels": labels, "candidates": candidates}
