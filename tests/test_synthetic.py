import json

import pytest

from varirm.synthetic import TOPICS, gold_reward, make_pairs, prompt_topic, write_task


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
