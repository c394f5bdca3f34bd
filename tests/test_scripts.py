"""Smoke runs of the benchmark scripts (a few steps), so they cannot rot. Not timed tests."""

import json
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_bench_variance_overhead_smoke(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_variance_overhead.py"), "--steps", "2",
                           "--warmup", "1", "--out", str(out), "--benchmarks_md", str(tmp_path / "B.md")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "bench.json").read_text())
    assert result["median_step_ms"]["plain"] > 0 and result["median_step_ms"]["regularized"] > 0
    assert result["ratio_regularized_over_plain"] > 0
    doc = (tmp_path / "B.md").read_text()
    assert "<!-- bench:variance_overhead -->" in doc and "Ratio regularized / plain" in doc


def test_compare_reports_finds_a_changed_number(tmp_path):
    """scripts/compare_reports.py: a report against itself differs nowhere; one changed gain and one
    changed curve point are found, named by run, and fail the tolerance."""
    run = {"policy": "pi0", "name": "a", "seed": 0, "curve": [{"step": 0, "gold_reward": 0.1}],
           **{k: 0.5 for k in ("whitened_variance_mean", "on_policy_acc", "off_policy_acc", "shift", "scale",
                               "gold_start", "gold_end", "gold_gain", "proxy_gain", "gold_auc")}}
    report = {"runs": [run, {**run, "name": "b"}], "summary": {"x": 1.0}, "checks": [{"verdict": "PASS"}]}
    changed = json.loads(json.dumps(report))
    changed["runs"][1]["gold_gain"] = 0.75
    changed["runs"][1]["curve"][0]["gold_reward"] = 0.2
    for name, content in (("old", report), ("same", report), ("new", changed)):
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    script = [sys.executable, str(REPO / "scripts" / "compare_reports.py")]
    same = subprocess.run([*script, str(tmp_path / "same.json"), str(tmp_path / "old.json")], capture_output=True,
                          text=True, timeout=120)
    assert same.returncode == 0 and "Largest absolute difference of any number: 0 " in same.stdout
    diff = subprocess.run([*script, str(tmp_path / "new.json"), str(tmp_path / "old.json"), "--output",
                           str(tmp_path / "cmp")], capture_output=True, text=True, timeout=120)
    assert diff.returncode == 1
    result = json.loads((tmp_path / "cmp.json").read_text())
    b = next(r for r in result["runs"] if r["name"] == "b")
    assert b["differences"]["gold_gain"] == 0.25 and abs(b["differences"]["curve"] - 0.1) < 1e-12
    assert next(r for r in result["runs"] if r["name"] == "a")["largest"] == 0
