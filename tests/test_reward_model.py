import pytest
import torch
from torch.testing import assert_close
from transformers import AutoModelForSequenceClassification

from varirm.chat import load_tokenizer
from varirm.loaders import collate_pairs
from varirm.reward_model import load_reward_model
from varirm.tiny import make_tiny_model


@pytest.fixture(scope="module", params=["llama", "gpt2", "gpt_neox"])
def arch_dir(request, tmp_path_factory):
    return make_tiny_model(str(tmp_path_factory.mktemp(request.param) / "m"), arch=request.param)


def _rows(tokenizer):
    texts = ["apple pear plum grape", "dog", "red blue green yellow purple orange black"]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for t in texts]


def _right_padded(rows, pad_id):
    batch = collate_pairs([{"chosen_ids": r, "rejected_ids": r, "margin": 0.0} for r in rows], pad_id)
    return batch["input_ids"][: len(rows)], batch["attention_mask"][: len(rows)]


def test_score_in_padded_batch_equals_score_alone(arch_dir):
    tokenizer = load_tokenizer(arch_dir)
    rm = load_reward_model(arch_dir, tokenizer).eval()
    rows = _rows(tokenizer)
    ids, mask = _right_padded(rows, tokenizer.pad_token_id)
    assert (ids[1, len(rows[1]):] == tokenizer.pad_token_id).all()
    with torch.no_grad():
        batched = rm(ids, mask)
        alone = torch.stack([rm(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long))[0] for r in rows])
    assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_score_is_head_at_last_non_pad_token(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    rm = load_reward_model(tiny_model_dir, tokenizer).eval()
    ids, mask = _right_padded(_rows(tokenizer), tokenizer.pad_token_id)
    base = rm.base_model
    with torch.no_grad():
        hidden = base.model(input_ids=ids, attention_mask=mask).last_hidden_state
        last = mask.sum(-1) - 1
        expected = (hidden[torch.arange(3), last] @ base.score.weight.T).squeeze(-1)
        assert_close(rm(ids, mask), expected)


def test_gpt2_left_padding_scores_wrong_right_padding_right(tmp_path):
    """The trap the collator avoids: GPT-2 takes position ids without the mask, so a left-padded
    row is scored at shifted positions. Our right-padded batches score like unpadded rows."""
    path = make_tiny_model(str(tmp_path / "gpt2"), arch="gpt2")
    tokenizer = load_tokenizer(path)
    hf = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()
    hf.config.pad_token_id = tokenizer.pad_token_id
    short = _rows(tokenizer)[1]
    n_pad = 6
    left = torch.tensor([[tokenizer.pad_token_id] * n_pad + short])
    left_mask = torch.tensor([[0] * n_pad + [1] * len(short)])
    with torch.no_grad():
        alone = hf(input_ids=torch.tensor([short])).logits[0, 0]
        left_score = hf(input_ids=left, attention_mask=left_mask).logits[0, 0]
        rm = load_reward_model(path, tokenizer).eval()
        rm.base_model.load_state_dict(hf.state_dict())
        ids, mask = _right_padded(_rows(tokenizer), tokenizer.pad_token_id)
        right_score = rm(ids, mask)[1]
    assert (left_score - alone).abs() > 1e-3
    assert_close(right_score, alone, atol=1e-5, rtol=1e-5)


def test_missing_pad_token_is_added_and_differs_from_eos(tmp_path):
    path = make_tiny_model(str(tmp_path / "nopad"), pad_token=False)
    tokenizer = load_tokenizer(path)
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.padding_side == "right"
    rm = load_reward_model(path, tokenizer)
    assert rm.base_model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert rm.base_model.config.pad_token_id == tokenizer.pad_token_id


def test_pad_equal_to_eos_is_replaced(tmp_path, tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(tmp_path)
    reloaded = load_tokenizer(str(tmp_path))
    assert reloaded.pad_token_id != reloaded.eos_token_id


def test_eos_inside_response_is_still_scored_at_the_end(tiny_model_dir):
    """With pad == eos, searching for the first pad would stop at an eos inside the text."""
    tokenizer = load_tokenizer(tiny_model_dir)
    rm = load_reward_model(tiny_model_dir, tokenizer).eval()
    eos = tokenizer.eos_token_id
    a = tokenizer("apple", add_special_tokens=False)["input_ids"] + [eos]
    b = a + tokenizer("dog cat", add_special_tokens=False)["input_ids"] + [eos]
    ids, mask = _right_padded([a, b], tokenizer.pad_token_id)
    with torch.no_grad():
        scores = rm(ids, mask)
        alone_b = rm(torch.tensor([b]), torch.ones(1, len(b), dtype=torch.long))[0]
    assert_close(scores[1], alone_b, atol=1e-5, rtol=1e-5)
    assert (scores[0] - scores[1]).abs() > 1e-4


def _train_one_step(rm, ids, mask):
    rm.train()
    opt = torch.optim.SGD([p for p in rm.parameters() if p.requires_grad], lr=0.5)
    rm(ids, mask).sum().backward()
    opt.step()
    opt.zero_grad()


def test_lora_save_reload_gives_identical_rewards(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_model_dir)
    rm = load_reward_model(tiny_model_dir, tokenizer, lora_r=4)
    trainable = {n for n, p in rm.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("score" in n for n in trainable)
    assert not any("embed_tokens" in n for n in trainable)
    ids, mask = _right_padded(_rows(tokenizer), tokenizer.pad_token_id)
    _train_one_step(rm, ids, mask)  # make lora_B and the score head differ from their init
    rm.save_pretrained(str(tmp_path / "rm"), tokenizer)
    reloaded = load_reward_model(str(tmp_path / "rm"), load_tokenizer(str(tmp_path / "rm"))).eval()
    fresh_head = load_reward_model(tiny_model_dir, tokenizer, lora_r=4).eval()
    with torch.no_grad():
        expected = rm.eval()(ids, mask)
        assert_close(reloaded(ids, mask), expected, atol=0, rtol=0)
        assert (fresh_head(ids, mask) - expected).abs().max() > 1e-4  # the test can tell a lost head


@pytest.mark.slow
def test_qlora_4bit_lora_gradients_survive_a_no_grad_pass(tiny_model_dir):
    pytest.importorskip("bitsandbytes")
    import bitsandbytes as bnb

    tokenizer = load_tokenizer(tiny_model_dir)
    rm = load_reward_model(tiny_model_dir, tokenizer, lora_r=4, load_in_4bit=True, dtype="float32")
    layers = [m for m in rm.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.support_avx512bf16_for_cpu is False for m in layers)
    ids, mask = _right_padded(_rows(tokenizer), tokenizer.pad_token_id)
    with torch.no_grad():  # a validation pass: this is what triggers the weight repack
        rm.eval()(ids, mask)
    _train_one_step(rm, ids, mask)  # B moves off zero so A gets gradients too
    rm.train()
    rm(ids, mask).sum().backward()
    lora = {n: p.grad for n, p in rm.named_parameters() if "lora_" in n}
    assert len(lora) == 2 * len(layers)
    missing = [n for n, g in lora.items() if g is None or g.abs().sum() == 0]
    assert not missing, f"LoRA parameters without gradient: {missing[:4]}"


def test_lora_under_bf16_autocast_skips_peft_input_cast_bit_for_bit(tiny_model_dir, monkeypatch):
    """Under autocast the adapted layers' bf16 inputs are no longer cast up to the fp32 adapters (and back
    down by autocast): rewards and every gradient are the same bits as with peft's cast."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    tokenizer = load_tokenizer(tiny_model_dir)
    rm = load_reward_model(tiny_model_dir, tokenizer, lora_r=4)
    ids, mask = _right_padded(_rows(tokenizer), tokenizer.pad_token_id)
    _train_one_step(rm, ids, mask)  # lora_B non-zero: the adapters take part in the reward
    rm.eval()

    def rewards_and_grads():
        rm.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rewards = rm(ids, mask)
        rewards.sum().backward()
        return rewards.detach(), {n: p.grad.clone() for n, p in rm.named_parameters() if p.requires_grad}

    casts = []
    original = BaseTunerLayer._cast_input_dtype

    def spy(self, x, dtype):
        casts.append(x is not None and x.dtype != dtype and self.cast_input_dtype_enabled)
        return original(self, x, dtype)

    monkeypatch.setattr(BaseTunerLayer, "_cast_input_dtype", spy)
    fast, fast_grads = rewards_and_grads()
    assert casts and not any(casts)  # the adapters ran, and no input was cast
    monkeypatch.setattr(type(rm), "forward", lambda self, i, a=None, s=None: self._forward(i, a, s))
    casts.clear()
    slow, slow_grads = rewards_and_grads()  # peft's own path: every bf16 input cast to fp32
    assert any(casts)
    assert_close(fast, slow, atol=0, rtol=0)
    assert fast_grads.keys() == slow_grads.keys() and len(fast_grads) > 2
    for name in fast_grads:
        assert_close(fast_grads[name], slow_grads[name], atol=0, rtol=0, msg=name)
    assert all(m.cast_input_dtype_enabled for m in rm.modules() if isinstance(m, BaseTunerLayer))  # restored
