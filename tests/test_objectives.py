import torch
from torch.testing import assert_close

from varirm.objectives import bradley_terry_loss, center_rewards_penalty


def test_bradley_terry_loss_by_hand():
    chosen, rejected = torch.tensor([1.0, 0.0, 3.0]), torch.tensor([0.0, 2.0, 3.0])
    # -log sigmoid(d): d = 1 -> log(1 + e^-1) = 0.313262; d = -2 -> log(1 + e^2) = 2.126928; d = 0 -> log 2
    assert_close(bradley_terry_loss(chosen, rejected), torch.tensor([0.313262, 2.126928, 0.693147]))


def test_bradley_terry_loss_with_margin_by_hand():
    chosen, rejected, margin = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([0.5, -1.0])
    # d - m = 0.5 -> log(1 + e^-0.5) = 0.474077; -1 -> log(1 + e) = 1.313262
    assert_close(bradley_terry_loss(chosen, rejected, margin), torch.tensor([0.474077, 1.313262]))


def test_bradley_terry_gradient_pushes_chosen_up():
    chosen, rejected = torch.tensor([0.0], requires_grad=True), torch.tensor([0.0], requires_grad=True)
    bradley_terry_loss(chosen, rejected).sum().backward()
    assert_close(chosen.grad, torch.tensor([-0.5]))  # d/dc -log sigmoid(c - r) = -(1 - sigmoid(0))
    assert_close(rejected.grad, torch.tensor([0.5]))


def test_center_rewards_penalty_by_hand():
    assert_close(center_rewards_penalty(torch.tensor([1.0, 2.0]), torch.tensor([-3.0, 0.5])), torch.tensor([4.0, 6.25]))
