# my_gru.py: a GRU4Rec-style next-item model as a seqprof plug-in
import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GRURec(nn.Module):
    family = "recurrent"  # a label for tables and plots

    def __init__(self, seq_len: int, num_items: int, dim: int = 64):
        super().__init__()  # seq_len: a GRU needs no position table, so it goes unused
        self.items = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.gru = nn.GRU(dim, dim, batch_first=True)

    def forward(self, seq: Tensor, target: Tensor) -> Tensor:  # the training loss
        hidden, _ = self.gru(self.items(seq))  # (B, L, d)
        logits = hidden @ self.items.weight.T  # (B, L, num_items + 1): every item at every step
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=0)

    def predict(self, seq: Tensor, candidates: Tensor) -> Tensor:  # scores (B, C) for infer mode
        hidden, _ = self.gru(self.items(seq))
        return torch.einsum("bd,bcd->bc", hidden[:, -1], self.items(candidates))


def make_batch(batch_size, seq_len, device, generator, num_items):
    items = torch.randint(1, num_items + 1, (batch_size, seq_len + 1), device=device, generator=generator)
    candidates = torch.randint(1, num_items + 1, (batch_size, 100), device=device, generator=generator)
    return {"seq": items[:, :-1], "target": items[:, 1:], "candidates": candidates}
