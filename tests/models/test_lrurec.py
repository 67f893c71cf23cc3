"""LRURec: parameter count, the parallel scan against the sequential recurrence, the layer against
the authors' complex arithmetic, the power-of-two padding, causality and padding invariance, the
labels and loss, the optimizer groups, learning."""
import pytest
import torch
import torch.nn.functional as F
from helpers import top1_hit_rate, train_on
from torch.utils.flop_counter import FlopCounterMode

from models.base import count_parameters
from models.lrurec import LRULayer, LRURec, LRURecConfig, lru_scan, make_batch, padded_length


def tiny_config(**overrides) -> LRURecConfig:
    knobs = dict(num_items=40, max_len=12, d_model=16)
    knobs.update(overrides)
    return LRURecConfig(**knobs)


def tiny_batch(cfg: LRURecConfig, batch_size: int = 8, seq_len: int | None = None, seed: int = 0):
    return make_batch(cfg, batch_size, seq_len or cfg.max_len, "cpu", torch.Generator().manual_seed(seed))


def authors_parameter_count(num_items: int, d: int = 64, blocks: int = 2) -> int:
    """yueqirex/LRURec model/lru.py from its layer shapes, counted as its trainer prints the total
    (``p.numel()``, one per complex entry): token table (num_items + 1 rows) and its LayerNorm; per
    block params_log (3 x 2d), complex in_proj (2d x d + 2d) and out_proj (d x 2d + d), LayerNorm,
    FFN w_1 (d x 4d + 4d), w_2 (4d x d + d), LayerNorm; the output bias (num_items + 1)."""
    embedding = (num_items + 1) * d + 2 * d
    block = 3 * 2 * d + (2 * d * d + 2 * d) + (d * 2 * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d) + 2 * d
    return embedding + blocks * block + (num_items + 1)


def complex_entries(d: int = 64, blocks: int = 2) -> int:
    """Entries of the complex in_proj and out_proj (weights and biases) of all blocks."""
    return blocks * ((2 * d * d + 2 * d) + (d * 2 * d + d))


def test_parameter_count_at_authors_config():
    # config.py's template on ML-1M (hidden 64, 2 blocks, max length 200); their preprocessed ML-1M
    # (data/preprocessed/ml-1m_min_rating0-min_uc5-min_sc5-leave_one_out) has 3,416 items.
    with torch.device("meta"):
        model = LRURec(LRURecConfig())
    authors = authors_parameter_count(3_416)
    assert authors == 322_841
    # Same tensors, counted in real scalars: a complex entry is stored here as its real and imaginary
    # parts (the fused Adam kernels take real tensors only), so each of the authors' 33,152 complex
    # entries counts twice.
    assert count_parameters(model) == authors + complex_entries() == 355_993


