"""LinRec: parameter count, the linear attention against its quadratic form, masking (the authors'
non-causal form and the causal option), left padding against RecBole's right padding, learning."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import top1_hit_rate, train_on

from models.base import count_parameters
from models.linrec import LinRec, LinRecConfig, causal_linear_attention, elu_l2, linear_attention, make_batch


def tiny_config(**overrides) -> LinRecConfig:
    knobs = dict(num_items=40, max_len=12, d_model=16, num_heads=2, d_ff=32, chunk_size=4)
    knobs.update(overrides)
    return LinRecConfig(**knobs)


def tiny_batch(cfg: LinRecConfig, batch_size: int = 8, seq_len: int | None = None, seed: int = 0):
    return make_batch(cfg, batch_size, seq_len or cfg.max_len, "cpu", torch.Generator().manual_seed(seed))


def authors_parameter_count(n_items: int, max_len: int = 200, d: int = 128, layers: int = 2, inner: int = 256) -> int:
    """RecBole's SASRec with LinRec's layers.py, from its layer shapes: item table (n_items rows,
    padding included), position table, embedding LayerNorm; per layer query/key/value/dense
    (d x d + d each), LayerNorm, FFN dense_1 (d x inner + inner), dense_2 (inner x d + d), LayerNorm."""
    embeddings = n_items * d + max_len * d + 2 * d
    layer = 4 * (d * d + d) + 2 * d + (d * inner + inner) + (inner * d + d) + 2 * d
    return embeddings + layers * layer


def test_parameter_count_at_authors_config():
    # run.py (hidden 128, inner 256, 2 layers, 8 heads) with ml-1m.yaml (MAX_ITEM_LIST_LENGTH 200) on
    # RecBole's ML-1M: 3,706 items, n_items = 3,707 with the padding id.
    with torch.device("meta"):
        model = LinRec(LinRecConfig(num_items=3_706))
    assert count_parameters(model) == authors_parameter_count(3_707) == 765_312


def test_attention_normalises_each_query_and_key_over_the_head_axis():
    x = torch.randn(2, 3, 7, 5)
    y = elu_l2(x)
    torch.testing.assert_close(y.norm(dim=-1), torch.ones(2, 3, 7))
    torch.testing.assert_close(y, F.elu(x) / F.elu(x).norm(dim=-1, keepdim=True))


def test_linear_attention_equals_the_quadratic_form():
    torch.manual_seed(0)
    q, k = elu_l2(torch.randn(2, 3, 11, 4)), elu_l2(torch.randn(2, 3, 11, 4))
    v = torch.randn(2, 3, 11, 4)
    reference = (q @ k.transpose(-2, -1)) @ v / math.sqrt(4)  # (B, h, L, L) scores, unnormalised, no mask
    torch.testing.assert_close(linear_attention(q, k, v), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("length, chunk_size", [(11, 4), (12, 4), (5, 8), (9, 1)])
def test_causal_linear_attention_equals_the_masked_quadratic_form(length, chunk_size):
    torch.manual_seed(0)
    q, k = elu_l2(torch.randn(2, 3, length, 4)), elu_l2(torch.randn(2, 3, length, 4))
    v = torch.randn(2, 3, length, 4)
    reference = (q @ k.transpose(-2, -1)).tril() @ v / math.sqrt(4)  # s <= t only
    torch.testing.assert_close(causal_linear_attention(q, k, v, chunk_size), reference, atol=1e-5, rtol=1e-5)


def full_rows_batch(cfg: LinRecConfig, batch_size: int = 6, seed: int = 0):
    """Unpadded histories: changing a later item then leaves the amount of padding alone."""
    generator = torch.Generator().manual_seed(seed)
    return {"seq": torch.randint(1, cfg.num_items + 1, (batch_size, cfg.max_len), generator=generator)}


def with_later_items_changed(batch, t: int, num_items: int):
    seq = batch["seq"].clone()
    seq[:, t + 1 :] = seq[:, t + 1 :] % num_items + 1  # every later item replaced by another one
    return {"seq": seq}


def test_authors_form_sees_the_future():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = LinRec(cfg).eval()
    batch = full_rows_batch(cfg)
    t = 5
    with torch.no_grad():
        before, after = model.encode(batch), model.encode(with_later_items_changed(batch, t, cfg.num_items))
    assert (before[:, : t + 1] - after[:, : t + 1]).abs().amax() > 1e-3, "the authors' attention ignores the mask"


def test_causal_form_does_not_see_the_future():
    cfg = tiny_config(causal=True)
    torch.manual_seed(0)
    model = LinRec(cfg).eval()
    batch = full_rows_batch(cfg)
    t = 5
    with torch.no_grad():
        before, after = model.encode(batch), model.encode(with_later_items_changed(batch, t, cfg.num_items))
    torch.testing.assert_close(before[:, : t + 1], after[:, : t + 1], atol=1e-6, rtol=1e-6)
    assert (before[:, t + 1 :] - after[:, t + 1 :]).abs().amax() > 1e-3


def right_padded_reference(model: LinRec, seq: torch.Tensor) -> torch.Tensor:
    """The authors' computation: items moved to the front of the window (RecBole's right padding),
    positions 0..L-1 from the left edge, the same layers. Returns (B, L, d) in that layout."""
    length = seq.shape[1]
    real = seq != 0
    shift = real.sum(dim=1)  # rolling a left-padded row by its length puts its items first
    right = torch.stack([row.roll(int(n)) for row, n in zip(seq, shift)])
    right_real = right != 0
    x = model.emb_norm(model.item_emb(right) + model.pos_emb(torch.arange(length)))
    for layer in model.layers:
        x = layer(x, right_real)
    return x


@pytest.mark.parametrize("causal", [False, True])
def test_left_padding_gives_the_authors_right_padded_outputs(causal):
    cfg = tiny_config(causal=causal)
    torch.manual_seed(0)
    model = LinRec(cfg).eval()
    seq = tiny_batch(cfg, batch_size=16)["seq"]
    lengths = (seq != 0).sum(dim=1)
    assert (lengths < cfg.max_len).sum() >= 2, "the batch must hold padded rows"
    with torch.no_grad():
        ours, reference = model.encode({"seq": seq}), right_padded_reference(model, seq)
    for row, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(ours[row, cfg.max_len - n :], reference[row, :n], atol=1e-5, rtol=1e-5)


def test_causal_form_ignores_padding_and_the_authors_form_does_not():
    batch = tiny_batch(tiny_config(), batch_size=16)
    padded_rows = batch["seq"][:, 0] == 0
    assert padded_rows.sum() >= 2
    for causal in (False, True):
        torch.manual_seed(0)
        model = LinRec(tiny_config(causal=causal)).eval()
        with torch.no_grad():
            before = model.predict(batch)
            model.item_emb.weight[0].normal_(std=1.0)  # whatever the padding row holds
            after = model.predict(batch)
        torch.testing.assert_close(after[~padded_rows], before[~padded_rows], atol=1e-5, rtol=1e-5)
        padding_seen = (after[padded_rows] - before[padded_rows]).abs().amax() > 1e-3
        assert padding_seen != causal


def test_causal_form_scores_the_same_in_a_longer_window():
    cfg = tiny_config(causal=True)
    torch.manual_seed(0)
    model = LinRec(cfg).eval()
    batch = tiny_batch(cfg, batch_size=8)
    longer_cfg = dataclasses.replace(cfg, max_len=2 * cfg.max_len + 3)
    longer = LinRec(longer_cfg).eval()
    state = model.state_dict()
    state["pos_emb.weight"] = torch.cat([state["pos_emb.weight"], longer.pos_emb.weight[cfg.max_len :]])
    longer.load_state_dict(state)
    padded = dict(batch, seq=F.pad(batch["seq"], (cfg.max_len + 3, 0)))
    with torch.no_grad():
        torch.testing.assert_close(longer.predict(padded), model.predict(batch), atol=1e-5, rtol=1e-5)


def test_loss_is_cross_entropy_over_every_item_at_the_last_position():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = LinRec(cfg).eval()
    batch = tiny_batch(cfg)
    with torch.no_grad():
        h = model.encode(batch)[:, -1]
        log_probs = (h @ model.item_emb.weight.T).log_softmax(dim=-1)  # (B, |I| + 1)
        reference = -log_probs.gather(1, batch["pos"].unsqueeze(1)).mean()
        torch.testing.assert_close(model(batch), reference)


@pytest.mark.parametrize("causal", [False, True])
def test_shapes(causal):
    cfg = tiny_config(causal=causal, max_len=10)  # not a multiple of the chunk size
    model = LinRec(cfg)
    batch = tiny_batch(cfg, batch_size=5)
    assert model.encode(batch).shape == (5, 10, cfg.d_model)
    loss = model(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.predict(batch).shape == (5, cfg.num_candidates)


def planted_batch(cfg: LinRecConfig, batch_size: int, generator: torch.Generator):
    """Histories walking a cycle over the items (each item is the previous one + 1), left-padded;
    the target is the next step and candidate 0 is it."""
    batch = make_batch(cfg, batch_size, cfg.max_len, "cpu", generator)
    start = torch.randint(0, cfg.num_items, (batch_size, 1), generator=generator)
    walk = (start + torch.arange(cfg.max_len + 1)) % cfg.num_items + 1  # (B, L + 1)
    negatives = (walk[:, -1:] + torch.randint(1, cfg.num_items, (batch_size, 9), generator=generator) - 1)
    negatives = negatives % cfg.num_items + 1  # never the positive
    return {
        "seq": walk[:, :-1] * (batch["seq"] != 0),
        "pos": walk[:, -1],
        "candidates": torch.cat([walk[:, -1:], negatives], dim=1),
    }


@pytest.mark.parametrize("causal", [False, True])
def test_learns_a_planted_successor_pattern(causal):
    torch.manual_seed(0)
    cfg = tiny_config(num_items=30, max_len=8, d_model=32, dropout=0.1, lr=1e-2, causal=causal)
    model = LinRec(cfg)
    generator = torch.Generator().manual_seed(0)
    losses = train_on(model, lambda size: planted_batch(cfg, size, generator))
    hit_rate = top1_hit_rate(model, planted_batch(cfg, 256, generator))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert hit_rate > 0.8, f"hit rate {hit_rate:.2f}, chance is 0.10"
