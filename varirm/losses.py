"""Reward-model losses: small pure functions, tensors in, per-example losses out."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


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
