"""varirm export / card: HF format, same rewards, atomic writes, variance card, push to a local Hub."""

import base64
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from conftest import REPO
from torch.testing import assert_close
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import varirm.export as ex
from varirm.cli import cli_main
from varirm.errors import VarirmError
from varirm.evaluate import evaluate
from varirm.scoring import load_scorer, score

PROMPTS = [[{"role": "user", "content": "List some fruit words."}], [{"role": "user", "content": "Write tool words."}]]
RESPONSES = ["apple pear plum", "dog red"]


def _train(run, model_dir, data_dir, *extra):
    cli_main(["fit", "--config", str(REPO / "recipes" / "quickstart.yaml"), "--trainer.default_root_dir", str(run),
              "--trainer.precision", "32-true", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
              "--model.init_args.model_name_or_path", str(model_dir),
              "--data.init_args.train", str(data_dir / "train.jsonl"),
              "--data.init_args.val", str(data_dir / "val.jsonl"),
              "--data.init_args.test", str(data_dir / "test.jsonl"), *extra])
    return run / "checkpoints" / "last.ckpt"


def _samples(path):
    rows = [{"prompt": p, "responses": ["apple pear", "dog", "saw axe drill", "red"], "policy": "test-policy"}
            for p in PROMPTS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, synthetic_dir):
    base = tmp_path_factory.mktemp("export")
    os.environ["VARIRM_CACHE"] = str(base / "cache")
    full = _train(base / "full", tiny_model_dir, synthetic_dir)
    lora = _train(base / "lora", tiny_model_dir, synthetic_dir, "--model.init_args.lora_r", "4")
    return base, full, lora


def hf_rewards(directory):
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    out = []
    for prompt, response in zip(PROMPTS, RESPONSES):
        text = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": response}], tokenize=False)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out.append(model(**inputs).logits[0, 0])
    return torch.stack(out)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["full", "lora"])
def test_export_loads_with_plain_transformers_and_gives_checkpoint_rewards(trained, kind, tmp_path):
    base, full, lora = trained
    ckpt = full if kind == "full" else lora
    samples = _samples(tmp_path / "samples.jsonl")
    evaluate(str(ckpt), str(tmp_path / "eval"), samples=str(samples), gold="varirm.synthetic.gold_reward", plots=False)
    out = tmp_path / "exported"
    ex.export(str(ckpt), str(out), evaluations=[str(tmp_path / "eval")])
    rm, tokenizer = load_scorer(str(ckpt))
    assert_close(hf_rewards(str(out)), score(rm, tokenizer, PROMPTS, RESPONSES), atol=1e-5, rtol=1e-5)
    config = json.loads((out / "config.json").read_text())
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(str(out)).num_labels == 1  # saved as id2label by transformers 5
    assert config["pad_token_id"] == tokenizer.pad_token_id != config.get("eos_token_id")
    assert config["reward_shift"] == config["mean"] == metrics["shift"]
    assert config["reward_scale"] == config["std"] == metrics["scale"]
    assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    assert (out / "varirm_recipe.yaml").read_text() == (ckpt.parent.parent / "config.yaml").read_text()
    assert "chat_template" in (out / "tokenizer_config.json").read_text() or (out / "chat_template.jinja").exists()
    card = (out / "README.md").read_text()
    assert f"{metrics['whitened_variance_mean']:.4f}" in card and "test-policy" in card
    assert "whitened_reward_variance" in card.split("---")[1]  # model-index metadata for the Hub page


@pytest.mark.slow
def test_adapter_only_export_reloads_to_the_same_rewards(trained, tmp_path):
    _, _, lora = trained
    out = tmp_path / "adapter"
    ex.export(str(lora), str(out), adapter_only=True)
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    rm, tokenizer = load_scorer(str(lora))
    again, tok2 = load_scorer(str(out))
    assert_close(score(again, tok2, PROMPTS, RESPONSES), score(rm, tokenizer, PROMPTS, RESPONSES), atol=1e-6, rtol=1e-6)


@pytest.mark.slow
def test_export_is_atomic_and_never_overwrites_silently(trained, tmp_path, monkeypatch):
    _, full, _ = trained
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(VarirmError, match="already exists"):
        ex.export(str(full), str(out))
    assert (out / "keep.txt").read_text() == "mine"

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ex, "render_card", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ex.export(str(full), str(tmp_path / "new"))
    with pytest.raises(RuntimeError, match="disk full"):
        ex.export(str(full), str(out), overwrite=True)
    assert not (tmp_path / "new").exists()
    assert (out / "keep.txt").read_text() == "mine"  # the old output is untouched by a failed overwrite
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary directories left behind
    monkeypatch.undo()
    ex.export(str(full), str(out), overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()


@pytest.mark.slow
def test_card_rerenders_with_a_new_policy_and_rejects_other_checkpoints(trained, tmp_path):
    _, full, lora = trained
    samples = _samples(tmp_path / "samples.jsonl")
    out = tmp_path / "exported"
    ex.export(str(full), str(out))
    assert "Not evaluated under any policy yet" in (out / "README.md").read_text()
    weights = (out / "model.safetensors").stat().st_mtime_ns
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**r, "policy": "another-policy"}) + "\n" for r in rows))
    evaluate(str(full), str(tmp_path / "e1"), samples=str(samples), plots=False)
    evaluate(str(full), str(tmp_path / "e2"), samples=str(other), plots=False)
    cli_main(["card", "--model_dir", str(out),
              "--evaluations", json.dumps([str(tmp_path / "e1"), str(tmp_path / "e2")])])
    card = (out / "README.md").read_text()
    assert "test-policy" in card and "another-policy" in card
    assert (out / "model.safetensors").stat().st_mtime_ns == weights
    evaluate(str(lora), str(tmp_path / "e3"), samples=str(samples), plots=False)
    with pytest.raises(VarirmError, match="evaluate this checkpoint"):
        ex.card(str(out), [str(tmp_path / "e3")])


