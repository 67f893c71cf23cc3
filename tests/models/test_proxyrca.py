"""ProxyRCA: parameter counts, equality with the authors' computation, padding invariance,
attention backends, batches, learning."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.base import count_parameters, count_trainable_parameters, left_padded_lengths_mask
from models.profiles import CONTEXT_FEATURES, get_profile
from models.proxyrca import ProxyRCA, ProxyRCAConfig, make_batch


def tiny_config(**overrides) -> ProxyRCAConfig:
    knobs = dict(num_items=40, item_feature_dim=16, d_model=32, num_proxies=8, num_heads=4)
    knobs.update(overrides)
    return ProxyRCAConfig(**knobs)


def tiny_batch(cfg: ProxyRCAConfig, batch_size: int = 8, seq_len: int = 12, seed: int = 0):
    return make_batch(cfg, batch_size, seq_len, "cpu", torch.Generator().manual_seed(seed))


def parameter_formula(cfg: ProxyRCAConfig, num_rows: int) -> int:
    """The parameters of theeluwin/ProxyRCA's ProxyRCA, frozen feature table included."""
    d, f, p, c = cfg.d_model, cfg.item_feature_dim, cfg.num_proxies, CONTEXT_FEATURES
    encoder = (
        num_rows * f  # frozen feature table
        + p * d  # proxy table
        + (cfg.num_known_items + 1) * p  # proxy bias
        + (f + c) * 4 * d + 4 * d + 4 * d * p + p  # proxy selector MLP
        + f * d + d  # feature encoder
        + (d + c) * d + d  # attribute/context encoder
        + 2 * d * d + d  # item encoder
    )
    ffn = d * 4 * d + 4 * d + 4 * d * d + d
    attention = 4 * (d * d + d)
    layer = attention + ffn + 2 * 2 * d
    cross = attention + ffn + 2 * 2 * d
    return encoder + 2 * d + cfg.num_layers * layer + cross + d + 1


def test_parameter_count_at_authors_config():
    beauty = get_profile("beauty")
    cfg = ProxyRCAConfig(num_items=beauty.num_items, item_feature_dim=beauty.item_feature_dim)
    with torch.device("meta"):  # the 57,290 x 6,507 table is never allocated
        model = ProxyRCA(cfg)
    assert count_parameters(model) == 383_065_455  # the authors' code, Beauty, MODELS.md
    assert count_parameters(model) - count_trainable_parameters(model) == 57_290 * 6_507


def test_parameter_count_formula_small_config():
    cfg = tiny_config(num_layers=2, num_known_items=7)
    assert count_parameters(ProxyRCA(cfg)) == parameter_formula(cfg, cfg.num_items + 1)


def test_make_batch_shapes_padding_and_candidate_contexts():
    cfg = tiny_config()
    batch = tiny_batch(cfg, batch_size=16, seq_len=10)
    seq, context = batch["seq"], batch["context"]
    assert seq.shape == (16, 10) and context.shape == (16, 10, CONTEXT_FEATURES)
    assert batch["candidates"].shape == (16, cfg.num_candidates)
    assert batch["candidate_context"].shape == (16, cfg.num_candidates, CONTEXT_FEATURES)
    assert (seq == 0).any() and (context[seq == 0] == 0).all()
    assert ((batch["candidates"] >= 1) & (batch["candidates"] <= cfg.num_items)).all()
    # every candidate is scored at the positive's time
    assert (batch["candidate_context"] == batch["candidate_context"][:, :1]).all()


def authors_layer_norm(x, norm):
    return norm.weight * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + norm.eps) + norm.bias


def authors_gelu(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x.pow(3))))


