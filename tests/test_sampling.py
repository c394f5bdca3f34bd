import json

import datasets
import pytest

from varirm.chat import load_tokenizer
from varirm.errors import DataError
from varirm.sampling import SamplingConfig, clean_response, read_samples, response_suffix, sample


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"List some {t} words."}]} for t in ("fruit", "tool", "color")]
    rows.append({"prompt": "Raw text prompt:"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_same_seed_same_file_other_seed_other_file(tmp_path, tiny_model_dir, prompts_file):
    paths = [tmp_path / f"s{i}.jsonl" for i in range(3)]
    for path, seed in zip(paths, (7, 7, 8)):
        sample(tiny_model_dir, str(prompts_file), str(path), k=3, max_new_tokens=6, seed=seed, batch_size=2)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()
    rows = read_samples(str(paths[0]))
    assert len(rows) == 4 and all(len(r["responses"]) == 3 for r in rows)
    assert rows[0]["policy"] == tiny_model_dir and rows[0]["sampling"]["seed"] == 7
    assert rows[3]["prompt"] == "Raw text prompt:"
    ds = datasets.load_dataset("json", data_files=str(paths[0]), split="train")  # datasets reads it
    assert ds.num_rows == 4


def test_response_suffix_and_cleaning(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    assert response_suffix(tokenizer, [{"role": "user", "content": "hi"}]) == "\n"
    assert response_suffix(tokenizer, "raw") == "<|eos|>"
    assert clean_response("apple pear\n<|user|>\nmore", "\n") == "apple pear"
    assert clean_response("apple pear", "\n") == "apple pear"
    assert clean_response("a b<|eos|>c", "<|eos|>") == "a b"


def test_read_samples_errors(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"]}) + "\n"
                    + json.dumps({"prompt": "q", "responses": ["a"]}) + "\n")
    with pytest.raises(DataError, match=r"row 1: field 'responses': must be a list of at least two strings"):
        read_samples(str(path))
    path.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"]}) + "\n"
                    + json.dumps({"prompt": "q", "responses": ["a", "b", "c"]}) + "\n")
    with pytest.raises(DataError, match="row 1: field .responses.: has 3 responses but row 0 has 2"):
        read_samples(str(path))


def test_sampling_config_defaults_are_recorded(tmp_path, tiny_model_dir, prompts_file):
    out = tmp_path / "s.jsonl"
    sample(tiny_model_dir, str(prompts_file), str(out), k=2, max_new_tokens=4, num_prompts=2)
    rows = read_samples(str(out))
    assert len(rows) == 2
    assert rows[0]["sampling"] == {**SamplingConfig().__dict__, "k": 2, "max_new_tokens": 4}


def test_sample_next_draws_from_the_softmax_and_cuts_the_nucleus():
    import torch

    from varirm.sampling import sample_next

    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(20000, 1)  # (20000, 4)
    counts = torch.bincount(sample_next(logits, 1.0, 1.0), minlength=4).float() / 20000
    torch.testing.assert_close(counts, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.015, rtol=0)
    # temperature 2: probabilities proportional to sqrt(p)
    p2 = torch.tensor([0.5, 0.3, 0.15, 0.05]).sqrt()
    counts = torch.bincount(sample_next(logits, 2.0, 1.0), minlength=4).float() / 20000
    torch.testing.assert_close(counts, p2 / p2.sum(), atol=0.015, rtol=0)
    # top_p 0.7: the smallest top set reaching 0.7 is {0.5, 0.3}, renormalized to 5/8, 3/8
    counts = torch.bincount(sample_next(logits, 1.0, 0.7), minlength=4).float() / 20000
    torch.testing.assert_close(counts, torch.tensor([0.625, 0.375, 0.0, 0.0]), atol=0.015, rtol=0)
    assert sample_next(logits[:5], 1.0, 0.4).eq(0).all()  # the top token alone reaches 0.4


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_sample_tokens_matches_greedy_generate(tmp_path, arch):
    """At a near-zero temperature, sampling is greedy: the cache repeated k times, the positions,
    the rows leaving the batch at their stop token and the padding after it must give exactly
    what transformers' greedy generate gives, for each architecture varirm builds."""
    import torch
    from transformers import AutoModelForCausalLM

    from varirm.sampling import sample_tokens
    from varirm.tiny import make_tiny_model

    model_dir = make_tiny_model(str(tmp_path / arch), arch=arch)
    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    torch.manual_seed(0)
    texts = ["fruit words please", "a much longer prompt about tools and colors", "hi"]
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    # a frequent greedy token as the stop token, so that rows stop at different steps
    greedy = model.generate(**enc, do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=None)[:, enc["input_ids"].shape[1]:]
    stop = int(greedy[:, 3:].flatten().mode().values)
    expected = model.generate(**enc, do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=[stop])
    from varirm.kv_cache import preallocated_cache

    assert preallocated_cache(model, 8) is not None  # every architecture varirm builds takes the in-place cache
    expected = expected.repeat_interleave(2, dim=0)
    for preallocate in (True, False):
        got = sample_tokens(model, enc["input_ids"], enc["attention_mask"], k=2, max_new_tokens=12,
                            temperature=1e-6, top_p=1.0, stops=[stop], pad_id=tokenizer.pad_token_id,
                            preallocate=preallocate)
        assert got.shape == expected.shape, (got.shape, expected.shape)
        assert torch.equal(got, expected)
    new = got[:, enc["input_ids"].shape[1]:]
    assert (new == stop).any(1).any() and not (new == stop).any(1).all()  # some rows stopped early, some did not


def test_generation_precision(monkeypatch):
    import torch

    import varirm.reward_model
    from varirm.errors import ConfigError
    from varirm.sampling import generation_dtype

    cpu = torch.device("cpu")
    monkeypatch.setattr(varirm.reward_model, "cpu_bf16_is_native", lambda: True)
    assert generation_dtype(cpu, "auto") == torch.bfloat16 and generation_dtype(cpu, "fp32") is None
    monkeypatch.setattr(varirm.reward_model, "cpu_bf16_is_native", lambda: False)
    assert generation_dtype(cpu, "auto") is None and generation_dtype(cpu, "bf16") == torch.bfloat16
    assert generation_dtype(torch.device("cuda"), "auto") == torch.bfloat16
    with pytest.raises(ConfigError, match="precision must be"):
        generation_dtype(cpu, "fp16")


def test_preallocated_cache_samples_what_the_dynamic_cache_samples(tmp_path):
    """Sampled (temperature 1), seeded: the in-place cache gives the dynamic cache's tokens, rows leaving
    the batch included; writing past its capacity is an error."""
    import torch
    from transformers import AutoModelForCausalLM

    from varirm.kv_cache import preallocated_cache
    from varirm.sampling import sample_tokens
    from varirm.tiny import make_tiny_model

    model_dir = make_tiny_model(str(tmp_path / "llama"))
    tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer.padding_side = "left"
    enc = tokenizer(["fruit words please", "hi", "a longer prompt about tools"], return_tensors="pt", padding=True,
                    add_special_tokens=False)
    outs = []
    for preallocate in (True, False):
        torch.manual_seed(3)
        outs.append(sample_tokens(model, enc["input_ids"], enc["attention_mask"], k=3, max_new_tokens=16,
                                  temperature=1.0, top_p=1.0, stops=list(range(40)), pad_id=tokenizer.pad_token_id,
                                  preallocate=preallocate))
    assert torch.equal(outs[0], outs[1])
    new = outs[0][:, enc["input_ids"].shape[1]:]
    assert (new == tokenizer.pad_token_id).any()  # some rows stopped and left the batch
    cache = preallocated_cache(model, capacity=enc["input_ids"].shape[1])
    assert cache.layers[0].get_max_length() == enc["input_ids"].shape[1]
    with pytest.raises(NotImplementedError):
        cache.layers[0].reorder_cache(torch.tensor([0]))
    with torch.no_grad(), pytest.raises(RuntimeError, match="holds"):
        model(**enc, cache=cache, use_cache=True)
        model(input_ids=enc["input_ids"][:, :1], cache=cache, use_cache=True)
