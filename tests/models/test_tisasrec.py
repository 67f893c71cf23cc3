"""TiSASRec: parameter counts, the port's time-aware attention and loss, interval clipping,
causality, padding, initialisation, learning."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import successor_walk, top1_hit_rate, train_on

from models.base import count_parameters
from models.tisasrec import TiSASRec, TiSASRecConfig, make_batch, synthetic_timestamps, time_interval_matrix


def tiny_config(**overrides) -> TiSASRecConfig:
    knobs = dict(num_items=40, max_len=12, d_model=16, time_span=20)
    knobs.update(overrides)
    return TiSASRecConfig(**knobs)


def tiny_batch(cfg: TiSASRecConfig, batch_size: int = 8, seq_len: int | None = None, seed: int = 0):
    return make_batch(cfg, batch_size, seq_len or cfg.max_len, "cpu", torch.Generator().manual_seed(seed))


def authors_parameter_count(item_num: int, maxlen: int, time_span: int = 256, d: int = 50, blocks: int = 2) -> int:
    """pmixer/TiSASRec.pytorch model.py: the item table, absolute positions for K and V, time
    intervals for K and V, per block two LayerNorms, Q/K/V linears (no output projection) and the
    FFN's two 1x1 convolutions, and the last LayerNorm."""
    tables = (item_num + 1) * d + 2 * maxlen * d + 2 * (time_span + 1) * d
    block = 2 * (2 * d) + 3 * (d * d + d) + 2 * (d * d + d)
    return tables + blocks * block + 2 * d


@pytest.mark.parametrize("maxlen, expected", [(50, 227_550), (200, 242_550)])
def test_parameter_count_at_authors_config(maxlen, expected):
    # ML-1M (3,416 items), d 50, 2 blocks, time_span 256: main.py's defaults; maxlen 200 is the
    # README's pretrained model. That checkpoint holds 400,550 parameters: it predates the fix of
    # issue #2 (commit 6561520), when the key interval table had item_num + 1 rows instead of
    # time_span + 1: 400,550 - 242,550 = (3,417 - 257) x 50.
    with torch.device("meta"):
        model = TiSASRec(TiSASRecConfig(num_items=3_416, max_len=maxlen))
    assert authors_parameter_count(3_416, maxlen) == expected
    assert count_parameters(model) == expected
    assert 400_550 - expected == (3_417 - 257) * 50 + 2 * (200 - maxlen) * 50


def test_parameter_formula_small_config():
    cfg = tiny_config(num_blocks=3, num_heads=2)
    assert count_parameters(TiSASRec(cfg)) == authors_parameter_count(40, 12, 20, 16, 3)


def ports_attention(attn, queries, keys, time_mask, time_k, time_v, pos_k, pos_v):
    """The port's TimeAwareMultiHeadAttention, written out: heads stacked along the batch, the
    interval terms as batched matrix-vector products, the padded queries' rows and the future
    filled with -2^32 + 1 before the softmax."""
    h = attn.num_heads
    size = queries.shape[-1] // h
    stack = lambda t, dim: torch.cat(torch.split(t, size, dim=dim), dim=0)  # noqa: E731
    q, k, v = stack(attn.q_proj(queries), 2), stack(attn.k_proj(keys), 2), stack(attn.v_proj(keys), 2)
    tk, tv, pk, pv = stack(time_k, 3), stack(time_v, 3), stack(pos_k, 2), stack(pos_v, 2)
    weights = q @ k.transpose(1, 2) + q @ pk.transpose(1, 2) + (tk @ q.unsqueeze(-1)).squeeze(-1)
    weights = weights / size**0.5
    length = weights.shape[-1]
    rows = time_mask.unsqueeze(-1).repeat(h, 1, 1).expand(-1, -1, length)
    future = ~torch.ones(length, length, dtype=torch.bool).tril()
    fill = torch.full_like(weights, -(2.0**32) + 1)
    weights = torch.where(rows, fill, weights)
    weights = torch.where(future.expand_as(weights), fill, weights).softmax(dim=-1)
    out = weights @ v + weights @ pv + (weights.unsqueeze(2) @ tv).reshape(v.shape)
    return torch.cat(torch.split(out, queries.shape[0], dim=0), dim=2)


def ports_encode(model: TiSASRec, batch) -> torch.Tensor:
    """The port's seq2feats with the model's parameters (eval mode: dropout off)."""
    seq = batch["seq"]
    padding = seq == 0
    x = model.item_emb(seq) * model.cfg.d_model**0.5 * ~padding.unsqueeze(-1)
    positions = torch.arange(seq.shape[1]).repeat(seq.shape[0], 1)
    pos_k, pos_v = model.abs_pos_k(positions), model.abs_pos_v(positions)
    time_k, time_v = model.time_k(batch["time_matrix"]), model.time_v(batch["time_matrix"])
    for block in model.blocks:
        q = block.attention_norm(x)
        x = q + ports_attention(block.attention, q, x, padding, time_k, time_v, pos_k, pos_v)
        x = block.ffn(block.ffn_norm(x)) * ~padding.unsqueeze(-1)
    return model.final_norm(x)


