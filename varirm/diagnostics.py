"""Does a verification world show the paper's variance/accuracy trade-off? Diagnostics of a
``varirm verify`` run, measured before reading any RLOO result (only RLOO against gold enters).

Razin et al. 2025 (arXiv 2503.15477, Pythia-2.8B on UltraFeedback, ArmoRM as gold): under the
initial policy pi0 the gold RM's whitened within-prompt variance is 0.256; BT RMs trained on 0%
on-policy pairs have 0.314, on 100% on-policy pairs 0.630, while off-policy accuracy goes the
other way (0.651 vs 0.596). A world in which RMs differ in accuracy but not in variance cannot test
the paper's claims. :func:`world_diagnostics` checks, each with a 95% interval and a
PASS / MISS / INCONCLUSIVE verdict (:func:`varirm.stats.judge`):

- the gold reward's whitened variance under pi0 lies in [0.2, 0.7] (prompts differ in how well pi0
  can do; bootstrap over prompts);
- var(0% on-policy RM) / var(100% on-policy RM) <= 0.6 (paired bootstrap over seeds);
- off-policy accuracy of the 0% RM >= that of the 100% RM (paired t over seeds);
- the 25/50/75% mixes' mean variances lie between the 0% and 100% means;
- RLOO against gold raises the gold reward (t interval over seeds above 0).

Worked example of the ratio: variances 0.30, 0.34 (0%, seeds 0 and 1) and 0.90, 0.86 (100%):
ratio of means 0.32 / 0.88 = 0.364.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from varirm.evaluate import prompt_intervals
from varirm.stats import fmt, judge, paired, t_interval

GOLD_BAND = (0.2, 0.7)
MAX_RATIO = 0.6


def _by_seed(runs: list[dict[str, Any]], name: str, metric: str) -> dict[int, float]:
    return {r["seed"]: r[metric] for r in runs if r["name"] == name}


def _band(ci: dict[str, Any], low: float, high: float) -> dict[str, Any]:
    """PASS when the interval lies inside [low, high], MISS when wholly outside, else INCONCLUSIVE."""
    lo, hi = ci["lower"], ci["upper"]
    if lo >= low and hi <= high:
        return {"verdict": "PASS"}
    if hi < low or lo > high:
        return {"verdict": "MISS"}
    return {"verdict": "INCONCLUSIVE", "seeds_needed": None}


def world_diagnostics(runs: list[dict[str, Any]], fractions: dict[str, float], gold_rewards: torch.Tensor,
                      gold_name: Optional[str] = "gold") -> dict[str, Any]:
    """Diagnostics of a verification world (module docstring).

    Args:
        runs: ``report.json``'s ``runs`` under one policy: rows with ``name``, ``seed``,
            ``whitened_variance_mean``, ``on_policy_acc``, ``off_policy_acc`` (and ``gold_gain``
            for ``gold_name``).
        fractions: RM name -> share of on-policy pairs it was trained on; must include 0 and 1.
        gold_rewards: ``(p, k)`` gold rewards of the policy's evaluation samples.
        gold_name: Name of the run that used the gold reward itself (its RLOO gain is checked).
    """
    by_fraction = sorted(fractions.items(), key=lambda item: item[1])
    zero = [n for n, f in by_fraction if f == 0.0]
    full = [n for n, f in by_fraction if f == 1.0]
    if not zero or not full:
        raise ValueError(f"fractions need a 0% and a 100% on-policy RM, got {fractions}")
    zero, full = zero[0], full[0]
    seeds = sorted(set(_by_seed(runs, zero, "whitened_variance_mean"))
                   & set(_by_seed(runs, full, "whitened_variance_mean")))
    per_rm = {}
    for name, fraction in by_fraction:
        per_rm[name] = {"on_policy_fraction": fraction,
                        **{m: t_interval(list(_by_seed(runs, name, m).values()))
                           for m in ("whitened_variance_mean", "on_policy_acc", "off_policy_acc")}}
    gold_ci = prompt_intervals(gold_rewards)["whitened_variance_mean_ci"]
    var0 = [_by_seed(runs, zero, "whitened_variance_mean")[s] for s in seeds]
    var1 = [_by_seed(runs, full, "whitened_variance_mean")[s] for s in seeds]
    ratio = paired(var1, var0)["ratio"]  # mean(var0) / mean(var1), paired over seeds
    off = paired([_by_seed(runs, full, "off_policy_acc")[s] for s in seeds],
                 [_by_seed(runs, zero, "off_policy_acc")[s] for s in seeds])["difference"]  # 0% - 100%
    lo_mean, hi_mean = sorted((per_rm[zero]["whitened_variance_mean"]["estimate"],
                               per_rm[full]["whitened_variance_mean"]["estimate"]))
    mixes = {n: per_rm[n]["whitened_variance_mean"]["estimate"] for n, f in by_fraction if 0.0 < f < 1.0}
    between = all(lo_mean <= v <= hi_mean for v in mixes.values())
    checks = [
        {"claim": f"gold's whitened variance under the policy lies in [{GOLD_BAND[0]}, {GOLD_BAND[1]}]",
         "measured": f"{fmt(gold_ci)} (bootstrap over {gold_rewards.shape[0]} prompts)", "interval": gold_ci,
         **_band(gold_ci, *GOLD_BAND)},
        {"claim": f"variance of the 0% on-policy RM `{zero}` <= {MAX_RATIO}x that of the 100% RM `{full}`",
         "measured": f"ratio {fmt(ratio)} ({ratio['method']}, {len(seeds)} seeds)", "interval": ratio,
         **judge(ratio, MAX_RATIO, above=False)},
        {"claim": f"off-policy accuracy of `{zero}` at least that of `{full}`",
         "measured": f"difference {fmt(off)} (t over {len(seeds)} seeds)", "interval": off, **judge(off, 0.0)},
        {"claim": "the mixes' mean variances lie between the 0% and 100% RMs'",
         "measured": ", ".join(f"{n} {v:.3f}" for n, v in mixes.items()) + f" (ends {lo_mean:.3f}, {hi_mean:.3f})",
         "verdict": "PASS" if between else "MISS"},
    ]
    if gold_name is not None and _by_seed(runs, gold_name, "gold_gain"):
        gain = t_interval(list(_by_seed(runs, gold_name, "gold_gain").values()))
        checks.append({"claim": "RLOO against gold raises the gold reward",
                       "measured": f"gold gain {fmt(gain)} (t over seeds)", "interval": gain, **judge(gain, 0.0)})
    return {"seeds": seeds, "per_rm": per_rm, "gold_whitened_variance": gold_ci, "variance_ratio": ratio,
            "off_policy_acc_difference": off, "checks": checks}


def render_markdown(diag: dict[str, Any], title: str = "World diagnostics") -> str:
    """The diagnostics as a Markdown table and a list of verdicts."""
    lines = [f"# {title}", "",
             f"Seeds: {diag['seeds']}. Cells: mean over seeds [95% t interval over seeds]. Gold's variance: "
             "95% bootstrap over evaluation prompts.", "",
             "| RM | on-policy pairs | whitened variance under the policy | on-policy acc | off-policy acc |",
             "|---|---|---|---|---|"]
    for name, row in diag["per_rm"].items():
        lines.append(f"| `{name}` | {row['on_policy_fraction']:.0%} | {fmt(row['whitened_variance_mean'])} | "
                     f"{fmt(row['on_policy_acc'])} | {fmt(row['off_policy_acc'])} |")
    lines += ["", f"Gold reward: whitened variance {fmt(diag['gold_whitened_variance'])}.", ""]
    lines += [f"- {c['verdict']}: {c['claim']}. Measured: {c['measured']}." for c in diag["checks"]]
    return "\n".join(lines) + "\n"



def diagnose_verification(verify_dir: str, policy: Optional[str] = None) -> dict[str, Any]:
    """:func:`world_diagnostics` of a ``varirm verify`` output directory: the RMs trained with an
    ``on_policy_fraction`` override, the runs under ``policy`` (the first when not given), and the
    gold reward of that policy's evaluation samples."""
    import json
    import os

    from varirm.sampling import read_samples
    from varirm.scoring import label_samples

    with open(os.path.join(verify_dir, "report.json")) as f:
        report = json.load(f)
    fractions = {spec["name"]: float(spec["overrides"]["data.init_args.on_policy_fraction"])
                 for spec in report["reward_models"]
                 if "data.init_args.on_policy_fraction" in (spec.get("overrides") or {})
                 and not any("variance" in key for key in spec["overrides"])}
    entries = report.get("policies") or [{"name": None, "eval_samples": report["eval_samples"]}]
    entry = next((e for e in entries if policy in (None, e["name"])), None)
    if entry is None:
        raise ValueError(f"no policy {policy!r} in {verify_dir}: {[e['name'] for e in entries]}")
    runs = [r for r in report["runs"] if entry["name"] is None or r.get("policy") in (None, entry["name"])]
    gold = torch.tensor(label_samples(read_samples(entry["eval_samples"]), report["gold"]), dtype=torch.float64)
    diag = world_diagnostics(runs, fractions, gold)
    return {"verification": verify_dir, "policy": entry["name"] or report["policy"],
            "eval_samples": entry["eval_samples"], "gold": report["gold"], **diag}
