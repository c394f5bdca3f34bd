"""The paper's claims (Razin et al. 2025), each a small function that measures one claim on the
verification's runs and returns its verdict from :func:`varirm.stats.judge`: PASS only when the 95%
interval clears the claim's threshold, MISS when it lies wholly on the wrong side, otherwise
INCONCLUSIVE with the seeds that would resolve it at the observed spread.

- :func:`variance_predicts_gain`: Spearman(whitened variance, gold gain) >= 0.8 and above
  Spearman(off-policy accuracy, gold gain).
- :func:`low_variance_teaches_slower`: a perfectly accurate, low-variance RM gains less gold reward.
- :func:`regularizer_beats_plain`: BT + variance regularizer beats plain BT at equal data.
- :func:`across_policies`: Theorem 3, the same RMs ranked under two initial policies.

A run row (one per RM, seed and policy) holds ``name``, ``seed``, ``whitened_variance_mean``,
``on_policy_acc``, ``off_policy_acc`` and ``gold_gain`` (see :mod:`varirm.verify`).
"""

from __future__ import annotations

from typing import Any, Optional

from varirm.stats import all_of, fmt, judge, paired, per_seed, percentile_interval, seeds_to_resolve, spearman_draws

Rows = list[dict[str, Any]]
GAIN_RATIO = 1.2  # the regularizer's gold gain over plain BT
ACC_TOLERANCE = 0.02  # the on-policy accuracy it may lose


def checks(summary: dict[str, Any], low_variance: Optional[str], compare: Optional[list[str]],
           trained: list[str], rows: Rows, seeds: list[int],
           on_policy_rm: Optional[str] = None) -> list[dict[str, Any]]:
    """Every claim that the verification's set of RMs can test, in order."""
    out = [variance_predicts_gain(summary, rows, seeds)]
    if low_variance and low_variance in summary["per_rm"]:
        out.append(low_variance_teaches_slower(summary, rows, seeds, low_variance, trained))
    if compare:
        plain, *regularized = compare
        out += [regularizer_beats_plain(rows, seeds, plain, reg, on_policy_rm) for reg in regularized]
    return out


def variance_predicts_gain(summary: dict[str, Any], rows: Rows, seeds: list[int]) -> dict[str, Any]:
    """Spearman(whitened variance, gold gain) across RMs is at least 0.8 and above Spearman(off-policy
    accuracy, gold gain) (both on per-RM means; the difference from paired bootstrap draws)."""
    corr = summary["spearman_with_gold_gain"]
    var_ci, off_ci = corr["whitened_variance_mean"]["on_means_ci"], corr["off_policy_acc"]["on_means_ci"]
    verdict = all_of([judge(var_ci, 0.8), judge(_difference_ci(summary, rows, seeds), 0.0)])
    return {"claim": "Spearman(whitened variance, gold gain) >= 0.8 and above Spearman(off-policy accuracy, gold gain)",
            "measured": f"variance {fmt(var_ci)} vs off-policy accuracy {fmt(off_ci)} (on per-RM means, 95% "
                        "bootstrap over seeds within each RM)",
            "intervals": {"variance": var_ci, "off_policy_accuracy": off_ci}, **verdict}


def low_variance_teaches_slower(summary: dict[str, Any], rows: Rows, seeds: list[int], low_variance: str,
                                trained: list[str]) -> dict[str, Any]:
    """The perfectly accurate, low-variance RM gains less gold reward than every trained RM (paired
    difference of gains over seeds above 0 for each)."""
    low = summary["per_rm"][low_variance]
    others = [n for n in trained if n in summary["per_rm"]]
    gains = per_seed(rows, low_variance, seeds, "gold_gain")
    diffs = {n: paired(gains, per_seed(rows, n, seeds, "gold_gain"))["difference"] for n in others}
    verdict = all_of([judge(ci, 0.0) for ci in diffs.values()]) if others else {"verdict": "MISS"}
    return {"claim": f"the perfectly accurate, low-variance RM `{low_variance}` gains less gold reward than "
                     "the less accurate, higher-variance trained RMs",
            "measured": f"gain {low['gold_gain']['mean']:.3f} (on-policy acc {low['on_policy_acc']['mean']:.3f}, "
                        f"variance {low['whitened_variance_mean']['mean']:.3f}); paired gain difference "
                        f"(trained - {low_variance}, t over seeds): "
                        + ", ".join(f"{n} {fmt(ci)}" for n, ci in diffs.items()),
            "intervals": diffs, **verdict}


def gain_ratio_verdict(ratio: dict[str, Any], target: float = GAIN_RATIO) -> dict[str, Any]:
    """A gain ratio's verdict: PASS when its estimate reaches ``target`` and its interval excludes
    1.0 (:func:`judge` against 1: the regularized RM gains more at all), MISS when the interval
    lies wholly below ``target`` (:func:`judge` against ``target``), otherwise INCONCLUSIVE with
    the seeds that would resolve it against ``target``."""
    if ratio["estimate"] >= target and judge(ratio, 1.0)["verdict"] == "PASS":
        return {"verdict": "PASS"}
    if judge(ratio, target)["verdict"] == "MISS":
        return {"verdict": "MISS"}
    return {"verdict": "INCONCLUSIVE", "seeds_needed": seeds_to_resolve(ratio, target)}


def regularizer_beats_plain(rows: Rows, seeds: list[int], plain: str, reg: str,
                            on_policy_rm: Optional[str] = None) -> dict[str, Any]:
    """Does BT + variance regularizer (``reg``) beat plain BT (``plain``, the same pairs), paired by
    seed? Three parts, each judged by its 95% interval: (a) whitened variance under the policy
    rises (difference above 0; with ``on_policy_rm``, also the share of the gap to that RM's
    variance that is closed); (b) on-policy accuracy stays within 2 points (difference above
    -0.02); (c) gold gain ratio >= 1.2 with the interval excluding 1.0 (:func:`gain_ratio_verdict`)."""
    var, acc, gain = (paired(per_seed(rows, plain, seeds, m), per_seed(rows, reg, seeds, m))
                      for m in ("whitened_variance_mean", "on_policy_acc", "gold_gain"))
    ratio = gain["ratio"]
    parts = {"variance": judge(var["difference"], 0.0), "on_policy_acc": judge(acc["difference"], -ACC_TOLERANCE),
             "gold_gain": gain_ratio_verdict(ratio)}
    closed = ""
    if on_policy_rm is not None:
        level = {n: sum(per_seed(rows, n, seeds, "whitened_variance_mean")) / len(seeds)
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
                        f"{fmt(gain['difference'])} (t over seeds): {parts['gold_gain']['verdict']}",
            "intervals": {"variance": var, "on_policy_acc": acc, **gain}, "parts": parts,
            **all_of(list(parts.values()))}


def _difference_ci(summary: dict[str, Any], rows: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Spearman(variance, gain) - Spearman(off-policy accuracy, gain) with a 95% interval from the
    same (paired) bootstrap draws."""
    names = list(summary["per_rm"])
    a, draws_a = spearman_draws(rows, names, "whitened_variance_mean")
    b, draws_b = spearman_draws(rows, names, "off_policy_acc")
    return percentile_interval(a - b, [x - y for x, y in zip(draws_a, draws_b)], len(seeds))


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
        return percentile_interval(*spearman_draws(rows, names, "x"), len(seeds))

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
