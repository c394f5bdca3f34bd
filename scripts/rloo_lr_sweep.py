"""Choose the RLOO learning rate of the synthetic verification: RLOO from pi0 against the gold
reward at a few learning rates and seeds, with the verification's own recipe
(recipes/rloo/verify_synthetic.yaml) and nothing else changed.

The rule, fixed before the runs: take the largest learning rate at which gold's curve still rises
over the last fifth of the run (gold at the end minus gold at 80% of the steps, interpolated, is
above 0 on every seed), so that the gains of the RMs being compared are not read off a saturated
curve. Writes ``<out>/lr_sweep.json`` and ``.md`` (README "Choosing the RLOO learning rate").

    python scripts/rloo_lr_sweep.py --lrs 1e-4 3e-4 1e-3 --seeds 0 1 --out results/lr_sweep
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from varirm import jobs  # noqa: E402
from varirm.files import atomic_write_text  # noqa: E402
from varirm.stats import fmt, t_interval  # noqa: E402
from varirm.verify import gain_measures  # noqa: E402

RECIPE = "recipes/rloo/verify_synthetic.yaml"


def late_rise(curve: list[dict]) -> float:
    """Gold at the end minus gold at 80% of the steps (linear interpolation)."""
    steps, gold = [p["step"] for p in curve], [p["gold_reward"] for p in curve]
    at = steps[0] + 0.8 * (steps[-1] - steps[0])
    i = next(i for i in range(1, len(steps)) if steps[i] >= at)
    g80 = gold[i - 1] + (gold[i] - gold[i - 1]) * (at - steps[i - 1]) / (steps[i] - steps[i - 1])
    return gold[-1] - g80


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default="results/lr_sweep")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows, start = [], time.time()
    for lr in args.lrs:
        per_seed = []
        for seed in args.seeds:
            run = os.path.join(args.out, "runs", f"lr{lr:g}", f"seed{seed}")
            if not os.path.exists(os.path.join(run, "policy_eval.json")):
                jobs.rloo(RECIPE, {"model.init_args.lr": lr, "model.init_args.seed": seed, "seed_everything": seed,
                                   "data.init_args.seed": seed, "trainer.default_root_dir": run,
                                   "trainer.enable_progress_bar": False, "trainer.enable_model_summary": False})
            with open(os.path.join(run, "policy_eval.json")) as f:
                curve = json.load(f)["curve"]
            m = gain_measures([p["step"] for p in curve], [p["gold_reward"] for p in curve])
            per_seed.append({"seed": seed, **m, "late_rise": late_rise(curve),
                             "gold": [round(p["gold_reward"], 4) for p in curve]})
        rows.append({"lr": lr, "runs": per_seed, **{k: t_interval([r[k] for r in per_seed])
                                                    for k in ("gain", "auc", "early", "late_rise")}})
    rising = [r["lr"] for r in rows if all(x["late_rise"] > 0 for x in r["runs"])]
    chosen = max(rising) if rising else None
    result = {"recipe": RECIPE, "seeds": args.seeds, "rows": rows, "chosen_lr": chosen,
              "rule": "largest lr whose gold curve rises over the last fifth of the run on every seed",
              "cpu": platform.processor() or platform.machine(), "seconds": time.time() - start}
    atomic_write_text(os.path.join(args.out, "lr_sweep.json"), json.dumps(result, indent=2))
    lines = [f"# RLOO learning rate sweep (`{RECIPE}`, reward = gold, from pi0)", "",
             f"Seeds {args.seeds}; mean [95% t interval over seeds]. Late rise: gold at the end minus gold at 80% "
             f"of the steps. Rule: {result['rule']}. Chosen: **{chosen}**. {result['seconds']:.0f} s.", "",
             "| lr | gold gain | gold AUC | early gain | late rise | gold curves (per seed) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        curves = "<br>".join(" ".join(f"{g:.2f}" for g in x["gold"]) for x in r["runs"])
        lines.append(f"| {r['lr']:g} | {fmt(r['gain'])} | {fmt(r['auc'])} | {fmt(r['early'])} | "
                     f"{fmt(r['late_rise'])} | {curves} |")
    atomic_write_text(os.path.join(args.out, "lr_sweep.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
