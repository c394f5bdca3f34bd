"""The verification report: what it holds per RM, and how it is written (``report.json``,
``report.md``, plots).

- :func:`summarize`: per RM, the mean and 95% t interval over seeds of each of :data:`METRICS`;
  Spearman correlations of gold gain with variance and each accuracy.
- :func:`render_markdown`, :func:`plot`, :func:`write_report`: the files, one section and one set of
  plots per initial policy.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

from varirm.files import atomic_write_text
from varirm.stats import fmt, fmt_over_seeds, mean_std, over_seeds, spearman, spearman_interval, t_interval

METRICS = ["whitened_variance_mean", "on_policy_acc", "off_policy_acc", "gold_gain", "proxy_gain", "gold_auc"]


ACCURACIES = {"whitened_variance_mean": "whitened variance", "on_policy_acc": "on-policy accuracy",
              "off_policy_acc": "off-policy accuracy"}


def summarize(rows: list[dict[str, Any]], names: list[str], seeds: list[int]) -> dict[str, Any]:
    """Per-RM mean, std and 95% t interval over seeds; Spearman correlations of gold gain with
    variance and each accuracy, per seed (then mean/std) and on the per-RM means with a bootstrap
    interval (:func:`spearman_interval`)."""
    per_rm = {n: {m: over_seeds([r[m] for r in rows if r["name"] == n]) for m in METRICS} for n in names}
    correlations: dict[str, Any] = {}
    for metric, label in ACCURACIES.items():
        per_seed = []
        for seed in seeds:
            chosen = [r for r in rows if r["seed"] == seed]
            per_seed.append(spearman([r[metric] for r in chosen], [r["gold_gain"] for r in chosen]))
        ci = spearman_interval(rows, names, seeds, metric)
        correlations[metric] = {"label": label, "per_seed": per_seed, **mean_std(per_seed), "on_means": ci["estimate"],
                                "on_means_ci": ci}
    return {"per_rm": per_rm, "spearman_with_gold_gain": correlations}


ONE_SEED = ("One seed decides nothing: with one seed every interval over seeds is unbounded and every check is "
            "INCONCLUSIVE. Run several, e.g. --seeds '[0, 1, 2, 3, 4]'.")


def _verdict(check: dict[str, Any]) -> str:
    verdict = check.get("verdict") or ("PASS" if check.get("passed") else "MISS")
    if verdict == "INCONCLUSIVE":
        needed = check.get("seeds_needed")
        reason = (f"about {needed} seeds would resolve it at this spread" if needed
                  else "no estimate of the seeds needed")
        return f"INCONCLUSIVE ({reason})"
    return verdict


def render_markdown(report: dict[str, Any]) -> str:
    """``report.md`` from ``report.json``'s content: one section per initial policy, then (with
    several) whether the RMs' ranking changes between them and which policy's variance predicts it."""
    entries = report.get("policies") or []
    if len(entries) < 2:
        return _render_one(report, f"# RLOO verification: {len(report['reward_models'])} reward models under "
                                   f"`{report['policy']}`")
    parts = [f"# RLOO verification: {len(report['reward_models'])} reward models under {len(entries)} initial "
             "policies", ""]
    for entry in entries:
        parts.append(_render_one(_policy_view(report, entry), f"## Under `{entry['name']}` (`{entry['policy']}`)"))
    across = report["across_policies"]
    parts += ["## Across policies", "", "Does the ranking of RMs by gold gain change between policies? Spearman "
              "between the per-RM mean gains (95% bootstrap over seeds within each RM; PASS = the ranking changes: "
              "the interval lies below 1):", "", "| policies | Spearman of gains [95% CI] | ranking changes? |",
              "|---|---|---|"]
    for row in across["rank_agreement"]:
        parts.append(f"| `{row['a']}` vs `{row['b']}` | {fmt(row['spearman'])} | {_verdict(row)} |")
    parts += ["", "Which policy's variance predicts gold gain? Spearman(whitened variance under the row's policy, "
              "gold gain under the column's policy) [95% CI]:", "",
              "| variance under (row), gain under (column) | " + " | ".join(f"`{e['name']}`" for e in entries) + " |",
              "|---|" + "---|" * len(entries)]
    for pv in entries:
        cells = [fmt(next(r["spearman"] for r in across["variance_predicts_gain"]
                          if r["variance_under"] == pv["name"] and r["gain_under"] == pg["name"])) for pg in entries]
        parts.append(f"| `{pv['name']}` | " + " | ".join(cells) + " |")
    parts += ["", f"Wall time: {report['seconds']:.0f} s ({report['device']}).", ""]
    return "\n".join(parts)


def _policy_view(report: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The report as seen from one initial policy: its summary, checks and runs."""
    return {**report,
            **{k: entry[k] for k in ("policy", "eval_samples", "eval_prompts", "eval_k", "summary", "checks")},
            "runs": [r for r in report["runs"] if r.get("policy", entry["name"]) == entry["name"]]}


