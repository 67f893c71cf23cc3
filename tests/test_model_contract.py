"""Every registered model follows the contract the harness relies on (tiny sizes, CPU)."""
import dataclasses

import pytest
import torch

from models.base import count_parameters
from models.profiles import get_profile
from models.registry import REGISTRY

TINY = get_profile("tiny")
BATCH = 3
ATTENTION_MODELS = [name for name, spec in REGISTRY.items() if spec.has_attention_backend]
CAUSAL_MODELS = [name for name, spec in REGISTRY.items() if spec.causal]


def build(name: str, seq_len: int, attention: str | None = "naive", seed: int = 0, **overrides):
    spec = REGISTRY[name]
    config = spec.build_config(TINY, seq_len, attention, **overrides)
    torch.manual_seed(seed)
    model = spec.build(config)
    batch = spec.make_batch(config, BATCH, seq_len, "cpu", torch.Generator().manual_seed(seed))
    return model, batch


@pytest.mark.parametrize("name", REGISTRY)
@pytest.mark.parametrize("seq_len", [8, 13])
def test_forward_is_a_finite_loss_with_gradients_and_predict_scores_candidates(name, seq_len):
    model, batch = build(name, seq_len)
    assert batch["seq"].shape == (BATCH, seq_len)
    loss = model(batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    model.eval()
    with torch.inference_mode():
        scores = model.predict(batch)
    assert scores.dim() == 2 and scores.shape[0] == BATCH and torch.isfinite(scores).all()


@pytest.mark.parametrize("name", REGISTRY)
def test_batches_are_reproducible_from_the_generator_and_left_padded(name):
    _, first = build(name, 10, seed=1)
    _, again = build(name, 10, seed=1)
    _, other = build(name, 10, seed=2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["seq"], other["seq"])
    real = first["seq"] != 0
    # left padding: once a row has a real item, every later position is real
    assert torch.equal(real, real.int().cummax(dim=1).values.bool())


@pytest.mark.parametrize("name", REGISTRY)
def test_optimizer_updates_only_trainable_parameters(name):
    model, batch = build(name, 8)
    optimizer = model.configure_optimizer()
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not frozen & in_optimizer
    before = [p.detach().clone() for p in model.parameters()]
    model(batch).backward()
    optimizer.step()
    changed = [not torch.equal(b, p) for b, p in zip(before, model.parameters())]
    assert any(changed)
    assert not any(c for c, p in zip(changed, model.parameters()) if not p.requires_grad)
    assert count_parameters(model) == sum(p.numel() for p in before)


# Every attention model at the tiny config, and the shapes where a head split could go wrong.
BACKEND_CASES = [pytest.param(name, {}, id=name) for name in ATTENTION_MODELS] + [
    pytest.param("carca", {"d_model": d, "num_heads": h}, id=f"carca-d{d}-h{h}") for d, h in [(20, 2), (18, 1), (32, 4)]
] + [pytest.param("proxyrca", {"d_model": 32, "num_proxies": 8, "num_heads": 4, "num_layers": 2, "num_known_items": 10},
                 id="proxyrca-2-layers-4-heads")]


@pytest.mark.parametrize("name, overrides", BACKEND_CASES)
def test_naive_and_sdpa_backends_compute_the_same_function(name, overrides):
    naive, batch = build(name, 12, "naive", **overrides)
    sdpa, _ = build(name, 12, "sdpa", **overrides)
    torch.manual_seed(1)
    with torch.no_grad():  # trainable weights off their initial values (zero biases, unit norms), which hide mistakes
        for param in naive.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn_like(param))
    sdpa.load_state_dict(naive.state_dict())
    naive.eval(), sdpa.eval()  # dropout off: both backends then compute one deterministic function
    loss_naive, loss_sdpa = naive(batch), sdpa(batch)
    torch.testing.assert_close(loss_naive, loss_sdpa, atol=5e-5, rtol=1e-4)
    loss_naive.backward(), loss_sdpa.backward()
    for (param_name, a), b in zip(naive.named_parameters(), sdpa.parameters()):
        if a.grad is not None:
            # float32 rounding grows with the gradient's scale (sums over d = 256 in ProxyRCA)
            scale = max(1.0, a.grad.abs().max().item())
            torch.testing.assert_close(a.grad, b.grad, atol=1e-5 * scale, rtol=1e-4, msg=param_name)
    with torch.inference_mode():
        torch.testing.assert_close(naive.predict(batch), sdpa.predict(batch), atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("name", CAUSAL_MODELS)
def test_causal_models_do_not_see_the_future(name):
    model, batch = build(name, 12)
    model.eval()
    t = 6
    changed = {}
    for key, value in batch.items():
        if value.shape[:2] == batch["seq"].shape:
            future = value.clone()
            replacement = torch.randint_like(future[:, t + 1:], 1, TINY.num_items) if not value.is_floating_point() \
                else torch.rand_like(future[:, t + 1:])
            future[:, t + 1:] = replacement
            changed[key] = future
        else:
            changed[key] = value
    with torch.no_grad():
        before, after = model.encode(batch), model.encode(changed)
    torch.testing.assert_close(before[:, : t + 1], after[:, : t + 1], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(before[:, t + 1:], after[:, t + 1:])  # the test would notice a leak


PRESET_CASES = [(name, profile) for name, spec in REGISTRY.items() for profile in spec.presets]


@pytest.mark.parametrize("name, profile", PRESET_CASES)
def test_building_at_a_profile_applies_its_preset_under_the_harness_knobs(name, profile):
    spec = REGISTRY[name]
    seq_len = 37  # no preset's length: the harness's length must win
    config = spec.build_config(get_profile(profile), seq_len)
    for key, value in spec.presets[profile].items():
        assert getattr(config, key) == (seq_len if key == "max_len" else value), key
    if hasattr(config, "max_len"):
        assert config.max_len == seq_len
    assert config.num_items == get_profile(profile).num_items
    with torch.device("meta"):  # sizes only: a preset must give a model that builds
        spec.build(config)


def test_presets_differ_between_profiles_and_a_profile_without_one_gets_the_defaults():
    spec = REGISTRY["carca"]
    fashion = spec.build_config(get_profile("fashion"), 20)
    beauty = spec.build_config(get_profile("beauty"), 20)
    assert (fashion.d_model, fashion.num_heads, fashion.cross_residual) == (390, 3, False)
    assert (beauty.d_model, beauty.num_heads, beauty.cross_residual) == (90, 1, True)
    assert "tiny" not in spec.presets
    defaults = spec.config_cls()
    tiny = spec.build_config(TINY, 20)
    assert (tiny.d_model, tiny.dropout, tiny.lr) == (defaults.d_model, defaults.dropout, defaults.lr)


def respec(name: str, **changes):
    return dataclasses.replace(REGISTRY[name], **changes)


def test_a_preset_with_an_unknown_field_or_profile_fails_loudly():
    with pytest.raises(ValueError, match=r"carca: preset 'beauty' sets \['d_modle'\], not fields of CARCAConfig"):
        respec("carca", presets={"beauty": {"d_modle": 64}})
    with pytest.raises(ValueError, match="preset for unknown profile 'beauty2'"):
        respec("sasrec", presets={"beauty2": {"dropout": 0.5}})
