"""``varirm verify``: verify reward models by how fast RLOO against each raises the gold reward.

Razin et al. 2025 (arXiv 2503.15477) judge an RM as a teacher: train a policy against it and
watch the true (gold) reward. For every RM of a set and every seed this command

1. trains the RM (``varirm fit`` with a recipe and overrides) or takes a given one (a checkpoint,
   directory, Hub id or reward function such as the gold reward itself);
2. evaluates it under the initial policy with :func:`varirm.evaluate.evaluate`: whitened
   per-prompt reward variance, on-policy accuracy against gold, off-policy accuracy on test pairs;
3. runs RLOO from the initial policy against it (``varirm rloo``: same recipe, seed and budget for
   every RM; the RM's normalization is the shift/scale measured in step 2), with a
   :class:`varirm.rloo.PolicyEvaluation` callback that records the gold reward on held-out prompts;

then writes ``report.json``, ``report.md`` and plots into the output directory: per RM the mean
and spread over seeds of variance, accuracies, gold and proxy reward gain and area under the gold
curve; Spearman correlations of the gold gain with variance and with each accuracy; and checks of
the paper's claims. Data flow per (RM, seed): ``rms/<name>/seed<s>`` (checkpoint) ->
``eval/<name>/seed<s>/metrics.json`` -> ``rloo/<name>/seed<s>/policy_eval.json`` -> report.

Each finished stage leaves its output (``done.json`` written last); ``--resume true`` reuses them
after an interruption at any point: a half-done training prepare step resumes from its last
checkpoint, a half-done RM, evaluation or RLOO run is redone from its start with the same seed.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Union

import torch

from varirm.commands import run as run_command
from varirm.errors import ConfigError, VarirmError
from varirm.evaluate import evaluate
from varirm.files import atomic_write_text
from varirm.sampling import read_samples, resolve_device
from varirm.stats import RESAMPLES, fmt, fmt_over_seeds, interval, judge, paired, seeds_to_resolve, t_interval

METRICS = ["whitened_variance_mean", "on_policy_acc", "off_policy_acc", "gold_gain", "proxy_gain", "gold_auc"]
LIGHTNING_COMMANDS = ("fit", "sft", "rloo")  # training commands with a run directory and checkpoints
ACCURACIES = {"whitened_variance_mean": "whitened variance", "on_policy_acc": "on-policy accuracy",
              "off_policy_acc": "off-policy accuracy"}


@dataclass
class RewardModelSpec:
    """One reward model of the verification set.

    Args:
        name: Short name used in paths and the report.
        recipe: ``varirm fit`` recipe that trains it (with ``overrides``); or give ``reward``.
        overrides: Recipe values to change, dotted key -> value, e.g.
            ``{data.init_args.on_policy_fraction: 0.25}``.
        reward: An existing RM, not trained here: a ``.ckpt``, a directory, a Hub id, or the
            dotted path of a reward function ``(prompt, response) -> float``.
        description: One line for the report.
    """

    name: str
    recipe: Optional[str] = None
    overrides: dict = field(default_factory=dict)  # plain dict: jsonargparse would instantiate class_path values
    reward: Optional[str] = None
    description: str = ""


@dataclass
class PrepareStep:
    """A ``varirm`` command that builds an input of the verification when it is missing.

    Args:
        creates: The file the command writes; the command is skipped when it exists.
        run: The command's arguments after ``varirm``, e.g. ``[make-tiny-model, --output, DIR]``.
    """

    creates: str
    run: list[str]


def _flags(overrides: dict[str, Any]) -> list[str]:
    """``{a.b: 1, c: [x]}`` -> ``["--a.b", "1", "--c", '["x"]']`` (strings as they are)."""
    out = []
    for key, value in overrides.items():
        out += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (ties get their average rank), via torchmetrics. NaN when either
    side is constant or there are fewer than 3 points."""
    from torchmetrics.functional import spearman_corrcoef

    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return spearman_corrcoef(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)).item()


