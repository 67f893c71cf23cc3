"""HSTU: parameter counts, the authors' right-padded computation, relative position and time
bias, causality, padding, loss, initialisation, learning."""
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import successor_walk, top1_hit_rate, train_on

from models.base import count_parameters
from models.hstu import HSTU, HSTUConfig, make_batch, time_buckets


def tiny_config(**overrides) -> HSTUConfig:
    knobs = dict(num_items=40, max_len=12, d_model=16, attention_dim=8, linear_dim=8, num_negatives=16)
    knobs.update(overrides)
    return HSTUConfig(**knobs)


def tiny_batch(cfg: HSTUConfig, batch_size: int = 8, seq_len: int | None = None, seed: int = 0):
    return make_batch(cfg, batch_size, seq_len or cfg.max_len, "cpu", torch.Generator().manual_seed(seed))


def authors_parameter_count(max_item_id: int, max_sequence_length: int, gr_output_length: int = 10, d: int = 50,
                            blocks: int = 2, heads: int = 1, dqk: int = 50, dv: int = 50, buckets: int = 128) -> int:
    """research/trainer/train.py + research/modeling/sequential/hstu.py: LocalEmbeddingModule's
    (max_item_id + 1) x d table, the positional table of max_sequence_length + gr_output_length + 1
    rows, and per block W_uvqk (d x (2 h dv + 2 h dqk), no bias), the output Linear(h dv -> d) and a
    RelativeBucketedTimeAndPositionBasedBias (buckets + 1 time weights, 2 N - 1 position weights for
    the same N). Its LayerNorms have no parameters."""
    n = max_sequence_length + gr_output_length + 1
    block = d * (2 * heads * dv + 2 * heads * dqk) + (heads * dv * d + d) + (buckets + 1) + (2 * n - 1)
    return (max_item_id + 1) * d + n * d + blocks * block


def test_parameter_count_at_authors_ml1m_config():
    # configs/ml-1m/hstu-sampled-softmax-n128-final.gin: d 50, 2 blocks, 1 head, dqk = dv = 50,
    # history 200; MovieLens ids up to 3,952 (3,706 of them rated). The authors' window is
    # 200 + 11 = 211 wide, which our max_len names directly.
    authors = authors_parameter_count(3_952, 200)
    assert authors == 197_650 + 10_550 + 2 * (10_000 + 2_550 + 129 + 421) == 234_400
    with torch.device("meta"):
        same_window = HSTU(HSTUConfig(num_items=3_952, max_len=211))
        history_window = HSTU(HSTUConfig(num_items=3_952, max_len=200))
    assert count_parameters(same_window) == authors
    # With the window sized to the 200-item history, the 11 slots' position rows and their 2 x 11
    # relative offsets per block are gone: 0.25% fewer.
    assert authors - count_parameters(history_window) == 11 * 50 + 2 * (2 * 11) == 594


def test_parameter_formula_small_config():
    cfg = tiny_config(num_blocks=3, num_heads=2)
    d, h, dqk, dv = 16, 2, 8, 8
    block = d * 2 * h * (dqk + dv) + (h * dv * d + d) + 129 + (2 * cfg.max_len - 1)
    assert count_parameters(HSTU(cfg)) == 41 * d + cfg.max_len * d + 3 * block


def authors_relative_position_bias(w: torch.Tensor, n: int) -> torch.Tensor:
    """RelativePositionalBias's Toeplitz construction: w padded with n zeros, repeated n times, cut
    and reshaped so row i, column j of the middle n columns holds w[n - 1 + j - i]."""
    t = F.pad(w[: 2 * n - 1], [0, n]).repeat(n)
    t = t[:-n].reshape(n, 3 * n - 2)
    r = (2 * n - 1) // 2
    return t[:, r:-r]  # (n, n)


