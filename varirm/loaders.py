"""Batches and loaders shared by every training job (RM, SFT, RLOO): samplers, collators, and a
loader that resumes mid-epoch.

- :class:`LengthGroupedSampler` (pairs of similar length together: little padding) and
  :class:`EpochShuffleSampler` (a fresh order each epoch): both split a global batch over processes
  and can skip the batches already trained on.
- :class:`ResumableLoader` counts the batches it hands out into a :class:`LoaderPosition`;
  :class:`LoaderPositionInCheckpoints` is the data-module side: it saves and restores that
  position in checkpoints (Lightning calls the data module's ``state_dict``).
- :func:`collate_pairs`, :func:`collate_groups`: right-padded tensors of preference pairs and of
  policy-sample groups.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, DistributedSampler

from varirm.chat import pad_right


def padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    """Fraction of padded positions when each batch is padded to its longest row."""
    total = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    return 1.0 - sum(lengths[i] for b in batches for i in b) / total if total else 0.0



class LengthGroupedSampler(DistributedSampler):
    """Shuffled order in which each consecutive ``batch_size`` indices have similar lengths.

    Indices are shuffled, cut into mega-batches of ``bucket_batches`` global batches, sorted by
    length inside each mega-batch, cut into global batches of ``batch_size * num_replicas`` and
    the full global batches shuffled (a smaller last one stays last). Rank ``r`` takes positions
    ``r, r + R, ...`` of each global batch, so one process with batch ``B`` and ``R`` processes
    with ``B / R`` see the same global batches (DDP runs match single-process runs). Like
    ``DistributedSampler``, indices are repeated only to make the total a multiple of ``R``; one
    process sees every row exactly once. Subclassing ``DistributedSampler`` stops Lightning from
    wrapping it in a sampler that would re-shuffle the indices.
    """

    def __init__(self, lengths: list[int], batch_size: int, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 0, bucket_batches: int = 64):
        super().__init__(lengths, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.lengths, self.batch_size, self.bucket_batches = lengths, batch_size, bucket_batches
        self.skip_batches = 0  # global batches to leave out of the next iteration (resuming mid-epoch)
        self.num_samples = math.ceil(len(lengths) / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def global_batches(self) -> list[list[int]]:
        n, global_batch = len(self.lengths), self.batch_size * self.num_replicas
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(n, generator=g).tolist() if self.shuffle else list(range(n))
        if n:  # repeat rows so every rank gets the same number (several times over for tiny splits)
            order = (order * math.ceil(self.total_size / n))[: self.total_size]
        mega = global_batch * self.bucket_batches
        batches = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start:start + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[j:j + global_batch] for j in range(0, len(chunk), global_batch)]
        if self.shuffle:
            full = len(batches) - (len(batches[-1]) < global_batch if batches else 0)
            batches = [batches[i] for i in torch.randperm(full, generator=g).tolist()] + batches[full:]
        return batches

    def __iter__(self):
        skip, self.skip_batches = self.skip_batches, 0
        for batch in self.global_batches()[skip:]:
            yield from batch[self.rank::self.num_replicas]

    def __len__(self) -> int:
        return self.num_samples



class EpochShuffleSampler(DistributedSampler):
    """The order of ``DataLoader(shuffle=True, generator=torch.Generator().manual_seed(seed))``,
    epoch by epoch, computed from the epoch number alone, so a resumed run can start an epoch in
    its middle (``skip_batches``). Per epoch that loader draws from its generator one int64 (the
    iterator's worker seed), then ``randperm(n)`` (the order) and ``randperm(n)[:0]`` (``RandomSampler``'s
    remainder); replaying those draws gives the same orders as before this sampler existed (a
    test checks it). Used by SFT and RLOO data. ``shuffle=False``: the file order in every epoch.

    With ``num_replicas = R`` processes, the order is padded (like ``DistributedSampler``, by
    repeating its start) to a multiple of ``R`` and process ``rank`` takes positions ``rank, rank + R,
    ...``: its ``i``-th batch of ``batch_size`` is its share of the ``i``-th global batch of
    ``R * batch_size``, the batch one process with ``R * batch_size`` would see."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True):
        super().__init__(range(n), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.n, self.batch_size, self.skip_batches = n, batch_size, 0

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        for _ in range(self.epoch):
            torch.empty((), dtype=torch.int64).random_(generator=g)
            torch.randperm(self.n, generator=g)
            torch.randperm(self.n, generator=g)
        torch.empty((), dtype=torch.int64).random_(generator=g)
        order = torch.randperm(self.n, generator=g).tolist() if self.shuffle else list(range(self.n))
        if self.num_replicas > 1 and order:
            order = (order * math.ceil(self.total_size / self.n))[:self.total_size][self.rank::self.num_replicas]
        skip, self.skip_batches = self.skip_batches, 0
        yield from order[skip * self.batch_size:]

    def __len__(self) -> int:
        return self.num_samples



class LoaderPosition:
    """Where the training loader is in its epoch: saved in checkpoints through the data module's
    and the loader's ``state_dict`` (Lightning calls both), restored before training resumes."""

    def __init__(self):
        self.epoch, self.batches, self.resume = 0, 0, None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self.batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}



