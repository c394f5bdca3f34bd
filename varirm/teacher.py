"""Which cheap measurement of an RM predicts how well it teaches, and a teacher score fit on it.

Cheap: measured on the initial policy's samples before any RLOO (:func:`varirm.evaluate.evaluate`).
Teaching: the gold AUC of the RLOO run against the RM (:mod:`varirm.report`).

- :data:`PREDICTORS`: the measurements compared: whitened variance, on-policy accuracy, off-policy
  accuracy, harm-aware accuracy and its policy-weighted variant (Shang et al. 2026), and the
  paper's variance and accuracy average.
- :func:`best_predictor`: which ranks the RMs' gold AUC best (Spearman on per-RM means), with the
  difference to the runner-up and its interval from the same bootstrap draws of the seeds.
- :func:`teacher_fit`: the teacher score ``(1 - w) * accuracy + w * variance / ceiling``, its
  accuracy measure and ``w`` chosen on the first half of the seeds, its Spearman with the gold AUC
  measured on the held-out second half (bootstrap over those seeds).
"""

from __future__ import annotations

from typing import Any, Optional

from varirm.stats import percentile_interval, spearman_draws
from varirm.variance import variance_over_ceiling

PREDICTORS = {"whitened_variance_mean": "whitened variance", "on_policy_acc": "on-policy accuracy",
              "off_policy_acc": "off-policy accuracy", "harm_aware_acc": "harm-aware accuracy",
              "harm_aware_acc_weighted": "harm-aware accuracy, policy-weighted",
              "variance_accuracy_average": "variance and accuracy average"}
OUTCOME = "gold_auc"
SCORE_ACCURACIES = ("on_policy_acc", "harm_aware_acc", "harm_aware_acc_weighted")
SCORE_WEIGHTS = tuple(i / 10 for i in range(11))  # w: the variance's share of the score


def measured(rows: list[dict[str, Any]], metric: str) -> bool:
    """Whether every row has ``metric`` and none is NaN (a measurement these runs made)."""
    return bool(rows) and all(metric in r and r[metric] == r[metric] for r in rows)


def best_predictor(rows: list[dict[str, Any]], names: list[str], seeds: list[int]) -> dict[str, Any]:
    """Every measured predictor's Spearman with the gold AUC across RMs (per-RM means, 95% bootstrap
    over seeds jointly across RMs), best first, and best minus runner-up with its interval from the
    same draws (every predictor's draws use the same resampled seeds)."""
    ranked = []
    for metric, label in PREDICTORS.items():
        if not measured(rows, metric):
            continue
        estimate, draws = spearman_draws(rows, names, metric, outcome=OUTCOME)
        ranked.append({"metric": metric, "label": label, "draws": draws,
                       "spearman": percentile_interval(estimate, draws, len(seeds))})
    ranked.sort(key=lambda p: -p["spearman"]["estimate"] if p["spearman"]["estimate"] == p["spearman"]["estimate"]
                else float("inf"))
    out: dict[str, Any] = {"ranking": [{k: v for k, v in p.items() if k != "draws"} for p in ranked]}
    if len(ranked) >= 2:
        a, b = ranked[0], ranked[1]
        out["best_minus_next"] = percentile_interval(
            a["spearman"]["estimate"] - b["spearman"]["estimate"],
            [x - y for x, y in zip(a["draws"], b["draws"])], len(seeds))
    return out


def teacher_score(row: dict[str, Any], accuracy: str, weight: float, k: int) -> float:
    """``(1 - weight) * row[accuracy] + weight * whitened variance * (k - 1) / k`` (the variance over
    its ceiling, :func:`varirm.variance.variance_over_ceiling`, so both parts lie in [0, 1]).

    >>> teacher_score({"on_policy_acc": 0.9, "whitened_variance_mean": 0.5}, "on_policy_acc", 0.5, k=2)
    0.575
    """
    return (1 - weight) * row[accuracy] + weight * variance_over_ceiling(row["whitened_variance_mean"], k)


def _choose(rows: list[dict[str, Any]], names: list[str], k: int) -> Optional[tuple[float, str, float]]:
    """``(Spearman, accuracy, w)`` of the best candidate score on ``rows`` (the fit seeds)."""
    best = None
    for accuracy in SCORE_ACCURACIES:
        if not measured(rows, accuracy):
            continue
        for w in SCORE_WEIGHTS:
            scored = [{**r, "teacher_score": teacher_score(r, accuracy, w, k)} for r in rows]
            rho, _ = spearman_draws(scored, names, "teacher_score", outcome=OUTCOME, resamples=0)
            if best is None or rho > best[0]:
                best = (rho, accuracy, w)
    return best


def _halves(seeds: list[int]) -> tuple[list[int], list[int]]:
    ordered = sorted(seeds)
    return ordered[:len(ordered) // 2], ordered[len(ordered) // 2:]


def teacher_fit(rows: list[dict[str, Any]], names: list[str], seeds: list[int], k: int,
                test_rows: Optional[list[dict[str, Any]]] = None) -> Optional[dict[str, Any]]:
    """Fit the teacher score on the first half of the seeds (sorted), test it on the rest.

    Fit: among :data:`SCORE_ACCURACIES` x :data:`SCORE_WEIGHTS` (those the rows measure), the
    candidate whose per-RM means over the fit seeds have the highest Spearman with the per-RM mean
    gold AUC (ties: the first in that order, so the smaller ``w``). Test: the same Spearman on the
    held-out seeds of ``test_rows`` (default ``rows``; another policy's runs test whether the score
    carries over), with a 95% bootstrap interval over them (jointly across RMs). Needs 4 seeds or
    more; ``None`` otherwise."""
    if len(seeds) < 4:
        return None
    fit_seeds, test_seeds = _halves(seeds)
    best = _choose([r for r in rows if r["seed"] in fit_seeds], names, k)
    if best is None:
        return None
    rho_fit, accuracy, w = best
    held = [{**r, "teacher_score": teacher_score(r, accuracy, w, k)} for r in (test_rows or rows)
            if r["seed"] in test_seeds]
    estimate, draws = spearman_draws(held, names, "teacher_score", outcome=OUTCOME)
    return {"accuracy": accuracy, "weight": w, "k": k, "fit_seeds": fit_seeds, "test_seeds": test_seeds,
            "fit_spearman": rho_fit, "held_out_spearman": percentile_interval(estimate, draws, len(test_seeds)),
            "formula": f"(1 - {w:g}) x {PREDICTORS[accuracy]} + {w:g} x whitened variance x {k - 1}/{k}",
            "per_rm": {n: sum(r["teacher_score"] for r in held if r["name"] == n)
                       / max(1, sum(r["name"] == n for r in held)) for n in names}}


def teacher_transfer(runs: list[dict[str, Any]], names: list[str], policies: list[str], seeds: list[int],
                     k: int) -> list[dict[str, Any]]:
    """For each ordered pair of policies ``(a, b)``: the teacher score fit on ``a``'s first half of
    the seeds, tested on ``b``'s held-out half (:func:`teacher_fit` with ``test_rows``): does a
    score chosen under one policy rank the RMs' gold AUC under another?"""
    out = []
    for a in policies:
        for b in policies:
            if a != b:
                fit = teacher_fit([r for r in runs if r["policy"] == a], names, seeds, k,
                                  test_rows=[r for r in runs if r["policy"] == b])
                if fit:
                    out.append({"fit_under": a, "tested_under": b, **fit})
    return out