@pytest.mark.parametrize("num_heads", [1, 2])
def test_encode_equals_the_ports_computation(num_heads):
    cfg = tiny_config(num_heads=num_heads)
    torch.manual_seed(0)
    model = TiSASRec(cfg).eval()
    batch = tiny_batch(cfg)
    assert (batch["seq"] == 0).any(), "the batch must hold padded rows"
    with torch.no_grad():
        torch.testing.assert_close(model.encode(batch), ports_encode(model, batch), rtol=1e-5, atol=1e-5)


def test_loss_equals_the_ports_loss():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = TiSASRec(cfg).eval()
    batch = tiny_batch(cfg)
    h = model.encode(batch)
    pos_logits = (h * model.item_emb(batch["pos"])).sum(-1)
    neg_logits = (h * model.item_emb(batch["neg"])).sum(-1)
    real = batch["pos"] != 0
    expected = F.binary_cross_entropy_with_logits(pos_logits[real], torch.ones(int(real.sum())))
    expected = expected + F.binary_cross_entropy_with_logits(neg_logits[real], torch.zeros(int(real.sum())))
    for table in (model.item_emb, model.abs_pos_k, model.abs_pos_v, model.time_k, model.time_v):
        expected = expected + cfg.l2_emb * torch.norm(table.weight)
    torch.testing.assert_close(model(batch), expected)


def test_interval_matrix_is_the_ports_clipped_absolute_difference():
    timestamps = torch.tensor([[0, 0, 1, 5, 300], [1, 2, 2, 40, 41]])
    span = 30
    expected = torch.tensor(
        [[[min(abs(a - b), span) for b in row] for a in row] for row in timestamps.tolist()]
    )  # utils.computeRePos, one user at a time
    assert torch.equal(time_interval_matrix(timestamps, span), expected)
    # Padding has time 0: its interval to a real item is that item's time, clipped.
    assert expected[0, 0, 4] == span and expected[0, 0, 3] == 5 and expected[0, 0, 1] == 0


def test_intervals_beyond_the_span_share_the_last_embedding():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = TiSASRec(cfg).eval()
    batch = tiny_batch(cfg)
    clipped = batch["time_matrix"] == cfg.time_span
    assert clipped.any() and (~clipped).any()
    longer = dict(batch, time_matrix=batch["time_matrix"].masked_fill(clipped, 10 * cfg.time_span))
    with torch.no_grad():
        torch.testing.assert_close(model.encode(longer), model.encode(batch), rtol=0, atol=0)
        # An interval below the span has its own embedding: the model sees it.
        shorter = dict(batch, time_matrix=batch["time_matrix"].masked_fill(clipped, cfg.time_span - 1))
        assert (model.encode(shorter) - model.encode(batch)).abs().amax() > 1e-4


def test_make_batch_intervals_come_from_increasing_per_user_times():
    cfg = tiny_config(max_len=16)
    batch = tiny_batch(cfg, batch_size=16)
    seq, matrix = batch["seq"], batch["time_matrix"]
    assert matrix.shape == (16, 16, 16) and matrix.dtype == torch.int64
    assert torch.equal(matrix, matrix.transpose(1, 2)) and (matrix.diagonal(dim1=1, dim2=2) == 0).all()
    assert (matrix >= 0).all() and (matrix <= cfg.time_span).all()
    real = seq != 0
    assert (~real).any(), "some rows must be padded"
    first = real.int().argmax(dim=1)
    # The port's times start at 1 for a user's first item and padding has time 0.
    rows = torch.arange(16)[(first > 0)]
    assert (matrix[rows, first[rows], 0] == 1).all()
    times = synthetic_timestamps(real, torch.Generator().manual_seed(1))
    assert (times[~real] == 0).all() and (times[real] >= 1).all()
    assert (times.diff(dim=1)[real[:, 1:] & real[:, :-1]] >= 0).all()
    assert batch["candidates"].shape == (16, cfg.num_candidates)


def test_future_intervals_and_items_are_invisible():
    cfg = tiny_config(num_heads=2)
    torch.manual_seed(0)
    model = TiSASRec(cfg).eval()
    batch = tiny_batch(cfg)
    t = 6
    changed = {k: v.clone() for k, v in batch.items()}
    # A different future: new later items and new intervals to them, in both directions.
    changed["seq"][:, t + 1:] = torch.randint(1, cfg.num_items + 1, (8, cfg.max_len - t - 1))
    noise = torch.randint(0, cfg.time_span + 1, changed["time_matrix"].shape)
    future = torch.zeros(cfg.max_len, dtype=torch.bool)
    future[t + 1:] = True
    touched = future.view(1, -1, 1) | future.view(1, 1, -1)
    changed["time_matrix"] = torch.where(touched, noise, batch["time_matrix"])
    with torch.no_grad():
        before, after = model.encode(batch), model.encode(changed)
    torch.testing.assert_close(after[:, : t + 1], before[:, : t + 1], rtol=0, atol=1e-6)
    assert (after[:, t + 1:] - before[:, t + 1:]).abs().amax() > 1e-3


