"""Exact resume: a run SIGKILLed after a mid-epoch checkpoint and resumed with ``--ckpt_path last``
ends with the same weights and metrics as an uninterrupted run, for ``varirm fit``, ``sft`` and
``rloo`` (the loaders save their place in the epoch, the RNG states are restored)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from torch.testing import assert_close

from varirm.loaders import EpochShuffleSampler, LengthGroupedSampler, LoaderPosition, ResumableLoader
from varirm.synthetic import make_demos, make_prompts

TESTS = os.path.dirname(__file__)


def test_epoch_shuffle_sampler_gives_the_orders_of_a_seeded_shuffling_dataloader():
    n, batch = 23, 4
    loader = torch.utils.data.DataLoader(list(range(n)), batch_size=batch, shuffle=True,
                                         generator=torch.Generator().manual_seed(5), collate_fn=list)
    sampler = EpochShuffleSampler(n, batch, seed=5)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert [i for b in loader for i in b] == list(sampler)


@pytest.mark.parametrize("make", [lambda: EpochShuffleSampler(23, 4, seed=1),
                                  lambda: LengthGroupedSampler([i % 7 for i in range(23)], 4, seed=1,
                                                               bucket_batches=2)])
def test_resumable_loader_continues_with_the_next_unseen_batch(make):
    data = list(range(23))
    full = ResumableLoader(data, batch_size=4, sampler=make(), collate_fn=list)
    full.sampler.set_epoch(2)
    expected = list(full)
    first = ResumableLoader(data, batch_size=4, sampler=make(), collate_fn=list)
    first.sampler.set_epoch(2)
    it = iter(first)
    seen = [next(it) for _ in range(3)]
    state = first.state_dict()
    assert state == {"epoch": 2, "batches": 3}
    resumed = ResumableLoader(data, batch_size=4, sampler=make(), collate_fn=list, position=LoaderPosition())
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(2)
    assert seen + list(resumed) == expected
    assert list(resumed) == expected  # the skip applies once; the next pass is a whole epoch
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(3)  # a saved position of another epoch is ignored
    assert len(list(resumed)) == len(expected)


def run_varirm(args: list[str], run_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "varirm", "--verbose", *args,
                           "--trainer.default_root_dir", str(run_dir), "--trainer.precision", "32-true",
                           "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"],
                          capture_output=True, text=True, env=env, cwd=str(run_dir.parent))


def checkpoint_every(tmp_path, run_dir, every: int, kill_at: int | None) -> str:
    """A recipe fragment: checkpoints every ``every`` steps (and last), and a SIGKILL at ``kill_at``."""
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(run_dir / "checkpoints"), "every_n_train_steps": every,
                                "save_last": True, "save_top_k": -1}}]
    if kill_at is not None:
        callbacks.append({"class_path": "conftest.KillAtStep", "init_args": {"step": kill_at}})
    path = tmp_path / f"callbacks_{run_dir.name}.yaml"
    path.write_text(json.dumps({"trainer": {"callbacks": callbacks}}))
    return str(path)


def metrics(run_dir) -> list[dict[str, str]]:
    rows = []
    for version in sorted(os.listdir(run_dir / "csv"), key=lambda v: int(v.split("_")[1])):
        with open(run_dir / "csv" / version / "metrics.csv") as f:
            rows += list(csv.DictReader(f))
    return rows


def logged(run_dir, key: str) -> list[tuple[str, str]]:
    """``(step, value)`` of every logged ``key``, over all attempts; a step logged twice (before
    the kill and again after the resume, from the last checkpoint on) keeps its last value."""
    out = {}
    for row in metrics(run_dir):
        if row.get(key):
            out[row["step"]] = row[key]
    return sorted(out.items(), key=lambda kv: int(kv[0]))


def assert_killed_then_resumed_matches(tmp_path, args: list[str], every: int, kill_at: int, keys: list[str]) -> None:
    full, split = tmp_path / "full", tmp_path / "split"
    proc = run_varirm([*args, "--config", checkpoint_every(tmp_path, full, every, None)], full)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_varirm([*args, "--config", checkpoint_every(tmp_path, split, every, kill_at)], split)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    saved = torch.load(split / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == kill_at - kill_at % every  # a mid-epoch checkpoint...
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] > 0
    proc = run_varirm([*args, "--config", checkpoint_every(tmp_path, split, every, None), "--ckpt_path", "last"], split)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not resumable" not in proc.stderr  # Lightning warns when a loader would replay the epoch
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(split / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"]
    for k in a["state_dict"]:
        assert_close(a["state_dict"][k], b["state_dict"][k], atol=1e-6, rtol=1e-5, msg=k)
    for key in keys:
        assert logged(full, key) and logged(full, key) == logged(split, key), key


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [11, 22])  # epoch 0 after step 10; epoch 1 (16 steps an epoch) after step 20
def test_fit_killed_mid_epoch_resumes_exactly(tmp_path, tiny_model_dir, synthetic_dir, kill_at):
    args = ["fit", "--config", str(REPO / "recipes" / "quickstart.yaml"), "--trainer.max_epochs", "2",
            "--trainer.log_every_n_steps", "1", "--trainer.val_check_interval", "1.0",
            "--model.init_args.model_name_or_path", tiny_model_dir,
            "--data.init_args.train", str(synthetic_dir / "train.jsonl"),
            "--data.init_args.val", str(synthetic_dir / "val.jsonl"), "--data.init_args.test", "null"]
    assert_killed_then_resumed_matches(tmp_path, args, 5, kill_at, ["train/loss", "val/acc"])


@pytest.mark.slow
def test_sft_killed_mid_epoch_resumes_exactly(tmp_path, tiny_model_dir):
    demos = tmp_path / "demos.jsonl"
    demos.write_text("".join(json.dumps(r) + "\n" for r in make_demos(320, seed=0)))
    args = ["sft", "--config", str(REPO / "recipes" / "sft_synthetic.yaml"), "--trainer.max_epochs", "2",
            "--trainer.log_every_n_steps", "1", "--model.init_args.model_name_or_path", tiny_model_dir,
            "--data.init_args.train", str(demos), "--data.init_args.batch_size", "32"]
    save = ["--model.init_args.save_dir"]
    # each run saves its policy to its own directory
    full_args = [*args, *save, str(tmp_path / "pi0_full")]
    split_args = [*args, *save, str(tmp_path / "pi0_split")]
    full, split = tmp_path / "full", tmp_path / "split"
    assert run_varirm([*full_args, "--config", checkpoint_every(tmp_path, full, 3, None)], full).returncode == 0
    assert (run_varirm([*split_args, "--config", checkpoint_every(tmp_path, split, 3, 14)], split).returncode
            == -signal.SIGKILL)
    proc = run_varirm([*split_args, "--config", checkpoint_every(tmp_path, split, 3, None),
                       "--ckpt_path", "last"], split)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not resumable" not in proc.stderr
    assert logged(full, "train/loss") == logged(split, "train/loss")
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(split / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for k in a:
        assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)


@pytest.mark.slow
def test_rloo_killed_mid_epoch_resumes_exactly(tmp_path, tiny_model_dir):
    # RLOO samples from the policy at every step: the torch RNG state must come back too
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in make_prompts(64, seed=1)))
    args = ["rloo", "--config", str(REPO / "recipes" / "rloo" / "synthetic_gold.yaml"), "--trainer.max_steps", "12",
            "--trainer.log_every_n_steps", "1", "--model.init_args.policy_name_or_path", tiny_model_dir,
            "--data.init_args.prompts", str(prompts)]
    assert_killed_then_resumed_matches(tmp_path, args, 4, 6, ["rloo/gold_reward", "rloo/proxy_reward"])


def test_random_state_gives_each_process_its_own_generators_back():
    """A DDP checkpoint holds every process's RNG states (``{"ranks": [...]}``): process ``r`` of
    the same number of processes gets state ``r`` back, of another number rank 0's."""
    from types import SimpleNamespace

    from varirm.callbacks import RandomState

    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(RandomState().state_dict())  # one process: the plain states
    for world, rank, expected in [(2, 1, 1), (2, 0, 0), (4, 3, 0)]:
        callback = RandomState()
        callback.load_state_dict({"ranks": states})
        torch.manual_seed(99)
        callback.on_train_start(SimpleNamespace(global_rank=rank, world_size=world), None)
        assert torch.equal(torch.get_rng_state(), states[expected]["torch"]), (world, rank)


def test_epoch_shuffle_sampler_splits_each_global_batch_over_processes():
    """23 prompts, 2 processes x batch 3: process r's i-th batch is positions r, r + 2, ... of the
    i-th batch of 6 one process draws; the order is padded by its start to 24 (like
    DistributedSampler), and a resumed process skips its own batches."""
    one = EpochShuffleSampler(23, 6, seed=4)
    one.set_epoch(1)
    order = list(one)
    padded = order + order[:1]
    parts = []
    for rank in range(2):
        sampler = EpochShuffleSampler(23, 3, seed=4, num_replicas=2, rank=rank)
        sampler.set_epoch(1)
        parts.append(list(sampler))
        assert len(sampler) == len(parts[-1]) == 12
        for i in range(4):
            assert parts[-1][3 * i:3 * i + 3] == padded[6 * i:6 * i + 6][rank::2]
        sampler.skip_batches = 2
        assert list(sampler) == parts[-1][6:]
    assert sorted(parts[0] + parts[1]) == sorted(padded) and set(parts[0]).isdisjoint(parts[1][:-1])
