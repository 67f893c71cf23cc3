"""CARCA: parameter counts, equality with the authors' TensorFlow computation, padding invariance,
attention backends, batches, learning."""

import pytest
import torch
import torch.nn.functional as F

from models.base import count_parameters, count_trainable_parameters, left_padded_lengths_mask
from models.carca import CARCA, CARCAConfig, make_batch
from models.profiles import CONTEXT_FEATURES, get_profile


def tiny_config(**overrides) -> CARCAConfig:
    # head size 10: not a multiple of 8, so the sdpa path pads it
    knobs = dict(num_items=40, item_feature_dim=16, d_model=20, num_heads=2, num_blocks=2)
    knobs.update(overrides)
    return CARCAConfig(**knobs)


def tiny_batch(cfg: CARCAConfig, batch_size: int = 8, seq_len: int = 12, seed: int = 0):
    return make_batch(cfg, batch_size, seq_len, "cpu", torch.Generator().manual_seed(seed))


def parameter_formula(cfg: CARCAConfig) -> int:
    """Our parameters: the authors' trainable variables without the unused positional table, plus
    the frozen feature table."""
    d, f, c, rows = cfg.d_model, cfg.item_feature_dim, CONTEXT_FEATURES, cfg.num_items + 1
    embedding = rows * d + rows * f + (f + c) * 5 * d + 5 * d + 6 * d * d + d
    attention = 3 * (d * d + d)  # Q, K, V; no output projection
    block = 2 * d + attention + 2 * d + 2 * (d * d + d)
    return embedding + cfg.num_blocks * block + 2 * d + attention + d + 1


def test_parameter_count_at_authors_config():
    beauty = get_profile("beauty")
    cfg = CARCAConfig(num_items=beauty.num_items, item_feature_dim=beauty.item_feature_dim)
    with torch.device("meta"):  # the 57,290 x 6,507 table is never allocated
        model = CARCA(cfg)
    d, max_len = 90, 75  # CARCA.py, Beauty: hidden_units 90, maxlen 75
    authors_trainable = 8_291_611  # CARCA.py's tf variables at Beauty with F = 6,507 (formula below)
    assert authors_trainable == parameter_formula(cfg) - 57_290 * 6_507 + max_len * d
    ours = count_trainable_parameters(model)
    # The authors build a (maxlen x d) positional table but never add it to the input
    # (`self.seq += t` is commented out); only its L2 penalty reads it, so it is left out.
    assert authors_trainable - ours == max_len * d
    assert (authors_trainable - ours) / authors_trainable < 0.01
    # Their feature table is a tf.constant; here it is a frozen parameter and counted.
    assert count_parameters(model) == ours + 57_290 * 6_507 == 381_070_891


def test_parameter_count_formula_small_config():
    cfg = tiny_config(num_blocks=3)
    assert count_parameters(CARCA(cfg)) == parameter_formula(cfg)


def test_make_batch_shapes_and_padding():
    cfg = tiny_config()
    batch = tiny_batch(cfg, batch_size=16, seq_len=10)
    seq, real = batch["seq"], batch["seq"] != 0
    assert (~real).any()
    for key in ("pos", "neg"):
        assert batch[key].shape == (16, 10) and torch.equal(batch[key] != 0, real)
    for key in ("context", "pos_context"):
        assert batch[key].shape == (16, 10, CONTEXT_FEATURES) and (batch[key][~real] == 0).all()
    assert batch["candidates"].shape == (16, cfg.num_candidates)
    assert (batch["candidate_context"] == batch["candidate_context"][:, :1]).all()
    assert ((seq[real] >= 1) & (seq[real] <= cfg.num_items)).all()


def tf_normalize(x, norm):
    mean = x.mean(-1, keepdim=True)
    variance = x.var(-1, unbiased=False, keepdim=True)
    return norm.weight * (x - mean) / (variance + norm.eps) ** 0.5 + norm.bias


def tf_multihead_attention(att, queries, keys, num_heads, residual):
    """CARCA.py's multihead_attention: heads stacked on the batch axis, key and query masks read
    from the vectors (all-zero rows), masked scores set to -2**32 + 1."""
    q = F.leaky_relu(att.q_proj(queries), 0.2)
    k = F.leaky_relu(att.k_proj(keys), 0.2)
    v = F.leaky_relu(att.v_proj(keys), 0.2)
    q_, k_, v_ = (torch.cat(t.chunk(num_heads, dim=2), dim=0) for t in (q, k, v))  # (hN, T, C/h)
    outputs = q_ @ k_.transpose(1, 2) / k_.shape[-1] ** 0.5
    key_masks = torch.sign(keys.abs().sum(-1)).repeat(num_heads, 1)  # (hN, Tk)
    key_masks = key_masks.unsqueeze(1).expand(-1, queries.shape[1], -1)
    outputs = torch.where(key_masks == 0, torch.full_like(outputs, -2.0**32 + 1), outputs)
    outputs = outputs.softmax(-1)
    query_masks = torch.sign(queries.abs().sum(-1)).repeat(num_heads, 1).unsqueeze(-1)
    outputs = (outputs * query_masks) @ v_
    outputs = torch.cat(outputs.chunk(num_heads, dim=0), dim=2)  # (N, Tq, C)
    return outputs * queries if residual else outputs


