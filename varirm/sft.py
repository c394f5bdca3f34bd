"""Supervised fine-tuning of a policy on demonstrations (``varirm sft``).

Used to build the synthetic world's initial policy pi0 from imperfect demonstrations. The
prompt is rendered by :func:`varirm.chat.encode_prompt_response` (the RM's function), and the
loss covers the response tokens only (prompt tokens are labelled -100), ending with eos (added
when the template's end of turn is not eos), so the policy learns to stop.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional

import datasets
import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch.utils.data import DataLoader

from varirm.chat import encode_prompt_response, fit_to_length, load_tokenizer, pad_right
from varirm.errors import DataError
from varirm.files import atomic_directory
from varirm.formats import read_raw_rows
from varirm.loaders import EpochShuffleSampler, LoaderPosition, LoaderPositionInCheckpoints, ResumableLoader
from varirm.sampling import load_policy
from varirm.schedules import warmup_schedule


def read_demos(path: str) -> list[dict[str, Any]]:
    """Rows with ``prompt`` (messages or string) and ``response`` (string)."""
    rows = []
    for i, row in read_raw_rows(path):
        if isinstance(row, DataError):
            raise row
        for field in ("prompt", "response"):
            if not isinstance(row, dict) or not row.get(field):
                raise DataError(path, i, field, "is missing or empty")
        if not isinstance(row["response"], str):
            raise DataError(path, i, "response", f"must be a string, got {type(row['response']).__name__}")
        rows.append({"prompt": row["prompt"], "response": row["response"]})
    return rows


def collate_sft(examples: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask``/``labels`` ``(b, t)``; labels -100 off-response."""
    ids, mask = pad_right([e["input_ids"] for e in examples], pad_token_id)
    labels = torch.full_like(ids, -100)
    for i, e in enumerate(examples):
        n, p = len(e["input_ids"]), e["prompt_len"]
        labels[i, p:n] = ids[i, p:n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


class SFTDataModule(LoaderPositionInCheckpoints, LightningDataModule):
    """Demonstrations for SFT.

    Args:
        tokenizer_name_or_path: Tokenizer (linked from the model by the CLI).
        train: jsonl/json file of ``{prompt, response}`` rows.
        val: Optional validation file, same layout.
        max_length: Longest prompt + response kept (prompt cut from the left).
        batch_size: Sequences per step.
        seed: Shuffling seed.
        trust_remote_code: Allow custom tokenizer code from the Hub (linked from the model).
    """

    def __init__(self, tokenizer_name_or_path: str = "", train: str = "", val: Optional[str] = None,
                 max_length: int = 256, batch_size: int = 32, seed: int = 0, trust_remote_code: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.tokenizer = None
        self.splits: dict[str, datasets.Dataset] = {}
        self.train_position = LoaderPosition()

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        self.tokenizer = load_tokenizer(hp.tokenizer_name_or_path, hp.trust_remote_code)
        for name in ("train", "val"):
            path = getattr(hp, name)
            if not path:
                continue
            rows = []
            for demo in read_demos(path):
                p_ids, r_ids = encode_prompt_response(self.tokenizer, demo["prompt"], demo["response"])
                if not r_ids or r_ids[-1] != self.tokenizer.eos_token_id:
                    r_ids = r_ids + [self.tokenizer.eos_token_id]  # the policy must learn to stop
                ids = fit_to_length(p_ids, r_ids, hp.max_length)
                rows.append({"input_ids": ids, "prompt_len": max(0, len(ids) - len(r_ids))})
            self.splits[name] = datasets.Dataset.from_list(rows)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        return ResumableLoader(self.splits["train"], batch_size=hp.batch_size,
                               sampler=EpochShuffleSampler(len(self.splits["train"]), hp.batch_size, hp.seed),
                               collate_fn=partial(collate_sft, pad_token_id=self.tokenizer.pad_token_id),
                               position=self.train_position)

    def val_dataloader(self):
        if "val" not in self.splits:
            return []
        return DataLoader(self.splits["val"], batch_size=self.hparams.batch_size,
                          collate_fn=partial(collate_sft, pad_token_id=self.tokenizer.pad_token_id))


class SFTModule(LightningModule):
    """Causal-LM fine-tuning on response tokens; saves the policy in Hugging Face format at the end.

    Args:
        model_name_or_path: Hub id or local directory of the causal LM to fine-tune.
        save_dir: Where the fine-tuned policy (weights + tokenizer) is written at the end of fit.
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_ratio: Fraction of steps in linear warm-up (then cosine decay).
        trust_remote_code: Allow custom model code from the Hub.
    """

    def __init__(self, model_name_or_path: str, save_dir: Optional[str] = None, lr: float = 1e-4,
                 weight_decay: float = 0.0, warmup_ratio: float = 0.05, trust_remote_code: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.policy = None
        self.tokenizer = None

    def configure_model(self) -> None:
        if self.policy is None:
            self.policy, self.tokenizer = load_policy(self.hparams.model_name_or_path,
                                                      trust_remote_code=self.hparams.trust_remote_code)
            self.policy.train()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean token cross-entropy over response tokens."""
        return self.policy(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(**batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", self(**batch), prog_bar=True, batch_size=batch["input_ids"].shape[0], sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.policy.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = warmup_schedule(optimizer, "cosine", int(hp.warmup_ratio * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_fit_end(self) -> None:
        if self.hparams.save_dir and self.trainer.is_global_zero:
            # written under a temporary name and renamed: a directory at save_dir is always complete
            with atomic_directory(self.hparams.save_dir) as tmp:
                self.policy.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
