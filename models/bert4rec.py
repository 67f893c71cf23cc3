"""BERT4Rec (Sun et al., CIKM 2019): a bidirectional Transformer encoder trained with the cloze task.

Follows the authors' TensorFlow code (FeiSun/BERT4Rec, modeling.py + run.py), a BERT encoder:
item embedding + learned positional embedding -> LayerNorm -> dropout -> post-LN blocks of
[self-attention (padding-only key mask, not causal) -> dropout -> residual -> LayerNorm ->
GELU FFN (4d) -> dropout -> residual -> LayerNorm]. Training masks round(length x mask_prob) of
each history's items, at most ``max_predictions_per_seq``, with [MASK] and predicts them with a full
softmax over the vocabulary: a dense + GELU + LayerNorm transform, then dot products with the shared
item embedding plus an output bias. Inference puts [MASK] after the history and scores the
candidates from that position.

The cloze settings differ per dataset in the authors' run scripts (run_beauty.sh, run_ml-1m.sh,
run_steam.sh and the bert_train/*.json they name): PRESETS. Their dupe_factor (10 masked copies of
each history) and sliding window only multiply the training instances: no step costs more.

Logits are computed only at masked slots, never (B, L, |I|): the encoder output is gathered first,
as the original's ``gather_indexes`` does.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import MultiHeadAttention
from models.base import Batch, fused_on_cuda, left_padded_lengths_mask, random_items


@dataclass
class BERT4RecConfig:
    num_items: int = 57_289
    # Defaults: the authors' ML-1M run; the other datasets': PRESETS.
    max_len: int = 200
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 2
    d_ff: int = 256  # 4d
    dropout: float = 0.2  # hidden dropout
    attention_dropout: float = 0.2  # on the attention probabilities
    mask_prob: float = 0.2  # cloze share of each history (masked_lm_prob)
    max_predictions_per_seq: int = 40  # at most this many masked items per history
    layer_norm_eps: float = 1e-12  # tf.contrib.layers.layer_norm's epsilon
    init_std: float = 0.02  # truncated normal, cut at 2 std as TF's initializer
    attention: str = "naive"  # "naive" materialises (B, h, L, L) as the original code does
    num_candidates: int = 101  # inference: 1 positive + 100 sampled negatives
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    weight_decay: float = 0.01  # not on LayerNorm weights and biases, as the original


# Per dataset, from run_<dataset>.sh and the bert_config json it names. Steam's script runs the
# d = 256 config (bert_config_steam_256.json); the others d = 64.
PRESETS: dict[str, dict] = {
    "beauty": {"max_len": 50, "mask_prob": 0.6, "max_predictions_per_seq": 30, "dropout": 0.5, "attention_dropout": 0.2},
    "ml-1m": {"max_len": 200, "mask_prob": 0.2, "max_predictions_per_seq": 40, "dropout": 0.2, "attention_dropout": 0.2},
    "steam": {
        "max_len": 50, "mask_prob": 0.4, "max_predictions_per_seq": 20, "dropout": 0.2, "attention_dropout": 0.2,
        "d_model": 256, "d_ff": 1024, "num_heads": 8,
    },
}


def mask_token(cfg: BERT4RecConfig) -> int:
    """Vocabulary: 0 padding, 1..num_items items, num_items + 1 the [MASK] token."""
    return cfg.num_items + 1


def max_predictions(cfg: BERT4RecConfig, seq_len: int) -> int:
    """The most masked items a history of ``seq_len`` items gets: the authors' num_to_predict,
    min(max_predictions_per_seq, max(1, round(L x mask_prob))). Python's round is half-to-even like
    torch's, so ``make_batch`` agrees with it (the authors' Python 2 rounds halves away from zero; at
    their mask probabilities, 0.2, 0.4 and 0.6, no length gives a half)."""
    return min(cfg.max_predictions_per_seq, max(1, round(seq_len * cfg.mask_prob)))


class BERT4RecBlock(nn.Module):
    """Post-LN Transformer block, as BERT."""

    def __init__(self, cfg: BERT4RecConfig):
        super().__init__()
        self.attention = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.attention_dropout, cfg.attention)
        self.attention_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.ffn_in = nn.Linear(cfg.d_model, cfg.d_ff)
        self.ffn_out = nn.Linear(cfg.d_ff, cfg.d_model)
        self.ffn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """x: (B, L, d); padding: (B, L), True at padded keys."""
        x = self.attention_norm(x + self.dropout(self.attention(x, x, key_padding_mask=padding)))
        return self.ffn_norm(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))  # (B, L, d)


class BERT4Rec(nn.Module):
    def __init__(self, cfg: BERT4RecConfig):
        super().__init__()
        self.cfg = cfg
        vocab = cfg.num_items + 2  # padding, items, [MASK]
        # Row 0 is an ordinary trainable row, as in the original: it is never attended to (padding
        # keys are masked) but stays a class of the training softmax.
        self.item_emb = nn.Embedding(vocab, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.emb_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.emb_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(BERT4RecBlock(cfg) for _ in range(cfg.num_layers))
        # Output head: the original's cls/predictions transform, tied embedding and output bias.
        self.head_dense = nn.Linear(cfg.d_model, cfg.d_model)
        self.head_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.output_bias = nn.Parameter(torch.zeros(vocab))
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = self.cfg.init_std
            nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    def encode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, L) left-padded with 0 -> (B, L, d), every position seeing every real item.

        Positions count from the first real item, so a left-padded history gets the positions the
        original gives it in its right-padded layout, whatever the amount of padding.
        """
        padding = ids == 0  # (B, L)
        first_real = padding.sum(dim=1, keepdim=True)  # (B, 1)
        positions = (torch.arange(ids.shape[1], device=ids.device) - first_real).clamp(min=0)  # (B, L)
        x = self.emb_dropout(self.emb_norm(self.item_emb(ids) + self.pos_emb(positions)))  # (B, L, d)
        for layer in self.layers:
            x = layer(x, padding)
        return x

    def _transform(self, h: torch.Tensor) -> torch.Tensor:
        return self.head_norm(F.gelu(self.head_dense(h)))

    def forward(self, batch: Batch) -> torch.Tensor:
        """Cloze loss: mean cross-entropy over the whole vocabulary at the masked positions.

        batch["masked_seq"]: (B, L) history with [MASK] at the masked positions; batch["labels"]:
        (B, L) the hidden items there, 0 elsewhere, at most ``max_predictions(cfg, L)`` per row (as
        ``make_batch`` builds them). Like the original, every row gets that many slots (short rows
        padded with ignored ones), so the output layer's shape is fixed and no host sync is needed.
        The original always computes max_predictions_per_seq slots; the ones no history of length L
        can fill (when L x mask_prob is smaller) are left out here.
        """
        labels = batch["labels"]
        h = self.encode_ids(batch["masked_seq"])  # (B, L, d)
        slots = max_predictions(self.cfg, labels.shape[1])
        picked = torch.topk((labels != 0).float(), slots, dim=1).indices  # (B, P): masked ones first
        h = h.gather(1, picked.unsqueeze(-1).expand(-1, -1, h.shape[-1]))  # (B, P, d)
        logits = self._transform(h) @ self.item_emb.weight.T + self.output_bias  # (B, P, V)
        targets = labels.gather(1, picked)  # (B, P), 0 at the unused slots
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0)

    def predict(self, batch: Batch) -> torch.Tensor:
        """batch["seq"]: (B, L) history; batch["candidates"]: (B, C) -> (B, C) scores.

        As the original's test instances, the last L - 1 items are followed by [MASK] at the last
        position. Scores are the candidates' logits: the original ranks by log-softmax over the whole
        vocabulary, which differs from them by one constant per row, so the ranking is the same.
        """
        seq = batch["seq"]
        mask = torch.full_like(seq[:, :1], mask_token(self.cfg))
        h = self.encode_ids(torch.cat([seq[:, 1:], mask], dim=1))[:, -1]  # (B, d)
        t = self._transform(h)  # (B, d)
        candidates = batch["candidates"]
        scores = (self.item_emb(candidates) @ t.unsqueeze(-1)).squeeze(-1)  # (B, C)
        return scores + self.output_bias[candidates]

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """AdamW as the original's AdamWeightDecayOptimizer: decoupled decay 0.01 except on
        LayerNorm weights and biases."""
        decay, no_decay = [], []
        for module in self.modules():
            for name, p in module.named_parameters(recurse=False):
                skip = isinstance(module, nn.LayerNorm) or name == "bias" or p is self.output_bias
                (no_decay if skip else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.cfg.lr, betas=self.cfg.betas, eps=self.cfg.eps, **fused_on_cuda(self))


