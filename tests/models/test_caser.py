"""Caser: parameter count, equality with the authors' per-height loop, masking, learning, shapes."""
import pytest
import torch
import torch.nn.functional as F

from models.base import count_parameters
from models.caser import Caser, CaserConfig, get_activation, make_batch, split_heights


def tiny_config(max_len: int = 8, **overrides) -> CaserConfig:
    values = dict(num_items=40, num_users=12, max_len=max_len, d_model=6, num_vertical=3, num_horizontal=4)
    values.update(overrides)
    return CaserConfig(**values)


def caser_parameters(users: int, items: int, L: int, d: int, nv: int, nh: int) -> int:
    """The authors' layers: user and item embeddings, Conv2d(1, nv, (L, 1)), one Conv2d(1, nh, (h, d))
    per height, fc1 (nv d + nh L -> d), W2 (2d per item) and b2, with item 0 the padding row."""
    vertical = nv * L + nv
    horizontal = sum(nh * h * d + nh for h in range(1, L + 1))
    fc = (nv * d + nh * L) * d + d
    return users * d + (items + 1) * d + vertical + horizontal + fc + (items + 1) * (2 * d + 1)


def test_parameter_count_at_authors_config():
    # graytowne/caser_pytorch on ML-1M: 6,040 users, 3,416 items (+1 padding), L = 5, d = 50, nv = 4, nh = 16.
    with torch.device("meta"):
        model = Caser(CaserConfig())
    assert count_parameters(model) == caser_parameters(6_040, 3_416, 5, 50, 4, 16) == 844_121


@pytest.mark.parametrize("max_len, groups", [(7, 1), (7, 3), (12, 16)])
def test_parameter_formula_small(max_len, groups):
    cfg = tiny_config(max_len, height_groups=groups)
    model = Caser(cfg)
    sizes = (cfg.num_users, cfg.num_items, max_len, cfg.d_model, cfg.num_vertical, cfg.num_horizontal)
    expected = caser_parameters(*sizes)
    assert count_parameters(model) == expected
    # The horizontal filters hold nh d L (L + 1) / 2 weights, ~ nh d L^2 / 2, plus nh L biases.
    horizontal = sum(p.numel() for p in model.horizontal.parameters())
    assert horizontal == cfg.num_horizontal * cfg.d_model * max_len * (max_len + 1) // 2 + cfg.num_horizontal * max_len


def reference_encode(model: Caser, batch) -> torch.Tensor:
    """The authors' forward, one Conv2d per height: valid windows, activation, max over time."""
    cfg = model.cfg
    L = cfg.max_len
    e = model.item_emb(batch["seq"]).unsqueeze(1)  # (B, 1, L, d)
    vertical = model.vertical_weight.view(cfg.num_vertical, 1, L, 1)
    out_v = F.conv2d(e, vertical, model.vertical_bias).flatten(1)  # (B, nv d)
    act = get_activation(cfg.conv_activation)
    pooled = []
    for h in range(1, L + 1):
        weight, bias = model.horizontal.height_filters(h)  # (nh, h, d), (nh,)
        y = act(F.conv2d(e, weight.unsqueeze(1), bias).squeeze(3))  # (B, nh, L - h + 1)
        pooled.append(F.max_pool1d(y, y.shape[2]).squeeze(2))
    out_h = torch.cat(pooled, dim=1)  # (B, L nh), (height, filter) order as the model's
    z = get_activation(cfg.fc_activation)(model.fc(model.dropout(torch.cat([out_v, out_h], dim=1))))
    return torch.cat([z, model.user_emb(batch["user"])], dim=1)


def reference_loss(model: Caser, batch) -> torch.Tensor:
    """train_caser.py: -mean log sigmoid(targets) - mean log(1 - sigmoid(negatives))."""
    x = reference_encode(model, batch)
    pos = (model.out_emb(batch["targets"]) * x.unsqueeze(1)).sum(-1) + model.out_bias(batch["targets"]).squeeze(-1)
    neg = (model.out_emb(batch["negatives"]) * x.unsqueeze(1)).sum(-1) + model.out_bias(batch["negatives"]).squeeze(-1)
    return -torch.log(torch.sigmoid(pos)).mean() - torch.log(1 - torch.sigmoid(neg)).mean()


@pytest.mark.parametrize("groups", [1, 3, 9])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_grouped_heights_equal_the_per_height_loop(groups, activation):
    torch.manual_seed(0)
    cfg = tiny_config(9, height_groups=groups, conv_activation=activation)
    model = Caser(cfg).double().eval()
    batch = make_batch(cfg, 16, cfg.max_len, "cpu", torch.Generator().manual_seed(1))
    probe = torch.randn(16, 2 * cfg.d_model, dtype=torch.float64)

    def grads(encode, loss):
        model.zero_grad()
        out = encode(model, batch)
        ((out * probe).sum() + loss(model, batch)).backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    out, grad = grads(Caser.encode, Caser.forward)
    ref_out, ref_grad = grads(reference_encode, reference_loss)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(model(batch), reference_loss(model, batch), rtol=0, atol=1e-12)
    for name in ref_grad:
        torch.testing.assert_close(grad[name], ref_grad[name], rtol=0, atol=1e-12, msg=name)


