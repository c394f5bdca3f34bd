import json

import pytest

from varirm.synthetic import TOPICS, WORD_TOPIC, gold_reward, make_pairs, prompt_topic, write_task


def test_gold_reward_by_hand():
    prompt = "List some fruit words."
    assert gold_reward(prompt, "apple pear plum") == 3 / 8
    assert gold_reward(prompt, "apple apple apple") == 1 / 8  # repeats earn nothing
    assert gold_reward(prompt, "apple dog red") == -1 / 8  # 1 on-topic, 2 of other topics
    assert gold_reward(prompt, "apple um pear basically") == 0.0  # fillers count as other words
    assert gold_reward(prompt, "apple pear apple um dog") == 0.0  # the module docstring's example
    assert gold_reward(prompt, "Apple, PEAR; kiwi!") == 3 / 8  # words are lower-cased letter runs
    assert gold_reward(prompt, " ".join(TOPICS["fruit"])) == 12 / 8  # no clipping: the whole list
    assert gold_reward(prompt, " ".join(TOPICS["tool"])) == -12 / 8
    assert gold_reward(prompt, "") == 0.0
    assert gold_reward([{"role": "user", "content": "Write animal words."}], "dog cat wolf") == 3 / 8


def test_strong_responses_never_use_fillers_and_pi0_demos_use_only_known_words():
    import random

    from varirm.synthetic import FILLERS, KNOWN, pi0_demo, strong_response

    rng = random.Random(0)
    strong = [strong_response(rng, "music", 0.9) for _ in range(300)]
    assert not any(w in FILLERS for r in strong for w in r.split())
    assert {w for r in strong for w in r.split() if WORD_TOPIC.get(w) == "music"} == set(TOPICS["music"])
    demos = [pi0_demo(rng, "music", 0.5) for _ in range(300)]
    words = [w for r in demos for w in r.split()]
    assert {w for w in words if w not in FILLERS} == set(TOPICS["music"][:KNOWN["music"]])  # 2 known words
    assert 0.1 < sum(w in FILLERS for w in words) / len(words) < 0.9
    # slip 0: no fillers, and every answer has at least one word
    assert all(r and not any(w in FILLERS for w in r.split()) for r in (pi0_demo(rng, "tool", 0.0) for _ in range(100)))


def test_gold_has_between_prompt_structure_under_the_demonstrations():
    """Under pi0's demonstration distribution, prompts differ in reachable gold (topic coverage), so
    gold's whitened within-prompt variance is well below 1 (0.15 here; pi0's own samples, noisier,
    measure 0.36: results/world), while an RM blind to fillers (coverage only) has less than 0.6x
    of gold's."""
    import random

    import torch

    from varirm.synthetic import FILLERS, make_prompts, pi0_demo
    from varirm.variance import variance_report

    rng = random.Random(0)
    prompts = [row["prompt"] for row in make_prompts(128, seed=5)]
    responses = [[pi0_demo(rng, prompt_topic(p[0]["content"]), rng.uniform(0, 0.6)) for _ in range(8)] for p in prompts]
    gold = torch.tensor([[gold_reward(p, r) for r in rs] for p, rs in zip(prompts, responses)])
    coverage = torch.tensor([[float(len({w for w in r.split() if w not in FILLERS})) for r in rs] for rs in responses])
    gold_var = variance_report(gold)["whitened_variance_mean"]
    assert 0.1 < gold_var < 0.3, gold_var
    assert variance_report(coverage)["whitened_variance_mean"] < 0.6 * gold_var


def test_every_word_has_one_topic():
    words = [w for ws in TOPICS.values() for w in ws]
    assert len(words) == len(set(words))


def test_prompt_without_topic_is_an_error():
    with pytest.raises(ValueError, match="no topic"):
        prompt_topic("Tell me a story.")


