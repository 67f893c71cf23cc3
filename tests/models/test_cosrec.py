"""CosRec and CosRec+: parameter counts, causality, equality with the authors' computations,
saved-memory scaling, learning, and shapes."""
import copy

import pytest
import torch
import torch.nn.functional as F

from models.base import count_parameters
from models.cosrec import (
    CosRec,
    CosRecConfig,
    CosRecPlus,
    CosRecPlusConfig,
    make_batch,
    make_plus_batch,
    prefix_square_mean,
)

TINY = dict(num_users=20, num_items=30, d_model=6, block_dims=(8, 12), fc_dim=10)


def tiny_cosrec(**overrides) -> CosRec:
    return CosRec(CosRecConfig(**{**TINY, "max_len": 8, **overrides}))


def tiny_plus(**overrides) -> CosRecPlus:
    return CosRecPlus(CosRecPlusConfig(**{**TINY, "max_len": 12, **overrides}))


def batch_of(model, batch_size: int, seq_len: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    maker = make_batch if isinstance(model, CosRec) else make_plus_batch
    return maker(model.cfg, batch_size, seq_len, "cpu", generator)


# --- parameter counts ---------------------------------------------------------------------------


def conv_blocks_params(in_dim: int, dims: tuple[int, ...]) -> int:
    """Each block: 1x1 conv (in -> c, bias), 3x3 conv (c -> c, bias), two BatchNorms (weight, bias)."""
    total = 0
    for c in dims:
        total += (in_dim * c + c) + (9 * c * c + c) + 2 * (2 * c)
        in_dim = c
    return total


def cosrec_params(users: int, items: int, d: int, dims: tuple[int, ...], fc: int) -> int:
    """zzxslp/CosRec: user (users, d), item (items + 1, d), blocks, fc1, W2 (items + 1, fc + d), b2."""
    rows = items + 1
    blocks_and_fc = conv_blocks_params(2 * d, dims) + (dims[-1] * fc + fc)
    return users * d + rows * d + blocks_and_fc + rows * (fc + d) + rows


def cosrec_plus_params(users: int, items: int, d: int, dims: tuple[int, ...], fc: int) -> int:
    """CosRec2: user (users + 1, d), item (items + 1, d), blocks, fc1, fc_out Linear(fc + d, items + 1)."""
    rows = items + 1
    blocks_and_fc = conv_blocks_params(2 * d, dims) + (dims[-1] * fc + fc)
    return (users + 1) * d + rows * d + blocks_and_fc + (fc + d + 1) * rows


def test_parameter_count_at_authors_config():
    # ML-1M (6,040 users, 3,416 items; the authors' tables have one more row for padding item 0).
    # zzxslp CosRec, d 50, blocks [128, 256], fc 150: 302,000 user + 170,850 item + 161,024 +
    # 624,128 blocks + 38,550 fc1 + 683,400 W2 + 3,417 b2.
    assert count_parameters(CosRec(CosRecConfig())) == 1_983_369
    # CosRec2, emb 64, blocks [128, 256], fc 128: 386,624 user + 218,688 item + 164,608 + 624,128
    # blocks + 32,896 fc1 + 659,481 fc_out.
    assert count_parameters(CosRecPlus(CosRecPlusConfig())) == 2_086_425


def test_parameter_formula_at_small_config():
    assert count_parameters(tiny_cosrec()) == cosrec_params(20, 30, 6, (8, 12), 10)
    assert count_parameters(tiny_plus()) == cosrec_plus_params(20, 30, 6, (8, 12), 10)
    # No parameter depends on L.
    assert count_parameters(tiny_plus(max_len=40)) == count_parameters(tiny_plus(max_len=5))


# --- the authors' computations, written plainly -------------------------------------------------


def reference_grid(model, seq: torch.Tensor) -> torch.Tensor:
    """The pair grid built explicitly, then the blocks run layer by layer, out of place."""
    emb = model.item_emb(seq)  # (B, L, d)
    length = seq.shape[1]
    item_k = emb.unsqueeze(1).expand(-1, length, -1, -1)  # cell (j, k) holds e_k
    item_j = emb.unsqueeze(2).expand(-1, -1, length, -1)  # cell (j, k) holds e_j
    h = torch.cat([item_k, item_j], -1).permute(0, 3, 1, 2)  # (B, 2d, L, L)
    for block in model.blocks:
        h = F.relu(block.bn1(block.conv1(h)))
        if block.causal:
            h = F.pad(h, (2, 0, 2, 0))
        h = F.relu(block.bn2(block.conv2(h)))
    return h


def reference_square_mean(x: torch.Tensor) -> torch.Tensor:
    """(B, C, L, L) -> (B, L, C) through an (L, L, L) mask of the top-left squares: O(L^3)."""
    idx = torch.arange(x.shape[-1])
    inside = (idx[None, :, None] <= idx[:, None, None]) & (idx[None, None, :] <= idx[:, None, None])
    sums = torch.einsum("bcjk,tjk->btc", x, inside.to(x.dtype))
    return sums / (idx + 1).to(x.dtype).square()[:, None]


def reference_cosrec(model: CosRec, batch):
    h = reference_grid(model, batch["seq"])
    h = F.adaptive_avg_pool2d(h, 1).flatten(1)
    x = torch.cat([model.dropout(torch.tanh(model.fc(h))), model.user_emb(batch["user"])], -1)
    items = torch.cat([batch["targets"], batch["negatives"]], 1)
    logits = torch.baddbmm(model.out_bias(items), model.out_weight(items), x.unsqueeze(-1)).squeeze(-1)
    pos, neg = logits.split(batch["targets"].shape[1], dim=1)
    loss = -torch.log(torch.sigmoid(pos)).mean() - torch.log(1 - torch.sigmoid(neg)).mean()
    return loss, logits


def reference_plus(model: CosRecPlus, batch):
    length = batch["seq"].shape[1]
    h = reference_square_mean(reference_grid(model, batch["seq"]))
    user = model.user_emb(batch["user"]).unsqueeze(1).repeat(1, length, 1)
    x = torch.cat([model.dropout(torch.tanh(model.fc(h))), user], -1)
    all_logits = model.out(x)  # (B, L, |I| + 1): every item at every position
    items = torch.stack([batch["pos"], batch["neg"]], -1)
    logits = all_logits.gather(-1, items)  # (B, L, 2)
    target = torch.zeros_like(logits)
    target[..., 0] = 1.0
    target[batch["pos"] == 0] = float("nan")  # padding, skipped as the authors' loss skips NaN
    keep = ~target.isnan()
    loss = F.binary_cross_entropy_with_logits(logits[keep], target[keep])
    return loss, logits, all_logits[:, -1].gather(-1, batch["candidates"])


def test_prefix_square_mean_equals_mask_einsum():
    x = torch.randn(3, 5, 17, 17, dtype=torch.float64)
    torch.testing.assert_close(prefix_square_mean(x), reference_square_mean(x), rtol=1e-12, atol=1e-12)


def test_candidate_output_weights_equal_full_logits_then_gather():
    torch.manual_seed(0)
    model = tiny_plus().double()
    x = torch.randn(4, 7, model.out.in_features, dtype=torch.float64)
    items = torch.randint(0, 31, (4, 7, 3))
    torch.testing.assert_close(model.score(x, items), model.out(x).gather(-1, items), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("train", [True, False])
def test_cosrec_equals_authors_computation(train):
    torch.manual_seed(0)
    ours = tiny_cosrec(dropout=0.0).double().train(train)
    ref = copy.deepcopy(ours)
    batch = batch_of(ours, 6, 9)
    loss = ours(batch)
    ref_loss, ref_logits = reference_cosrec(ref, batch)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-10)
    items = torch.cat([batch["targets"], batch["negatives"]], 1)
    torch.testing.assert_close(ours.score(ours.represent(batch), items), ref_logits, rtol=1e-10, atol=1e-10)
    loss.backward()
    ref_loss.backward()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("block_dims", [(8, 12), (8,)])
@pytest.mark.parametrize("train", [True, False])
def test_cosrec_plus_equals_authors_computation(train, block_dims):
    torch.manual_seed(0)
    ours = tiny_plus(dropout=0.0, block_dims=block_dims).double().train(train)
    ref = copy.deepcopy(ours)
    batch = batch_of(ours, 8, 11)
    loss = ours(batch)
    ref_loss, ref_logits, ref_scores = reference_plus(ref, batch)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-10)
    items = torch.stack([batch["pos"], batch["neg"]], -1)
    torch.testing.assert_close(ours.score(ours.encode(batch), items), ref_logits, rtol=1e-10, atol=1e-10)
    loss.backward()
    ref_loss.backward()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-10, msg=name)
    if not train:  # predict in train mode would update the BatchNorm statistics again
        torch.testing.assert_close(ours.predict(batch), ref_scores, rtol=1e-10, atol=1e-10)


