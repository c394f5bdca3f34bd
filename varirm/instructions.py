"""A verifiable gold reward on real prompts: how well a response follows an instruction.

The real model's verification (``recipes/verify/real_smollm2.yaml``) needs a true reward that no
learned judge stands in for. :func:`write_world` takes real chat prompts (the shared
``dpo_en_demo.json``), appends to the last user message one instruction per prompt variant, and
:func:`gold_reward` scores a response by how well it follows that instruction, read back from the
prompt (so the gold needs nothing but the prompt and the response). Every score is graded, in
``[0, 1]``, and 0 for a response with no words:

- ``Answer in at most {n} words.``: 1 up to ``n`` words, then ``n / words``.
- ``Do not use any commas in your answer.``: ``1 / (1 + commas)``.
- ``Answer with exactly 3 bullet points, each starting with '- '.``: ``1 / (1 + |bullets - 3|)``,
  a bullet being a line that starts with ``-``, ``*`` or ``•`` and a space.
- ``Write your whole answer in lowercase letters.``: the share of words with no capital letter.
- ``Use the word '{w}' at least twice.``: ``min(count, 2) / 2`` (whole words, any case).

>>> p = [{"role": "user", "content": "Name a fruit.\\n\\nAnswer in at most 2 words."}]
>>> gold_reward(p, "Apple."), gold_reward(p, "A red apple, maybe."), gold_reward(p, "")
(1.0, 0.5, 0.0)
>>> gold_reward("Tell me.\\n\\nUse the word 'simple' at least twice.", "Simple: keep it simple.")
1.0

:func:`uneven_flat_gold_reward` is Razin et al.'s perfectly accurate, low-variance reward on this
world: gold times 0.001 on the half of the prompts :func:`prompt_half` picks by a hash of the prompt
text (both halves hold every kind of instruction, so what the policy learns on one half can carry to
the other, as in the synthetic world).
"""

from __future__ import annotations

import json
import os
import random
import re
import zlib
from collections import Counter
from typing import Any, Callable

from varirm.errors import DataError
from varirm.synthetic import UNEVEN_FACTOR

WORD_RE = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")
BULLET_RE = re.compile(r"^\s*[-*•]\s+\S", re.MULTILINE)
WORD_LIMITS = (15, 25)
BULLETS = 3
KEYWORDS = ("simple", "clear", "important", "example", "first")


def words(text: str) -> list[str]:
    return WORD_RE.findall(text)


def _word_limit(response: str, n: str) -> float:
    count = len(words(response))
    return min(1.0, int(n) / count) if count else 0.0


def _no_commas(response: str) -> float:
    return 1.0 / (1 + response.count(",")) if words(response) else 0.0


def _bullets(response: str, n: str) -> float:
    return 1.0 / (1 + abs(len(BULLET_RE.findall(response)) - int(n))) if words(response) else 0.0


def _lowercase(response: str) -> float:
    found = words(response)
    return sum(w == w.lower() for w in found) / len(found) if found else 0.0


def _keyword(response: str, word: str) -> float:
    count = sum(w.lower() == word for w in words(response))
    return min(count, 2) / 2


# kind -> (instruction template with at most one {}, pattern that reads the instruction back, scorer)
INSTRUCTIONS: dict[str, tuple[str, re.Pattern, Callable[..., float]]] = {
    "word_limit": ("Answer in at most {} words.", re.compile(r"Answer in at most (\d+) words\.$"), _word_limit),
    "no_commas": ("Do not use any commas in your answer.",
                  re.compile(r"Do not use any commas in your answer\.$"), _no_commas),
    "bullets": ("Answer with exactly {} bullet points, each starting with '- '.",
                re.compile(r"Answer with exactly (\d+) bullet points, each starting with '- '\.$"), _bullets),
    "lowercase": ("Write your whole answer in lowercase letters.",
                  re.compile(r"Write your whole answer in lowercase letters\.$"), _lowercase),
    "keyword": ("Use the word '{}' at least twice.", re.compile(r"Use the word '([a-z]+)' at least twice\.$"),
                _keyword),
}
KINDS = tuple(INSTRUCTIONS)