def test_pairs_are_labelled_by_gold_with_a_gap():
    rows = make_pairs(200, seed=3)
    for row in rows:
        gc, gr = gold_reward(row["prompt"], row["chosen"]), gold_reward(row["prompt"], row["rejected"])
        assert gc == row["gold_chosen"] and gr == row["gold_rejected"]
        assert gc - gr >= 0.25
    assert make_pairs(20, seed=3) == rows[:20]  # seeded


def test_write_task_files(tmp_path):
    paths = write_task(str(tmp_path), n_train=10, n_val=5, n_test=5, seed=1)
    lines = [json.loads(line) for line in open(paths["train"])]
    assert len(lines) == 10 and set(lines[0]) >= {"prompt", "chosen", "rejected"}
    val = [json.loads(line) for line in open(paths["val"])]
    assert val != lines[:5]  # splits use different seeds


def test_flat_gold_reward_is_perfectly_accurate_with_low_whitened_variance():
    import torch

    from varirm.synthetic import flat_gold_reward, make_prompts, pi0_demo
    from varirm.variance import on_policy_accuracy, variance_report

    rng = __import__("random").Random(0)
    prompts = [row["prompt"] for row in make_prompts(64, seed=5)]
    responses = [[pi0_demo(rng, prompt_topic(p[0]["content"]), rng.uniform(0, 0.6)) for _ in range(8)] for p in prompts]
    gold = torch.tensor([[gold_reward(p, r) for r in rs] for p, rs in zip(prompts, responses)])
    flat = torch.tensor([[flat_gold_reward(p, r) for r in rs] for p, rs in zip(prompts, responses)])
    assert on_policy_accuracy(flat, gold).item() == 1.0  # every within-prompt comparison as gold makes it
    flat_var = variance_report(flat)["whitened_variance_mean"]
    gold_var = variance_report(gold)["whitened_variance_mean"]
    assert flat_var < 0.1 * gold_var, (flat_var, gold_var)
    # the same prompt always gets the same level, whatever the response
    levels = {round(flat_gold_reward(prompts[0], r) - 0.25 * gold_reward(prompts[0], r), 9) for r in responses[0]}
    assert len(levels) == 1
    fruit = "List some fruit words."
    assert (flat_gold_reward(fruit, "apple pear") - flat_gold_reward(fruit, "dog")
            == pytest.approx(0.25 * (2 / 8 + 1 / 8)))
    # the intermediate squashing: same levels, 4x the band, variance between flat and gold
    from varirm.synthetic import half_flat_gold_reward

    half = torch.tensor([[half_flat_gold_reward(p, r) for r in rs] for p, rs in zip(prompts, responses)])
    assert on_policy_accuracy(half, gold).item() == 1.0
    assert flat_var < variance_report(half)["whitened_variance_mean"] < gold_var
    assert half_flat_gold_reward(fruit, "apple pear") - half_flat_gold_reward(fruit, "dog") == pytest.approx(3 / 8)


def test_second_policy_demonstrations_come_from_another_slip_range(tmp_path):
    from varirm.synthetic import FILLERS, write_task

    paths = write_task(str(tmp_path), n_train=0, n_val=0, n_test=0, n_demos=400, demo_slip=(0.6, 0.9))
    rows = [json.loads(line) for line in open(paths["demos"])]
    fillers = [w in FILLERS for r in rows for w in r["response"].split()]
    assert len(fillers) > 1000 and 0.25 < sum(fillers) / len(fillers) < 0.6
    assert json.load(open(tmp_path / "task.json"))["demo_slip"] == [0.6, 0.9]


def test_bt_label_noise_in_training_pairs():
    clean, noisy = make_pairs(2000, seed=4), make_pairs(2000, seed=4, bt_temperature=0.25)
    assert all(r["gold_chosen"] > r["gold_rejected"] for r in clean)
    flipped = sum(r["gold_chosen"] < r["gold_rejected"] for r in noisy) / len(noisy)
    # gaps are >= 0.25, so each flip has probability <= sigmoid(-1) = 0.27; most gaps are larger
    assert 0.02 < flipped < 0.27, flipped
    assert make_pairs(30, seed=4, bt_temperature=0.0) == clean[:30]  # no noise: the same pairs as before