def authors_encode(model: HSTU, batch) -> torch.Tensor:
    """The authors' computation on their layout, with the model's parameters (eval mode): each
    history moved to the left edge (position 0 = the oldest item, zero padding after it), the
    target's time written after the history, the window n = max_len wide; q, k, v zero at padding
    (jagged_to_padded_dense), padded positions dropped after every block (jagged)."""
    cfg = model.cfg
    seq = batch["seq"]
    b, length = seq.shape
    n = cfg.max_len
    lengths = (seq != 0).sum(dim=1)
    ids = torch.zeros(b, n, dtype=torch.long)
    times = torch.zeros(b, n + 1, dtype=torch.long)  # the history's times, then the target's
    for row in range(b):
        m = int(lengths[row])
        ids[row, :m] = seq[row, length - m:]
        times[row, :m] = batch["timestamps"][row, length - m:]
        times[row, m] = batch["next_timestamps"][row, -1]
    valid = (ids != 0).unsqueeze(-1).float()
    x = (model.item_emb(ids) * cfg.d_model**0.5 + model.pos_emb(torch.arange(n)).unsqueeze(0)) * valid
    # ts(next item) - ts(current item): the query at i is timed by position i + 1.
    dt = times[:, 1:].unsqueeze(2) - times[:, :-1].unsqueeze(1)
    buckets = (torch.log(dt.abs().clamp(min=1)) / 0.301).long().clamp(0, cfg.num_time_buckets)
    causal = torch.ones(n, n).tril()
    h, dqk, dv = cfg.num_heads, cfg.attention_dim, cfg.linear_dim
    for layer in model.layers:
        u, v, q, k = F.silu(F.layer_norm(x, (cfg.d_model,), eps=1e-6) @ layer.uvqk).split(
            [h * dv, h * dv, h * dqk, h * dqk], dim=-1)
        q, k, v = q * valid, k * valid, v * valid
        qk = torch.einsum("bnhd,bmhd->bhnm", q.view(b, n, h, dqk), k.view(b, n, h, dqk))
        bias = authors_relative_position_bias(layer.rel_pos_bias, n) + layer.rel_time_bias[buckets]
        attn = F.silu(qk + bias.unsqueeze(1)) / n * causal
        av = torch.einsum("bhnm,bmhd->bnhd", attn, v.view(b, n, h, dv)).reshape(b, n, h * dv)
        x = (layer.out(u * F.layer_norm(av, (h * dv,), eps=1e-6)) + x) * valid
    x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=1e-6)
    out = torch.zeros(b, length, cfg.d_model)  # back to the left-padded layout
    for row in range(b):
        m = int(lengths[row])
        out[row, length - m:] = x[row, :m]
    return out


