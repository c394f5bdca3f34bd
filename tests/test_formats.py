"""varirm/formats.py: every format normalizes to one shape; bad rows name file, row and field."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from varirm.errors import DataError
from varirm.formats import BadRow, detect_format, load_preference_rows

SHAREGPT_ROLE = {"system": "system", "human": "user", "gpt": "assistant"}


def write_jsonl(path, rows) -> str:
    """One JSON value per line; a ``str`` item is written verbatim (for malformed lines)."""
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return str(path)


def load(tmp_path, rows, fmt="auto", columns=None, skip_bad=False, name="data.jsonl"):
    return load_preference_rows(write_jsonl(tmp_path / name, rows), "train", fmt, columns or {}, skip_bad)


def load_error(tmp_path, rows, fmt="auto", columns=None, name="data.jsonl") -> DataError:
    with pytest.raises(DataError) as info:
        load(tmp_path, rows, fmt, columns, name=name)
    return info.value


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


# --- each format, normalized ------------------------------------------------------------------


def test_standard_row_normalizes_to_raw_text_prompt(tmp_path):
    rows, rejects = load(tmp_path, [{"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5"}], fmt="standard")
    assert rejects == []
    assert rows == [{"prompt_messages": [], "prompt_text": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5",
                     "margin": 0.0, "row": 0}]


def test_implicit_prompt_is_the_longest_common_prefix(tmp_path):
    chosen = "Human: What is 2+2?\n\nAssistant: 4, of course."
    rejected = "Human: What is 2+2?\n\nAssistant: 5!"
    rows, _ = load(tmp_path, [{"chosen": chosen, "rejected": rejected}], fmt="implicit")
    assert rows == [{"prompt_messages": [], "prompt_text": "Human: What is 2+2?\n\nAssistant: ",
                     "chosen": "4, of course.", "rejected": "5!", "margin": 0.0, "row": 0}]
    assert rows[0]["prompt_text"] + rows[0]["chosen"] == chosen
    assert rows[0]["prompt_text"] + rows[0]["rejected"] == rejected


def test_implicit_response_that_is_a_prefix_of_the_other_is_rejected(tmp_path):
    err = load_error(tmp_path, [{"chosen": "Human: hi\n\nAssistant: hello",
                                 "rejected": "Human: hi\n\nAssistant: hello there"}],
                     fmt="implicit")
    assert str(err) == (f"{tmp_path / 'data.jsonl'}: row 0: field 'chosen': is a prefix of the other response; "
                        "nothing left to score")


def test_implicit_identical_texts_are_reported_as_identical(tmp_path):
    err = load_error(tmp_path, [{"chosen": "Human: hi\n\nAssistant: hello",
                                 "rejected": "Human: hi\n\nAssistant: hello"}],
                     fmt="implicit")
    assert str(err) == f"{tmp_path / 'data.jsonl'}: row 0: field 'rejected': is identical to chosen"


def test_conversational_without_prompt_takes_the_shared_head_of_the_messages(tmp_path):
    row = {"chosen": [system("Be brief."), user("hi"), assistant("hello")],
           "rejected": [system("Be brief."), user("hi"), assistant("go away")]}
    rows, _ = load(tmp_path, [row], fmt="conversational")
    assert rows == [{"prompt_messages": [system("Be brief."), user("hi")], "prompt_text": "",
                     "chosen": "hello", "rejected": "go away", "margin": 0.0, "row": 0}]


def test_conversational_with_prompt_messages_and_lone_assistant_responses(tmp_path):
    row = {"prompt": [system("Be brief."), user("hi")], "chosen": [assistant("hello")], "rejected": [assistant("bye")]}
    rows, _ = load(tmp_path, [row], fmt="conversational")
    assert rows == [{"prompt_messages": [system("Be brief."), user("hi")], "prompt_text": "",
                     "chosen": "hello", "rejected": "bye", "margin": 0.0, "row": 0}]


def test_conversational_string_prompt_becomes_one_user_message(tmp_path):
    rows, _ = load(tmp_path, [{"prompt": "hi", "chosen": "hello", "rejected": "bye"}], fmt="conversational")
    assert rows[0]["prompt_messages"] == [user("hi")]
    assert (rows[0]["prompt_text"], rows[0]["chosen"], rows[0]["rejected"]) == ("", "hello", "bye")


def test_conversational_without_any_prompt_is_an_error(tmp_path):
    err = load_error(tmp_path, [{"chosen": [assistant("hello")], "rejected": [assistant("bye")]}], fmt="conversational")
    assert str(err) == (f"{tmp_path / 'data.jsonl'}: row 0: field 'prompt': "
                        "is missing (and chosen has no messages before its final one)")


def test_conversational_heads_that_differ_are_an_error(tmp_path):
    row = {"chosen": [user("hi"), assistant("hello")], "rejected": [user("hey"), assistant("bye")]}
    err = load_error(tmp_path, [row])
    assert str(err) == (f"{tmp_path / 'data.jsonl'}: row 0: field 'rejected': "
                        "the messages before the final assistant message differ from chosen's")


def test_conversational_response_must_end_with_the_assistant(tmp_path):
    row = {"chosen": [assistant("hello"), user("hi")], "rejected": [assistant("hello"), assistant("bye")]}
    err = load_error(tmp_path, [row])
    assert str(err) == (f"{tmp_path / 'data.jsonl'}: row 0: field 'chosen[1].role': "
                        "the last message must be from the assistant")


def test_sharegpt_maps_roles_and_keeps_the_system_message(tmp_path):
    row = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "hi"},
                             {"from": "gpt", "value": "hello"}, {"from": "human", "value": "and?"}],
           "chosen": {"from": "gpt", "value": "that is all"}, "rejected": {"from": "gpt", "value": "no"}}
    rows, _ = load(tmp_path, [row], fmt="sharegpt")
    assert rows == [{"prompt_messages": [system("Be brief."), user("hi"), assistant("hello"), user("and?")],
                     "prompt_text": "", "chosen": "that is all", "rejected": "no", "margin": 0.0, "row": 0}]


# --- auto-detection and column mapping --------------------------------------------------------


@pytest.mark.parametrize("row, expected", [
    ({"prompt": "p", "chosen": "a", "rejected": "b"}, "standard"),
    ({"chosen": "p a", "rejected": "p b"}, "implicit"),
    ({"chosen": [user("p"), assistant("a")], "rejected": [user("p"), assistant("b")]}, "conversational"),
    ({"prompt": [user("p")], "chosen": "a", "rejected": "b"}, "conversational"),
    ({"conversations": [{"from": "human", "value": "p"}], "chosen": {"from": "gpt", "value": "a"},
      "rejected": {"from": "gpt", "value": "b"}}, "sharegpt"),
])
def test_auto_detects_each_format_and_normalizes_like_the_explicit_one(tmp_path, row, expected):
    assert detect_format(row) == expected
    auto, _ = load(tmp_path, [row], fmt="auto", name="auto.jsonl")
    explicit, _ = load(tmp_path, [row], fmt=expected, name="explicit.jsonl")
    assert auto == explicit and len(auto) == 1


def test_auto_detection_uses_the_first_good_row(tmp_path):
    # row 0 matches no format and is skipped; row 1 decides (standard) for the rest of the file
    rows, rejects = load(tmp_path, [{"question": "q"}, {"prompt": "p", "chosen": "a", "rejected": "b"},
                                    {"prompt": "p2", "chosen": "c", "rejected": "d"}], skip_bad=True)
    assert [r["row"] for r in rows] == [1, 2]
    assert [r["prompt_text"] for r in rows] == ["p", "p2"]
    assert [r["row"] for r in rejects] == [0]


def test_fields_that_match_no_format_are_an_error_that_names_them(tmp_path):
    err = load_error(tmp_path, [{"question": "q", "good": "a", "bad": "b"}])
    assert str(err) == (f"{tmp_path / 'data.jsonl'}: row 0: cannot tell the format from fields "
                        "['bad', 'good', 'question']; "
                        "set format to one of standard, implicit, conversational, sharegpt and map column names "
                        "with columns: {prompt: ..., chosen: ..., rejected: ...}")
    assert (err.row, err.field) == (0, None)


def test_detect_format_rejects_a_non_object():
    with pytest.raises(BadRow, match="expected an object, got list"):
        detect_format([1, 2])


def test_unknown_format_name_is_an_error(tmp_path):
    err = load_error(tmp_path, [{"prompt": "p", "chosen": "a", "rejected": "b"}], fmt="bogus")
    assert str(err) == (f"{tmp_path / 'data.jsonl'}: row 0: unknown format 'bogus'; "
                        "expected one of standard, implicit, conversational, sharegpt")


def test_column_mapping_renames_fields_before_detection(tmp_path):
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad", "margin": "score"}
    rows, rejects = load(tmp_path, [{"question": "Q: 2+2?", "good": " 4", "bad": " 5", "score": 2}], columns=columns)
    assert rejects == []
    assert rows == [{"prompt_messages": [], "prompt_text": "Q: 2+2?", "chosen": " 4", "rejected": " 5",
                     "margin": 2.0, "row": 0}]


def test_column_mapping_for_conversational_messages(tmp_path):
    columns = {"chosen": "good", "rejected": "bad"}
    row = {"good": [user("hi"), assistant("hello")], "bad": [user("hi"), assistant("bye")]}
    rows, _ = load(tmp_path, [row], columns=columns)
    assert (rows[0]["prompt_messages"], rows[0]["chosen"], rows[0]["rejected"]) == ([user("hi")], "hello", "bye")


# --- margin -----------------------------------------------------------------------------------


@pytest.mark.parametrize("margin, expected", [(None, 0.0), (1, 1.0), (0.25, 0.25), (-2.5, -2.5)])
def test_margin_is_parsed_to_float(tmp_path, margin, expected):
    row = {"prompt": "p", "chosen": "a", "rejected": "b"}
    if margin is not None:
        row["margin"] = margin
    rows, _ = load(tmp_path, [row])
    assert rows[0]["margin"] == expected and isinstance(rows[0]["margin"], float)


def test_margin_null_is_zero(tmp_path):
    rows, _ = load(tmp_path, [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": None}])
    assert rows[0]["margin"] == 0.0


@pytest.mark.parametrize("margin, shown", [("0.5", "'0.5'"), (True, "True"), (math.nan, "nan"), (math.inf, "inf"),
                                            ([1], "[1]")])
def test_bad_margin_is_an_error(tmp_path, margin, shown):
    err = load_error(tmp_path, [{"prompt": "p", "chosen": "a", "rejected": "b", "margin": margin}])
    assert str(err) == f"{tmp_path / 'data.jsonl'}: row 0: field 'margin': must be a finite number, got {shown}"


# --- real data: LLaMA-Factory's dpo_*_demo.json (sharegpt) ------------------------------------


@pytest.mark.parametrize("name, n_system, role_counts", [
    ("dpo_en_demo.json", 80, {"system": 80, "user": 563, "assistant": 263}),
    ("dpo_zh_demo.json", 64, {"system": 64, "user": 300}),
])
def test_real_sharegpt_demo_data_loads_fully(shared_data, name, n_system, role_counts):
    path = shared_data / name
    raw = json.loads(path.read_text(encoding="utf-8"))
    rows, rejects = load_preference_rows(str(path), "train", "auto", {}, False)
    assert rejects == []
    assert len(rows) == 300 and [r["row"] for r in rows] == list(range(300))
    assert Counter(m["role"] for r in rows for m in r["prompt_messages"]) == role_counts
    with_system = [r for r in rows if r["prompt_messages"][0]["role"] == "system"]
    assert len(with_system) == n_system
    assert all(m["role"] != "system" for r in rows for m in r["prompt_messages"][1:])  # system only first
    for r, x in zip(rows, raw):
        assert r["prompt_messages"] == [{"role": SHAREGPT_ROLE[m["from"]], "content": m["value"]}
                                        for m in x["conversations"]]
        assert (r["chosen"], r["rejected"]) == (x["chosen"]["value"], x["rejected"]["value"])
        assert (r["prompt_text"], r["margin"]) == ("", 0.0)
        assert r["prompt_messages"][-1]["role"] == "user"


def test_json_wrapped_in_one_key_object_is_unwrapped(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"data": [{"prompt": "p", "chosen": "a", "rejected": "b"}]}))
    rows, _ = load_preference_rows(str(path), "train", "auto", {}, False)
    assert [(r["prompt_text"], r["chosen"], r["rejected"]) for r in rows] == [("p", "a", "b")]


# --- bad input: one exact line naming file, row, field ----------------------------------------


def test_malformed_jsonl_line_names_row_and_line(tmp_path):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    # line 3 is blank (not a row), so the malformed line 4 is row 2; the value after the missing ":" starts at column 11
    err = load_error(tmp_path, [good, good, "", '{"prompt" "a", "chosen": "b"}', good])
    assert str(err) == f"{tmp_path / 'data.jsonl'}: row 2: line 4: malformed JSON: Expecting ':' delimiter (column 11)"
    assert (err.source, err.row, err.field) == (str(tmp_path / "data.jsonl"), 2, None)


def test_malformed_jsonl_line_cut_off_names_the_column_where_it_ends(tmp_path):
    err = load_error(tmp_path, ['{"prompt": "a",'])
    assert str(err) == (f"{tmp_path / 'data.jsonl'}: row 0: line 1: malformed JSON: "
                        "Expecting property name enclosed in double quotes (column 16)")


@pytest.mark.parametrize("row, field, message", [
    ({"prompt": "p", "chosen": "a"}, "rejected", "is missing"),
    ({"prompt": "p", "chosen": "a", "rejected": None}, "rejected", "is null"),
    ({"prompt": "p", "chosen": "  \n", "rejected": "b"}, "chosen", "is empty"),
    ({"prompt": "p", "chosen": 3, "rejected": "b"}, "chosen", "must be a string, got int"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "rejected", "is identical to chosen"),
    ({"chosen": [user("hi"), assistant(7)], "rejected": [user("hi"), assistant("b")]}, "chosen[1].content",
     "must be a string, got int"),
    ({"chosen": [user("hi"), {"role": "assistant"}], "rejected": [user("hi"), assistant("b")]}, "chosen[1].content",
     "is missing"),
    ({"chosen": [user("hi"), "b"], "rejected": [user("hi"), assistant("b")]}, "chosen[1]",
     "must be an object with 'role' and 'content', got str"),
    ({"chosen": [{"role": "bot", "content": "x"}, assistant("a")], "rejected": [user("x"), assistant("b")]},
     "chosen[0].role", "unknown role 'bot'; expected one of ['system', 'user', 'assistant', 'tool']"),
    ({"chosen": [user("hi"), assistant("same")], "rejected": [user("hi"), assistant("same")]}, "rejected",
     "is identical to chosen"),
    ({"prompt": [], "chosen": [assistant("a")], "rejected": [assistant("b")]}, "prompt", "is empty"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "x"}],
      "chosen": {"from": "gpt", "value": "a"}, "rejected": {"from": "gpt", "value": "b"}}, "conversations[1].from",
     "unknown role 'bot'; expected one of ['assistant', 'gpt', 'human', 'system', 'user']"),
    ({"conversations": [{"from": "human", "value": 5}], "chosen": {"from": "gpt", "value": "a"},
      "rejected": {"from": "gpt", "value": "b"}}, "conversations[0].value", "must be a string, got int"),
    ({"conversations": [{"from": "human", "value": "hi"}], "chosen": {"from": "gpt"},
      "rejected": {"from": "gpt", "value": "b"}}, "chosen.value", "is missing"),
    ({"conversations": [{"from": "human", "value": "hi"}], "chosen": {"from": "gpt", "value": "a"},
      "rejected": ["b"]}, "rejected", "must be an object with 'from' and 'value', got list"),
], ids=["missing", "null", "empty", "int", "identical", "int-content", "missing-content", "message-not-object",
        "unknown-role", "identical-messages", "empty-prompt", "sharegpt-unknown-role", "sharegpt-int-value",
        "sharegpt-missing-value", "sharegpt-bad-response"])
def test_bad_row_error_names_file_row_and_field(tmp_path, row, field, message):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    if "conversations" in row:
        good = {"conversations": [{"from": "human", "value": "p"}], "chosen": {"from": "gpt", "value": "a"},
                "rejected": {"from": "gpt", "value": "b"}}
    elif isinstance(row.get("chosen"), list):
        good = {"chosen": [user("p"), assistant("a")], "rejected": [user("p"), assistant("b")]}
    err = load_error(tmp_path, [good, row])  # row 1: the good row 0 fixes the format
    assert str(err) == f"{tmp_path / 'data.jsonl'}: row 1: field '{field}': {message}"
    assert (err.row, err.field, err.message) == (1, field, message)


@pytest.mark.parametrize("top, name", [({"a": [], "b": []}, "two-keys"), ({"data": 3}, "one-key-not-list"),
                                       ("text", "string")])
def test_json_top_level_that_is_not_a_list_is_an_error(tmp_path, top, name):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(top))
    with pytest.raises(DataError) as info:
        load_preference_rows(str(path), "train", "auto", {}, skip_bad=True)  # a whole-file error even in skip mode
    assert str(info.value) == f"{path}: expected a JSON array of objects (or use .jsonl, one object per line)"


def test_malformed_json_file_names_line_and_column(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[{"a": 1},\n{"a" 2}]')
    with pytest.raises(DataError) as info:
        load_preference_rows(str(path), "train", "auto", {}, False)
    assert str(info.value) == f"{path}: malformed JSON at line 2 column 6: Expecting ':' delimiter"


def test_unsupported_file_type_is_an_error(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError) as info:
        load_preference_rows(str(path), "train", "auto", {}, False)
    assert str(info.value) == f"{path}: unsupported file type; use one of .json, .jsonl, .parquet"


def test_missing_file_is_a_data_error(tmp_path):
    path = tmp_path / "missing.jsonl"
    with pytest.raises(DataError, match="missing.jsonl"):
        load_preference_rows(str(path), "train", "auto", {}, False)


# --- skip mode --------------------------------------------------------------------------------


def test_skip_mode_collects_rejects_and_keeps_the_good_rows(tmp_path):
    raw = [
        {"prompt": "p0", "chosen": "a", "rejected": "b"},
        {"prompt": "p1", "chosen": "", "rejected": "b"},
        "{not json",
        {"prompt": "p3", "chosen": "a", "rejected": "b", "margin": 1.5},
        {"prompt": "p4", "chosen": "same", "rejected": "same"},
        {"prompt": "p5", "chosen": "a", "rejected": "b"},
    ]
    rows, rejects = load(tmp_path, raw, skip_bad=True)
    path = str(tmp_path / "data.jsonl")
    assert [(r["row"], r["prompt_text"], r["margin"]) for r in rows] == [(0, "p0", 0.0), (3, "p3", 1.5), (5, "p5", 0.0)]
    assert [(r["row"], r["field"]) for r in rejects] == [(1, "chosen"), (2, None), (4, "rejected")]
    assert [r["error"] for r in rejects] == [
        f"{path}: row 1: field 'chosen': is empty",
        f"{path}: row 2: line 3: malformed JSON: Expecting property name enclosed in double quotes (column 2)",
        f"{path}: row 4: field 'rejected': is identical to chosen",
    ]
    assert rejects[0]["data"] == raw[1] and rejects[1]["data"] is None and rejects[2]["data"] == raw[4]
    assert all(r["source"] == path for r in rejects)


def test_error_mode_stops_at_the_first_bad_row(tmp_path):
    raw = [{"prompt": "p0", "chosen": "a", "rejected": "b"}, {"prompt": "p1", "chosen": "a"}, "{not json"]
    err = load_error(tmp_path, raw)
    assert (err.row, err.field) == (1, "rejected")
