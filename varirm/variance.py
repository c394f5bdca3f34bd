"""Reward variance under a policy: the regularizer and the evaluation statistics.

Razin et al. 2025 (arXiv 2503.15477) show that the time for a policy pi to raise its expected
reward grows as ``Var_{y~pi(.|x)} r(x, y)^(-1/3)``: an RM that induces low reward variance on
pi's own samples teaches slowly, however accurate it is. To compare RMs, rewards are first
whitened by a global shift and scale (``z = (r - mu) / sigma`` over all prompts and samples), so
rescaling an RM cannot change its variance; then the per-prompt variance of ``z`` is reported.

Shapes: ``rewards`` is ``(p, k)``: ``p`` prompts, ``k`` samples per prompt.
Variances are unbiased (``k - 1`` in the denominator): each row estimates ``Var_{y~pi(.|x)}``.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch

EPS = 1e-6
Normalization = Literal["batch", "pairs", "none"]


def whiten(rewards: torch.Tensor, shift: Optional[float] = None, scale: Optional[float] = None) -> torch.Tensor:
    """``(r - shift) / scale`` with shift, scale = mean, population std over all entries by default."""
    shift = rewards.mean() if shift is None else shift
    scale = rewards.std(correction=0) if scale is None else scale
    return (rewards - shift) / (scale.clamp_min(EPS) if isinstance(scale, torch.Tensor) else max(scale, EPS))


def within_prompt_variance(rewards: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over the ``k`` samples of each prompt. ``(p, k) -> (p,)``."""
    return rewards.var(dim=1, correction=1)


def on_policy_accuracy(rewards: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Fraction of same-prompt sample pairs the RM orders like the gold reward.

    For each prompt, over all pairs ``j < l`` with ``gold_j != gold_l``, a pair counts as right
    when ``sign(r_j - r_l) == sign(gold_j - gold_l)`` (an RM tie is wrong); the per-prompt fractions
    are averaged over prompts that have at least one such pair. ``(p, k), (p, k) -> ()``; NaN when
    no prompt has a pair with different gold rewards.
    """
    dr = rewards[:, :, None] - rewards[:, None, :]  # (p, k, k)
    dg = gold[:, :, None] - gold[:, None, :]
    upper = torch.triu(torch.ones_like(dg, dtype=torch.bool), diagonal=1)
    counted = upper & (dg != 0)
    right = counted & (torch.sign(dr) == torch.sign(dg))
    n = counted.sum(dim=(1, 2))
    has = n > 0
    if not has.any():
        return torch.tensor(float("nan"))
    return (right.sum(dim=(1, 2))[has].float() / n[has].float()).mean()


def harm_aware_accuracy(rewards: torch.Tensor, gold: torch.Tensor,
                        logprobs: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Harm-aware ranking accuracy on a policy's own samples (HAcc, Shang, Strauss, Wei, Arora and
    Razin 2026, arXiv 2604.25872): a pair ranked wrong does no harm under policy gradient when the
    worse response's reward is already below the policy's expected reward on the prompt (it does not
    attract probability), so a pair counts as right when ``r_better > r_worse`` *or*
    ``r_worse < V(x)``, with ``V(x) = mean_j r_j`` over the prompt's ``k`` samples (an estimate of
    ``E_{y~pi} r``). Every pair ``j != l`` with ``gold_j > gold_l`` of a prompt counts once, pooled
    over prompts (their uniform weighting over pairs). With ``logprobs`` ``(p, k)`` (sequence
    log-probabilities under the policy) the pairs are weighted by ``pi(y_j) pi(y_l)``, normalized
    over all pairs (their HAcc-W, the policy-weighted variant; on samples drawn from ``pi`` this
    weighs by the policy a second time, emphasising its likeliest responses).
    ``(p, k), (p, k) -> ()``; NaN without a pair of different gold rewards.

    Worked example: rewards ``[0, 1, 5]``, gold ``[2, 1, 0]`` (sample 0 best): every pair is ranked
    wrong (plain accuracy 0), but in the pair (0, 1) the worse response's reward 1 is below
    ``V = 2``, so it counts; (0, 2) and (1, 2) put the worst response above ``V``: HAcc 1/3.

    >>> harm_aware_accuracy(torch.tensor([[0.0, 1.0, 5.0]]), torch.tensor([[2.0, 1.0, 0.0]]))
    tensor(0.3333)
    """
    r, g = rewards.double(), gold.double()
    mean = r.mean(dim=1, keepdim=True)  # (p, 1)
    better = g[:, :, None] > g[:, None, :]  # (p, k, k): j better than l
    right = (r[:, :, None] > r[:, None, :]) | (r[:, None, :] < mean[:, :, None])
    if not better.any():
        return torch.tensor(float("nan"))
    if logprobs is None:
        weights = better.double()
    else:
        lp = logprobs.double()
        joint = torch.where(better, lp[:, :, None] + lp[:, None, :], torch.tensor(float("-inf"), dtype=torch.float64))
        weights = torch.exp(joint - torch.logsumexp(joint.flatten(), dim=0))
    return ((weights * right).sum() / weights.sum()).float()


def variance_over_ceiling(whitened_variance_mean: float, k: int) -> float:
    """The mean whitened per-prompt variance over its ceiling ``k / (k - 1)`` (reached when every
    reward's spread lies within its prompt), so it lies in [0, 1] like an accuracy.

    >>> variance_over_ceiling(0.5, k=2)
    0.25
    """
    return whitened_variance_mean * (k - 1) / k


def variance_report(rewards: torch.Tensor, gold: Optional[torch.Tensor] = None,
                    quantiles: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)) -> dict[str, object]:
    """Evaluation statistics of an RM's rewards ``(p, k)`` on a policy's samples.

    Returns ``shift``/``scale`` (the global mean and population std used for whitening), the
    mean and quantiles of the raw and whitened per-prompt variances, and when ``gold`` ``(p, k)`` is
    given ``on_policy_acc``, ``harm_aware_acc`` (:func:`harm_aware_accuracy`),
    ``variance_accuracy_average`` and the same variance statistics of the gold reward itself.
    """
    r = rewards.double()
    shift, scale = r.mean().item(), r.std(correction=0).item()
    raw, white = within_prompt_variance(r), within_prompt_variance(whiten(r, shift, scale))
    q = torch.tensor(quantiles, dtype=torch.float64)
    out: dict[str, object] = {
        "prompts": r.shape[0], "samples_per_prompt": r.shape[1], "shift": shift, "scale": scale,
        "raw_variance_mean": raw.mean().item(),
        "raw_variance_quantiles": dict(zip(map(str, quantiles), torch.quantile(raw, q).tolist())),
        "whitened_variance_mean": white.mean().item(),
        "whitened_variance_quantiles": dict(zip(map(str, quantiles), torch.quantile(white, q).tolist())),
    }
    if gold is not None:
        g = gold.double()
        out["on_policy_acc"] = on_policy_accuracy(r, g).item()
        out["harm_aware_acc"] = harm_aware_accuracy(r, g).item()
        # the paper's "variance and accuracy average": both in [0, 1]
        out["variance_accuracy_average"] = (variance_over_ceiling(out["whitened_variance_mean"], r.shape[1])
                                            + out["on_policy_acc"]) / 2
        out["gold_whitened_variance_mean"] = within_prompt_variance(whiten(g)).mean().item()
        out["gold_mean"] = g.mean().item()
    return out
