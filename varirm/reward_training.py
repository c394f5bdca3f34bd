"""The Bradley-Terry reward-model system (LightningModule): loss, metrics, optimizer."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from varirm.chat import load_tokenizer
from varirm.errors import ConfigError
from varirm.metrics import GroupRewardMetrics, pairwise_metrics, update_pairwise
from varirm.objectives import (
    LABELLED_OBJECTIVES,
    GroupObjective,
    aligned_variance,
    bradley_terry_loss,
    center_rewards_penalty,
    group_pairs_loss,
    listwise_loss,
    variance_regularizer,
)
from varirm.reward_model import RewardModel, load_reward_model
from varirm.schedules import warmup_schedule
from varirm.variance import Normalization, whiten, within_prompt_variance


class RewardModelModule(LightningModule):
    """Trains a :class:`varirm.reward_model.RewardModel` with the Bradley-Terry loss on preference pairs,
    optionally plus ``variance_coef`` times a term on policy-sample groups (``group_objective``):

        loss = mean_i BT(r_c,i, r_r,i, m_i) + center_rewards_coef * mean_i (r_c,i + r_r,i)^2
               + variance_coef * mean_g term(r_g, labels_g)

    with ``term`` the label-free :func:`varirm.objectives.variance_regularizer` (``variance``), minus
    :func:`varirm.objectives.aligned_variance` (``aligned_variance``),
    :func:`varirm.objectives.listwise_loss` (``listwise``) or
    :func:`varirm.objectives.group_pairs_loss` (``pairs``: plain BT on the groups' labelled pairs).

    Batches come from :class:`varirm.preference_data.PreferenceDataModule`: ``input_ids`` ``(2b, t)`` with
    chosen rows first (or packed: ``(1, T)`` with ``seq_lens (2b,)``, :mod:`varirm.packing`), and with
    ``data.policy_samples`` also ``group_input_ids`` ``(g * k, t')``; pairs and groups go through the
    model in one forward.

    Args:
        model_name_or_path: Hub id or local directory of the backbone (or of a saved LoRA RM).
        lora_r: LoRA rank; 0 trains all weights.
        lora_alpha: LoRA scaling numerator (scale = alpha / r).
        lora_dropout: Dropout on the LoRA path.
        lora_target_modules: Modules that get adapters: ``all-linear`` or a list of names.
        load_in_4bit: QLoRA: load the base in 4-bit NF4 with bitsandbytes (needs ``lora_r > 0``).
        gradient_checkpointing: Recompute activations in backward to save memory.
        dtype: dtype to load weights in (``None``: as saved, fp32 for random inits); use the
            trainer's ``precision: bf16-mixed`` for mixed precision.
        trust_remote_code: Allow custom model code from the Hub.
        center_rewards_coef: Weight of the ``(r_c + r_r)^2`` centring penalty; 0 turns it off.
        lr: Peak learning rate (AdamW).
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_ratio: Fraction of all optimizer steps spent in linear warm-up.
        scheduler: Learning-rate schedule after warm-up.
        variance_coef: Weight of the group term (0: plain Bradley-Terry on the pairs).
        group_objective: The group term: ``variance`` (label-free variance regularizer),
            ``aligned_variance`` (variance along the labels), ``listwise`` (Plackett-Luce over each
            group's labelled ranking), ``pairs`` (BT on each group's pairs with different labels).
            The last three need labelled groups (``data.group_labels`` with a ``data.labeler``).
        variance_target: Floor on a prompt's whitened variance above which the term stops
            pushing (``None``: always push).
        variance_normalization: ``batch``: whiten by the group batch's mean/std (over all
            processes' groups under DDP), gradients through them (scale invariant); ``pairs``: by
            the mean/std of the same step's pair rewards (all processes'; scale invariant; the
            groups' between-prompt spread does not enter); ``none``: raw rewards (ablation only).
        variance_warmup_ratio: Ramp ``variance_coef`` linearly from 0 over this fraction of all
            steps. The term is scale invariant, so its gradient grows as ``1 / std(r)``: at
            initialisation rewards are nearly constant and, at full weight, the term would drown
            the Bradley-Terry gradient before the RM has learned any ranking. Applies to every
            ``group_objective``, so they can be compared at the same schedule.
    """

    def __init__(
        self,
        model_name_or_path: str,
        lora_r: int = 0,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        lora_target_modules: Union[str, list[str]] = "all-linear",
        load_in_4bit: bool = False,
        gradient_checkpointing: bool = False,
        dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None,
        trust_remote_code: bool = False,
        center_rewards_coef: float = 0.0,
        lr: float = 1e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_ratio: float = 0.03,
        scheduler: Literal["cosine", "linear", "constant"] = "cosine",
        variance_coef: float = 0.0,
        variance_target: Optional[float] = None,
        variance_normalization: Normalization = "batch",
        variance_warmup_ratio: float = 0.0,
        group_objective: GroupObjective = "variance",
    ):
        super().__init__()
        if load_in_4bit and lora_r <= 0:
            raise ConfigError("load_in_4bit trains LoRA adapters on a frozen 4-bit base: set lora_r > 0")
        if not 0.0 <= variance_warmup_ratio <= 1.0:
            raise ConfigError(f"variance_warmup_ratio must be in [0, 1], got {variance_warmup_ratio}")
        if group_objective not in ("variance", *LABELLED_OBJECTIVES):
            raise ConfigError(f"group_objective must be one of variance, {', '.join(LABELLED_OBJECTIVES)}; "
                              f"got {group_objective!r}")
        self.save_hyperparameters()
        self.tokenizer = None  # loaded with the model in configure_model (no Hub access at parse time)
        self.model: Optional[RewardModel] = None
        self.train_metrics = pairwise_metrics("train/")
        self.val_metrics = pairwise_metrics("val/")
        self.test_metrics = pairwise_metrics("test/")
        self.val_policy_metrics = GroupRewardMetrics()

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                seq_lens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Rewards ``(n,)`` for right-padded ``(n, t)`` inputs, or for a packed row (``seq_lens``)."""
        return self.model(input_ids, attention_mask, seq_lens)

    def _shared_step(self, batch: dict[str, torch.Tensor], metrics,
                     regularize: bool = False) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Loss of a batch (with the variance term when ``regularize``) and, when the batch carries
        policy-sample groups, their rewards ``(g, k)``."""
        ids, mask = batch["input_ids"], batch.get("attention_mask")  # (2b, t); packed: (1, T) and no mask
        n_pairs = len(batch["seq_lens"]) if "seq_lens" in batch else ids.shape[0]
        if "group_input_ids" in batch:  # one forward for pairs and groups: pad both to the longer t
            g_ids, g_mask = batch["group_input_ids"], batch["group_attention_mask"]
            t = max(ids.shape[1], g_ids.shape[1])
            pad = self.tokenizer.pad_token_id
            ids = torch.cat([F.pad(ids, (0, t - ids.shape[1]), value=pad),
                             F.pad(g_ids, (0, t - g_ids.shape[1]), value=pad)])
            mask = torch.cat([F.pad(mask, (0, t - mask.shape[1])), F.pad(g_mask, (0, t - g_mask.shape[1]))])
        rewards = self(ids, mask, batch.get("seq_lens"))
        chosen, rejected = rewards[:n_pairs].chunk(2)  # (b,), (b,)
        loss = bradley_terry_loss(chosen, rejected, batch["margin"]).mean()
        if self.hparams.center_rewards_coef > 0:
            loss = loss + self.hparams.center_rewards_coef * center_rewards_penalty(chosen, rejected).mean()
        update_pairwise(metrics, chosen, rejected)
        groups = None
        if "group_input_ids" in batch:
            groups = rewards[n_pairs:].view(-1, int(batch["group_size"]))  # (g, k)
            coef = self.variance_coef_now() if regularize else 0.0
            if coef > 0:
                loss = loss + coef * self._group_term(groups, batch.get("group_gold"), rewards[:n_pairs])
        return loss, groups

    def _group_term(self, groups: torch.Tensor, labels: Optional[torch.Tensor],
                    pair_rewards: torch.Tensor) -> torch.Tensor:
        """The batch's group term (to minimise) for ``group_objective``; ``groups``, ``labels``: ``(g, k)``."""
        hp = self.hparams
        if hp.group_objective == "variance":
            return variance_regularizer(groups, hp.variance_normalization, hp.variance_target,
                                        reference=pair_rewards, gather=self._all_groups).mean()
        if labels is None:
            raise ConfigError(f"group_objective {hp.group_objective!r} needs labelled policy-sample groups: set "
                              "data.group_labels true and a data.labeler")
        if hp.group_objective == "aligned_variance":
            return -aligned_variance(groups, labels, gather=self._all_groups).mean()
        return (listwise_loss if hp.group_objective == "listwise" else group_pairs_loss)(groups, labels).mean()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, groups = self._shared_step(batch, self.train_metrics, regularize=True)
        n = len(batch["margin"])
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict(self.train_metrics, on_step=True, on_epoch=False, batch_size=n)
        mask = batch.get("attention_mask")  # a packed batch has none: no padding
        self.log("train/pad_fraction", 0.0 if mask is None else 1.0 - mask.sum() / mask.numel(), batch_size=n)
        if groups is not None:  # the regularizer's own view: whitened within-prompt variance of this batch
            self.log("train/group_whitened_variance", within_prompt_variance(whiten(groups.detach())).mean(),
                     batch_size=groups.shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        if "group_input_ids" in batch and "input_ids" not in batch:  # policy-sample groups
            k = int(batch["group_size"])
            rewards = self(batch["group_input_ids"], batch["group_attention_mask"]).view(-1, k)
            self.val_policy_metrics.update(rewards, batch.get("group_gold"))
            return
        loss, _ = self._shared_step(batch, self.val_metrics)
        n = batch["input_ids"].shape[0] // 2
        self.log("val/loss", loss, prog_bar=True, batch_size=n, sync_dist=True, add_dataloader_idx=False)
        for name, metric in self.val_metrics.items():
            self.log(name, metric, prog_bar=name == "val/acc", batch_size=n, add_dataloader_idx=False)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, _ = self._shared_step(batch, self.test_metrics)
        n = batch["input_ids"].shape[0] // 2
        self.log("test/loss", loss, batch_size=n, sync_dist=True)
        self.log_dict(self.test_metrics, batch_size=n)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas))
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = warmup_schedule(optimizer, hp.scheduler, int(hp.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.model_name_or_path, hp.trust_remote_code)
        self.model = load_reward_model(
            hp.model_name_or_path, self.tokenizer, lora_r=hp.lora_r, lora_alpha=hp.lora_alpha,
            lora_dropout=hp.lora_dropout, lora_target_modules=hp.lora_target_modules, load_in_4bit=hp.load_in_4bit,
            gradient_checkpointing=hp.gradient_checkpointing, dtype=hp.dtype, trust_remote_code=hp.trust_remote_code)
        # LoRA checkpoints keep only the trainable weights (adapters + score head); the frozen base
        # comes from model_name_or_path when loading. Derived from the model actually built (a saved
        # LoRA RM given as model_name_or_path is peft even with lora_r = 0).
        self.strict_loading = not self.model.is_peft

    def _all_groups(self, groups: torch.Tensor) -> torch.Tensor:
        """Every process's policy-sample group rewards, ``(g, k) -> (R * g, k)``, gradients flowing
        back to each process (one process: ``groups`` itself), so the regularizer whitens by the
        statistics of the whole data-parallel batch."""
        return self.all_gather(groups, sync_grads=True).reshape(-1, groups.shape[1])

    def variance_coef_now(self) -> float:
        """``variance_coef`` after the linear warm-up over ``variance_warmup_ratio`` of all steps."""
        hp = self.hparams
        if hp.variance_coef <= 0 or hp.variance_warmup_ratio <= 0 or self._trainer is None:
            return hp.variance_coef
        warmup = hp.variance_warmup_ratio * max(int(self.trainer.estimated_stepping_batches), 1)
        return hp.variance_coef * min(1.0, self.global_step / warmup)

    def on_validation_epoch_end(self) -> None:
        if self.val_policy_metrics.update_count == 0:
            return
        report = self.val_policy_metrics.compute()
        self.val_policy_metrics.reset()
        names = {"whitened_variance_mean": "val_policy/whitened_variance",
                 "raw_variance_mean": "val_policy/raw_variance",
                 "on_policy_acc": "val_policy/acc", "scale": "val_policy/reward_scale"}
        for key, name in names.items():
            if key in report:
                self.log(name, float(report[key]), prog_bar=key == "whitened_variance_mean")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not self.strict_loading:
            trainable = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
