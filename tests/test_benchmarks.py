"""Smoke runs of the tool-vs-tool benchmark scripts (tiny models, a few steps), so they cannot
rot. Not timed tests: the numbers they write mean nothing at this size.

One torch thread: on a 2-core machine that is busy with something else, two spinning OpenMP
threads per run can make a step 20x slower, and the tests would be slow for no reason."""

import json
import subprocess
import sys

import pytest
from conftest import REPO

TINY = ["--hidden_size", "32", "--num_layers", "2", "--num_heads", "2", "--threads", "1", "--repeats", "1"]


def run_script(tmp_path, script: str, *args: str) -> tuple[dict, str]:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), *TINY, *args,
                           "--out", str(tmp_path / "bench"), "--benchmarks_md", str(tmp_path / "B.md")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads((tmp_path / "bench.json").read_text()), (tmp_path / "B.md").read_text()


@pytest.mark.slow
def test_bench_rm_train_smoke(tmp_path):
    pytest.importorskip("trl")
    has_dpo = (REPO.parent / "shared" / "data" / "dpo_en_demo.json").is_file()
    datasets = ["dpo_en_demo", "synthetic"] if has_dpo else ["synthetic"]
    # --steps 0: one epoch each, so both tools must run exactly ceil(pairs / batch) steps
    result, doc = run_script(tmp_path, "bench_rm_train.py", "--steps", "0", "--warmup", "1", "--datasets", *datasets,
                             "--dpo_batch_size", "16", "--synthetic_train_pairs", "96",
                             "--synthetic_heldout_pairs", "64", "--accuracy_steps", "3", "--accuracy_seeds", "1")
    assert sorted(result["datasets"]) == sorted(datasets)
    for d in result["datasets"].values():
        for tool in ("varirm", "trl"):
            t = d[tool]
            assert (t["pairs_per_s"]["median"] > 0 and t["tokens_per_s"]["median"] > 0
                    and t["peak_rss_mib"]["median"] > 0)
            assert 0 <= t["heldout_acc"]["median"] <= 1 and t["rows"]["trained_on"] > 0
            # both really trained in the precision the script chose (bf16 only where the CPU has it natively)
            assert t["autocast_dtypes"] == (["bfloat16"] if result["settings"]["precision"] == "bf16 autocast"
                                            else ["float32"])
            epoch_steps = -(-t["rows"]["trained_on"] // d["batch_size"])
            assert all(run["steps_run"] == epoch_steps and run["timed_steps"] == epoch_steps - 1 for run in t["runs"])
        assert d["varirm"]["rows"]["trained_on"] == d["trl"]["rows"]["trained_on"]
        assert d["ratio_varirm_over_trl"]["pairs_per_s"] > 0 and d["ratio_varirm_over_trl"]["tokens_per_s"] > 0
    acc = result["accuracy"]
    for tool in ("varirm", "trl"):
        assert [run["timed_steps"] for run in acc[tool]["runs"]] == [3] and 0 <= acc[tool]["heldout_acc"]["median"] <= 1
    assert acc["acc_difference"] == round(acc["varirm"]["heldout_acc"]["median"]
                                          - acc["trl"]["heldout_acc"]["median"], 3)
    assert "<!-- bench:rm_train -->" in doc and "<!-- /bench:rm_train -->" in doc and "varirm / TRL" in doc
    assert "Accuracy after training" in doc


@pytest.mark.slow
def test_bench_rloo_smoke(tmp_path):
    pytest.importorskip("trl")
    result, doc = run_script(tmp_path, "bench_rloo.py", "--steps", "1", "--warmup", "1", "--batch_size", "4",
                             "--num_prompts", "16", "--max_new_tokens", "8")
    for tool in ("varirm", "trl"):
        t = result["tools"][tool]
        assert t["prompts_per_s"]["median"] > 0 and t["generated_tokens_per_s"]["median"] > 0
        run = t["runs"][0]
        assert run["optimizer_steps"] == (1 + 1) * 2  # both: RLOO steps x ppo_epochs / num_iterations updates
        assert run["timed_completions"] == 4 * 4 and run["generate_calls"] == 1
    assert result["ratio_varirm_over_trl"]["prompts_per_s"] > 0
    assert result["ratio_varirm_over_trl"]["generated_tokens_per_s"] > 0
    assert "<!-- bench:rloo -->" in doc and "<!-- /bench:rloo -->" in doc


@pytest.mark.slow
def test_bench_sampling_smoke(tmp_path):
    result, doc = run_script(tmp_path, "bench_sampling.py", "--warmup", "0", "--num_prompts", "8",
                             "--max_new_tokens", "8")
    assert {"varirm", "varirm_dynamic_cache", "plain_fp32"} <= set(result["tools"])
    assert result["ratios"]["preallocated_over_dynamic_cache_paired"]["pairs"] == 1 and "in-place KV" in doc
    for tool, t in result["tools"].items():
        assert t["tokens_per_s"]["median"] > 0 and t["runs"][0]["responses"] == 8 * 4, tool
        assert 0 < t["fraction_of_bound"]["median"] < 1, tool
    assert result["ratios"]["varirm_over_best_plain"] > 0 and result["bound"]["matmul"]["gflops_per_s"] > 0
    assert "<!-- bench:sampling -->" in doc and "<!-- /bench:sampling -->" in doc


@pytest.mark.slow
@pytest.mark.real
def test_bench_sampling_real_model_smoke(tmp_path, smollm2_dir, shared_data):
    result, doc = run_script(tmp_path, "bench_sampling.py", "--model_dir", smollm2_dir, "--prompts",
                             str(shared_data / "dpo_en_demo.json"), "--warmup", "0", "--num_prompts", "2", "--k", "2",
                             "--max_new_tokens", "4", "--batch_size", "2")
    assert result["settings"]["model_kind"] == "real model" and result["tools"]["varirm"]["runs"][0]["responses"] == 4
    assert "<!-- bench:sampling_real -->" in doc


@pytest.mark.slow
@pytest.mark.real
def test_bench_rloo_real_model_smoke(tmp_path, smollm2_dir, shared_data):
    """Real-model mode: SmolLM2 policy, a SmolLM2 sequence classifier as the RM in both tools."""
    pytest.importorskip("trl")
    result, doc = run_script(tmp_path, "bench_rloo.py", "--model_dir", smollm2_dir, "--prompts",
                             str(shared_data / "dpo_en_demo.json"), "--steps", "1", "--warmup", "1", "--batch_size",
                             "2", "--k", "2", "--num_prompts", "4", "--max_new_tokens", "4", "--ppo_epochs", "1")
    for tool in ("varirm", "trl"):
        run = result["tools"][tool]["runs"][0]
        assert run["optimizer_steps"] == 2 and run["timed_completions"] == 2 * 2, (tool, run)
    assert result["settings"]["real"] and "<!-- bench:rloo_real -->" in doc


@pytest.mark.slow
def test_profile_rm_train_smoke(tmp_path, shared_data):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "profile_rm_train.py"), "--hidden_size", "32",
                           "--num_layers", "2", "--num_heads", "2", "--threads", "1", "--steps", "2", "--warmup", "1",
                           "--max_length", "256", "--dpo_file", str(shared_data / "dpo_en_demo.json"),
                           "--out", str(tmp_path / "prof"), "--benchmarks_md", str(tmp_path / "B.md")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "prof.json").read_text())
    assert result["top_ops"] and all(op["self_cpu_ms"] >= 0 for op in result["top_ops"])
    assert 0 < sum(op["share"] for op in result["top_ops"]) <= 1.0 + 1e-6
    assert abs(sum(result["kind_shares"].values()) - 1) < 0.01 and result["kind_shares"]["matrix multiplies"] > 0
    doc = (tmp_path / "B.md").read_text()
    assert "<!-- bench:profile_rm_train -->" in doc and "What dominated:" in doc


