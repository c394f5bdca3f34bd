import pytest

from varirm.chat import (
    DEFAULT_CHAT_TEMPLATE,
    encode_prompt_response,
    load_tokenizer,
    render_prompt_response,
    tokenizer_fingerprint,
)
from varirm.errors import ConfigError


def test_chat_prompt_renders_with_the_template_and_splits_at_the_response(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert render_prompt_response(tokenizer, prompt, "hello") == (
        "<|system|>\nBe brief.\n<|user|>\nhi\n<|assistant|>\n", "hello\n")


def test_raw_prompt_is_text_plus_eos(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    assert render_prompt_response(tokenizer, "Q: 2+2? A:", " 4") == ("Q: 2+2? A:", " 4<|eos|>")


def test_encoded_parts_decode_to_the_rendered_text(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    prompt = [{"role": "user", "content": "List some fruit words. 水果"}]
    p_ids, r_ids = encode_prompt_response(tokenizer, prompt, "apple pear 苹果")
    assert (tokenizer.decode(p_ids) + tokenizer.decode(r_ids)
            == "".join(render_prompt_response(tokenizer, prompt, "apple pear 苹果")))


def test_template_that_does_not_extend_the_prompt_is_rejected(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                               "{% if add_generation_prompt %}>>{% endif %}")
    with pytest.raises(ConfigError, match="prefix of the full conversation"):
        render_prompt_response(tokenizer, [{"role": "user", "content": "hi"}], "hello")


def test_missing_template_gets_the_default_and_fingerprint_tracks_it(tiny_model_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_model_dir)
    before = tokenizer_fingerprint(tokenizer)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    reloaded = load_tokenizer(str(tmp_path))
    assert reloaded.chat_template == DEFAULT_CHAT_TEMPLATE
    reloaded.chat_template = "{{ messages }}"
    assert tokenizer_fingerprint(reloaded) != before


def test_missing_model_directory_is_a_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no-such-model: no such model directory. Create it first .* make-tiny-model"):
        load_tokenizer(str(tmp_path / "no-such-model"))


def test_missing_relative_model_directory_is_not_reported_as_a_hub_failure(tmp_path, monkeypatch):
    # "artifacts/tiny-llama" before make-tiny-model: two parts like a Hub id, but nothing local
    # exists and the Hub is offline; the message names the directory and what creates it
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_tokenizer("artifacts/tiny-llama")
    assert str(info.value).startswith("artifacts/tiny-llama: no such model directory, and not loadable as a Hub id")
    assert "varirm make-tiny-model --output artifacts/tiny-llama" in str(info.value)
    assert "\n" not in str(info.value)
