"""Tiny, randomly initialised models saved in Hugging Face format, for offline use.

No weights can be downloaded here, so tests and the quickstart build a model directory
(config + random weights + a byte-level BPE tokenizer trained locally with ``tokenizers`` + a
chat template) and then load it through the normal ``from_pretrained`` path.
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal, Optional

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, PreTrainedTokenizerFast

from varirm.chat import DEFAULT_CHAT_TEMPLATE
from varirm.synthetic import corpus

SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>"]
Arch = Literal["llama", "gpt2", "gpt_neox"]


def train_tokenizer(texts: list[str], vocab_size: int = 1024, pad_token: bool = True) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any UTF-8 text encodes) with the default chat template.
    ``pad_token=False`` leaves pad unset (as many Hub tokenizers do) to exercise pad handling."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = SPECIAL_TOKENS if pad_token else [t for t in SPECIAL_TOKENS if t != "<|pad|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|pad|>" if pad_token else None)
    fast.chat_template = DEFAULT_CHAT_TEMPLATE
    return fast


def file_texts(path: str) -> list[str]:
    """Every string in a ``.json`` / ``.jsonl`` file (nested lists and objects included), for
    training a tokenizer that covers a user's data."""
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()] if path.endswith(".jsonl") else [json.load(f)]
    out: list[str] = []

    def walk(x: Any) -> None:
        if isinstance(x, str):
            out.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(records)
    return out


def tiny_config(arch: Arch, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, max_positions: int,
                bos_id: int, eos_id: int, pad_id: int | None):
    common = dict(vocab_size=vocab_size, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    if arch == "llama":
        return LlamaConfig(hidden_size=hidden_size, intermediate_size=hidden_size * 3, num_hidden_layers=num_layers,
                           num_attention_heads=num_heads, num_key_value_heads=max(1, num_heads // 2),
                           max_position_embeddings=max_positions, tie_word_embeddings=True, **common)
    if arch == "gpt2":
        return GPT2Config(n_embd=hidden_size, n_layer=num_layers, n_head=num_heads, n_positions=max_positions,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(hidden_size=hidden_size, intermediate_size=hidden_size * 4, num_hidden_layers=num_layers,
                             num_attention_heads=num_heads, max_position_embeddings=max_positions,
                             hidden_dropout=0.0, attention_dropout=0.0, **common)
    raise ValueError(f"unknown arch {arch!r}; expected llama, gpt2 or gpt_neox")


def make_tiny_model(
    output: str,
    arch: Arch = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    vocab_size: int = 1024,
    max_positions: int = 2048,
    pad_token: bool = True,
    corpus_files: Optional[list[str]] = None,
    seed: int = 0,
) -> str:
    """Build a tiny causal LM directory (``config.json``, safetensors weights, tokenizer with chat
    template) that ``AutoModelForSequenceClassification.from_pretrained`` and
    ``AutoModelForCausalLM.from_pretrained`` both load.

    Args:
        output: Directory to write.
        arch: Architecture: ``llama``, ``gpt2`` or ``gpt_neox`` (Pythia-style).
        hidden_size: Width.
        num_layers: Transformer blocks.
        num_heads: Attention heads.
        vocab_size: Most BPE tokens (trained on the synthetic task's texts, which stop merging at about 600:
            every topic word and filler is then one token).
        max_positions: Longest sequence the position embeddings cover.
        pad_token: Give the tokenizer a pad token (False: none, like many Hub tokenizers).
        corpus_files: ``.json``/``.jsonl`` files whose strings join the synthetic task's texts in
            the tokenizer's training corpus (e.g. your preference data, so English is not spelled
            out byte by byte).
        seed: Seed of the random initialisation.
    """
    torch.manual_seed(seed)
    texts = corpus(seed=seed) + [t for path in corpus_files or [] for t in file_texts(path)]
    tokenizer = train_tokenizer(texts, vocab_size, pad_token)
    config = tiny_config(arch, len(tokenizer), hidden_size, num_layers, num_heads, max_positions,
                         tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config)
    os.makedirs(output, exist_ok=True)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return output