def curve_summary(curve: list[dict[str, float]]) -> dict[str, float]:
    """Gains from a :class:`varirm.rloo.PolicyEvaluation` curve: gold and normalized-proxy reward
    at the last point minus the first, and the area under the gold-gain curve divided by the
    number of steps (the average gain over the run; trapezoid rule)."""
    if len(curve) < 2:
        raise VarirmError("the RLOO evaluation curve has fewer than 2 points; raise trainer.max_steps")
    steps = [p["step"] for p in curve]
    gold = [p["gold_reward"] - curve[0]["gold_reward"] for p in curve]
    area = sum((steps[i + 1] - steps[i]) * (gold[i] + gold[i + 1]) / 2 for i in range(len(curve) - 1))
    return {"gold_start": curve[0]["gold_reward"], "gold_end": curve[-1]["gold_reward"], "gold_gain": gold[-1],
            "proxy_gain": curve[-1]["proxy_reward"] - curve[0]["proxy_reward"],
            "gold_auc": area / (steps[-1] - steps[0]),
            "steps": steps[-1]}


def _mean_std(values: list[float]) -> dict[str, float]:
    values = [v for v in values if v == v]
    if not values:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def _over_seeds(values: list[float]) -> dict[str, Any]:
    """Mean, std and the 95% t interval over seeds (``lower``/``upper``)."""
    ci = t_interval(values)
    return {**_mean_std(values), "lower": ci["lower"], "upper": ci["upper"], "n": ci["n"], "method": ci["method"]}


def _spearman_draws(rows: list[dict[str, Any]], names: list[str], metric: str, resamples: int = RESAMPLES,
                    seed: int = 0) -> tuple[float, list[float]]:
    """Spearman(per-RM mean of ``metric``, per-RM mean gold gain) across RMs, and its values on
    ``resamples`` bootstrap draws that resample seeds within each RM. The draws depend only on
    ``seed`` and the number of runs per RM, so two metrics' draws pair up."""
    by_rm = {n: [(r[metric], r["gold_gain"]) for r in rows if r["name"] == n] for n in names}
    g = torch.Generator().manual_seed(seed)

    def on_means(pick: dict[str, list[int]]) -> float:
        xs = [statistics.mean(by_rm[n][i][0] for i in pick[n]) for n in names]
        ys = [statistics.mean(by_rm[n][i][1] for i in pick[n]) for n in names]
        return spearman(xs, ys)

    estimate = on_means({n: list(range(len(by_rm[n]))) for n in names})
    if max(len(v) for v in by_rm.values()) < 2:
        return estimate, []
    return estimate, [on_means({n: torch.randint(len(by_rm[n]), (len(by_rm[n]),), generator=g).tolist() for n in names})
                      for _ in range(resamples)]


