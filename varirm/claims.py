"""The paper's claims (Razin et al. 2025), each a small function that measures one claim on the
verification's runs and returns its verdict from :func:`varirm.stats.judge`: PASS only when the 95%
interval clears the claim's threshold, MISS when it lies wholly on the wrong side, otherwise
INCONCLUSIVE with the seeds that would resolve it at the observed spread.

The outcome is the area under the gold curve (``gold_auc``, the average gold gain over the run),
which keeps telling RMs apart after the curves saturate; the early gain is reported beside it.

- :func:`low_variance_gains_less` (Theorem 1): the perfectly accurate, low-variance RM gains less
  than the gold reward itself.
- :func:`less_accurate_gains_more` (Theorem 2): a less accurate RM with higher variance (named in
  the recipe before the runs) gains more than the perfectly accurate, low-variance RM.
- :func:`variance_predicts_gain`: Spearman(whitened variance, gold AUC) across RMs is above 0 and
  above Spearman(off-policy accuracy, gold AUC).
- :func:`regularizer_beats_plain`: BT + variance regularizer beats plain BT at equal data.
- :func:`objective_beats_pairs`: a labelled group objective beats plain BT on the same labelled
  responses turned into pairs (one label budget).
- :func:`across_policies` (Theorem 3): the RMs' ranking under two initial policies, against the
  agreement of two halves of the seeds under one policy (seed noise alone).

A run row (one per RM, seed and policy) holds ``name``, ``seed``, ``whitened_variance_mean``,
``on_policy_acc``, ``off_policy_acc``, ``gold_gain``, ``gold_auc`` and ``gold_early`` (see
:mod:`varirm.verify`).
"""

from __future__ import annotations

import statistics
from typing import Any, Optional

import torch

from varirm.report import curve_groups
from varirm.stats import (
    RESAMPLES,
    all_of,
    fmt,
    judge,
    paired,
    per_seed,
    percentile_interval,
    seeds_to_resolve,
    spearman,
    spearman_draws,
    versus_baseline,
)

Rows = list[dict[str, Any]]
OUTCOME = "gold_auc"  # what the claims compare: the average gold gain over the run
GAIN_RATIO = 1.2  # the regularizer's gold AUC over plain BT
ACC_TOLERANCE = 0.02  # the on-policy accuracy it may lose
THM1_TARGET = 0.8  # the project's target for Theorem 1: the low-variance RM's AUC at most 0.8x gold's


def checks(summary: dict[str, Any], low_variance: Optional[str], compare: Optional[list[str]],
           trained: list[str], rows: Rows, seeds: list[int], on_policy_rm: Optional[str] = None,
           reference: Optional[str] = None, budgets: Optional[list[list[str]]] = None,
           off_policy_rm: Optional[str] = None) -> list[dict[str, Any]]:
    """Every claim that the verification's set of RMs can test, in order (the variance ranking only
    with 3 RMs or more: Spearman over two is undefined)."""
    per_rm = summary["per_rm"]
    out = [variance_predicts_gain(summary, rows, seeds)] if len(per_rm) >= 3 else []  # a rank needs 3 RMs
    if low_variance in per_rm and reference in per_rm:
        out.append(low_variance_gains_less(rows, seeds, low_variance, reference))
    if low_variance in per_rm and on_policy_rm in per_rm:
        out.append(less_accurate_gains_more(summary, rows, seeds, low_variance, on_policy_rm, trained))
    if compare:
        plain, *regularized = compare
        out += [regularizer_beats_plain(rows, seeds, plain, reg, on_policy_rm) for reg in regularized]
    for plain, *objectives in budgets or []:
        out += [objective_beats_pairs(rows, seeds, plain, objective) for objective in objectives]
    if off_policy_rm in per_rm and on_policy_rm in per_rm:
        out.append(on_policy_beats_off_policy(rows, seeds, off_policy_rm, on_policy_rm))
    return out


def _comparison_text(c: dict[str, Any], a: str, b: str) -> str:
    what = f"`{b}` / `{a}`" if c["kind"] == "ratio" else f"`{b}` - `{a}`"
    return f"{what} {fmt(c, 3)} ({c['method']}, {c['n']} seeds)"


