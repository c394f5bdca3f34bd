"""The verification report: what it holds per RM, and how it is written (``report.json``,
``report.md``, plots).

- :func:`gain_measures`, :func:`curve_summary`: the gains of one RLOO run's gold curve (end, area,
  early), per group of prompts too.
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

from varirm.errors import VarirmError
from varirm.files import atomic_write_text
from varirm.stats import fmt, fmt_over_seeds, mean_std, over_seeds, spearman, spearman_interval, t_interval
from varirm.teacher import PREDICTORS, best_predictor, measured, teacher_fit

METRICS = ["whitened_variance_mean", "on_policy_acc", "off_policy_acc", "gold_gain", "proxy_gain", "gold_auc",
           "gold_early"]




EARLY_FRACTION = 0.2  # early gain: gold after the first fifth of the RLOO steps


def gain_measures(steps: list[float], gold: list[float]) -> dict[str, float]:
    """Three measures of a gold curve ``gold[i]`` at RLOO step ``steps[i]``: the gain at the end
    (last minus first), the area under the gain curve divided by the number of steps (the
    average gain over the run; trapezoid rule), and the early gain at ``EARLY_FRACTION`` of the
    steps (linear interpolation between evaluation points). The last two keep telling RMs apart
    after the gold curves saturate.

    >>> gain_measures([0, 5, 10], [1.0, 2.0, 2.0])  # gains 0, 1, 1: area 2.5 + 5 = 7.5 over 10 steps
    {'gain': 1.0, 'auc': 0.75, 'early': 0.4}
    """
    gains = [g - gold[0] for g in gold]
    area = sum((steps[i + 1] - steps[i]) * (gains[i] + gains[i + 1]) / 2 for i in range(len(steps) - 1))
    at = steps[0] + EARLY_FRACTION * (steps[-1] - steps[0])
    i = next(i for i in range(1, len(steps)) if steps[i] >= at)
    early = gains[i - 1] + (gains[i] - gains[i - 1]) * (at - steps[i - 1]) / (steps[i] - steps[i - 1])
    return {"gain": gains[-1], "auc": area / (steps[-1] - steps[0]), "early": early}


def curve_summary(curve: list[dict[str, float]]) -> dict[str, float]:
    """Gains from a :class:`varirm.callbacks.PolicyEvaluation` curve (:func:`gain_measures`):
    ``gold_gain``, ``gold_auc``, ``gold_early`` and the normalized-proxy gain; with a per-group
    curve (``gold_by_group``), the same three per group (``gold_gain_<group>``, ...)."""
    if len(curve) < 2:
        raise VarirmError("the RLOO evaluation curve has fewer than 2 points; raise trainer.max_steps")
    steps = [p["step"] for p in curve]
    out = {"gold_start": curve[0]["gold_reward"], "gold_end": curve[-1]["gold_reward"],
           **{f"gold_{k}": v for k, v in gain_measures(steps, [p["gold_reward"] for p in curve]).items()},
           "proxy_gain": curve[-1]["proxy_reward"] - curve[0]["proxy_reward"], "steps": steps[-1]}
    for group in curve[0].get("gold_by_group", {}):
        measures = gain_measures(steps, [p["gold_by_group"][group] for p in curve])
        out.update({f"gold_{k}_{group}": v for k, v in measures.items()})
    return out


def curve_groups(rows: list[dict[str, Any]]) -> list[str]:
    """The groups of prompts whose gains the rows (runs, or per-RM summaries) carry
    (``gold_auc_<group>``, from :func:`curve_summary`)."""
    return sorted({k[len("gold_auc_"):] for r in rows for k in r if k.startswith("gold_auc_")})


def summarize(rows: list[dict[str, Any]], names: list[str], seeds: list[int],
              k: Optional[int] = None) -> dict[str, Any]:
    """Per-RM mean, std and 95% t interval over seeds of each of :data:`METRICS` (and of the gains
    per group of prompts, ``gold_*_<group>``, when the runs have them); Spearman correlations of
    the gold gain and of the gold AUC with each predictor the runs measure
    (:data:`varirm.teacher.PREDICTORS`), per seed (then mean/std) and on the per-RM means with a
    bootstrap interval (:func:`spearman_interval`); which predictor ranks the gold AUC best
    (:func:`varirm.teacher.best_predictor`); with ``k`` (samples per prompt of the evaluation) the
    teacher score fit on half of the seeds and tested on the others (:func:`varirm.teacher.teacher_fit`)."""
    grouped = [f"gold_{m}_{g}" for g in curve_groups(rows) for m in ("gain", "auc", "early")]
    per_rm = {n: {m: over_seeds([r[m] for r in rows if r["name"] == n]) for m in METRICS + grouped} for n in names}
    out: dict[str, Any] = {"per_rm": per_rm}
    for outcome in ("gold_gain", "gold_auc"):
        correlations: dict[str, Any] = {}
        for metric, label in PREDICTORS.items():
            if metric not in METRICS and not measured(rows, metric):
                continue  # not measured by these runs
            per_seed = []
            for seed in seeds:
                chosen = [r for r in rows if r["seed"] == seed]
                per_seed.append(spearman([r[metric] for r in chosen], [r[outcome] for r in chosen]))
            ci = spearman_interval(rows, names, seeds, metric, outcome=outcome)
            correlations[metric] = {"label": label, "per_seed": per_seed, **mean_std(per_seed),
                                    "on_means": ci["estimate"], "on_means_ci": ci}
        out[f"spearman_with_{outcome}"] = correlations
    out["predictors"] = best_predictor(rows, names, seeds)
    out["teacher"] = teacher_fit(rows, names, seeds, k) if k else None
    return out


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


def _wall_time(report: dict[str, Any]) -> str:
    """The run's wall time and, when recorded, each seed's: every stage of it, also one a resumed run reused."""
    per_seed = (report.get("timings") or {}).get("per_seed")
    seeds = f"; per seed: {', '.join(f'seed {k} {v:.0f} s' for k, v in per_seed.items())}" if per_seed else ""
    return f"Wall time: {report['seconds']:.0f} s ({report['device']}){seeds}."


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
    parts += ["## Across policies", "", "Does the ranking of RMs by gold AUC change between policies (Theorem 3)? "
              "Spearman between the per-RM mean AUCs under each (95% bootstrap over seeds, joint across RMs), and "
              "the split-half test: Spearman between two halves of the seeds under one policy (how well a ranking "
              "repeats under seed noise alone) minus the same across the two policies; PASS = above 0, the "
              "ranking changes more between the policies than between halves of the seeds:", "",
              "| policies | Spearman of AUCs [95% CI] | within - across, split-half [95% CI] | ranking changes? |",
              "|---|---|---|---|"]
    for row in across["rank_agreement"]:
        split = fmt(row["split_half"]) if "split_half" in row else "-"
        parts.append(f"| `{row['a']}` vs `{row['b']}` | {fmt(row['spearman'])} | {split} | {_verdict(row)} |")
    parts += ["", "Which policy's variance predicts gold AUC? Spearman(whitened variance under the row's policy, "
              "gold AUC under the column's policy) [95% CI]:", "",
              "| variance under (row), gain under (column) | " + " | ".join(f"`{e['name']}`" for e in entries) + " |",
              "|---|" + "---|" * len(entries)]
    for pv in entries:
        cells = [fmt(next(r["spearman"] for r in across["variance_predicts_gain"]
                          if r["variance_under"] == pv["name"] and r["gain_under"] == pg["name"])) for pg in entries]
        parts.append(f"| `{pv['name']}` | " + " | ".join(cells) + " |")
    for t in across.get("teacher_transfer") or []:
        parts += ["", f"Teacher score chosen under `{t['fit_under']}` (seeds {t['fit_seeds']}: `{t['formula']}`), "
                      f"tested under `{t['tested_under']}` on seeds {t['test_seeds']}: Spearman with the gold AUC "
                      f"{fmt(t['held_out_spearman'])}."]
    parts += ["", _wall_time(report), ""]
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
             "policy on held-out prompts after RLOO minus before; AUC: average gold gain over the run; early gain: "
             "gold gain after the first fifth of the RLOO steps.", ""]
    if len(seeds) < 2:
        lines += [f"**{ONE_SEED}**", ""]
    lines += ["| RM | whitened variance | on-policy acc | off-policy acc | gold gain | proxy gain | gold AUC | "
              "early gain | what it is |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name in specs:
        m = s["per_rm"][name]
        lines.append(f"| `{name}` | " + " | ".join(fmt_over_seeds(m[k]) for k in METRICS)
                     + f" | {specs[name]['description']} |")
    lines += _grouped_lines(s["per_rm"], specs)
    lines += _ranking_lines(s) if len(specs) >= 3 else [
        "", f"No rank correlations across RMs: a ranking needs 3 RMs or more, this set has {len(specs)}."]
    lines += ["", "Checks (the paper's claims, measured here; PASS only when the 95% interval clears the threshold, "
              "MISS when it lies wholly on the wrong side):", ""]
    for c in report["checks"]:
        lines.append(f"- {_verdict(c)}: {c['claim']}. Measured: {c['measured']}.")
    lines += ["", "Plots: `gold_curves.png` (gold reward vs RLOO step, mean over seeds with a 95% t band), "
              "`variance_vs_gain.png`, `accuracy_vs_gain.png` (error bars: 95% intervals over seeds).", "", "Per run "
              "(whitened variance and on-policy accuracy with 95% bootstrap intervals over evaluation prompts):", "",
              "| RM | seed | whitened var | on-policy acc | off-policy acc | gold start | gold end | gold gain | "
              "proxy gain | gold AUC | early gain |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        cells = [fmt(r[f"{k}_ci"]) if r.get(f"{k}_ci") else f"{r[k]:.3f}"
                 for k in ("whitened_variance_mean", "on_policy_acc", "off_policy_acc")]
        cells += [f"{r[k]:.3f}"
                  for k in ("gold_start", "gold_end", "gold_gain", "proxy_gain", "gold_auc", "gold_early")]
        lines.append(f"| `{r['name']}` | {r['seed']} | " + " | ".join(cells) + " |")
    lines += ["", _wall_time(report), ""]
    return "\n".join(lines)


def _ranking_lines(s: dict[str, Any]) -> list[str]:
    """Spearman of each predictor with the gold AUC and gain across RMs, and which ranks best."""
    lines = ["", "Spearman correlation with the gold AUC and with the gold gain, across RMs (on per-RM means, 95% "
             "bootstrap interval resampling seeds jointly across RMs):", "",
             "| quantity | with gold AUC [95% CI] | with gold gain [95% CI] | per seed (AUC) |", "|---|---|---|---|"]
    auc = s["spearman_with_gold_auc"]
    for metric, c in s["spearman_with_gold_gain"].items():
        a = auc[metric]
        lines.append(f"| {c['label']} | {fmt(a['on_means_ci'])} | {fmt(c['on_means_ci'])} | "
                     + ", ".join(f"{v:.3f}" for v in a["per_seed"]) + " |")
    return lines + _predictor_lines(s)


def _grouped_lines(per_rm: dict[str, Any], specs: dict[str, Any]) -> list[str]:
    """A table of gold AUC and gain per group of prompts (e.g. the halves an uneven reward treats
    differently), when the runs have them."""
    groups = curve_groups(list(per_rm.values()))
    if not groups:
        return []
    lines = ["", "Per group of the held-out prompts (`PolicyEvaluation` groups), mean [95% t over seeds]:", "",
             "| RM | " + " | ".join(f"gold AUC `{g}` | gold gain `{g}`" for g in groups) + " |",
             "|---|" + "---|---|" * len(groups)]
    for name in specs:
        cells = [fmt_over_seeds(per_rm[name][f"gold_{k}_{g}"]) for g in groups for k in ("auc", "gain")]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return lines


def _half_widths(m: dict[str, Any]) -> Optional[list[list[float]]]:
    """Asymmetric error bar ``[[mean - lower], [upper - mean]]`` of a 95% interval (None if unbounded)."""
    lo, hi = m.get("lower", float("nan")), m.get("upper", float("nan"))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return [[m["mean"] - lo], [hi - m["mean"]]]


def _gold(point: dict[str, Any], group: Optional[str]) -> float:
    return point["gold_reward"] if group is None else point["gold_by_group"][group]


def plot(report: dict[str, Any], output_dir: str, suffix: str = "") -> list[str]:
    """``gold_curves.png`` (a panel for all held-out prompts, then one per group of them when the
    curves have groups; each RM's mean over seeds with a 95% t band; titled with the Theorem 1
    verdict when the report has it), ``variance_vs_gain.png``, ``accuracy_vs_gain.png`` (names +
    ``suffix``) of one policy's results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in report["reward_models"]]
    per_rm = report["summary"]["per_rm"]
    paths = [os.path.join(output_dir, f"{f}{suffix}.png")
             for f in ("gold_curves", "variance_vs_gain", "accuracy_vs_gain")]
    groups = [None, *sorted(set.intersection(*(set(r["curve"][0].get("gold_by_group", {})) for r in report["runs"])))]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups) + 2.5, 4.5), squeeze=False, sharey=True)
    for ax, group in zip(axes[0], groups):
        for name in names:
            curves = [r["curve"] for r in report["runs"] if r["name"] == name]
            steps = [p["step"] for p in curves[0]]
            bands = [t_interval([_gold(c[i], group) for c in curves]) for i in range(min(map(len, curves)))]
            xs = steps[:len(bands)]
            line, = ax.plot(xs, [b["estimate"] for b in bands], marker="o", markersize=3, label=name)
            if len(curves) > 1:  # 95% t band over seeds
                ax.fill_between(xs, [b["lower"] for b in bands], [b["upper"] for b in bands],
                                color=line.get_color(), alpha=0.15)
        ax.set_title("all held-out prompts" if group is None else f"prompts: {group}", fontsize=9)
        ax.set_xlabel("RLOO step")
    axes[0][0].set_ylabel("gold reward (held-out prompts)")
    axes[0][0].legend(fontsize=7)
    n = len(report["seeds"])
    theorem1 = next((c for c in report["checks"] if c["claim"].startswith("(Theorem 1)")), None)
    fig.suptitle(f"mean over {n} seed{'s' if n > 1 else ''}" + (" with 95% t band" if n > 1 else "")
                 + (f"; Theorem 1: {_verdict(theorem1)}, {_headline(theorem1)}" if theorem1 and n > 1 else ""),
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)
    for path, metrics in ((paths[1], ["whitened_variance_mean"]), (paths[2], ["on_policy_acc", "off_policy_acc"])):
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.5), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            for name in names:
                m = per_rm[name]
                ax.errorbar(m[metric]["mean"], m["gold_auc"]["mean"], xerr=_half_widths(m[metric]),
                            yerr=_half_widths(m["gold_auc"]), fmt="o", capsize=2)
                ax.annotate(name, (m[metric]["mean"], m["gold_auc"]["mean"]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
            rho = report["summary"]["spearman_with_gold_auc"][metric]["on_means"]
            ax.set_xlabel(f"{PREDICTORS[metric]} under the initial policy")
            ax.set_ylabel("gold AUC (average gold gain over the RLOO run)")
            ax.set_title(f"Spearman {rho:.2f}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return paths


def _predictor_lines(s: dict[str, Any]) -> list[str]:
    """Which measurement ranks the RMs' gold AUC best, and the teacher score's held-out test."""
    lines = []
    ranking = (s.get("predictors") or {}).get("ranking") or []
    if len(ranking) >= 2:
        best, diff = ranking[0], s["predictors"]["best_minus_next"]
        lines += ["", f"Best predictor of the gold AUC ranking: **{best['label']}** (Spearman "
                      f"{fmt(best['spearman'])}); minus the runner-up ({ranking[1]['label']}): {fmt(diff)} (same "
                      "bootstrap draws of the seeds); order: " + ", ".join(p["label"] for p in ranking) + "."]
    t = s.get("teacher")
    if t:
        lines += ["", f"Teacher score (no RLOO): `{t['formula']}`, chosen on seeds {t['fit_seeds']} (Spearman "
                      f"{t['fit_spearman']:.3f} there); on the held-out seeds {t['test_seeds']}: Spearman with the "
                      f"gold AUC {fmt(t['held_out_spearman'])} (95% bootstrap over the held-out seeds). It ranks "
                      "these RMs under this policy in this world; its weights are fit here, not a law."]
    return lines


def _headline(check: dict[str, Any]) -> str:
    """A check's main measurement: its ``headline`` when the claim gives one, all of ``measured`` for a
    check of several parts, else the first part of ``measured``."""
    return check.get("headline") or (check["measured"] if "parts" in check else check["measured"].split("; ")[0])


def findings(report: dict[str, Any], policy: Optional[str] = None) -> list[str]:
    """The checks of a report in plain words, one line each: the verdict, over how many seeds, the
    claim and its main measurement (with one seed, no measurement: it decides nothing). ``policy``: the
    section of that initial policy, in a report with several."""
    entries = report.get("policies") or []
    if policy is not None and policy not in [e["name"] for e in entries]:
        raise VarirmError(f"the report has no initial policy {policy!r}: {[e['name'] for e in entries]}")
    checks = next(e["checks"] for e in entries if e["name"] == policy) if policy else report["checks"]
    n = len(report["seeds"])
    if n < 2:
        return [f"INCONCLUSIVE, 1 seed: {c['claim']}" for c in checks]
    return [f"{_verdict(c)}, {n} seeds: {c['claim']}. Measured: {_headline(c)}." for c in checks]


def read_report(path: str) -> tuple[str, dict[str, Any]]:
    """A ``varirm verify`` report from its output directory or its ``report.json``: (file, content)."""
    file = os.path.join(path, "report.json") if os.path.isdir(path) else path
    try:
        with open(file) as f:
            return file, json.load(f)
    except OSError as e:
        raise VarirmError(f"{file}: cannot read the verification report ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise VarirmError(f"{file}: not a verification report (invalid JSON: {e})") from None


def read_findings(reports: list[str], policy: Optional[str] = None) -> str:
    """:func:`findings` of each verification (its output directory or ``report.json``), under a
    line naming the report, its reward models and seeds."""
    parts = []
    for path in reports:
        file, report = read_report(path)
        names = ", ".join(r["name"] for r in report["reward_models"])
        seeds = len(report["seeds"])
        parts += [f"{os.path.dirname(file) or '.'}: {names}; "
                  + (f"{seeds} seeds" if seeds > 1 else "1 seed (no spread over seeds: no verdict, nor how many "
                                                         "seeds would give one)")
                  + (f"; under {policy}" if policy else ""),
                  *(f"  {line}" for line in findings(report, policy))]
    return "\n".join(parts)


def write_report(report: dict[str, Any], output_dir: str) -> str:
    """``report.json``, ``report.md`` and the plots (per policy when there are several) into
    ``output_dir``; returns the path of ``report.md``."""
    atomic_write_text(os.path.join(output_dir, "report.json"), json.dumps(report, indent=2))
    atomic_write_text(os.path.join(output_dir, "report.md"), render_markdown(report))
    entries = report["policies"]
    for entry in entries:
        plot(_policy_view(report, entry), output_dir, suffix=f"_{entry['name']}" if len(entries) > 1 else "")
    return os.path.join(output_dir, "report.md")
