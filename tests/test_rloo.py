import csv
import math

import pytest
import torch
from torch.testing import assert_close

from varirm.objectives import clipped_policy_loss, group_std_advantages, kl_estimate, rloo_advantages
from varirm.rloo import RLOOModule


def test_rloo_advantages_by_hand():
    r = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 0.0]])
    # 1 - (2 + 6) / 2 = -3; 2 - 3.5 = -1.5; 6 - 1.5 = 4.5; no spread -> no signal
    assert_close(rloo_advantages(r), torch.tensor([[-3.0, -1.5, 4.5], [0.0, 0.0, 0.0]]))
    assert_close(rloo_advantages(torch.tensor([[3.0, 1.0]])), torch.tensor([[2.0, -2.0]]))  # k = 2: r1 - r2
    with pytest.raises(ValueError, match="k >= 2"):
        rloo_advantages(torch.tensor([[1.0]]))


def test_group_std_advantages_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 6.0], [0.0, 4.0, 4.0]])
    # row 0: unbiased std of (1, 2, 6) = sqrt(((-2)^2 + (-1)^2 + 3^2) / 2) = sqrt(7);
    # row 1: sqrt((8/3)^2/2 + 2(4/3)^2/2) = sqrt(16/3)
    adv = rloo_advantages(rewards)  # [[-3, -1.5, 4.5], 1.5 x [-8/3, 4/3, 4/3] = [-4, 2, 2]]
    expected = torch.tensor([[-3.0, -1.5, 4.5]]) / (7 ** 0.5 + 0.5)
    expected = torch.cat([expected, torch.tensor([[-4.0, 2.0, 2.0]]) / ((16 / 3) ** 0.5 + 0.5)])
    assert_close(group_std_advantages(adv, rewards, eps=0.5), expected)
    # scale invariance: rewards x 10 give the same normalized advantages (up to eps)
    assert_close(group_std_advantages(rloo_advantages(10 * rewards), 10 * rewards, eps=0.0),
                 group_std_advantages(adv, rewards, eps=0.0))
    # a prompt whose samples all score the same keeps zero advantages (no division by zero)
    flat = torch.tensor([[2.0, 2.0]])
    assert_close(group_std_advantages(rloo_advantages(flat), flat), torch.zeros(1, 2))


