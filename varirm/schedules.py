"""Learning-rate schedules: linear warm-up from 0, then constant, linear decay or cosine decay to 0.

The formulas of transformers' ``get_scheduler`` (``constant_with_warmup``, ``linear``, ``cosine`` with
half a cycle), which ``tests/test_schedules.py`` compares step by step. They are written out here
because importing ``transformers.optimization`` imports peft and, through it, bitsandbytes (seconds
of import, and console noise on some CPUs), which varirm loads only when a run asks for it.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import torch

Schedule = Literal["constant", "linear", "cosine"]


def lr_factor(step: int, name: Schedule, warmup_steps: int, total_steps: int) -> float:
    """The multiplier of the base learning rate at optimizer step ``step`` (0-based): ``step / warmup``
    during warm-up, then 1 (constant), ``(total - step) / (total - warmup)`` (linear) or
    ``(1 + cos(pi * progress)) / 2`` with ``progress = (step - warmup) / (total - warmup)`` (cosine).

    >>> [round(lr_factor(s, "cosine", 2, 6), 3) for s in range(7)]
    [0.0, 0.5, 1.0, 0.854, 0.5, 0.146, 0.0]
    >>> [lr_factor(s, "linear", 0, 4) for s in range(5)], lr_factor(9, "constant", 2, 4)
    ([1.0, 0.75, 0.5, 0.25, 0.0], 1.0)
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if name == "constant":
        return 1.0
    if name == "linear":
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if name == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown schedule {name!r}: expected constant, linear or cosine")


def warmup_schedule(optimizer: torch.optim.Optimizer, name: Schedule, warmup_steps: int,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler for ``optimizer`` following :func:`lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, name=name, warmup_steps=warmup_steps, total_steps=total_steps))