def low_variance_gains_less(rows: Rows, seeds: list[int], low_variance: str, reference: str) -> dict[str, Any]:
    """Theorem 1: the perfectly accurate, low-variance RM gains less gold than the gold reward: the
    paired ratio of gold AUCs (low / reference; the difference when the reference's AUC is not
    surely positive) lies below 1 (below 0). Early gains and, when the curves have them, each half
    of the prompts' AUC are reported with it."""
    cmp = versus_baseline(per_seed(rows, reference, seeds, OUTCOME), per_seed(rows, low_variance, seeds, OUTCOME))
    early = versus_baseline(per_seed(rows, reference, seeds, "gold_early"),
                            per_seed(rows, low_variance, seeds, "gold_early"))
    halves = curve_groups(rows)
    per_half = [f"{h}: " + _comparison_text(versus_baseline(per_seed(rows, reference, seeds, f"gold_auc_{h}"),
                                                            per_seed(rows, low_variance, seeds, f"gold_auc_{h}")),
                                            reference, low_variance) for h in halves]
    target = (f"; the target (<= {THM1_TARGET}x) is {'met' if cmp['estimate'] <= THM1_TARGET else 'not met'}"
              if cmp["kind"] == "ratio" else "")
    return {"claim": f"(Theorem 1) the perfectly accurate, low-variance RM `{low_variance}` gains less gold reward "
                     f"(AUC) than `{reference}`",
            "measured": f"gold AUC {_comparison_text(cmp, reference, low_variance)}{target}; early gain "
                        f"{_comparison_text(early, reference, low_variance)}"
                        + (f"; AUC per half of the prompts: {'; '.join(per_half)}" if per_half else ""),
            "intervals": {"auc": cmp, "early": early}, **judge(cmp, cmp["neutral"], above=False)}


def less_accurate_gains_more(summary: dict[str, Any], rows: Rows, seeds: list[int], low_variance: str,
                             candidate: str, trained: list[str]) -> dict[str, Any]:
    """Theorem 2: a less accurate RM with higher variance teaches better than the perfectly
    accurate, low-variance one. The RM tested is ``candidate``, named in the recipe before the
    runs (one pre-chosen comparison, no multiplicity); it must be less accurate on-policy and have
    a higher whitened variance than ``low_variance`` (measured before RLOO; otherwise the claim
    is not tested here: INCONCLUSIVE). PASS when the paired difference of gold AUCs (candidate -
    low) lies above 0. The other trained RMs' differences are listed for information (95% each,
    no correction for looking at several)."""
    per_rm = summary["per_rm"]
    acc, var = ({n: per_rm[n][m]["mean"] for n in (low_variance, candidate)}
                for m in ("on_policy_acc", "whitened_variance_mean"))
    low = per_seed(rows, low_variance, seeds, OUTCOME)
    diff = paired(low, per_seed(rows, candidate, seeds, OUTCOME))["difference"]
    others = [f"`{n}` {fmt(paired(low, per_seed(rows, n, seeds, OUTCOME))['difference'])}"
              for n in trained if n != candidate and n in per_rm]
    eligible = acc[candidate] < acc[low_variance] and var[candidate] > var[low_variance]
    verdict = judge(diff, 0.0) if eligible else {"verdict": "INCONCLUSIVE", "seeds_needed": None}
    return {"claim": f"(Theorem 2) `{candidate}`, less accurate with higher variance, gains more gold reward (AUC) "
                     f"than the perfectly accurate, low-variance `{low_variance}`",
            "measured": f"on-policy accuracy {acc[candidate]:.3f} vs {acc[low_variance]:.3f}, variance "
                        f"{var[candidate]:.3f} vs {var[low_variance]:.3f}"
                        + ("" if eligible else " (not less accurate with higher variance: not tested)")
                        + f"; gold AUC difference {fmt(diff)} (t over {len(seeds)} seeds)"
                        + (f"; the other trained RMs - `{low_variance}`: {', '.join(others)}" if others else ""),
            "headline": f"gold AUC `{candidate}` - `{low_variance}` {fmt(diff)} (t over {len(seeds)} seeds)",
            "intervals": {"difference": diff}, **verdict}


def variance_predicts_gain(summary: dict[str, Any], rows: Rows, seeds: list[int]) -> dict[str, Any]:
    """Spearman(whitened variance, gold AUC) across RMs is above 0 and above Spearman(off-policy
    accuracy, gold AUC) (on per-RM means; intervals from bootstrap draws of the seeds, joint
    across RMs, the difference from the same draws)."""
    corr = summary["spearman_with_gold_auc"]
    var_ci, off_ci = corr["whitened_variance_mean"]["on_means_ci"], corr["off_policy_acc"]["on_means_ci"]
    verdict = all_of([judge(var_ci, 0.0), judge(_difference_ci(summary, rows, seeds), 0.0)])
    return {"claim": "Spearman(whitened variance, gold AUC) > 0 and above Spearman(off-policy accuracy, gold AUC)",
            "measured": f"variance {fmt(var_ci)} vs off-policy accuracy {fmt(off_ci)} (on per-RM means, 95% "
                        "bootstrap over seeds, joint across RMs)",
            "intervals": {"variance": var_ci, "off_policy_accuracy": off_ci}, **verdict}