def make_batch(cfg: BERT4RecConfig, batch_size: int, seq_len: int, device, generator) -> Batch:
    """Left-padded histories, their cloze version and labels, and candidates for inference.

    Each history gets round(length x mask_prob) (at least 1, at most max_predictions_per_seq) of its
    real items replaced by [MASK], chosen uniformly, as the authors' data generation (their mask_prob
    1.0: always [MASK], never kept or swapped for a random item).
    """
    real = left_padded_lengths_mask(batch_size, seq_len, device, generator)  # (B, L)
    seq = random_items(batch_size, seq_len, cfg.num_items, device, generator) * real
    # float64 so the rounding matches max_predictions' Python arithmetic exactly.
    budget = max_predictions(cfg, seq_len)
    num_masked = (real.sum(dim=1).double() * cfg.mask_prob).round().clamp(1, budget)  # (B,)
    keys = torch.rand(batch_size, seq_len, device=device, generator=generator).masked_fill(~real, 2.0)
    rank = keys.argsort(dim=1).argsort(dim=1)  # (B, L): padding ranks after every real item
    masked = rank < num_masked.unsqueeze(1)  # (B, L)
    candidates = random_items(batch_size, cfg.num_candidates, cfg.num_items, device, generator)
    return {
        "seq": seq,
        "masked_seq": seq.masked_fill(masked, mask_token(cfg)),
        "labels": seq * masked,
        "candidates": candidates,
    }
