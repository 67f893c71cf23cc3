"""SASRec: pmixer/SASRec.pytorch@756f742's forward and initialisation."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.sasrec import SASRec, SASRecConfig, make_batch


def tiny_config(**overrides) -> SASRecConfig:
    knobs = dict(num_items=40, max_len=12, d_model=16, num_heads=2)
    knobs.update(overrides)
    return SASRecConfig(**knobs)


def tiny_batch(cfg: SASRecConfig, batch_size: int = 8, seed: int = 0):
    return make_batch(cfg, batch_size, cfg.max_len, "cpu", torch.Generator().manual_seed(seed))


def reference_log2feats(model: SASRec, seq: torch.Tensor) -> torch.Tensor:
    """756f742's log2feats, with torch MultiheadAttention holding our weights: positions 0..L-1 of a
    (max_len, d) table (rows 1.. of ours), timeline mask after the embedding and after each block."""
    cfg = model.cfg
    timeline = (seq != 0).unsqueeze(-1)
    x = model.item_emb(seq) * cfg.d_model**0.5
    x = x + model.pos_emb.weight[1:][torch.arange(seq.shape[1])]
    x = x * timeline
    causal_block = ~torch.ones(seq.shape[1], seq.shape[1], dtype=torch.bool).tril()
    for block in model.blocks:
        own = block.attention
        mha = torch.nn.MultiheadAttention(cfg.d_model, cfg.num_heads, batch_first=True)
        with torch.no_grad():
            mha.in_proj_weight.copy_(torch.cat([own.q_proj.weight, own.k_proj.weight, own.v_proj.weight]))
            mha.in_proj_bias.copy_(torch.cat([own.q_proj.bias, own.k_proj.bias, own.v_proj.bias]))
            mha.out_proj.weight.copy_(own.out_proj.weight)
            mha.out_proj.bias.copy_(own.out_proj.bias)
        q = block.attention_norm(x)
        x = q + mha(q, x, x, attn_mask=causal_block, need_weights=False)[0]
        h = block.ffn_norm(x)
        x = h + block.ffn.fc2(F.relu(block.ffn.fc1(h)))
        x = x * timeline
    return model.final_norm(x)


@pytest.mark.parametrize("attention", ["naive", "sdpa"])
def test_encode_equals_the_reference_port(attention):
    cfg = tiny_config(attention=attention)
    torch.manual_seed(0)
    model = SASRec(cfg).eval()
    batch = tiny_batch(cfg)
    assert (batch["seq"] == 0).any(), "the batch must hold padded rows"
    with torch.no_grad():
        torch.testing.assert_close(model.encode(batch), reference_log2feats(model, batch["seq"]), atol=1e-5, rtol=1e-5)


def expected_std(name: str, cfg: SASRecConfig) -> float:
    """xavier_normal_'s std for the parameter of the original holding this weight."""
    d = cfg.d_model
    fans = {
        "item_emb.weight": (d, cfg.num_items + 1),
        "pos_emb.weight": (d, cfg.max_len),  # the original's table has no padding row
    }
    if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
        return math.sqrt(2 / (d + 3 * d))  # one packed (3d, d) in_proj_weight
    fan_in, fan_out = fans.get(name, (d, d))  # out_proj, and the FFN's kernel-1 Conv1d (d, d, 1)
    return math.sqrt(2 / (fan_in + fan_out))


def test_every_matrix_has_the_xavier_normal_std_of_the_original():
    cfg = SASRecConfig(num_items=3_000, max_len=200, d_model=64, num_heads=2)
    torch.manual_seed(0)
    model = SASRec(cfg)
    matrices = {name: p for name, p in model.named_parameters() if p.dim() >= 2}
    assert len(matrices) == 2 + 6 * cfg.num_blocks  # 2 tables; Q, K, V, out, fc1, fc2 per block
    for name, p in matrices.items():
        std = expected_std(name, cfg)
        assert p.std().item() == pytest.approx(std, rel=0.05), name
        assert p.mean().abs().item() < 0.05 * std, name


def test_vectors_keep_pytorch_defaults_and_attention_biases_start_at_zero():
    cfg = tiny_config(d_model=64)
    torch.manual_seed(0)
    model = SASRec(cfg)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            continue
        if "norm" in name:
            assert torch.equal(p, torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p)), name
        elif ".attention." in name:
            assert torch.equal(p, torch.zeros_like(p)), name  # MultiheadAttention's reset
        else:  # the FFN's Conv1d biases: U(-1/sqrt(d), 1/sqrt(d))
            assert p.abs().max() <= 1 / math.sqrt(cfg.d_model) and p.abs().max() > 0, name


def test_padding_rows_stay_random_get_no_gradient_and_reach_no_output():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = SASRec(cfg)
    # As main.py at 756f742 leaves them: drawn like every other row, not re-zeroed.
    assert model.item_emb.weight[0].abs().min() > 0
    assert model.pos_emb.weight[0].abs().min() > 0
    batch = tiny_batch(cfg, batch_size=16)
    assert (batch["seq"] == 0).any()
    model(batch).backward()
    assert torch.equal(model.item_emb.weight.grad[0], torch.zeros(cfg.d_model))
    assert torch.equal(model.pos_emb.weight.grad[0], torch.zeros(cfg.d_model))
    model.eval()
    with torch.no_grad():
        before_encode, before_loss = model.encode(batch), model(batch)
        model.item_emb.weight[0].normal_(std=10.0)
        model.pos_emb.weight[0].normal_(std=10.0)
        torch.testing.assert_close(model.encode(batch), before_encode, rtol=0, atol=0)
        torch.testing.assert_close(model(batch), before_loss, rtol=0, atol=0)
    padded = batch["seq"] == 0
    assert torch.equal(before_encode[padded], model.final_norm(torch.zeros_like(before_encode[padded])))