def _percentile(estimate: float, draws: list[float], n: int) -> dict[str, Any]:
    kept = torch.tensor([d for d in draws if d == d], dtype=torch.float64)
    if kept.numel() == 0:
        return interval(estimate, float("nan"), float("nan"), "bootstrap over seeds within each RM", n)
    lo, hi = torch.quantile(kept, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return interval(estimate, lo, hi, "bootstrap over seeds within each RM", n)


def spearman_interval(rows: list[dict[str, Any]], names: list[str], seeds: list[int], metric: str) -> dict[str, Any]:
    """Spearman(per-RM mean of ``metric``, per-RM mean gold gain) with a 95% bootstrap interval
    that resamples seeds within each RM."""
    return _percentile(*_spearman_draws(rows, names, metric), len(seeds))


def summarize(rows: list[dict[str, Any]], names: list[str], seeds: list[int]) -> dict[str, Any]:
    """Per-RM mean, std and 95% t interval over seeds; Spearman correlations of gold gain with
    variance and each accuracy, per seed (then mean/std) and on the per-RM means with a bootstrap
    interval (:func:`spearman_interval`)."""
    per_rm = {n: {m: _over_seeds([r[m] for r in rows if r["name"] == n]) for m in METRICS} for n in names}
    correlations: dict[str, Any] = {}
    for metric, label in ACCURACIES.items():
        per_seed = []
        for seed in seeds:
            chosen = [r for r in rows if r["seed"] == seed]
            per_seed.append(spearman([r[metric] for r in chosen], [r["gold_gain"] for r in chosen]))
        ci = spearman_interval(rows, names, seeds, metric)
        correlations[metric] = {"label": label, "per_seed": per_seed, **_mean_std(per_seed), "on_means": ci["estimate"],
                                "on_means_ci": ci}
    return {"per_rm": per_rm, "spearman_with_gold_gain": correlations}


def _gains(rows: list[dict[str, Any]], name: str, seeds: list[int]) -> list[float]:
    by_seed = {r["seed"]: r["gold_gain"] for r in rows if r["name"] == name}
    return [by_seed[s] for s in seeds]


def checks(summary: dict[str, Any], low_variance: Optional[str], compare: Optional[list[str]],
           trained: list[str], rows: list[dict[str, Any]], seeds: list[int],
           on_policy_rm: Optional[str] = None) -> list[dict[str, Any]]:
    """The paper's claims as measured here, each PASS / MISS / INCONCLUSIVE by its 95% interval
    (:func:`varirm.stats.judge`), with the intervals and, when inconclusive, the seeds that would
    resolve it at the observed spread."""
    out = []
    corr = summary["spearman_with_gold_gain"]
    var_ci, off_ci = corr["whitened_variance_mean"]["on_means_ci"], corr["off_policy_acc"]["on_means_ci"]
    level, above = judge(var_ci, 0.8), judge(_difference_ci(summary, rows, seeds), 0.0)
    verdict = _all_of([level, above])
    out.append({"claim": "Spearman(whitened variance, gold gain) >= 0.8 and above "
                         "Spearman(off-policy accuracy, gold gain)",
                "measured": f"variance {fmt(var_ci)} vs off-policy accuracy {fmt(off_ci)} (on per-RM means, 95% "
                            "bootstrap over seeds within each RM)",
                "intervals": {"variance": var_ci, "off_policy_accuracy": off_ci}, **verdict})
    per_rm = summary["per_rm"]
    if low_variance and low_variance in per_rm:
        low = per_rm[low_variance]
        others = [n for n in trained if n in per_rm]
        diffs = {n: paired(_gains(rows, low_variance, seeds), _gains(rows, n, seeds))["difference"] for n in others}
        verdict = _all_of([judge(ci, 0.0) for ci in diffs.values()]) if others else {"verdict": "MISS"}
        out.append({"claim": f"the perfectly accurate, low-variance RM `{low_variance}` gains less gold reward than "
                             "the less accurate, higher-variance trained RMs",
                    "measured": f"gain {low['gold_gain']['mean']:.3f} "
                                f"(on-policy acc {low['on_policy_acc']['mean']:.3f}, "
                                f"variance {low['whitened_variance_mean']['mean']:.3f}); paired gain difference "
                                f"(trained - {low_variance}, t over seeds): "
                                + ", ".join(f"{n} {fmt(ci)}" for n, ci in diffs.items()),
                    "intervals": diffs, **verdict})
    if compare:
        plain, *regularized = compare
        for reg in regularized:
            out.append(regularizer_check(rows, seeds, plain, reg, on_policy_rm))
    return out


def _per_seed(rows: list[dict[str, Any]], name: str, seeds: list[int], metric: str) -> list[float]:
    by_seed = {r["seed"]: r[metric] for r in rows if r["name"] == name}
    return [by_seed[s] for s in seeds]


GAIN_RATIO, ACC_TOLERANCE = 1.2, 0.02


def regularizer_check(rows: list[dict[str, Any]], seeds: list[int], plain: str, reg: str,
                      on_policy_rm: Optional[str] = None) -> dict[str, Any]:
    """Does BT + variance regularizer (``reg``) beat plain BT (``plain``, the same pairs), paired by
    seed? Three parts, each judged by its 95% interval: (a) whitened variance under the policy
    rises (difference above 0; with ``on_policy_rm``, also the share of the gap to that RM's
    variance that is closed); (b) on-policy accuracy stays within 2 points (difference above
    -0.02); (c) gold gain ratio >= 1.2 with the interval excluding 1.0 (MISS when the interval
    lies wholly below 1.2)."""
    var = paired(_per_seed(rows, plain, seeds, "whitened_variance_mean"),
                 _per_seed(rows, reg, seeds, "whitened_variance_mean"))
    acc = paired(_per_seed(rows, plain, seeds, "on_policy_acc"), _per_seed(rows, reg, seeds, "on_policy_acc"))
    gain = paired(_gains(rows, plain, seeds), _gains(rows, reg, seeds))
    ratio = gain["ratio"]
    if ratio["estimate"] >= GAIN_RATIO and ratio["lower"] > 1.0:
        gain_verdict: dict[str, Any] = {"verdict": "PASS"}
    elif ratio["upper"] < GAIN_RATIO:
        gain_verdict = {"verdict": "MISS"}
    else:
        gain_verdict = {"verdict": "INCONCLUSIVE", "seeds_needed": seeds_to_resolve(ratio, GAIN_RATIO)}
    parts = {"variance": judge(var["difference"], 0.0), "on_policy_acc": judge(acc["difference"], -ACC_TOLERANCE),
             "gold_gain": gain_verdict}
    closed = ""
    if on_policy_rm is not None:
        level = {n: sum(_per_seed(rows, n, seeds, "whitened_variance_mean")) / len(seeds)
                 for n in (plain, reg, on_policy_rm)}
        gap = level[on_policy_rm] - level[plain]
        if gap != 0:
            closed = (f" ({(level[reg] - level[plain]) / gap:.0%} of the gap to "
                      f"`{on_policy_rm}`'s {level[on_policy_rm]:.3f})")
    return {"claim": f"the variance-regularized RM `{reg}` beats plain BT `{plain}` at equal data: (a) higher whitened "
                     f"variance, (b) on-policy accuracy within {ACC_TOLERANCE:.2f}, (c) gold gain >= {GAIN_RATIO}x",
            "measured": f"(a) variance difference {fmt(var['difference'])}{closed}: {parts['variance']['verdict']}; "
                        f"(b) on-policy accuracy difference {fmt(acc['difference'])}: "
                        f"{parts['on_policy_acc']['verdict']}; "
                        f"(c) gold gain ratio {fmt(ratio, 2)} (paired bootstrap over seeds), difference "
                        f"{fmt(gain['difference'])} (t over seeds): {gain_verdict['verdict']}",
            "intervals": {"variance": var, "on_policy_acc": acc, **gain}, "parts": parts,
            **_all_of(list(parts.values()))}


def _difference_ci(summary: dict[str, Any], rows: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Spearman(variance, gain) - Spearman(off-policy accuracy, gain) with a 95% interval from the
    same (paired) bootstrap draws."""
    names = list(summary["per_rm"])
    a, draws_a = _spearman_draws(rows, names, "whitened_variance_mean")
    b, draws_b = _spearman_draws(rows, names, "off_policy_acc")
    return _percentile(a - b, [x - y for x, y in zip(draws_a, draws_b)], len(seeds))


def _all_of(verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    """A claim made of several parts: MISS if any part misses, PASS if all pass, else INCONCLUSIVE
    (seeds needed: the most any part needs)."""
    kinds = [v["verdict"] for v in verdicts]
    if "MISS" in kinds:
        return {"verdict": "MISS"}
    if all(k == "PASS" for k in kinds):
        return {"verdict": "PASS"}
    needed = [v.get("seeds_needed") for v in verdicts if v["verdict"] == "INCONCLUSIVE"]
    return {"verdict": "INCONCLUSIVE", "seeds_needed": None if None in needed else max(needed)}


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


def across_policies(runs: list[dict[str, Any]], names: list[str], policies: list[str],
                    seeds: list[int]) -> dict[str, Any]:
    """Razin et al.'s Theorem 3 measured: for each pair of policies, Spearman between the RMs' mean
    gold gains under each (the same ranking gives 1; PASS when the whole interval is below 1,
    MISS when every resample keeps the ranking); and for each (variance policy, gain policy),
    Spearman(whitened variance under one, gold gain under the other)."""
    by = {(r["policy"], r["name"], r["seed"]): r for r in runs}

    def spearman_ci(x_policy: str, x_key: str, y_policy: str) -> dict[str, Any]:
        rows = [{"name": n, "seed": s, "x": by[(x_policy, n, s)][x_key], "gold_gain": by[(y_policy, n, s)]["gold_gain"]}
                for n in names for s in seeds]
        return _percentile(*_spearman_draws(rows, names, "x"), len(seeds))

    agreement = []
    for i, a in enumerate(policies):
        for b in policies[i + 1:]:
            ci = spearman_ci(a, "gold_gain", b)
            # torchmetrics gives 0.99999851 for identical rankings
            verdict = {"verdict": "MISS"} if ci["lower"] >= 1.0 - 1e-4 else judge(ci, 1.0 - 1e-4, above=False)
            agreement.append({"a": a, "b": b, "spearman": ci, **verdict})
    predicts = [{"variance_under": pv, "gain_under": pg, "spearman": spearman_ci(pv, "whitened_variance_mean", pg)}
                for pv in policies for pg in policies]
    return {"rank_agreement": agreement, "variance_predicts_gain": predicts}


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


def _done(path: str) -> bool:
    return os.path.exists(os.path.join(path, "done.json"))


def _mark_done(path: str, info: dict[str, Any]) -> None:
    atomic_write_text(os.path.join(path, "done.json"), json.dumps(info, indent=2))


def verify(
    reward_models: list[RewardModelSpec],
    rloo_recipe: str,
    policy: Union[str, list[str]],
    eval_samples: Union[str, list[str]],
    gold: str,
    output_dir: str = "runs/verify",
    test_pairs: Optional[str] = None,
    test_split: str = "test",
    seeds: Optional[list[int]] = None,
    rloo_overrides: Optional[dict] = None,  # plain dict: class_path values stay recipe text
    prepare: Optional[list[PrepareStep]] = None,
    compare: Optional[list[str]] = None,
    low_variance: Optional[str] = None,
    on_policy_rm: Optional[str] = None,
    max_length: int = 1024,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    command: Optional[str] = None,
) -> str:
    """Train (or take) a set of RMs, evaluate each under the initial policy, run RLOO from that
    policy against each with the same seed and budget, and write the verification report.

    Args:
        reward_models: The RMs to verify (see :class:`RewardModelSpec`).
        rloo_recipe: ``varirm rloo`` recipe shared by every run; it must have a
            ``varirm.rloo.PolicyEvaluation`` callback (the gold curve) and ``gold`` is set here.
        policy: The initial policy (causal LM directory or Hub id) RLOO starts from, or a list of
            them (Razin et al.'s Theorem 3: the same RM can teach one policy well and another
            badly): every RM is then evaluated under, and RLOO run from, each policy, with runs
            under ``eval/<policy name>/`` and ``rloo/<policy name>/`` (the name is the path's last part).
        eval_samples: Samples file of that policy (``varirm sample``, k >= 2) for the variance and
            on-policy accuracy of each RM; a list, one per policy, when ``policy`` is a list.
        gold: Gold reward: dotted path of a function or an RM directory / Hub id.
        output_dir: Report directory (with every run inside).
        test_pairs: Preference test set for off-policy accuracy.
        test_split: Split of ``test_pairs`` when it is a Hub dataset id.
        seeds: Seeds (default ``[0]``): each RM is trained and RLOO is run once per seed.
        rloo_overrides: ``varirm rloo`` recipe values to change for every run (dotted keys).
        prepare: Commands that build missing inputs, run first, in order.
        compare: ``[plain, regularized, ...]``: names of plain BT and of one or more BT + variance
            regularizer variants trained on the same pairs, one check per variant
            (:func:`regularizer_check`).
        on_policy_rm: Name of the RM trained on on-policy pairs whose variance level the
            regularizer aims at (its check reports the share of the gap closed).
        low_variance: Name of the perfectly accurate, low-variance RM, for its check.
        max_length: Longest scored prompt + response in evaluation.
        device: ``auto``, ``cpu`` or ``cuda`` for evaluation.
        resume: Reuse the stages an interrupted verification of this directory finished.
        overwrite: Delete an existing output directory first.
        command: How this verification was run, for the report (the CLI sets it).
    """
    seeds, rloo_overrides, prepare = seeds or [0], rloo_overrides or {}, prepare or []
    names = [spec.name for spec in reward_models]
    if len(set(names)) != len(names):
        raise ConfigError(f"reward model names must be unique: {names}")
    for spec in reward_models:
        if (spec.recipe is None) == (spec.reward is None):
            raise ConfigError(f"reward model {spec.name!r}: give exactly one of recipe (to train it) or reward")
    for ref, what in ([(n, "compare") for n in compare or []]
                      + [(low_variance, "low_variance"), (on_policy_rm, "on_policy_rm")]):
        if ref is not None and ref not in names:
            raise ConfigError(f"{what} names {ref!r}, which is not among the reward models {names}")
    if compare is not None and len(compare) < 2:
        raise ConfigError(f"compare takes [plain, regularized, ...], got {compare}")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not resume:
        if not overwrite:
            raise VarirmError(f"{output_dir} already exists; pass --overwrite true to replace it or --resume true to "
                              "finish an interrupted verification")
        shutil.rmtree(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    start = time.time()
    for step in prepare:
        if not os.path.exists(step.creates):
            run = list(step.run)
            if run and run[0] in LIGHTNING_COMMANDS and "--ckpt_path" not in run:
                run += ["--ckpt_path", "last"]  # an attempt killed earlier resumes from its last checkpoint
            print(f"verify: prepare {step.creates}: varirm {' '.join(step.run[:1])} ...", flush=True)
            run_command(run, echo=False)
    policies = [policy] if isinstance(policy, str) else list(policy)
    samples_files = [eval_samples] if isinstance(eval_samples, str) else list(eval_samples)
    if len(policies) != len(samples_files) or not policies:
        raise ConfigError(f"give one eval_samples file per policy: {len(policies)} policies, "
                          f"{len(samples_files)} files")
    policy_names = [os.path.basename(p.rstrip("/")) for p in policies]
    if len(set(policy_names)) != len(policy_names):
        raise ConfigError(f"policies need distinct last path parts (their names in the report): {policy_names}")
    multi = len(policies) > 1
    eval_rows = [read_samples(f) for f in samples_files]
    device = resolve_device(device)
    quiet = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    runs, timings = [], {}
    for seed in seeds:
        for spec in reward_models:
            rm_dir = os.path.join(output_dir, "rms", spec.name, f"seed{seed}")
            t0 = time.time()
            rm = spec.reward
            if spec.recipe is not None:
                rm = os.path.join(rm_dir, "checkpoints", "last.ckpt")
                if not _done(rm_dir):
                    shutil.rmtree(rm_dir, ignore_errors=True)
                    run_command(["fit", "--config", spec.recipe, *_flags(spec.overrides), "--seed_everything",
                                 str(seed), "--data.init_args.seed", str(seed), "--trainer.default_root_dir", rm_dir,
                                 *quiet])
                    _mark_done(rm_dir, {"checkpoint": rm})
            train_s = time.time() - t0
            for pname, ppath, samples_file in zip(policy_names, policies, samples_files):
                key = f"{pname}/{spec.name}/seed{seed}" if multi else f"{spec.name}/seed{seed}"
                eval_dir, rloo_dir = (os.path.join(output_dir, part, *([pname] if multi else []), spec.name,
                                                   f"seed{seed}")
                                      for part in ("eval", "rloo"))
                t1 = time.time()
                if _done(eval_dir):
                    with open(os.path.join(eval_dir, "metrics.json")) as f:
                        metrics = json.load(f)
                else:
                    metrics = evaluate(rm, eval_dir, samples=samples_file, gold=gold, pairs=test_pairs,
                                       pairs_split=test_split, max_length=max_length, device=device, plots=False,
                                       overwrite=True)
                    _mark_done(eval_dir, {"rm": rm})
                t2 = time.time()
                if not _done(rloo_dir):
                    shutil.rmtree(rloo_dir, ignore_errors=True)
                    run_command(["rloo", "--config", rloo_recipe, *_flags(rloo_overrides),
                                 "--model.init_args.policy_name_or_path", ppath, "--model.init_args.reward_model", rm,
                                 "--model.init_args.gold", gold,
                                 "--model.init_args.reward_shift", str(metrics["shift"]),
                                 "--model.init_args.reward_scale", str(metrics["scale"]), "--model.init_args.seed",
                                 str(seed), "--seed_everything", str(seed), "--data.init_args.seed", str(seed),
                                 "--trainer.default_root_dir", rloo_dir, *quiet])
                    if not os.path.exists(os.path.join(rloo_dir, "policy_eval.json")):
                        raise ConfigError(f"{rloo_recipe}: no policy_eval.json was written; the recipe needs a "
                                          "varirm.rloo.PolicyEvaluation callback under trainer.callbacks")
                    _mark_done(rloo_dir, {"rm": rm})
                with open(os.path.join(rloo_dir, "policy_eval.json")) as f:
                    curve = json.load(f)["curve"]
                timings[key] = {"train_rm_s": round(train_s, 1), "evaluate_s": round(t2 - t1, 1),
                                "rloo_s": round(time.time() - t2, 1)}
                runs.append({"name": spec.name, "seed": seed, "policy": pname, "rm": rm, "shift": metrics["shift"],
                             "scale": metrics["scale"], **{k: metrics.get(k, float("nan")) for k in METRICS[:3]},
                             **{f"{k}_ci": metrics.get(f"{k}_ci") for k in METRICS[:3]}, **curve_summary(curve),
                             "curve": curve})
    trained = [s.name for s in reward_models if s.recipe is not None]
    per_policy = []
    for pname, ppath, samples_file, rows in zip(policy_names, policies, samples_files, eval_rows):
        mine = [r for r in runs if r["policy"] == pname]
        summary = summarize(mine, names, seeds)
        per_policy.append({"name": pname, "policy": ppath, "eval_samples": samples_file, "eval_prompts": len(rows),
                           "eval_k": len(rows[0]["responses"]), "summary": summary,
                           "checks": checks(summary, low_variance, compare, trained, mine, seeds, on_policy_rm)})
    first = per_policy[0]
    report = {
        "command": command or "varirm.verify.verify(...)", "policy": first["policy"], "gold": gold,
        "eval_samples": first["eval_samples"], "eval_prompts": first["eval_prompts"], "eval_k": first["eval_k"],
        "test_pairs": test_pairs, "rloo_recipe": rloo_recipe, "rloo_overrides": rloo_overrides,
        "rloo_steps": runs[0]["steps"], "seeds": seeds, "reward_models": [asdict(s) for s in reward_models],
        "compare": compare, "low_variance": low_variance, "runs": runs, "summary": first["summary"],
        "checks": first["checks"], "policies": per_policy,
        "across_policies": across_policies(runs, names, policy_names, seeds) if multi else None,
        "timings": timings, "seconds": time.time() - start, "device": device}
    atomic_write_text(os.path.join(output_dir, "report.json"), json.dumps(report, indent=2))
    atomic_write_text(os.path.join(output_dir, "report.md"), render_markdown(report))
    for entry in per_policy:
        plot(_policy_view(report, entry), output_dir, suffix=f"_{entry['name']}" if multi else "")
    print(render_markdown(report))
    return os.path.join(output_dir, "report.md")
