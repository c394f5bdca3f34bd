import pytest
import torch
from torch.testing import assert_close

from varirm.chat import encode_prompt_response, load_tokenizer
from varirm.errors import VarirmError
from varirm.reward_model import load_reward_model
from varirm.scoring import load_reward_function, load_scorer, score


def test_score_matches_one_by_one_forward_in_input_order(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    rm = load_reward_model(tiny_model_dir, tokenizer).eval()
    prompts = [[{"role": "user", "content": "List some fruit words."}], "raw prompt",
               [{"role": "user", "content": "x"}]]
    responses = ["apple pear plum grape lemon", "dog", "red blue"]
    got = score(rm, tokenizer, prompts, responses, batch_size=2)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids = sum(encode_prompt_response(tokenizer, p, r), [])
        with torch.no_grad():
            expected = rm(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0]
        assert_close(got[i], expected, atol=1e-5, rtol=1e-5)


def test_load_scorer_from_a_saved_lora_rm(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_model_dir)
    rm = load_reward_model(tiny_model_dir, tokenizer, lora_r=4)
    with torch.no_grad():
        rm.base_model.score.modules_to_save["default"].weight.normal_()
    rm.save_pretrained(str(tmp_path / "rm"), tokenizer)
    loaded, tok = load_scorer(str(tmp_path / "rm"))
    args = ([[{"role": "user", "content": "hi"}]], ["apple"])
    assert_close(score(loaded, tok, *args), score(rm.eval(), tokenizer, *args))


def test_load_reward_function_callable_and_errors():
    labeler = load_reward_function("varirm.synthetic.gold_reward")
    assert labeler(["List some fruit words.", "Write tool words."], ["apple pear", "apple"]) == [0.25, -0.125]
    with pytest.raises(VarirmError, match="neither a reward-model directory nor an importable callable"):
        load_reward_function("varirm.synthetic.no_such_function")
    with pytest.raises(VarirmError, match="checkpoint not found"):
        load_scorer("/nonexistent/last.ckpt")


def test_score_runs_the_rm_in_the_precision_asked(tiny_model_dir, tmp_path, monkeypatch):
    """``bf16=True`` scores under bf16 autocast on CPU too (RLOO under bf16-mixed); the default stays fp32
    on CPU. The RLOO module passes its trainer's precision."""
    from types import SimpleNamespace

    from varirm.reward_model import RewardModel
    from varirm.rloo import RLOOModule

    seen = []
    forward = RewardModel.forward
    monkeypatch.setattr(RewardModel, "forward", lambda self, *a, **k: (
        seen.append(torch.is_autocast_enabled("cpu")), forward(self, *a, **k))[1])
    tokenizer = load_tokenizer(tiny_model_dir)
    rm = load_reward_model(tiny_model_dir, tokenizer).eval()
    args = ([[{"role": "user", "content": "List some fruit words."}], "raw prompt"], ["apple pear plum", "dog"])
    fp32 = score(rm, tokenizer, *args)
    assert seen == [False]
    bf16 = score(rm, tokenizer, *args, bf16=True)
    assert seen[1:] == [True] and not torch.equal(bf16, fp32)
    assert_close(bf16, fp32, atol=0.05, rtol=0.05)

    rm.save_pretrained(str(tmp_path / "rm"), tokenizer)
    for precision, expected in (("bf16-mixed", True), ("32-true", False)):
        module = RLOOModule(tiny_model_dir, str(tmp_path / "rm"), k=2)
        module._trainer = SimpleNamespace(precision=precision)
        module.configure_model()
        seen.clear()
        module.reward_fn(*args)
        assert seen == [expected], precision
