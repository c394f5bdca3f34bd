"""The README quickstart, timed: build the tiny model and the synthetic task, ``varirm fit --config
recipes/quickstart.yaml``, then ``varirm test`` on the held-out pairs. Writes the wall time of each
step, the test accuracy against the gold labels, and whether the targets (training in under 3
minutes on CPU, held-out accuracy >= 0.85) were met, to JSON, Markdown and a BENCHMARKS.md section.

Each command runs as a user would run it (``python -m varirm ...`` in its own process), in a
temporary directory, so nothing of an earlier run (cache, artifacts, checkpoints) is reused.

    python scripts/bench_quickstart.py                                   # the full quickstart
    python scripts/bench_quickstart.py --overrides --trainer.max_steps 4 --out /tmp/q --benchmarks_md ''  # smoke
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(SCRIPTS)
sys.path.insert(0, SCRIPTS)

from bench_common import machine, write_outputs  # noqa: E402

TARGET_FIT_S, TARGET_ACC = 180.0, 0.85


def timed(argv: list[str], cwd: str, env: dict, log: str) -> float:
    """Run ``python -m varirm ARGV`` in ``cwd``; seconds it took. Raises with the log's tail on failure."""
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-m", "varirm", *argv], cwd=cwd, env=env, stdout=f,
                              stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        with open(log) as f:
            raise RuntimeError(f"varirm {shlex.join(argv)} failed (exit {proc.returncode}):\n{f.read()[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (OMP_NUM_THREADS)")
    parser.add_argument("--overrides", nargs=argparse.REMAINDER, default=[],
                        help="extra arguments for varirm fit (after everything else)")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "bench_quickstart"))
    parser.add_argument("--benchmarks_md", default=os.path.join(ROOT, "BENCHMARKS.md"))
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="varirm-quickstart-")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "VARIRM_CACHE": os.path.join(work, "cache"),
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    recipe = os.path.join(ROOT, "recipes", "quickstart.yaml")
    steps = {"make-tiny-model": ["make-tiny-model", "--output", "artifacts/tiny-llama"],
             "make-synthetic": ["make-synthetic", "--output_dir", "artifacts/synthetic"],
             "fit": ["fit", "--config", recipe, *args.overrides],
             "test": ["test", "--config", "runs/quickstart/config.yaml", "--ckpt_path",
                      "runs/quickstart/checkpoints/last.ckpt"]}
    try:
        seconds = {name: round(timed(argv, work, env, os.path.join(work, f"{name}.log")), 1)
                   for name, argv in steps.items()}
        val_acc = test_acc = None  # from the run's CSV logs (one metrics.csv per attempt: fit, then test)
        for d, _, files in sorted(os.walk(os.path.join(work, "runs", "quickstart", "csv"))):
            if "metrics.csv" in files:
                with open(os.path.join(d, "metrics.csv")) as f:
                    rows = list(csv.DictReader(f))
                val_acc = next((float(r["val/acc"]) for r in reversed(rows) if r.get("val/acc")), val_acc)
                test_acc = next((float(r["test/acc"]) for r in rows if r.get("test/acc")), test_acc)
        if test_acc is None:
            raise RuntimeError("varirm test logged no test/acc")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"command": shlex.join(["python", "scripts/bench_quickstart.py", *sys.argv[1:]]),
              "machine": machine(args.threads), "seconds": seconds, "test_acc": test_acc, "last_val_acc": val_acc,
              "targets": {"fit_s": TARGET_FIT_S, "test_acc": TARGET_ACC},
              "met": {"fit_s": seconds["fit"] <= TARGET_FIT_S, "test_acc": test_acc >= TARGET_ACC}}
    verdict = {True: "met", False: "MISSED"}
    md = "\n".join([
        "## Quickstart: time and accuracy", "",
        f"`{result['command']}`: the README quickstart commands, each in its own process, from an empty directory "
        f"(CPU, {args.threads} threads; torch {result['machine']['torch']}).", "",
        "| step | seconds |", "|---|---|", *[f"| `varirm {k}` | {v} |" for k, v in seconds.items()], "",
        f"Held-out (test) pairwise accuracy against the gold labels: **{test_acc:.3f}** (target >= {TARGET_ACC}: "
        f"{verdict[result['met']['test_acc']]}); `varirm fit` took **{seconds['fit']} s** "
        f"(target <= {TARGET_FIT_S:.0f} s: {verdict[result['met']['fit_s']]})."]) + "\n"
    write_outputs(args.out, result, md, args.benchmarks_md, "quickstart")
    print(md)


if __name__ == "__main__":
    main()
