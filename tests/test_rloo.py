import math

import pytest
import torch
from torch.testing import assert_close

from varirm.rloo import RLOOModule, clipped_policy_loss, group_std_advantages, kl_estimate, rloo_advantages


def test_rloo_advantages_by_hand():
    r = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 0.0]])
    # 1 - (2 + 6) / 2 = -3; 2 - 3.5 = -1.5; 6 - 1.5 = 4.5; no spread -> no signal
    assert_close(rloo_advantages(r), torch.tensor([[-3.0, -1.5, 4.5], [0.0, 0.0, 0.0]]))
    assert_close(rloo_advantages(torch.tensor([[3.0, 1.0]])), torch.tensor([[2.0, -2.0]]))  # k = 2: r1 - r2
    with pytest.raises(ValueError, match="k >= 2"):
        rloo_advantages(torch.tensor([[1.0]]))


def test_group_std_advantages_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 6.0], [0.0, 4.0, 4.0]])
    # row 0: unbiased std of (1, 2, 6) = sqrt(((-2)^2 + (-1)^2 + 3^2) / 2) = sqrt(7); row 1: sqrt((8/3)^2/2 + 2(4/3)^2/2) = sqrt(16/3)
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

    from varirm.cli import cli_main
    from varirm.synthetic import make_demos, make_prompts

    from conftest import REPO

    demos, prompts = tmp_path / "demos.jsonl", tmp_path / "prompts.jsonl"
    demos.write_text("".join(json.dumps(r) + "\n" for r in make_demos(4000, seed=0)))
    prompts.write_text("".join(json.dumps(r) + "\n" for r in make_prompts(256, seed=1)))
    cli_main(["sft", "--config", str(REPO / "recipes" / "sft_synthetic.yaml"), "--trainer.default_root_dir",
              str(tmp_path / "sft"), "--trainer.enable_progress_bar", "false",
              "--model.init_args.model_name_or_path", tiny_model_dir, "--model.init_args.save_dir", str(tmp_path / "pi0"),
              "--data.init_args.train", str(demos)])
    cli = cli_main(["rloo", "--config", str(REPO / "recipes" / "rloo" / "synthetic_gold.yaml"),
                    "--trainer.default_root_dir", str(tmp_path / "rloo"), "--trainer.max_steps", "40",
                    "--trainer.log_every_n_steps", "2", "--trainer.enable_progress_bar", "false",
                    "--model.init_args.policy_name_or_path", str(tmp_path / "pi0"),
                    "--data.init_args.prompts", str(prompts)])
    rows = list(csv.DictReader(open(tmp_path / "rloo" / "csv" / "version_0" / "metrics.csv")))
    gold = [float(r["rloo/gold_reward"]) for r in rows if r.get("rloo/gold_reward")]
    assert len(gold) >= 8
    assert sum(gold[-3:]) / 3 > sum(gold[:3]) / 3 + 0.1, gold
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

    from varirm.rloo import PolicyEvaluation, PromptDataModule, RLOOModule, token_logprobs

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
    callback._evaluate(type("T", (), {"global_step": 0, "loggers": [], "default_root_dir": str(tmp_path / "e")})(), module)
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
    from varirm.rloo import RLOOModule
    from varirm.sampling import read_prompts
    from varirm.scoring import load_scorer, score
    from varirm.tiny import make_tiny_model

    from varirm.chat import load_tokenizer
    from varirm.model import load_reward_model

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
