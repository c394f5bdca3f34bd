"""On-policy sampling: a policy (any causal LM) generates k responses per prompt.

The prompt is rendered by :func:`varirm.chat.render_prompt_response`, the same function the RM
uses, so the policy continues exactly the text the RM will later score. A response is the decoded
continuation up to eos, minus whatever the chat template appends after an assistant message
(e.g. a newline), so re-rendering it for the RM gives back the same text.

File format (jsonl, one row per prompt; ``datasets.load_dataset("json", ...)`` reads it):
``{"prompt": <messages or string>, "responses": [k strings], "policy": id, "sampling": {...}}``.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal, Optional

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from varirm.chat import Prompt, encode_prompt_response, fit_to_length, load_tokenizer, render_prompt_response
from varirm.errors import ConfigError, DataError
from varirm.files import atomic_open
from varirm.kv_cache import preallocated_cache

Precision = Literal["auto", "bf16", "fp32"]


@dataclass
class SamplingConfig:
    """Generation settings; saved in every samples file. ``precision``: see :func:`generation_dtype`."""

    k: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    seed: int = 0
    batch_size: int = 16
    precision: Precision = "auto"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else as given."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def generation_dtype(device: torch.device, precision: Precision = "auto") -> Optional[torch.dtype]:
    """The dtype generation computes in: ``torch.bfloat16`` (autocast) or ``None`` (the weights' own).

    ``auto`` is bf16 on CUDA and on CPUs with native bf16 matrix multiplies (AVX512-BF16, AMX;
    :func:`varirm.reward_model.cpu_bf16_is_native`), where it is several times faster than fp32 for
    decoding; on other CPUs bf16 runs in a slow scalar fallback, so ``auto`` keeps fp32 there.
    ``bf16`` and ``fp32`` force one or the other.
    """
    from varirm.reward_model import cpu_bf16_is_native

    if precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda" or (device.type == "cpu" and cpu_bf16_is_native()):
        return torch.bfloat16
    return None


def load_policy(name_or_path: str, dtype: Optional[str] = None, trust_remote_code: bool = False):
    """A causal LM and its tokenizer (pad != eos, chat template ensured by :func:`load_tokenizer`)."""
    from varirm.reward_model import DTYPES

    tokenizer = load_tokenizer(name_or_path, trust_remote_code)
    kwargs = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = DTYPES[dtype]
    policy = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    if policy.get_input_embeddings().weight.shape[0] < len(tokenizer):
        policy.resize_token_embeddings(len(tokenizer))
    return policy, tokenizer


def response_suffix(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> str:
    """What rendering appends after a response's text (template end-of-turn text, or eos)."""
    _, rendered = render_prompt_response(tokenizer, prompt, "\x00")
    return rendered.split("\x00", 1)[1]


def clean_response(text: str, suffix: str) -> str:
    r"""Cut generated text where the template's end-of-turn text starts. Special tokens are already
    skipped in decoding (ChatML's ``<|im_end|>``, Llama-3's ``<|eot_id|>``), so this matters for
    plain-text suffixes such as the default template's newline.

    >>> clean_response("apple pear\n<|user|>", "\n")
    'apple pear'
    """
    for stop in (suffix, suffix.strip()):
        if stop and stop in text:
            return text[: text.index(stop)]
    return text


def stop_ids(tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt]) -> list[int]:
    """eos plus any special token that the template puts after a response (e.g. ``<|eot_id|>``
    when a base model's eos differs from its chat template's end of turn)."""
    ids = {tokenizer.eos_token_id}
    special = set(tokenizer.all_special_ids)
    for prompt in prompts[:1]:
        suffix_ids = tokenizer(response_suffix(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        ids.update(i for i in suffix_ids if i in special and i != tokenizer.pad_token_id)
    return sorted(i for i in ids if i is not None)


def _accepts(model: torch.nn.Module, name: str) -> bool:
    """Whether the (peft-unwrapped) model's ``forward`` takes the keyword ``name``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(base.forward).parameters


def sample_next(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """One token per row from ``softmax(logits / temperature)``, restricted to the smallest set of
    top tokens whose probability reaches ``top_p`` (nucleus sampling; ``top_p = 1``: every token).
    ``logits`` ``(n, V)``; returns ``(n,)``.

    Inverse-CDF sampling: one uniform draw ``u`` per row and the first token whose cumulative
    probability exceeds ``u``. ``torch.multinomial``, which ``generate`` uses, draws one exponential
    per vocabulary entry on CPU (its share of a sampling pass: ``scripts/bench_sampling.py``'s
    profile, BENCHMARKS.md); this is a cumulative sum. No top-k cut
    (``generate`` cuts to the top 50 unless told otherwise): RLOO's log-probabilities and KL are
    those of the full distribution, which is the one sampled here.

    >>> sample_next(torch.tensor([[0.0, 10.0, 0.0]]), 1.0, 1.0)
    tensor([1])
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (n, V)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # drop a token when the tokens above it already reach top_p (the top token always stays)
        drop = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(drop, 0.0))
    cdf = probs.cumsum(-1)  # (n, V)
    u = torch.rand(cdf.shape[0], 1, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u).squeeze(1).clamp_max(cdf.shape[1] - 1)


@torch.no_grad()
def sample_tokens(policy: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int,
                  max_new_tokens: int, temperature: float, top_p: float, stops: list[int], pad_id: int,
                  preallocate: Optional[bool] = None) -> torch.Tensor:
    """``k`` sampled continuations of each left-padded prompt, as ``generate(do_sample=True,
    num_return_sequences=k)`` makes them but faster on CPU:

    - each prompt is run once (not ``k`` times) and its KV cache repeated ``k`` times;
    - only the last position's logits are computed for the prompt (``logits_to_keep=1``);
    - rows that reached a stop token leave the batch (their cache rows too), so the remaining
      steps compute only unfinished rows;
    - tokens are drawn by :func:`sample_next` (no per-token exponential draws, no top-k cut);
    - on CPU (``preallocate=None``; ``True``/``False`` force it) the KV cache is allocated once for
      ``p + max_new_tokens`` positions and written in place (:mod:`varirm.kv_cache`); otherwise, or for a
      model it does not fit, the model's own cache.

    Position ids come from the attention mask (``cumsum - 1``), as in ``generate`` and in RLOO's
    log-probabilities. ``input_ids``, ``attention_mask``: ``(b, p)``. Returns ``(b * k, p + r)``
    prompt-major, ``r <= max_new_tokens``: each continuation up to and including its first stop
    token, then ``pad_id``.
    """
    b, p = input_ids.shape
    n = b * k
    kwargs = {"logits_to_keep": 1} if _accepts(policy, "logits_to_keep") else {}
    if preallocate is None:  # measured on CPU only; on a GPU it would reserve the longest case up front
        preallocate = input_ids.device.type == "cpu"
    cache = preallocated_cache(policy, p + max_new_tokens) if preallocate else None
    if cache is not None:
        kwargs["cache"] = cache
    positions = (attention_mask.cumsum(-1) - 1).clamp_min(0)  # (b, p)
    out = policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True, **kwargs)
    cache = out.cache
    cache.batch_repeat_interleave(k)
    logits = out.logits[:, -1].repeat_interleave(k, dim=0)  # (n, V)
    mask = attention_mask.repeat_interleave(k, dim=0)  # (n, p + steps so far), active rows
    next_pos = mask.sum(-1)  # (n,) position of the next token
    active = torch.arange(n, device=input_ids.device)  # rows of the output still generating
    new = torch.full((n, max_new_tokens), pad_id, dtype=input_ids.dtype, device=input_ids.device)
    stop = torch.tensor(stops, device=input_ids.device)
    steps = 0
    for t in range(max_new_tokens):
        token = sample_next(logits, temperature, top_p)  # (a,)
        new[active, t] = token
        steps = t + 1
        done = torch.isin(token, stop)
        if t + 1 == max_new_tokens or bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            active, token, mask, next_pos = active[keep], token[keep], mask[keep], next_pos[keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        out = policy(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos[:, None],
                     cache=cache, use_cache=True)
        cache, logits, next_pos = out.cache, out.logits[:, -1], next_pos + 1
    return torch.cat([input_ids.repeat_interleave(k, dim=0), new[:, :steps]], dim=1)


@torch.no_grad()
def generate_ids(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt],
                 config: SamplingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``config.k`` continuations of each rendered prompt (left-padded) with
    :func:`sample_tokens`, in the precision :func:`generation_dtype` picks. Returns ``ids``
    ``(len(prompts) * k, p + r)``, prompt-major, and the prompts' attention mask
    ``(len(prompts), p)``; the continuation starts at column ``p``."""
    device = next(policy.parameters()).device
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        texts = [render_prompt_response(tokenizer, p, "")[0] for p in prompts]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    finally:
        tokenizer.padding_side = side
    dtype = generation_dtype(device, config.precision)
    with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        ids = sample_tokens(policy, enc["input_ids"], enc["attention_mask"], config.k, config.max_new_tokens,
                            config.temperature, config.top_p, stop_ids(tokenizer, prompts), tokenizer.pad_token_id)
    return ids, enc["attention_mask"]


@torch.no_grad()
def generate_responses(policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt],
                       config: SamplingConfig, progress: bool = True) -> list[list[str]]:
    """``k`` sampled responses for each prompt, as text. Each batch is seeded with
    ``seed + batch index``, so the same seed and batch size give the same responses."""
    was_training = policy.training
    policy.eval()
    out: list[list[str]] = []
    try:
        starts = range(0, len(prompts), config.batch_size)
        for b, start in enumerate(tqdm(starts, desc="sampling", disable=not progress)):
            batch = prompts[start:start + config.batch_size]
            torch.manual_seed(config.seed + b)
            ids, prompt_mask = generate_ids(policy, tokenizer, batch, config)
            decoded = tokenizer.batch_decode(ids[:, prompt_mask.shape[1]:], skip_special_tokens=True)
            for i, prompt in enumerate(batch):
                suffix = response_suffix(tokenizer, prompt)
                out.append([clean_response(t, suffix) for t in decoded[i * config.k:(i + 1) * config.k]])
    finally:
        policy.train(was_training)
    return out


def _prompt_of(row: Any, path: str, row_index: int, field: str = "prompt") -> Prompt:
    """The prompt of a raw row: a non-empty string or a non-empty list of messages."""
    if not isinstance(row, dict):
        raise DataError(path, row_index, None, f"expected an object, got {type(row).__name__}")
    if field not in row:
        raise DataError(path, row_index, field, "is missing")
    prompt = row[field]
    if isinstance(prompt, list):
        from varirm.formats import BadRow, messages

        try:
            messages(prompt, field)
        except BadRow as e:
            raise DataError(path, row_index, e.field, e.message) from None
    elif not (isinstance(prompt, str) and prompt.strip()):
        raise DataError(path, row_index, field, "must be a non-empty string or list of messages")
    return prompt


def read_prompts(path: str, field: str = "prompt", limit: Optional[int] = None, split: str = "train") -> list[Prompt]:
    """Prompts from a jsonl/json/parquet file or a Hub dataset split: the ``field`` of each row
    (messages or a string)."""
    from varirm.formats import read_raw_rows

    prompts = []
    for row_index, row in read_raw_rows(path, split):
        if isinstance(row, DataError):
            raise row
        prompts.append(_prompt_of(row, path, row_index, field))
        if limit is not None and len(prompts) >= limit:
            break
    return prompts


def write_samples(path: str, prompts: list[Prompt], responses: list[list[str]], policy_id: str,
                  config: SamplingConfig) -> None:
    """Write a samples file atomically."""
    with atomic_open(path) as f:
        for prompt, group in zip(prompts, responses):
            row = {"prompt": prompt, "responses": group, "policy": policy_id, "sampling": asdict(config)}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def tokenize_groups(tokenizer, prompts: list, responses: list[list[str]], max_length: int,
                    gold: Optional[list[list[float]]] = None) -> list[dict[str, Any]]:
    """Token ids of each prompt's ``k`` samples (via :func:`encode_prompt_response`), cut to
    ``max_length`` like training pairs; ``gold`` labels carried along when known."""
    groups = []
    for i, (prompt, group) in enumerate(zip(prompts, responses)):
        ids = [fit_to_length(*encode_prompt_response(tokenizer, prompt, r), max_length) for r in group]
        groups.append({"ids": ids, "gold": None if gold is None else [float(g) for g in gold[i]]})
    return groups


def read_samples(path: str) -> list[dict[str, Any]]:
    """Rows of a samples file, validated: prompt, and a list of at least two response strings."""
    from varirm.formats import read_raw_rows

    rows = []
    for row_index, row in read_raw_rows(path):
        if isinstance(row, DataError):
            raise row
        _prompt_of(row, path, row_index)
        responses = row.get("responses")
        if not isinstance(responses, list) or len(responses) < 2 or not all(isinstance(r, str) for r in responses):
            raise DataError(path, row_index, "responses", "must be a list of at least two strings")
        rows.append(row)
    if not rows:
        raise DataError(path, None, None, "no rows")
    k = len(rows[0]["responses"])
    for row_index, row in enumerate(rows):
        if len(row["responses"]) != k:
            raise DataError(path, row_index, "responses", f"has {len(row['responses'])} responses but row 0 has {k}; "
                            "every row needs the same number (k)")
    return rows


def sample(policy: str, prompts: str, output: str, k: int = 4, temperature: float = 1.0, top_p: float = 1.0,
           max_new_tokens: int = 32, seed: int = 0, batch_size: int = 16, num_prompts: Optional[int] = None,
           prompt_field: str = "prompt", split: str = "train", dtype: Optional[str] = None, device: str = "auto",
           precision: Precision = "auto") -> str:
    """``varirm sample``: generate ``k`` responses per prompt with a policy and write a samples file.

    Args:
        policy: Hub id or local directory of a causal LM.
        prompts: jsonl/json file whose rows hold a prompt (chat messages or a string).
        output: Samples file to write (jsonl).
        k: Responses per prompt.
        temperature: Sampling temperature.
        top_p: Nucleus sampling threshold.
        max_new_tokens: Longest response in tokens.
        seed: Seed; the same seed (and batch size) gives the same file.
        batch_size: Prompts per generate call.
        num_prompts: Use only the first this many prompts.
        prompt_field: Field of the prompt in each row.
        split: Split to read when ``prompts`` is a Hub dataset id.
        dtype: Weights dtype; default: ``bfloat16`` when generation runs in bf16 (``precision``),
            which saves autocast's casts of every weight at every step, else the checkpoint's.
        device: ``auto`` (cuda if available), ``cpu`` or ``cuda``.
        precision: ``auto`` (bf16 on CUDA and on CPUs with native bf16 matmuls, else fp32),
            ``bf16`` or ``fp32`` (see :func:`generation_dtype`).
    """
    config = SamplingConfig(k=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
                            batch_size=batch_size, precision=precision)
    target = torch.device(resolve_device(device))
    if dtype is None and generation_dtype(target, precision) == torch.bfloat16:
        dtype = "bfloat16"
    model, tokenizer = load_policy(policy, dtype)
    model.to(target)
    prompt_list = read_prompts(prompts, prompt_field, num_prompts, split)
    responses = generate_responses(model, tokenizer, prompt_list, config)
    write_samples(output, prompt_list, responses, policy, config)
    return output