@pytest.mark.parametrize("num_heads", [1, 2])
def test_encode_equals_the_authors_right_padded_computation(num_heads):
    cfg = tiny_config(num_heads=num_heads)
    torch.manual_seed(0)
    model = HSTU(cfg).eval()
    batch = tiny_batch(cfg)
    assert (batch["seq"] == 0).any(dim=1).sum() >= 2, "the batch must hold padded rows"
    with torch.no_grad():
        torch.testing.assert_close(model.encode(batch), authors_encode(model, batch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [4, 7])  # shorter than the table's window, and as long
def test_relative_position_bias_is_the_offset_weight_and_the_authors_construction(length):
    cfg = tiny_config(max_len=7)
    torch.manual_seed(0)
    layer = HSTU(cfg).layers[0]
    w = layer.rel_pos_bias
    steps = torch.arange(length)
    by_index = w[cfg.max_len - 1 + steps.unsqueeze(0) - steps.unsqueeze(1)]  # [i, j] = weight of offset j - i
    ours = layer.position_bias(length)
    torch.testing.assert_close(ours, by_index, rtol=0, atol=0)
    if length == cfg.max_len:
        torch.testing.assert_close(ours, authors_relative_position_bias(w, length), rtol=0, atol=0)
    upstream = torch.randn(length, length)
    (grad_ours,) = torch.autograd.grad((ours * upstream).sum(), w)
    (grad_index,) = torch.autograd.grad((by_index * upstream).sum(), w)
    torch.testing.assert_close(grad_ours, grad_index)


def test_time_bias_looks_up_each_bucket_and_sums_its_gradients():
    cfg = tiny_config()
    torch.manual_seed(0)
    layer = HSTU(cfg).layers[0]
    buckets = torch.randint(0, cfg.num_time_buckets + 1, (3, 5, 5))
    ours = layer.time_bias(buckets)
    torch.testing.assert_close(ours, layer.rel_time_bias[buckets], rtol=0, atol=0)
    (grad,) = torch.autograd.grad(ours.sum(), layer.rel_time_bias)
    assert torch.equal(grad, torch.bincount(buckets.reshape(-1), minlength=cfg.num_time_buckets + 1).float())


def test_future_offsets_get_no_gradient():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = HSTU(cfg).eval()
    model(tiny_batch(cfg)).backward()
    grad = model.layers[0].rel_pos_bias.grad  # offsets -(max_len - 1) .. max_len - 1
    assert (grad[cfg.max_len:] == 0).all() and (grad[: cfg.max_len] != 0).any()


def test_time_buckets_are_the_authors_log_buckets():
    cfg = HSTUConfig()
    gaps = [0, 1, 2, 3, 60, 3_600, 86_400, 31_536_000, -86_400, 10**17]
    times = torch.tensor([[0]])
    buckets = time_buckets(cfg, times, torch.tensor([gaps])).flatten().tolist()  # next - 0
    expected = [min(int(math.log(max(abs(g), 1)) / 0.301), 128) for g in gaps]
    assert buckets == expected
    # The natural log over 0.301: a minute is bucket 13, a day 37, a year 57; 10^17 s is clipped.
    assert expected == [0, 0, 2, 3, 13, 27, 37, 57, 37, 128]


def test_the_query_is_timed_by_the_next_interaction():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = HSTU(cfg).eval()
    batch = tiny_batch(cfg)
    real = batch["seq"] != 0
    both = real[:, :-1] & real[:, 1:]
    assert torch.equal(batch["next_timestamps"][:, :-1][both], batch["timestamps"][:, 1:][both])
    t = 6
    later = batch["next_timestamps"].clone()
    later[:, t] += 10**7  # the request at step t comes much later
    with torch.no_grad():
        before, after = model.encode(batch), model.encode(dict(batch, next_timestamps=later))
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=0)
    assert ((after[:, t] - before[:, t]).abs().amax(dim=-1)[real[:, t]] > 1e-4).all()


def test_padding_is_invisible():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = HSTU(cfg).eval()
    batch = tiny_batch(cfg, batch_size=16, seq_len=8)
    padded = batch["seq"] == 0
    assert padded.any(dim=1).sum() >= 2
    with torch.no_grad():
        h, scores = model.encode(batch), model.predict(batch)
        assert (h[padded] == 0).all()
        # The same histories in a wider window (more left padding): the same outputs, since
        # positions count from the first real item and the divisor n is the configured maximum.
        wider = {k: F.pad(v, (4, 0)) if v.dim() == 2 and k != "candidates" else v for k, v in batch.items()}
        wider["neg"] = F.pad(batch["neg"], (0, 0, 4, 0))
        torch.testing.assert_close(model.encode(wider)[:, 4:], h, rtol=0, atol=1e-6)
        torch.testing.assert_close(model.predict(wider), scores, rtol=0, atol=1e-6)
        # Whatever the padded slots hold (the padding row of the table, their timestamps).
        model.item_emb.weight[0].normal_(std=10.0)
        noisy = dict(batch, timestamps=batch["timestamps"].masked_fill(padded, 123_456_789))
        torch.testing.assert_close(model.encode(noisy), h, rtol=0, atol=1e-6)


def test_loss_is_the_authors_sampled_softmax():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = HSTU(cfg).eval()
    batch = tiny_batch(cfg)
    batch["neg"][:, :, 0] = batch["pos"]  # a negative that collides with the positive
    # Jagged, as the authors: only the real positions, then their mean.
    real = batch["pos"] != 0
    user = model.encode(batch)[real]  # (N', d)
    norm = lambda x: x / x.norm(dim=-1, keepdim=True).clamp(min=1e-6)  # noqa: E731
    pos_ids, neg_ids = batch["pos"][real], batch["neg"][real]  # (N',), (N', R)
    pos_logits = (user * norm(model.item_emb(pos_ids))).sum(-1, keepdim=True) / 0.05
    neg_logits = torch.einsum("nd,nrd->nr", user, norm(model.item_emb(neg_ids)))
    neg_logits = torch.where(pos_ids.unsqueeze(1) == neg_ids, -5e4, neg_logits / 0.05)
    expected = -F.log_softmax(torch.cat([pos_logits, neg_logits], dim=1), dim=1)[:, 0].mean()
    torch.testing.assert_close(model(batch), expected)


