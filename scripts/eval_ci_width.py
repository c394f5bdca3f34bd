"""How wide are the evaluation intervals? Whitened-variance and on-policy-accuracy 95% bootstrap
intervals (over prompts) of a verification's RMs under pi0, for eval sets of several sizes.

Takes the RMs of a finished ``varirm verify`` run (one seed) and pi0, samples pi0 (k = 10, seed 2)
on the first N of the synthetic world's held-out prompts for each N, evaluates every RM there and
writes ``<out>.json``/``.md``. The eval-set size in recipes/verify/synthetic.yaml is chosen from it
(issue target: variance half-width <= 0.05).

    python scripts/eval_ci_width.py --verify_dir runs/verify_synthetic --sizes 128 256
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from varirm.cli import cli_main  # noqa: E402
from varirm.evaluate import evaluate  # noqa: E402
from varirm.synthetic import make_prompts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verify_dir", default="runs/verify_synthetic",
                        help="a finished varirm verify output directory")
    parser.add_argument("--policy", default="artifacts/pi0")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256], help="eval prompts")
    parser.add_argument("--seed", type=int, default=0, help="which seed's RMs")
    parser.add_argument("--work", default="runs/eval_ci_width")
    parser.add_argument("--out", default="results/eval_ci_width")
    args = parser.parse_args()
    with open(os.path.join(args.verify_dir, "report.json")) as f:
        report = json.load(f)
    rms = {r["name"]: r["rm"] for r in report["runs"] if r["seed"] == args.seed}
    os.makedirs(args.work, exist_ok=True)
    rows = []
    for n in args.sizes:
        prompts = os.path.join(args.work, f"eval_prompts_{n}.jsonl")
        with open(prompts, "w") as f:  # the world's held-out prompts: write_task's seed 0 -> base + 5
            f.writelines(json.dumps(r) + "\n" for r in make_prompts(n, seed=5))
        samples = os.path.join(args.work, f"pi0_eval_{n}_k10.jsonl")
        cli_main(["sample", "--policy", args.policy, "--prompts", prompts, "--output", samples, "--k", "10",
                  "--seed", "2"])
        for name, rm in rms.items():
            m = evaluate(rm, os.path.join(args.work, f"{n}", name), samples=samples, gold=report["gold"], max_length=64,
                         device="cpu", plots=False, overwrite=True)
            v, a = m["whitened_variance_mean_ci"], m["on_policy_acc_ci"]
            rows.append({"prompts": n, "rm": name, "variance": v["estimate"],
                         "variance_half_width": (v["upper"] - v["lower"]) / 2,
                         "on_policy_acc": a["estimate"], "on_policy_acc_half_width": (a["upper"] - a["lower"]) / 2})
    lines = ["# Evaluation interval widths (95% bootstrap over prompts, k = 10 samples of pi0 per prompt)", "",
             f"RMs of `{args.verify_dir}` (seed {args.seed}); `python scripts/eval_ci_width.py --sizes "
             f"{' '.join(map(str, args.sizes))}`.", "",
             "| prompts | RM | whitened variance | half-width | on-policy acc | half-width |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['prompts']} | `{r['rm']}` | {r['variance']:.3f} | {r['variance_half_width']:.3f} | "
                     f"{r['on_policy_acc']:.3f} | {r['on_policy_acc_half_width']:.3f} |")
    for n in args.sizes:
        worst = max(r["variance_half_width"] for r in rows if r["prompts"] == n)
        lines.append(f"\nWith {n} prompts the widest variance half-width is {worst:.3f}.")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"verify_dir": args.verify_dir, "seed": args.seed, "rows": rows}, f, indent=2)
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