@pytest.mark.slow
def test_bench_gpu_rm_smoke_on_cpu(tmp_path):
    """The GPU benchmark's whole path (model build, a process per run, varirm's training step, MFU
    arithmetic, report) on a tiny config; on this CPU machine its numbers mean nothing."""
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_gpu_rm import flops_per_token

    assert flops_per_token(100, 2, 8, 16) == 6 * 100 + 12 * 2 * 8 * 16
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_gpu_rm.py"), "--hidden_size", "32",
                           "--intermediate_size", "64", "--num_layers", "2", "--num_heads", "2", "--num_kv_heads", "1",
                           "--seq_len", "32", "--modes", "full", "qlora", "--batch_sizes", "1", "--steps", "2",
                           "--warmup", "1", "--threads", "1", "--out", str(tmp_path / "gpu"),
                           "--benchmarks_md", str(tmp_path / "B.md")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    full, qlora = result["modes"]["full"]["best"], result["modes"]["qlora"]["best"]
    assert full["fits"] and full["timed_steps"] == 2 and full["tokens_per_s"] > 0
    fpt = flops_per_token(full["non_embedding_parameters"], 2, 32, 32)
    assert abs(full["mfu"] - full["tokens_per_s"] * fpt / 989e12) < 1e-15
    assert qlora["trainable_parameters"] < full["trainable_parameters"] and "mfu" not in qlora
    assert "<!-- bench:gpu_rm -->" in (tmp_path / "B.md").read_text()


