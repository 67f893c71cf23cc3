"""The two attention backends: one function, different memory."""
import pytest
import torch

from models.attention import attention
from profiler.trackers.footprint import SavedTensorsCounter


def inputs(seq_len: int, head_dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, seq_len, head_dim, generator=g, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("head_dim", [8, 50, 90])  # 50 and 90 are padded for the fused kernels
@pytest.mark.parametrize("causal, padded", [(True, False), (False, True), (False, False)])
def test_sdpa_equals_naive_with_and_without_masks(head_dim, causal, padded):
    q, k, v = inputs(17, head_dim)
    mask = None
    if padded:
        mask = torch.zeros(2, 17, dtype=torch.bool)
        mask[1, :5] = True  # left padding in the second row
    naive = attention(q, k, v, backend="naive", causal=causal, key_padding_mask=mask)
    fused = attention(q, k, v, backend="sdpa", causal=causal, key_padding_mask=mask)
    torch.testing.assert_close(fused, naive, atol=1e-5, rtol=1e-5)
    grads_naive = torch.autograd.grad(naive.square().sum(), (q, k, v))
    grads_fused = torch.autograd.grad(fused.square().sum(), (q, k, v))
    for a, b in zip(grads_fused, grads_naive):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def saved_bytes(backend: str, seq_len: int, head_dim: int = 50) -> int:
    q, k, v = inputs(seq_len, head_dim)
    with SavedTensorsCounter(exclude=set()) as counter:
        attention(q, k, v, backend=backend, causal=True)
    return counter.saved_bytes


def test_naive_saves_quadratic_and_sdpa_linear_memory_for_backward():
    # Without dropout the fused kernel runs on the CPU too (the CPU flash kernel has no dropout).
    naive = [saved_bytes("naive", n) for n in (128, 256, 512)]
    fused = [saved_bytes("sdpa", n) for n in (128, 256, 512)]
    assert (naive[2] - naive[1]) / (naive[1] - naive[0]) > 3  # the (B, h, L, L) terms dominate
    assert (fused[2] - fused[1]) / (fused[1] - fused[0]) == pytest.approx(2, rel=0.05)
    assert fused[2] < naive[2] / 3


def test_unknown_backend_is_refused():
    q, k, v = inputs(4, 8)
    with pytest.raises(ValueError, match="Unknown attention backend 'flash'"):
        attention(q, k, v, backend="flash")


@pytest.mark.parametrize("causal", [True, False])
def test_a_row_with_every_key_masked_outputs_zero_in_both_backends(causal):
    q, k, v = inputs(9, 16)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    empty = torch.zeros(2, 9, dtype=torch.bool)  # (B, Lq): the query rows with no key left
    if causal:
        mask[0, :4] = True  # left padding: queries 0..3 of batch row 0 see only padding
        empty[0, :4] = True
    else:
        mask[0] = True  # batch row 0 has no real key at all
        empty[0] = True
    rows = empty[:, None, :].expand(-1, 3, -1)  # (B, h, Lq)
    outputs, grads = {}, {}
    for backend in ("naive", "sdpa"):
        out = attention(q, k, v, backend=backend, causal=causal, key_padding_mask=mask)
        outputs[backend] = out
        grads[backend] = torch.autograd.grad((out * torch.linspace(-1, 1, 16)).sum(), (q, k, v))
        assert torch.isfinite(out).all() and (out[rows] == 0).all(), backend
        assert all(torch.isfinite(g).all() for g in grads[backend]), backend
        assert (grads[backend][0][rows] == 0).all(), backend  # no gradient reaches those queries
    torch.testing.assert_close(outputs["naive"], outputs["sdpa"], atol=1e-5, rtol=1e-5)
    for a, b in zip(grads["naive"], grads["sdpa"]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # Batch row 1 has no padding: the same as without a mask.
    unmasked = attention(q, k, v, backend="naive", causal=causal)
    torch.testing.assert_close(outputs["naive"][1], unmasked[1])


def test_uniform_fully_masked_rows_attend_to_every_key_alike_in_both_backends():
    """fully_masked="uniform": a large finite masked score, as CARCA's TensorFlow code uses."""
    q, k, v = inputs(6, 16)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0] = True
    mask[1, :2] = True
    naive = attention(q, k, v, backend="naive", key_padding_mask=mask, fully_masked="uniform")
    fused = attention(q, k, v, backend="sdpa", key_padding_mask=mask, fully_masked="uniform")
    torch.testing.assert_close(fused, naive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(naive[0], v[0].mean(dim=-2, keepdim=True).expand(-1, 6, -1))
    zero = attention(q, k, v, backend="naive", key_padding_mask=mask)  # the other rows as ever
    torch.testing.assert_close(naive[1], zero[1])
    with pytest.raises(ValueError, match="Unknown fully_masked 'nan'"):
        attention(q, k, v, backend="naive", key_padding_mask=mask, fully_masked="nan")
