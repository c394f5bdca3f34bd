import json

import pytest

import varirm.evaluate as ev
from varirm.errors import VarirmError


@pytest.fixture
def samples_file(tmp_path):
    rows = [{"prompt": "List some fruit words.", "responses": ["apple", "dog"], "policy": "pi"},
            {"prompt": "Write tool words.", "responses": ["saw", "axe"], "policy": "pi"}]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


TABLE = {"apple": 0.0, "dog": 2.0, "saw": 1.0, "axe": 3.0, "pear": 5.0, "cat": 4.0}


def table_reward(prompt, response: str) -> float:
    """A reward function given to ``varirm evaluate`` by its dotted path, like the gold reward."""
    return TABLE[response]


@pytest.fixture
def fixed_rm():
    """An RM whose rewards are a table, so every number in the report can be worked out by hand."""
    return "test_evaluate.table_reward"


def test_evaluate_numbers_by_hand(tmp_path, samples_file, fixed_rm):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "chosen": "pear", "rejected": "cat"}) + "\n"
                     + json.dumps({"prompt": "p", "chosen": "apple", "rejected": "dog"}) + "\n")
    out = tmp_path / "eval"
    metrics = ev.evaluate(fixed_rm, str(out), samples=str(samples_file), gold="varirm.synthetic.gold_reward",
                          pairs=str(pairs), device="cpu")
    # rewards [[0, 2], [1, 3]]: shift 1.5, scale sqrt(1.25); raw variance 2 per prompt, whitened 1.6
    assert metrics["shift"] == pytest.approx(1.5) and metrics["scale"] == pytest.approx(1.25 ** 0.5)
    assert metrics["raw_variance_mean"] == pytest.approx(2.0)
    assert metrics["whitened_variance_mean"] == pytest.approx(1.6, rel=1e-5)
    # gold: fruit prompt apple 1/8 > dog -1/8 but RM says dog > apple (wrong); tool prompt saw = axe = 1/8 (no pair)
    assert metrics["on_policy_acc"] == pytest.approx(0.0)
    # harm-aware: the fruit pair is wrong and dog (2) is above the prompt's mean reward (1): still wrong
    assert metrics["harm_aware_acc"] == pytest.approx(0.0)
    assert metrics["variance_accuracy_average"] == pytest.approx((1.6 / 2 + 0.0) / 2, rel=1e-5)
    assert metrics["off_policy_acc"] == pytest.approx(0.5) and metrics["off_policy_pairs"] == 2
    assert metrics["policy"] == "pi"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics
    report = (out / "report.md").read_text()
    # bootstrap over the 2 prompts: a resample of one prompt twice whitens it by its own mean and
    # std, so its two rewards become -1, +1 (unbiased variance 2.0); mixed resamples give 1.6
    ci = metrics["whitened_variance_mean_ci"]
    assert (ci["estimate"], ci["lower"], ci["upper"], ci["n"]) == (1.6, 1.6, 2.0, 2)
    assert "| whitened per-prompt variance, mean [95% CI] | 1.6000 [1.6000, 2.0000] |" in report
    assert (out / "variance_hist.png").stat().st_size > 1000 and (out / "rewards_per_prompt.png").stat().st_size > 1000


def test_evaluate_refuses_to_overwrite_and_needs_samples_or_policy(tmp_path, samples_file, fixed_rm):
    out = tmp_path / "eval"
    ev.evaluate(fixed_rm, str(out), samples=str(samples_file), plots=False, device="cpu")
    before = (out / "metrics.json").read_text()
    with pytest.raises(VarirmError, match="already holds an evaluation"):
        ev.evaluate(fixed_rm, str(out), samples=str(samples_file), plots=False, device="cpu")
    assert (out / "metrics.json").read_text() == before
    with pytest.raises(VarirmError, match="--policy and --prompts"):
        ev.evaluate(fixed_rm, str(tmp_path / "other"), device="cpu")


def test_response_logprobs_score_the_response_tokens_under_the_policy(tmp_path, tiny_model_dir):
    """Each response's log-probability by hand (one unpadded forward per response, the response
    tokens' log-softmax summed) equals the batched, padded computation; HAcc-W uses them."""
    import torch

    from varirm.chat import encode_prompt_response
    from varirm.sampling import load_policy

    prompts = ["List some fruit words.", "Write tool words.", "List some fruit words."]
    responses = ["apple pear plum", "saw", "dog"]
    batched = ev.response_logprobs(tiny_model_dir, prompts, responses, batch_size=2)
    model, tokenizer = load_policy(tiny_model_dir)
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        p, r = encode_prompt_response(tokenizer, prompt, response)
        with torch.no_grad():
            logits = model(torch.tensor([p + r])).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        expected = sum(logp[len(p) - 1 + j, tok] for j, tok in enumerate(r))
        assert batched[i].item() == pytest.approx(expected.item(), abs=1e-4)
    samples = tmp_path / "s.jsonl"
    samples.write_text("".join(json.dumps({"prompt": q, "responses": ["apple", "dog", "saw"], "policy": tiny_model_dir})
                               + "\n" for q in prompts[:2]))
    metrics = ev.evaluate("test_evaluate.table_reward", str(tmp_path / "e"), samples=str(samples),
                          gold="varirm.synthetic.gold_reward", plots=False, policy_weighted=True)
    assert 0.0 <= metrics["harm_aware_acc_weighted"] <= 1.0
