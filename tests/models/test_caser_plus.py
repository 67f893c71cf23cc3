"""Caser+: parameter count, equality with the authors' per-height loop, causality, learning, shapes."""
import pytest
import torch
import torch.nn.functional as F

from models.base import count_parameters
from models.caser import get_activation, split_heights
from models.caser_plus import CaserPlus, CaserPlusConfig, make_batch


def tiny_config(max_len: int = 8, **overrides) -> CaserPlusConfig:
    values = dict(num_items=40, num_users=12, max_len=max_len, d_model=6, num_vertical=3, num_horizontal=4)
    values.update(overrides)
    return CaserPlusConfig(**values)


def caser_plus_parameters(users: int, items: int, L: int, d: int, nv: int, nh: int) -> int:
    """Caser2's layers: user (+1) and item (+1) embeddings, Conv2d(1, nv, (L, 1)), one
    Conv2d(1, nh, (h, d)) per height, fc1 (nv d + nh L -> d), W2 (2d per item) and b2."""
    vertical = nv * L + nv
    horizontal = sum(nh * h * d + nh for h in range(1, L + 1))
    fc = (nv * d + nh * L) * d + d
    return (users + 1) * d + (items + 1) * d + vertical + horizontal + fc + (items + 1) * (2 * d + 1)


@pytest.mark.parametrize("max_len, expected", [(50, 2_470_121), (100, 6_388_521)])
def test_parameter_count_at_authors_config(max_len, expected):
    # Caser2 on ML-1M (6,040 users, 3,416 items), emb 64, nh = nv = 16.
    with torch.device("meta"):
        model = CaserPlus(CaserPlusConfig(max_len=max_len))
    assert count_parameters(model) == caser_plus_parameters(6_040, 3_416, max_len, 64, 16, 16) == expected


@pytest.mark.parametrize("max_len, groups", [(7, 1), (7, 3), (12, 8)])
def test_parameter_formula_small(max_len, groups):
    cfg = tiny_config(max_len, height_groups=groups)
    model = CaserPlus(cfg)
    sizes = (cfg.num_users, cfg.num_items, max_len, cfg.d_model, cfg.num_vertical, cfg.num_horizontal)
    expected = caser_plus_parameters(*sizes)
    assert count_parameters(model) == expected
    horizontal = sum(p.numel() for p in model.horizontal.parameters())
    assert horizontal == cfg.num_horizontal * cfg.d_model * max_len * (max_len + 1) // 2 + cfg.num_horizontal * max_len


def reference_encode(model: CaserPlus, batch) -> torch.Tensor:
    """Caser2's forward: vertical conv over L - 1 zero rows of left padding, then for each height h
    its own Conv2d over h - 1 rows of left padding, activation and cummax over time."""
    cfg = model.cfg
    L, nv = cfg.max_len, cfg.num_vertical
    e = model.item_emb(batch["seq"]).unsqueeze(1)  # (B, 1, L, d)
    batch_size = e.shape[0]
    out_v = F.conv2d(F.pad(e, (0, 0, L - 1, 0)), model.vertical_weight.view(nv, 1, L, 1), model.vertical_bias)
    out_v = out_v.permute(0, 2, 1, 3).reshape(batch_size, L, -1)  # (B, L, nv d)
    act = get_activation(cfg.conv_activation)
    per_height = []
    for h in range(1, L + 1):
        weight, bias = model.horizontal.height_filters(h)  # (nh, h, d), (nh,)
        y = act(F.conv2d(F.pad(e, (0, 0, h - 1, 0)), weight.unsqueeze(1), bias).squeeze(3))  # (B, nh, L)
        per_height.append(y.cummax(2).values)
    out_h = torch.stack(per_height, dim=1).permute(0, 3, 1, 2).reshape(batch_size, L, -1)  # (B, L, L nh)
    features = model.dropout(torch.cat([out_v, out_h], dim=2))
    z = get_activation(cfg.fc_activation)(model.fc(features))
    return torch.cat([z, model.user_emb(batch["user"]).unsqueeze(1).expand(-1, L, -1)], dim=2)


def reference_loss(model: CaserPlus, batch) -> torch.Tensor:
    """BCE with logits over the positive (1) and negative (0) of every step whose target is real."""
    x = reference_encode(model, batch)
    items = torch.stack([batch["pos"], batch["neg"]], dim=-1)  # (B, L, 2)
    logits = (model.out_emb(items) * x.unsqueeze(2)).sum(-1) + model.out_bias(items).squeeze(-1)
    relevance = torch.stack([torch.ones_like(logits[..., 0]), torch.zeros_like(logits[..., 1])], dim=-1)
    real = batch["pos"] != 0
    return F.binary_cross_entropy_with_logits(logits[real], relevance[real])


