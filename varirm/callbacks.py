"""Every Lightning callback varirm adds to a run, in one place.

- :class:`SaveFitConfig`, :class:`RandomState`: the run directory (resolved config of ``fit`` runs;
  random number generator states in checkpoints, so a resumed run continues as an uninterrupted one).
- :class:`RegenerateSamples`: RM training with the variance term: refreshes the policy-sample groups.
- :class:`PolicyEvaluation`: RLOO: the gold (and proxy) reward of the policy on held-out prompts
  during training, the curve ``varirm verify`` reads.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_only

from varirm.errors import ConfigError
from varirm.files import atomic_write_text
from varirm.sampling import SamplingConfig, generate_responses, load_policy, read_prompts, tokenize_groups

if TYPE_CHECKING:
    from varirm.rloo import RLOOModule


class SaveFitConfig(SaveConfigCallback):
    """Saves the resolved config of ``fit`` runs only, so a later ``test`` in the same run
    directory does not replace the training config."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)



class RandomState(Callback):
    """Saves the random number generators' states (torch CPU and CUDA, numpy, Python) in every
    checkpoint and puts them back when a resumed run starts training, so sampling, dropout and
    draws continue as in an uninterrupted run. Stored as tensors and plain values, so checkpoints
    still load with ``torch.load(weights_only=True)``. Under data parallelism (processes sample
    different data and so draw different amounts) every process's states are stored, as
    ``{"ranks": [...]}``, and each process gets its own back (rank 0's when the number of
    processes changed)."""

    def __init__(self):
        self.pending: Optional[dict[str, Any]] = None

    def state_dict(self) -> dict[str, Any]:
        import random

        import numpy as np
        import torch

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {"torch": torch.get_rng_state(),
                 "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                 "numpy": [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss],
                 "python": list(random.getstate())}
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return state
        # Lightning builds the checkpoint on every process and global rank 0 writes it
        states: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(states, state)
        return {"ranks": states}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = state

    def on_train_start(self, trainer, pl_module) -> None:
        import random

        import numpy as np
        import torch

        if self.pending is None:
            return
        state, self.pending = self.pending, None
        if "ranks" in state:
            ranks = state["ranks"]
            state = ranks[trainer.global_rank] if len(ranks) == trainer.world_size else ranks[0]
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))