def test_make_batch_shapes_and_times():
    cfg = tiny_config(max_len=16)
    batch = tiny_batch(cfg, batch_size=16)
    real = batch["seq"] != 0
    assert batch["neg"].shape == (16, 16, cfg.num_negatives)
    assert (batch["neg"][real] >= 1).all() and (batch["neg"][~real] == 0).all()
    assert (batch["pos"][real] >= 1).all() and (batch["pos"][~real] == 0).all()
    for key in ("timestamps", "next_timestamps"):
        times = batch[key]
        assert (times[~real] == 0).all() and (times[real] > 0).all()
        assert (times.diff(dim=1)[real[:, 1:] & real[:, :-1]] >= 0).all()
    assert (batch["next_timestamps"] >= batch["timestamps"]).all()
    assert batch["candidates"].shape == (16, cfg.num_candidates)


def test_initialisation_is_the_authors():
    torch.manual_seed(0)
    model = HSTU(HSTUConfig())
    items = model.item_emb.weight
    assert items.abs().max() <= 0.04 and abs(items.std().item() - 0.02 * 0.88) < 0.001  # truncated at 2 std
    assert items[0].abs().sum() > 0  # the padding row is initialised too, as theirs
    xavier_normal_std = math.sqrt(2 / (200 + 50))
    assert abs(model.pos_emb.weight.std().item() - xavier_normal_std) < 0.005
    layer = model.layers[0]
    assert abs(layer.uvqk.std().item() - 0.02) < 0.001 and layer.uvqk.abs().max() > 0.06  # not truncated
    assert layer.out.weight.abs().max() <= math.sqrt(6 / 100)  # xavier uniform
    assert abs(layer.rel_pos_bias.std().item() - 0.02) < 0.003


def test_optimizer_is_the_authors_adamw():
    optimizer = HSTU(tiny_config()).configure_optimizer()
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["lr"] == 1e-3 and optimizer.defaults["betas"] == (0.9, 0.98)
    assert optimizer.defaults["weight_decay"] == 0.0


@pytest.mark.parametrize("seq_len", [8, 20])
def test_forward_and_predict_at_two_lengths(seq_len):
    cfg = tiny_config(max_len=seq_len)
    torch.manual_seed(0)
    model = HSTU(cfg)
    batch = tiny_batch(cfg, batch_size=6)
    loss = model(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.layers[1].rel_time_bias.grad.abs().sum() > 0 and model.pos_emb.weight.grad.abs().sum() > 0
    scores = model.eval().predict(batch)
    assert scores.shape == (6, cfg.num_candidates) and torch.isfinite(scores).all()
    assert scores.abs().max() <= 1 + 1e-6  # cosine similarities


def planted_batch(cfg: HSTUConfig, batch_size: int, generator: torch.Generator):
    """A planted successor walk (tests/helpers.py) over a batch of make_batch."""
    return successor_walk(make_batch(cfg, batch_size, cfg.max_len, "cpu", generator), cfg.num_items, generator)


def test_learns_a_planted_successor_pattern():
    torch.manual_seed(0)
    cfg = tiny_config(num_items=30, max_len=10, d_model=32, attention_dim=16, linear_dim=16, dropout=0.1,
                      linear_dropout=0.1, lr=5e-3)
    model = HSTU(cfg)
    generator = torch.Generator().manual_seed(0)
    losses = train_on(model, lambda size: planted_batch(cfg, size, generator))
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5]), losses
    hit_rate = top1_hit_rate(model, planted_batch(cfg, 256, generator))
    assert hit_rate > 0.9, f"hit rate {hit_rate:.2f}, chance is 0.10"
