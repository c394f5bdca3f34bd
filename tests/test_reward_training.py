"""End-to-end: the CLI trains a tiny RM from the shipped quickstart recipe (with overrides)."""

import csv
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, SimulatedCrash
from torch.testing import assert_close

from varirm.cli import cli_main
from varirm.errors import VarirmError

RECIPE = str(REPO / "recipes" / "quickstart.yaml")


def fit_args(run_dir, model_dir, data_dir, *extra):
    return ["fit", "--config", RECIPE,
            "--trainer.default_root_dir", str(run_dir),
            "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.val_check_interval", "1.0",
            "--model.init_args.model_name_or_path", str(model_dir),
            "--data.init_args.train", str(data_dir / "train.jsonl"),
            "--data.init_args.val", str(data_dir / "val.jsonl"),
            "--data.init_args.test", str(data_dir / "test.jsonl"),
            *extra]


def assert_same_training(a: dict, b: dict, measured: str) -> None:
    """Two runs' final weights agree up to floating-point reduction order. Adam divides by the root
    of the squared gradients, so a weight whose gradients are near Adam's eps (a rarely seen
    token's embedding) turns reduction-order rounding into updates of up to ~1e-4: at most 0.01% of
    the elements may differ by up to 5e-4; everything else within atol 1e-5, rtol 1e-4. A broken
    synchronization moves most elements (e.g. 1.8e-2 with per-process regularizer statistics)."""
    total = off = 0
    for k in a:
        diff = (a[k].float() - b[k].float()).abs()
        assert diff.max() <= 5e-4, (k, float(diff.max()), measured)
        off += int((diff > 1e-5 + 1e-4 * b[k].float().abs()).sum())
        total += diff.numel()
    assert off <= max(1, total // 10000), (off, total, measured)


def read_metrics(run_dir):
    """Rows of every attempt's metrics.csv (first run, then each resume), in order."""
    base = os.path.join(run_dir, "csv")
    rows = []
    for version in sorted(os.listdir(base), key=lambda v: int(v.split("_")[1])):
        with open(os.path.join(base, version, "metrics.csv")) as f:
            rows += list(csv.DictReader(f))
    return rows


def last_weights(run_dir):
    return torch.load(os.path.join(run_dir, "checkpoints", "last.ckpt"), map_location="cpu",
                      weights_only=False)["state_dict"]


@pytest.fixture(scope="module")
def larger_synthetic(tmp_path_factory):
    from varirm.synthetic import write_task

    out = tmp_path_factory.mktemp("synthetic_larger")
    write_task(str(out), n_train=2000, n_val=256, n_test=128, seed=0)
    return out


@pytest.mark.slow
def test_fit_learns_and_writes_a_run_directory(tmp_path, tiny_model_dir, larger_synthetic):
    run = tmp_path / "run"
    cli_main(fit_args(run, tiny_model_dir, larger_synthetic, "--trainer.max_epochs", "6"))
    for name in ("config.yaml", "csv/version_0/metrics.csv", "data_stats.json", "checkpoints/last.ckpt"):
        assert (run / name).exists(), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(run))
    config = (run / "config.yaml").read_text()
    assert "model_name_or_path: " + str(tiny_model_dir) in config
    assert "tokenizer_name_or_path" not in config  # linked from the model's path, never written twice
    rows = read_metrics(run)
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    accs = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    # the world's strong pairs are learned fast (0.74 after one epoch), and still rise after it
    assert len(accs) == 6 and accs[-1] >= 0.8 and accs[-1] > accs[0] + 0.05, accs
    # the checkpoint scores outside Lightning (varirm.scoring) exactly as validation did
    from varirm.formats import load_preference_rows
    from varirm.scoring import load_scorer, score

    rm, tokenizer = load_scorer(str(run / "checkpoints" / "last.ckpt"))
    rows, _ = load_preference_rows(str(larger_synthetic / "val.jsonl"), "val", "auto", {}, False)
    prompts = [r["prompt_messages"] for r in rows]
    chosen = score(rm, tokenizer, prompts, [r["chosen"] for r in rows], max_length=64)
    rejected = score(rm, tokenizer, prompts, [r["rejected"] for r in rows], max_length=64)
    assert abs((chosen > rejected).float().mean().item() - accs[-1]) < 0.02  # bf16 vs fp32 ties aside