def gain_ratio_verdict(ratio: dict[str, Any], target: float = GAIN_RATIO) -> dict[str, Any]:
    """A gain ratio's verdict: PASS when its estimate reaches ``target`` and its interval excludes
    1.0 (:func:`judge` against 1: the regularized RM gains more at all), MISS when the interval
    lies wholly below ``target`` (:func:`judge` against ``target``), otherwise INCONCLUSIVE with
    the seeds needed to reach the verdict the estimate points to: to exclude 1.0 (PASS) when the
    estimate reaches ``target``, to fall below ``target`` (MISS) when it does not."""
    if ratio["estimate"] >= target and judge(ratio, 1.0)["verdict"] == "PASS":
        return {"verdict": "PASS"}
    if judge(ratio, target)["verdict"] == "MISS":
        return {"verdict": "MISS"}
    toward = 1.0 if ratio["estimate"] >= target else target
    return {"verdict": "INCONCLUSIVE", "seeds_needed": seeds_to_resolve(ratio, toward)}


def regularizer_beats_plain(rows: Rows, seeds: list[int], plain: str, reg: str,
                            on_policy_rm: Optional[str] = None) -> dict[str, Any]:
    """Does BT + variance regularizer (``reg``) beat plain BT (``plain``, the same pairs), paired by
    seed? Three parts, each judged by its 95% interval: (a) whitened variance under the policy
    rises (difference above 0; with ``on_policy_rm``, also the share of the gap to that RM's
    variance that is closed); (b) on-policy accuracy stays within 2 points (difference above
    -0.02); (c) gold AUC ratio >= 1.2 with the interval excluding 1.0 (:func:`gain_ratio_verdict`),
    or, when plain BT's AUC is not surely positive (a ratio would be undefined), the difference
    above 0."""
    var, acc = (paired(per_seed(rows, plain, seeds, m), per_seed(rows, reg, seeds, m))
                for m in ("whitened_variance_mean", "on_policy_acc"))
    gain = versus_baseline(per_seed(rows, plain, seeds, OUTCOME), per_seed(rows, reg, seeds, OUTCOME))
    parts = {"variance": judge(var["difference"], 0.0), "on_policy_acc": judge(acc["difference"], -ACC_TOLERANCE),
             "gold_auc": gain_ratio_verdict(gain) if gain["kind"] == "ratio" else judge(gain, 0.0)}
    closed = ""
    if on_policy_rm is not None:
        level = {n: sum(per_seed(rows, n, seeds, "whitened_variance_mean")) / len(seeds)
                 for n in (plain, reg, on_policy_rm)}
        gap = level[on_policy_rm] - level[plain]
        if gap != 0:
            closed = (f" ({(level[reg] - level[plain]) / gap:.0%} of the gap to "
                      f"`{on_policy_rm}`'s {level[on_policy_rm]:.3f})")
    return {"claim": f"the variance-regularized RM `{reg}` beats plain BT `{plain}` at equal data: (a) higher whitened "
                     f"variance, (b) on-policy accuracy within {ACC_TOLERANCE:.2f}, (c) gold AUC >= {GAIN_RATIO}x "
                     "(or higher, when plain BT's is not surely positive)",
            "measured": f"(a) variance difference {fmt(var['difference'])}{closed}: {parts['variance']['verdict']}; "
                        f"(b) on-policy accuracy difference {fmt(acc['difference'])}: "
                        f"{parts['on_policy_acc']['verdict']}; "
                        f"(c) gold AUC {_comparison_text(gain, plain, reg)}: {parts['gold_auc']['verdict']}",
            "intervals": {"variance": var, "on_policy_acc": acc, "gold_auc": gain}, "parts": parts,
            **all_of(list(parts.values()))}