@pytest.mark.slow
def test_bench_quickstart_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_quickstart.py"), "--threads", "1",
                           "--out", str(tmp_path / "q"), "--benchmarks_md", str(tmp_path / "B.md"),
                           "--overrides", "--trainer.max_steps", "3"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "q.json").read_text())
    assert set(result["seconds"]) == {"make-tiny-model", "make-synthetic", "fit", "test"}
    assert 0 <= result["test_acc"] <= 1 and result["met"]["test_acc"] == (result["test_acc"] >= 0.85)
    assert "<!-- bench:quickstart -->" in (tmp_path / "B.md").read_text()


def test_step_flops_by_hand():
    """A 1-layer Llama-style config small enough to count by hand: q (4x4), k and v (4x2), o (4x4),
    gate/up (4x6), down (6x4): P = 16 + 8 + 8 + 16 + 24 + 24 + 24 = 120 weights; with LoRA r = 1,
    P_r = sum(in + out) = 8 + 6 + 6 + 8 + 10 + 10 + 10 = 58. Rows of 1 and 2 tokens: T = 3,
    sum L^2 = 5; attention H d_h = 4."""
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_rm_train import step_flops
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=4, num_attention_heads=2, head_dim=2, num_key_value_heads=1, intermediate_size=6,
                         num_hidden_layers=1)
    lora = step_flops(config, lora_r=1, tokens=3, squared_lengths=5)
    assert lora == {"linear": 4 * 3 * 120 + 6 * 3 * 58, "attention": 6 * 5 * 4, "total": 2484 + 120}
    full = step_flops(config, lora_r=0, tokens=3, squared_lengths=5)
    assert full["linear"] == 6 * 3 * 120 and full["total"] == 2160 + 120


@pytest.mark.slow
@pytest.mark.real
def test_bench_rm_train_real_model_smoke(tmp_path, smollm2_dir, shared_data):
    """Real-model mode: SmolLM2 with LoRA against TRL with the same LoraConfig, a few steps; the
    physical-limit estimate comes out for both tools."""
    pytest.importorskip("trl")
    result, doc = run_script(tmp_path, "bench_rm_train.py", "--model_dir", smollm2_dir, "--lora_r", "2", "--steps", "2",
                             "--warmup", "1", "--dpo_max_length", "256", "--dpo_batch_size", "2",
                             "--gradient_checkpointing", "--target_tokens", "2.0")
    assert list(result["datasets"]) == ["dpo_en_demo"] and result["settings"]["lora"]["r"] == 2
    assert "gradient checkpointing (non-reentrant) in both" in doc and "THP_MEM_ALLOC_ENABLE=1 " in doc
    paired = result["datasets"]["dpo_en_demo"]["ratio_varirm_over_trl"]["tokens_per_s_paired"]
    assert paired["pairs"] == 1 and paired["target"] == 2.0 and paired["verdict"] == "INCONCLUSIVE"
    d = result["datasets"]["dpo_en_demo"]
    for tool in ("varirm", "trl"):
        t = d[tool]
        assert [run["timed_steps"] for run in t["runs"]] == [2] and t["pairs_per_s"]["median"] > 0
        assert t["trainable_parameters"] < t["parameters"] / 10  # LoRA: a few percent trainable
        assert t["rows"]["trained_on"] + t["rows"]["over_max_length"] == t["rows"]["given"]
        limit = d["physical_limit"][tool]
        assert 0 < limit["fraction_of_limit"]["median"] < 1 and limit["limit_s_per_step"]["median"] > 0
    assert d["varirm"]["rows"]["trained_on"] == d["trl"]["rows"]["trained_on"]  # both drop the same over-long rows
    assert d["physical_limit"]["matmul"]["gflops_per_s"] > 0
    assert "<!-- bench:rm_train_real -->" in doc and "fraction of the limit" in doc
