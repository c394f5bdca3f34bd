"""RLOO: train a policy against a frozen reward model (``varirm rloo``).

REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics"): for each
prompt, k >= 2 samples; the advantage of sample i is its KL-penalized reward minus the mean of
the other k - 1 samples' rewards. The loss is sequence level, with optional PPO-style ratio
clipping for several updates per batch of samples.

The RM scores with :func:`varirm.scoring.score`, i.e. the same rendering and tokenization as RM
training; the policy and the RM may have different tokenizers (responses are decoded, then
re-rendered and re-tokenized for the RM). RM rewards are normalized by ``(r - shift) / scale``,
measured on the initial policy's samples at the start of training unless given.

Data parallel (Lightning's ``ddp``): each process samples its own share of the prompts, the
normalization is measured on all processes' first batches, step metrics are averaged over
processes, and :class:`PolicyEvaluation` splits its prompts over processes and writes once.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Literal, Optional, Union

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from varirm.data import EpochShuffleSampler, LoaderPosition, ResumableLoader
from varirm.errors import ConfigError
from varirm.files import atomic_write_text
from varirm.sampling import (
    Precision,
    SamplingConfig,
    clean_response,
    generate_ids,
    generate_responses,
    load_policy,
    read_prompts,
    response_suffix,
    stop_ids,
)

KLEstimator = Literal["k1", "k3"]
Optimizer = Literal["adamw", "sgd"]
AdvantageNormalization = Literal["none", "group_std"]


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


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int = 0,
                   entropy: bool = True) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Log-probability of each token given the previous ones, and (``entropy=True``) the entropy of
    each next-token distribution, for positions ``start .. t - 2`` (position j scores token j + 1).
    ``(n, t) -> (n, t - 1 - start), (n, t - 1 - start)``. With ``start = p - 1`` (``p`` prompt
    columns) only response tokens are scored, and the LM head runs only there (``logits_to_keep``,
    for models that take it). The entropy carries no gradient."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)  # left-padded prompts: positions as in generate
    keep = input_ids.shape[1] - start
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
    try:
        logits = model(**inputs, logits_to_keep=keep).logits if start > 0 else model(**inputs).logits
    except TypeError:  # a model without logits_to_keep: all positions
        logits = model(**inputs).logits
    logp_all = torch.log_softmax(logits[:, logits.shape[1] - keep:-1].float(), dim=-1)  # (n, t - 1 - start, V)
    logp = logp_all.gather(-1, input_ids[:, start + 1:, None]).squeeze(-1)
    ent = None
    if entropy:
        with torch.no_grad():
            ent = -(logp_all.exp() * logp_all).sum(-1)
    return logp, ent


class PromptDataModule(LightningDataModule):
    """Batches of prompts for RLOO.

    Under data parallelism each process takes its share of every global batch of
    ``R * batch_size`` prompts (:class:`varirm.data.EpochShuffleSampler`).

    Args:
        prompts: jsonl/json file (or Hub dataset id) of prompts.
        prompt_field: Field holding the prompt.
        num_prompts: Use only the first this many.
        split: Split to read when ``prompts`` is a Hub dataset id.
        batch_size: Prompts per RLOO step and process (each sampled k times).
        seed: Shuffling seed.
    """

    def __init__(self, prompts: str = "", prompt_field: str = "prompt", num_prompts: Optional[int] = None,
                 split: str = "train", batch_size: int = 8, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.prompts: list = []
        self.train_position = LoaderPosition()

    def setup(self, stage: Optional[str] = None) -> None:
        if not self.prompts:
            hp = self.hparams
            self.prompts = read_prompts(hp.prompts, hp.prompt_field, hp.num_prompts, hp.split)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        return ResumableLoader(self.prompts, batch_size=hp.batch_size, collate_fn=list,
                               sampler=EpochShuffleSampler(len(self.prompts), hp.batch_size, hp.seed, world, rank),
                               position=self.train_position)

    def state_dict(self) -> dict[str, Any]:
        return {"train_position": self.train_position.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "train_position" in state:
            self.train_position.load_state_dict(state["train_position"])


class RLOOModule(LightningModule):
    """RLOO against a frozen reward model, with a frozen reference policy for the KL penalty.

    Per step: sample ``k`` responses for each prompt, score them with the RM (normalized),
    subtract ``beta * KL``, take leave-one-out advantages, then ``ppo_epochs`` updates of the
    sequence-level (optionally clipped) policy-gradient loss on those samples.

    The reference is a frozen copy of the initial policy; under LoRA (``lora_r > 0``) it is the
    same model with its adapters disabled, so no second copy is held in memory.

    Args:
        policy_name_or_path: The initial policy (causal LM): Hub id or local directory.
        reward_model: The RM: a ``varirm fit`` checkpoint, an exported directory, a Hub id, or the
            dotted path of a reward function ``(prompt, response) -> float`` (e.g. the gold reward).
        gold: Optional dotted path of a gold reward ``(prompt, response) -> float``, only logged.
        k: Samples per prompt (>= 2).
        beta: KL penalty coefficient.
        kl_estimator: ``k1`` or ``k3`` (see :func:`kl_estimate`).
        ppo_epochs: Updates per batch of samples.
        clip_eps: PPO ratio clipping (``None``: plain REINFORCE, needs ``ppo_epochs: 1``).
        temperature: Sampling temperature.
        top_p: Nucleus sampling threshold.
        max_new_tokens: Longest response.
        sampling_precision: Precision of sampling (and of ``PolicyEvaluation``'s samples): ``auto``
            (bf16 autocast on CUDA and on CPUs with native bf16 matmuls, else fp32), ``bf16`` or
            ``fp32``; see :func:`varirm.sampling.generation_dtype`. The log-probabilities of the
            update are computed in the trainer's precision either way.
        reward_shift: RM normalization shift (``None``: the mean RM reward of the first batch's
            samples, over all processes).
        reward_scale: RM normalization scale (``None``: the population std of the first batch's
            samples' RM rewards, over all processes).
        lr: Learning rate of the optimizer.
        optimizer: ``adamw`` (the default; its per-parameter scaling makes updates nearly blind to
            the reward's overall scale) or ``sgd`` (plain gradient steps: the update grows with
            the advantages, as in the gradient-flow analysis of Razin et al.).
        advantage_normalization: ``none``: RLOO leave-one-out advantages of the KL-penalized
            reward; ``group_std``: those divided by each prompt's reward std plus
            ``advantage_eps``, as GRPO does (:func:`group_std_advantages`).
        advantage_eps: ``eps`` of ``group_std``.
        lora_r: LoRA rank of the policy's adapters; 0 trains all weights.
        lora_alpha: LoRA scaling numerator (scale = alpha / r).
        lora_dropout: Dropout on the LoRA path.
        lora_target_modules: Modules that get adapters: ``all-linear`` or a list of names.
        seed: Base seed for sampling.
    """

    def __init__(self, policy_name_or_path: str, reward_model: str, gold: Optional[str] = None, k: int = 4,
                 beta: float = 0.05, kl_estimator: KLEstimator = "k3", ppo_epochs: int = 1,
                 clip_eps: Optional[float] = 0.2, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 32, sampling_precision: Precision = "auto", reward_shift: Optional[float] = None,
                 reward_scale: Optional[float] = None, lr: float = 1e-5,
                 optimizer: Optimizer = "adamw", advantage_normalization: AdvantageNormalization = "none",
                 advantage_eps: float = 1e-4, lora_r: int = 0, lora_alpha: int = 16, lora_dropout: float = 0.0,
                 lora_target_modules: Union[str, list[str]] = "all-linear", seed: int = 0):
        super().__init__()
        if k < 2:
            raise ConfigError(f"RLOO needs k >= 2 samples per prompt, got {k}")
        if clip_eps is None and ppo_epochs != 1:
            raise ConfigError("several updates per batch (ppo_epochs > 1) need clip_eps")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.policy = self.reference = self.tokenizer = None
        self.reward_fn = self.gold_fn = None
        # (shift, scale) of the RM's rewards; NaN until given or measured on the first batch
        self.register_buffer("reward_norm", torch.tensor([float("nan") if reward_shift is None else reward_shift,
                                                          float("nan") if reward_scale is None else reward_scale]))

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        from varirm.scoring import resolve_labeler

        hp = self.hparams
        self.policy, self.tokenizer = load_policy(hp.policy_name_or_path)
        if hp.lora_r > 0:
            from peft import LoraConfig, get_peft_model

            self.policy = get_peft_model(self.policy, LoraConfig(
                task_type="CAUSAL_LM", r=hp.lora_r, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
                target_modules=hp.lora_target_modules))
        else:
            self.reference, _ = load_policy(hp.policy_name_or_path)
            self.reference.eval().requires_grad_(False)
        self.policy.train()
        # the RM scores through varirm.scoring.score (RM checkpoints/directories) or is a function
        self.reward_fn = resolve_labeler(hp.reward_model)
        self.gold_fn = resolve_labeler(hp.gold) if hp.gold else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Token log-probabilities ``(n, t - 1 - start)`` of the policy (see :func:`token_logprobs`)."""
        return token_logprobs(self.policy, input_ids, attention_mask, start, entropy=False)[0]

    @torch.no_grad()
    def _sample(self, prompts: list) -> dict[str, Any]:
        """k samples per prompt: full ids, masks, the response-token mask and decoded responses."""
        tok, hp = self.tokenizer, self.hparams
        config = SamplingConfig(k=hp.k, temperature=hp.temperature, top_p=hp.top_p, max_new_tokens=hp.max_new_tokens,
                                precision=hp.sampling_precision)
        gen, prompt_mask = generate_ids(self.policy, tok, prompts, config)
        p_len = prompt_mask.shape[1]
        new = gen[:, p_len:]  # (n, r)
        is_stop = torch.isin(new, torch.tensor(stop_ids(tok, prompts), device=new.device))
        after_stop = (is_stop.cumsum(-1) - is_stop.long()) > 0  # response = tokens up to the first stop
        response_mask = (~after_stop).long()
        attention_mask = torch.cat([prompt_mask.repeat_interleave(hp.k, dim=0), response_mask], dim=1)
        decoded = tok.batch_decode(new.masked_fill(after_stop, tok.pad_token_id), skip_special_tokens=True)
        flat_prompts = [p for p in prompts for _ in range(hp.k)]
        responses = [clean_response(t, response_suffix(tok, p)) for t, p in zip(decoded, flat_prompts)]
        return {"input_ids": gen, "attention_mask": attention_mask, "response_mask": response_mask,
                "prompt_len": p_len, "prompts": flat_prompts, "responses": responses}

    def training_step(self, batch: list, batch_idx: int) -> None:
        hp = self.hparams
        # dropout off (Lightning switched every submodule to train mode): the sampling, old and new
        # log-probabilities must come from the same function for the ratio and the KL to mean anything
        self.policy.eval()
        s = self._sample(batch)
        n, p_len = s["input_ids"].shape[0], s["prompt_len"]
        resp_mask = s["response_mask"].float()  # (n, r)
        raw = torch.tensor(self.reward_fn(s["prompts"], s["responses"]), dtype=torch.float32, device=self.device)
        if torch.isnan(self.reward_norm).any():  # first batch: measure what was not given, on every process's
            everyone = self.all_gather(raw).reshape(-1)  # (R * n,); equal n: the sampler pads the prompts
            measured = torch.stack([everyone.mean(), everyone.std(correction=0).clamp_min(1e-6)])
            self.reward_norm.copy_(torch.where(torch.isnan(self.reward_norm), measured, self.reward_norm))
        reward = (raw - self.reward_norm[0]) / self.reward_norm[1]  # (n,)
        ids, mask, start = s["input_ids"], s["attention_mask"], p_len - 1  # score response tokens only
        with torch.no_grad():
            ref_logp_tok = self._reference_logprobs(ids, mask, start)  # (n, r)
        optimizer = self.optimizers()
        for epoch in range(hp.ppo_epochs):
            logp_tok, ent = token_logprobs(self.policy, ids, mask, start, entropy=epoch == 0)  # (n, r)
            if epoch == 0:
                # the first update's forward is also the sampling policy's: old log-probs, KL and
                # advantages come from it (no separate no-grad forward); its ratio is exactly 1
                old_logp_tok, entropy = logp_tok.detach(), ent
                kl = kl_estimate(old_logp_tok, ref_logp_tok, resp_mask, hp.kl_estimator)  # (n,)
                penalized = (reward - hp.beta * kl).view(-1, hp.k)  # (b, k)
                advantages = rloo_advantages(penalized)  # (b, k)
                if hp.advantage_normalization == "group_std":
                    advantages = group_std_advantages(advantages, penalized, hp.advantage_eps)
                advantages = advantages.reshape(-1)  # (n,)
                old_logp = (old_logp_tok * resp_mask).sum(-1)
            logp = (logp_tok * resp_mask).sum(-1)
            loss = clipped_policy_loss(logp, old_logp, advantages, hp.clip_eps).mean()
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        spread = reward.view(-1, hp.k).std(dim=1, correction=0)
        logs = {"rloo/proxy_reward": reward.mean(), "rloo/kl": kl.mean(), "rloo/loss": loss.detach(),
                "rloo/entropy": (entropy * resp_mask).sum() / resp_mask.sum().clamp_min(1),
                "rloo/reward_std_per_prompt": spread.mean(),
                "rloo/zero_spread_fraction": (spread < 1e-6).float().mean(),
                "rloo/response_length": resp_mask.sum(-1).mean()}
        if self.gold_fn is not None:
            logs["rloo/gold_reward"] = torch.tensor(self.gold_fn(s["prompts"], s["responses"]),
                                                    device=self.device).float().mean()
        self.log_dict(logs, prog_bar=True, batch_size=n // hp.k, sync_dist=True)  # means over processes

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if self.hparams.optimizer == "sgd":
            return torch.optim.SGD(params, lr=self.hparams.lr)
        return torch.optim.AdamW(params, lr=self.hparams.lr)

    def _reference_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            start: int = 0) -> torch.Tensor:
        if self.reference is not None:
            return token_logprobs(self.reference, input_ids, attention_mask, start, entropy=False)[0]
        with self.policy.disable_adapter():  # LoRA: the frozen base is the initial policy
            return token_logprobs(self.policy, input_ids, attention_mask, start, entropy=False)[0]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the reference is the initial policy (reloaded from policy_name_or_path, not saved); under
        # LoRA only the adapters are trained, so only they are saved
        trainable = {f"policy.{n}" for n, p in self.policy.named_parameters() if p.requires_grad}
        keep = (lambda k: k in trainable) if self.hparams.lora_r > 0 else (lambda k: not k.startswith("reference."))
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if keep(k) or k == "reward_norm"}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.strict_loading = False


class PolicyEvaluation(Callback):
    """Evaluates the policy being trained on fixed held-out prompts, at the start, every
    ``every_n_steps`` RLOO steps (batches of samples; each makes ``ppo_epochs`` optimizer steps)
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
    """

    def __init__(self, prompts: str, prompt_field: str = "prompt", num_prompts: Optional[int] = None,
                 split: str = "train", k: int = 4, every_n_steps: int = 10, seed: int = 1234, batch_size: int = 64):
        self.prompts_file, self.prompt_field, self.num_prompts, self.split = prompts, prompt_field, num_prompts, split
        self.k, self.every_n_steps, self.seed, self.batch_size = k, every_n_steps, seed, batch_size
        self.curve: list[dict[str, float]] = []
        self.prompts: list = []

    def _evaluate(self, trainer: Trainer, module: RLOOModule) -> None:
        step = trainer.global_step // module.hparams.ppo_epochs  # RLOO steps done
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
        self.curve.append(point)
        for logger in trainer.loggers:
            logger.log_metrics({f"eval/{k}": v for k, v in point.items() if k != "step"}, step=step)
        self._write(trainer)

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
        if (trainer.global_step // pl_module.hparams.ppo_epochs) % self.every_n_steps == 0:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluate(trainer, pl_module)
