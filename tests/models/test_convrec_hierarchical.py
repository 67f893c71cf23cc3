"""Tests for ConvRec with hierarchical convolution down-scaling (models/convrec_hierarchical.py)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models.base import count_parameters, count_trainable_parameters
from models.convrec_hierarchical import HierarchicalConvRec, HierarchicalConvRecConfig, make_batch

TINY = dict(num_items=50, num_users=20, item_feature_dim=8, d_model=16, num_candidates=7, dropout=0.1)
# Table 5 of the paper: the (kernel, stride) schedules the authors compared.
TABLE5_SCHEDULES = [
    ((2, 2), (5, 5), (7, 7)),
    ((3, 3), (5, 5), (5, 5)),
    ((5, 5), (2, 2), (7, 7)),
    ((7, 7), (5, 5), (2, 2)),
    ((10, 10), (7, 7)),
    ((2, 1), (5, 5), (7, 7)),
    ((2, 1), (5, 2), (7, 3)),
    ((3, 1), (3, 1), (3, 1)),
]


def tiny(**overrides) -> HierarchicalConvRecConfig:
    return HierarchicalConvRecConfig(**{**TINY, **overrides})


def batch_for(cfg, batch_size, seq_len, seed=0):
    return make_batch(cfg, batch_size, seq_len, "cpu", torch.Generator().manual_seed(seed))


def test_parameter_count_at_authors_beauty_config():
    # The authors' ConvRec on the Beauty profile (d 256, 1 conv head, [(2,2),(5,5),(7,7)]) counts
    # 383,590,143 parameters, the frozen 57,290 x 6,507 feature table included.
    with torch.device("meta"):
        model = HierarchicalConvRec(HierarchicalConvRecConfig())
    assert count_parameters(model) == 383_590_143
    assert count_parameters(model) - count_trainable_parameters(model) == 57_290 * 6_507


def test_parameter_formula_at_small_config():
    cfg = tiny(num_conv_heads=2, conv_schedule=((2, 1), (5, 5)), num_known_items=10)
    model = HierarchicalConvRec(cfg)
    d, f, i, u, h = cfg.d_model, cfg.item_feature_dim, cfg.num_items, cfg.num_users, cfg.num_conv_heads
    linear = lambda n_in, n_out: n_in * n_out + n_out  # noqa: E731
    layer_norm = lambda n: 2 * n  # noqa: E731
    encoder = (
        (i + 1) * f  # frozen feature table
        + (10 + 2) * d  # ids: padding, 10 known items, one generic id
        + linear(f, 4 * d) + linear(6, d) + linear(5 * d, 4 * d) + linear(5 * d, d)
    )
    intervals = layer_norm(d + 3) + linear(d + 3, d)
    conv_layers = sum(k * d * (d // h) + d + linear(d, d) + layer_norm(d) + 2 for k, _ in cfg.conv_schedule)
    unused = (u + 1) * cfg.user_dim + linear(cfg.user_dim, d) + linear(4 * d, d) + linear(d, 1)
    unused += len(cfg.conv_schedule) * layer_norm(d)
    assert count_parameters(model) == encoder + intervals + conv_layers + unused


def test_padding_invariance():
    cfg = tiny()
    torch.manual_seed(0)
    model = HierarchicalConvRec(cfg).eval()
    batch = batch_for(cfg, 6, 20)
    lengths = torch.tensor([20, 1, 5, 13, 19, 2])
    real = torch.arange(20).unsqueeze(0) >= (20 - lengths).unsqueeze(1)  # (B, L), left padding
    batch["seq"] = batch["seq"].clamp(min=1) * real
    batch["context"] = batch["context"] * real.unsqueeze(-1)  # as the authors' loader pads
    with torch.no_grad():
        before = model.predict(batch)
        perturbed = dict(batch)
        noise = torch.rand(batch["context"].shape, generator=torch.Generator().manual_seed(1)) * 5
        perturbed["context"] = torch.where(real.unsqueeze(-1), batch["context"], noise)
        after = model.predict(perturbed)
        # The test can fail: the first real position's context does move every score of its row.
        first_real = (20 - lengths).clamp(max=19)
        touched = dict(batch)
        touched["context"] = batch["context"].clone()
        touched["context"][torch.arange(6), first_real] += 0.3
        moved = model.predict(touched)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    assert ((moved - before).abs().amax(dim=1) > 1e-4).all()


def reference_scores(model: HierarchicalConvRec, batch) -> torch.Tensor:
    """The authors' computation written out plainly: a Conv1d per head over contiguous channel
    chunks, both residuals pooled separately, the mask repeated to (B, L, d), paddings planned
    from the length as their constructor does, AdaptiveAvgPool1d at the end."""
    cfg, enc = model.cfg, model.item_encoder

    def layer_norm(x, norm):
        return norm.weight * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + norm.eps) + norm.bias

    def encode(tokens, ctx):
        attr = enc.feature_proj(enc.features[tokens])
        ac = enc.attr_ctx_proj(torch.cat([attr, enc.context_proj(ctx)], dim=-1))
        tokens = tokens.clone()
        unknown = enc.id_emb.num_embeddings - 1
        tokens[tokens >= unknown] = unknown
        return enc.item_proj(torch.cat([enc.id_emb(tokens), ac], dim=-1))

    def fuse(p, t):
        x = layer_norm(F.gelu(torch.cat([p, t], dim=-1)), model.interval_norm)
        return F.gelu(model.interval_proj(x))

    seq, ctx = batch["seq"], batch["context"]
    batch_size, length = seq.shape
    d, heads = cfg.d_model, cfg.num_conv_heads
    mask = (seq > 0).unsqueeze(-1).repeat(1, 1, d)
    times = ctx[:, :, :3]
    intervals = torch.cat([torch.ones(batch_size, 1, 3), torch.diff(times, dim=1)], dim=1)
    x = fuse(encode(seq, ctx), intervals) * mask

    pads, current = [], length
    for k, s in cfg.conv_schedule:
        pads.append(k - current if current < k else (0 if (current - k) % s == 0 else s - (current - k) % s))
        current = (current + pads[-1] - k) // s + 1
    x_res = x
    for layer, pad, (k, s) in zip(model.layers, pads, cfg.conv_schedule):
        if pad > 0:
            x = F.pad(x.transpose(1, 2), (pad, 0)).transpose(1, 2)
            x_res = F.pad(x_res.transpose(1, 2), (pad, 0)).transpose(1, 2)
        pool = nn.AvgPool1d(k, s)
        x_pool = pool(x.transpose(1, 2)).transpose(1, 2)
        split = x.reshape(batch_size, -1, heads, d // heads).transpose(1, 2)
        outs = []
        for head in range(heads):
            rows = slice(head * d // heads, (head + 1) * d // heads)
            w, b = layer.conv.weight[rows], layer.conv.bias[rows]
            outs.append(F.conv1d(split[:, head].transpose(1, 2), w, b, stride=s).transpose(1, 2))
        conv = layer.out_proj(torch.cat(outs, dim=-1))
        x_res = pool(x_res.transpose(1, 2)).transpose(1, 2)
        x = layer_norm(F.gelu(conv) + layer.pool_weight * x_pool + layer.res_weight * x_res, layer.norm)
    user = nn.AdaptiveAvgPool1d(1)(x.transpose(1, 2))  # (B, d, 1)

    cand_ctx = batch["candidate_context"]
    cands = fuse(encode(batch["candidates"], cand_ctx), cand_ctx[:, :, :3] - times[:, -1:, :])
    return torch.matmul(cands, user).squeeze(-1)


@pytest.mark.parametrize(
    "heads, schedule, known, seq_len",
    [
        (1, ((2, 2), (5, 5), (7, 7)), 0, 23),
        (2, ((2, 1), (5, 2), (7, 3)), None, 17),
        (4, ((10, 10), (7, 7)), 12, 9),
    ],
)
def test_matches_plain_reference(heads, schedule, known, seq_len):
    cfg = tiny(num_conv_heads=heads, conv_schedule=schedule, num_known_items=known)
    torch.manual_seed(0)
    model = HierarchicalConvRec(cfg).eval()
    with torch.no_grad():  # non-default residual weights, so each pooled path is checked
        for i, layer in enumerate(model.layers):
            layer.pool_weight.fill_(0.3 + 0.1 * i)
            layer.res_weight.fill_(0.7 - 0.2 * i)
    batch = batch_for(cfg, 5, seq_len)
    params = [p for p in model.parameters() if p.requires_grad]

    ours = model.predict(batch)
    ours_grads = torch.autograd.grad(ours.square().sum(), params, allow_unused=True)
    ref = reference_scores(model, batch)
    ref_grads = torch.autograd.grad(ref.square().sum(), params, allow_unused=True)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for g_ours, g_ref in zip(ours_grads, ref_grads):
        assert (g_ours is None) == (g_ref is None)
        if g_ours is not None:
            torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seq_len", [8, 20])
def test_forward_and_predict_at_two_lengths(seq_len):
    cfg = tiny()
    torch.manual_seed(0)
    model = HierarchicalConvRec(cfg)
    batch = batch_for(cfg, 4, seq_len)
    assert batch["seq"].shape == (4, seq_len) and batch["context"].shape == (4, seq_len, 6)
    assert batch["candidates"].shape == (4, cfg.num_candidates)
    assert batch["candidate_context"].shape == (4, cfg.num_candidates, 6)
    loss = model(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    # The authors' unused modules take no part in the loss; everything else is trained.
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert (p.grad is None) == name.startswith("unused."), name
    model.eval()
    scores = model.predict(batch)
    assert scores.shape == (4, cfg.num_candidates) and torch.isfinite(scores).all()
    optimizer = model.configure_optimizer()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == count_trainable_parameters(model)


@pytest.mark.parametrize("schedule", TABLE5_SCHEDULES)
def test_table5_schedules_collapse_like_the_authors(schedule):
    cfg = tiny(conv_schedule=schedule)
    model = HierarchicalConvRec(cfg).eval()
    length, lengths = 70, []
    x = torch.randn(2, length, cfg.d_model)
    x_res = None
    for layer, (k, s) in zip(model.layers, schedule):
        x, x_res = layer(x, x_res)
        length = max(math.ceil((length - k) / s), 0) + 1  # whole windows after left padding
        lengths.append(x.shape[1])
        assert x.shape[1] == length and x_res.shape == x.shape
    if schedule[0] == (2, 2):
        assert lengths == [35, 7, 1]
    assert model.predict(batch_for(cfg, 2, 70)).shape == (2, cfg.num_candidates)


def saved_activation_bytes(model, batch) -> int:
    """Bytes of the distinct storages autograd keeps for backward, parameters left out."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_ptrs:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(batch)
    return sum(storages.values())


