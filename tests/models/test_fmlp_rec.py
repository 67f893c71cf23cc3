"""FMLP-Rec: parameter counts (growing with L), the filter as a circular convolution, what the FLOP
counter sees of it, the authors' loss, the whole-window (non-causal) mixing, learning."""
import pytest
import torch
from helpers import top1_hit_rate, train_on
from torch.utils.flop_counter import FlopCounterMode

from models.base import count_parameters
from models.fmlp_rec import FilterLayer, FMLPRec, FMLPRecConfig, make_batch


def tiny_config(**overrides) -> FMLPRecConfig:
    knobs = dict(num_items=40, max_len=12, d_model=16)
    knobs.update(overrides)
    return FMLPRecConfig(**knobs)


def tiny_batch(cfg: FMLPRecConfig, batch_size: int = 8, seed: int = 0):
    return make_batch(cfg, batch_size, cfg.max_len, "cpu", torch.Generator().manual_seed(seed))


def authors_parameter_count(item_size: int, max_len: int = 50, d: int = 64, layers: int = 2) -> int:
    """RUCAIBox/FMLP-Rec models.py + modules.py from their layer shapes: item table (item_size rows,
    padding included), position table, LayerNorm; per layer the complex filter (1, L//2 + 1, d, 2)
    and its LayerNorm, Intermediate dense_1 (d x 4d + 4d), dense_2 (4d x d + d), LayerNorm."""
    embeddings = item_size * d + max_len * d + 2 * d
    layer = (max_len // 2 + 1) * d * 2 + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d) + 2 * d
    return embeddings + layers * layer


def test_parameter_count_at_authors_config():
    # main.py defaults (hidden 64, 2 layers, max_seq_length 50) on their Beauty: item_size = 12,102,
    # as the run log output/FMLPRec-Beauty-4eval.txt records.
    with torch.device("meta"):
        model = FMLPRec(FMLPRecConfig(num_items=12_101))
    assert count_parameters(model) == authors_parameter_count(12_102) == 851_200


@pytest.mark.parametrize("max_len", [7, 32, 101])
def test_parameters_grow_with_the_window(max_len):
    with torch.device("meta"):
        model = FMLPRec(FMLPRecConfig(num_items=12_101, max_len=max_len))
    assert count_parameters(model) == authors_parameter_count(12_102, max_len=max_len)
    filters = [block.filter.weight for block in model.blocks]
    assert all(w.shape == (1, max_len // 2 + 1, 64, 2) for w in filters)


@pytest.mark.parametrize("length", [8, 9])
def test_filter_is_a_circular_convolution(length):
    cfg = tiny_config(max_len=length, d_model=5)
    torch.manual_seed(0)
    layer = FilterLayer(cfg)
    with torch.no_grad():
        layer.weight.normal_()  # a filter far from the small initial one
    x = torch.randn(3, length, 5)
    # The kernel of each channel: the inverse transform of its response (the ortho scalings of the
    # forward and inverse transforms cancel, leaving the plain convolution theorem).
    kernel = torch.fft.irfft(torch.view_as_complex(layer.weight.detach())[0], n=length, dim=0)  # (L, d)
    t, s = torch.arange(length).unsqueeze(1), torch.arange(length).unsqueeze(0)
    circulant = kernel[(t - s) % length]  # (L, L, d): y_t = sum_s w_{(t - s) mod L} x_s
    reference = torch.einsum("tsd,bsd->btd", circulant, x)
    torch.testing.assert_close(layer.filter(x), reference, atol=1e-5, rtol=1e-5)
    assert (circulant[0, 1:] != 0).any(), "position 0 mixes later positions (wrap-around): not causal"


def test_the_flop_counter_counts_nothing_for_the_ffts():
    # torch.utils.flop_counter has formulas for matrix products, convolutions and attention kernels;
    # rfft / irfft (aten._fft_r2c, aten._fft_c2r) and the complex product are not among them.
    cfg = tiny_config(max_len=16, d_model=8)
    model = FMLPRec(cfg)
    x = torch.randn(2, 16, 8)
    with FlopCounterMode(display=False) as counter:
        model.blocks[0].filter(x)
    assert counter.get_total_flops() == 0
    with FlopCounterMode(display=False) as counter:
        model.blocks[0].ffn(x)
    assert counter.get_total_flops() == 2 * (2 * 16) * 8 * 32 * 2  # two (B L) x d x 4d products


def test_every_position_sees_the_whole_window():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = FMLPRec(cfg).eval()
    seq = torch.randint(1, cfg.num_items + 1, (4, cfg.max_len), generator=torch.Generator().manual_seed(0))
    changed = seq.clone()
    changed[:, -1] = changed[:, -1] % cfg.num_items + 1  # only the last item
    with torch.no_grad():
        before, after = model.encode({"seq": seq}), model.encode({"seq": changed})
    assert ((before - after).abs().amax(dim=-1) > 1e-4).all(), "every position changes"
    # Padding is part of the window too: the authors' init leaves a random vector in row 0.
    batch = tiny_batch(cfg, batch_size=16)
    padded_rows = batch["seq"][:, 0] == 0
    with torch.no_grad():
        scores = model.predict(batch)
        model.item_emb.weight[0].normal_(std=1.0)
        moved = (model.predict(batch) - scores).abs().amax(dim=1) > 1e-4
    assert padded_rows.sum() >= 2 and torch.equal(moved, padded_rows)


def test_window_length_must_be_the_filter_length():
    cfg = tiny_config()
    model = FMLPRec(cfg)
    batch = make_batch(cfg, 2, cfg.max_len - 1, "cpu", torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="sized to max_len"):
        model(batch)


def test_loss_is_the_authors_binary_cross_entropy():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = FMLPRec(cfg).eval()
    batch = tiny_batch(cfg)
    with torch.no_grad():
        h = model.encode(batch)[:, -1]
        pos = torch.sigmoid((h * model.item_emb(batch["pos"])).sum(-1))
        neg = torch.sigmoid((h * model.item_emb(batch["neg"])).sum(-1))
        reference = torch.mean(-torch.log(pos + 1e-24) - torch.log(1 - neg + 1e-24))  # trainers.py
        torch.testing.assert_close(model(batch), reference)


def test_shapes():
    cfg = tiny_config(max_len=9)
    model = FMLPRec(cfg)
    batch = tiny_batch(cfg, batch_size=5)
    assert batch["pos"].shape == batch["neg"].shape == (5,)
    assert model.encode(batch).shape == (5, 9, cfg.d_model)
    loss = model(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert model.blocks[0].filter.weight.grad.abs().sum() > 0
    assert model.predict(batch).shape == (5, cfg.num_candidates)


def planted_batch(cfg: FMLPRecConfig, batch_size: int, generator: torch.Generator):
    """Histories walking a cycle over the items (each item is the previous one + 1), left-padded;
    ``pos`` is the next step, ``neg`` any other item, candidate 0 the next step."""
    batch = make_batch(cfg, batch_size, cfg.max_len, "cpu", generator)
    start = torch.randint(0, cfg.num_items, (batch_size, 1), generator=generator)
    walk = (start + torch.arange(cfg.max_len + 1)) % cfg.num_items + 1  # (B, L + 1)
    offsets = torch.randint(1, cfg.num_items, (batch_size, 10), generator=generator)
    others = (walk[:, -1:] + offsets - 1) % cfg.num_items + 1  # never the positive
    return {
        "seq": walk[:, :-1] * (batch["seq"] != 0),
        "pos": walk[:, -1],
        "neg": others[:, 0],
        "candidates": torch.cat([walk[:, -1:], others[:, 1:]], dim=1),
    }


def test_learns_a_planted_successor_pattern():
    torch.manual_seed(0)
    cfg = tiny_config(num_items=30, max_len=8, d_model=32, dropout=0.1, lr=1e-2)
    model = FMLPRec(cfg)
    generator = torch.Generator().manual_seed(0)
    losses = train_on(model, lambda size: planted_batch(cfg, size, generator))
    hit_rate = top1_hit_rate(model, planted_batch(cfg, 256, generator))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    assert hit_rate > 0.8, f"hit rate {hit_rate:.2f}, chance is 0.10"
