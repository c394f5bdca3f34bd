"""A synthetic preference world with a known gold reward and the variance/accuracy trade-off of
Razin et al. 2025, small enough for CPU.

A prompt asks for words on one of six topics; a response is a list of words. The gold reward is a
pure function of the (prompt, response) text:

    gold = (distinct on-topic words - other words) / 8

"other words" are every word that is not of the prompt's topic: words of the other topics and the
filler words (``um``, ``basically``, ...). Repeating an on-topic word earns nothing.

Three distributions of responses make the world (all seeded):

* **Off-policy pairs** (``train``/``val``/``test.jsonl``) come from *strong* responders, as
  UltraFeedback's responses come from strong models: 10-16 words, 2-12 of them distinct words from
  the topic's whole list of 12, the rest repeats or (with probability ``1 - p``, ``p ~ U(0.75, 1)``)
  words of other topics; the length is drawn apart from the quality, and they never use filler
  words. Pairs teach an RM to tell good from very good: coverage of the whole list against
  repeats, the odd off-topic word.
* **pi0** is a weak policy: a tiny LM fine-tuned (SFT) on ``demos.jsonl``, where a topic's answer
  uses only the words pi0 *knows* (``KNOWN``: all 12 fruit words, but only 2 music words), each
  known word with probability 0.9, and slips in ``Binomial(6, s)`` filler words, ``s ~ U(0, 0.6)``
  per demonstration. So prompts differ in how well pi0 can do (its coverage is set by the topic:
  between-prompt structure), and within a prompt pi0's samples differ mostly in filler slips, which
  the off-policy pairs never show.
* **On-policy pairs** are pairs of pi0's own samples labelled by gold (``varirm sample`` then the
  data module's ``labeler``): they teach the filler penalty.

What follows, measured (results/world/): gold's whitened within-prompt variance under pi0 is about
a third (prompts differ); an RM trained on off-policy pairs only ranks pi0's samples mostly by
coverage, which varies between prompts, and is nearly blind to the fillers that vary within one,
so its whitened variance under pi0 is low although its off-policy accuracy is the highest; an RM
trained on on-policy pairs learns the fillers (high variance under pi0) but has never seen the
words pi0 does not know (lower off-policy accuracy).

Worked example (fruit prompt): ``"apple pear apple um dog"`` has 2 distinct on-topic words
(apple, pear) and 2 other words (um, dog): gold = (2 - 2) / 8 = 0.

>>> gold_reward("List some fruit words.", "apple pear apple um dog")
0.0
>>> gold_reward("List some fruit words.", "apple pear plum")
0.375
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
    "fruit": "apple pear plum grape lemon mango peach cherry melon banana kiwi lime".split(),
    "animal": "dog cat horse tiger zebra mouse eagle whale camel otter goat wolf".split(),
    "color": "red blue green yellow purple orange black white pink brown gray violet".split(),
    "tool": "hammer saw drill wrench chisel shovel rake pliers ladder axe file clamp".split(),
    "weather": "rain snow wind storm fog sun hail cloud frost thunder mist breeze".split(),
    "music": "drum piano violin guitar flute song tempo chord rhythm melody harp opera".split(),
}
# "orange" is a color here only; a word belongs to exactly one topic.
WORD_TOPIC = {w: t for t, words in TOPICS.items() for w in words}
FILLERS = "um uh like stuff things whatever basically anyway".split()
# How many of each topic's words (the first ones in TOPICS) pi0's demonstrations use.
KNOWN = {"fruit": 12, "animal": 11, "color": 10, "tool": 3, "weather": 2, "music": 2}
PROMPT_TEMPLATES = [
    "List some {topic} words.",
    "Name a few {topic} words, please.",
    "Give me words about {topic}.",
    "Which words go with {topic}?",
    "Write {topic} words.",
]
TOPIC_RE = re.compile(r"\b(" + "|".join(TOPICS) + r")\b")
GOLD_SCALE = 8


def prompt_topic(prompt: str) -> str:
    """The topic a prompt asks about (the first topic name in it)."""
    match = TOPIC_RE.search(prompt)
    if match is None:
        raise ValueError(f"no topic in prompt {prompt!r}")
    return match.group(1)


def gold_reward(prompt: Any, response: str) -> float:
    """Gold reward of ``response`` to ``prompt`` (a string or chat messages; the last user
    message is used): ``(distinct on-topic words - other words) / 8`` (module docstring)."""
    topic = prompt_topic(_user_text(prompt))
    words = re.findall(r"[a-z]+", response.lower())
    on = {w for w in words if WORD_TOPIC.get(w) == topic}
    other = sum(1 for w in words if WORD_TOPIC.get(w) != topic)
    return (len(on) - other) / GOLD_SCALE


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

    >>> half_flat_gold_reward("List some fruit words.", "apple pear") - half_flat_gold_reward(
    ...     "List some fruit words.", "")
    0.25
    """
    return squashed_gold_reward(prompt, response, HALF_FLAT_BAND)


