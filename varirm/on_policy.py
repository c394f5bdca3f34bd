"""On-policy data: preference pairs drawn from the policy's own samples, and the policy-sample
groups that feed the variance term of RM training.

- :func:`on_policy_pair_rows`: one labelled pair per prompt from its samples (as Razin et al. build
  on-policy RM training data).
- :func:`prompt_subset`: the prompts of a samples file that a label budget pays for.
- :class:`GroupSource` and :class:`PairsWithGroups`: a batch of pairs plus groups of ``k`` samples
  of a prompt, drawn reproducibly whatever the process count or a resume.
"""

from __future__ import annotations

import zlib
from typing import Any, Optional

import torch

from varirm.errors import ConfigError
from varirm.loaders import collate_groups, collate_pairs


class GroupSource:
    """The policy-sample groups that feed the variance term. :class:`varirm.callbacks.RegenerateSamples`
    swaps in fresh samples from a changing policy while training; the collator reads the current ones."""

    def __init__(self, groups: list[dict[str, Any]]):
        self.groups = groups

    def draw(self, n: int, generator: torch.Generator) -> list[dict[str, Any]]:
        return [self.groups[i] for i in torch.randint(len(self.groups), (n,), generator=generator).tolist()]



class PairsWithGroups:
    """Collator: a batch of pairs plus ``groups_per_batch`` policy-sample groups drawn at random.

    Group ``c`` is drawn by a generator seeded by ``seed``, its global index ``c * R + rank`` and a
    hash of the token ids of the batch's examples ``c, c + groups_per_batch, ...``, so the draw does
    not depend on process history (a resumed run draws the same groups), and it does not depend on
    how a global batch is split over ``R`` processes: :class:`LengthGroupedSampler` gives process
    ``r`` the global positions ``r, r + R, ...``, so its examples ``c, c + G, ...`` are the global
    batch's positions ``c * R + r, c * R + r + G * R, ...``, exactly what one process with ``R``
    times the batch and the groups hashes for its group ``c * R + r``. With the regularizer's
    statistics taken over all processes (:meth:`varirm.reward_training.RewardModelModule._all_groups`), a
    DDP run is step for step a single-process run with ``R`` times ``batch_size`` and
    ``groups_per_batch``. Needs ``num_workers=0`` when samples are regenerated during training
    (workers hold copies)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int, source: GroupSource, groups_per_batch: int,
                 seed: int, rank: int = 0, num_replicas: int = 1):
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of
        self.source, self.groups_per_batch, self.seed = source, groups_per_batch, seed
        self.rank, self.num_replicas = rank, num_replicas

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = collate_pairs(examples, self.pad_token_id, self.pad_to_multiple_of)
        groups = []
        for c in range(self.groups_per_batch):
            chunk = examples[c::self.groups_per_batch]
            key = zlib.crc32(b"".join(torch.tensor(e["chosen_ids"] + e["rejected_ids"]).numpy().tobytes()
                                      for e in chunk))
            index = c * self.num_replicas + self.rank  # the group's index in the global batch
            groups += self.source.draw(1, torch.Generator().manual_seed(self.seed * 7919 + index * 104729 + key))
        batch.update(collate_groups(groups, self.pad_token_id))
        return batch



def on_policy_pair_rows(samples: list[dict[str, Any]], labels: list[list[float]], seed: int,
                        bt_temperature: float = 0.0) -> list[dict[str, Any]]:
    """One labelled preference pair per prompt, as in Razin et al.: two of the policy's samples
    drawn at random among those with different labels; the higher label is chosen, or with
    ``bt_temperature > 0`` a Bradley-Terry draw ``P(a > b) = sigmoid((l_a - l_b) / bt_temperature)``
    decides (label noise)."""
    rng = torch.Generator().manual_seed(seed)
    rows = []
    for index, (row, label) in enumerate(zip(samples, labels)):
        responses = row["responses"]
        pairs = [(a, b) for a in range(len(responses)) for b in range(a + 1, len(responses))
                 if label[a] != label[b] and responses[a] != responses[b]]
        if not pairs:
            continue
        a, b = pairs[int(torch.randint(len(pairs), (1,), generator=rng))]
        if bt_temperature > 0:
            p_a = torch.sigmoid(torch.tensor((label[a] - label[b]) / bt_temperature, dtype=torch.float64))
            if torch.rand((), generator=rng, dtype=torch.float64) >= p_a:
                a, b = b, a
        elif label[b] > label[a]:
            a, b = b, a
        prompt = row["prompt"]
        rows.append({"prompt_messages": prompt if isinstance(prompt, list) else [],
                     "prompt_text": prompt if isinstance(prompt, str) else "", "chosen": responses[a],
                     "rejected": responses[b], "margin": 0.0, "row": index})
    return rows


def prompt_subset(samples: list[dict[str, Any]], n: Optional[int], seed: int, path: str) -> list[dict[str, Any]]:
    """``n`` rows of a samples file drawn at random with ``seed`` (file order kept), or all with
    ``n=None``: the prompts whose groups a label budget pays for. The draw depends only on the
    file's length, ``n`` and ``seed``, so objectives compared at one seed see the same prompts."""
    if n is None:
        return samples
    if n > len(samples):
        raise ConfigError(f"{path}: group_prompts={n} but the file has {len(samples)} prompts")
    pick = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))[:n]
    return [samples[i] for i in sorted(pick.tolist())]
