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
processes, and :class:`varirm.callbacks.PolicyEvaluation` splits its prompts over processes and
writes once.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch.utils.data import DataLoader

from varirm.errors import ConfigError
from varirm.loaders import EpochShuffleSampler, LoaderPosition, LoaderPositionInCheckpoints, ResumableLoader
from varirm.objectives import KLIn, policy_advantages, policy_loss
from varirm.sampling import (
    Precision,
    SamplingConfig,
    clean_response,
    generate_ids,
    load_policy,
    read_prompts,
    response_suffix,
    stop_ids,
)

Optimizer = Literal["adamw", "sgd"]
AdvantageNormalization = Literal["none", "group_std"]


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


class PromptDataModule(LoaderPositionInCheckpoints, LightningDataModule):
    """Batches of prompts for RLOO.

    Under data parallelism each process takes its share of every global batch of
    ``R * batch_size`` prompts (:class:`varirm.loaders.EpochShuffleSampler`).

    Args:
        prompts: jsonl/json file (or Hub dataset id) of prompts.
        prompt_field: Field holding the prompt.
        num_prompts: Use only the first this many.
        split: Split to read when ``prompts`` is a Hub dataset id.
        batch_size: Prompts per RLOO step and process (each sampled k times).
        seed: Shuffling seed.
        shuffle: ``False``: prompts in file order (e.g. to give another trainer the same prompts per step).
    """

    def __init__(self, prompts: str = "", prompt_field: str = "prompt", num_prompts: Optional[int] = None,
                 split: str = "train", batch_size: int = 8, seed: int = 0, shuffle: bool = True):
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
                               sampler=EpochShuffleSampler(len(self.prompts), hp.batch_size, hp.seed, world, rank,
                                                           hp.shuffle),
                               position=self.train_position)