# --- causality (CosRec+) and what holds without a mask (CosRec) ---------------------------------


def test_cosrec_plus_is_causal():
    torch.manual_seed(0)
    model = tiny_plus().eval()  # BatchNorm on running statistics, dropout off
    batch = batch_of(model, 4, 12)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        base = model.encode(batch)
        assert base.shape == (4, 12, 10 + 6)
        for t in (0, 3, 10):
            changed = dict(batch)
            changed["seq"] = batch["seq"].clone()
            changed["seq"][:, t + 1 :] = torch.randint(1, 31, (4, 11 - t), generator=generator)
            changed["pos"] = torch.randint(1, 31, (4, 12), generator=generator)
            changed["neg"] = torch.randint(1, 31, (4, 12), generator=generator)
            out = model.encode(changed)
            torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-6)
            assert (out[:, t + 1 :] - base[:, t + 1 :]).abs().amax() > 1e-4  # later steps do see them


def test_cosrec_scores_depend_on_user_only_through_its_embedding():
    """CosRec has no padding mask (padding is item 0, a learned row) and is not causal: the window
    is read as a whole. What must hold: predict is deterministic in eval mode, it depends on the
    window's items, and the user enters only as the last d inputs of the output layer, so changing
    the user shifts every score by W2[item, fc:] . (u' - u) exactly."""
    torch.manual_seed(0)
    model = tiny_cosrec().double().eval()
    batch = batch_of(model, 5, 8)
    with torch.no_grad():
        scores = model.predict(batch)
        assert scores.shape == (5, model.cfg.num_candidates)
        torch.testing.assert_close(model.predict(batch), scores, rtol=0, atol=0)

        other = dict(batch, user=(batch["user"] + 7) % model.cfg.num_users)
        shift = model.user_emb(other["user"]) - model.user_emb(batch["user"])  # (B, d)
        user_weights = model.out_weight(batch["candidates"])[..., model.cfg.fc_dim :]  # (B, C, d)
        expected = scores + (user_weights @ shift.unsqueeze(-1)).squeeze(-1)
        torch.testing.assert_close(model.predict(other), expected, rtol=1e-10, atol=1e-10)

        seq = batch["seq"].clone()
        seq[:, 4] = seq[:, 4] % model.cfg.num_items + 1
        assert (model.predict(dict(batch, seq=seq)) - scores).abs().amax(-1).min() > 1e-8


