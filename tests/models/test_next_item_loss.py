"""The shared SASRec-style loss (models.base.next_item_bce): the mean over real positions only."""
import torch
import torch.nn.functional as F

from models.base import next_item_bce


def selected_bce(pos_logits, neg_logits, target):
    """The loss written by selecting the real positions, as the PyTorch ports of SASRec do."""
    pos, neg = pos_logits[target], neg_logits[target]
    return F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos)) + F.binary_cross_entropy_with_logits(
        neg, torch.zeros_like(neg)
    )


def test_the_weighted_loss_equals_the_loss_over_the_selected_positions_with_its_gradients():
    torch.manual_seed(0)
    pos = torch.randn(4, 9, requires_grad=True)
    neg = torch.randn(4, 9, requires_grad=True)
    target = torch.arange(9).expand(4, 9) >= torch.tensor([[0], [3], [8], [5]])  # left padding
    weighted = next_item_bce(pos, neg, target)
    grads = torch.autograd.grad(weighted, (pos, neg))
    selected = selected_bce(pos, neg, target)
    expected_grads = torch.autograd.grad(selected, (pos, neg))
    torch.testing.assert_close(weighted, selected)
    for got, expected in zip(grads, expected_grads):
        torch.testing.assert_close(got, expected)
    # Padded positions get no gradient: they are not part of the loss.
    assert torch.all(grads[0][~target] == 0) and torch.all(grads[1][~target] == 0)


def test_logits_at_padded_positions_do_not_change_the_loss():
    torch.manual_seed(1)
    pos, neg = torch.randn(2, 6), torch.randn(2, 6)
    target = torch.tensor([[False, False, True, True, True, True], [False, True, True, True, True, True]])
    shifted_pos = pos.masked_fill(~target, 1e4)
    shifted_neg = neg.masked_fill(~target, -1e4)
    torch.testing.assert_close(next_item_bce(pos, neg, target), next_item_bce(shifted_pos, shifted_neg, target))
