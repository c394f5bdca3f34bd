import itertools

import pytest
import torch
from torch.testing import assert_close

from varirm.objectives import (
    aligned_variance,
    bradley_terry_loss,
    center_rewards_penalty,
    group_pairs_loss,
    listwise_loss,
)


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


# The KL penalty of RLOO: its exact expected gradient, by enumeration, against autograd of the
# divergence it names (varirm.objectives.KLIn).


def _categorical(theta):
    """One-token responses from a 6-way softmax: sequences (6, 1) and their token log-probs."""
    seqs = torch.arange(6).view(6, 1)
    return seqs, torch.log_softmax(theta, -1)[seqs[:, 0]].view(6, 1)


def _two_token(theta):
    """Two-token responses over 3 tokens: theta = first-token logits (3) then next-token logits
    given the first (3 x 3). Sequences (9, 2) and their token log-probs (9, 2)."""
    first, second = torch.log_softmax(theta[:3], -1), torch.log_softmax(theta[3:].view(3, 3), -1)
    seqs = torch.cartesian_prod(torch.arange(3), torch.arange(3))
    return seqs, torch.stack([first[seqs[:, 0]], second[seqs[:, 0], seqs[:, 1]]], -1)


def _expected_penalty_gradient(policy, theta, ref_theta, kl_in, k=2, beta=1.0, k3_in_reward=False):
    """The exact expectation, over every k-tuple of sampled sequences, of the gradient of RLOO's loss
    (reward 0, so only the KL penalty acts) as the module computes it: advantages and loss from
    varirm.objectives, old log-probs = the current ones detached."""
    from varirm.objectives import kl_estimate, policy_advantages, policy_loss, rloo_advantages

    theta = theta.clone().requires_grad_(True)
    seqs, logp_tok = policy(theta)
    ref_tok = policy(ref_theta)[1]
    m = len(seqs)
    tuples = torch.cartesian_prod(*[torch.arange(m)] * k).view(-1, k)  # (m^k, k) sequence indices
    rows = tuples.reshape(-1)
    lp, ref, mask = logp_tok[rows], ref_tok[rows], torch.ones_like(logp_tok[rows])
    weight = logp_tok.sum(-1).detach().exp()[tuples].prod(-1)  # (m^k,) probability of each tuple
    reward = torch.zeros(len(rows), dtype=theta.dtype)
    if k3_in_reward:  # the removed setting, for contrast
        adv = rloo_advantages((reward - beta * kl_estimate(lp.detach(), ref, mask, "k3")).view(-1, k)).reshape(-1)
    else:
        adv = policy_advantages(reward, lp.detach(), ref, mask, k, beta, kl_in)[0]
    loss = policy_loss(lp, lp.detach(), ref, mask, adv, beta, kl_in, clip_eps=0.2).view(-1, k).mean(-1)
    (grad,) = torch.autograd.grad((weight * loss).sum(), theta)
    return grad


def _kl_pi_ref(policy, theta, ref_theta):
    """KL(pi || ref) of the whole sequence, exactly."""
    _, logp = policy(theta)
    _, ref = policy(ref_theta)
    return (logp.sum(-1).exp() * (logp.sum(-1) - ref.sum(-1))).sum()


def _kl_ref_pi_per_token(policy, theta, ref_theta):
    """sum_t E_{prefix ~ pi, held fixed} KL(ref(.|prefix) || pi(.|prefix)), exactly: the divergence
    GRPO's k3-in-the-loss differentiates."""
    if policy is _categorical:
        p, r = torch.log_softmax(theta, -1), torch.log_softmax(ref_theta, -1)
        return (r.exp() * (r - p)).sum()
    p1, r1 = torch.log_softmax(theta[:3], -1), torch.log_softmax(ref_theta[:3], -1)
    p2, r2 = torch.log_softmax(theta[3:].view(3, 3), -1), torch.log_softmax(ref_theta[3:].view(3, 3), -1)
    return (r1.exp() * (r1 - p1)).sum() + (p1.detach().exp() * (r2.exp() * (r2 - p2)).sum(-1)).sum()


@pytest.mark.parametrize("policy,size", [(_categorical, 6), (_two_token, 12)])
@pytest.mark.parametrize("kl_in", ["reward", "loss"])
def test_kl_penalty_expected_gradient_is_the_named_divergences_gradient(policy, size, kl_in):
    g = torch.Generator().manual_seed(3)
    ref_theta = torch.randn(size, generator=g, dtype=torch.float64)
    for drift in (0.05, 1.0):  # a small and a large distance from the reference
        theta = ref_theta + drift * torch.randn(size, generator=g, dtype=torch.float64)
        expected = _expected_penalty_gradient(policy, theta, ref_theta, kl_in, beta=0.7)
        t = theta.clone().requires_grad_(True)
        named = _kl_pi_ref if kl_in == "reward" else _kl_ref_pi_per_token
        divergence = named(policy, t, ref_theta)
        (true,) = torch.autograd.grad(0.7 * divergence, t)
        assert_close(expected, true, rtol=1e-4, atol=1e-10)


