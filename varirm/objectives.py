"""Every training objective in one place: small pure functions, tensors in, losses out.

- Reward model: :func:`bradley_terry_loss`, :func:`center_rewards_penalty`, and the terms on
  groups of ``k`` policy samples of a prompt (:data:`GroupObjective`): :func:`variance_regularizer`
  (label-free: raises reward variance within each prompt, Razin et al. 2025; its statistics are in
  :mod:`varirm.variance`), :func:`aligned_variance` (variance along a labeler's scores),
  :func:`listwise_loss` (Plackett-Luce) and :func:`group_pairs_loss` (BT on the group's pairs).
- Policy (RLOO): :func:`rloo_advantages`, :func:`group_std_advantages` (GRPO's scaling),
  :func:`kl_estimate`, :func:`clipped_policy_loss`, and where the KL penalty goes
  (:func:`policy_advantages`, :func:`policy_loss`, after :data:`KLIn`).
"""

from __future__ import annotations

from typing import Callable, Literal, Optional

import torch
import torch.nn.functional as F

from varirm.variance import Normalization, whiten, within_prompt_variance

KLEstimator = Literal["k1", "k3"]
# Where RLOO's KL penalty enters, each with the only estimator whose expected gradient is the
# gradient of a divergence (checked by enumeration in tests/test_objectives.py):
# - "reward": beta * k1 = beta * log(pi / ref) subtracted from the detached reward (REINFORCE on the
#   penalized reward; TRL's RLOO and Razin et al.'s code). Expected gradient: beta * grad KL(pi || ref).
# - "loss": beta * k3 = beta * ((ref / pi - 1) - log(ref / pi)) per response token, added to the loss
#   and differentiated directly (GRPO). Expected gradient: beta * grad of sum_t E_{prefix ~ pi}
#   KL(ref(.|prefix) || pi(.|prefix)), the prefixes' distribution held fixed (for one-token
#   responses: KL(ref || pi)).
# k3 in the reward is neither: its expected REINFORCE gradient is grad KL(pi || ref) - grad KL(ref || pi).
KLIn = Literal["reward", "loss"]
# What the RM learns from groups of k policy samples of a prompt (RewardModelModule.group_objective):
# "variance": the label-free variance term; "aligned_variance", "listwise", "pairs": labelled groups.
GroupObjective = Literal["variance", "aligned_variance", "listwise", "pairs"]
LABELLED_OBJECTIVES = ("aligned_variance", "listwise", "pairs")


# Reward model


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor,
                       margin: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bradley-Terry negative log-likelihood, per pair.

    ``loss_i = -log sigmoid(r_c,i - r_r,i - m_i)`` (Bradley & Terry 1952; with a margin as in
    Llama 2, Touvron et al. 2023). ``chosen``, ``rejected``, ``margin``: ``(b,)``. Returns ``(b,)``.

    >>> bradley_terry_loss(torch.tensor([0.0]), torch.tensor([0.0]))  # log 2
    tensor([0.6931])
    """
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def center_rewards_penalty(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Keeps rewards centred at zero: ``(r_c + r_r)^2`` per pair (Eisenstein et al. 2023,
    "Helping or Herding?"). ``chosen``, ``rejected``: ``(b,)``. Returns ``(b,)``.

    >>> center_rewards_penalty(torch.tensor([1.0]), torch.tensor([-3.0]))
    tensor([4.])
    """
    return (chosen + rejected) ** 2


