"""A synthetic preference task with a known gold reward, small enough for CPU.

A prompt asks for words on one of six topics; a response is a list of words. The gold reward
is a pure function of the (prompt, response) text:

    gold = clip((distinct on-topic words - off-topic words) / 8, -1, 1)

so it is graded (steps of 1/8), rewards covering the topic with different words, penalizes
off-topic words, and gives nothing for repeating a word. A tiny transformer can learn it (it
must match response words against the prompt's topic), and a policy can be good or bad at it.

>>> gold_reward("List some fruit words.", "apple pear apple dog")
0.125
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import zlib
from typing import Any

TOPICS: dict[str, list[str]] = {
    "fruit": "apple pear plum grape lemon mango peach cherry melon banana".split(),
    "animal": "dog cat horse tiger zebra mouse eagle whale camel otter".split(),
    "color": "red blue green yellow purple orange black white pink brown".split(),
    "tool": "hammer saw drill wrench chisel shovel rake pliers ladder axe".split(),
    "weather": "rain snow wind storm fog sun hail cloud frost thunder".split(),
    "music": "drum piano violin guitar flute song tempo chord rhythm melody".split(),
}
# "orange" is a color here only; a word belongs to exactly one topic.
WORD_TOPIC = {w: t for t, words in TOPICS.items() for w in words}
PROMPT_TEMPLATES = [
    "List some {topic} words.",
    "Name a few {topic} words, please.",
    "Give me words about {topic}.",
    "Which words go with {topic}?",
    "Write {topic} words.",
]
TOPIC_RE = re.compile(r"\b(" + "|".join(TOPICS) + r")\b")
FULL_SCORE_WORDS = 8


def prompt_topic(prompt: str) -> str:
    """The topic a prompt asks about (the first topic name in it)."""
    match = TOPIC_RE.search(prompt)
    if match is None:
        raise ValueError(f"no topic in prompt {prompt!r}")
    return match.group(1)


def gold_reward(prompt: Any, response: str) -> float:
    """Gold reward of ``response`` to ``prompt`` (a string or chat messages; the last user
    message is used). See the module docstring for the formula."""
    topic = prompt_topic(_user_text(prompt))
    words = re.findall(r"[a-z]+", response.lower())
    on = {w for w in words if WORD_TOPIC.get(w) == topic}
    off = sum(1 for w in words if WORD_TOPIC.get(w) != topic)
    return max(-1.0, min(1.0, (len(on) - off) / FULL_SCORE_WORDS))


FLAT_BAND = 0.25
HALF_FLAT_BAND = 1.0


def _user_text(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else [m for m in prompt if m["role"] == "user"][-1]["content"]


def flat_gold_reward(prompt: Any, response: str) -> float:
    """A perfectly accurate reward with low variance (Razin et al.'s counterexample to "accuracy
    is all"): the gold reward squashed into a band of width ``2 * FLAT_BAND`` around a level that
    depends only on the prompt,

        flat = level(prompt) + FLAT_BAND * gold,   level in [-1, 1) from a hash of the prompt text.

    Within a prompt it is a strictly increasing function of gold, so it ranks every pair of
    responses to a prompt exactly as gold does (on- and off-policy accuracy 1). Across prompts the
    levels dominate the spread, so after global whitening the within-prompt variance is small
    (0.013 under the synthetic pi0, against 0.985 for gold): RLOO's leave-one-out
    advantages, divided by the global scale, are about 8x smaller than gold's.

    >>> flat_gold_reward("List some fruit words.", "apple pear") - flat_gold_reward("List some fruit words.", "")
    0.0625
    """
    return squashed_gold_reward(prompt, response, FLAT_BAND)


def half_flat_gold_reward(prompt: Any, response: str) -> float:
    """The intermediate squashing between gold and :func:`flat_gold_reward`: the same
    prompt-dependent levels, a band four times wider (``HALF_FLAT_BAND``), so its within-prompt
    variance under a policy sits between theirs while it still ranks exactly as gold.

    >>> half_flat_gold_reward("List some fruit words.", "apple pear") - half_flat_gold_reward("List some fruit words.", "")
    0.25
    """
    return squashed_gold_reward(prompt, response, HALF_FLAT_BAND)


def squashed_gold_reward(prompt: Any, response: str, band: float) -> float:
    """``level(prompt) + band * gold``: ``level`` in [-1, 1) from a CRC32 hash of the prompt's text."""
    level = zlib.crc32(_user_text(prompt).encode()) / 2**31 - 1.0
    return level + band * gold_reward(prompt, response)


def make_prompt(rng: random.Random) -> list[dict[str, str]]:
    topic = rng.choice(list(TOPICS))
    return [{"role": "user", "content": rng.choice(PROMPT_TEMPLATES).format(topic=topic)}]


def sample_response(rng: random.Random, topic: str, p_on: float, min_words: int = 2, max_words: int = 10) -> str:
    """Words drawn with replacement: on-topic with probability ``p_on``, else from other topics."""
    others = [w for t, ws in TOPICS.items() if t != topic for w in ws]
    n = rng.randint(min_words, max_words)
    return " ".join(rng.choice(TOPICS[topic]) if rng.random() < p_on else rng.choice(others) for _ in range(n))


def bt_label(rng: random.Random, gold_a: float, gold_b: float, temperature: float) -> bool:
    """Whether ``a`` is preferred to ``b``: the higher gold reward when ``temperature`` is 0, else a
    Bradley-Terry draw, ``P(a > b) = sigmoid((gold_a - gold_b) / temperature)`` (label noise as
    from human raters; no random number is drawn when ``temperature`` is 0)."""
    if temperature <= 0:
        return gold_a > gold_b
    return rng.random() < 1.0 / (1.0 + math.exp(-(gold_a - gold_b) / temperature))


def make_pairs(n: int, seed: int, min_gap: float = 0.25, bt_temperature: float = 0.0) -> list[dict[str, Any]]:
    """``n`` conversational preference pairs labelled by the gold reward; the two responses of a
    pair differ in gold reward by at least ``min_gap`` (ties carry no preference). With
    ``bt_temperature > 0`` labels are Bradley-Terry draws (see :func:`bt_label`), so some pairs
    prefer the lower-gold response."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        prompt = make_prompt(rng)
        topic = prompt_topic(prompt[0]["content"])
        a, b = (sample_response(rng, topic, rng.random()) for _ in range(2))
        ga, gb = gold_reward(prompt, a), gold_reward(prompt, b)
        if abs(ga - gb) < min_gap:
            continue
        a_wins = bt_label(rng, ga, gb, bt_temperature)
        (chosen, g_c), (rejected, g_r) = ((a, ga), (b, gb)) if a_wins else ((b, gb), (a, ga))
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "gold_chosen": g_c, "gold_rejected": g_r})
    return rows


def make_demos(n: int, seed: int, p_on: tuple[float, float] = (0.2, 0.8)) -> list[dict[str, Any]]:
    """Imperfect demonstrations for SFT of the initial policy pi0: each response is on-topic with a
    probability drawn from ``p_on``, so pi0's samples vary widely in gold reward."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = make_prompt(rng)
        response = sample_response(rng, prompt_topic(prompt[0]["content"]), rng.uniform(*p_on))
        rows.append({"prompt": prompt, "response": response})
    return rows


def make_prompts(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"prompt": make_prompt(rng)} for _ in range(n)]


