"""Tokenizer loading and the one function that turns (prompt, response) into token ids.

Every place that renders a (prompt, response) for a reward model or a policy (RM training,
evaluation, labelling, on-policy sampling, SFT) goes through :func:`encode_prompt_response`, so
the text an RM was trained on and the text it scores later are built the same way, byte for byte.

Two prompt kinds:

- a list of chat messages ``[{"role": ..., "content": ...}, ...]``: rendered with the tokenizer's
  chat template; the response becomes the final assistant message.
- a plain string: raw text, ``prompt + response + eos`` (no template), as for pre-formatted data
  such as "Human: ... Assistant: ...".
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Union

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from varirm.errors import ConfigError

Message = dict[str, str]
Prompt = Union[str, list[Message]]

PAD_TOKEN = "<|pad|>"

# Used only when a tokenizer has no chat template of its own; saved with the RM so that
# scoring later uses the same one.
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def missing_model_message(name_or_path: str, hub_error: str = "") -> str:
    """One line for a model path that is neither a local directory nor a loadable Hub id."""
    tried = f", and not loadable as a Hub id ({hub_error})" if hub_error else ""
    return (f"{name_or_path}: no such model directory{tried}. Create it first (the quickstart's tiny model: "
            f"`varirm make-tiny-model --output {name_or_path}`; a policy: `varirm sft --config ...`), "
            "or give a Hub id")


def is_clearly_local(name_or_path: str) -> bool:
    """A path meant as a local directory rather than a Hub id ``org/name``: it starts with ``.``,
    ``/`` or ``~``, or has more than one ``/``, or its first part is an existing directory."""
    parts = name_or_path.split("/")
    return name_or_path.startswith((".", "/", "~")) or len(parts) > 2 or os.path.isdir(parts[0])


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a tokenizer and make it safe for reward modelling.

    - pad must differ from eos: with pad == eos the final eos of every row is masked as padding
      and the score can be read from the wrong position (chosen and rejected then often score
      the same). A dedicated ``<|pad|>`` token is added when there is no pad or it equals eos;
      the model's embeddings are resized to ``len(tokenizer)`` by :mod:`varirm.reward_model`.
    - right padding: the score is read at the last non-pad token.
    - a chat template is always present (:data:`DEFAULT_CHAT_TEMPLATE` when the tokenizer has none).

    The result is deterministic for a given ``name_or_path``, so the data module and the model
    module, which each call this, agree on every token id.
    """
    if not os.path.exists(name_or_path) and is_clearly_local(name_or_path):
        raise ConfigError(missing_model_message(name_or_path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:  # unknown Hub id offline, no tokenizer files
        reason = str(e).splitlines()[0]
        if not os.path.exists(name_or_path):
            raise ConfigError(missing_model_message(name_or_path, reason)) from None
        raise ConfigError(f"{name_or_path}: cannot load a tokenizer ({reason})") from None
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.padding_side = "right"
    if not tokenizer.chat_template:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A stable hash of everything that changes token ids: vocabulary, merges, special tokens,
    chat template. Used as part of the tokenization cache key."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(backend.to_str().encode() if backend is not None else repr(tokenizer.get_vocab()).encode())
    h.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    h.update(str(tokenizer.chat_template).encode())
    h.update(str(len(tokenizer)).encode())
    return h.hexdigest()[:16]


def render_prompt_response(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, response: str) -> tuple[str, str]:
    """Split the full scored text into (prompt part, response part), concatenating to the full text.

    >>> # chat prompt with the default template:
    >>> # ("<|user|>\\nhi\\n<|assistant|>\\n", "hello\\n")
    """
    if isinstance(prompt, str):
        return prompt, response + (tokenizer.eos_token or "")
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(
        list(prompt) + [{"role": "assistant", "content": response}], tokenize=False
    )
    if not full_text.startswith(prompt_text):
        raise ConfigError(
            "the chat template does not render the prompt (with add_generation_prompt=True) as a "
            "prefix of the full conversation; varirm needs that to locate the response"
        )
    return prompt_text, full_text[len(prompt_text):]


def encode_prompt_response(
    tokenizer: PreTrainedTokenizerBase, prompt: Prompt, response: str
) -> tuple[list[int], list[int]]:
    """Token ids of the prompt part and the response part of the scored text.

    The two parts are tokenized separately (no special tokens added: the template carries them),
    so the boundary is exact and truncation can cut the prompt without touching the response.
    The reward is read at the last id of ``prompt_ids + response_ids``.
    """
    prompt_text, response_text = render_prompt_response(tokenizer, prompt, response)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response_text, add_special_tokens=False)["input_ids"]
    return prompt_ids, response_ids


def fit_to_length(prompt_ids: list[int], response_ids: list[int], max_length: int) -> list[int]:
    """Concatenate and keep the last ``max_length`` ids: the prompt is cut from the left first,
    then the start of the response; the end of the response, where the score is read, is kept.

    >>> fit_to_length([1, 2, 3], [4, 5], 4)
    [2, 3, 4, 5]
    >>> fit_to_length([1, 2, 3], [4, 5, 6, 7, 8], 4)
    [5, 6, 7, 8]
    """
    ids = prompt_ids + response_ids
    return ids[len(ids) - max_length:] if len(ids) > max_length else ids


def pad_right(seqs: list[list[int]], pad_token_id: int,
              pad_to_multiple_of: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both ``(n, t)``: the sequences right-padded with
    ``pad_token_id`` to the longest (rounded up to a multiple of ``pad_to_multiple_of``)."""
    t = max(len(s) for s in seqs)
    t = -(-t // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(seqs), t), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attention_mask[i, : len(s)] = 1
    return input_ids, attention_mask
