"""Do two ``varirm verify`` reports hold the same results? For a refactor or a rerun on the same
machine: every run matched by (policy, RM, seed), the largest absolute difference of each number it
holds (variance, accuracies, shift/scale, gains, every gold-curve point), and whether the summaries
and checks are the same. What differs by nature (wall times, the command line, the output
directory in the runs' paths) is left out.

    python scripts/compare_reports.py NEW/report.json OLD/report.json --output results/reproduce

writes ``reproduce.json`` and ``reproduce.md``; exits 1 when a number differs by more than ``--tolerance``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

NUMBERS = ["whitened_variance_mean", "on_policy_acc", "off_policy_acc", "shift", "scale", "gold_start", "gold_end",
           "gold_gain", "proxy_gain", "gold_auc"]


def _largest_difference(a: Any, b: Any) -> float:
    """Largest absolute difference between the numbers of two JSON values of the same shape (inf
    when the shapes or the non-numbers differ)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return math.inf
        return max([_largest_difference(a[k], b[k]) for k in a] + [0.0])
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return math.inf
        return max([_largest_difference(x, y) for x, y in zip(a, b)] + [0.0])
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if math.isnan(a) and math.isnan(b):
            return 0.0
        return abs(a - b)
    return 0.0 if a == b else math.inf


def compare(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """Per run (matched by policy, RM and seed) the largest difference of each number and of its gold
    curve; the largest difference in the summaries and checks; runs found in only one report."""
    key = lambda r: (r.get("policy", ""), r["name"], r["seed"])  # noqa: E731
    old_runs = {key(r): r for r in old["runs"]}
    runs = []
    for r in new["runs"]:
        o = old_runs.get(key(r))
        if o is None:
            continue
        diffs = {k: _largest_difference(r.get(k), o.get(k)) for k in NUMBERS}
        diffs["curve"] = _largest_difference(r["curve"], o["curve"])
        runs.append({"policy": key(r)[0], "name": r["name"], "seed": r["seed"], "largest": max(diffs.values()),
                     "differences": diffs})
    matched = {(r["policy"], r["name"], r["seed"]) for r in runs}
    return {"runs": runs, "only_new": sorted(map(list, {key(r) for r in new["runs"]} - matched)),
            "only_old": sorted(map(list, set(old_runs) - matched)),
            "summary": _largest_difference(new["summary"], old["summary"]),
            "checks": _largest_difference(new["checks"], old["checks"]),
            "largest": max([r["largest"] for r in runs] + [0.0])}


def render_markdown(result: dict[str, Any]) -> str:
    lines = [f"# `{result['new']}` vs `{result['old']}`", "",
             f"{len(result['runs'])} runs matched by (policy, RM, seed); only in the new report: "
             f"{result['only_new'] or 'none'}; only in the old: {result['only_old'] or 'none'}. Largest absolute "
             f"difference of any number: {result['largest']:.3g} (tolerance {result['tolerance']:g}); summaries "
             f"{result['summary']:.3g}, checks {result['checks']:.3g}. Machine: {result['machine']}.", "",
             "| policy | RM | seed | largest difference | " + " | ".join(NUMBERS + ["curve"]) + " |",
             "|---|---|---|---|" + "---|" * (len(NUMBERS) + 1)]
    for r in result["runs"]:
        cells = [f"{r['differences'][k]:.3g}" for k in NUMBERS + ["curve"]]
        lines.append(f"| {r['policy']} | `{r['name']}` | {r['seed']} | {r['largest']:.3g} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("new")
    parser.add_argument("old")
    parser.add_argument("--tolerance", type=float, default=0.0, help="largest difference accepted")
    parser.add_argument("--output", help="write OUTPUT.json and OUTPUT.md")
    args = parser.parse_args(argv)
    with open(args.new) as f, open(args.old) as g:
        result = compare(json.load(f), json.load(g))
    from bench_common import cpu_description

    result.update(new=args.new, old=args.old, tolerance=args.tolerance, machine=cpu_description())
    text = render_markdown(result)
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        with open(args.output + ".json", "w") as f:
            json.dump(result, f, indent=2)
        with open(args.output + ".md", "w") as f:
            f.write(text)
    print(text)
    return 0 if result["largest"] <= args.tolerance and not result["only_new"] and not result["only_old"] else 1


if __name__ == "__main__":
    sys.exit(main())