class RLOOModule(LightningModule):
    """RLOO against a frozen reward model, with a frozen reference policy for the KL penalty.

    Per step: sample ``k`` responses for each prompt, score them with the RM (normalized),
    take leave-one-out advantages (of the reward minus ``beta * k1`` KL with ``kl_in: reward``),
    then ``ppo_epochs`` passes over the samples in ``num_minibatches`` minibatches, one optimizer
    step each, of the sequence-level (optionally clipped) policy-gradient loss (plus ``beta * k3``
    KL with ``kl_in: loss``). Razin et al.'s RLOO: k 2, one pass over 2 minibatches, k1 in the
    reward, reward normalized by a shift and scale measured on the initial policy's samples.

    The reference is a frozen copy of the initial policy; under LoRA (``lora_r > 0``) it is the
    same model with its adapters disabled, so no second copy is held in memory.

    Args:
        policy_name_or_path: The initial policy (causal LM): Hub id or local directory.
        reward_model: The RM: a ``varirm fit`` checkpoint, an exported directory, a Hub id, or the
            dotted path of a reward function ``(prompt, response) -> float`` (e.g. the gold reward).
        gold: Optional dotted path of a gold reward ``(prompt, response) -> float``, only logged.
        k: Samples per prompt (>= 2).
        beta: KL penalty coefficient.
        kl_in: Where the KL penalty goes (:data:`varirm.objectives.KLIn`): ``reward``: ``beta * k1``
            subtracted from the detached reward, whose expected gradient is that of
            ``beta * KL(pi || ref)`` (TRL's RLOO, the paper's code); ``loss``: ``beta * k3`` added
            to the loss and differentiated directly (GRPO), expected gradient that of
            ``KL(ref || pi)`` per token.
        kl_estimator: Removed (k3 in the reward has the wrong gradient); setting it is an error
            that says what to use instead.
        ppo_epochs: Passes over each batch of samples.
        num_minibatches: Minibatches per pass, one optimizer step each (each RLOO step makes
            ``ppo_epochs * num_minibatches`` optimizer steps; ``trainer.max_steps`` counts those).
        clip_eps: PPO ratio clipping (``None``: plain REINFORCE, needs one update per batch).
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
        weight_decay: AdamW's decoupled weight decay (0, TRL's default; torch's own default is 0.01).
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
                 beta: float = 0.05, kl_in: KLIn = "reward", kl_estimator: Optional[str] = None,
                 ppo_epochs: int = 1, num_minibatches: int = 1, clip_eps: Optional[float] = 0.2,
                 temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 32, sampling_precision: Precision = "auto", reward_shift: Optional[float] = None,
                 reward_scale: Optional[float] = None, lr: float = 1e-5, weight_decay: float = 0.0,
                 optimizer: Optimizer = "adamw", advantage_normalization: AdvantageNormalization = "none",
                 advantage_eps: float = 1e-4, lora_r: int = 0, lora_alpha: int = 16, lora_dropout: float = 0.0,
                 lora_target_modules: Union[str, list[str]] = "all-linear", seed: int = 0):
        super().__init__()
        if k < 2:
            raise ConfigError(f"RLOO needs k >= 2 samples per prompt, got {k}")
        if kl_estimator is not None:
            raise ConfigError(f"kl_estimator ({kl_estimator!r}) was removed: k3 subtracted from the reward has "
                              "the wrong expected gradient. Use kl_in: reward (k1 in the reward, TRL's RLOO and the "
                              "paper) or kl_in: loss (k3 in the loss, GRPO)")
        if kl_in not in ("reward", "loss"):
            raise ConfigError(f"kl_in must be 'reward' (k1 in the reward) or 'loss' (k3 in the loss), got {kl_in!r}")
        if ppo_epochs < 1 or num_minibatches < 1:
            raise ConfigError(f"ppo_epochs and num_minibatches must be >= 1, got {ppo_epochs}, {num_minibatches}")
        if clip_eps is None and ppo_epochs * num_minibatches != 1:
            raise ConfigError("several updates per batch (ppo_epochs or num_minibatches > 1) need clip_eps")
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
        from varirm.scoring import load_reward_function

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
        # the RM scores through varirm.scoring.score (RM checkpoints/directories) or is a function; an RM
        # scores in the trainer's precision (bf16 autocast under bf16-mixed, on CPU too)
        bf16 = "bf16" in str(self.trainer.precision) if self._trainer is not None else None
        self.reward_fn = load_reward_function(hp.reward_model, bf16=bf16)
        self.gold_fn = load_reward_function(hp.gold) if hp.gold else None

    @property
    def updates_per_batch(self) -> int:
        """Optimizer steps per RLOO step (batch of samples): ``ppo_epochs * num_minibatches``."""
        return self.hparams.ppo_epochs * self.hparams.num_minibatches

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
            old_logp_tok = entropy = advantages = None
            if hp.num_minibatches > 1:  # the sampling policy's log-probs before the first minibatch's update
                old_logp_tok, entropy = token_logprobs(self.policy, ids, mask, start)
        optimizer = self.optimizers()
        for _ in range(hp.ppo_epochs):
            order = torch.randperm(n) if hp.num_minibatches > 1 else torch.arange(n)
            for rows in order.to(ids.device).chunk(hp.num_minibatches):
                logp_tok, ent = token_logprobs(self.policy, ids[rows], mask[rows], start, entropy=old_logp_tok is None)
                if old_logp_tok is None:
                    # one minibatch: the first update's forward is also the sampling policy's (its ratio is
                    # exactly 1), so old log-probs, KL and advantages come from it without another forward
                    old_logp_tok, entropy = logp_tok.detach(), ent
                if advantages is None:
                    advantages, kl = policy_advantages(reward, old_logp_tok, ref_logp_tok, resp_mask, hp.k, hp.beta,
                                                       hp.kl_in, hp.advantage_normalization, hp.advantage_eps)
                loss = policy_loss(logp_tok, old_logp_tok[rows], ref_logp_tok[rows], resp_mask[rows],
                                   advantages[rows], hp.beta, hp.kl_in, hp.clip_eps).mean()
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
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

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