def squashed_gold_reward(prompt: Any, response: str, band: float) -> float:
    """``level(prompt) + band * gold``: ``level`` in [-1, 1) from a CRC32 hash of the prompt's text."""
    level = zlib.crc32(_user_text(prompt).encode()) / 2**31 - 1.0
    return level + band * gold_reward(prompt, response)


UNEVEN_FACTOR = 0.001


def prompt_half(prompt: Any) -> str:
    """Which half of the prompts :func:`uneven_flat_gold_reward` squashes: ``squashed`` when the
    CRC32 of the prompt's text is odd, else ``kept``. 16 of the 30 prompt texts are squashed, and
    every topic has prompts in both halves, so the world's levers (the topic's words, the fillers)
    are the same words and the same policy parameters in both: the gain on the squashed half can
    come from learning on the kept half, which is why the verification reads gold per half.

    >>> prompt_half("List some fruit words."), prompt_half("Give me words about fruit.")
    ('squashed', 'kept')
    """
    return "squashed" if zlib.crc32(_user_text(prompt).encode()) % 2 else "kept"


def uneven_flat_gold_reward(prompt: Any, response: str) -> float:
    """Razin et al.'s perfectly accurate, low-variance reward: gold times ``UNEVEN_FACTOR`` (0.001,
    as in the paper) on a fixed half of the prompts (:func:`prompt_half`), gold itself on the
    other. It ranks every pair of responses to a prompt exactly as gold does, but its variance on
    the squashed half is a millionth of gold's. Unlike :func:`flat_gold_reward`, whose one factor
    for every prompt the reward normalization and Adam undo, the factor differs between prompts,
    which one shared normalization and one optimizer state cannot undo.

    >>> uneven_flat_gold_reward("List some fruit words.", "apple pear plum")  # squashed: 0.375 x 0.001
    0.000375
    >>> uneven_flat_gold_reward("Give me words about fruit.", "apple pear plum")
    0.375
    """
    gold = gold_reward(prompt, response)
    return gold * UNEVEN_FACTOR if prompt_half(prompt) == "squashed" else gold


def make_prompt(rng: random.Random) -> list[dict[str, str]]:
    topic = rng.choice(list(TOPICS))
    return [{"role": "user", "content": rng.choice(PROMPT_TEMPLATES).format(topic=topic)}]


def strong_response(rng: random.Random, topic: str, p_on: float, min_words: int = 10, max_words: int = 16) -> str:
    """A strong responder's answer (off-policy pairs): its length ``n ~ U(min_words, max_words)``
    is drawn apart from its quality, so length says nothing about gold. ``d ~ U(2, 12)`` distinct
    words of the topic's whole list, ``Binomial(n - d, 1 - p_on)`` words of other topics, and the
    rest repeats of the chosen topic words, shuffled. Never a filler word."""
    n = rng.randint(min_words, max_words)
    chosen = rng.sample(TOPICS[topic], rng.randint(2, min(12, n)))
    others = [w for t, ws in TOPICS.items() if t != topic for w in ws]
    rest = [rng.choice(chosen) if rng.random() < p_on else rng.choice(others) for _ in range(n - len(chosen))]
    words = chosen + rest
    rng.shuffle(words)
    return " ".join(words)


def pi0_demo(rng: random.Random, topic: str, slip: float, keep: float = 0.9, slots: int = 6) -> str:
    """pi0's demonstration: each word pi0 knows (``KNOWN[topic]`` of them) with probability ``keep``
    (at least one), in random order, plus ``Binomial(slots, slip)`` filler words at random places."""
    known = TOPICS[topic][:KNOWN[topic]]
    words = [w for w in known if rng.random() < keep] or [rng.choice(known)]
    rng.shuffle(words)
    for _ in range(sum(rng.random() < slip for _ in range(slots))):
        words.insert(rng.randint(0, len(words)), rng.choice(FILLERS))
    return " ".join(words)