def test_memory_and_flops_grow_linearly_in_length():
    cfg = tiny(num_candidates=3)
    torch.manual_seed(0)
    model = HierarchicalConvRec(cfg)
    lengths = (140, 280, 560)  # multiples of 2 * 5 * 7: no padding, so the growth is exactly affine
    saved, flops = [], []
    for seq_len in lengths:
        batch = batch_for(cfg, 4, seq_len)
        saved.append(saved_activation_bytes(model, batch))
        with FlopCounterMode(display=False) as counter:
            model(batch).backward()
        flops.append(counter.get_total_flops())
    for costs in (saved, flops):
        assert 3.7 < costs[2] / costs[0] < 4.0  # 4x the length: about 4x the cost, nowhere near 16x
        # Affine in L: the second difference vanishes (a quadratic term would make it positive).
        first_step, second_step = costs[1] - costs[0], costs[2] - costs[1]
        assert second_step == pytest.approx(2 * first_step, rel=0.01)


def test_learns_a_planted_next_item_pattern():
    # Every item gets its own id embedding here (num_known_items=None, the authors' code default):
    # with F = 8 random features alone the tiny model cannot tell 30 items apart well enough.
    cfg = tiny(
        num_items=30, d_model=32, num_candidates=10, num_known_items=None, lr=1e-3, weight_decay=0.0, dropout=0.0
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a thread pool only adds overhead, and one thread is reproducible
    try:
        torch.manual_seed(0)
        model = HierarchicalConvRec(cfg)
        optimizer = model.configure_optimizer()
        gen = torch.Generator().manual_seed(0)
        successor = torch.randperm(cfg.num_items, generator=gen) + 1  # item i is followed by successor[i - 1]

        def planted_batch(batch_size):
            batch = make_batch(cfg, batch_size, 8, "cpu", gen)
            positive = successor[batch["seq"][:, -1] - 1]
            # Negatives: any item but the positive, by a non-zero shift modulo the catalogue.
            shifts = torch.randint(1, cfg.num_items, (batch_size, cfg.num_candidates - 1), generator=gen)
            negatives = (positive.unsqueeze(1) - 1 + shifts) % cfg.num_items + 1
            batch["candidates"] = torch.cat([positive.unsqueeze(1), negatives], dim=1)
            return batch

        for _ in range(250):
            optimizer.zero_grad()
            model(planted_batch(64)).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            hit_rate = (model.predict(planted_batch(512)).argmax(dim=1) == 0).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert hit_rate > 0.6  # chance is 1 / 10