@pytest.mark.parametrize("name, cls", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_rloo_optimizer_choice(name, cls):
    module = RLOOModule("unused", "unused", optimizer=name, lr=0.5)
    module.policy = torch.nn.Linear(2, 1)
    optimizer = module.configure_optimizers()
    assert type(optimizer) is cls and optimizer.param_groups[0]["lr"] == 0.5


def test_kl_estimators_by_hand():
    logp = torch.tensor([[math.log(0.5), math.log(0.2), 0.0]])
    ref = torch.tensor([[math.log(0.25), math.log(0.4), 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # third position is padding
    # k1: log 2 + log 0.5 = 0
    assert_close(kl_estimate(logp, ref, mask, "k1"), torch.tensor([0.0]), atol=1e-6, rtol=0)
    # k3 = (rho - 1) - log rho, rho = ref / pi: (0.5 - 1 + log 2) + (2 - 1 - log 2) = 0.5
    assert_close(kl_estimate(logp, ref, mask, "k3"), torch.tensor([0.5]), atol=1e-6, rtol=0)


def test_clipped_loss_by_hand_and_reinforce_gradient_at_ratio_one():
    adv = torch.tensor([1.0, -1.0, 1.0])
    old = torch.zeros(3)
    new = torch.log(torch.tensor([1.5, 1.5, 0.5]))
    # ratio 1.5, A=+1 -> min(1.5, 1.2) = 1.2; ratio 1.5, A=-1 -> min(-1.5, -1.2) = -1.5; ratio 0.5, A=+1 -> 0.5
    assert_close(clipped_policy_loss(new, old, adv, 0.2), torch.tensor([-1.2, 1.5, -0.5]))
    logp = torch.zeros(3, requires_grad=True)
    clipped_policy_loss(logp, logp.detach(), adv, 0.2).sum().backward()
    clipped = logp.grad.clone()
    logp.grad = None
    clipped_policy_loss(logp, logp.detach(), adv, None).sum().backward()
    assert_close(clipped, logp.grad)  # = -A
    assert_close(logp.grad, -adv)


@pytest.mark.slow
def test_rloo_against_the_gold_reward_raises_it(tmp_path, tiny_model_dir):
    """The whole loop on CPU: SFT a tiny pi0, then RLOO against the synthetic gold reward."""
    import csv
    import json

    from conftest import REPO

    from varirm.cli import cli_main
    from varirm.synthetic import make_demos, make_prompts

    demos, prompts = tmp_path / "demos.jsonl", tmp_path / "prompts.jsonl"
    demos.write_text("".join(json.dumps(r) + "\n" for r in make_demos(4000, seed=0)))
    prompts.write_text("".join(json.dumps(r) + "\n" for r in make_prompts(256, seed=1)))
    cli_main(["sft", "--config", str(REPO / "recipes" / "sft_synthetic.yaml"), "--trainer.default_root_dir",
              str(tmp_path / "sft"), "--trainer.enable_progress_bar", "false",
              "--model.init_args.model_name_or_path", tiny_model_dir,
              "--model.init_args.save_dir", str(tmp_path / "pi0"), "--data.init_args.train", str(demos)])
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps(r) + "\n" for r in make_prompts(64, seed=2)))
    cli = cli_main(["rloo", "--config", str(REPO / "recipes" / "rloo" / "synthetic_gold.yaml"),
                    "--trainer.default_root_dir", str(tmp_path / "rloo"), "--trainer.max_steps", "40",
                    "--trainer.log_every_n_steps", "2", "--trainer.enable_progress_bar", "false",
                    "--trainer.callbacks+=varirm.callbacks.PolicyEvaluation",
                    "--trainer.callbacks.prompts", str(held_out),
                    "--trainer.callbacks.every_n_steps", "100",
                    "--model.init_args.policy_name_or_path", str(tmp_path / "pi0"),
                    "--data.init_args.prompts", str(prompts)])
    rows = list(csv.DictReader(open(tmp_path / "rloo" / "csv" / "version_0" / "metrics.csv")))
    gold = [float(r["rloo/gold_reward"]) for r in rows if r.get("rloo/gold_reward")]
    assert len(gold) >= 8
    # held-out prompts, fixed sampling seed: pi0 before any update vs the policy after 20 RLOO steps
    curve = json.loads((tmp_path / "rloo" / "policy_eval.json").read_text())["curve"]
    assert [p["step"] for p in curve] == [0, 20], curve
    assert curve[-1]["gold_reward"] > curve[0]["gold_reward"] + 0.1, curve
    lengths = [float(r["rloo/response_length"]) for r in rows if r.get("rloo/response_length")]
    assert lengths[-1] >= 3, lengths  # improved by writing on-topic words, not by falling silent
    assert not torch.isnan(cli.model.reward_norm).any()  # measured on the first batch
    state = torch.load(tmp_path / "rloo" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert not any(k.startswith("reference.") for k in state) and any(k.startswith("policy.") for k in state)


def test_lora_policy_uses_its_adapter_disabled_base_as_reference(tmp_path, tiny_model_dir, synthetic_dir):
    """Under LoRA there is no reference copy: the KL reference is the base with adapters off. After
    training, the adapters moved the policy away from it; only adapters (and the reward
    normalization) are checkpointed; the evaluation callback leaves the training RNG untouched."""
    import json

    from lightning.pytorch import Trainer

    from varirm.callbacks import PolicyEvaluation
    from varirm.rloo import PromptDataModule, RLOOModule, token_logprobs

    module = RLOOModule(tiny_model_dir, "varirm.synthetic.gold_reward", gold="varirm.synthetic.gold_reward", k=2,
                        max_new_tokens=6, lora_r=4, lr=0.05, reward_shift=0.0, reward_scale=1.0)
    module.configure_model()
    assert module.reference is None
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    mask = torch.ones_like(ids)
    before = token_logprobs(module.policy, ids, mask)[0]
    assert_close(module._reference_logprobs(ids, mask), before)  # LoRA B starts at 0: same model

    callback = PolicyEvaluation(str(synthetic_dir / "eval_prompts.jsonl"), num_prompts=3, k=2, every_n_steps=2)
    torch.manual_seed(7)
    state = torch.random.get_rng_state()
    from lightning.pytorch.strategies import SingleDeviceStrategy

    trainer = type("T", (), {"global_step": 0, "loggers": [], "default_root_dir": str(tmp_path / "e"), "world_size": 1,
                             "global_rank": 0, "strategy": SingleDeviceStrategy("cpu")})()
    callback._evaluate(trainer, module)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert json.loads((tmp_path / "e" / "policy_eval.json").read_text())["curve"][0]["step"] == 0

    data = PromptDataModule(str(synthetic_dir / "prompts.jsonl"), num_prompts=8, batch_size=4)
    trainer = Trainer(max_steps=4, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path / "run"))
    trainer.fit(module, data)
    assert_close(module._reference_logprobs(ids, mask), before)  # the reference did not move
    assert not torch.allclose(token_logprobs(module.policy, ids, mask)[0], before)  # the policy did
    state_dict = torch.load(next((tmp_path / "run").rglob("*.ckpt")), weights_only=False)["state_dict"]
    assert state_dict and all("lora_" in k or k == "reward_norm" for k in state_dict), list(state_dict)[:5]


def test_policy_and_rm_with_different_tokenizers(tmp_path, tiny_model_dir, synthetic_dir):
    """The policy's samples are decoded, re-templated and re-tokenized by the RM's own tokenizer:
    the rewards RLOO uses equal scoring the decoded texts with the RM directly."""
    from varirm.chat import load_tokenizer
    from varirm.reward_model import load_reward_model
    from varirm.rloo import RLOOModule
    from varirm.sampling import read_prompts
    from varirm.scoring import load_scorer, score
    from varirm.tiny import make_tiny_model

    base = make_tiny_model(str(tmp_path / "gpt2"), arch="gpt2", vocab_size=300, seed=3)
    rm_tokenizer = load_tokenizer(base)
    load_reward_model(base, rm_tokenizer).save_pretrained(str(tmp_path / "gpt2-rm"), rm_tokenizer)  # score head saved
    rm, rm_tokenizer = load_scorer(str(tmp_path / "gpt2-rm"))
    module = RLOOModule(tiny_model_dir, str(tmp_path / "gpt2-rm"), k=2, max_new_tokens=6)
    module.configure_model()
    assert len(rm_tokenizer) != len(module.tokenizer)
    s = module._sample(read_prompts(str(synthetic_dir / "prompts.jsonl"), limit=3))
    assert len(s["responses"]) == 6 and s["input_ids"].shape[0] == 6
    rewards = torch.tensor(module.reward_fn(s["prompts"], s["responses"]))
    assert_close(rewards, score(rm, rm_tokenizer, s["prompts"], s["responses"]))


def test_token_logprobs_from_a_start_position_match_the_full_computation(tiny_model_dir):
    """Scoring only response positions (the LM head runs there alone) gives the same numbers as
    scoring every position and slicing, with left padding in the batch."""
    from transformers import AutoModelForCausalLM

    from varirm.rloo import token_logprobs

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(10, 200, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded prompt
    with torch.no_grad():
        full_logp, full_ent = token_logprobs(model, ids, mask)
        logp, ent = token_logprobs(model, ids, mask, start=5)
        no_ent = token_logprobs(model, ids, mask, start=5, entropy=False)[1]
    assert logp.shape == (3, 6) and no_ent is None
    assert_close(logp, full_logp[:, 5:], atol=1e-5, rtol=1e-5)
    assert_close(ent, full_ent[:, 5:], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_rloo_under_ddp_ranks_agree_and_resume(tmp_path, tiny_model_dir, synthetic_dir):
    """RLOO in 2 CPU processes (gloo): the processes sample different prompts, measure one reward
    normalization, end with the same weights and the same (synced) step metrics; the evaluation
    callback splits its prompts over the processes and its curve is what one process computes
    for those weights, written once; a run that fails at step 4 and resumes from its checkpoint
    ends like the uninterrupted 8-step run."""
    import json
    import os
    import subprocess
    import sys

    from conftest import REPO
    from lightning.pytorch.strategies import SingleDeviceStrategy

    from varirm.callbacks import PolicyEvaluation

    def run(run_dir, *extra):
        evaluation = {"prompts": str(synthetic_dir / "eval_prompts.jsonl"), "num_prompts": 6, "k": 2,
                      "every_n_steps": 2, "batch_size": 2}  # 3 generation batches: 2 in rank 0, 1 in rank 1
        callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                      "init_args": {"dirpath": str(run_dir / "checkpoints"), "every_n_train_steps": 4,
                                    "save_last": True, "save_top_k": -1}},
                     {"class_path": "varirm.callbacks.PolicyEvaluation", "init_args": evaluation},
                     {"class_path": "conftest.RankSnapshot"}, *extra]
        config = tmp_path / f"callbacks_{run_dir.name}.yaml"
        config.write_text(json.dumps({"trainer": {"callbacks": callbacks}}))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
        return subprocess.run([sys.executable, "-m", "varirm", "rloo", "--config",
                               str(REPO / "recipes" / "rloo" / "synthetic_gold.yaml"), "--config", str(config),
                               "--trainer.default_root_dir", str(run_dir), "--trainer.max_steps", "8",
                               "--trainer.log_every_n_steps", "1", "--trainer.precision", "32-true",
                               "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                               "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2",
                               "--model.init_args.policy_name_or_path", tiny_model_dir,
                               "--model.init_args.max_new_tokens", "8", "--data.init_args.batch_size", "4",
                               "--data.init_args.prompts", str(synthetic_dir / "prompts.jsonl"),
                               *(["--ckpt_path", "last"] if (run_dir / "checkpoints").is_dir() else [])],
                              capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=900)

    full, split = tmp_path / "full", tmp_path / "split"
    proc = run(full)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(full / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert sorted(r0["indices"] + r1["indices"]) == list(range(512))  # each process its own half of the prompts
    assert not torch.isnan(r0["reward_norm"]).any()
    assert_close(r0["reward_norm"], r1["reward_norm"], atol=0, rtol=0)  # measured on both first batches
    for k in r0["state_dict"]:
        assert_close(r0["state_dict"][k], r1["state_dict"][k], atol=0, rtol=0, msg=k)
    assert r0["metrics"] == r1["metrics"] and "rloo/gold_reward" in r0["metrics"]  # synced over processes
    rows = list(csv.DictReader(open(full / "csv" / "version_0" / "metrics.csv")))
    steps = [r["step"] for r in rows if r.get("rloo/proxy_reward")]
    assert len(steps) == 4 and len(set(steps)) == 4  # one row per RLOO step
    curve = json.loads((full / "policy_eval.json").read_text())["curve"]
    assert [p["step"] for p in curve] == [0, 2, 4]

    # the curve's last point is one process's evaluation of the final weights
    module = RLOOModule(tiny_model_dir, "varirm.synthetic.gold_reward", gold="varirm.synthetic.gold_reward", k=4,
                        max_new_tokens=8, ppo_epochs=2)
    module.configure_model()
    module.load_state_dict(torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"],
                           strict=False)
    callback = PolicyEvaluation(str(synthetic_dir / "eval_prompts.jsonl"), num_prompts=6, k=2, batch_size=2)
    trainer = type("T", (), {"global_step": 8, "loggers": [], "default_root_dir": str(tmp_path / "one"),
                             "world_size": 1, "global_rank": 0, "strategy": SingleDeviceStrategy("cpu")})()
    callback._evaluate(trainer, module)
    assert callback.curve[0] == pytest.approx(curve[-1], abs=1e-9)

    proc = run(split, {"class_path": "conftest.CrashAtStep", "init_args": {"step": 4}})
    assert proc.returncode != 0 and "simulated crash at step 4" in proc.stderr, proc.stderr[-3000:]
    proc = run(split)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(full / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(split / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 8
    for k in a["state_dict"]:
        assert_close(a["state_dict"][k], b["state_dict"][k], atol=1e-6, rtol=1e-5, msg=k)
    resumed = {r["step"]: r["rloo/gold_reward"] for v in ("version_0", "version_1")
               for r in csv.DictReader(open(split / "csv" / v / "metrics.csv")) if r.get("rloo/gold_reward")}
    assert resumed == {r["step"]: r["rloo/gold_reward"] for r in rows if r.get("rloo/gold_reward")}


def test_kl_penalty_keeps_the_policy_near_its_reference_in_every_setting(tmp_path, tiny_model_dir, synthetic_dir):
    """Against a fixed random reward, RLOO drifts from the reference; with beta 1 the final KL (the
    mean of the last steps' unbiased k1 estimates) is far below the KL with beta 0, for each
    accepted kl_in; the removed kl_estimator setting is a clear error."""
    from lightning.pytorch import Callback, Trainer

    from varirm.errors import ConfigError
    from varirm.rloo import PromptDataModule, RLOOModule

    class KeepKL(Callback):
        def __init__(self):
            self.kl = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.kl.append(float(trainer.callback_metrics["rloo/kl"]))

    def final_kl(beta, kl_in):
        torch.manual_seed(0)
        # fp32 sampling on every CPU (auto would sample in bf16 where it is native): the same drift everywhere
        module = RLOOModule(tiny_model_dir, "conftest.random_reward", k=4, beta=beta, kl_in=kl_in, lr=3e-3,
                            max_new_tokens=6, reward_shift=0.5, reward_scale=0.3, num_minibatches=2,
                            sampling_precision="fp32")
        keep = KeepKL()
        trainer = Trainer(max_steps=40, accelerator="cpu", logger=False, enable_progress_bar=False,
                          enable_model_summary=False, enable_checkpointing=False, callbacks=[keep],
                          default_root_dir=str(tmp_path / f"{kl_in}{beta}"))
        trainer.fit(module, PromptDataModule(str(synthetic_dir / "prompts.jsonl"), num_prompts=64, batch_size=8))
        return sum(keep.kl[-5:]) / 5

    free = final_kl(0.0, "reward")
    assert free > 1.0, free  # the random reward moves the policy far from its reference
    for kl_in in ("reward", "loss"):
        held = final_kl(1.0, kl_in)
        assert held < 0.25 * free, (kl_in, held, free)
    with pytest.raises(ConfigError, match="kl_estimator .* was removed.*kl_in: reward"):
        RLOOModule(tiny_model_dir, "conftest.random_reward", kl_estimator="k3")
    with pytest.raises(ConfigError, match="kl_in must be"):
        RLOOModule(tiny_model_dir, "conftest.random_reward", kl_in="both")


def test_prompt_data_in_file_order_when_not_shuffled(synthetic_dir):
    from varirm.rloo import PromptDataModule
    from varirm.sampling import read_prompts

    expected = read_prompts(str(synthetic_dir / "prompts.jsonl"), limit=12)
    for shuffle in (False, True):
        data = PromptDataModule(str(synthetic_dir / "prompts.jsonl"), num_prompts=12, batch_size=4, shuffle=shuffle)
        data.setup("fit")
        seen = [p for batch in data.train_dataloader() for p in batch]
        assert sorted(map(str, seen)) == sorted(map(str, expected))
        assert (seen == expected) is not shuffle