def _render_one(report: dict[str, Any], title: str) -> str:
    """The Markdown of one policy's results."""
    s, specs = report["summary"], {r["name"]: r for r in report["reward_models"]}
    seeds = report["seeds"]
    lines = [title, "",
             f"Command: `{report['command']}`. Seeds: {seeds}: per-RM numbers are the mean over seeds with a 95% "
             f"Student-t interval over seeds. RLOO: `{report['rloo_recipe']}`, "
             f"{report['rloo_steps']} RLOO steps per run, same seed and budget for every RM.", "",
             f"Variance and on-policy accuracy: `{report['eval_samples']}` "
             f"({report['eval_prompts']} prompts x {report['eval_k']} samples of the initial policy), gold "
             f"`{report['gold']}`. Off-policy accuracy: `{report['test_pairs']}`. Gold gain: gold reward of the "
             "policy on held-out prompts after RLOO minus before; AUC: average gold gain over the run.", ""]
    if len(seeds) < 2:
        lines += [f"**{ONE_SEED}**", ""]
    lines += ["| RM | whitened variance | on-policy acc | off-policy acc | gold gain | proxy gain | gold AUC | "
              "what it is |",
              "|---|---|---|---|---|---|---|---|"]
    for name in specs:
        m = s["per_rm"][name]
        lines.append(f"| `{name}` | " + " | ".join(fmt_over_seeds(m[k]) for k in METRICS)
                     + f" | {specs[name]['description']} |")
    lines += ["", "Spearman correlation with the gold gain, across RMs (on per-RM means, 95% bootstrap interval "
              "resampling seeds within each RM):", "", "| quantity | on per-RM means [95% CI] | per seed |",
              "|---|---|---|"]
    for c in s["spearman_with_gold_gain"].values():
        ci = c.get("on_means_ci")
        lines.append(f"| {c['label']} | {fmt(ci) if ci else format(c['on_means'], '.3f')} | "
                     + ", ".join(f"{v:.3f}" for v in c["per_seed"]) + " |")
    lines += ["", "Checks (the paper's claims, measured here; PASS only when the 95% interval clears the threshold, "
              "MISS when it lies wholly on the wrong side):", ""]
    for c in report["checks"]:
        lines.append(f"- {_verdict(c)}: {c['claim']}. Measured: {c['measured']}.")
    lines += ["", "Plots: `gold_curves.png` (gold reward vs RLOO step, mean over seeds with a 95% t band), "
              "`variance_vs_gain.png`, `accuracy_vs_gain.png` (error bars: 95% intervals over seeds).", "", "Per run "
              "(whitened variance and on-policy accuracy with 95% bootstrap intervals over evaluation prompts):", "",
              "| RM | seed | whitened var | on-policy acc | off-policy acc | gold start | gold end | gold gain | "
              "proxy gain | gold AUC |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        cells = [fmt(r[f"{k}_ci"]) if r.get(f"{k}_ci") else f"{r[k]:.3f}"
                 for k in ("whitened_variance_mean", "on_policy_acc", "off_policy_acc")]
        cells += [f"{r[k]:.3f}" for k in ("gold_start", "gold_end", "gold_gain", "proxy_gain", "gold_auc")]
        lines.append(f"| `{r['name']}` | {r['seed']} | " + " | ".join(cells) + " |")
    lines += ["", f"Wall time: {report['seconds']:.0f} s ({report['device']}).", ""]
    return "\n".join(lines)


def _half_widths(m: dict[str, Any]) -> Optional[list[list[float]]]:
    """Asymmetric error bar ``[[mean - lower], [upper - mean]]`` of a 95% interval (None if unbounded)."""
    lo, hi = m.get("lower", float("nan")), m.get("upper", float("nan"))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return [[m["mean"] - lo], [hi - m["mean"]]]


def plot(report: dict[str, Any], output_dir: str, suffix: str = "") -> list[str]:
    """``gold_curves.png``, ``variance_vs_gain.png``, ``accuracy_vs_gain.png`` (names + ``suffix``)
    of one policy's results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in report["reward_models"]]
    per_rm = report["summary"]["per_rm"]
    paths = [os.path.join(output_dir, f"{f}{suffix}.png")
             for f in ("gold_curves", "variance_vs_gain", "accuracy_vs_gain")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in names:
        curves = [r["curve"] for r in report["runs"] if r["name"] == name]
        steps = [p["step"] for p in curves[0]]
        bands = [t_interval([c[i]["gold_reward"] for c in curves]) for i in range(min(map(len, curves)))]
        xs = steps[:len(bands)]
        line, = ax.plot(xs, [b["estimate"] for b in bands], marker="o", markersize=3, label=name)
        if len(curves) > 1:  # 95% t band over seeds
            ax.fill_between(xs, [b["lower"] for b in bands], [b["upper"] for b in bands], color=line.get_color(),
                            alpha=0.15)
    ax.set_xlabel("RLOO step")
    ax.set_ylabel("gold reward (held-out prompts)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)
    for path, metrics in ((paths[1], ["whitened_variance_mean"]), (paths[2], ["on_policy_acc", "off_policy_acc"])):
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.5), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            for name in names:
                m = per_rm[name]
                ax.errorbar(m[metric]["mean"], m["gold_gain"]["mean"], xerr=_half_widths(m[metric]),
                            yerr=_half_widths(m["gold_gain"]), fmt="o", capsize=2)
                ax.annotate(name, (m[metric]["mean"], m["gold_gain"]["mean"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
            rho = report["summary"]["spearman_with_gold_gain"][metric]["on_means"]
            ax.set_xlabel(f"{ACCURACIES[metric]} under the initial policy")
            ax.set_ylabel("gold reward gain after RLOO")
            ax.set_title(f"Spearman {rho:.2f}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return paths


def write_report(report: dict[str, Any], output_dir: str) -> str:
    """``report.json``, ``report.md`` and the plots (per policy when there are several) into
    ``output_dir``; returns the path of ``report.md``."""
    atomic_write_text(os.path.join(output_dir, "report.json"), json.dumps(report, indent=2))
    atomic_write_text(os.path.join(output_dir, "report.md"), render_markdown(report))
    entries = report["policies"]
    for entry in entries:
        plot(_policy_view(report, entry), output_dir, suffix=f"_{entry['name']}" if len(entries) > 1 else "")
    return os.path.join(output_dir, "report.md")