def test_whole_windows_cost_at_most_1_2x_the_loop():
    # Multiply-adds per (batch row, filter, d) of the grouped convolutions vs the authors' loop,
    # which convolves height h over its L - h + 1 whole windows.
    for L in (5, 50, 200, 900):
        loop = sum(h * (L - h + 1) for h in range(1, L + 1))
        grouped = sum((hi - lo + 1) * hi * (L - lo + 1) for lo, hi in split_heights(L, CaserConfig.height_groups))
        assert loop <= grouped <= 1.2 * loop


def test_no_padding_mask_rows_independent_candidates_equivariant():
    """Caser has no mask: the padding item 0 is a learned embedding the model sees, as in the
    authors' code, so a padded position is not invariant to its id. What holds: each row's scores
    depend on that row only, and permuting the candidates permutes the scores."""
    torch.manual_seed(0)
    cfg = tiny_config(8)
    model = Caser(cfg).eval()
    batch = make_batch(cfg, 8, cfg.max_len, "cpu", torch.Generator().manual_seed(2))
    batch["seq"][0, :3] = 0  # row 0 is left-padded
    scores = model.predict(batch)

    # Every other row changed, row 0 untouched: row 0's scores stay.
    others = {k: v.clone() for k, v in batch.items()}
    others["seq"][1:] = torch.randint(1, cfg.num_items + 1, others["seq"][1:].shape)
    others["user"][1:] = (others["user"][1:] + 1) % cfg.num_users
    torch.testing.assert_close(model.predict(others)[0], scores[0], rtol=0, atol=0)
    # A padded position of row 0 given a real item changes row 0's scores: no padding mask.
    unpadded = {**batch, "seq": batch["seq"].clone()}
    unpadded["seq"][0, 1] = 7
    assert not torch.allclose(model.predict(unpadded)[0], scores[0])

    perm = torch.randperm(cfg.num_candidates)
    permuted = model.predict({**batch, "candidates": batch["candidates"][:, perm]})
    torch.testing.assert_close(permuted, scores[:, perm])


def chain_batch(cfg: CaserConfig, successor: torch.Tensor, batch_size: int, num_negatives: int, generator):
    """Histories that follow ``successor`` (item i -> successor[i]); the targets continue the chain."""
    n = cfg.num_items
    steps = [torch.randint(1, n + 1, (batch_size,), generator=generator)]
    for _ in range(cfg.max_len + cfg.num_targets - 1):
        steps.append(successor[steps[-1]])
    chain = torch.stack(steps, dim=1)
    seq, targets = chain[:, : cfg.max_len], chain[:, cfg.max_len :]
    # Distinct negatives outside the targets (and padding), as the authors sample unseen items.
    keys = torch.rand(batch_size, n + 1, generator=generator)
    keys[:, 0] = -1.0
    keys.scatter_(1, targets, -1.0)
    others = keys.topk(num_negatives, dim=1).indices
    user = torch.randint(0, cfg.num_users, (batch_size,), generator=generator)
    return seq, user, targets, others


def test_learns_a_planted_successor():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = tiny_config(5, num_items=30, d_model=16, num_candidates=21)
    successor = torch.cat([torch.zeros(1, dtype=torch.long), torch.randperm(cfg.num_items) + 1])
    model = Caser(cfg)
    optimizer = model.configure_optimizer()
    for _ in range(300):
        seq, user, targets, negatives = chain_batch(cfg, successor, 64, cfg.num_negatives, gen)
        loss = model({"seq": seq, "user": user, "targets": targets, "negatives": negatives})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    seq, user, targets, others = chain_batch(cfg, successor, 512, cfg.num_candidates - 1, gen)
    candidates = torch.cat([targets[:, :1], others], dim=1)  # the true next item first
    with torch.no_grad():
        scores = model.predict({"seq": seq, "user": user, "candidates": candidates})
    hit_rate = (scores[:, 0] > scores[:, 1:].amax(1)).float().mean().item()
    assert hit_rate > 0.6  # chance: 1 / 21


@pytest.mark.parametrize("max_len", [5, 12])
def test_forward_and_predict_shapes(max_len):
    torch.manual_seed(0)
    cfg = tiny_config(max_len)
    model = Caser(cfg)
    batch = make_batch(cfg, 4, max_len, "cpu", torch.Generator().manual_seed(0))
    # train_caser.py's neg_samples = 3 per sequence, next to the T = 3 targets
    assert batch["targets"].shape == (4, 3) and batch["negatives"].shape == (4, 3)
    loss = model(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model.predict(batch).shape == (4, cfg.num_candidates)
    with pytest.raises(ValueError, match="max_len"):
        model.predict({**batch, "seq": batch["seq"][:, 1:]})
