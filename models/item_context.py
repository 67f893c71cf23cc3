"""Synthetic inputs of the attribute- and context-aware models (CARCA, ProxyRCA).

Every interaction carries ``CONTEXT_FEATURES`` context values (year, month, day, day of week, day of
year, week), scaled to [0, 1] as the authors' preprocessing does; padded positions carry zeros.
Candidates (the positive at index 0, then the sampled negatives) are scored at the time of the
positive, so every candidate of a row gets the positive's context, as in both authors' samplers.
"""
import torch

from models.base import Batch, left_padded_lengths_mask, random_items
from models.profiles import CONTEXT_FEATURES


def random_context(batch_size: int, length: int, device, generator) -> torch.Tensor:
    """(B, length, 6) context values in [0, 1)."""
    return torch.rand(batch_size, length, CONTEXT_FEATURES, device=device, generator=generator)


def profile(num_items: int, batch_size: int, seq_len: int, device, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded histories (B, L) and their contexts (B, L, 6), zero at padding."""
    real = left_padded_lengths_mask(batch_size, seq_len, device, generator)
    seq = random_items(batch_size, seq_len, num_items, device, generator) * real
    context = random_context(batch_size, seq_len, device, generator) * real.unsqueeze(-1)
    return seq, context


def candidates(
    num_items: int, batch_size: int, num_candidates: int, device, generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidate ids (B, C), the positive at index 0, and their contexts (B, C, 6): the positive's
    context repeated, materialised as the authors' data loaders hand it over."""
    ids = random_items(batch_size, num_candidates, num_items, device, generator)
    context = random_context(batch_size, 1, device, generator).expand(-1, num_candidates, -1).contiguous()
    return ids, context


def make_candidate_batch(cfg, batch_size: int, seq_len: int, device, generator) -> Batch:
    """One step of the candidate-ranking workload: a profile and ``cfg.num_candidates`` candidates
    (1 positive at index 0 + sampled negatives), the label of every row being 0."""
    seq, context = profile(cfg.num_items, batch_size, seq_len, device, generator)
    cand, cand_context = candidates(cfg.num_items, batch_size, cfg.num_candidates, device, generator)
    return {"seq": seq, "context": context, "candidates": cand, "candidate_context": cand_context}
