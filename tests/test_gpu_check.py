"""scripts/gpu_check.sh / gpu_check.py: the GPU check must work before a GPU is lent, so its dry
run (CPU, tiny shapes, the same code paths) runs here, and its bookkeeping is checked on its own."""

import json
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import gpu_check  # noqa: E402


def test_a_part_past_its_time_is_killed_with_its_children(tmp_path):
    marker = tmp_path / "child-still-running"
    # a parent that starts a child which would write the marker after 3 s: both die at the deadline
    command = ["bash", "-c", f"(sleep 3; touch {marker}) & sleep 30"]
    start = time.monotonic()
    with open(tmp_path / "log", "w") as log:
        rc = gpu_check.run_logged(command, log, deadline=time.monotonic() + 1)
    assert rc == 124 and time.monotonic() - start < 10
    time.sleep(3)
    assert not marker.exists()


def test_a_failing_part_is_recorded_and_the_next_part_runs(tmp_path, monkeypatch):
    def commands(name, out, work, dry, env, record):
        return [("step", [sys.executable, "-c", "raise SystemExit(3)" if name == "rm_1b" else "print('ok')"])]

    monkeypatch.setattr(gpu_check, "part_commands", commands)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", str(tmp_path / "out"), "--dry-run", "--parts", "rm_1b",
                                      "rloo_testbed"])
    gpu_check.main()
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [(p["part"], p["status"]) for p in summary["parts"]] == [("rm_1b", "failed"), ("rloo_testbed", "ok")]
    assert summary["parts"][0]["steps"][0]["rc"] == 3
    assert "| rm_1b | failed |" in (tmp_path / "out" / "summary.md").read_text()


@pytest.mark.parametrize("dry", [False, True])
def test_shortened_verification_recipe(tmp_path, dry):
    path, changes = gpu_check.shortened_verify(str(tmp_path), dry)
    recipe = yaml.safe_load(open(path))
    original = yaml.safe_load(open(REPO / "recipes" / "verify" / "testbed_gpu.yaml"))
    assert recipe["seeds"] == [0] and original["seeds"] == [0, 1, 2]
    assert recipe["rloo_recipe"] == f"{tmp_path}/recipes/verify_testbed_gpu.yaml"
    rloo = yaml.safe_load(open(recipe["rloo_recipe"]))
    assert rloo["model"]["init_args"]["policy_name_or_path"] == f"{tmp_path}/testbed/pi0"
    assert rloo["trainer"]["accelerator"] == ("cpu" if dry else "gpu")
    trained = [rm for rm in recipe["reward_models"] if "recipe" in rm]
    assert trained and all(rm["overrides"]["trainer.max_steps"] == (2 if dry else 300) for rm in trained)
    assert recipe["rloo_overrides"]["trainer.max_steps"] == (4 if dry else 60)
    names = [rm["name"] for rm in recipe["reward_models"]]
    assert names == gpu_check.SHORT_REWARD_MODELS
    assert set(names) < {rm["name"] for rm in original["reward_models"]}
    make_synthetic = next(step["args"] for step in recipe["prepare"] if step["job"] == "make-synthetic")
    assert make_synthetic["n_prompts"] == (64 if dry else 4000)
    assert all(str(tmp_path) in step["creates"] for step in recipe["prepare"])
    assert any("seeds [0]" in c for c in changes)


@pytest.mark.slow
def test_dry_run_every_part(tmp_path):
    out = tmp_path / "gpu"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(out), "--dry-run"],
                          capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    parts = {p["part"]: p for p in summary["parts"]}
    assert list(parts) == gpu_check.PARTS
    assert {name: p["status"] for name, p in parts.items()} == {name: "ok" for name in gpu_check.PARTS}, \
        {name: (out / f"{name}.log").read_text()[-2000:] for name, p in parts.items() if p["status"] != "ok"}
    assert summary["env"]["matmul_bf16"]["tflops"] > 0
    modes = parts["rm_1b"]["modes"]
    assert set(modes) == {"full", "lora", "qlora"} and all(m["tokens_per_s"] > 0 for m in modes.values())
    assert modes["full"]["mfu"] > 0 and modes["qlora"]["mfu"] is None
    assert parts["qlora_8b"]["modes"]["qlora"]["peak_memory_gib"] > 0
    assert [s["step"] for s in parts["rloo_testbed"]["steps"]] == ["policy", "prompts", "rloo_1", "rloo_2"]
    assert parts["verify_testbed"]["report"] and "seeds [0] (the recipe has 3)" in parts["verify_testbed"]["changes"]
    assert parts["rloo_testbed"].get("prompts_per_rloo_step", 4) == 4
    assert "## GPU check" in (out / "summary.md").read_text()


def test_parts_past_the_budget_are_skipped_and_a_second_command_adds_to_the_summary(tmp_path, monkeypatch):
    def commands(name, out, work, dry, env, record):
        return [("step", [sys.executable, "-c", "import time; time.sleep(3)"])]

    monkeypatch.setattr(gpu_check, "part_commands", commands)
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", str(out), "--parts", "rm_1b", "qlora_8b", "--budget", "32"])
    gpu_check.main()  # rm_1b takes 3 s of 32, leaving under 30: qlora_8b is skipped
    summary = json.loads((out / "summary.json").read_text())
    assert [(p["part"], p["status"]) for p in summary["parts"]] == [("rm_1b", "ok"), ("qlora_8b", "skipped")]
    assert summary["parts"][0]["limit_s"] <= 32
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", str(out), "--parts", "qlora_8b", "--budget", "60"])
    gpu_check.main()
    summary = json.loads((out / "summary.json").read_text())
    assert [(p["part"], p["status"]) for p in summary["parts"]] == [("rm_1b", "ok"), ("qlora_8b", "ok")]
    assert len(summary["commands"]) == 2