def authors_attention(mha, q_in, kv_in, mask):
    """The authors' MultiHeadedAttention: a materialised (B, 1, Lq, Lk) mask filled with -1e9."""
    b, h = q_in.shape[0], mha.num_heads

    def heads(x):
        return x.view(b, -1, h, x.shape[-1] // h).transpose(1, 2)

    q, k, v = heads(mha.q_proj(q_in)), heads(mha.k_proj(kv_in)), heads(mha.v_proj(kv_in))
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(mask, -1e9)
    out = scores.softmax(-1) @ v
    return mha.out_proj(out.transpose(1, 2).reshape(b, -1, h * q.shape[-1]))


def authors_ffn(ffn, x):
    return ffn.fc_out(authors_gelu(ffn.fc_in(x)))


def authors_encoder(enc, ids, context):
    """The authors' ProxyItemEncoder: concat[features, context] through one selector Linear."""
    features = enc.features[ids]
    ac = torch.cat([F.leaky_relu(enc.feature_proj(features)), context], -1)
    ac_vector = enc.ac_proj(ac)
    selector_weight = torch.cat([enc.selector_features.weight, enc.selector_context.weight], 1)
    hidden = F.linear(torch.cat([features, context], -1), selector_weight, enc.selector_features.bias)
    weights = enc.selector_out(F.leaky_relu(hidden))
    tokens = ids.clone()
    tokens[tokens >= enc.proxy_bias.num_embeddings] = 0
    probs = F.softmax(weights + enc.proxy_bias.weight[tokens], -1)
    return enc.item_proj(torch.cat([probs @ enc.proxies.weight, ac_vector], -1))


def authors_logits(model, batch):
    seq, cand = batch["seq"], batch["candidates"]
    length, c = seq.shape[1], cand.shape[1]
    profile_mask = ~(seq > 0).unsqueeze(1).repeat(1, length, 1).unsqueeze(1)  # (B, 1, L, L)
    extract_mask = ~(seq > 0).unsqueeze(1).repeat(1, c, 1).unsqueeze(1)  # (B, 1, C, L)
    p = authors_layer_norm(authors_encoder(model.item_encoder, seq, batch["context"]), model.item_norm)
    e = authors_layer_norm(authors_encoder(model.item_encoder, cand, batch["candidate_context"]), model.item_norm)
    for layer in model.layers:
        z = authors_layer_norm(p, layer.attention_norm)
        p = p + authors_attention(layer.attention, z, z, profile_mask)
        p = p + authors_ffn(layer.ffn, authors_layer_norm(p, layer.ffn_norm))
    cross = model.cross_attention
    e = authors_layer_norm(e, cross.candidate_norm)
    p = authors_layer_norm(p, cross.profile_norm)
    y = authors_ffn(cross.ffn, authors_attention(cross.attention, e, p, extract_mask) * e)
    return model.score(y).squeeze(-1)


def randomise(model):
    """Move every trainable weight off its initial value (zero biases, unit LayerNorms)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("attention", ["naive", "sdpa"])
def test_predict_equals_the_authors_computation(attention):
    cfg = tiny_config(num_known_items=10, num_layers=2, attention=attention)
    torch.manual_seed(0)
    model = ProxyRCA(cfg).eval()
    randomise(model)
    batch = tiny_batch(cfg, seq_len=12)
    with torch.no_grad():
        torch.testing.assert_close(model.predict(batch), authors_logits(model, batch), atol=1e-5, rtol=1e-5)


def test_unknown_items_get_no_proxy_bias():
    cfg = tiny_config(num_known_items=5)
    torch.manual_seed(0)
    encoder = ProxyRCA(cfg).eval().item_encoder
    ids = torch.tensor([[0, 3, 5, 6, 40]])
    context = torch.rand(1, 5, CONTEXT_FEATURES)
    with torch.no_grad():
        before = encoder(ids, context)
        encoder.proxy_bias.weight[1:].normal_()
        after = encoder(ids, context)
    unchanged = torch.tensor([True, False, False, True, True])  # padding and items > 5
    assert torch.equal(before[0, unchanged], after[0, unchanged])
    assert not torch.allclose(before[0, ~unchanged], after[0, ~unchanged])


@pytest.mark.parametrize("attention", ["naive", "sdpa"])
def test_padding_invariance(attention):
    cfg = tiny_config(attention=attention)
    torch.manual_seed(0)
    model = ProxyRCA(cfg).eval()
    batch = tiny_batch(cfg, batch_size=16, seq_len=12)
    padded = batch["seq"] == 0
    assert padded.any()
    changed = dict(batch)
    noise = torch.rand(batch["context"].shape, generator=torch.Generator().manual_seed(5)) * 10
    changed["context"] = torch.where(padded.unsqueeze(-1), noise, batch["context"])
    with torch.no_grad():
        torch.testing.assert_close(model.predict(changed), model.predict(batch), atol=1e-6, rtol=0)
        torch.testing.assert_close(model(changed), model(batch), atol=1e-6, rtol=0)


@pytest.mark.parametrize("seq_len", [8, 20])
def test_forward_and_predict_at_two_lengths(seq_len):
    cfg = tiny_config()
    torch.manual_seed(0)
    model = ProxyRCA(cfg)
    batch = tiny_batch(cfg, batch_size=4, seq_len=seq_len)
    loss = model(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.item_encoder.features.grad is None  # the feature table stays frozen
    with torch.no_grad():
        scores = model.eval().predict(batch)
    assert scores.shape == (4, cfg.num_candidates) and torch.isfinite(scores).all()


def test_optimizer_is_adamw_over_trainable_parameters():
    model = ProxyRCA(tiny_config())
    optimizer = model.configure_optimizer()
    assert isinstance(optimizer, torch.optim.AdamW)
    group = optimizer.param_groups[0]
    assert group["lr"] == 1e-4 and group["weight_decay"] == 0.1
    assert sum(p.numel() for p in group["params"]) == count_trainable_parameters(model)


NUM_GROUPS, GROUP_SIZE = 4, 10


def planted_batch(batch_size: int, seq_len: int, num_candidates: int, generator):
    """A user's history is drawn from one item group g; the positive comes from group g + 1, the
    negatives from the other groups: ranking it first needs the history."""
    group = torch.randint(0, NUM_GROUPS, (batch_size, 1), generator=generator)
    real = left_padded_lengths_mask(batch_size, seq_len, "cpu", generator)
    seq = (group * GROUP_SIZE + torch.randint(1, GROUP_SIZE + 1, (batch_size, seq_len), generator=generator)) * real
    context = torch.rand(batch_size, seq_len, CONTEXT_FEATURES, generator=generator) * real.unsqueeze(-1)
    target = (group + 1) % NUM_GROUPS
    positive = target * GROUP_SIZE + torch.randint(1, GROUP_SIZE + 1, (batch_size, 1), generator=generator)
    other = (target + torch.randint(1, NUM_GROUPS, (batch_size, num_candidates - 1), generator=generator)) % NUM_GROUPS
    negatives = other * GROUP_SIZE + torch.randint(1, GROUP_SIZE + 1, other.shape, generator=generator)
    cand_context = torch.rand(batch_size, 1, CONTEXT_FEATURES, generator=generator).expand(-1, num_candidates, -1)
    return {"seq": seq, "context": context, "candidates": torch.cat([positive, negatives], 1),
            "candidate_context": cand_context}


def test_learns_a_planted_pattern():
    torch.manual_seed(0)
    cfg = tiny_config(num_items=NUM_GROUPS * GROUP_SIZE, lr=1e-3)
    model = ProxyRCA(cfg)
    with torch.no_grad():  # attributes that carry the item's group, as real item features would
        items = torch.arange(1, cfg.num_items + 1)
        model.item_encoder.features[1:] = 0.1 * torch.rand(cfg.num_items, cfg.item_feature_dim)
        model.item_encoder.features[items, (items - 1) // GROUP_SIZE] += 1.0
    optimizer = model.configure_optimizer()
    generator = torch.Generator().manual_seed(0)
    for _ in range(80):
        loss = model(planted_batch(32, 8, 20, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        scores = model.eval().predict(planted_batch(256, 8, 20, generator))
    hit_rate = (scores[:, 0:1] > scores[:, 1:]).all(1).float().mean().item()
    assert hit_rate > 0.8, f"hit rate {hit_rate:.2f}, chance is 1/20"
