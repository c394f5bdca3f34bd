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
