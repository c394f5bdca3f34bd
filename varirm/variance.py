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


def variance_report(rewards: torch.Tensor, gold: Optional[torch.Tensor] = None,
                    quantiles: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)) -> dict[str, object]:
    """Evaluation statistics of an RM's rewards ``(p, k)`` on a policy's samples.

    Returns ``shift``/``scale`` (the global mean and population std used for whitening), the
    mean and quantiles of the raw and whitened per-prompt variances, and ``on_policy_acc`` when
    ``gold`` ``(p, k)`` is given (plus the same variance statistics of the gold reward itself).
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
        out["gold_whitened_variance_mean"] = within_prompt_variance(whiten(g)).mean().item()
        out["gold_mean"] = g.mean().item()
    return out