def test_k3_in_the_reward_has_the_wrong_gradient():
    """Why kl_estimator k3 (in the reward) was removed: at a small drift its expected gradient is
    a small fraction of grad KL(pi || ref), and points elsewhere."""
    g = torch.Generator().manual_seed(3)
    ref_theta = torch.randn(6, generator=g, dtype=torch.float64)
    theta = ref_theta + 0.05 * torch.randn(6, generator=g, dtype=torch.float64)
    biased = _expected_penalty_gradient(_categorical, theta, ref_theta, "reward", k3_in_reward=True)
    t = theta.clone().requires_grad_(True)
    (true,) = torch.autograd.grad(_kl_pi_ref(_categorical, t, ref_theta), t)
    assert biased.norm() < 0.2 * true.norm()
    assert torch.nn.functional.cosine_similarity(biased, true, dim=0) < 0.9


# Labelled group objectives


def test_aligned_variance_ignores_scale_and_per_prompt_offsets():
    r, labels = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    base = aligned_variance(r, labels)
    assert_close(aligned_variance(3.0 * r + 7.0, labels), base)
    assert_close(aligned_variance(r + torch.randn(5, 1, dtype=torch.float64) * 10, labels), base)
    assert_close(aligned_variance(r, 2.0 * labels - 1.0), base)  # labels standardized per prompt


def test_aligned_variance_is_largest_for_rewards_equal_to_the_standardized_labels():
    """Cauchy-Schwarz: over every reward with the same pooled spread, the term peaks at rewards
    proportional to the per-prompt standardized labels (equal spread on every prompt), where it is 1."""
    labels = torch.tensor([[0.0, 1.0, 3.0], [5.0, 2.0, 2.5]], dtype=torch.float64)
    s = (labels - labels.mean(1, keepdim=True)) / labels.std(1, correction=0, keepdim=True)
    assert_close(aligned_variance(s, labels), torch.ones(2, dtype=torch.float64))
    for _ in range(50):
        other = s + 0.5 * torch.randn_like(s)
        assert aligned_variance(other, labels).mean() <= 1.0 + 1e-12
    squashed = s * torch.tensor([[1.0], [0.01]], dtype=torch.float64)  # right order, one prompt squashed
    assert aligned_variance(squashed, labels).mean() < 0.75


def test_natural_gradient_rate_of_gold_is_the_reward_gold_covariance():
    """The docstring's derivation, by autograd on a categorical policy: under natural-gradient flow
    on J = E_pi[r] (Fisher pseudo-inverse), d/dt E_pi[g] = grad E_pi[g]^T F^+ grad J = Cov_pi(r, g)."""
    theta = torch.randn(6, dtype=torch.float64, requires_grad=True)
    r, g = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    pi = torch.softmax(theta, 0)
    grad_j, = torch.autograd.grad((pi * r).sum(), theta, retain_graph=True)
    grad_g, = torch.autograd.grad((pi * g).sum(), theta)
    p = pi.detach()
    fisher = torch.diag(p) - torch.outer(p, p)
    rate = grad_g @ torch.linalg.pinv(fisher) @ grad_j
    cov = (p * (r - (p * r).sum()) * (g - (p * g).sum())).sum()
    assert_close(rate, cov)


def test_listwise_loss_is_a_plackett_luce_distribution_over_rankings():
    """exp(-loss) over every ranking of k = 4 samples (each ranking given as the labels) sums to 1,
    and with k = 2 it is the Bradley-Terry loss."""
    r = torch.randn(1, 4, dtype=torch.float64)
    total = 0.0
    for perm in itertools.permutations(range(4)):
        labels = torch.zeros(1, 4, dtype=torch.float64)
        for place, j in enumerate(perm):
            labels[0, j] = 4 - place  # perm[0] best
        total += torch.exp(-listwise_loss(r, labels)).item()
    assert abs(total - 1.0) < 1e-10
    pair = torch.tensor([[0.3, -1.2]])
    assert_close(listwise_loss(pair, torch.tensor([[0.0, 1.0]])), bradley_terry_loss(pair[:, 1], pair[:, 0]))


def test_group_pairs_loss_averages_bt_over_pairs_with_different_labels():
    r = torch.tensor([[0.5, -0.2, 1.0, 0.1]], dtype=torch.float64)
    labels = torch.tensor([[2.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    pairs = [(a, b) for a in range(4) for b in range(4) if labels[0, a] > labels[0, b]]  # 5 pairs
    expected = sum(bradley_terry_loss(r[0, a:a + 1], r[0, b:b + 1]) for a, b in pairs) / len(pairs)
    assert_close(group_pairs_loss(r, labels), expected)
    assert_close(group_pairs_loss(r, torch.ones_like(r)), torch.zeros(1, dtype=torch.float64))


def test_aligned_variance_pools_its_scale_over_every_process_when_gathered():
    """Two processes holding half the prompts each, with ``gather`` giving every process's centred
    rewards, get exactly the one-process values for their prompts."""
    r, labels = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    full = aligned_variance(r, labels)
    d = r - r.mean(dim=1, keepdim=True)
    for part in (slice(0, 3), slice(3, 6)):
        assert_close(aligned_variance(r[part], labels[part], gather=lambda _: d), full[part])