class RegenerateSamples(Callback):
    """Refresh the policy-sample groups that feed the variance regularizer during ``fit``: every
    ``every_n_steps`` optimizer steps, load ``policy`` (from disk again, so a policy that is being
    trained elsewhere and saved there is picked up), sample ``k`` responses for the prompts and
    swap them into the data module's :class:`varirm.on_policy.GroupSource`.

    Needs ``data.policy_samples`` (the initial groups) and ``data.num_workers: 0``.

    Args:
        policy: Hub id or local directory of the policy (causal LM).
        prompts: jsonl/json file of prompts.
        every_n_steps: Regenerate after every this many optimizer steps.
        k: Samples per prompt.
        num_prompts: Use only the first this many prompts.
        temperature: Sampling temperature.
        top_p: Nucleus sampling threshold.
        max_new_tokens: Longest response.
        seed: Base seed (each regeneration uses seed + step + rank).
        batch_size: Prompts per generate call.
    """

    def __init__(self, policy: str, prompts: str, every_n_steps: int = 100, k: int = 4,
                 num_prompts: Optional[int] = None, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 32, seed: int = 0, batch_size: int = 16):
        if every_n_steps < 1:
            raise ConfigError(f"every_n_steps must be at least 1, got {every_n_steps}")
        self.policy, self.prompts, self.every_n_steps, self.num_prompts = policy, prompts, every_n_steps, num_prompts
        self.config = SamplingConfig(k=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                     seed=seed, batch_size=batch_size)
        self.regenerations = 0
        self._last_step = 0

    def on_fit_start(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        if getattr(dm, "group_source", None) is None:
            raise ConfigError("RegenerateSamples needs data.policy_samples (the first groups)")
        if dm.hparams.num_workers:
            raise ConfigError("RegenerateSamples needs data.num_workers: 0 (workers would keep the old samples)")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step > self._last_step and step % self.every_n_steps == 0:
            self._last_step = step
            self.regenerate(trainer, pl_module, step)

    def regenerate(self, trainer, pl_module, step: int) -> None:
        dm = trainer.datamodule
        policy, tokenizer = load_policy(self.policy)
        prompts = read_prompts(self.prompts, limit=self.num_prompts)
        config = SamplingConfig(**{**asdict(self.config), "seed": self.config.seed + step + 7919 * trainer.global_rank})
        responses = generate_responses(policy.to(pl_module.device), tokenizer, prompts, config, progress=False)
        dm.group_source.groups = tokenize_groups(dm.tokenizer, prompts, responses, dm.hparams.max_length)
        self.regenerations += 1
        pl_module.log("train/samples_regenerated", float(self.regenerations), rank_zero_only=True)


class PolicyEvaluation(Callback):
    """Evaluates the policy being trained on fixed held-out prompts, at the start, every
    ``every_n_steps`` RLOO steps (batches of samples; each makes ``updates_per_batch`` optimizer steps)
    and at the end: ``k`` samples per prompt with a fixed seed
    (the training RNG is left untouched), scored by the RM (raw and normalized by the module's
    ``reward_norm``) and the gold reward when the module has one. Logs ``eval/*`` and writes the
    whole curve to ``<run dir>/policy_eval.json`` after each point (``varirm verify`` reads it).
    Under data parallelism process ``r`` generates the batches ``r, r + R, ...`` of prompts (each
    seeded as in one process, so the numbers are one process's) and the results are summed over
    processes; the global-rank-0 process writes.

    Args:
        prompts: jsonl/json file (or Hub dataset id) of held-out prompts.
        prompt_field: Field holding the prompt.
        num_prompts: Use only the first this many.
        split: Split to read when ``prompts`` is a Hub dataset id (held-out prompts: ``test``).
        k: Samples per prompt.
        every_n_steps: Evaluate every this many RLOO steps.
        seed: Sampling seed (the same samples for the same policy).
        batch_size: Prompts per generation batch.
        groups: Dotted path of a function ``prompt -> group name`` (e.g.
            ``varirm.synthetic.prompt_half``): each point then also holds the gold reward per group
            (``gold_by_group``), so a reward that treats prompts unevenly can be read per group.
    """

    def __init__(self, prompts: str, prompt_field: str = "prompt", num_prompts: Optional[int] = None,
                 split: str = "train", k: int = 4, every_n_steps: int = 10, seed: int = 1234, batch_size: int = 64,
                 groups: Optional[str] = None):
        self.prompts_file, self.prompt_field, self.num_prompts, self.split = prompts, prompt_field, num_prompts, split
        self.k, self.every_n_steps, self.seed, self.batch_size = k, every_n_steps, seed, batch_size
        self.groups = groups
        self.group_names: list[str] = []  # each prompt's group, found once
        self.curve: list[dict[str, float]] = []
        self.prompts: list = []

    def _evaluate(self, trainer: Trainer, module: RLOOModule) -> None:
        step = trainer.global_step // module.updates_per_batch  # RLOO steps done
        if self.curve and self.curve[-1]["step"] == step:
            return
        if not self.prompts:
            self.prompts = read_prompts(self.prompts_file, self.prompt_field, self.num_prompts, self.split)
        hp = module.hparams
        n, size = len(self.prompts), self.batch_size
        rows, responses = [], []  # this process's prompts (generation batches rank, rank + R, ...), their samples
        devices = [module.device] if module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            for b in range(trainer.global_rank, math.ceil(n / size), trainer.world_size):
                # batch b seeded with seed + b, as generate_responses seeds it over all prompts
                config = SamplingConfig(k=self.k, temperature=hp.temperature, top_p=hp.top_p,
                                        max_new_tokens=hp.max_new_tokens, seed=self.seed + b, batch_size=size,
                                        precision=hp.sampling_precision)
                batch = list(range(b * size, min(n, (b + 1) * size)))
                rows += batch
                responses += generate_responses(module.policy, module.tokenizer, [self.prompts[i] for i in batch],
                                                config, progress=False)
        flat_prompts = [self.prompts[i] for i in rows for _ in range(self.k)]
        flat = [r for group in responses for r in group]
        # (prompt, sample, [proxy, gold, words]): each process fills its prompts' rows; the sum is all of them
        table = torch.zeros(n, self.k, 3, dtype=torch.float64)
        if flat:
            gold = module.gold_fn(flat_prompts, flat) if module.gold_fn is not None else [0.0] * len(flat)
            table[rows] = torch.tensor([module.reward_fn(flat_prompts, flat), gold, [len(r.split()) for r in flat]],
                                       dtype=torch.float64).T.reshape(-1, self.k, 3)
        table = trainer.strategy.reduce(table.to(module.device), reduce_op="sum").cpu()
        proxy = table[..., 0].reshape(-1)
        point = {"step": step, "proxy_reward_raw": proxy.mean().item(), "response_words": table[..., 2].mean().item()}
        shift, scale = module.reward_norm.tolist()
        if scale == scale:  # not NaN: normalization known
            point["proxy_reward"] = ((proxy - shift) / scale).mean().item()
        if module.gold_fn is not None:
            point["gold_reward"] = table[..., 1].mean().item()
            if self.groups:
                point["gold_by_group"] = self._by_group(table[..., 1])
        self.curve.append(point)
        for logger in trainer.loggers:
            logger.log_metrics({f"eval/{k}": v for k, v in point.items() if k != "step"}, step=step)
        self._write(trainer)

    def _by_group(self, gold: torch.Tensor) -> dict[str, float]:
        """Mean gold reward ``(n, k)`` over the prompts of each group (named by ``groups``)."""
        if not self.group_names:
            module_name, _, attr = self.groups.rpartition(".")
            try:
                group_of = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError, ValueError) as e:
                raise ConfigError(f"PolicyEvaluation groups {self.groups!r}: not an importable function "
                                  f"({e})") from None
            self.group_names = [str(group_of(p)) for p in self.prompts]
        names = self.group_names
        return {g: gold[[i for i, n in enumerate(names) if n == g]].mean().item() for g in sorted(set(names))}

    @rank_zero_only
    def _write(self, trainer: Trainer) -> None:
        root = trainer.default_root_dir
        os.makedirs(root, exist_ok=True)
        atomic_write_text(os.path.join(root, "policy_eval.json"),
                          json.dumps({"prompts": self.prompts_file, "num_prompts": len(self.prompts), "k": self.k,
                                      "seed": self.seed, "curve": self.curve}, indent=2))

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if (trainer.global_step // pl_module.updates_per_batch) % self.every_n_steps == 0:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluate(trainer, pl_module)
