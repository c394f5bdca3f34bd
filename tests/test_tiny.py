import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from varirm.tiny import make_tiny_model


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_tiny_directory_loads_through_the_auto_classes(tmp_path, arch):
    path = make_tiny_model(str(tmp_path / arch), arch=arch, hidden_size=32, num_layers=2, num_heads=2)
    tokenizer = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path)
    rm = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    assert lm.config.model_type == arch and lm.config.num_hidden_layers == 2
    ids = tokenizer("apple pear", return_tensors="pt")["input_ids"]
    assert lm(ids).logits.shape == (1, ids.shape[1], len(tokenizer))
    assert rm(ids).logits.shape == (1, 1)
    assert tokenizer.chat_template and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_tokenizer_is_byte_level_and_seeded_init_is_reproducible(tmp_path):
    a = make_tiny_model(str(tmp_path / "a"), seed=1)
    b = make_tiny_model(str(tmp_path / "b"), seed=1)
    tokenizer = AutoTokenizer.from_pretrained(a)
    text = "多语言 text, émoji 🙂"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    wa = AutoModelForCausalLM.from_pretrained(a).state_dict()
    wb = AutoModelForCausalLM.from_pretrained(b).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_corpus_files_teach_the_tokenizer_a_users_text(tmp_path, shared_data):
    from transformers import AutoTokenizer

    from varirm.formats import load_preference_rows
    from varirm.tiny import make_tiny_model

    data = str(shared_data / "dpo_en_demo.json")
    plain = AutoTokenizer.from_pretrained(make_tiny_model(str(tmp_path / "plain"), vocab_size=2048))
    taught = AutoTokenizer.from_pretrained(make_tiny_model(str(tmp_path / "taught"), vocab_size=2048,
                                                           corpus_files=[data]))
    rows, _ = load_preference_rows(data, "train", "auto", {}, skip_bad=False)
    text = " ".join(r["chosen"] for r in rows[:20])
    assert len(taught(text)["input_ids"]) < 0.6 * len(plain(text)["input_ids"])
    assert taught.decode(taught(text)["input_ids"]) == text  # still byte-level: lossless