@pytest.mark.slow
def test_resume_from_last_matches_uninterrupted_run(tmp_path, tiny_model_dir, synthetic_dir):
    full, split = tmp_path / "full", tmp_path / "split"
    cli_main(fit_args(full, tiny_model_dir, synthetic_dir, "--trainer.max_epochs", "2"))
    with pytest.raises(SimulatedCrash):
        cli_main(fit_args(split, tiny_model_dir, synthetic_dir, "--trainer.max_epochs", "2",
                          "--trainer.callbacks+=conftest.CrashAtEpoch"))
    with pytest.raises(VarirmError, match="already holds checkpoints"):  # never silently train over a run
        cli_main(fit_args(split, tiny_model_dir, synthetic_dir, "--trainer.max_epochs", "2"))
    cli_main(fit_args(split, tiny_model_dir, synthetic_dir, "--trainer.max_epochs", "2", "--ckpt_path", "last"))
    a, b = last_weights(full), last_weights(split)
    assert a.keys() == b.keys()
    for k in a:
        assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    acc_full = [r["val/acc"] for r in read_metrics(full) if r.get("val/acc")]
    acc_split = [r["val/acc"] for r in read_metrics(split) if r.get("val/acc")]
    assert acc_split == acc_full  # first attempt's log kept, the resume's added, same values


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tmp_path, tiny_model_dir, synthetic_dir):
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--trainer.max_epochs", "1", "--trainer.accelerator", "cpu"]
    cli_main(fit_args(one, tiny_model_dir, synthetic_dir, *common, "--data.init_args.batch_size", "16"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "varirm", *fit_args(two, tiny_model_dir, synthetic_dir, *common,
                           "--data.init_args.batch_size", "8", "--trainer.strategy", "ddp", "--trainer.devices", "2")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = last_weights(one), last_weights(two)
    assert_same_training(a, b, "measured: max difference 9.4e-7 (AVX2 EPYC); "
                               "1 of 38272 elements off by 8.9e-5 (AMX Xeon)")
    m1 = [r for r in read_metrics(one) if r.get("val/acc")][-1]
    m2 = [r for r in read_metrics(two) if r.get("val/acc")][-1]
    assert abs(float(m1["val/acc"]) - float(m2["val/acc"])) <= 0.02
    assert abs(float(m1["val/loss"]) - float(m2["val/loss"])) <= 1e-3


def write_policy_samples(path, n_prompts: int = 16, k: int = 4, seed: int = 9):
    """A samples file of the synthetic world: ``k`` responses for each of ``n_prompts`` prompts."""
    import json
    import random

    from varirm.synthetic import make_prompts, pi0_demo, prompt_topic

    rng = random.Random(0)
    with open(path, "w") as f:
        for row in make_prompts(n_prompts, seed=seed):
            topic = prompt_topic(row["prompt"][0]["content"])
            f.write(json.dumps({"prompt": row["prompt"], "policy": "synthetic",
                                "responses": [pi0_demo(rng, topic, 0.6 * rng.random()) for _ in range(k)]}) + "\n")
    return path


@pytest.mark.slow
def test_ddp_with_the_variance_regularizer_matches_one_process(tmp_path, tiny_model_dir, synthetic_dir):
    """The regularizer whitens by the statistics of every process's groups (gathered with
    gradients) and the processes draw the groups one process would: 2 processes x (8 pairs, 2
    groups) train like 1 process x (16 pairs, 4 groups)."""
    samples = str(write_policy_samples(tmp_path / "samples.jsonl"))
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--model.init_args.variance_coef", "0.5",
              "--data.init_args.policy_samples", samples]
    cli_main(fit_args(one, tiny_model_dir, synthetic_dir, *common, "--data.init_args.batch_size", "16",
                      "--data.init_args.groups_per_batch", "4"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "varirm", *fit_args(two, tiny_model_dir, synthetic_dir, *common,
                           "--data.init_args.batch_size", "8", "--data.init_args.groups_per_batch", "2",
                           "--trainer.strategy", "ddp", "--trainer.devices", "2")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = last_weights(one), last_weights(two)
    assert_same_training(a, b, "measured: 5.0e-7 (per-process statistics: 1.8e-2)")
    m1 = [r for r in read_metrics(one) if r.get("val/acc")][-1]
    m2 = [r for r in read_metrics(two) if r.get("val/acc")][-1]
    assert abs(float(m1["val/acc"]) - float(m2["val/acc"])) <= 0.02
    assert abs(float(m1["val/loss"]) - float(m2["val/loss"])) <= 1e-3


@pytest.mark.slow
def test_lora_run_checkpoints_only_trainable_weights_and_tests_from_them(tmp_path, tiny_model_dir, synthetic_dir):
    run = tmp_path / "lora"
    cli_main(fit_args(run, tiny_model_dir, synthetic_dir, "--trainer.max_epochs", "1", "--model.init_args.lora_r", "4"))
    state = last_weights(run)
    assert state and all("lora_" in k or "score" in k for k in state), list(state)[:5]
    cli_main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
              "--trainer.logger", "false"])


def test_variance_coef_warms_up_linearly(tiny_model_dir):
    from types import SimpleNamespace

    from varirm.reward_training import RewardModelModule

    module = RewardModelModule(tiny_model_dir, variance_coef=0.2, variance_warmup_ratio=0.5)
    assert module.variance_coef_now() == 0.2  # no trainer: full weight
    for step, expected in [(0, 0.0), (25, 0.1), (50, 0.2), (90, 0.2)]:
        module._trainer = SimpleNamespace(estimated_stepping_batches=100, global_step=step)
        assert abs(module.variance_coef_now() - expected) < 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("normalization", ["batch", "pairs"])
def test_fit_with_regularizer_logs_on_policy_variance_and_accuracy(tmp_path, tiny_model_dir, synthetic_dir,
                                                                   normalization):
    import json
    import random

    from varirm.synthetic import make_prompts, pi0_demo, prompt_topic

    rng = random.Random(0)
    samples = tmp_path / "samples.jsonl"
    with open(samples, "w") as f:
        for row in make_prompts(16, seed=9):
            topic = prompt_topic(row["prompt"][0]["content"])
            f.write(json.dumps({"prompt": row["prompt"], "policy": "synthetic",
                                "responses": [pi0_demo(rng, topic, rng.uniform(0, 0.6)) for _ in range(4)]}) + "\n")
    run = tmp_path / "reg"
    cli_main(fit_args(run, tiny_model_dir, synthetic_dir, "--trainer.max_epochs", "1",
                      "--model.init_args.variance_coef", "0.1",
                      "--model.init_args.variance_normalization", normalization,
                      "--data.init_args.policy_samples", str(samples), "--data.init_args.groups_per_batch", "2",
                      "--data.init_args.val_policy_samples", str(samples),
                      "--data.init_args.labeler", "varirm.synthetic.gold_reward"))
    rows = read_metrics(run)
    final = [r for r in rows if r.get("val_policy/whitened_variance")][-1]
    assert 0.0 < float(final["val_policy/whitened_variance"]) <= 4 / 3 + 1e-6  # at most k / (k - 1)
    assert 0.0 <= float(final["val_policy/acc"]) <= 1.0 and final.get("val/acc")
    assert [r for r in rows if r.get("train/group_whitened_variance")]


@pytest.mark.slow
def test_policy_samples_are_regenerated_every_n_steps(tmp_path, tiny_model_dir, synthetic_dir):
    import json

    from varirm.synthetic import make_prompts

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in make_prompts(6, seed=3)))
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"prompt": r["prompt"], "responses": ["apple", "dog", "red"]}) + "\n"
                               for r in make_prompts(6, seed=3)))
    run = tmp_path / "regen"
    cli = cli_main(fit_args(run, tiny_model_dir, synthetic_dir, "--trainer.max_epochs", "1",
                      "--model.init_args.variance_coef", "0.1",
                      "--data.init_args.policy_samples", str(samples), "--data.init_args.groups_per_batch", "2",
                      "--trainer.callbacks+=varirm.callbacks.RegenerateSamples",
                      "--trainer.callbacks.policy", str(tiny_model_dir), "--trainer.callbacks.prompts", str(prompts),
                      "--trainer.callbacks.every_n_steps", "5", "--trainer.callbacks.k", "3",
                      "--trainer.callbacks.max_new_tokens", "4"))
    from varirm.callbacks import RegenerateSamples
    from varirm.sampling import tokenize_groups

    callback = next(c for c in cli.trainer.callbacks if isinstance(c, RegenerateSamples))
    assert callback.regenerations == 512 // 32 // 5  # 16 steps, every 5 -> 3 regenerations
    initial = tokenize_groups(cli.datamodule.tokenizer, [r["prompt"] for r in make_prompts(6, seed=3)],
                              [["apple", "dog", "red"]] * 6, 64)
    assert [g["ids"] for g in cli.datamodule.group_source.groups] != [g["ids"] for g in initial]
    assert all(len(g["ids"]) == 3 for g in cli.datamodule.group_source.groups)


