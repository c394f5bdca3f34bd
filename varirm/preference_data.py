"""Preference data: tokenization with a cache, length-grouped batches, the DataModule.

Data flow: file or Hub id -> :func:`varirm.formats.load_preference_rows` (validate, normalize)
-> :func:`tokenize_pairs` (the same :func:`varirm.chat.encode_prompt_response` the RM uses when
scoring later; cached by ``datasets.map`` under a content key) -> over-long rows truncated or
dropped, counted -> :class:`LengthGroupedSampler` -> :func:`collate_pairs`: one ``(2b, t)``
batch, chosen rows first, right-padded.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import partial
from typing import Any, Literal, Optional, Union

import datasets
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from varirm.chat import encode_prompt_response, fit_to_length, load_tokenizer, tokenizer_fingerprint
from varirm.errors import ConfigError, DataError
from varirm.files import atomic_write_text, labeler_fingerprint, source_fingerprint
from varirm.formats import Format, load_preference_rows
from varirm.loaders import (
    LengthGroupedSampler,
    LoaderPosition,
    LoaderPositionInCheckpoints,
    ResumableLoader,
    collate_groups,
    collate_pairs,
    padding_fraction,
)
from varirm.on_policy import GroupSource, PairsWithGroups, on_policy_pair_rows, prompt_subset
from varirm.packing import collate_packed_pairs
from varirm.sampling import read_samples, tokenize_groups
from varirm.scoring import label_samples

CACHE_VERSION = "2"  # bump when normalization or tokenization changes meaning
Sources = Union[str, list[str], None]


def tokenize_pairs(batch: dict[str, list], tokenizer, max_length: int) -> dict[str, list]:
    """``datasets.map`` function (batched): ids for chosen and rejected, already cut to
    ``max_length`` (see :func:`varirm.chat.fit_to_length`), and whether either side was longer."""
    out: dict[str, list] = {"chosen_ids": [], "rejected_ids": [], "overlong": [], "length": []}
    for i in range(len(batch["chosen"])):
        prompt = batch["prompt_messages"][i] or batch["prompt_text"][i]
        p_ids, c_ids = encode_prompt_response(tokenizer, prompt, batch["chosen"][i])
        _, r_ids = encode_prompt_response(tokenizer, prompt, batch["rejected"][i])
        out["overlong"].append(len(p_ids) + max(len(c_ids), len(r_ids)) > max_length)
        out["chosen_ids"].append(fit_to_length(p_ids, c_ids, max_length))
        out["rejected_ids"].append(fit_to_length(p_ids, r_ids, max_length))
        out["length"].append(max(len(out["chosen_ids"][-1]), len(out["rejected_ids"][-1])))  # what a batch pads to
    return out


class PreferenceDataModule(LoaderPositionInCheckpoints, LightningDataModule):
    """Preference pairs for Bradley-Terry reward-model training.

    Args:
        tokenizer_name_or_path: Hub id or local directory of the tokenizer (linked from the model's
            ``model_name_or_path`` by the CLI, so both load the same one).
        train: Training data: local ``.json``/``.jsonl``/``.parquet`` file(s) or a Hub dataset id.
        val: Validation data, same kinds as ``train``; ``None`` for none (or use ``val_fraction``).
        test: Test data, same kinds as ``train``.
        train_split: Split name used when ``train`` is a Hub dataset id.
        val_split: Split name used when ``val`` is a Hub dataset id.
        test_split: Split name used when ``test`` is a Hub dataset id.
        val_fraction: Fraction of ``train`` held out for validation when ``val`` is not given.
        format: Data format; ``auto`` detects it from the first row's fields.
        columns: Rename map, canonical field -> field in the data, e.g. ``{prompt: question}``.
        max_length: Longest tokenized (prompt + response) kept, in tokens.
        overlong: What to do with longer rows: ``truncate`` (cut the prompt from the left, keep
            the end of the response) or ``drop``. Counted and printed either way.
        on_bad_rows: ``error`` stops at the first bad row with file, row and field; ``skip``
            leaves bad rows out, counts them and writes them to ``<run dir>/rejects/``.
        batch_size: Pairs per training step per process (each pair is two sequences).
        eval_batch_size: Pairs per validation/test step; defaults to ``batch_size``.
        length_grouping: Group rows of similar length into batches to spend less on padding.
        pad_to_multiple_of: Pad the time dimension to a multiple of this (8 helps tensor cores).
        packing: Padding-free training batches (:mod:`varirm.packing`): a batch's sequences back to back in
            one row, attention kept inside each; the same loss and gradients as padded batches.
        num_workers: DataLoader worker processes.
        cache_dir: Where tokenized data is cached (default ``$VARIRM_CACHE`` or ``~/.cache/varirm``).
        seed: Seed for shuffling and for the ``val_fraction`` split.
        trust_remote_code: Allow custom tokenizer code from the Hub.
        policy_samples: Samples file (``varirm sample``) whose groups of ``k`` responses feed the
            variance regularizer: ``groups_per_batch`` groups ride along with every training batch.
        groups_per_batch: Prompts (each with its ``k`` samples) per training step and process.
        group_prompts: Use only this many prompts of ``policy_samples`` (a random subset drawn with
            ``seed``): the label budget of the labelled group objectives.
        group_labels: Label the policy-sample groups with the ``labeler`` (or the file's ``gold``):
            needed by ``model.group_objective`` ``aligned_variance``, ``listwise`` and ``pairs``.
        val_policy_samples: Samples file for on-policy validation: whitened reward variance and,
            with gold labels (``gold`` in the file or a ``labeler``), on-policy accuracy.
        labeler: Labels policy samples: a reward-model directory / ``.ckpt`` or the dotted path of a
            callable ``(prompt, response) -> float`` such as ``varirm.synthetic.gold_reward``.
        on_policy_samples: Samples file turned into labelled on-policy pairs (one per prompt).
        on_policy_fraction: Share of the training pairs taken from ``on_policy_samples``; the
            total stays the number of off-policy pairs (Razin et al.'s 0-100% on-policy mixes).
        on_policy_bt_temperature: Label noise of on-policy pairs: 0 prefers the higher label;
            above 0, Bradley-Terry draws ``P(a > b) = sigmoid((l_a - l_b) / temperature)``.
    """

    def __init__(
        self,
        tokenizer_name_or_path: str = "",
        train: Sources = None,
        val: Sources = None,
        test: Sources = None,
        train_split: str = "train",
        val_split: str = "test",
        test_split: str = "test",
        val_fraction: float = 0.0,
        format: Format = "auto",
        columns: Optional[dict[str, str]] = None,
        max_length: int = 1024,
        overlong: Literal["truncate", "drop"] = "truncate",
        on_bad_rows: Literal["error", "skip"] = "error",
        batch_size: int = 8,
        eval_batch_size: Optional[int] = None,
        length_grouping: bool = True,
        pad_to_multiple_of: int = 1,
        packing: bool = False,
        num_workers: int = 0,
        cache_dir: Optional[str] = None,
        seed: int = 0,
        trust_remote_code: bool = False,
        policy_samples: Optional[str] = None,
        groups_per_batch: int = 4,
        group_prompts: Optional[int] = None,
        group_labels: bool = False,
        val_policy_samples: Optional[str] = None,
        labeler: Optional[str] = None,
        on_policy_samples: Optional[str] = None,
        on_policy_fraction: float = 0.0,
        on_policy_bt_temperature: float = 0.0,
    ):
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if not 0.0 <= on_policy_fraction <= 1.0:
            raise ConfigError(f"on_policy_fraction must be in [0, 1], got {on_policy_fraction}")
        if on_policy_fraction > 0 and not (on_policy_samples and labeler):
            raise ConfigError("on_policy_fraction > 0 needs on_policy_samples and a labeler")
        if policy_samples and groups_per_batch < 2:
            # one group whitened by its own mean/std always has variance k/(k-1): no gradient
            raise ConfigError(f"groups_per_batch must be at least 2 with policy_samples, got {groups_per_batch}")
        if (group_prompts is not None or group_labels) and not policy_samples:
            raise ConfigError("group_prompts and group_labels select and label policy_samples: set policy_samples")
        if packing and policy_samples:
            raise ConfigError("packing packs preference pairs only; with policy_samples use padded batches")
        if max_length < 2:
            raise ConfigError(f"max_length must be at least 2, got {max_length}")
        self.save_hyperparameters()
        self.tokenizer = None
        self.splits: dict[str, datasets.Dataset] = {}
        self.stats: dict[str, dict[str, Any]] = {}
        self.group_source: Optional[GroupSource] = None
        self.val_groups: Optional[list[dict[str, Any]]] = None
        self.train_position = LoaderPosition()

    # --- building -------------------------------------------------------------------------

    def _tokenizer(self):
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.hparams.tokenizer_name_or_path, self.hparams.trust_remote_code)
        return self.tokenizer

    def _sources(self) -> dict[str, list[tuple[str, str]]]:
        hp = self.hparams

        def as_list(value: Sources, split: str) -> list[tuple[str, str]]:
            if value is None or value == "":
                return []
            return [(v, split) for v in ([value] if isinstance(value, str) else value)]

        return {"train": as_list(hp.train, hp.train_split), "val": as_list(hp.val, hp.val_split),
                "test": as_list(hp.test, hp.test_split)}

    def _cache_dir(self) -> str:
        return self.hparams.cache_dir or os.environ.get("VARIRM_CACHE") or os.path.join(
            os.path.expanduser("~"), ".cache", "varirm")

    def labels(self, samples: list[dict[str, Any]]) -> list[list[float]]:
        """Labels of every sample (see :func:`varirm.scoring.label_samples`)."""
        return label_samples(samples, self.hparams.labeler)

    def _on_policy_rows(self, path: str):
        samples = read_samples(path)
        hp = self.hparams
        return on_policy_pair_rows(samples, self.labels(samples), hp.seed, hp.on_policy_bt_temperature), []

    def build(self, source: str, split: str, rows_fn=None,
              key_extra: str = "") -> tuple[datasets.Dataset, dict[str, Any]]:
        """Validated, tokenized pairs of one source (from cache when nothing changed) and counts.
        ``rows_fn`` replaces reading ``source`` as preference data (on-policy pairs)."""
        hp, tokenizer = self.hparams, self._tokenizer()
        key_parts = [CACHE_VERSION, source_fingerprint(source, split), split, hp.format,
                     json.dumps(hp.columns or {}, sort_keys=True), tokenizer_fingerprint(tokenizer),
                     str(hp.max_length), hp.on_bad_rows, key_extra]
        key = hashlib.sha256("\n".join(key_parts).encode()).hexdigest()[:24]
        cache = os.path.join(self._cache_dir(), "tokenized")
        arrow, meta = os.path.join(cache, f"{key}.arrow"), os.path.join(cache, f"{key}.json")
        if os.path.exists(arrow) and os.path.exists(meta):
            with open(meta) as f:
                info = json.load(f)
            return datasets.Dataset.from_file(arrow), info
        rows, rejects = rows_fn() if rows_fn else load_preference_rows(
            source, split, hp.format, hp.columns or {}, hp.on_bad_rows == "skip")
        os.makedirs(cache, exist_ok=True)
        ds = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict(
            {k: [] for k in ("prompt_messages", "prompt_text", "chosen", "rejected", "margin", "row",
                             "chosen_ids", "rejected_ids", "overlong", "length")})
        ds = ds.map(tokenize_pairs, batched=True, batch_size=256, fn_kwargs={"tokenizer": tokenizer,
                    "max_length": hp.max_length}, cache_file_name=arrow, new_fingerprint=key,
                    desc=f"tokenizing {os.path.basename(source)}")
        info = {"source": source, "rows_read": len(rows) + len(rejects), "bad_rows": len(rejects), "rejects": rejects}
        atomic_write_text(meta, json.dumps(info, default=str))  # the cache's commit marker: written last
        return ds, info

    def _build_on_policy(self):
        hp = self.hparams
        return self.build(hp.on_policy_samples, "on_policy", rows_fn=lambda: self._on_policy_rows(hp.on_policy_samples),
                          key_extra=f"on-policy pairs labelled by {hp.labeler} ({labeler_fingerprint(hp.labeler)}), "
                                    f"seed {hp.seed}" + (f", BT temperature {hp.on_policy_bt_temperature}"
                                                         if hp.on_policy_bt_temperature > 0 else ""))

    def prepare_data(self) -> None:
        # Runs once per node before setup (and before loggers write anything into the run
        # directory); fills the tokenization cache so DDP ranks only read it.
        for name, sources in self._sources().items():
            built = [self.build(source, split) for source, split in sources]
            usable = sum(len(ds) - (sum(ds["overlong"]) if self.hparams.overlong == "drop" else 0) for ds, _ in built)
            fitting = self.trainer is not None and self.trainer.state.fn == "fit"
            if fitting and name == "train" and built and not usable and not self.hparams.on_policy_fraction:
                read, bad = sum(i["rows_read"] for _, i in built), sum(i["bad_rows"] for _, i in built)
                raise DataError(", ".join(s for s, _ in sources), None, None,
                                f"no usable training pairs ({read} rows read, {bad} bad rows skipped, the rest over "
                                f"max_length={self.hparams.max_length} and dropped)")
        if self.hparams.on_policy_fraction > 0:
            self._build_on_policy()

    def setup(self, stage: Optional[str] = None) -> None:
        if self.splits:
            return
        hp = self.hparams
        built: dict[str, list[tuple[datasets.Dataset, dict]]] = {
            name: [self.build(s, sp) for s, sp in sources] for name, sources in self._sources().items()}
        if not built["train"] and stage in (None, "fit"):
            raise ConfigError("no training data: set data.train to a file or a Hub dataset id")
        for name, parts in built.items():
            if not parts:
                continue
            ds = datasets.concatenate_datasets([d for d, _ in parts]) if len(parts) > 1 else parts[0][0]
            overlong = sum(ds["overlong"])
            if hp.overlong == "drop" and overlong:
                ds = ds.filter(lambda flags: [not f for f in flags], input_columns="overlong", batched=True)
            self.splits[name] = ds
            self.stats[name] = {
                "rows_read": sum(i["rows_read"] for _, i in parts), "bad_rows": sum(i["bad_rows"] for _, i in parts),
                "overlong": overlong, "overlong_policy": hp.overlong, "pairs": len(ds),
                "rejects": [r for _, i in parts for r in i["rejects"]]}
        if "val" not in self.splits and hp.val_fraction > 0 and "train" in self.splits:
            parts = self.splits["train"].train_test_split(test_size=hp.val_fraction, seed=hp.seed)
            self.splits["train"], self.splits["val"] = parts["train"], parts["test"]
            self.stats["train"]["pairs"] = len(self.splits["train"])
            self.stats["val"] = {"rows_read": 0, "bad_rows": 0, "overlong": sum(self.splits["val"]["overlong"]),
                                 "overlong_policy": hp.overlong, "pairs": len(self.splits["val"]), "rejects": [],
                                 "held_out_from": "train", "val_fraction": hp.val_fraction}
        if hp.on_policy_fraction > 0 and "train" in self.splits:
            self._mix_on_policy()
        if hp.policy_samples:
            samples = prompt_subset(read_samples(hp.policy_samples), hp.group_prompts, hp.seed, hp.policy_samples)
            gold = self.labels(samples) if hp.group_labels else None
            self.group_source = GroupSource(tokenize_groups(
                self._tokenizer(), [r["prompt"] for r in samples], [r["responses"] for r in samples], hp.max_length,
                gold))
        if hp.val_policy_samples:
            samples = read_samples(hp.val_policy_samples)
            # gold for on-policy acc
            gold = self.labels(samples) if (hp.labeler or all("gold" in r for r in samples)) else None
            self.val_groups = tokenize_groups(self._tokenizer(), [r["prompt"] for r in samples],
                                              [r["responses"] for r in samples], hp.max_length, gold)
        self._report()
        if stage in (None, "fit") and "train" in self.splits and len(self.splits["train"]) == 0:
            raise DataError(", ".join(src for src, _ in self._sources()["train"]), None, None,
                            "no usable training pairs (every row was bad or dropped); see the counts above")

    def _mix_on_policy(self) -> None:
        """Replace ``on_policy_fraction`` of the training pairs by labelled on-policy pairs; the
        number of training pairs stays the same."""
        hp = self.hparams
        off, info = self.splits["train"], self.stats["train"]
        on, _ = self._build_on_policy()
        on_overlong = sum(on["overlong"])
        if hp.overlong == "drop" and on_overlong:
            on = on.filter(lambda flags: [not f for f in flags], input_columns="overlong", batched=True)
        n_on = round(hp.on_policy_fraction * len(off))
        if n_on > len(on):
            raise ConfigError(f"{hp.on_policy_samples}: on_policy_fraction={hp.on_policy_fraction} needs {n_on} "
                              f"on-policy pairs but the samples give {len(on)} (one per prompt with differing "
                              "labels); sample more prompts")
        g = torch.Generator().manual_seed(hp.seed)
        pick_on = torch.randperm(len(on), generator=g)[:n_on].sort().values.tolist()
        pick_off = torch.randperm(len(off), generator=g)[:len(off) - n_on].sort().values.tolist()
        columns = ["chosen_ids", "rejected_ids", "margin", "overlong", "length"]
        self.splits["train"] = datasets.concatenate_datasets(
            [off.select(pick_off).select_columns(columns), on.select(pick_on).select_columns(columns)])
        self.stats["train"] = {**info, "pairs": len(self.splits["train"]), "on_policy_pairs": n_on,
                               "off_policy_pairs": len(off) - n_on, "on_policy_overlong": on_overlong}

    def _report(self) -> None:
        hp = self.hparams
        run_dir = self.trainer.default_root_dir if self.trainer is not None else None
        lines = []
        for name, s in self.stats.items():
            verb = "truncated" if s["overlong_policy"] == "truncate" else "dropped"
            line = (f"data/{name}: {s['pairs']} pairs from {s['rows_read']} rows; {s['overlong']} over "
                    f"max_length={hp.max_length} {verb}; {s['bad_rows']} bad rows skipped")
            if s["rejects"] and run_dir and self.trainer.is_global_zero:
                path = os.path.join(run_dir, "rejects", f"{name}.jsonl")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    for r in s["rejects"]:
                        f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")
                line += f" (written to {path})"
            if name == "train":
                lengths = self.lengths("train")
                grouped = LengthGroupedSampler(lengths, hp.batch_size, seed=hp.seed).global_batches()
                shuffled = LengthGroupedSampler(lengths, hp.batch_size, seed=hp.seed, bucket_batches=1).global_batches()
                s["padding_fraction"] = padding_fraction(lengths, grouped if hp.length_grouping else shuffled)
                s["padding_fraction_random_order"] = padding_fraction(lengths, shuffled)
                line += (f"; padding {100 * s['padding_fraction']:.1f}% of tokens "
                         f"(random order: {100 * s['padding_fraction_random_order']:.1f}%)")
            lines.append(line)
        for line in lines:
            rank_zero_info(line)
        if run_dir and self.trainer.is_global_zero:
            stats = {k: {kk: vv for kk, vv in v.items() if kk != "rejects"} for k, v in self.stats.items()}
            atomic_write_text(os.path.join(run_dir, "data_stats.json"), json.dumps(stats, indent=2))

    def lengths(self, split: str) -> list[int]:
        """Per pair, the longer of chosen/rejected in tokens (what the batch is padded to)."""
        return list(self.splits[split]["length"])

    # --- loaders --------------------------------------------------------------------------

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        hp = self.hparams
        world, rank = 1, 0
        if self.trainer is not None:
            world, rank = self.trainer.world_size, self.trainer.global_rank
        ds = self.splits[split].select_columns(["chosen_ids", "rejected_ids", "margin"])
        sampler = LengthGroupedSampler(self.lengths(split), batch_size, world, rank, shuffle=shuffle, seed=hp.seed,
                                       bucket_batches=64 if hp.length_grouping or not shuffle else 1)
        pad_id = self._tokenizer().pad_token_id
        if split == "train" and self.group_source is not None:
            collate = PairsWithGroups(pad_id, hp.pad_to_multiple_of, self.group_source, hp.groups_per_batch,
                                      hp.seed, rank, world)
        elif split == "train" and hp.packing:
            collate = collate_packed_pairs
        else:
            collate = partial(collate_pairs, pad_token_id=pad_id, pad_to_multiple_of=hp.pad_to_multiple_of)
        return ResumableLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=hp.num_workers,
                               collate_fn=collate, persistent_workers=hp.num_workers > 0,
                               position=self.train_position if split == "train" else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.hparams.batch_size, shuffle=True)

    def val_dataloader(self):
        """Preference pairs (``dataloader_idx`` 0) and, with ``val_policy_samples``, policy-sample
        groups (``dataloader_idx`` 1)."""
        hp = self.hparams
        loaders = ([self._loader("val", hp.eval_batch_size or hp.batch_size, shuffle=False)]
                   if "val" in self.splits else [])
        if self.val_groups:
            if not loaders:
                raise ConfigError("val_policy_samples needs val pairs too (val or val_fraction)")
            loaders.append(DataLoader(self.val_groups, batch_size=max(hp.groups_per_batch, 8), shuffle=False,
                                      collate_fn=partial(collate_groups, pad_token_id=self._tokenizer().pad_token_id)))
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.eval_batch_size or self.hparams.batch_size, shuffle=False)