def objective_beats_pairs(rows: Rows, seeds: list[int], plain: str, objective: str) -> dict[str, Any]:
    """Does a labelled group objective (``objective``) teach better than plain BT on exactly the
    same labelled responses turned into pairs (``plain``), paired by seed? PASS when the gold AUC
    ratio is >= 1.2 with its interval above 1 (:func:`gain_ratio_verdict`; the difference above 0
    when plain BT's AUC is not surely positive). Whitened variance, on-policy accuracy and early
    gain are reported beside it, unjudged."""
    var, acc = (paired(per_seed(rows, plain, seeds, m), per_seed(rows, objective, seeds, m))["difference"]
                for m in ("whitened_variance_mean", "on_policy_acc"))
    gain = versus_baseline(per_seed(rows, plain, seeds, OUTCOME), per_seed(rows, objective, seeds, OUTCOME))
    early = versus_baseline(per_seed(rows, plain, seeds, "gold_early"), per_seed(rows, objective, seeds, "gold_early"))
    verdict = gain_ratio_verdict(gain) if gain["kind"] == "ratio" else judge(gain, 0.0)
    return {"claim": f"`{objective}` teaches better than plain BT on the same labelled responses (`{plain}`): gold AUC "
                     f">= {GAIN_RATIO}x with the interval above 1",
            "measured": f"gold AUC {_comparison_text(gain, plain, objective)}; early gain "
                        f"{_comparison_text(early, plain, objective)}; whitened variance difference {fmt(var)}; "
                        f"on-policy accuracy difference {fmt(acc)}",
            "intervals": {"gold_auc": gain, "early": early, "variance": var, "on_policy_acc": acc}, **verdict}


def on_policy_beats_off_policy(rows: Rows, seeds: list[int], off: str, on: str) -> dict[str, Any]:
    """Razin et al.'s on- vs off-policy RMs, paired by seed: does the RM trained on the policy's own
    samples (``on``) have (a) a higher whitened variance under the policy and (b) a higher on-policy
    accuracy than the one trained on off-policy pairs (``off``), and (c) teach faster (gold AUC
    ratio above 1; the difference above 0 when ``off``'s AUC is not surely positive)? Each part
    judged by its 95% interval; off-policy accuracy is reported beside them, unjudged."""
    var, acc, off_acc = (paired(per_seed(rows, off, seeds, m), per_seed(rows, on, seeds, m))["difference"]
                         for m in ("whitened_variance_mean", "on_policy_acc", "off_policy_acc"))
    gain = versus_baseline(per_seed(rows, off, seeds, OUTCOME), per_seed(rows, on, seeds, OUTCOME))
    parts = {"variance": judge(var, 0.0), "on_policy_acc": judge(acc, 0.0),
             "gold_auc": judge(gain, gain["neutral"])}
    return {"claim": f"the on-policy RM `{on}` beats the off-policy RM `{off}`: (a) higher whitened variance under the "
                     "policy, (b) higher on-policy accuracy, (c) more gold AUC",
            "measured": f"(a) variance difference {fmt(var)}: {parts['variance']['verdict']}; (b) on-policy accuracy "
                        f"difference {fmt(acc)}: {parts['on_policy_acc']['verdict']}; (c) gold AUC "
                        f"{_comparison_text(gain, off, on)}: {parts['gold_auc']['verdict']}; off-policy accuracy "
                        f"difference {fmt(off_acc)} (t over {len(seeds)} seeds)",
            "intervals": {"variance": var, "on_policy_acc": acc, "off_policy_acc": off_acc, "gold_auc": gain},
            "parts": parts, **all_of(list(parts.values()))}