class ResumableLoader(DataLoader):
    """A ``DataLoader`` over a sampler with ``epoch`` and ``skip_batches`` (the samplers above)
    that counts the batches it hands out in each epoch, so a run resumed from a mid-epoch
    checkpoint continues with the next unseen batch instead of replaying the epoch. Lightning
    fetches from sized loaders without prefetching, so the count is the number of batches trained
    on when a checkpoint is written."""

    def __init__(self, *args, position: Optional[LoaderPosition] = None, **kwargs):
        # Its own generator for the per-epoch worker seed that DataLoader draws when an iteration
        # starts: drawn from the global RNG, it would shift every later draw of a resumed run.
        kwargs.setdefault("generator", torch.Generator().manual_seed(0))
        super().__init__(*args, **kwargs)
        self.position = position or LoaderPosition()

    def __iter__(self):
        position, sampler = self.position, self.sampler
        resume, position.resume = position.resume, None
        position.epoch, position.batches = sampler.epoch, 0
        if resume is not None and resume["epoch"] == sampler.epoch:
            sampler.skip_batches = position.batches = resume["batches"]
        for batch in super().__iter__():
            position.batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return self.position.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position.load_state_dict(state)



def collate_pairs(examples: list[dict[str, Any]], pad_token_id: int,
                  pad_to_multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """``input_ids``/``attention_mask`` of shape ``(2b, t)``: rows ``[:b]`` chosen, ``[b:]``
    rejected, right-padded with ``pad_token_id``; ``margin`` of shape ``(b,)``."""
    seqs = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
    input_ids, attention_mask = pad_right(seqs, pad_token_id, pad_to_multiple_of)
    margin = torch.tensor([float(e["margin"]) for e in examples], dtype=torch.float32)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "margin": margin}



def collate_groups(groups: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """``group_input_ids``/``group_attention_mask`` ``(g * k, t)`` right-padded, prompt-major (the
    ``k`` samples of a prompt are consecutive rows); ``group_gold`` ``(g, k)`` when labelled."""
    input_ids, attention_mask = pad_right([ids for g in groups for ids in g["ids"]], pad_token_id)
    out = {"group_input_ids": input_ids, "group_attention_mask": attention_mask, "group_size": len(groups[0]["ids"])}
    if all(g["gold"] is not None for g in groups):
        out["group_gold"] = torch.tensor([g["gold"] for g in groups], dtype=torch.float32)
    return out



class LoaderPositionInCheckpoints:
    """Mixin for data modules whose training loader is a :class:`ResumableLoader` over
    ``self.train_position``: Lightning saves the data module's ``state_dict`` in each checkpoint,
    so a resumed run continues with the next unseen batch. Put it before ``LightningDataModule``
    among the bases and set ``self.train_position = LoaderPosition()`` in ``__init__``."""

    train_position: LoaderPosition

    def state_dict(self) -> dict[str, Any]:
        return {"train_position": self.train_position.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "train_position" in state:  # checkpoints from before exact resume have none
            self.train_position.load_state_dict(state["train_position"])