def tf_item(model, ids, context, scale):
    kernel = torch.cat([model.feature_proj.weight, model.context_proj.weight], 1)  # one Dense on the concat
    feat_emb = F.linear(torch.cat([model.features[ids], context], -1), kernel, model.feature_proj.bias)
    return model.item_proj(torch.cat([model.item_emb.weight[ids] * scale, feat_emb], -1))


def tf_model(model, batch):
    """The authors' graph: loss (pos and neg through the cross-attention separately) and test logits."""
    cfg = model.cfg
    h = cfg.num_heads
    mask = (batch["seq"] != 0).float().unsqueeze(-1)
    seq = tf_item(model, batch["seq"], batch["context"], cfg.d_model**0.5) * mask
    for block in model.blocks:
        seq = tf_multihead_attention(block.attention, tf_normalize(seq, block.attention_norm), seq, h, True)
        inputs = tf_normalize(seq, block.ffn_norm)
        seq = block.fc2(F.leaky_relu(block.fc1(inputs), 0.2)) + inputs
        seq = seq * mask
    seq = tf_normalize(seq, model.final_norm)

    def logits(items, context):
        emb = tf_item(model, items, context, 1.0)
        out = tf_multihead_attention(model.cross_attention, emb, seq, h, cfg.cross_residual)
        return model.score(out).squeeze(-1)

    pos, neg = batch["pos"], batch["neg"]
    istarget = (pos != 0).float()
    pos_mask, neg_mask = (pos != 0).float(), (neg != 0).float()
    pos_logits = logits(pos, batch["pos_context"]) * pos_mask + model.score.bias * (1 - pos_mask)
    neg_logits = logits(neg, batch["pos_context"]) * neg_mask + model.score.bias * (1 - neg_mask)
    loss = torch.sum(
        -torch.log(torch.sigmoid(pos_logits) + 1e-24) * istarget
        - torch.log(1 - torch.sigmoid(neg_logits) + 1e-24) * istarget
    ) / istarget.sum()
    loss = loss + cfg.l2_emb * model.item_emb.weight.square().sum() / 2
    return loss, logits(batch["candidates"], batch["candidate_context"])


