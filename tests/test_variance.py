import pytest
import torch
from torch.testing import assert_close

from varirm.objectives import variance_regularizer
from varirm.variance import on_policy_accuracy, variance_report, whiten, within_prompt_variance


def test_regularizer_worked_example():
    r = torch.tensor([[0.0, 2.0], [1.0, 3.0]])
    # mean 1.5, population std sqrt(1.25); raw row variance 2 -> whitened 2 / 1.25 = 1.6
    assert_close(variance_regularizer(r), torch.tensor([-1.6, -1.6]), atol=1e-5, rtol=1e-5)
    assert_close(variance_regularizer(r, normalization="none"), torch.tensor([-2.0, -2.0]))


def test_regularizer_target_is_a_floor():
    r = torch.tensor([[0.0, 2.0], [1.0, 3.0]])
    assert_close(variance_regularizer(r, target=2.0), torch.tensor([0.4, 0.4]), atol=1e-5, rtol=1e-5)
    assert_close(variance_regularizer(r, target=1.0), torch.tensor([0.0, 0.0]))


def test_regularizer_is_scale_and_shift_invariant():
    r = torch.randn(5, 4)
    for c, d in [(10.0, 0.0), (0.01, 3.0), (7.0, -100.0)]:
        assert_close(variance_regularizer(c * r + d), variance_regularizer(r), atol=1e-4, rtol=1e-4)
        assert_close(variance_regularizer(c * r + d, target=1.5), variance_regularizer(r, target=1.5),
                     atol=1e-4, rtol=1e-4)


def test_regularizer_gradient_is_orthogonal_to_rescaling():
    r = torch.randn(4, 3, requires_grad=True)
    variance_regularizer(r).mean().backward()
    # d/dc L(c r) at c = 1 is <grad, r>: zero, rescaling cannot lower the term
    assert abs((r.grad * r.detach()).sum().item()) < 1e-5


def test_gradient_steps_raise_within_prompt_whitened_variance():
    torch.manual_seed(0)
    prompt_offset = torch.tensor([[-2.0], [0.0], [2.0]])
    r = (prompt_offset + 0.1 * torch.randn(3, 4)).requires_grad_()  # rewards separate prompts, not samples
    before = within_prompt_variance(whiten(r.detach())).mean()
    optimizer = torch.optim.SGD([r], lr=1.0)
    for _ in range(60):
        optimizer.zero_grad()
        variance_regularizer(r).mean().backward()
        optimizer.step()
    after = within_prompt_variance(whiten(r.detach())).mean()
    assert before < 0.01 and after > 1.0, (before, after)
    assert after <= 4 / 3 + 1e-4  # the maximum, k / (k - 1): all of the batch's variance within prompts


def test_pairs_normalization_by_hand():
    r = torch.tensor([[0.0, 2.0], [1.0, 3.0]])
    pairs = torch.tensor([1.0, -1.0, 3.0, -3.0])  # mean 0, population std sqrt(5)
    # each row's raw variance is 2 -> 2 / 5 = 0.4, whatever the groups' own spread
    assert_close(variance_regularizer(r, "pairs", reference=pairs), torch.tensor([-0.4, -0.4]))
    # scale invariant when the whole RM is rescaled (groups and pairs together), unlike "none"
    assert_close(variance_regularizer(10 * r + 3, "pairs", reference=10 * pairs + 3), torch.tensor([-0.4, -0.4]))
    # unlike "batch", the groups' between-prompt spread does not lower the term
    shifted = r + torch.tensor([[0.0], [100.0]])
    assert_close(variance_regularizer(shifted, "pairs", reference=pairs), torch.tensor([-0.4, -0.4]))
    assert variance_regularizer(shifted).max() > -0.01
    with pytest.raises(ValueError, match="pair rewards"):
        variance_regularizer(r, "pairs")


def test_regularizer_rejects_bad_shapes():
    with pytest.raises(ValueError, match="k >= 2"):
        variance_regularizer(torch.zeros(3, 1))


def test_on_policy_accuracy_by_hand():
    rewards = torch.tensor([[3.0, 2.0, 1.0], [1.0, 1.0, 0.0]])
    gold = torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 1.0]])
    # prompt 0 pairs (0,1) right, (0,2) right, (1,2) wrong -> 2/3
    # prompt 1 pairs with gold differing: (0,1) RM tie -> wrong, (0,2) gold 0 < 1 but r 1 > 0 -> wrong;
    # (1,2) gold tie skipped -> 0
    assert_close(on_policy_accuracy(rewards, gold), torch.tensor(1 / 3))
    assert torch.isnan(on_policy_accuracy(rewards, torch.ones(2, 3)))