@pytest.mark.parametrize("groups", [1, 3, 10])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_grouped_heights_equal_the_per_height_loop(groups, activation):
    torch.manual_seed(0)
    cfg = tiny_config(10, height_groups=groups, conv_activation=activation)
    model = CaserPlus(cfg).double().eval()
    batch = make_batch(cfg, 8, cfg.max_len, "cpu", torch.Generator().manual_seed(1))
    probe = torch.randn(8, cfg.max_len, 2 * cfg.d_model, dtype=torch.float64)

    def grads(encode, loss):
        model.zero_grad()
        out = encode(model, batch)
        ((out * probe).sum() + loss(model, batch)).backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out, grad = grads(CaserPlus.encode, CaserPlus.forward)
    ref_out, ref_grad = grads(reference_encode, reference_loss)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(model(batch), reference_loss(model, batch), rtol=0, atol=1e-12)
    for name in ref_grad:
        torch.testing.assert_close(grad[name], ref_grad[name], rtol=0, atol=1e-12, msg=name)
    # Inference reads the last step only: the same vector as the last step of encode.
    x_last = reference_encode(model, batch)[:, -1]
    expected = (model.out_emb(batch["candidates"]) @ x_last.unsqueeze(-1)).squeeze(-1)
    expected = expected + model.out_bias(batch["candidates"]).squeeze(-1)
    torch.testing.assert_close(model.predict(batch), expected, rtol=0, atol=1e-12)


def test_grouped_heights_cost_at_most_1_125x_the_loop():
    # Multiply-adds per (batch row, filter, d, step) of the grouped convolutions vs the authors'
    # loop (height h: h per step): (G + 1) / G at most, G = 8 groups; the loop is G = L.
    for L in (5, 50, 100, 900):
        loop = sum(range(1, L + 1))
        grouped = sum((hi - lo + 1) * hi for lo, hi in split_heights(L, CaserPlusConfig.height_groups))
        assert loop <= grouped <= 1.125 * loop


def test_causal_encode():
    torch.manual_seed(0)
    cfg = tiny_config(12)
    model = CaserPlus(cfg).eval()
    batch = make_batch(cfg, 6, cfg.max_len, "cpu", torch.Generator().manual_seed(3))
    out = model.encode(batch)
    assert out.shape == (6, cfg.max_len, 2 * cfg.d_model)
    for t in (0, 5, 10):
        changed = {k: v.clone() for k, v in batch.items()}
        for key in ("seq", "pos", "neg"):
            changed[key][:, t + 1 :] = torch.randint(1, cfg.num_items + 1, changed[key][:, t + 1 :].shape)
        changed_out = model.encode(changed)
        torch.testing.assert_close(changed_out[:, : t + 1], out[:, : t + 1], rtol=0, atol=0)
        assert not torch.allclose(changed_out[:, t + 1 :], out[:, t + 1 :])  # later steps do see them


def chain_batch(cfg: CaserPlusConfig, successor: torch.Tensor, batch_size: int, num_candidates: int, generator):
    """Histories that follow ``successor`` (item i -> successor[i]): the next item of every step is
    successor[item]; one sampled negative per step and candidates [true next, distinct others]."""
    n = cfg.num_items
    steps = [torch.randint(1, n + 1, (batch_size,), generator=generator)]
    for _ in range(cfg.max_len):
        steps.append(successor[steps[-1]])
    chain = torch.stack(steps, dim=1)
    seq, pos = chain[:, :-1], chain[:, 1:]
    neg = (pos - 1 + torch.randint(1, n, pos.shape, generator=generator)) % n + 1  # never the positive
    keys = torch.rand(batch_size, n + 1, generator=generator)
    keys[:, 0] = -1.0
    keys.scatter_(1, pos[:, -1:], -1.0)
    candidates = torch.cat([pos[:, -1:], keys.topk(num_candidates - 1, dim=1).indices], dim=1)
    user = torch.randint(1, cfg.num_users + 1, (batch_size,), generator=generator)
    return {"seq": seq, "user": user, "pos": pos, "neg": neg, "candidates": candidates}


def test_learns_a_planted_successor():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = tiny_config(8, num_items=30, d_model=32, num_candidates=21)
    successor = torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(cfg.num_items) + 1])
    model = CaserPlus(cfg)
    optimizer = model.configure_optimizer()
    for _ in range(300):
        loss = model(chain_batch(cfg, successor, 64, cfg.num_candidates, gen))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        scores = model.predict(chain_batch(cfg, successor, 512, cfg.num_candidates, gen))
    hit_rate = (scores[:, 0] > scores[:, 1:].amax(1)).float().mean().item()
    assert hit_rate > 0.6  # chance: 1 / 21


@pytest.mark.parametrize("max_len", [8, 20])
def test_forward_and_predict_shapes(max_len):
    torch.manual_seed(0)
    cfg = tiny_config(max_len)
    model = CaserPlus(cfg)
    batch = make_batch(cfg, 4, max_len, "cpu", torch.Generator().manual_seed(0))
    loss = model(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model.predict(batch).shape == (4, cfg.num_candidates)
    assert model.encode(batch).shape == (4, max_len, 2 * cfg.d_model)
