"""The Bradley-Terry reward-model system (LightningModule): loss, metrics, optimizer."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

import torch
from lightning.pytorch import LightningModule
from transformers import get_scheduler

from varirm.chat import load_tokenizer
from varirm.losses import bradley_terry_loss, center_rewards_penalty
from varirm.metrics import pairwise_metrics, update_pairwise
from varirm.model import RewardModel, load_reward_model


class RewardModelModule(LightningModule):
    """Trains a :class:`varirm.model.RewardModel` with the Bradley-Terry loss on preference pairs.

    Batches come from :class:`varirm.data.PreferenceDataModule`: ``input_ids`` ``(2b, t)`` with
    chosen rows first, so chosen and rejected go through the model in one forward.

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
    ):
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer = None  # loaded with the model in configure_model (no Hub access at parse time)
        self.model: Optional[RewardModel] = None
        # LoRA checkpoints keep only the trainable weights (adapters + score head); the frozen
        # base comes from model_name_or_path when loading.
        self.strict_loading = lora_r == 0 and not load_in_4bit
        self.train_metrics = pairwise_metrics("train/")
        self.val_metrics = pairwise_metrics("val/")
        self.test_metrics = pairwise_metrics("test/")

    def configure_model(self) -> None:
        if self.model is not None:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.model_name_or_path, hp.trust_remote_code)
        self.model = load_reward_model(
            hp.model_name_or_path, self.tokenizer, lora_r=hp.lora_r, lora_alpha=hp.lora_alpha,
            lora_dropout=hp.lora_dropout, lora_target_modules=hp.lora_target_modules, load_in_4bit=hp.load_in_4bit,
            gradient_checkpointing=hp.gradient_checkpointing, dtype=hp.dtype, trust_remote_code=hp.trust_remote_code)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards ``(n,)`` for right-padded ``(n, t)`` inputs."""
        return self.model(input_ids, attention_mask)

    def _shared_step(self, batch: dict[str, torch.Tensor], metrics) -> torch.Tensor:
        rewards = self(batch["input_ids"], batch["attention_mask"])  # (2b,)
        chosen, rejected = rewards.chunk(2)  # (b,), (b,)
        loss = bradley_terry_loss(chosen, rejected, batch["margin"]).mean()
        if self.hparams.center_rewards_coef > 0:
            loss = loss + self.hparams.center_rewards_coef * center_rewards_penalty(chosen, rejected).mean()
        update_pairwise(metrics, chosen, rejected)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._shared_step(batch, self.train_metrics)
        n = batch["input_ids"].shape[0] // 2
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict(self.train_metrics, on_step=True, on_epoch=False, batch_size=n)
        mask = batch["attention_mask"]
        self.log("train/pad_fraction", 1.0 - mask.sum() / mask.numel(), batch_size=n)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss = self._shared_step(batch, self.val_metrics)
        n = batch["input_ids"].shape[0] // 2
        self.log("val/loss", loss, prog_bar=True, batch_size=n, sync_dist=True)
        for name, metric in self.val_metrics.items():
            self.log(name, metric, prog_bar=name == "val/acc", batch_size=n)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss = self._shared_step(batch, self.test_metrics)
        n = batch["input_ids"].shape[0] // 2
        self.log("test/loss", loss, batch_size=n, sync_dist=True)
        self.log_dict(self.test_metrics, batch_size=n)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas))
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        name = "constant_with_warmup" if hp.scheduler == "constant" else hp.scheduler
        schedule = get_scheduler(name, optimizer, num_warmup_steps=int(hp.warmup_ratio * total), num_training_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not self.strict_loading:
            trainable = {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def save_pretrained(self, directory: str) -> None:
        """Hugging Face format: full weights, or the LoRA adapter with the score head; tokenizer."""
        self.model.save_pretrained(directory, self.tokenizer)