def test_labelled_group_objectives_train_on_a_label_budget(tmp_path, tiny_model_dir, synthetic_dir):
    """Each labelled objective trains end to end on a budget of labelled groups (the data module
    draws the same prompts for each), and one without labels is refused with the settings to fix."""
    samples = str(write_policy_samples(tmp_path / "samples.jsonl", n_prompts=12))
    common = ["--trainer.max_steps", "4", "--trainer.log_every_n_steps", "1", "--model.init_args.variance_coef", "1.0",
              "--data.init_args.policy_samples", samples, "--data.init_args.groups_per_batch", "2",
              "--data.init_args.group_prompts", "6", "--data.init_args.labeler", "varirm.synthetic.gold_reward"]
    for objective in ("aligned_variance", "listwise", "pairs"):
        run = tmp_path / objective
        cli_main(fit_args(run, tiny_model_dir, synthetic_dir, *common, "--data.init_args.group_labels", "true",
                          "--model.init_args.group_objective", objective))
        losses = [float(r["train/loss"]) for r in read_metrics(run) if r.get("train/loss")]
        assert losses and all(loss == loss for loss in losses), objective
    with pytest.raises(VarirmError, match="group_labels"):
        cli_main(fit_args(tmp_path / "unlabelled", tiny_model_dir, synthetic_dir, *common,
                          "--model.init_args.group_objective", "aligned_variance"))


def test_group_prompts_draws_one_subset_per_seed():
    from varirm.errors import ConfigError
    from varirm.on_policy import prompt_subset

    rows = [{"prompt": str(i)} for i in range(20)]
    a, b = prompt_subset(rows, 5, 3, "f.jsonl"), prompt_subset(rows, 5, 3, "f.jsonl")
    assert a == b and len(a) == 5 and a != prompt_subset(rows, 5, 4, "f.jsonl")
    assert [int(r["prompt"]) for r in a] == sorted(int(r["prompt"]) for r in a)  # file order kept
    assert prompt_subset(rows, None, 3, "f.jsonl") == rows
    with pytest.raises(ConfigError, match="f.jsonl: group_prompts=21"):
        prompt_subset(rows, 21, 0, "f.jsonl")