class FakeHub(BaseHTTPRequestHandler):
    """Just enough of the Hub API for create_repo + upload_folder; records every request."""

    requests: list = []
    files: dict = {}

    def log_message(self, *args):
        pass

    def _reply(self, body, status=200):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.requests.append(("GET", self.path, dict(self.headers), b""))
        self._reply({"error": "not found"}, 404)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.requests.append(("POST", self.path, dict(self.headers), body))
        if self.path == "/api/repos/create":
            req = json.loads(body)
            return self._reply({"url": f"http://{self.headers['Host']}/{req.get('organization')}/{req['name']}"})
        if self.path == "/api/validate-yaml":  # the client checks README metadata before committing
            return self._reply({})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                          for f in files], "commitOid": "0" * 40})
        if "/commit/" in self.path:
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    FakeHub.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            repo = self.path.split("/api/models/")[1].split("/commit/")[0]
            return self._reply({"commitUrl": f"http://{self.headers['Host']}/{repo}/commit/{'1' * 40}",
                                "commitOid": "1" * 40, "success": True})
        self._reply({"error": "unknown"}, 404)


@pytest.mark.slow
def test_push_to_hub_uploads_to_the_endpoint_and_never_writes_the_token(trained, tmp_path, monkeypatch):
    _, full, _ = trained
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    token = "hf_secretTOKEN1234567890"
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    try:
        out = tmp_path / "pushed"
        ex.export(str(full), str(out), push_to_hub="varirm-test/tiny-rm", private=True)
    finally:
        server.shutdown()
    create = [r for r in FakeHub.requests if r[1] == "/api/repos/create"]
    payload = json.loads(create[0][3])
    assert payload.get("visibility") == "private" or payload.get("private") is True  # new / old client
    assert (create[0][2].get("authorization") == f"Bearer {token}"
            or create[0][2].get("Authorization") == f"Bearer {token}")
    assert {"config.json", "README.md", "model.safetensors", "tokenizer.json"} <= set(FakeHub.files)
    assert FakeHub.files["model.safetensors"] == (out / "model.safetensors").read_bytes()
    for name in os.listdir(out):
        assert token not in (out / name).read_bytes().decode("utf-8", "ignore"), name
    assert "varirm-test/tiny-rm" in (out / "README.md").read_text()


@pytest.mark.slow
def test_exported_rm_works_as_reward_for_trl_rloo_trainer(trained, tmp_path, tiny_model_dir):
    """One RLOOTrainer step with reward_funcs=<exported dir> (TRL is a test extra, not a dependency)."""
    pytest.importorskip("trl")
    import datasets
    from trl import RLOOConfig, RLOOTrainer

    _, full, _ = trained
    out = tmp_path / "exported"
    ex.export(str(full), str(out))
    prompts = datasets.Dataset.from_list([{"prompt": p} for p in PROMPTS * 4])
    args = RLOOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, bf16=False, max_steps=1,
                      per_device_train_batch_size=4, num_generations=2, max_completion_length=8, report_to=[],
                      save_strategy="no", logging_steps=1, seed=0)
    trainer = RLOOTrainer(model=tiny_model_dir, reward_funcs=str(out), args=args, train_dataset=prompts)
    trainer.train()
    logs = {k: v for entry in trainer.state.log_history for k, v in entry.items()}
    reward_keys = [k for k in logs if k.startswith("reward")]
    assert reward_keys and all(isinstance(logs[k], float) and logs[k] == logs[k] for k in reward_keys), logs
    assert trainer.state.global_step == 1


def test_card_teacher_score_lines_name_value_rank_interval_and_caveats():
    teacher = {"per_rm": {"a": 0.9, "b": 0.7, "c": 0.8}, "formula": "(1 - 0.2) x harm-aware accuracy + ...",
               "fit_seeds": [0, 1], "test_seeds": [2, 3],
               "held_out_spearman": {"estimate": 0.86, "lower": 0.5, "upper": 1.0}}
    text = "\n".join(ex._teacher_lines(teacher, "c"))
    assert "0.800, rank 2 of 3" in text and "0.86 [0.50, 1.00]" in text and "held-out seeds [2, 3]" in text
    assert "Caveats" in text
    assert ex._teacher_lines(None, "c") == [] and ex._teacher_lines(teacher, "z") == []