def variance_regularizer(rewards: torch.Tensor, normalization: Normalization = "batch",
                         target: Optional[float] = None, reference: Optional[torch.Tensor] = None,
                         gather: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """Per-prompt variance term, to be *minimised* alongside the Bradley-Terry loss.

    ``rewards``: ``(b, k)``, the RM's rewards for ``k`` policy samples of each of ``b`` prompts.
    With ``normalization="batch"``: ``z = (r - mean(r)) / std(r)`` over all ``b * k`` rewards,
    ``v_i = Var_j z_ij`` (unbiased), and the loss is ``-v_i``, or ``relu(target - v_i)`` with a
    ``target`` (a floor: the term stops pushing once a prompt's whitened variance reaches it).
    Returns ``(b,)``.

    Scale invariance: ``z`` is unchanged by ``r -> c r + d`` for any ``c > 0``, so the term cannot be
    lowered by inflating the reward scale. Gradients flow through the batch mean and std on
    purpose: with the statistics detached, multiplying every reward by ``c`` would raise ``v_i`` by
    ``c^2`` and the cheapest way to "increase variance" would be to grow the scale. With gradients
    through them the term's gradient is orthogonal to rescaling; what it can change is the split
    of the batch's reward variance between prompts (``mean_i v_i = k/(k-1) * (1 - between-prompt
    share)`` in the population form), i.e. it makes rewards separate the samples of each prompt
    rather than the prompts from each other. ``normalization="none"`` uses raw ``r`` (not scale
    invariant; for ablations only). ``normalization="pairs"`` whitens by the mean and std of
    ``reference`` instead, the rewards of the step's preference pairs ``(2b,)`` (gradients through
    them too): still invariant to ``r -> c r + d`` of the whole RM, but the groups' own
    between-prompt spread no longer enters the scale, so the term can only be lowered by separating
    each prompt's samples more, measured in units of the pair rewards' spread (which the
    Bradley-Terry loss keeps from collapsing).

    Worked example: ``r = [[0, 2], [1, 3]]``: mean 1.5, population std ``sqrt(1.25)``; each row's
    raw variance is 2, so ``v = 2 / 1.25 = 1.6`` and the loss is ``[-1.6, -1.6]``.

    ``gather`` (data parallel): maps this process's ``(b, k)`` rewards to every process's,
    ``(R * b, k)``, with gradients flowing back to each process (e.g. the system's
    ``all_gather(r, sync_grads=True)``); the whitening mean and std are then taken over all ``R * b``
    prompts while ``v_i`` is returned for this process's ``b``. With equal ``b`` per process, the
    average of the processes' ``mean_i`` terms (what data-parallel gradients average) is the term of
    one process holding all ``R * b`` prompts. E.g. ``r = [[0, 2]]`` here and ``[[1, 3]]`` in the
    other process: ``[-1.6]`` in each, as in the worked example. With ``normalization="pairs"`` the
    ``reference`` is gathered the same way (as a ``(2b, 1)`` column).
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (prompts, k >= 2), got {tuple(rewards.shape)}")
    everyone = rewards if gather is None or normalization != "batch" else gather(rewards)  # (R * b, k)
    if normalization == "batch" and everyone.shape[0] < 2:
        # one prompt whitened by its own statistics has variance k/(k-1) whatever r is: no gradient
        raise ValueError("batch normalization needs at least 2 prompts per batch")
    if normalization == "pairs":
        if reference is None or reference.numel() < 2:
            raise ValueError("pairs normalization needs the pair rewards as reference")
        pairs = reference if gather is None else gather(reference.reshape(-1, 1))
        z = whiten(rewards, pairs.mean(), pairs.std(correction=0))
    else:
        z = whiten(rewards, everyone.mean(), everyone.std(correction=0)) if normalization == "batch" else rewards
    v = within_prompt_variance(z)  # (b,)
    return -v if target is None else torch.relu(target - v)


def aligned_variance(rewards: torch.Tensor, labels: torch.Tensor,
                     gather: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """Reward variance along a labeler's scores, per prompt, to be *maximised* (the RM loss
    subtracts ``lambda`` times its mean).

    ``rewards``, ``labels``: ``(b, k)``, the RM's rewards and the labeler's scores of ``k`` policy
    samples of each of ``b`` prompts. With ``d_ij = r_ij - mean_j r_ij`` (each prompt's own mean
    removed, so offsets between prompts cannot raise the term), ``sigma^2 = mean_ij d_ij^2`` (the
    pooled within-prompt variance: one scale for the batch, gradients through it) and ``s_ij``
    the labels standardized within their prompt (mean 0, population std 1; a prompt whose labels
    are all equal has ``s = 0`` and contributes nothing), returns ``c_i = mean_j (d_ij / sigma) s_ij``
    ``(b,)``: the within-prompt covariance of the whitened rewards with the standardized labels.

    Why it teaches (gradient flow on ``E_{y~pi}[r]``): for a softmax policy with the natural
    gradient (Fisher-preconditioned; REINFORCE/RLOO with a whitened reward follows it up to the
    parameterization's geometry), the logits move by ``r(x, y) - E_pi r`` and the gold reward ``g``
    rises at the initial rate ``d/dt E_pi[g] = E_x Cov_{y~pi(.|x)}(r, g)``
    (``tests/test_objectives.py`` checks this by autograd on a categorical policy). Rewards are
    whitened by one global scale before RLOO, so what sets the rate is ``Cov(r / sigma, g)``,
    exactly ``c_i`` with ``g`` in place of the labels, up to each prompt's label spread
    ``std_x(g)`` (standardizing the labels per prompt weighs every prompt equally, the way the
    paper counts a squashed prompt as lost time). By Cauchy-Schwarz ``c_i <= std(d_i) / sigma``:
    the term is raised only by rewards that order the samples like the labeler *and* spread each
    prompt's samples as evenly as the batch allows, i.e. variance in the labeler's direction, not in
    whatever direction the RM already has (the label-free :func:`variance_regularizer`'s failure).
    Invariant to ``r -> c r + d`` (``c > 0``) and to per-prompt offsets ``r_i -> r_i + d_i``.

    ``gather`` (data parallel): as in :func:`variance_regularizer`, maps this process's centred
    rewards ``(b, k)`` to every process's, so ``sigma`` is pooled over the whole data-parallel batch.

    Worked example: ``r = [[0, 2], [1, 1]]``, labels ``[[0, 1], [0, 1]]``: ``d = [[-1, 1], [0, 0]]``,
    ``sigma = sqrt(2 / 4)``, ``s = [[-1, 1], [-1, 1]]``: ``c = [(1 + 1) / 2 / 0.7071, 0] = [1.4142, 0]``.

    >>> aligned_variance(torch.tensor([[0.0, 2.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    tensor([1.4142, 0.0000])
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2 or labels.shape != rewards.shape:
        raise ValueError(f"rewards and labels must both be (prompts, k >= 2), got {tuple(rewards.shape)} "
                         f"and {tuple(labels.shape)}")
    d = rewards - rewards.mean(dim=1, keepdim=True)  # (b, k)
    sigma = (d if gather is None else gather(d)).pow(2).mean().clamp_min(1e-12).sqrt()
    centred = labels - labels.mean(dim=1, keepdim=True)
    spread = centred.std(dim=1, correction=0, keepdim=True)
    s = torch.where(spread > 0, centred / spread.clamp_min(1e-12), torch.zeros_like(centred))
    return (d / sigma * s).mean(dim=1)


def listwise_loss(rewards: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Plackett-Luce negative log-likelihood of the labeler's ranking of each prompt's ``k``
    samples (ListMLE, Xia et al. 2008; Plackett 1975), per prompt.

    With the samples sorted by label, best first (ties keep their order), ``loss_i = sum_{j<k}
    [logsumexp_{l>=j} r_(l) - r_(j)]``: each sample, in order, is chosen by a softmax over those
    not yet placed. For ``k = 2`` it is the Bradley-Terry loss of the pair. ``(b, k), (b, k) -> (b,)``.

    >>> listwise_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]]))  # BT at a tie: log 2
    tensor([0.6931])
    """
    order = labels.argsort(dim=1, descending=True, stable=True)
    ranked = rewards.gather(1, order)  # (b, k), best label first
    tail = torch.logcumsumexp(ranked.flip(1), dim=1).flip(1)  # logsumexp over l >= j
    return (tail - ranked)[:, :-1].sum(dim=1)


def group_pairs_loss(rewards: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry on every pair of a prompt's ``k`` samples whose labels differ (the higher
    label chosen), averaged per prompt: plain BT on exactly the labelled responses the other group
    objectives see. ``(b, k), (b, k) -> (b,)``; a prompt without such a pair gives 0.

    >>> group_pairs_loss(torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]))  # 2 pairs, log 2 each
    tensor([0.6931])
    """
    dr = rewards[:, :, None] - rewards[:, None, :]  # (b, k, k): r_j - r_l
    counted = labels[:, :, None] > labels[:, None, :]  # j labelled better than l
    losses = -F.logsigmoid(dr) * counted
    n = counted.sum(dim=(1, 2))
    return losses.sum(dim=(1, 2)) / n.clamp_min(1)


# Policy (RLOO)


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Leave-one-out advantages ``A_i = r_i - mean_{j != i} r_j = k / (k - 1) * (r_i - mean_j r_j)``.
    ``(b, k) -> (b, k)``.

    >>> rloo_advantages(torch.tensor([[1.0, 2.0, 6.0]]))  # 1 - 4, 2 - 3.5, 6 - 1.5
    tensor([[-3.0000, -1.5000,  4.5000]])
    """
    k = rewards.shape[1]
    if k < 2:
        raise ValueError("RLOO needs k >= 2 samples per prompt")
    return k / (k - 1) * (rewards - rewards.mean(dim=1, keepdim=True))


def group_std_advantages(advantages: torch.Tensor, rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO's advantage scaling (Shao et al. 2024; TRL's ``scale_rewards``): each prompt's
    advantages divided by the standard deviation of that prompt's rewards plus ``eps``
    (unbiased std over the ``k`` samples, as TRL computes it). ``(b, k), (b, k) -> (b, k)``.
    It makes the update blind to the reward's scale within a prompt: a low-variance RM's
    advantages are scaled up to the same size as a high-variance RM's.

    >>> group_std_advantages(torch.tensor([[-3.0, -1.5, 4.5]]), torch.tensor([[1.0, 2.0, 6.0]]), eps=0.0)
    tensor([[-1.1339, -0.5669,  1.7008]])
    """
    return advantages / (rewards.std(dim=1, keepdim=True) + eps)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                estimator: KLEstimator = "k1") -> torch.Tensor:
    """Sequence KL(pi || ref) estimates from sampled tokens, summed over response tokens.

    ``k1 = log pi - log ref`` (unbiased, can be negative); ``k3 = (rho - 1) - log rho`` with
    ``rho = ref / pi`` (Schulman 2020: unbiased, always >= 0). ``logp``, ``ref_logp``, ``mask``:
    ``(n, t)``. Returns ``(n,)``.
    """
    log_ratio = logp - ref_logp
    per_token = log_ratio if estimator == "k1" else torch.expm1(-log_ratio) + log_ratio
    return (per_token * mask).sum(-1)


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        clip_eps: Optional[float]) -> torch.Tensor:
    """Sequence-level policy-gradient loss per sample.

    Without clipping: ``-A * log pi(y|x)`` (REINFORCE; the gradient is ``-A * grad log pi``).
    With ``clip_eps``: ``-min(rho A, clip(rho, 1 - eps, 1 + eps) A)`` with ``rho = pi / pi_old``
    (Schulman et al. 2017), whose gradient at ``pi = pi_old`` equals the unclipped one.
    ``logp``, ``old_logp``: sequence log-probabilities ``(n,)``; ``advantages``: ``(n,)``.
    """
    if clip_eps is None:
        return -advantages * logp
    ratio = torch.exp(logp - old_logp)
    return -torch.min(ratio * advantages, ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages)


def policy_advantages(reward: torch.Tensor, old_logp_tok: torch.Tensor, ref_logp_tok: torch.Tensor,
                      mask: torch.Tensor, k: int, beta: float, kl_in: KLIn = "reward",
                      normalization: str = "none", eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """RLOO advantages of one batch and the sampled sequences' k1 KL estimates.

    ``reward``: ``(n,)`` normalized RM rewards of ``n = b * k`` samples (``k`` consecutive per
    prompt); ``old_logp_tok``, ``ref_logp_tok``, ``mask``: ``(n, t)`` token log-probabilities of the
    sampling policy and the reference, and the response-token mask. With ``kl_in="reward"`` the
    advantages are the leave-one-out advantages of ``reward - beta * k1`` (:data:`KLIn`); with
    ``"loss"`` those of ``reward`` alone (the penalty is in :func:`policy_loss`).
    ``normalization="group_std"`` divides them by each prompt's std (:func:`group_std_advantages`).
    Returns ``(advantages (n,), k1 (n,))``; k1 is an unbiased estimate of KL(pi || ref) either way.
    """
    kl = kl_estimate(old_logp_tok, ref_logp_tok, mask, "k1")  # (n,)
    penalized = (reward - beta * kl if kl_in == "reward" else reward).view(-1, k)  # (b, k)
    advantages = rloo_advantages(penalized)
    if normalization == "group_std":
        advantages = group_std_advantages(advantages, penalized, eps)
    return advantages.reshape(-1), kl


def policy_loss(logp_tok: torch.Tensor, old_logp_tok: torch.Tensor, ref_logp_tok: torch.Tensor,
                mask: torch.Tensor, advantages: torch.Tensor, beta: float, kl_in: KLIn = "reward",
                clip_eps: Optional[float] = 0.2) -> torch.Tensor:
    """RLOO's loss per sample ``(n,)``: the sequence-level policy-gradient term
    (:func:`clipped_policy_loss` of the summed response log-probabilities) and, with
    ``kl_in="loss"``, ``beta`` times the k3 KL estimate of the current policy, summed over
    response tokens and differentiated directly (GRPO; :data:`KLIn`). ``logp_tok`` carries the
    gradient; the others are ``(n, t)`` constants, ``advantages`` from :func:`policy_advantages`."""
    loss = clipped_policy_loss((logp_tok * mask).sum(-1), (old_logp_tok * mask).sum(-1), advantages, clip_eps)
    if kl_in == "loss":
        loss = loss + beta * kl_estimate(logp_tok, ref_logp_tok, mask, "k3")
    return loss
