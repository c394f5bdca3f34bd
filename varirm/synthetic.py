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
import os
import random
import re
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
    if not isinstance(prompt, str):
        prompt = [m for m in prompt if m["role"] == "user"][-1]["content"]
    topic = prompt_topic(prompt)
    words = re.findall(r"[a-z]+", response.lower())
    on = {w for w in words if WORD_TOPIC.get(w) == topic}
    off = sum(1 for w in words if WORD_TOPIC.get(w) != topic)
    return max(-1.0, min(1.0, (len(on) - off) / FULL_SCORE_WORDS))


def make_prompt(rng: random.Random) -> list[dict[str, str]]:
    topic = rng.choice(list(TOPICS))
    return [{"role": "user", "content": rng.choice(PROMPT_TEMPLATES).format(topic=topic)}]


def sample_response(rng: random.Random, topic: str, p_on: float, min_words: int = 2, max_words: int = 10) -> str:
    """Words drawn with replacement: on-topic with probability ``p_on``, else from other topics."""
    others = [w for t, ws in TOPICS.items() if t != topic for w in ws]
    n = rng.randint(min_words, max_words)
    return " ".join(rng.choice(TOPICS[topic]) if rng.random() < p_on else rng.choice(others) for _ in range(n))


def make_pairs(n: int, seed: int, min_gap: float = 0.25) -> list[dict[str, Any]]:
    """``n`` conversational preference pairs labelled by the gold reward; the two responses of a
    pair differ in gold reward by at least ``min_gap`` (ties carry no preference)."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        prompt = make_prompt(rng)
        topic = prompt_topic(prompt[0]["content"])
        a, b = (sample_response(rng, topic, rng.random()) for _ in range(2))
        ga, gb = gold_reward(prompt, a), gold_reward(prompt, b)
        if abs(ga - gb) < min_gap:
            continue
        chosen, rejected = (a, b) if ga > gb else (b, a)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                     "gold_chosen": max(ga, gb), "gold_rejected": min(ga, gb)})
    return rows


def corpus(n: int = 2000, seed: int = 0) -> list[str]:
    """Texts for training a tokenizer that covers the task's words and prompts."""
    rng = random.Random(seed)
    texts = [" ".join(words) for words in TOPICS.values()]
    for _ in range(n):
        prompt = make_prompt(rng)
        texts.append(prompt[0]["content"] + " " + sample_response(rng, prompt_topic(prompt[0]["content"]), rng.random()))
    return texts


def write_task(output_dir: str, n_train: int = 4000, n_val: int = 500, n_test: int = 500, seed: int = 0) -> dict[str, str]:
    """Write ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` (disjoint seeds) and ``task.json``."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {}
    for offset, (split, n) in enumerate([("train", n_train), ("val", n_val), ("test", n_test)]):
        path = os.path.join(output_dir, f"{split}.jsonl")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            for row in make_pairs(n, seed * 1000 + offset):
                f.write(json.dumps(row) + "\n")
        os.replace(tmp, path)
        paths[split] = path
    with open(os.path.join(output_dir, "task.json"), "w") as f:
        json.dump({"task": "varirm.synthetic topic words", "gold_reward": "varirm.synthetic.gold_reward",
                   "seed": seed, "sizes": {"train": n_train, "val": n_val, "test": n_test}}, f, indent=2)
    return paths
