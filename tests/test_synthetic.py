import json

import pytest

from varirm.synthetic import TOPICS, WORD_TOPIC, gold_reward, make_pairs, prompt_topic, write_task


def test_gold_reward_by_hand():
    prompt = "List some fruit words."
    assert gold_reward(prompt, "apple pear plum") == 3 / 8
    assert gold_reward(prompt, "apple apple apple") == 1 / 8  # repeats earn nothing
    assert gold_reward(prompt, "apple dog red") == -1 / 8  # 1 on-topic, 2 off-topic
    assert gold_reward(prompt, " ".join(TOPICS["fruit"])) == 1.0  # clipped at 1
    assert gold_reward(prompt, " ".join(TOPICS["tool"])) == -1.0
    assert gold_reward([{"role": "user", "content": "Write animal words."}], "dog cat") == 2 / 8


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

    from varirm.synthetic import flat_gold_reward, make_prompts, sample_response
    from varirm.variance import on_policy_accuracy, variance_report

    rng = __import__("random").Random(0)
    prompts = [row["prompt"] for row in make_prompts(64, seed=5)]
    responses = [[sample_response(rng, prompt_topic(p[0]["content"]), rng.random()) for _ in range(8)] for p in prompts]
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
    assert flat_gold_reward(fruit, "apple pear") - flat_gold_reward(fruit, "dog") == pytest.approx(0.25 * (2 / 8 + 1 / 8))
    # the intermediate squashing: same levels, 4x the band, variance between flat and gold
    from varirm.synthetic import half_flat_gold_reward

    half = torch.tensor([[half_flat_gold_reward(p, r) for r in rs] for p, rs in zip(prompts, responses)])
    assert on_policy_accuracy(half, gold).item() == 1.0
    assert flat_var < variance_report(half)["whitened_variance_mean"] < gold_var
    assert half_flat_gold_reward(fruit, "apple pear") - half_flat_gold_reward(fruit, "dog") == pytest.approx(3 / 8)


def test_second_policy_demonstrations_come_from_another_on_topic_range(tmp_path):
    from varirm.synthetic import write_task

    paths = write_task(str(tmp_path), n_train=0, n_val=0, n_test=0, n_demos=400, demo_p_on=(0.6, 0.95))
    rows = [json.loads(line) for line in open(paths["demos"])]
    words = [w for r in rows for w in r["response"].split()]
    on_topic = [WORD_TOPIC.get(w) == prompt_topic(r["prompt"][0]["content"]) for r in rows for w in r["response"].split()]
    assert len(words) > 1000 and 0.6 < sum(on_topic) / len(on_topic) < 0.95


def test_bt_label_noise_in_training_pairs():
    clean, noisy = make_pairs(2000, seed=4), make_pairs(2000, seed=4, bt_temperature=0.25)
    assert all(r["gold_chosen"] > r["gold_rejected"] for r in clean)
    flipped = sum(r["gold_chosen"] < r["gold_rejected"] for r in noisy) / len(noisy)
    # gaps are >= 0.25, so each flip has probability <= sigmoid(-1) = 0.27; most gaps are larger
    assert 0.02 < flipped < 0.27, flipped
    assert make_pairs(30, seed=4, bt_temperature=0.0) == clean[:30]  # no noise: the same pairs as before
