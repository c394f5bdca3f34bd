"""The bad-input corpus: every kind of file and option varirm reads, broken in the ways real files
break, run through the ``varirm`` entry point. Each must end with exit code 2 and one line on
stderr naming the file (and row and field, or the option), no traceback, and leave the run
directory exactly as it was. README's "Bad input" table lists what each case gets.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from varirm import cli

GOOD = {"prompt": "list fruit", "chosen": "apple pear", "rejected": "stone"}


def jsonl(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def parquet(path: Path, rows: list[dict]) -> None:
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(path))


class Arbitrary:  # a pickled class: loading it needs arbitrary unpickling
    pass


# name -> (file name, how to make it, expected fragments of the error line)
PREFERENCE_FILES = {
    "utf16_bom": ("train.jsonl", lambda p: p.write_bytes(jsonl(GOOD).decode().encode("utf-16")),
                  ["is UTF-16 encoded (starts with bytes ff fe); save it as UTF-8"]),
    "utf16_json": ("train.json", lambda p: p.write_bytes(json.dumps([GOOD]).encode("utf-16")), ["is UTF-16 encoded"]),
    "latin1": ("train.jsonl", lambda p: p.write_bytes(jsonl(GOOD, json.dumps({**GOOD, "chosen": "café"},
                                                                             ensure_ascii=False).encode("latin-1"))),
               ["row 1: line 2: not valid UTF-8 (byte 0xe9"]),
    "random_bytes": ("train.jsonl", lambda p: p.write_bytes(bytes(torch.randint(128, 256, (4096,),
                                                              generator=torch.Generator().manual_seed(0)).tolist())),
                     ["row 0: line 1: not valid UTF-8"]),
    "nul_bytes": ("train.jsonl", lambda p: p.write_bytes(jsonl(GOOD) + b'{"prompt": "a\x00", "chosen": "b"}\n'),
                  ["row 1: line 2: contains NUL bytes"]),
    "truncated_json": ("train.json", lambda p: p.write_text(json.dumps([GOOD, GOOD])[:-20]),
                       ["malformed JSON at line 1"]),
    "truncated_line": ("train.jsonl", lambda p: p.write_bytes(jsonl(GOOD) + json.dumps(GOOD)[:-9].encode()),
                       ["row 1: line 2: malformed JSON"]),
    "object_not_list": ("train.json", lambda p: p.write_text(json.dumps({"a": GOOD, "b": GOOD})),
                        ["expected a JSON array of objects"]),
    "row_not_object": ("train.jsonl", lambda p: p.write_bytes(jsonl(GOOD, ["list fruit", "apple", "stone"])),
                       ["row 1: expected an object, got list"]),
    "null_field": ("train.jsonl", lambda p: p.write_bytes(jsonl(GOOD, {**GOOD, "chosen": None})),
                   ["row 1: field 'chosen': is null"]),
    "nested_field": ("train.jsonl", lambda p: p.write_bytes(jsonl(GOOD, {**GOOD, "rejected": {"text": "x"}})),
                     ["row 1: field 'rejected': must be a string, got dict"]),
    "number_field": ("train.jsonl", lambda p: p.write_bytes(jsonl({**GOOD, "prompt": 3})),
                     ["row 0: field 'prompt': must be a string, got int"]),
    "nan_margin": ("train.jsonl", lambda p: p.write_bytes(jsonl(GOOD, b'{"prompt": "a", "chosen": "b", '
                                                                      b'"rejected": "c", "margin": NaN}')),
                   ["row 1: field 'margin': must be a finite number, got nan"]),
    "inf_margin": ("train.jsonl", lambda p: p.write_bytes(jsonl({**GOOD, "margin": float("inf")})),
                   ["row 0: field 'margin': must be a finite number, got inf"]),
    "empty_prompt": ("train.jsonl", lambda p: p.write_bytes(jsonl(GOOD, {**GOOD, "prompt": "  "})),
                     ["row 1: field 'prompt': is empty"]),
    "empty_response": ("train.jsonl", lambda p: p.write_bytes(jsonl({**GOOD, "chosen": ""})),
                       ["row 0: field 'chosen': is empty"]),
    "duplicate_keys": ("train.jsonl", lambda p: p.write_bytes(jsonl(GOOD, b'{"prompt": "a", "chosen": "b", '
                                                                          b'"chosen": "c", "rejected": "d"}')),
                       ["row 1: line 2: field 'chosen' appears twice in one object"]),
    "line_50mb": ("train.jsonl", lambda p: p.write_bytes(jsonl(GOOD) + b'{"prompt": "' + b"a" * (50 * 2**20) + b'"}\n'),
                  ["row 1: line 2: is 50.0 MiB; rows over 16 MiB are refused"]),
    "directory": ("train.jsonl", lambda p: p.mkdir(), ["is a directory, not a file"]),
    "dangling_link": ("train.jsonl", lambda p: p.symlink_to(p.parent / "gone.jsonl"), ["no such file"]),
    "garbage_parquet": ("train.parquet", lambda p: p.write_bytes(b"PAR1 this is not parquet"),
                        ["not a readable parquet file"]),
    "parquet_bad_type": ("train.parquet", lambda p: parquet(p, [{**GOOD, "chosen": 1}, {**GOOD, "chosen": 2}]),
                         ["row 0: field 'chosen': must be a string, got int"]),
    "unknown_format": ("train.jsonl", lambda p: p.write_bytes(jsonl({"question": "q", "good": "a", "bad": "b"})),
                       ["row 0: cannot tell the format from fields"]),
    "empty_file": ("train.jsonl", lambda p: p.write_bytes(b"\n\n"), ["no usable training pairs"]),
}

PROMPT_FILES = {
    "prompt_missing": (lambda p: p.write_bytes(jsonl({"prompt": "a"}, {"question": "b"})),
                       ["row 1: field 'prompt': is missing"]),
    "prompt_bad_message": (lambda p: p.write_bytes(jsonl({"prompt": [{"role": "user", "content": "a"}]},
                                                         {"prompt": [{"content": "b"}]})),
                           ["row 1: field 'prompt[0].role': is missing"]),
    "prompt_utf16": (lambda p: p.write_bytes(jsonl({"prompt": "a"}).decode().encode("utf-16")), ["is UTF-16 encoded"]),
}

SAMPLES_FILES = {
    "samples_ragged_k": (lambda p: p.write_bytes(jsonl({"prompt": "a", "responses": ["x", "y"]},
                                                       {"prompt": "b", "responses": ["x", "y", "z"]})),
                         ["row 1: field 'responses': has 3 responses but row 0 has 2"]),
    "samples_missing_responses": (lambda p: p.write_bytes(jsonl({"prompt": "a", "responses": ["x", "y"]},
                                                                {"prompt": "b"})),
                                  ["row 1: field 'responses': must be a list of at least two strings"]),
    "samples_random_bytes": (lambda p: p.write_bytes(b"\xff\xd8\xff\xe0" * 100), ["row 0: line 1: not valid UTF-8"]),
}


def other_class_ckpt(p: Path) -> None:
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": "varirm.sft.SFTModule", "lr": 1.0}}, p)


RM_PATHS = {
    "rm_missing": (lambda p: None, ["checkpoint not found"]),
    "rm_plain_lm_dir": (None, ["no trained reward head (score.weight not in its weights)"]),
    "rm_other_class_ckpt": (other_class_ckpt, ["a checkpoint of varirm.sft.SFTModule, not a reward model"]),
    "rm_pickled_code_ckpt": (lambda p: torch.save({"state_dict": {}, "hyper_parameters": {}, "x": Arbitrary()}, p),
                             ["refused: loading this checkpoint would run code from the file", "--trust-checkpoints"]),
    "rm_garbage_ckpt": (lambda p: p.write_bytes(b"not a checkpoint"), ["not a readable PyTorch checkpoint"]),
    "rm_empty_dir": (lambda p: p.mkdir(), ["cannot load a tokenizer"]),
}

RECIPES = {
    "recipe_unknown_key": (lambda p: p.write_text("trainer:\n  max_epochz: 3\n"),
                           ["does not accept option 'trainer.max_epochz'"]),
    "recipe_wrong_type": (lambda p: p.write_text("model:\n  init_args:\n    lr: fast\n"),
                          ["--model.init_args.lr: expected float, got 'fast'"]),
    "recipe_missing": (lambda p: None, ["--config: File does not exist"]),
}


def snapshot(directory: Path) -> dict[str, str]:
    """Every path under ``directory`` with a hash of its bytes (directories as '')."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            out[os.path.relpath(os.path.join(root, name), directory)] = ""
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, directory)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


