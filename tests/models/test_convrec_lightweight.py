"""Lightweight ConvRec: initialisation, causal convolution."""
import torch

from models.convrec_lightweight import LightweightConvRec, LightweightConvRecConfig, make_batch


def tiny_config(**overrides) -> LightweightConvRecConfig:
    knobs = dict(num_items=40, max_len=12, d_model=20, num_heads=5, kernel_size=5)
    knobs.update(overrides)
    return LightweightConvRecConfig(**knobs)


def tiny_batch(cfg: LightweightConvRecConfig, batch_size: int = 8, seed: int = 0):
    return make_batch(cfg, batch_size, cfg.max_len, "cpu", torch.Generator().manual_seed(seed))


def test_padding_item_is_a_constant_zero_vector():
    """No public code: PyTorch's initialisation, whose padding rows are zero (the paper's "constant
    zero vector" for the padding item), not SASRec's xavier_normal_ over every row."""
    torch.manual_seed(0)
    model = LightweightConvRec(tiny_config())
    assert torch.equal(model.item_emb.weight[0], torch.zeros(20))
    assert torch.equal(model.pos_emb.weight[0], torch.zeros(20))
    assert model.item_emb.weight[1:].std().item() > 0.5  # N(0, 1), nn.Embedding's default
    model(tiny_batch(model.cfg)).backward()
    assert torch.equal(model.item_emb.weight.grad[0], torch.zeros(20))
