"""torchmetrics objects for reward models (one collection per split, synced across processes)."""

from __future__ import annotations

import torch
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.utilities import dim_zero_cat

from varirm.variance import variance_report


class StdMetric(Metric):
    """Population standard deviation of all values seen, accumulated as count / sum / sum of squares
    (summed across processes)."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("n", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: torch.Tensor) -> None:
        v = values.detach().to(torch.float64)
        self.n += v.numel()
        self.total += v.sum()
        self.total_sq += (v * v).sum()

    def compute(self) -> torch.Tensor:
        mean = self.total / self.n.clamp_min(1)
        return (self.total_sq / self.n.clamp_min(1) - mean * mean).clamp_min(0).sqrt().float()


def pairwise_metrics(prefix: str) -> MetricCollection:
    """``{prefix}acc`` (fraction of pairs with r_chosen > r_rejected; ties count as wrong),
    ``{prefix}margin`` (mean r_chosen - r_rejected), ``{prefix}reward_mean`` / ``reward_std``
    (over chosen and rejected rewards)."""
    return MetricCollection({"acc": MeanMetric(), "margin": MeanMetric(), "reward_mean": MeanMetric(),
                             "reward_std": StdMetric()}, prefix=prefix)


def update_pairwise(metrics: MetricCollection, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
    """``chosen``, ``rejected``: ``(b,)`` rewards. Calls each metric (forward), which accumulates
    the epoch state and also keeps the batch value that step-level logging reads."""
    chosen, rejected = chosen.detach(), rejected.detach()
    metrics["acc"]((chosen > rejected).float())
    metrics["margin"](chosen - rejected)
    both = torch.cat([chosen, rejected])
    metrics["reward_mean"](both)
    metrics["reward_std"](both)


class GroupRewardMetrics(Metric):
    """Rewards (and gold labels, when known) of policy-sample groups, gathered across batches and
    processes; ``compute`` returns :func:`varirm.variance.variance_report` (whitened per-prompt
    variance, on-policy accuracy, ...) over all of them."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("rewards", default=[], dist_reduce_fx="cat")
        self.add_state("gold", default=[], dist_reduce_fx="cat")

    def update(self, rewards: torch.Tensor, gold: torch.Tensor | None = None) -> None:
        """``rewards``, ``gold``: ``(g, k)``."""
        self.rewards.append(rewards.detach().float())
        if gold is not None:
            self.gold.append(gold.detach().float())

    def compute(self) -> dict[str, object]:
        rewards = dim_zero_cat(self.rewards)
        gold = dim_zero_cat(self.gold) if self.gold else None
        return variance_report(rewards, gold if gold is not None and gold.shape == rewards.shape else None)