def randomise(model):
    """Move every trainable weight off its initial value, as training does: the final LayerNorm's
    shift too, which makes the padded profile rows non-zero keys of the cross-attention."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("attention", ["naive", "sdpa"])
@pytest.mark.parametrize("cross_residual", [True, False])
def test_loss_and_predict_equal_the_authors_computation(attention, cross_residual):
    cfg = tiny_config(attention=attention, cross_residual=cross_residual)
    torch.manual_seed(0)
    model = CARCA(cfg).eval()
    randomise(model)
    batch = tiny_batch(cfg, seq_len=12)
    with torch.no_grad():
        loss, test_logits = tf_model(model, batch)
        torch.testing.assert_close(model(batch), loss, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.predict(batch), test_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["naive", "sdpa"])
def test_what_sits_at_padded_positions_is_invisible(attention):
    cfg = tiny_config(attention=attention)
    torch.manual_seed(0)
    model = CARCA(cfg).eval()
    randomise(model)
    with torch.no_grad():
        model.final_norm.bias.normal_()  # padded profile rows are then non-zero keys
    batch = tiny_batch(cfg, batch_size=16, seq_len=12)
    padded = (batch["seq"] == 0).unsqueeze(-1)
    assert padded.any()
    generator = torch.Generator().manual_seed(5)
    changed = dict(batch)
    for key in ("context", "pos_context"):
        changed[key] = torch.where(padded, torch.rand(batch[key].shape, generator=generator) * 10, batch[key])
    with torch.no_grad():
        torch.testing.assert_close(model.predict(changed), model.predict(batch), atol=1e-6, rtol=0)
        torch.testing.assert_close(model(changed), model(batch), atol=1e-6, rtol=0)


def left_padded(batch, extra: int):
    """The same histories with ``extra`` more padded positions in front."""
    out = dict(batch)
    for key in ("seq", "pos", "neg"):
        out[key] = F.pad(batch[key], (extra, 0))
    for key in ("context", "pos_context"):
        out[key] = F.pad(batch[key], (0, 0, extra, 0))
    return out


@pytest.mark.parametrize("attention", ["naive", "sdpa"])
def test_cross_attention_keys_are_masked_by_zero_vectors_as_the_authors(attention):
    """The authors mask all-zero key vectors. The self-attention's padded keys are zero: masked.
    The cross-attention's are the final LayerNorm's shift beta: masked at initialisation (beta = 0),
    so more padding changes nothing; attended once beta moves, so more padding changes the scores."""
    cfg = tiny_config(attention=attention)
    torch.manual_seed(0)
    model = CARCA(cfg).eval()
    randomise(model)
    batch = tiny_batch(cfg, batch_size=8, seq_len=10)
    longer = left_padded(batch, 5)
    with torch.no_grad():
        model.final_norm.bias.zero_()  # as initialised
        torch.testing.assert_close(model.predict(longer), model.predict(batch), atol=1e-6, rtol=0)
        torch.testing.assert_close(model(longer), model(batch), atol=1e-6, rtol=0)
        model.final_norm.bias.normal_()
        moved = (model.predict(longer) - model.predict(batch)).abs().amax(dim=1)
    assert (moved > 1e-3).all(), "padded keys equal to beta must take part in the softmax"


@pytest.mark.parametrize("attention", ["naive", "sdpa"])
def test_keys_that_are_all_zero_vectors_are_attended_uniformly_as_the_authors(attention):
    """CARCA.py's masked score is -2**32 + 1, not -inf: a row with every key masked weighs them all
    the same (a one-item profile whose item the attention dropout zeroed, at initialisation)."""
    cfg = tiny_config(attention=attention)
    torch.manual_seed(0)
    model = CARCA(cfg).eval()
    randomise(model)
    att = model.cross_attention
    queries, keys = torch.randn(2, 5, cfg.d_model), torch.randn(2, 7, cfg.d_model)
    keys[0] = 0.0
    keys[1, :3] = 0.0
    with torch.no_grad():
        out = att(queries, keys)
        torch.testing.assert_close(out, tf_multihead_attention(att, queries, keys, cfg.num_heads, True))
    values = F.leaky_relu(att.v_proj(torch.zeros(cfg.d_model)), 0.2)  # every key's value in row 0
    torch.testing.assert_close(out[0], values * queries[0])  # the uniform mean, times the query


@pytest.mark.parametrize("seq_len", [8, 20])
def test_forward_and_predict_at_two_lengths(seq_len):
    cfg = tiny_config()
    torch.manual_seed(0)
    model = CARCA(cfg)
    batch = tiny_batch(cfg, batch_size=4, seq_len=seq_len)
    loss = model(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.features.grad is None  # the feature table stays frozen
    with torch.no_grad():
        scores = model.eval().predict(batch)
    assert scores.shape == (4, cfg.num_candidates) and torch.isfinite(scores).all()


def test_optimizer_is_adam_over_trainable_parameters():
    model = CARCA(tiny_config())
    optimizer = model.configure_optimizer()
    assert type(optimizer) is torch.optim.Adam
    group = optimizer.param_groups[0]
    assert group["lr"] == 1e-4 and group["betas"] == (0.9, 0.98) and group["weight_decay"] == 0
    assert sum(p.numel() for p in group["params"]) == count_trainable_parameters(model)


NUM_GROUPS, GROUP_SIZE = 4, 10


def group_items(group, generator):
    return group * GROUP_SIZE + torch.randint(1, GROUP_SIZE + 1, group.shape, generator=generator)


def planted_batch(batch_size: int, seq_len: int, num_candidates: int, generator):
    """A user's history is drawn from one item group g; the next items come from group g + 1 and
    the negatives from the other groups: telling them apart needs the history."""
    group = torch.randint(0, NUM_GROUPS, (batch_size, 1), generator=generator)
    target = (group + 1) % NUM_GROUPS
    real = left_padded_lengths_mask(batch_size, seq_len, "cpu", generator)

    def other_groups(n):
        return (target + torch.randint(1, NUM_GROUPS, (batch_size, n), generator=generator)) % NUM_GROUPS

    seq = group_items(group.expand(-1, seq_len), generator) * real
    context = torch.rand(batch_size, seq_len, CONTEXT_FEATURES, generator=generator) * real.unsqueeze(-1)
    pos = group_items(target.expand(-1, seq_len), generator) * real
    neg = group_items(other_groups(seq_len), generator) * real
    pos_context = torch.rand(batch_size, seq_len, CONTEXT_FEATURES, generator=generator) * real.unsqueeze(-1)
    cand = torch.cat([group_items(target, generator), group_items(other_groups(num_candidates - 1), generator)], 1)
    cand_context = torch.rand(batch_size, 1, CONTEXT_FEATURES, generator=generator).expand(-1, num_candidates, -1)
    return {"seq": seq, "context": context, "pos": pos, "neg": neg, "pos_context": pos_context,
            "candidates": cand, "candidate_context": cand_context}


def test_learns_a_planted_pattern():
    torch.manual_seed(0)
    cfg = tiny_config(num_items=NUM_GROUPS * GROUP_SIZE, d_model=32, dropout=0.1, lr=1e-3)
    model = CARCA(cfg)
    optimizer = model.configure_optimizer()
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        loss = model(planted_batch(32, 8, 20, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        scores = model.eval().predict(planted_batch(256, 8, 20, generator))
    hit_rate = (scores[:, 0:1] > scores[:, 1:]).all(1).float().mean().item()
    assert hit_rate > 0.8, f"hit rate {hit_rate:.2f}, chance is 1/20"
