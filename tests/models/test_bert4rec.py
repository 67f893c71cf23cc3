"""BERT4Rec: parameter counts, padding invariance, attention backends, cloze batches, learning."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from models.base import count_parameters
from models.bert4rec import BERT4Rec, BERT4RecConfig, make_batch, mask_token, max_predictions
from models.profiles import get_profile
from models.registry import REGISTRY


def tiny_config(**overrides) -> BERT4RecConfig:
    knobs = dict(num_items=40, max_len=12, d_model=16, num_heads=2, d_ff=64)
    knobs.update(overrides)
    return BERT4RecConfig(**knobs)


def tiny_batch(cfg: BERT4RecConfig, batch_size: int = 8, seq_len: int | None = None, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return make_batch(cfg, batch_size, seq_len or cfg.max_len, "cpu", generator)


def authors_parameter_count(vocab_size: int, max_position: int, d: int = 64, layers: int = 2, d_ff: int = 256,
                            type_vocab_size: int = 2) -> int:
    """The trainable variables of FeiSun/BERT4Rec (modeling.py + run.py) for one bert_config json."""
    embeddings = vocab_size * d + max_position * d + type_vocab_size * d + 2 * d  # + LayerNorm
    layer = 4 * (d * d + d) + 2 * d + (d * d_ff + d_ff) + (d_ff * d + d) + 2 * d
    head = (d * d + d) + 2 * d + vocab_size  # transform dense, LayerNorm, output bias
    return embeddings + layers * layer + head


@pytest.mark.parametrize(
    "num_items, vocab_size, max_len",
    [
        (54_542, 54_546, 50),  # bert_config_beauty_64.json
        (3_416, 3_420, 200),  # bert_config_ml-1m_64.json
    ],
)
def test_parameter_count_at_authors_config(num_items, vocab_size, max_len):
    with torch.device("meta"):
        model = BERT4Rec(BERT4RecConfig(num_items=num_items, max_len=max_len))
    ours, authors = count_parameters(model), authors_parameter_count(vocab_size, max_len)
    # The authors' vocabulary has 4 rows around the items (id 0, [pad], [MASK], [NO_USE]); only
    # padding and [MASK] are used, so 2 rows of d + 2 output biases are left out. Their token-type
    # table (2 x d) only ever adds row 0 to every position, which the learned positional embedding
    # already absorbs, so it is left out too.
    assert authors - ours == 2 * 64 + 2 + 2 * 64
    assert abs(authors - ours) / authors < 0.01


def test_parameter_count_formula_small_config():
    cfg = tiny_config(num_items=30, max_len=10, d_model=16, d_ff=48, num_layers=3)
    d, f, vocab = cfg.d_model, cfg.d_ff, cfg.num_items + 2
    embeddings = vocab * d + cfg.max_len * d + 2 * d
    layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 4 * d
    head = d * d + d + 2 * d + vocab
    assert count_parameters(BERT4Rec(cfg)) == embeddings + cfg.num_layers * layer + head


def test_make_batch_masks_a_fixed_share_of_real_items():
    cfg = tiny_config(max_len=20, mask_prob=0.3)
    batch = tiny_batch(cfg, batch_size=32)
    seq, masked_seq, labels = batch["seq"], batch["masked_seq"], batch["labels"]
    real, masked = seq != 0, labels != 0
    lengths = real.sum(1)
    expected = torch.tensor([max(1, round(n * cfg.mask_prob)) for n in lengths.tolist()])
    assert torch.equal(masked.sum(1), expected)
    assert (lengths < cfg.max_len).any(), "some rows must be padded"
    assert not (masked & ~real).any()
    assert torch.equal(labels[masked], seq[masked])
    assert (masked_seq[masked] == mask_token(cfg)).all()
    assert torch.equal(masked_seq[~masked], seq[~masked])
    assert batch["candidates"].shape == (32, cfg.num_candidates)
    assert (batch["candidates"] >= 1).all() and (batch["candidates"] <= cfg.num_items).all()


@pytest.mark.parametrize(
    "profile, mask_prob, predictions, dropout",
    [("beauty", 0.6, 30, 0.5), ("ml-1m", 0.2, 40, 0.2), ("steam", 0.4, 20, 0.2)],  # run_<profile>.sh
)
def test_each_profile_gets_the_authors_cloze_settings(profile, mask_prob, predictions, dropout):
    cfg = REGISTRY["bert4rec"].build_config(get_profile(profile), 50)
    assert (cfg.mask_prob, cfg.max_predictions_per_seq, cfg.dropout, cfg.attention_dropout) == (
        mask_prob, predictions, dropout, 0.2)
    assert cfg.d_model == (256 if profile == "steam" else 64)


def test_beauty_masks_six_tenths_of_each_history_up_to_30_items():
    beauty = REGISTRY["bert4rec"].build_config(get_profile("beauty"), 50)
    cfg = dataclasses.replace(beauty, num_items=40, d_model=16, d_ff=64)  # the cloze settings kept
    assert max_predictions(cfg, 50) == 30 and max_predictions(cfg, 20) == 12
    assert max_predictions(cfg, 200) == 30  # the cap binds past L = 50
    for seq_len in (20, 50, 80):
        batch = tiny_batch(cfg, batch_size=64, seq_len=seq_len)
        lengths = (batch["seq"] != 0).sum(1)
        masked = (batch["labels"] != 0).sum(1)
        expected = torch.tensor([min(30, max(1, round(n * 0.6))) for n in lengths.tolist()])
        assert torch.equal(masked, expected)
        assert masked.max() == min(30, round(seq_len * 0.6))  # full rows fill every slot

    # The output layer scores max_predictions slots per history: (B, 30, V) at L = 80.
    model = BERT4Rec(dataclasses.replace(cfg, max_len=80))
    widths = []
    handle = model.head_dense.register_forward_hook(lambda module, args, out: widths.append(out.shape[1]))
    model(tiny_batch(model.cfg, batch_size=4, seq_len=80))
    handle.remove()
    assert widths == [30]


def test_loss_equals_full_vocabulary_reference():
    cfg = tiny_config(max_len=20)
    torch.manual_seed(0)
    model = BERT4Rec(cfg).eval()
    batch = tiny_batch(cfg, batch_size=16)
    loss = model(batch)
    # Plain reference: logits for every position over the whole vocabulary, then the masked ones.
    h = model.encode_ids(batch["masked_seq"])  # (B, L, d)
    t = model.head_norm(F.gelu(model.head_dense(h)))
    logits = t @ model.item_emb.weight.T + model.output_bias  # (B, L, V)
    masked = batch["labels"] != 0
    reference = F.cross_entropy(logits[masked], batch["labels"][masked])
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)


def test_predict_ranks_as_the_full_vocabulary_log_softmax():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = BERT4Rec(cfg).eval()
    batch = tiny_batch(cfg)
    scores = model.predict(batch)
    # The original: [MASK] after the last L - 1 items, log-softmax over the vocabulary, then candidates.
    seq = batch["seq"]
    ids = torch.cat([seq[:, 1:], torch.full_like(seq[:, :1], mask_token(cfg))], dim=1)
    t = model.head_norm(F.gelu(model.head_dense(model.encode_ids(ids)[:, -1])))
    log_probs = (t @ model.item_emb.weight.T + model.output_bias).log_softmax(-1)  # (B, V)
    offset = scores - log_probs.gather(1, batch["candidates"])  # one constant per row
    torch.testing.assert_close(offset, offset[:, :1].expand_as(offset), rtol=0, atol=1e-5)


def test_padding_invariance():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = BERT4Rec(cfg).eval()
    batch = tiny_batch(cfg, batch_size=16)
    assert (batch["seq"] == 0).any(dim=1).sum() >= 2, "the batch must hold padded rows"
    before = model.predict(batch)
    # Whatever the padding embedding holds, nothing real attends to it.
    with torch.no_grad():
        model.item_emb.weight[0].normal_(std=10.0)
    torch.testing.assert_close(model.predict(batch), before, rtol=0, atol=1e-5)
    # The amount of padding is invisible too: positions count from the first real item, so a padded
    # history scores the same in a longer window (a full row would keep its first item there, which
    # predict drops to make room for [MASK] in the shorter window).
    padded_rows = batch["seq"][:, 0] == 0
    longer = dict(batch, seq=F.pad(batch["seq"], (cfg.max_len, 0)))
    model_long = BERT4Rec(dataclasses.replace(cfg, max_len=2 * cfg.max_len)).eval()
    state = model.state_dict()
    state["pos_emb.weight"] = torch.cat([state["pos_emb.weight"], model_long.pos_emb.weight[cfg.max_len:]])
    model_long.load_state_dict(state)
    torch.testing.assert_close(model_long.predict(longer)[padded_rows], before[padded_rows], rtol=0, atol=1e-5)


def test_bidirectional_and_order_aware():
    cfg = tiny_config()
    torch.manual_seed(0)
    model = BERT4Rec(cfg).eval()
    ids = tiny_batch(cfg)["seq"]
    changed = ids.clone()
    changed[:, -1] = changed[:, -1] % cfg.num_items + 1  # a later item
    h, h_changed = model.encode_ids(ids), model.encode_ids(changed)
    assert (h[:, -2] - h_changed[:, -2]).abs().amax() > 1e-3, "earlier positions must see later items"
    swapped = ids.clone()
    swapped[:, -3], swapped[:, -2] = ids[:, -2], ids[:, -3]
    differs = (model.encode_ids(swapped)[:, -1] - h[:, -1]).abs().amax(dim=-1) > 1e-6  # fp32 noise ~1e-7
    both_real_and_distinct = (ids[:, -3] != 0) & (ids[:, -3] != ids[:, -2])
    assert both_real_and_distinct.sum() >= 4
    assert differs[both_real_and_distinct].all(), "the order of the history must matter"


def test_naive_and_sdpa_agree():
    cfg = tiny_config(max_len=16)
    torch.manual_seed(0)
    naive = BERT4Rec(dataclasses.replace(cfg, attention="naive")).eval()
    sdpa = BERT4Rec(dataclasses.replace(cfg, attention="sdpa")).eval()
    sdpa.load_state_dict(naive.state_dict())
    batch = tiny_batch(cfg, batch_size=16)
    torch.testing.assert_close(sdpa.predict(batch), naive.predict(batch), rtol=0, atol=1e-5)
    loss_naive, loss_sdpa = naive(batch), sdpa(batch)
    torch.testing.assert_close(loss_sdpa, loss_naive, rtol=0, atol=1e-5)
    loss_naive.backward()
    loss_sdpa.backward()
    for (name, p_naive), p_sdpa in zip(naive.named_parameters(), sdpa.parameters()):
        torch.testing.assert_close(p_sdpa.grad, p_naive.grad, rtol=0, atol=1e-5, msg=name)


def test_optimizer_decays_all_but_layer_norms_and_biases():
    cfg = tiny_config()
    model = BERT4Rec(cfg)
    optimizer = model.configure_optimizer()
    assert isinstance(optimizer, torch.optim.AdamW)
    decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == cfg.weight_decay for p in g["params"]}
    plain = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay | plain == set(names) and not decay & plain
    for pid, name in names.items():
        skipped = name.endswith("bias") or "norm" in name
        assert (pid in plain) == skipped, name


@pytest.mark.parametrize("seq_len", [8, 20])
def test_forward_and_predict_at_two_lengths(seq_len):
    cfg = tiny_config(max_len=seq_len)
    torch.manual_seed(0)
    model = BERT4Rec(cfg)
    batch = tiny_batch(cfg, batch_size=6, seq_len=seq_len)
    loss = model(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    scores = model.predict(batch)
    assert scores.shape == (6, cfg.num_candidates) and torch.isfinite(scores).all()


def planted_batch(cfg: BERT4RecConfig, batch_size: int, generator: torch.Generator):
    """Histories that walk a cycle over the items (the next item is the previous one + 1), with the
    cloze masking of ``make_batch`` and candidates whose column 0 is the true next item."""
    batch = make_batch(cfg, batch_size, cfg.max_len, "cpu", generator)
    start = torch.randint(0, cfg.num_items, (batch_size, 1), generator=generator)
    walk = (start + torch.arange(cfg.max_len + 1)) % cfg.num_items + 1  # (B, L + 1)
    real, masked = batch["seq"] != 0, batch["labels"] != 0
    seq = walk[:, :-1] * real
    negatives = (walk[:, -1:] + torch.randint(1, cfg.num_items, (batch_size, 9), generator=generator) - 1)
    negatives = negatives % cfg.num_items + 1  # distinct from the positive
    return {
        "seq": seq,
        "masked_seq": seq.masked_fill(masked, mask_token(cfg)),
        "labels": seq * masked,
        "candidates": torch.cat([walk[:, -1:], negatives], dim=1),
    }


def test_learns_a_planted_successor_pattern():
    torch.manual_seed(0)
    cfg = tiny_config(num_items=30, max_len=10, d_model=32, d_ff=128, dropout=0.1, attention_dropout=0.1,
                      lr=3e-3, mask_prob=0.3)
    model = BERT4Rec(cfg)
    optimizer = model.configure_optimizer()
    generator = torch.Generator().manual_seed(0)
    for _ in range(250):
        loss = model(planted_batch(cfg, 64, generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        scores = model.predict(planted_batch(cfg, 256, generator))
    hit_rate = (scores.argmax(dim=1) == 0).float().mean().item()
    assert hit_rate > 0.5, f"hit rate {hit_rate:.2f}, chance is 0.10"
