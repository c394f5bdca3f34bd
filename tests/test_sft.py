import csv
import json
import os

import pytest
import torch
from conftest import REPO

from varirm.cli import cli_main
from varirm.sft import collate_sft
from varirm.synthetic import make_demos


def test_collate_sft_labels_only_the_response_by_hand():
    batch = collate_sft([{"input_ids": [5, 6, 7, 8], "prompt_len": 2}, {"input_ids": [9, 10], "prompt_len": 1}], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [9, 10, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8], [-100, 10, -100, -100]]


@pytest.mark.slow
def test_sft_lowers_the_loss_and_saves_a_loadable_policy(tmp_path, tiny_model_dir):
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps(r) + "\n" for r in make_demos(512, seed=0)))
    out = tmp_path / "pi0"
    cli_main(["sft", "--config", str(REPO / "recipes" / "sft_synthetic.yaml"), "--trainer.default_root_dir",
              str(tmp_path / "run"), "--trainer.max_epochs", "3", "--trainer.precision", "32-true",
              "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "2",
              "--model.init_args.model_name_or_path", tiny_model_dir, "--model.init_args.save_dir", str(out),
              "--data.init_args.train", str(demos)])
    rows = list(csv.DictReader(open(tmp_path / "run" / "csv" / "version_0" / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert losses[-1] < 0.8 * losses[0], losses
    from varirm.sampling import load_policy

    policy, tokenizer = load_policy(str(out))
    assert sorted(os.listdir(tmp_path)) == ["demos.jsonl", "pi0", "run"]  # no temporary directory left
    ids = tokenizer("hi", return_tensors="pt")["input_ids"]
    assert torch.isfinite(policy(ids).logits).all()