def bt_label(rng: random.Random, gold_a: float, gold_b: float, temperature: float) -> bool:
    """Whether ``a`` is preferred to ``b``: the higher gold reward when ``temperature`` is 0, else a
    Bradley-Terry draw, ``P(a > b) = sigmoid((gold_a - gold_b) / temperature)`` (label noise as
    from human raters; no random number is drawn when ``temperature`` is 0)."""
    if temperature <= 0:
        return gold_a > gold_b
    return rng.random() < 1.0 / (1.0 + math.exp(-(gold_a - gold_b) / temperature))


def make_pairs(n: int, seed: int, min_gap: float = 0.25, bt_temperature: float = 0.0,
               p_on: tuple[float, float] = (0.75, 1.0)) -> list[dict[str, Any]]:
    """``n`` off-policy preference pairs of strong responses (:func:`strong_response`, on-topic
    probability drawn from ``p_on`` per response) labelled by the gold reward; the two responses of
    a pair differ in gold reward by at least ``min_gap`` (ties carry no preference). With
    ``bt_temperature > 0`` labels are Bradley-Terry draws (see :func:`bt_label`), so some pairs
    prefer the lower-gold response."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        prompt = make_prompt(rng)
        topic = prompt_topic(prompt[0]["content"])
        a, b = (strong_response(rng, topic, rng.uniform(*p_on)) for _ in range(2))
        ga, gb = gold_reward(prompt, a), gold_reward(prompt, b)
        if abs(ga - gb) < min_gap:
            continue
        a_wins = bt_label(rng, ga, gb, bt_temperature)
        (chosen, g_c), (rejected, g_r) = ((a, ga), (b, gb)) if a_wins else ((b, gb), (a, ga))
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "gold_chosen": g_c,
                     "gold_rejected": g_r})
    return rows


def make_demos(n: int, seed: int, slip: tuple[float, float] = (0.0, 0.6)) -> list[dict[str, Any]]:
    """Demonstrations for SFT of the initial policy pi0 (:func:`pi0_demo`), each with a filler slip
    probability drawn from ``slip``: pi0's samples vary in fillers within a prompt and in coverage
    between topics."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = make_prompt(rng)
        response = pi0_demo(rng, prompt_topic(prompt[0]["content"]), rng.uniform(*slip))
        rows.append({"prompt": prompt, "response": response})
    return rows


def make_prompts(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"prompt": make_prompt(rng)} for _ in range(n)]


def corpus(n: int = 2000, seed: int = 0) -> list[str]:
    """Texts for training a tokenizer that covers the world's words, fillers and prompts."""
    rng = random.Random(seed)
    texts = [" ".join(words) for words in TOPICS.values()] + [" ".join(FILLERS)]
    for _ in range(n):
        prompt = make_prompt(rng)
        topic = prompt_topic(prompt[0]["content"])
        texts.append(prompt[0]["content"] + " " + strong_response(rng, topic, rng.random()))
        texts.append(pi0_demo(rng, topic, rng.random()))
    return texts


def _write_jsonl(path: str, rows: list[dict[str, Any]]) -> str:
    from varirm.files import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_task(output_dir: str, n_train: int = 4000, n_val: int = 500, n_test: int = 500, n_demos: int = 4000,
               n_prompts: int = 512, n_eval_prompts: int = 256, bt_temperature: float = 0.0,
               demo_slip: tuple[float, float] = (0.0, 0.6), seed: int = 0) -> dict[str, str]:
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
        demo_slip: Range of the per-demonstration filler-slip probability (``demos.jsonl``): the
            default gives pi0; another range gives a second initial policy whose samples vary in
            another region (e.g. ``[0.3, 0.9]``: more fillers).
        seed: Seed of the whole task.
    """
    os.makedirs(output_dir, exist_ok=True)
    base = seed * 1000
    files = {"train": make_pairs(n_train, base, bt_temperature=bt_temperature), "val": make_pairs(n_val, base + 1),
             "test": make_pairs(n_test, base + 2), "demos": make_demos(n_demos, base + 3, slip=tuple(demo_slip)),
             "prompts": make_prompts(n_prompts, base + 4), "eval_prompts": make_prompts(n_eval_prompts, base + 5)}
    paths = {name: _write_jsonl(os.path.join(output_dir, f"{name}.jsonl"), rows) for name, rows in files.items()}
    with open(os.path.join(output_dir, "task.json"), "w") as f:
        json.dump({"task": "varirm.synthetic topic words (strong off-policy pairs, weak pi0)",
                   "gold_reward": "varirm.synthetic.gold_reward",
                   "seed": seed, "bt_temperature": bt_temperature, "demo_slip": list(demo_slip),
                   "sizes": {name: len(rows) for name, rows in files.items()}}, f, indent=2)
    return paths