def _user_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    if not users:
        raise ValueError(f"prompt has no user message: {prompt!r}")
    return users[-1]


def instruction_of(prompt: Any) -> tuple[str, list[str]]:
    """The instruction a prompt (text or chat messages: the last user message) ends with: its kind
    and parameters, e.g. ``("word_limit", ["15"])``."""
    text = _user_text(prompt).rstrip()
    for kind, (_, pattern, _) in INSTRUCTIONS.items():
        match = pattern.search(text)
        if match:
            return kind, list(match.groups())
    raise ValueError(f"prompt ends with none of the instructions of varirm.instructions: ...{text[-80:]!r}")


def gold_reward(prompt: Any, response: str) -> float:
    """How well ``response`` follows the instruction ``prompt`` ends with, in ``[0, 1]`` (module docstring)."""
    kind, params = instruction_of(prompt)
    return float(INSTRUCTIONS[kind][2](response, *params))


def prompt_half(prompt: Any) -> str:
    """Which half of the prompts :func:`uneven_flat_gold_reward` squashes: ``squashed`` when the
    CRC32 of the last user message is odd, else ``kept``."""
    return "squashed" if zlib.crc32(_user_text(prompt).encode()) % 2 else "kept"


def uneven_flat_gold_reward(prompt: Any, response: str) -> float:
    """Gold times ``UNEVEN_FACTOR`` (0.001, as in Razin et al.) on the ``squashed`` half of the
    prompts, gold itself on the other: every pair of responses to a prompt is ranked as gold ranks
    it, with a millionth of gold's variance on half of the prompts.

    >>> p = "Name a fruit.\\n\\nAnswer in at most 2 words."
    >>> prompt_half(p), uneven_flat_gold_reward(p, "A red apple, maybe.")
    ('squashed', 0.0005)
    """
    gold = gold_reward(prompt, response)
    return gold * UNEVEN_FACTOR if prompt_half(prompt) == "squashed" else gold


