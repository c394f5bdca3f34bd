"""varirm/preference_data.py, loaders.py, on_policy.py: chat-template tokenization, truncation and
dropping, the cache, collation, the length-grouped sampler, on-policy pairs and sample groups,
bad-row counts, and the CLI's one-line data errors."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close
from torch.utils.data import DataLoader

import varirm.preference_data
from varirm.chat import encode_prompt_response, fit_to_length, load_tokenizer
from varirm.errors import DataError
from varirm.formats import load_preference_rows
from varirm.loaders import LengthGroupedSampler, collate_pairs, padding_fraction
from varirm.preference_data import PreferenceDataModule

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_jsonl(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return str(path)


def build(model_dir, train, **kwargs) -> PreferenceDataModule:
    """A trainer-less DataModule, prepared and set up for fit."""
    dm = PreferenceDataModule(tokenizer_name_or_path=model_dir, train=train, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def en_demo(tiny_model_dir):
    """dpo_en_demo.json's path and, per row, (prompt_ids, chosen_ids, rejected_ids) untruncated,
    encoded here independently of the DataModule."""
    path = SHARED_DATA / "dpo_en_demo.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    tok = load_tokenizer(tiny_model_dir)
    rows, _ = load_preference_rows(str(path), "train", "auto", {}, False)
    encoded = []
    for r in rows:
        p, c = encode_prompt_response(tok, r["prompt_messages"], r["chosen"])
        _, rj = encode_prompt_response(tok, r["prompt_messages"], r["rejected"])
        encoded.append((p, c, rj))
    return str(path), encoded


# --- tokenization: chat template, raw text ----------------------------------------------------


def test_conversational_row_is_rendered_with_the_chat_template(tmp_path, tiny_model_dir, tokenizer):
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    train = write_jsonl(tmp_path / "conv.jsonl", [{"prompt": prompt, "chosen": "hello", "rejected": "go away"}])
    ds = build(tiny_model_dir, train, max_length=256).splits["train"]
    chosen_text = tokenizer.decode(ds[0]["chosen_ids"])
    expected = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": "hello"}], tokenize=False)
    assert chosen_text == expected == "<|system|>\nBe brief.\n<|user|>\nhi\n<|assistant|>\nhello\n"
    assert tokenizer.decode(ds[0]["rejected_ids"]) == "<|system|>\nBe brief.\n<|user|>\nhi\n<|assistant|>\ngo away\n"
    p, c = encode_prompt_response(tokenizer, prompt, "hello")
    assert ds[0]["chosen_ids"] == p + c


def test_raw_text_row_is_prompt_response_eos(tmp_path, tiny_model_dir, tokenizer):
    train = write_jsonl(tmp_path / "std.jsonl", [{"prompt": "Q: hi\nA:", "chosen": " yes", "rejected": " no"}])
    ds = build(tiny_model_dir, train, max_length=256).splits["train"]
    assert tokenizer.decode(ds[0]["chosen_ids"]) == "Q: hi\nA: yes<|eos|>"
    assert tokenizer.decode(ds[0]["rejected_ids"]) == "Q: hi\nA: no<|eos|>"
    assert ds[0]["chosen_ids"][-1] == tokenizer.eos_token_id


def test_chinese_sharegpt_rows_round_trip_through_the_template(tiny_model_dir, tokenizer):
    path = SHARED_DATA / "dpo_zh_demo.json"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    dm = build(tiny_model_dir, str(path), max_length=1 << 15)
    assert dm.stats["train"]["overlong"] == 0 and dm.stats["train"]["pairs"] == 300
    raw = json.loads(path.read_text(encoding="utf-8"))
    roles = {"system": "system", "human": "user", "gpt": "assistant"}
    for x, ids in zip(raw, dm.splits["train"]["chosen_ids"]):
        messages = [{"role": roles[m["from"]], "content": m["value"]} for m in x["conversations"]]
        messages.append({"role": "assistant", "content": x["chosen"]["value"]})
        assert tokenizer.decode(ids) == tokenizer.apply_chat_template(messages, tokenize=False)


# --- truncation and dropping ------------------------------------------------------------------


def test_fit_to_length_by_hand():
    assert fit_to_length([1, 2, 3], [4, 5], 5) == [1, 2, 3, 4, 5]  # fits: unchanged
    assert fit_to_length([1, 2, 3], [4, 5], 4) == [2, 3, 4, 5]  # prompt cut from the left
    assert fit_to_length([1, 2, 3], [4, 5, 6, 7, 8], 4) == [5, 6, 7, 8]  # then the response start; its end is kept


def test_truncation_cuts_the_prompt_from_the_left_and_keeps_the_response_end(tmp_path, tiny_model_dir, tokenizer):
    prompt = [{"role": "user", "content": "tell me a long story about apples " * 10}]
    rows = [{"prompt": prompt, "chosen": "short answer", "rejected": "no " * 40 + "the end"}]
    ds = build(tiny_model_dir, write_jsonl(tmp_path / "long.jsonl", rows), max_length=24).splits["train"]
    p, c = encode_prompt_response(tokenizer, prompt, "short answer")
    _, r = encode_prompt_response(tokenizer, prompt, rows[0]["rejected"])
    assert len(c) < 24 < len(r) and len(p) > 24  # chosen: prompt cut; rejected: longer than max_length alone
    chosen, rejected = ds[0]["chosen_ids"], ds[0]["rejected_ids"]
    assert len(chosen) == len(rejected) == 24
    assert chosen[-len(c):] == c  # the whole response, where the score is read
    assert chosen[: 24 - len(c)] == p[-(24 - len(c)):]  # the end of the prompt; its start is cut
    assert tokenizer.decode(chosen).endswith("<|assistant|>\nshort answer\n")
    assert rejected == r[-24:]  # the last 24 ids of the response
    assert tokenizer.decode(rejected).endswith("no the end\n")


@pytest.mark.parametrize("max_length", [256, 512])
def test_real_data_truncated_to_max_length_keeps_every_row(tiny_model_dir, en_demo, max_length):
    path, encoded = en_demo
    dm = build(tiny_model_dir, path, max_length=max_length, overlong="truncate")
    expected_overlong = sum(len(p) + max(len(c), len(r)) > max_length for p, c, r in encoded)
    stats = dm.stats["train"]
    assert 0 < expected_overlong < 300
    assert ((stats["rows_read"], stats["bad_rows"], stats["overlong"], stats["pairs"])
            == (300, 0, expected_overlong, 300))
    ds = dm.splits["train"]
    assert ds["row"] == list(range(300))
    for (p, c, r), chosen, rejected in zip(encoded, ds["chosen_ids"], ds["rejected_ids"]):
        for resp, ids in ((c, chosen), (r, rejected)):
            full = p + resp
            assert len(ids) == min(len(full), max_length)
            assert ids == full[-max_length:]  # left-cut: the last max_length ids, untouched when it fits
            assert ids[-1] == resp[-1]  # the response end survives


def test_drop_removes_exactly_the_rows_over_max_length(tiny_model_dir, en_demo):
    path, encoded = en_demo
    overlong = [len(p) + max(len(c), len(r)) > 512 for p, c, r in encoded]
    dropped = build(tiny_model_dir, path, max_length=512, overlong="drop")
    kept = [i for i, o in enumerate(overlong) if not o]
    assert dropped.stats["train"]["overlong"] == sum(overlong) > 0
    assert dropped.stats["train"]["overlong_policy"] == "drop"
    assert dropped.stats["train"]["pairs"] == len(kept) == 300 - sum(overlong)
    assert dropped.splits["train"]["row"] == kept
    assert dropped.splits["train"]["chosen_ids"] == [encoded[i][0] + encoded[i][1] for i in kept]  # untouched
    truncated = build(tiny_model_dir, path, max_length=512, overlong="truncate")
    assert truncated.stats["train"]["overlong"] == sum(overlong)
    assert truncated.stats["train"]["pairs"] == 300


def test_drop_keeps_a_row_of_exactly_max_length_and_counts_the_longer_response(tmp_path, tiny_model_dir, tokenizer):
    rows = [{"prompt": "Q" + " and" * (3 * i) + "?", "chosen": " yes", "rejected": " no" * (1 + 6 * (i % 2))}
            for i in range(8)]
    totals = []
    for row in rows:
        p, c = encode_prompt_response(tokenizer, row["prompt"], row["chosen"])
        _, r = encode_prompt_response(tokenizer, row["prompt"], row["rejected"])
        totals.append(len(p) + max(len(c), len(r)))
    max_length = totals[3]  # row 3 fits exactly; odd rows are long because of their rejected response
    expected_kept = [i for i, t in enumerate(totals) if t <= max_length]
    assert 3 in expected_kept and 0 < len(expected_kept) < 8
    dm = build(tiny_model_dir, write_jsonl(tmp_path / "lengths.jsonl", rows), max_length=max_length, overlong="drop")
    assert dm.splits["train"]["row"] == expected_kept
    assert dm.stats["train"]["overlong"] == 8 - len(expected_kept)
    assert max(dm.lengths("train")) == max_length


# --- the tokenization cache -------------------------------------------------------------------


def test_cache_is_reused_and_invalidated_by_max_length_and_file_content(tmp_path, tiny_model_dir, monkeypatch):
    rows = [{"prompt": f"Q{i}: what is {i} + {i}?", "chosen": f" {2 * i}", "rejected": f" {2 * i + 1}",
             "margin": i / 4} for i in range(6)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    cache = tmp_path / "cache"
    first = build(tiny_model_dir, train, max_length=12, cache_dir=str(cache))
    assert len(list((cache / "tokenized").glob("*.json"))) == 1

    class Retokenized(Exception):
        pass

    def refuse(*args, **kwargs):
        raise Retokenized

    monkeypatch.setattr(varirm.preference_data, "tokenize_pairs", refuse)
    again = build(tiny_model_dir, train, max_length=12, cache_dir=str(cache))
    for column in ("chosen_ids", "rejected_ids", "margin", "overlong", "row"):
        assert again.splits["train"][column] == first.splits["train"][column]
    assert again.stats == first.stats
    with pytest.raises(Retokenized):
        build(tiny_model_dir, train, max_length=13, cache_dir=str(cache))
    write_jsonl(tmp_path / "train.jsonl", rows[:5])  # same path, new content
    with pytest.raises(Retokenized):
        build(tiny_model_dir, train, max_length=12, cache_dir=str(cache))


# --- collation --------------------------------------------------------------------------------


def test_collate_pairs_by_hand():
    examples = [{"chosen_ids": [1, 2, 3], "rejected_ids": [4], "margin": 0.5},
                {"chosen_ids": [5], "rejected_ids": [6, 7], "margin": -1}]
    batch = collate_pairs(examples, pad_token_id=9)
    assert_close(batch["input_ids"], torch.tensor([[1, 2, 3], [5, 9, 9], [4, 9, 9], [6, 7, 9]]))
    assert_close(batch["attention_mask"], torch.tensor([[1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 1, 0]]))
    assert_close(batch["margin"], torch.tensor([0.5, -1.0]))
    padded = collate_pairs(examples, pad_token_id=9, pad_to_multiple_of=4)
    assert_close(padded["input_ids"], torch.tensor([[1, 2, 3, 9], [5, 9, 9, 9], [4, 9, 9, 9], [6, 7, 9, 9]]))
    assert_close(padded["attention_mask"][:, 3], torch.zeros(4, dtype=torch.long))
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long


def test_train_dataloader_batches_chosen_first_right_padded(tmp_path, tiny_model_dir, tokenizer):
    rows = [{"prompt": "Q" + " more" * i + "?", "chosen": " yes" * (1 + i % 3), "rejected": " no", "margin": i / 8}
            for i in range(7)]
    dm = build(tiny_model_dir, write_jsonl(tmp_path / "t.jsonl", rows), max_length=64, batch_size=3,
               pad_to_multiple_of=8)
    ds, loader = dm.splits["train"], dm.train_dataloader()
    order = list(loader.sampler)
    assert sorted(order) == list(range(7))
    batches = list(loader)
    assert [len(b["margin"]) for b in batches] == [3, 3, 1]
    for k, batch in enumerate(batches):
        idx = order[3 * k: 3 * k + 3]
        b = len(idx)
        seqs = [ds[i]["chosen_ids"] for i in idx] + [ds[i]["rejected_ids"] for i in idx]
        t = batch["input_ids"].shape[1]
        assert batch["input_ids"].shape == batch["attention_mask"].shape == (2 * b, t)
        assert t % 8 == 0 and t - 8 < max(map(len, seqs)) <= t
        for row, seq in enumerate(seqs):
            n = len(seq)
            assert batch["input_ids"][row, :n].tolist() == seq
            assert batch["input_ids"][row, n:].tolist() == [tokenizer.pad_token_id] * (t - n)
            assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (t - n)
        assert_close(batch["margin"], torch.tensor([ds[i]["margin"] for i in idx], dtype=torch.float32))
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


# --- the length-grouped sampler ---------------------------------------------------------------


def test_sampler_groups_lengths_by_hand():
    lengths = [(7 * i) % 16 for i in range(16)]  # a permutation of 0..15
    batches = LengthGroupedSampler(lengths, batch_size=4, seed=0).global_batches()
    assert sorted([lengths[i] for i in b] for b in batches) == [[3, 2, 1, 0], [7, 6, 5, 4], [11, 10, 9, 8],
                                                              [15, 14, 13, 12]]


def test_sampler_keeps_a_smaller_last_batch_last():
    # lengths = indices; sorted longest first: [9..6], [5..2], [1, 0]; the full two are shuffled
    order = list(LengthGroupedSampler(list(range(10)), batch_size=4, seed=1))
    assert order[-2:] == [1, 0]
    assert sorted(order[:4]) in ([6, 7, 8, 9], [2, 3, 4, 5]) and sorted(order[:8]) == list(range(2, 10))


def test_sampler_batches_are_slices_of_the_length_sorted_order():
    lengths = random.Random(0).sample(range(10_000), 300)  # distinct, so the sorted order is unique
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=0)  # one mega-batch (8 * 64 >= 300)
    order = list(sampler)
    grouped = [order[i:i + 8] for i in range(0, 300, 8)]
    by_length = sorted(range(300), key=lambda i: -lengths[i])
    assert sorted(map(sorted, grouped)) == sorted(sorted(by_length[i:i + 8]) for i in range(0, 300, 8))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in grouped) / len(grouped)
    shuffled = torch.randperm(300).tolist()
    random_spread = sum(max(lengths[i] for i in shuffled[j:j + 8]) - min(lengths[i] for i in shuffled[j:j + 8])
                        for j in range(0, 300, 8)) / 38
    assert spread < 0.05 * random_spread


def test_sampler_covers_every_index_each_epoch_and_set_epoch_is_deterministic():
    lengths = random.Random(1).choices(range(1, 500), k=103)
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=5, bucket_batches=2)
    orders = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
        assert sorted(orders[-1]) == list(range(103)) and len(sampler) == 103
    assert orders[0] != orders[1] != orders[2] != orders[0]
    sampler.set_epoch(0)
    assert list(sampler) == orders[0]
    other = LengthGroupedSampler(lengths, batch_size=8, seed=5, bucket_batches=2)
    other.set_epoch(2)
    assert list(other) == orders[2]
    assert list(LengthGroupedSampler(lengths, batch_size=8, seed=6, bucket_batches=2)) != orders[0]


@pytest.mark.parametrize("bucket_batches", [64, 4])
def test_two_ranks_see_the_same_global_batches_as_one_process(bucket_batches):
    lengths = random.Random(2).choices(range(1, 2000), k=300)
    single = LengthGroupedSampler(lengths, batch_size=8, seed=3, bucket_batches=bucket_batches)
    ranks = [LengthGroupedSampler(lengths, batch_size=4, num_replicas=2, rank=r, seed=3, bucket_batches=bucket_batches)
             for r in range(2)]
    for epoch in (0, 1):
        for s in (single, *ranks):
            s.set_epoch(epoch)
        one = [b.tolist() for b in DataLoader(range(300), batch_size=8, sampler=single)]
        r0, r1 = ([b.tolist() for b in DataLoader(range(300), batch_size=4, sampler=s)] for s in ranks)
        assert len(one) == len(r0) == len(r1) == 38 and len(ranks[0]) == 150
        for a, x, y in zip(one, r0, r1):
            assert sorted(x + y) == sorted(a) and not set(x) & set(y)


def test_padding_fraction_by_hand():
    # batch [0, 1]: lengths 1, 3 -> 2 * 3 slots; batch [2, 3]: 2, 2 -> 4 slots; 8 real of 10
    assert padding_fraction([1, 3, 2, 2], [[0, 1], [2, 3]]) == pytest.approx(0.2)
    assert padding_fraction([1, 3, 2, 2], [[1, 0, 2, 3]]) == pytest.approx(1 - 8 / 12)


def test_length_grouping_pads_less_than_random_order_on_real_data(tiny_model_dir, en_demo):
    path, encoded = en_demo
    dm = build(tiny_model_dir, path, max_length=1 << 15, batch_size=8)
    lengths = dm.lengths("train")
    assert lengths == [len(p) + max(len(c), len(r)) for p, c, r in encoded]
    grouped = padding_fraction(lengths, LengthGroupedSampler(lengths, 8, seed=0).global_batches())
    shuffled = padding_fraction(lengths, LengthGroupedSampler(lengths, 8, seed=0, bucket_batches=1).global_batches())
    assert grouped < 0.25 * shuffled
    assert dm.stats["train"]["padding_fraction"] == pytest.approx(grouped)
    assert dm.stats["train"]["padding_fraction_random_order"] == pytest.approx(shuffled)


# --- bad rows through the DataModule ----------------------------------------------------------


BAD_ROWS = [
    {"prompt": "p0", "chosen": "a", "rejected": "b"},
    {"prompt": "p1", "chosen": "", "rejected": "b"},
    "{not json",
    {"prompt": "p3", "chosen": "c", "rejected": "d"},
]


def test_skip_mode_without_a_trainer_counts_bad_rows(tmp_path, tiny_model_dir):
    train = write_jsonl(tmp_path / "bad.jsonl", BAD_ROWS)
    dm = build(tiny_model_dir, train, max_length=64, on_bad_rows="skip")
    stats = dm.stats["train"]
    assert (stats["rows_read"], stats["bad_rows"], stats["pairs"], stats["overlong"]) == (4, 2, 2, 0)
    assert [(r["row"], r["field"]) for r in stats["rejects"]] == [(1, "chosen"), (2, None)]
    assert dm.splits["train"]["row"] == [0, 3]


def test_error_mode_stops_in_prepare_data_with_file_row_field(tmp_path, tiny_model_dir):
    train = write_jsonl(tmp_path / "bad.jsonl", BAD_ROWS)
    dm = PreferenceDataModule(tokenizer_name_or_path=tiny_model_dir, train=train, max_length=64)
    with pytest.raises(DataError) as info:
        dm.prepare_data()
    assert str(info.value) == f"{train}: row 1: field 'chosen': is empty"


def test_skip_mode_with_every_row_bad_reports_zero_pairs(tmp_path, tiny_model_dir):
    train = write_jsonl(tmp_path / "allbad.jsonl", BAD_ROWS[1:3])
    dm = PreferenceDataModule(tokenizer_name_or_path=tiny_model_dir, train=train, max_length=64, on_bad_rows="skip")
    dm.prepare_data()
    with pytest.raises(DataError, match="no usable training pairs"):  # training on nothing is an error...
        dm.setup("fit")
    assert (dm.stats["train"]["rows_read"], dm.stats["train"]["bad_rows"], dm.stats["train"]["pairs"]) == (2, 2, 0)
    dm.setup("validate")  # ...but the counts were reported first, and other stages may go on


def test_several_train_files_of_different_formats_are_concatenated(tmp_path, tiny_model_dir):
    std = write_jsonl(tmp_path / "std.jsonl", [{"prompt": "Q:", "chosen": " a", "rejected": " b"}, BAD_ROWS[1]])
    conv = write_jsonl(tmp_path / "conv.jsonl", [{"prompt": [{"role": "user", "content": "hi"}], "chosen": "x",
                                                  "rejected": "y"}])
    dm = build(tiny_model_dir, [std, conv], max_length=64, on_bad_rows="skip")
    stats = dm.stats["train"]
    assert (stats["rows_read"], stats["bad_rows"], stats["pairs"]) == (3, 1, 2)
    assert dm.splits["train"]["chosen"] == [" a", "x"]
    assert [r["source"] for r in stats["rejects"]] == [std]


# --- the CLI: a bad row is one line on stderr and exit code 2 ---------------------------------


def test_cli_bad_row_is_one_line_and_exit_2(tmp_path, tiny_model_dir):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                               {"prompt": "p", "chosen": "", "rejected": "b"}])
    config = {
        "trainer": {"default_root_dir": str(tmp_path / "run"), "max_steps": 1, "accelerator": "cpu", "devices": 1,
                    "enable_progress_bar": False},
        "model": {"class_path": "varirm.reward_training.RewardModelModule",
                  "init_args": {"model_name_or_path": tiny_model_dir}},
        "data": {"class_path": "varirm.preference_data.PreferenceDataModule",
                 "init_args": {"train": bad, "max_length": 64, "batch_size": 2}},
    }
    (tmp_path / "config.yaml").write_text(json.dumps(config, indent=2))  # JSON is YAML
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "VARIRM_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "varirm", "fit", "--config", str(tmp_path / "config.yaml")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("varirm: error:")]
    assert errors == [f"varirm: error: {bad}: row 1: field 'chosen': is empty"]
    assert "row 1" in proc.stderr and "field 'chosen'" in proc.stderr
    assert not list((tmp_path / "run").rglob("*.ckpt"))


# --- policy-sample groups and on-policy pairs ------------------------------------------------------

def _samples(path, rows):
    return write_jsonl(path, [{"prompt": p, "responses": r, "policy": "pi"} for p, r in rows])


def test_on_policy_pair_rows_take_two_samples_with_different_labels():
    from varirm.on_policy import on_policy_pair_rows

    samples = [{"prompt": "p0", "responses": ["a", "b", "c"]}, {"prompt": [{"role": "user", "content": "p1"}],
               "responses": ["x", "y", "z"]}, {"prompt": "p2", "responses": ["u", "v", "w"]}]
    labels = [[0.0, 1.0, 0.0], [0.5, 0.5, 0.5], [3.0, 2.0, 1.0]]
    rows = on_policy_pair_rows(samples, labels, seed=0)
    assert [r["row"] for r in rows] == [0, 2]  # prompt 1: all labels tie, no pair
    assert rows[0]["chosen"] == "b" and rows[0]["rejected"] in {"a", "c"} and rows[0]["prompt_text"] == "p0"
    assert {"u": 3, "v": 2, "w": 1}[rows[1]["chosen"]] > {"u": 3, "v": 2, "w": 1}[rows[1]["rejected"]]
    assert on_policy_pair_rows(samples, labels, seed=0) == rows


def test_on_policy_bt_label_noise_flips_at_the_bradley_terry_rate():
    from varirm.on_policy import on_policy_pair_rows

    # one pair per prompt with labels 1 and 0: P(right) = sigmoid(1 / 0.5) = 0.881
    samples = [{"prompt": f"p{i}", "responses": ["good", "bad"]} for i in range(4000)]
    rows = on_policy_pair_rows(samples, [[1.0, 0.0]] * 4000, seed=0, bt_temperature=0.5)
    right = sum(r["chosen"] == "good" for r in rows) / len(rows)
    assert abs(right - torch.sigmoid(torch.tensor(2.0)).item()) < 0.02, right
    assert all(r["chosen"] == "good" for r in on_policy_pair_rows(samples[:50], [[1.0, 0.0]] * 50, seed=0))


def test_groups_ride_along_with_training_batches(tmp_path, tiny_model_dir, synthetic_dir):
    samples = _samples(tmp_path / "s.jsonl",
                       [([{"role": "user", "content": f"Write {t} words."}], ["a b", "c", "d e f"])
                        for t in ("fruit", "tool", "color", "music", "weather")])
    dm = build(tiny_model_dir, str(synthetic_dir / "train.jsonl"), policy_samples=samples, groups_per_batch=2,
               batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape[0] == 8
    assert batch["group_input_ids"].shape[0] == 6 and int(batch["group_size"]) == 3
    mask = batch["group_attention_mask"]
    assert (mask[:, 0] == 1).all() and (mask.sum(1) >= 1).all()
    again = next(iter(dm.train_dataloader()))
    assert torch.equal(batch["group_input_ids"], again["group_input_ids"])  # seeded by the batch, not by history


def test_on_policy_fraction_mixes_at_a_fixed_total(tmp_path, tiny_model_dir, synthetic_dir):
    from varirm.synthetic import TOPICS

    groups = [([{"role": "user", "content": f"Write {t} words."}], [" ".join(TOPICS[t][:3]), "dog", TOPICS[t][0]])
              for t in TOPICS for _ in range(20)]
    samples = _samples(tmp_path / "s.jsonl", groups)
    dm = build(tiny_model_dir, str(synthetic_dir / "train.jsonl"), on_policy_samples=samples,
               labeler="varirm.synthetic.gold_reward", on_policy_fraction=0.1)
    n = 512  # synthetic_dir's training pairs
    assert dm.stats["train"]["pairs"] == n and len(dm.splits["train"]) == n
    assert dm.stats["train"]["on_policy_pairs"] == round(0.1 * n) and dm.stats["train"]["off_policy_pairs"] == n - 51
    with pytest.raises(Exception, match="needs 256 on-policy pairs but the samples give 120"):
        build(tiny_model_dir, str(synthetic_dir / "train.jsonl"), on_policy_samples=samples,
              labeler="varirm.synthetic.gold_reward", on_policy_fraction=0.5)


def test_on_policy_fraction_needs_samples_and_labeler(tiny_model_dir):
    with pytest.raises(ValueError, match="needs on_policy_samples and a labeler"):
        PreferenceDataModule(tokenizer_name_or_path=tiny_model_dir, train="x.jsonl", on_policy_fraction=0.5)


def test_group_draws_do_not_depend_on_how_a_global_batch_is_split():
    """Process ``r`` of ``R`` gets positions ``r, r + R, ...`` of a global batch; its group ``c``
    is the group ``c * R + r`` that one process holding the whole batch draws."""
    from varirm.on_policy import GroupSource, PairsWithGroups

    source = GroupSource([{"ids": [[i + 3], [i + 4]], "gold": None} for i in range(50)])
    examples = [{"chosen_ids": [10 + i, 11], "rejected_ids": [12, 13 + i], "margin": 0.0} for i in range(12)]
    whole = PairsWithGroups(0, 1, source, groups_per_batch=4, seed=3)(examples)["group_input_ids"].view(4, 2)
    for rank in range(2):
        part = PairsWithGroups(0, 1, source, groups_per_batch=2, seed=3, rank=rank, num_replicas=2)(examples[rank::2])
        assert_close(part["group_input_ids"].view(2, 2), whole[[rank, 2 + rank]])
    assert len(set(whole[:, 0].tolist())) > 1  # different groups, not one drawn four times
    other = PairsWithGroups(0, 1, source, groups_per_batch=4, seed=3)(examples[1:] + examples[:1])["group_input_ids"]
    assert not torch.equal(other.view(4, 2), whole)  # the draw follows the examples
