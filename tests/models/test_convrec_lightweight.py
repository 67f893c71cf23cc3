"""Lightweight ConvRec: initialisation, residuals only in the RC variant, causality."""
import pytest
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


def block_reference(block, x: torch.Tensor, residual: bool) -> torch.Tensor:
    """The block written out: LN -> causal conv (-> + LN input) -> LN -> FFN (-> + its input)."""
    q = block.conv_norm(x)
    h = block.conv(q) + (q if residual else 0)
    g = block.ffn_norm(h)
    out = block.ffn.fc2(torch.relu(block.ffn.fc1(g))) + (g if residual else 0)
    return out


@pytest.mark.parametrize("residual", [False, True])
def test_residuals_only_in_the_rc_variant(residual):
    cfg = tiny_config(residual=residual)
    torch.manual_seed(0)
    model = LightweightConvRec(cfg).eval()
    block = model.blocks[0]
    x = torch.randn(3, cfg.max_len, cfg.d_model)
    real = torch.ones(3, cfg.max_len, dtype=torch.bool)
    with torch.no_grad():
        torch.testing.assert_close(block(x, real), block_reference(block, x, residual))
        other = block_reference(block, x, not residual)
        assert not torch.allclose(block(x, real), other)


def test_the_paper_default_has_no_residual_and_both_variants_have_the_same_parameters():
    assert LightweightConvRecConfig().residual is False
    plain, rc = LightweightConvRec(tiny_config()), LightweightConvRec(tiny_config(residual=True))
    assert [(n, p.shape) for n, p in plain.named_parameters()] == [(n, p.shape) for n, p in rc.named_parameters()]


@pytest.mark.parametrize("residual", [False, True])
def test_both_variants_stay_causal(residual):
    cfg = tiny_config(residual=residual)
    torch.manual_seed(0)
    model = LightweightConvRec(cfg).eval()
    batch = tiny_batch(cfg)
    t = 6
    changed = dict(batch, seq=batch["seq"].clone())
    changed["seq"][:, t + 1:] = torch.randint(1, cfg.num_items + 1, changed["seq"][:, t + 1:].shape)
    with torch.no_grad():
        before, after = model.encode(batch), model.encode(changed)
    torch.testing.assert_close(before[:, : t + 1], after[:, : t + 1], rtol=0, atol=0)
    assert not torch.allclose(before[:, t + 1:], after[:, t + 1:])
