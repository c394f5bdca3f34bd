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
    path.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"]}) + "\n" + json.dumps({"prompt": "q", "responses": ["a"]}) + "\n")
    with pytest.raises(DataError, match=r"row 1: field 'responses': must be a list of at least two strings"):
        read_samples(str(path))
    path.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"]}) + "\n" + json.dumps({"prompt": "q", "responses": ["a", "b", "c"]}) + "\n")
    with pytest.raises(DataError, match="row 1: field .responses.: has 3 responses but row 0 has 2"):
        read_samples(str(path))


def test_sampling_config_defaults_are_recorded(tmp_path, tiny_model_dir, prompts_file):
    out = tmp_path / "s.jsonl"
    sample(tiny_model_dir, str(prompts_file), str(out), k=2, max_new_tokens=4, num_prompts=2)
    rows = read_samples(str(out))
    assert len(rows) == 2
    assert rows[0]["sampling"] == {**SamplingConfig().__dict__, "k": 2, "max_new_tokens": 4}