def instruct(messages: list[dict[str, str]], key: int) -> list[dict[str, str]]:
    """``messages`` with an instruction appended to the last user message; ``key`` picks its kind
    (``key % 5``) and its parameter (word limit, keyword)."""
    kind = KINDS[key % len(KINDS)]
    param = {"word_limit": WORD_LIMITS[key // 5 % len(WORD_LIMITS)], "bullets": BULLETS,
             "keyword": KEYWORDS[key // 10 % len(KEYWORDS)]}.get(kind)
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    out = [dict(m) for m in messages]
    out[last]["content"] = out[last]["content"].rstrip() + "\n\n" + INSTRUCTIONS[kind][0].format(param)
    return out


def _cut(tokenizer, text: str, max_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens], skip_special_tokens=True)


def _pair(prompt: list[dict[str, str]], a: str, b: str) -> dict[str, Any] | None:
    """The pair ``a``, ``b`` ordered by gold (``None`` on a tie), in the conversational format."""
    gold_a, gold_b = gold_reward(prompt, a), gold_reward(prompt, b)
    if gold_a == gold_b:
        return None
    chosen, rejected = (a, b) if gold_a > gold_b else (b, a)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "gold_margin": abs(gold_a - gold_b)}


def write_world(output_dir: str, source: str, tokenizer: str, max_prompt_tokens: int = 160,
                response_tokens: int = 64, n_eval_rows: int = 40, variants: int = 2, seed: int = 0) -> dict[str, str]:
    """Write the instruction world built on real chat prompts (``varirm make-instruction-world``).

    Every row of ``source`` whose prompt, with its instruction and the chat template, fits in
    ``max_prompt_tokens`` tokens gives ``variants`` prompts (the same conversation with different
    instructions). The rows are split at random (``seed``) into held-out rows (``n_eval_rows``) and
    training rows, so no conversation is in both. Files: ``prompts.jsonl`` and ``eval_prompts.jsonl``
    (``{"prompt": messages}``), ``train.jsonl`` and ``test.jsonl`` (off-policy pairs: the data set's
    own two responses to each prompt, cut to ``response_tokens`` tokens as the policy's are, ordered
    by :func:`gold_reward`; a pair that gold ties is left out) and ``world.json``, which counts
    every row left out and why.

    Args:
        output_dir: Directory to write.
        source: Preference data with chat prompts (any format :mod:`varirm.formats` reads), e.g.
            ``../shared/data/dpo_en_demo.json``.
        tokenizer: Model directory or Hub id whose tokenizer and chat template measure prompts
            and cut responses (the policy's).
        max_prompt_tokens: Longest templated prompt kept; longer rows are left out (counted).
        response_tokens: Length the data set's responses are cut to (the policy's ``max_new_tokens``).
        n_eval_rows: Source rows held out for evaluation prompts and test pairs.
        variants: Prompts (instructions) per source row.
        seed: Seed of the split.
    """
    from varirm.chat import load_tokenizer
    from varirm.files import atomic_write_text
    from varirm.formats import load_preference_rows

    tok = load_tokenizer(tokenizer)
    rows = load_preference_rows(source, "train", "auto", {}, skip_bad=False)[0]
    kept, too_long, no_chat = [], 0, 0
    for row in rows:
        if not row["prompt_messages"]:
            no_chat += 1
            continue
        prompts = [instruct(row["prompt_messages"], zlib.crc32(_user_text(row["prompt_messages"]).encode()) + v)
                   for v in range(variants)]
        lengths = [len(tok(tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True),
                           add_special_tokens=False)["input_ids"]) for p in prompts]
        if max(lengths) > max_prompt_tokens:
            too_long += 1
            continue
        kept.append((row, prompts))
    if len(kept) <= n_eval_rows:
        raise DataError(source, None, None, f"{len(kept)} rows have prompts of at most {max_prompt_tokens} tokens; "
                        f"n_eval_rows={n_eval_rows} leaves none for training")
    random.Random(seed).shuffle(kept)
    files, ties = {}, {}
    # (prompts file, pairs file, rows): held-out rows first, then the training rows
    for prompts_name, pairs_name, part in (("eval_prompts", "test", kept[:n_eval_rows]),
                                           ("prompts", "train", kept[n_eval_rows:])):
        pairs = [_pair(p, _cut(tok, row["chosen"], response_tokens), _cut(tok, row["rejected"], response_tokens))
                 for row, ps in part for p in ps]
        ties[pairs_name] = sum(pair is None for pair in pairs)
        files[prompts_name] = [{"prompt": p} for _, ps in part for p in ps]
        files[pairs_name] = [pair for pair in pairs if pair is not None]
    os.makedirs(output_dir, exist_ok=True)
    paths = {}
    for name, out in files.items():
        paths[name] = os.path.join(output_dir, f"{name}.jsonl")
        atomic_write_text(paths[name], "".join(json.dumps(r) + "\n" for r in out))
    summary = {"world": "varirm.instructions (instruction following on real prompts)",
               "gold_reward": "varirm.instructions.gold_reward", "gold_range": [0.0, 1.0], "source": source,
               "tokenizer": tokenizer, "seed": seed, "max_prompt_tokens": max_prompt_tokens,
               "response_tokens": response_tokens, "variants": variants, "source_rows": len(rows),
               "left_out": {"prompt_too_long": too_long, "no_chat_prompt": no_chat,
                            "pairs_tied_by_gold": ties},
               "sizes": {name: len(out) for name, out in files.items()},
               "instructions": {name: dict(Counter(instruction_of(r["prompt"])[0] for r in files[name]))
                                for name in ("prompts", "eval_prompts")},
               "halves": {name: dict(Counter(prompt_half(r["prompt"]) for r in files[name]))
                          for name in ("prompts", "eval_prompts")}}
    paths["world"] = os.path.join(output_dir, "world.json")
    atomic_write_text(paths["world"], json.dumps(summary, indent=2))
    return paths