# --- saved-for-backward memory grows as L^2 ------------------------------------------------------


def saved_bytes(compute) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``compute`` runs."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = compute()
    del loss
    return sum(storages.values())


def test_cosrec_plus_saved_memory_grows_quadratically():
    torch.manual_seed(0)
    model = CosRecPlus(CosRecPlusConfig(num_users=10, num_items=50, d_model=4, block_dims=(4, 8), fc_dim=8))
    lengths = (32, 64, 128)
    ours, ref = [], []
    for length in lengths:
        batch = batch_of(model, 2, length)
        ours.append(saved_bytes(lambda: model(batch)))
        ref.append(saved_bytes(lambda: reference_plus(model, batch)[0]))
    # Doubling L: growth ratio of the increments is <= 4 for c0 + c1 L + c2 L^2, up to 8 for L^3.
    ours_ratio = (ours[2] - ours[1]) / (ours[1] - ours[0])
    ref_ratio = (ref[2] - ref[1]) / (ref[1] - ref[0])
    assert 3.0 < ours_ratio <= 4.05, ours
    assert ref_ratio > 5.0, ref  # the authors' (L, L, L) pooling mask is saved for backward
    # Every length: less than the authors' computation (no pair grid, one grid fewer per block).
    assert all(o < r for o, r in zip(ours, ref)), (ours, ref)
    assert ours[2] < 0.6 * ref[2], (ours, ref)


# --- learning a planted pattern ------------------------------------------------------------------