def sequential_recurrence(u: torch.Tensor, lam: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """h_t = lam * real_{t-1} * h_{t-1} + u_t, one step at a time."""
    h, out = torch.zeros_like(u[:, 0]), []
    previous_real = F.pad(real, (1, 0))[:, :-1].to(u.real.dtype).unsqueeze(-1)  # (B, L, 1)
    for t in range(u.shape[1]):
        h = lam * previous_real[:, t] * h + u[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("length", [1, 2, 8, 32])
def test_parallel_scan_equals_the_sequential_recurrence(length):
    torch.manual_seed(0)
    u = torch.randn(5, length, 6, dtype=torch.cfloat)
    lam = torch.polar(0.5 + 0.49 * torch.rand(6), 6.28 * torch.rand(6))
    first_real = torch.tensor([0, 1, length // 2, length - 1, length])  # the last row is all padding
    real = torch.arange(length).unsqueeze(0) >= first_real.unsqueeze(1)
    torch.testing.assert_close(lru_scan(u, lam, real), sequential_recurrence(u, lam, real), atol=1e-5, rtol=1e-5)


def test_scan_needs_a_power_of_two():
    with pytest.raises(ValueError, match="power-of-two"):
        u, lam = torch.zeros(1, 6, 2, dtype=torch.cfloat), torch.ones(2, dtype=torch.cfloat)
        lru_scan(u, lam, torch.ones(1, 6, dtype=torch.bool))


def test_layer_equals_the_authors_complex_computation():
    cfg = tiny_config()
    torch.manual_seed(0)
    layer = LRULayer(cfg).eval()
    with torch.no_grad():
        for p in (layer.in_weight, layer.in_bias, layer.out_weight, layer.out_bias):
            p.normal_(std=0.3)
    x = torch.randn(3, 16, cfg.d_model)
    real = torch.arange(16).unsqueeze(0) >= torch.tensor([[0], [5], [12]])
    with torch.no_grad():
        nu, theta, gamma = torch.exp(layer.params_log)
        lam = torch.exp(torch.complex(-nu, theta))
        # Their in_proj / out_proj: complex nn.Linear on x cast to complex; the real part is kept.
        b_in, b_out = torch.view_as_complex(layer.in_weight), torch.view_as_complex(layer.out_weight)
        u = (x.to(torch.cfloat) @ b_in.T + torch.view_as_complex(layer.in_bias)) * gamma
        h = sequential_recurrence(u, lam, real)
        y = (h @ b_out.T + torch.view_as_complex(layer.out_bias)).real
        reference = layer.norm(y + x)
        torch.testing.assert_close(layer(x, real), reference, atol=1e-5, rtol=1e-5)


def test_init_follows_the_authors_ring_and_truncated_normal():
    cfg = LRURecConfig(num_items=500)
    torch.manual_seed(0)
    model = LRURec(cfg)
    layer = model.blocks[0].lru
    lam, gamma = layer.lam_gamma()
    assert ((lam.abs() >= cfg.r_min - 1e-6) & (lam.abs() <= cfg.r_max + 1e-6)).all()
    torch.testing.assert_close(gamma, torch.sqrt(1 - lam.abs() ** 2))
    for p in (model.item_emb.weight, model.output_bias, layer.in_weight, model.blocks[0].ffn.fc1.bias):
        assert p.abs().max() <= 2 * cfg.init_std and 0.7 * cfg.init_std < p.std() < cfg.init_std
    assert torch.equal(layer.norm.weight, torch.ones(cfg.d_model))


@pytest.mark.parametrize("length, padded", [(1, 1), (12, 16), (16, 16), (17, 32), (200, 256)])
def test_windows_are_padded_to_a_power_of_two(length, padded):
    assert padded_length(length) == padded


def test_cost_is_a_step_function_of_the_length():
    cfg = tiny_config(max_len=64)
    model = LRURec(cfg).eval()

    def encode_flops(length: int) -> int:
        batch = tiny_batch(cfg, batch_size=2, seq_len=length)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.encode(batch)
        return counter.get_total_flops()

    assert encode_flops(17) == encode_flops(24) == encode_flops(32) < encode_flops(33) == encode_flops(64)


def test_causal():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = LRURec(cfg).eval()
    seq = torch.randint(1, cfg.num_items + 1, (4, cfg.max_len), generator=torch.Generator().manual_seed(0))
    t = 6
    changed = seq.clone()
    changed[:, t + 1 :] = changed[:, t + 1 :] % cfg.num_items + 1
    with torch.no_grad():
        before, after = model.encode({"seq": seq}), model.encode({"seq": changed})
    torch.testing.assert_close(before[:, : t + 1], after[:, : t + 1], atol=1e-6, rtol=1e-6)
    assert (before[:, t + 1 :] - after[:, t + 1 :]).abs().amax() > 1e-3


def test_real_positions_ignore_the_padding_and_its_amount():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = LRURec(cfg).eval()
    batch = tiny_batch(cfg, batch_size=16)
    real = batch["seq"] != 0
    assert (~real).any(dim=1).sum() >= 2, "the batch must hold padded rows"
    with torch.no_grad():
        before = model.encode(batch)
        scores = model.predict(batch)
        # A longer window crosses a power of two (16 -> 32 slots): same outputs at the real positions.
        longer = model.encode({"seq": F.pad(batch["seq"], (9, 0))})[:, 9:]
        torch.testing.assert_close(longer[real], before[real], atol=1e-5, rtol=1e-5)
        model.item_emb.weight[0].normal_(std=1.0)  # the padding row is trained like any other
        torch.testing.assert_close(model.encode(batch)[real], before[real], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.predict(batch), scores, atol=1e-5, rtol=1e-5)


def test_labels_are_real_positions_and_the_slot_before_the_first_item():
    cfg = tiny_config(max_len=20)
    batch = tiny_batch(cfg, batch_size=32)
    real, labelled = batch["seq"] != 0, batch["labels"] != 0
    lengths = real.sum(dim=1)
    padded = lengths < cfg.max_len
    assert padded.sum() >= 2
    assert torch.equal(labelled.sum(dim=1), lengths + padded.long())
    assert not (real & ~labelled).any()


def test_loss_is_cross_entropy_over_every_item_at_the_labelled_positions():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = LRURec(cfg).eval()
    batch = tiny_batch(cfg)
    with torch.no_grad():
        logits = model.encode(batch) @ model.item_emb.weight.T + model.output_bias  # (B, L, |I| + 1)
        labels = batch["labels"]
        nll = -logits.log_softmax(dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        reference = nll[labels != 0].mean()
        torch.testing.assert_close(model(batch), reference)
        scores = model.predict(batch)
        torch.testing.assert_close(scores, logits[:, -1].gather(1, batch["candidates"]))


def test_optimizer_is_adamw_without_decay_on_biases_and_layer_norms():
    cfg = tiny_config()
    model = LRURec(cfg)
    optimizer = model.configure_optimizer()
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["eps"] == cfg.adam_eps
    names = {id(p): n for n, p in model.named_parameters()}
    [decayed] = [{names[id(p)] for p in g["params"]} for g in optimizer.param_groups if g["weight_decay"] > 0]
    [plain] = [{names[id(p)] for p in g["params"]} for g in optimizer.param_groups if g["weight_decay"] == 0]
    assert decayed | plain == set(names.values()) and not decayed & plain
    # The authors' rule, by name: no decay where the name holds "bias" or "layer_norm".
    assert {"item_emb.weight", "blocks.0.lru.params_log", "blocks.0.lru.in_weight", "blocks.1.ffn.fc2.weight"} <= decayed
    assert {"output_bias", "blocks.0.lru.in_bias", "emb_norm.weight", "blocks.1.ffn.norm.bias"} <= plain
    assert all(g["weight_decay"] in (0.0, cfg.weight_decay) for g in optimizer.param_groups)


def planted_batch(cfg: LRURecConfig, batch_size: int, generator: torch.Generator):
    """Histories walking a cycle over the items (each item is the previous one + 1), left-padded,
    labelled as ``make_batch`` labels them; candidate 0 is the step after the window."""
    batch = make_batch(cfg, batch_size, cfg.max_len, "cpu", generator)
    start = torch.randint(0, cfg.num_items, (batch_size, 1), generator=generator)
    first_real = (batch["seq"] == 0).sum(dim=1, keepdim=True)
    # The walk reaches item 'start' at the first real slot; the slot before it is labelled 'start'.
    walk = (start + torch.arange(cfg.max_len + 1) - first_real) % cfg.num_items + 1  # (B, L + 1)
    negatives = (walk[:, -1:] + torch.randint(1, cfg.num_items, (batch_size, 9), generator=generator) - 1)
    negatives = negatives % cfg.num_items + 1  # never the positive
    return {
        "seq": walk[:, :-1] * (batch["seq"] != 0),
        "labels": walk[:, 1:] * (batch["labels"] != 0),
        "candidates": torch.cat([walk[:, -1:], negatives], dim=1),
    }


def test_learns_a_planted_successor_pattern():
    torch.manual_seed(0)
    cfg = tiny_config(num_items=30, max_len=8, d_model=32, dropout=0.1, lru_dropout=0.1, lr=1e-2)
    model = LRURec(cfg)
    generator = torch.Generator().manual_seed(0)
    losses = train_on(model, lambda size: planted_batch(cfg, size, generator))
    hit_rate = top1_hit_rate(model, planted_batch(cfg, 256, generator))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert hit_rate > 0.8, f"hit rate {hit_rate:.2f}, chance is 0.10"