def run_cli(args: list[str], monkeypatch, capfd) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["varirm", *args])
    with pytest.raises(SystemExit) as info:
        cli.main()
    return info.value.code, capfd.readouterr().err


def assert_one_line(code: int, err: str, expected: list[str]) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("varirm: error: "), err
    assert sum(line.startswith("varirm: error:") for line in lines) == 1, err
    for fragment in expected:
        assert fragment in lines[-1], lines[-1]


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run directory with an earlier attempt's files in it, which a failed start must not touch."""
    run = tmp_path / "run"
    (run / "csv" / "version_0").mkdir(parents=True)
    (run / "csv" / "version_0" / "metrics.csv").write_text("step,train/loss\n0,0.69\n")
    (run / "config.yaml").write_text("# earlier attempt\n")
    return run


@pytest.fixture
def recipe(tmp_path, tiny_model_dir) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"""
trainer: {{accelerator: cpu, max_steps: 2, enable_progress_bar: false}}
model: {{class_path: varirm.reward_training.RewardModelModule, init_args: {{model_name_or_path: {tiny_model_dir}}}}}
data: {{class_path: varirm.preference_data.PreferenceDataModule, init_args: {{max_length: 32, batch_size: 2}}}}
""")
    return path


@pytest.mark.parametrize("case", sorted(PREFERENCE_FILES))
def test_bad_preference_file(case, tmp_path, run_dir, recipe, monkeypatch, capfd):
    name, make, expected = PREFERENCE_FILES[case]
    path = tmp_path / name
    make(path)
    before = snapshot(run_dir)
    code, err = run_cli(["fit", "--config", str(recipe), "--data.init_args.train", str(path),
                         "--trainer.default_root_dir", str(run_dir)], monkeypatch, capfd)
    assert_one_line(code, err, [str(path), *expected])
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("case", sorted(PROMPT_FILES))
def test_bad_prompt_file(case, tmp_path, tiny_model_dir, monkeypatch, capfd):
    make, expected = PROMPT_FILES[case]
    path = tmp_path / "prompts.jsonl"
    make(path)
    out = tmp_path / "samples.jsonl"
    out.write_text("earlier samples\n")
    code, err = run_cli(["sample", "--policy", tiny_model_dir, "--prompts", str(path), "--output", str(out)],
                        monkeypatch, capfd)
    assert_one_line(code, err, [str(path), *expected])
    assert out.read_text() == "earlier samples\n"