def chain_data(cycle: torch.Tensor, length: int, extra: int, count: int, generator):
    """Sequences that walk a fixed cycle over the items: the next item is a function of the last.
    Returns the first ``length`` items of each walk and the ``extra`` items that follow."""
    num_items = cycle.shape[0]
    starts = torch.randint(0, num_items, (count,), generator=generator)
    walk = cycle[(starts.unsqueeze(1) + torch.arange(length + extra)) % num_items]  # (count, L + extra)
    return walk[:, :length], walk[:, length:]


def hit_rate(model, batch, truth: torch.Tensor, num_items: int, ignore: torch.Tensor | None = None) -> float:
    """Fraction of rows where the true next item scores highest among all items but ``ignore``."""
    candidates = torch.arange(1, num_items + 1).expand(truth.shape[0], -1)  # (B, N)
    model.eval()
    with torch.no_grad():
        scores = model.predict(dict(batch, candidates=candidates))
    if ignore is not None:
        scores = scores.scatter(1, ignore - 1, float("-inf"))
    return (scores.argmax(-1) + 1 == truth).float().mean().item()


def test_cosrec_learns_planted_pattern():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    num_items, length = 20, 6
    cycle = torch.randperm(num_items, generator=generator) + 1  # a random cycle through 1..N
    model = CosRec(CosRecConfig(num_users=5, num_items=num_items, max_len=length, d_model=16,
                                block_dims=(16, 32), fc_dim=16, lr=1e-2))
    optimizer = model.configure_optimizer()
    for _ in range(150):
        seq, targets = chain_data(cycle, length, 3, 64, generator)
        batch = {
            "seq": seq,
            "user": torch.randint(0, 5, (64,), generator=generator),
            "targets": targets,
            "negatives": torch.randint(1, num_items + 1, (64, 3), generator=generator),
        }
        model.train()
        optimizer.zero_grad()
        model(batch).backward()
        optimizer.step()
    seq, targets = chain_data(cycle, length, 3, 200, generator)
    batch = {"seq": seq, "user": torch.randint(0, 5, (200,), generator=generator)}
    # CosRec trains the T = 3 next items as one positive set, so the 2nd and 3rd next items are
    # left out of the ranking: the next item must beat the other 17 items (chance: 1/18).
    assert hit_rate(model, batch, targets[:, 0], num_items, ignore=targets[:, 1:]) > 0.8


def test_cosrec_plus_learns_planted_pattern():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    num_items, length = 20, 8
    cycle = torch.randperm(num_items, generator=generator) + 1
    model = CosRecPlus(CosRecPlusConfig(num_users=5, num_items=num_items, max_len=length, d_model=16,
                                        block_dims=(16, 32), fc_dim=16, lr=1e-2))
    optimizer = model.configure_optimizer()
    for _ in range(200):
        walk, _ = chain_data(cycle, length + 1, 0, 64, generator)
        batch = {
            "seq": walk[:, :-1],
            "pos": walk[:, 1:],
            "neg": torch.randint(1, num_items + 1, (64, length), generator=generator),
            "user": torch.randint(1, 6, (64,), generator=generator),
        }
        model.train()
        optimizer.zero_grad()
        model(batch).backward()
        optimizer.step()
    seq, targets = chain_data(cycle, length, 1, 200, generator)
    batch = {"seq": seq, "user": torch.randint(1, 6, (200,), generator=generator)}
    assert hit_rate(model, batch, targets[:, 0], num_items) > 0.8  # chance: 1/20


# --- shapes at two lengths -----------------------------------------------------------------------


@pytest.mark.parametrize("build", [tiny_cosrec, tiny_plus])
@pytest.mark.parametrize("length", [8, 20])
def test_forward_and_predict_at_two_lengths(build, length):
    torch.manual_seed(0)
    model = build()
    batch = batch_of(model, 8, length)
    assert batch["seq"].shape == (8, length) and batch["candidates"].shape == (8, 101)
    assert (batch["seq"] == 0).any()  # some rows are left-padded
    loss = model(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        scores = model.predict(batch)
    assert scores.shape == (8, 101) and torch.isfinite(scores).all()


def test_cosrec_rejects_windows_too_short_for_its_convolutions():
    with pytest.raises(ValueError, match="max_len >= 5"):
        tiny_cosrec(max_len=4)
    model = tiny_cosrec()
    with pytest.raises(ValueError, match="at least 5"):
        model.predict(batch_of(model, 2, 4))
