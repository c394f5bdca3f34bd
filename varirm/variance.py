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

from typing import Callable, Literal, Optional

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
