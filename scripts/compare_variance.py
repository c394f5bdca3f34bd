"""Plain Bradley-Terry vs BT + variance regularizer on the synthetic task, several seeds.

Trains both variants from recipes/variance_synthetic.yaml (same pairs, same policy samples;
plain BT only sets variance_coef to 0), evaluates each with ``varirm evaluate`` under the fixed
policy pi0 (held-out prompts x 10 samples, gold reward) and on the held-out test pairs, and writes
``<out>/variance_comparison.json`` and ``.md``. The numbers in README.md come from this script.

    python scripts/compare_variance.py --seeds 0 1 2
Inputs are the demo's artifacts (scripts/demo.sh builds them; this script builds missing ones).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from varirm.cli import cli_main  # noqa: E402
from varirm.evaluate import evaluate  # noqa: E402

ART = "artifacts"
INPUTS = [  # (file that must exist, command that makes it)
    (f"{ART}/tiny-llama/config.json", ["make-tiny-model", "--output", f"{ART}/tiny-llama"]),
    (f"{ART}/synthetic/train.jsonl", ["make-synthetic", "--output_dir", f"{ART}/synthetic"]),
    (f"{ART}/pi0/config.json", ["sft", "--config", "recipes/sft_synthetic.yaml", "--trainer.default_root_dir",
                                "runs/sft_synthetic", "--trainer.enable_progress_bar", "false"]),
    (f"{ART}/samples/pi0_train_k4.jsonl", ["sample", "--policy", f"{ART}/pi0", "--prompts",
                                           f"{ART}/synthetic/prompts.jsonl", "--output",
                                           f"{ART}/samples/pi0_train_k4.jsonl", "--k", "4", "--seed", "1"]),
    (f"{ART}/samples/pi0_eval_k10.jsonl", ["sample", "--policy", f"{ART}/pi0", "--prompts",
                                           f"{ART}/synthetic/eval_prompts.jsonl", "--output",
                                           f"{ART}/samples/pi0_eval_k10.jsonl", "--k", "10", "--seed", "2"]),
]
KEYS = ["whitened_variance_mean", "raw_variance_mean", "on_policy_acc", "off_policy_acc"]


def prepare() -> None:
    for path, command in INPUTS:
        if not os.path.exists(path):
            if command[0] == "sft" and os.path.isdir("runs/sft_synthetic"):
                shutil.rmtree("runs/sft_synthetic")  # a half-finished SFT run; pi0 is missing
            cli_main(command)


def run(variant: str, seed: int, out: str, recipe: str) -> dict:
    run_dir = os.path.join(out, "runs", f"{variant}_seed{seed}")
    if os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    args = ["fit", "--config", recipe, "--seed_everything", str(seed), "--data.init_args.seed", str(seed),
            "--trainer.default_root_dir", run_dir, "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false"]
    if variant == "bt":
        args += ["--model.init_args.variance_coef", "0"]
    start = time.time()
    cli_main(args)
    seconds = time.time() - start
    metrics = evaluate(os.path.join(run_dir, "checkpoints", "last.ckpt"),
                       os.path.join(out, "eval", f"{variant}_seed{seed}"),
                       samples=f"{ART}/samples/pi0_eval_k10.jsonl", gold="varirm.synthetic.gold_reward",
                       pairs=f"{ART}/synthetic/test.jsonl", max_length=64, device="cpu", overwrite=True)
    return {"variant": variant, "seed": seed, "train_seconds": round(seconds, 1), **{k: metrics[k] for k in KEYS},
            "gold_whitened_variance_mean": metrics["gold_whitened_variance_mean"]}


def summarize(rows: list[dict]) -> dict:
    out = {}
    for variant in ("bt", "reg"):
        chosen = [r for r in rows if r["variant"] == variant]
        out[variant] = {k: {"mean": statistics.mean(r[k] for r in chosen),
                            "std": statistics.stdev(r[k] for r in chosen) if len(chosen) > 1 else 0.0} for k in KEYS}
    return out


def markdown(result: dict) -> str:
    lines = ["# Plain BT vs BT + variance regularizer (synthetic task, policy pi0)", "",
             f"Command: `{result['command']}`. Recipe: `{result['recipe']}` (plain BT: `variance_coef: 0`).",
             f"Evaluation: {result['eval']}.", "",
             "| RM | whitened variance under pi0 | raw variance | on-policy acc (gold) | held-out pair acc |",
             "|---|---|---|---|---|"]
    for variant, name in (("bt", "plain BT"), ("reg", "BT + variance regularizer")):
        s = result["summary"][variant]
        lines.append(f"| {name} | " + " | ".join(f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}" for k in KEYS) + " |")
    lines += ["", f"Mean ± std over seeds {result['seeds']}. Gold reward's own whitened variance under pi0: "
              f"{result['runs'][0]['gold_whitened_variance_mean']:.3f}.", "", "Per run:", "",
              "| RM | seed | whitened var | raw var | on-policy acc | pair acc | train s |",
              "|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['variant']} | {r['seed']} | " + " | ".join(f"{r[k]:.3f}" for k in KEYS)
                     + f" | {r['train_seconds']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipe", default="recipes/variance_synthetic.yaml")
    parser.add_argument("--out", default="results/variance")
    args = parser.parse_args()
    os.chdir(ROOT)
    prepare()
    rows = [run(variant, seed, args.out, args.recipe) for seed in args.seeds for variant in ("bt", "reg")]
    result = {"command": "python scripts/compare_variance.py --seeds " + " ".join(map(str, args.seeds)),
              "recipe": args.recipe, "seeds": args.seeds,
              "eval": "varirm evaluate on artifacts/samples/pi0_eval_k10.jsonl (the held-out prompts x 10 samples, "
                      "gold = varirm.synthetic.gold_reward) and artifacts/synthetic/test.jsonl (500 pairs)",
              "runs": rows, "summary": summarize(rows)}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "variance_comparison.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.out, "variance_comparison.md"), "w") as f:
        f.write(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