def corpus(n: int = 2000, seed: int = 0) -> list[str]:
    """Texts for training a tokenizer that covers the task's words and prompts."""
    rng = random.Random(seed)
    texts = [" ".join(words) for words in TOPICS.values()]
    for _ in range(n):
        prompt = make_prompt(rng)
        texts.append(prompt[0]["content"] + " " + sample_response(rng, prompt_topic(prompt[0]["content"]), rng.random()))
    return texts


def _write_jsonl(path: str, rows: list[dict[str, Any]]) -> str:
    from varirm.files import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_task(output_dir: str, n_train: int = 4000, n_val: int = 500, n_test: int = 500, n_demos: int = 4000,
               n_prompts: int = 512, n_eval_prompts: int = 256, bt_temperature: float = 0.0,
               demo_p_on: tuple[float, float] = (0.2, 0.8), seed: int = 0) -> dict[str, str]:
    """Write the synthetic task's files (each from its own seed, so they are disjoint draws).

    Args:
        output_dir: Directory to write.
        n_train: Off-policy preference pairs for training (``train.jsonl``).
        n_val: Validation pairs (``val.jsonl``).
        n_test: Test pairs (``test.jsonl``).
        n_demos: Imperfect demonstrations for SFT of the initial policy (``demos.jsonl``).
        n_prompts: Prompts for on-policy sampling during training (``prompts.jsonl``).
        n_eval_prompts: Held-out prompts for evaluating reward variance (``eval_prompts.jsonl``; 256 keeps
            the 95% interval of an RM's whitened variance under pi0 within ±0.05: results/eval_ci_width.md).
        bt_temperature: Label noise of the training pairs: 0 labels by the higher gold reward; above
            0, Bradley-Terry draws ``P(a > b) = sigmoid((gold_a - gold_b) / bt_temperature)``.
            Validation and test pairs stay noiseless.
        demo_p_on: Range of the per-demonstration probability of an on-topic word (``demos.jsonl``):
            the default gives pi0; another range gives a second initial policy whose samples vary
            in another region (e.g. ``[0.6, 0.95]``: mostly on-topic, varying in length and slips).
        seed: Seed of the whole task.
    """
    os.makedirs(output_dir, exist_ok=True)
    base = seed * 1000
    files = {"train": make_pairs(n_train, base, bt_temperature=bt_temperature), "val": make_pairs(n_val, base + 1),
             "test": make_pairs(n_test, base + 2), "demos": make_demos(n_demos, base + 3, p_on=tuple(demo_p_on)),
             "prompts": make_prompts(n_prompts, base + 4), "eval_prompts": make_prompts(n_eval_prompts, base + 5)}
    paths = {name: _write_jsonl(os.path.join(output_dir, f"{name}.jsonl"), rows) for name, rows in files.items()}
    with open(os.path.join(output_dir, "task.json"), "w") as f:
        json.dump({"task": "varirm.synthetic topic words", "gold_reward": "varirm.synthetic.gold_reward",
                   "seed": seed, "bt_temperature": bt_temperature, "demo_p_on": list(demo_p_on), "sizes": {name: len(rows) for name, rows in files.items()}}, f, indent=2)
    return paths