def test_padding_as_in_the_port():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = TiSASRec(cfg).eval()
    batch = tiny_batch(cfg, batch_size=16)
    padded = batch["seq"] == 0
    assert padded.any(dim=1).sum() >= 2
    with torch.no_grad():
        h, scores = model.encode(batch), model.predict(batch)
        # Padded positions are zero after every block: the final LayerNorm maps them to its bias.
        torch.testing.assert_close(h[padded], model.final_norm.bias.expand(int(padded.sum()), -1))
        # Whatever the padding row of the item table holds (the port's init fills it), inputs are
        # zeroed at padding.
        model.item_emb.weight[0].normal_(std=10.0)
        torch.testing.assert_close(model.encode(batch), h, rtol=0, atol=1e-6)
        torch.testing.assert_close(model.predict(batch), scores, rtol=0, atol=1e-5)
    # Padded targets leave the loss.
    shifted = dict(batch, pos=batch["pos"].clone(), neg=batch["neg"].clone())
    shifted["pos"][padded] = 0
    torch.testing.assert_close(model(shifted), model(batch))


def test_padded_keys_are_attended_unless_masked_as_in_the_tf_original():
    cfg = tiny_config()
    batch = tiny_batch(cfg, batch_size=16)
    padded_rows = (batch["seq"] == 0).any(dim=1)
    real = batch["seq"] != 0
    # New intervals between the real queries and the padded keys only.
    to_padding = real.unsqueeze(2) & ~real.unsqueeze(1)  # (B, L, L)
    changed = dict(batch, time_matrix=torch.where(to_padding, 0, batch["time_matrix"]))
    assert (changed["time_matrix"] != batch["time_matrix"]).any()
    for mask_padding_keys, visible in ((False, True), (True, False)):
        torch.manual_seed(0)
        model = TiSASRec(dataclasses.replace(cfg, mask_padding_keys=mask_padding_keys)).eval()
        with torch.no_grad():
            delta = (model.predict(changed) - model.predict(batch)).abs().amax(dim=1)
        if visible:  # the port: real queries attend to the padded keys (bias, position, interval)
            assert (delta[padded_rows] > 1e-4).all() and (delta[~padded_rows] == 0).all()
        else:
            assert (delta < 1e-5).all()


def test_initialisation_is_the_ports_xavier_uniform():
    torch.manual_seed(0)
    model = TiSASRec(TiSASRecConfig())
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            bound = math.sqrt(6.0 / (p.shape[0] + p.shape[1]))
            assert p.abs().max() <= bound and p.abs().max() > 0.95 * bound, name
    assert model.item_emb.weight[0].abs().sum() > 0  # not re-zeroed, as in the port
    assert torch.equal(model.blocks[0].ffn_norm.weight, torch.ones(50))
    fan_in_bound = 1 / math.sqrt(50)  # biases keep PyTorch's default (the port's Conv1d: fan-in d)
    assert model.blocks[0].attention.q_proj.bias.abs().max() <= fan_in_bound


def test_optimizer_is_the_ports_adam():
    cfg = tiny_config()
    optimizer = TiSASRec(cfg).configure_optimizer()
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.defaults["lr"] == 1e-3 and optimizer.defaults["betas"] == (0.9, 0.98)
    assert optimizer.defaults["weight_decay"] == 0


@pytest.mark.parametrize("seq_len", [8, 20])
def test_forward_and_predict_at_two_lengths(seq_len):
    cfg = tiny_config(max_len=seq_len)
    torch.manual_seed(0)
    model = TiSASRec(cfg)
    batch = tiny_batch(cfg, batch_size=6)
    loss = model(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.time_k.weight.grad.abs().sum() > 0 and model.abs_pos_v.weight.grad.abs().sum() > 0
    scores = model.eval().predict(batch)
    assert scores.shape == (6, cfg.num_candidates) and torch.isfinite(scores).all()


def planted_batch(cfg: TiSASRecConfig, batch_size: int, generator: torch.Generator):
    """A planted successor walk (tests/helpers.py) over a batch of make_batch."""
    return successor_walk(make_batch(cfg, batch_size, cfg.max_len, "cpu", generator), cfg.num_items, generator)


def test_learns_a_planted_successor_pattern():
    torch.manual_seed(0)
    cfg = tiny_config(num_items=30, max_len=10, d_model=32, dropout=0.1, lr=5e-3)
    model = TiSASRec(cfg)
    generator = torch.Generator().manual_seed(0)
    losses = train_on(model, lambda size: planted_batch(cfg, size, generator))
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses
    hit_rate = top1_hit_rate(model, planted_batch(cfg, 256, generator))
    assert hit_rate > 0.9, f"hit rate {hit_rate:.2f}, chance is 0.10"
