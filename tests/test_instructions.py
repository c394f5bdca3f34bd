"""The instruction world (varirm.instructions): the graded gold by worked examples, the uneven flat
gold, and the files write_world builds from real chat prompts."""

import json

import pytest
from torch.testing import assert_close

from varirm.chat import load_tokenizer
from varirm.errors import DataError
from varirm.instructions import (
    INSTRUCTIONS,
    KINDS,
    gold_reward,
    instruct,
    instruction_of,
    prompt_half,
    uneven_flat_gold_reward,
    write_world,
)
from varirm.synthetic import UNEVEN_FACTOR


def _ask(instruction: str) -> list[dict]:
    return [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Tell me about tea.\n\n" + instruction}]


@pytest.mark.parametrize("instruction, response, expected", [
    ("Answer in at most 15 words.", "Tea is a drink.", 1.0),
    ("Answer in at most 15 words.", " ".join(["word"] * 30), 0.5),  # 15 / 30
    ("Answer in at most 25 words.", "", 0.0),
    ("Do not use any commas in your answer.", "Tea is good and warm.", 1.0),
    ("Do not use any commas in your answer.", "Tea, coffee, milk.", 1 / 3),
    ("Do not use any commas in your answer.", ",,,", 0.0),  # no words: nothing was answered
    ("Answer with exactly 3 bullet points, each starting with '- '.", "- green\n- black\n- white", 1.0),
    ("Answer with exactly 3 bullet points, each starting with '- '.", "Tea:\n- green\n* black", 0.5),  # 2
    ("Answer with exactly 3 bullet points, each starting with '- '.", "1. green\n2. black\n3. oolong", 0.25),
    ("Answer with exactly 3 bullet points, each starting with '- '.", "- a\n- b\n- c\n- d\n- e", 1 / 3),
    ("Write your whole answer in lowercase letters.", "tea is a drink", 1.0),
    ("Write your whole answer in lowercase letters.", "Tea is a Drink", 0.5),
    ("Use the word 'simple' at least twice.", "It is simple.", 0.5),
    ("Use the word 'simple' at least twice.", "Simple! simple, SIMPLE.", 1.0),
    ("Use the word 'simple' at least twice.", "simpler and simplest", 0.0),  # whole words only
])
def test_gold_scores_each_instruction_by_hand(instruction, response, expected):
    assert_close(gold_reward(_ask(instruction), response), expected)
    assert_close(gold_reward(_ask(instruction)[-1]["content"], response), expected)  # a text prompt too


def test_every_instruction_instruct_writes_is_read_back_and_scored_in_range():
    messages = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Tell me a story.  "}]
    seen = set()
    for key in range(50):
        prompt = instruct(messages, key)
        assert prompt[:2] == messages[:2] and messages[2]["content"] == "Tell me a story.  "  # not changed in place
        kind, params = instruction_of(prompt)
        seen.add(kind)
        assert kind == KINDS[key % 5] and prompt[2]["content"].startswith("Tell me a story.\n\n")
        for response in ("", "Once, upon a time - a Story.", "- a\n- b\n- c", " ".join(["x"] * 80)):
            assert 0.0 <= gold_reward(prompt, response) <= 1.0
    assert seen == set(INSTRUCTIONS)
    with pytest.raises(ValueError, match="none of the instructions"):
        gold_reward("Tell me a story.", "Once.")


def test_uneven_flat_gold_ranks_as_gold_and_squashes_one_half():
    responses = ["Tea.", "Tea is a warm drink, loved by many.", " ".join(["tea"] * 40), "- a\n- b"]
    halves = set()
    for key in range(20):
        prompt = instruct([{"role": "user", "content": f"Question {key}?"}], key)
        gold = [gold_reward(prompt, r) for r in responses]
        flat = [uneven_flat_gold_reward(prompt, r) for r in responses]
        half = prompt_half(prompt)
        halves.add(half)
        factor = UNEVEN_FACTOR if half == "squashed" else 1.0
        assert_close(flat, [g * factor for g in gold])
        assert sorted(range(4), key=lambda i: gold[i]) == sorted(range(4), key=lambda i: flat[i])  # accuracy 1
    assert halves == {"kept", "squashed"}


def _source(path, n: int, long_user: int = 0) -> str:
    rows = [{"conversations": [{"from": "human",
                                "value": f"Question number {i}?" + " very" * (300 if i < long_user else 0)}],
             "chosen": {"from": "gpt", "value": f"Answer {i}, short."},
             "rejected": {"from": "gpt", "value": f"Answer {i}, which goes on, and on, " + "and on " * 40}}
            for i in range(n)]
    path.write_text(json.dumps(rows))
    return str(path)


def test_write_world_splits_rows_orders_pairs_by_gold_and_counts_what_it_leaves_out(tmp_path, tiny_model_dir):
    source = _source(tmp_path / "src.json", 30, long_user=4)
    paths = write_world(str(tmp_path / "world"), source, tiny_model_dir, max_prompt_tokens=200, response_tokens=16,
                        n_eval_rows=6, variants=2, seed=0)
    world = json.loads(open(paths["world"]).read())
    tokenizer, rows = load_tokenizer(tiny_model_dir), json.loads(open(source).read())
    read = {name: [json.loads(line) for line in open(paths[name])] for name in ("prompts", "eval_prompts",
                                                                                 "train", "test")}
    assert world["source_rows"] == 30 and world["left_out"]["prompt_too_long"] == 4
    assert len(read["eval_prompts"]) == 12 and len(read["prompts"]) == 40  # 6 and 20 rows x 2 variants
    base = {name: {r["prompt"][-1]["content"].split("\n\n")[0] for r in read[name]} for name in ("prompts",
                                                                                                 "eval_prompts")}
    assert not base["prompts"] & base["eval_prompts"]  # no conversation in both splits
    ties = world["left_out"]["pairs_tied_by_gold"]
    assert len(read["train"]) + ties["train"] == 40 and len(read["test"]) + ties["test"] == 12
    assert world["sizes"] == {name: len(rows) for name, rows in read.items()}
    for pair in read["train"] + read["test"]:
        assert gold_reward(pair["prompt"], pair["chosen"]) > gold_reward(pair["prompt"], pair["rejected"])
        assert pair["gold_margin"] > 0
        for response in (pair["chosen"], pair["rejected"]):  # cut to 16 tokens (decoded, re-encoded: +-1)
            assert len(tokenizer(response, add_special_tokens=False)["input_ids"]) <= 17
    assert any(len(p["rejected"]) < len(r["rejected"]["value"]) for p, r in zip(read["train"], rows))
    assert sum(world["instructions"]["prompts"].values()) == 40
    # the same call writes the same files
    again = write_world(str(tmp_path / "again"), source, tiny_model_dir, max_prompt_tokens=200, response_tokens=16,
                        n_eval_rows=6, variants=2, seed=0)
    assert open(again["train"]).read() == open(paths["train"]).read()


def test_write_world_errors_name_the_file_and_keep_nothing_half_written(tmp_path, tiny_model_dir):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"conversations": [{"from": "human", "value": "Hi?"}],
                                "chosen": {"from": "gpt", "value": "Hello."}}]))
    with pytest.raises(DataError, match=r"bad\.json.*rejected"):
        write_world(str(tmp_path / "w"), str(bad), tiny_model_dir)
    assert not (tmp_path / "w").exists()
    source = _source(tmp_path / "small.json", 5)
    with pytest.raises(DataError, match=r"small\.json: 5 rows .* n_eval_rows=40"):
        write_world(str(tmp_path / "w"), source, tiny_model_dir)
    assert not (tmp_path / "w").exists()


def test_write_world_on_the_shared_real_data(tmp_path, tiny_model_dir, shared_data):
    paths = write_world(str(tmp_path / "w"), str(shared_data / "dpo_en_demo.json"), tiny_model_dir,
                        max_prompt_tokens=160, n_eval_rows=20)
    world = json.loads(open(paths["world"]).read())
    assert world["source_rows"] == 300 and world["left_out"]["prompt_too_long"] > 0
    kept = 300 - world["left_out"]["prompt_too_long"]
    assert world["sizes"]["prompts"] + world["sizes"]["eval_prompts"] == 2 * kept
    assert set(world["instructions"]["prompts"]) == set(KINDS) and set(world["halves"]["prompts"]) == {"kept",
                                                                                                         "squashed"}