def test_variance_report_by_hand():
    rewards = torch.tensor([[0.0, 2.0], [1.0, 3.0]])
    out = variance_report(rewards, gold=torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert out["prompts"] == 2 and out["samples_per_prompt"] == 2
    assert out["shift"] == pytest.approx(1.5) and out["scale"] == pytest.approx(1.25 ** 0.5)
    assert out["raw_variance_mean"] == pytest.approx(2.0)
    assert out["whitened_variance_mean"] == pytest.approx(1.6, rel=1e-5)
    assert out["whitened_variance_quantiles"]["0.5"] == pytest.approx(1.6, rel=1e-5)
    assert out["on_policy_acc"] == pytest.approx(1.0)
    scaled = variance_report(5 * rewards + 1)
    assert scaled["whitened_variance_mean"] == pytest.approx(out["whitened_variance_mean"], rel=1e-5)
    assert scaled["raw_variance_mean"] == pytest.approx(50.0)


def test_regularizer_with_gather_is_the_whole_batch_split_over_processes():
    """Two processes holding ``[[0, 2]]`` and ``[[1, 3]]``, each whitening by the gathered batch:
    each gets the worked example's ``-1.6``; the average of their terms, and its gradient, equal
    one process holding both prompts."""
    r = torch.tensor([[0.0, 2.0], [1.0, 3.0]], requires_grad=True)
    terms = [variance_regularizer(r[i:i + 1], gather=lambda local, i=i: torch.cat([r[:i], local, r[i + 1:]]))
             for i in range(2)]
    assert_close(torch.cat(terms), torch.tensor([-1.6, -1.6]), atol=1e-5, rtol=1e-5)
    split_grad, = torch.autograd.grad(sum(t.mean() for t in terms) / 2, r)
    whole_grad, = torch.autograd.grad(variance_regularizer(r).mean(), r)
    assert_close(split_grad, whole_grad)
    assert split_grad.abs().sum() > 0.1
    # without the gather each process whitens its single prompt by itself: no batch to compare to
    with pytest.raises(ValueError, match="at least 2 prompts"):
        variance_regularizer(r[:1])
    # a larger batch split 3 ways, with a target: still the whole batch's term
    big = torch.randn(6, 4, requires_grad=True)
    parts = [variance_regularizer(big[2 * i:2 * i + 2], target=1.2, gather=lambda local, i=i: torch.cat(
        [big[:2 * i], local, big[2 * i + 2:]])) for i in range(3)]
    assert_close(torch.cat(parts), variance_regularizer(big, target=1.2))
    # pairs normalization gathers the pair rewards too: each process's term is the whole batch's
    pairs = torch.randn(8)
    halves = [variance_regularizer(big[3 * i:3 * i + 3], "pairs", reference=pairs[4 * i:4 * i + 4],
                                   gather=lambda local, i=i: torch.cat([pairs.reshape(-1, 1)[:4 * i], local,
                                                                        pairs.reshape(-1, 1)[4 * i + 4:]]))
              for i in range(2)]
    assert_close(torch.cat(halves), variance_regularizer(big, "pairs", reference=pairs))


def test_harm_aware_accuracy_by_enumeration():
    """Each gold-ordered pair by hand: right when ranked right or when the worse response's reward
    is below the prompt's mean reward; weighted: pairs weighted by pi(better) pi(worse)."""
    from varirm.variance import harm_aware_accuracy

    r = torch.tensor([[0.0, 1.0, 5.0, 2.0], [3.0, 1.0, 2.0, 0.0]], dtype=torch.float64)
    g = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 1.0, 2.0]], dtype=torch.float64)
    lp = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]], dtype=torch.float64))
    rights, weights = [], []
    for p in range(2):
        mean = r[p].mean()
        for a in range(4):
            for b in range(4):
                if g[p, a] > g[p, b]:
                    rights.append(float(r[p, a] > r[p, b] or r[p, b] < mean))
                    weights.append(float(lp[p, a].exp() * lp[p, b].exp()))
    plain = sum(rights) / len(rights)
    weighted = sum(w * x for w, x in zip(weights, rights)) / sum(weights)
    assert abs(harm_aware_accuracy(r, g).item() - plain) < 1e-6
    assert abs(harm_aware_accuracy(r, g, lp).item() - weighted) < 1e-6
    assert harm_aware_accuracy(g, g).item() == 1.0  # the gold reward itself
    assert harm_aware_accuracy(r, g).item() >= 0.0 and torch.isnan(harm_aware_accuracy(r, torch.ones_like(g)))


def test_variance_report_has_harm_aware_accuracy_and_the_average():
    r = torch.tensor([[0.0, 1.0, 5.0], [3.0, 1.0, 2.0]])
    g = torch.tensor([[2.0, 1.0, 0.0], [2.0, 0.0, 1.0]])
    report = variance_report(r, g)
    assert 0.0 <= report["harm_aware_acc"] <= 1.0
    expected = (report["whitened_variance_mean"] * 2 / 3 + report["on_policy_acc"]) / 2
    assert abs(report["variance_accuracy_average"] - expected) < 1e-12