def _difference_ci(summary: dict[str, Any], rows: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Spearman(variance, AUC) - Spearman(off-policy accuracy, AUC) with a 95% interval from the
    same (paired) bootstrap draws."""
    names = list(summary["per_rm"])
    a, draws_a = spearman_draws(rows, names, "whitened_variance_mean", outcome=OUTCOME)
    b, draws_b = spearman_draws(rows, names, "off_policy_acc", outcome=OUTCOME)
    return percentile_interval(a - b, [x - y for x, y in zip(draws_a, draws_b)], len(seeds))


def _half_split_agreement(by: dict, names: list[str], a: str, b: str,
                          splits: list[tuple[list[int], list[int]]]) -> float:
    """Mean over seed splits ``(first, second)`` (lists of seeds, repeats allowed) of Spearman(per-RM
    mean AUC under policy ``a`` on the first half, under ``b`` on the second half)."""
    values = []
    for first, second in splits:
        if not first or not second:
            continue
        xs = [statistics.mean(by[(a, n, s)] for s in first) for n in names]
        ys = [statistics.mean(by[(b, n, s)] for s in second) for n in names]
        values.append(spearman(xs, ys))
    values = [v for v in values if v == v]
    return statistics.mean(values) if values else float("nan")


def _random_splits(chosen: list[int], count: int, g: torch.Generator) -> list[tuple[list[int], list[int]]]:
    """``count`` random splits of the seeds ``chosen`` (a bootstrap draw: repeats allowed) into two
    halves by distinct seed, every copy of a seed on one side, so the halves share no seed."""
    distinct = sorted(set(chosen))
    splits = []
    for _ in range(count):
        order = [distinct[i] for i in torch.randperm(len(distinct), generator=g).tolist()]
        left = set(order[:len(order) // 2])
        splits.append(([s for s in chosen if s in left], [s for s in chosen if s not in left]))
    return splits


def ranking_change(runs: Rows, names: list[str], a: str, b: str, seeds: list[int],
                   resamples: int = RESAMPLES // 5, splits: int = 10) -> dict[str, Any]:
    """Does the RMs' ranking by gold AUC change from policy ``a`` to policy ``b`` beyond seed
    noise? The seeds are split in two halves; *within* = Spearman between the per-RM means of one
    half and of the other under the same policy (averaged over ``a`` and ``b``): how well a
    ranking repeats under seed noise alone; *across* = the same between ``a`` on one half and ``b``
    on the other (averaged both ways): the two sides never share a seed, in either. Both averaged
    over ``splits`` random splits; the statistic is within - across, with a percentile interval
    from bootstrap draws of the seeds (joint across RMs and policies; a drawn seed's copies stay on
    one side). PASS when it lies above 0 (the ranking changes more between policies than between
    halves of the seeds), MISS when below, INCONCLUSIVE otherwise. Needs 4 seeds or more."""
    by = {(r["policy"], r["name"], r["seed"]): r[OUTCOME] for r in runs}
    g = torch.Generator().manual_seed(0)

    def statistic(chosen: list[int]) -> float:
        parts = _random_splits(chosen, splits, g)
        within = (_half_split_agreement(by, names, a, a, parts) + _half_split_agreement(by, names, b, b, parts)) / 2
        across = (_half_split_agreement(by, names, a, b, parts) + _half_split_agreement(by, names, b, a, parts)) / 2
        return within - across

    if len(seeds) < 4:
        return {"estimate": float("nan"), "lower": float("nan"), "upper": float("nan"), "n": len(seeds),
                "method": "split-half (needs 4 seeds or more)", "level": 0.95}
    estimate = statistic(list(seeds))
    draws = [statistic([seeds[i] for i in torch.randint(len(seeds), (len(seeds),), generator=g).tolist()])
             for _ in range(resamples)]
    return {**percentile_interval(estimate, draws, len(seeds)),
            "method": "split-half Spearman, within - across policies; bootstrap over seeds"}


def across_policies(runs: list[dict[str, Any]], names: list[str], policies: list[str],
                    seeds: list[int]) -> dict[str, Any]:
    """Razin et al.'s Theorem 3 measured: for each pair of policies, Spearman between the RMs' mean
    gold AUCs under each, and whether the ranking changes beyond seed noise
    (:func:`ranking_change`: PASS when it changes more between the policies than between two
    halves of the seeds under one); and for each (variance policy, gain policy),
    Spearman(whitened variance under one, gold AUC under the other)."""
    by = {(r["policy"], r["name"], r["seed"]): r for r in runs}

    def spearman_ci(x_policy: str, x_key: str, y_policy: str) -> dict[str, Any]:
        rows = [{"name": n, "seed": s, "x": by[(x_policy, n, s)][x_key], OUTCOME: by[(y_policy, n, s)][OUTCOME]}
                for n in names for s in seeds]
        return percentile_interval(*spearman_draws(rows, names, "x", outcome=OUTCOME), len(seeds))

    agreement = []
    for i, a in enumerate(policies):
        for b in policies[i + 1:]:
            change = ranking_change(runs, names, a, b, seeds)
            agreement.append({"a": a, "b": b, "spearman": spearman_ci(a, OUTCOME, b), "split_half": change,
                              **judge(change, 0.0)})
    predicts = [{"variance_under": pv, "gain_under": pg, "spearman": spearman_ci(pv, "whitened_variance_mean", pg)}
                for pv in policies for pg in policies]
    return {"rank_agreement": agreement, "variance_predicts_gain": predicts}