@pytest.mark.parametrize("case", sorted(SAMPLES_FILES))
def test_bad_samples_file(case, tmp_path, monkeypatch, capfd):
    make, expected = SAMPLES_FILES[case]
    path = tmp_path / "samples.jsonl"
    make(path)
    out = tmp_path / "eval"
    code, err = run_cli(["evaluate", "--rm", "varirm.synthetic.gold_reward", "--samples", str(path),
                         "--output", str(out)], monkeypatch, capfd)
    assert_one_line(code, err, [str(path), *expected])
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(RM_PATHS))
def test_bad_reward_model_path(case, tmp_path, tiny_model_dir, monkeypatch, capfd):
    make, expected = RM_PATHS[case]
    if make is None:
        path = Path(tiny_model_dir)  # a causal LM directory: no reward head
    else:
        path = tmp_path / ("rm" if case == "rm_empty_dir" else "rm.ckpt")
        make(path)
    samples = tmp_path / "samples.jsonl"
    samples.write_bytes(jsonl({"prompt": "a", "responses": ["x", "y"]}, {"prompt": "b", "responses": ["x", "z"]}))
    out = tmp_path / "eval"
    code, err = run_cli(["evaluate", "--rm", str(path), "--samples", str(samples), "--output", str(out)],
                        monkeypatch, capfd)
    assert_one_line(code, err, [str(path), *expected])
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(RECIPES))
def test_bad_recipe(case, tmp_path, run_dir, recipe, monkeypatch, capfd):
    make, expected = RECIPES[case]
    path = tmp_path / "override.yaml"
    make(path)
    before = snapshot(run_dir)
    code, err = run_cli(["fit", "--config", str(recipe), "--config", str(path),
                         "--trainer.default_root_dir", str(run_dir)], monkeypatch, capfd)
    assert_one_line(code, err, expected)
    assert snapshot(run_dir) == before


def test_the_corpus_covers_at_least_25_cases():
    assert len(PREFERENCE_FILES) + len(PROMPT_FILES) + len(SAMPLES_FILES) + len(RM_PATHS) + len(RECIPES) >= 25


def test_trusted_checkpoint_flag_lets_a_pickled_checkpoint_past_the_safe_loader(tmp_path, monkeypatch, capfd):
    path = tmp_path / "rm.ckpt"
    RM_PATHS["rm_pickled_code_ckpt"][0](path)
    samples = tmp_path / "samples.jsonl"
    samples.write_bytes(jsonl({"prompt": "a", "responses": ["x", "y"]}))
    monkeypatch.delenv("VARIRM_TRUST_CHECKPOINTS", raising=False)
    code, err = run_cli(["--trust-checkpoints", "evaluate", "--rm", str(path), "--samples", str(samples),
                         "--output", str(tmp_path / "eval")], monkeypatch, capfd)
    # unpickled now; it is then refused for what it is (no reward-model hyper_parameters to build)
    assert code == 2 and "refused" not in err and "do not fit varirm.reward_training.RewardModelModule" in err, err


def test_real_exit_code_and_stderr_of_the_installed_command(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_bytes(b"\xff\xfe" + "x".encode("utf-16-le"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "varirm", "evaluate", "--rm", "varirm.synthetic.gold_reward",
                           "--samples", str(bad), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"varirm: error: {bad}: is UTF-16 encoded (starts with bytes ff fe); save it as UTF-8"
