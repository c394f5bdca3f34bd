"""Uncertainty for every number varirm reports: intervals, paired comparisons, and checks.

- :func:`bootstrap_interval`: percentile bootstrap over units (prompts, pairs, seeds) of any statistic.
- :func:`t_interval`: mean over seeds with a Student-t interval (few seeds: the t quantile, not 1.96).
- :func:`paired`: the same seeds under two conditions: difference (t interval) and ratio of means
  (paired t interval below 10 seeds, paired bootstrap from 10); :func:`versus_baseline`: the ratio
  only against a baseline whose gain is surely positive, else the difference.
- :func:`spearman`, :func:`spearman_draws`, :func:`spearman_interval`: rank correlation across
  RMs of a per-RM mean with a per-RM mean outcome, with a bootstrap that resamples seeds jointly
  across RMs.
- :func:`over_seeds`, :func:`per_seed`: one RM's runs summarized, or lined up by seed.
- :func:`judge`: PASS only when the interval clears a threshold, MISS when it lies wholly on the
  wrong side, otherwise INCONCLUSIVE, with the number of seeds that would resolve it at the
  observed spread (half-width shrinks as ``1 / sqrt(n)``); :func:`all_of` combines the parts of a claim.

An interval is a dict ``{"estimate", "lower", "upper", "level", "method", "n"}``.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable, Optional

import torch

LEVEL = 0.95
RESAMPLES = 2000

# Two-sided 95% Student-t quantiles t_{0.975, df}, df = 1..30 (standard table values); the
# normal 1.960 beyond.
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def interval(estimate: float, lower: float, upper: float, method: str, n: int) -> dict[str, object]:
    return {"estimate": estimate, "lower": lower, "upper": upper, "level": LEVEL, "method": method, "n": n}


def nan_interval(method: str, n: int) -> dict[str, object]:
    return interval(float("nan"), float("nan"), float("nan"), method, n)


def t_interval(values: list[float]) -> dict[str, object]:
    """Mean of ``values`` (e.g. one per seed) with a 95% Student-t interval ``mean ± t * sd / sqrt(n)``.
    One value gives an unbounded interval (one seed decides nothing).

    >>> r = t_interval([1.0, 2.0, 3.0])  # sd 1, t_{0.975, 2} = 4.303
    >>> round(r["lower"], 3), round(r["upper"], 3)
    (-0.484, 4.484)
    """
    values = [v for v in values if v == v]
    n = len(values)
    if n == 0:
        return nan_interval("t over seeds", 0)
    mean = sum(values) / n
    if n == 1:
        return interval(mean, -math.inf, math.inf, "t over seeds", 1)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = (T975[n - 2] if n - 1 <= len(T975) else 1.960) * sd / math.sqrt(n)
    return interval(mean, mean - half, mean + half, "t over seeds", n)


def bootstrap_interval(statistic: Callable[[torch.Tensor], float], n: int, resamples: int = RESAMPLES, seed: int = 0,
                       method: str = "bootstrap") -> dict[str, object]:
    """Percentile bootstrap: ``statistic(idx)`` on the full index ``arange(n)`` (the estimate) and
    on ``resamples`` draws of ``n`` indices with replacement; the 2.5% and 97.5% quantiles of the
    resampled statistics (NaN resamples left out) are the interval."""
    estimate = statistic(torch.arange(n))
    if n < 2:
        return interval(estimate, float("nan"), float("nan"), method, n)
    g = torch.Generator().manual_seed(seed)
    draws = torch.tensor([statistic(torch.randint(n, (n,), generator=g)) for _ in range(resamples)],
                         dtype=torch.float64)
    draws = draws[~torch.isnan(draws)]
    if draws.numel() == 0:
        return interval(estimate, float("nan"), float("nan"), method, n)
    lo, hi = torch.quantile(draws, torch.tensor([(1 - LEVEL) / 2, (1 + LEVEL) / 2], dtype=torch.float64)).tolist()
    return interval(estimate, lo, hi, method, n)


BOOTSTRAP_FROM = 10  # seeds from which ratios get a bootstrap interval; below, a paired t interval


def ratio_t_interval(a: list[float], b: list[float]) -> dict[str, object]:
    """``mean(b) / mean(a)`` on paired values with a 95% t interval by linearization (the delta
    method): ``R ± t * sd(b_i - R a_i) / (sqrt(n) mean(a))``. For few seeds, where a percentile
    bootstrap cannot reach past the observed extremes. NaN when ``mean(a) <= 0``.

    >>> r = ratio_t_interval([1.0, 2.0, 3.0], [0.5, 1.2, 1.3])  # R = 3 / 6; residuals 0, 0.2, -0.2
    >>> round(r["estimate"], 3), round(r["lower"], 3), round(r["upper"], 3)  # 0.5 -/+ 4.303 * 0.2 / (sqrt(3) * 2)
    (0.5, 0.252, 0.748)
    """
    n, mean_a = len(a), sum(a) / len(a)
    method = "paired t (delta method) over seeds"
    if mean_a <= 0:
        return nan_interval(method, n)
    r = sum(b) / n / mean_a
    if n < 2:
        return interval(r, -math.inf, math.inf, method, n)
    residual = t_interval([y - r * x for x, y in zip(a, b)])
    half = (residual["upper"] - residual["lower"]) / 2 / mean_a
    return interval(r, r - half, r + half, method, n)


def paired(a: list[float], b: list[float], seed: int = 0) -> dict[str, object]:
    """``b`` vs ``a`` on the same seeds (``a[i]``, ``b[i]`` from seed ``i``): the difference
    ``b - a`` (mean with a t interval over seeds) and the ratio ``mean(b) / mean(a)`` (a paired t
    interval, :func:`ratio_t_interval`, below ``BOOTSTRAP_FROM`` seeds; a paired bootstrap over
    seeds from there on; NaN when ``mean(a) <= 0`` makes a ratio meaningless)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds: {len(a)} vs {len(b)}")
    if len(a) < BOOTSTRAP_FROM:
        return {"difference": t_interval([y - x for x, y in zip(a, b)]), "ratio": ratio_t_interval(a, b)}
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)

    def ratio(idx: torch.Tensor) -> float:
        den = ta[idx].mean().item()
        return tb[idx].mean().item() / den if den > 0 else float("nan")

    return {"difference": t_interval([y - x for x, y in zip(a, b)]),
            "ratio": bootstrap_interval(ratio, len(a), seed=seed, method="paired bootstrap over seeds")}


def versus_baseline(a: list[float], b: list[float]) -> dict[str, object]:
    """``b`` against a baseline ``a`` on the same seeds, as a ratio ``mean(b) / mean(a)`` only when
    the baseline's gain is surely positive (its t interval over seeds lies above 0), else as the
    difference ``b - a`` (a ratio to a gain near or below 0 is undefined or unstable). Returns the
    interval with ``kind`` (``ratio`` or ``difference``) and ``neutral`` (1 or 0: no effect)."""
    comparison = paired(a, b)
    if t_interval(a)["lower"] > 0:
        return {**comparison["ratio"], "kind": "ratio", "neutral": 1.0}
    return {**comparison["difference"], "kind": "difference", "neutral": 0.0}


def seeds_to_resolve(ci: dict[str, object], threshold: float) -> Optional[int]:
    """Seeds at which the interval, shrinking as ``1 / sqrt(n)`` at the observed spread, would
    no longer contain ``threshold``; None when the estimate sits on the threshold or there is no spread."""
    est, lo, hi, n = ci["estimate"], ci["lower"], ci["upper"], ci["n"]
    gap, half = abs(est - threshold), (hi - lo) / 2
    if not (gap > 0 and math.isfinite(half) and half > 0):
        return None
    return max(int(n) + 1, math.ceil(n * (half / gap) ** 2 - 1e-9))  # (1e-9: 16.0000000001 is 16)


def judge(ci: dict[str, object], threshold: float, above: bool = True) -> dict[str, object]:
    """PASS when the interval lies wholly on the claimed side of ``threshold`` (``above``: the
    lower end above it; else the upper end below it), MISS when wholly on the other side,
    INCONCLUSIVE otherwise (with ``seeds_needed`` from :func:`seeds_to_resolve`).

    >>> judge({"estimate": 1.5, "lower": 1.3, "upper": 1.7, "n": 5}, 1.2)["verdict"]
    'PASS'
    >>> judge({"estimate": 1.0, "lower": 0.8, "upper": 1.1, "n": 5}, 1.2)["verdict"]
    'MISS'
    >>> judge({"estimate": 1.25, "lower": 0.9, "upper": 1.6, "n": 5}, 1.2)
    {'verdict': 'INCONCLUSIVE', 'seeds_needed': 245}
    """
    lo, hi = ci["lower"], ci["upper"]
    if not (lo == lo and hi == hi):
        return {"verdict": "INCONCLUSIVE", "seeds_needed": None}
    passed = lo > threshold if above else hi < threshold
    missed = hi < threshold if above else lo > threshold
    if passed or missed:
        return {"verdict": "PASS" if passed else "MISS"}
    return {"verdict": "INCONCLUSIVE", "seeds_needed": seeds_to_resolve(ci, threshold)}


def fmt(ci: dict[str, object], digits: int = 3) -> str:
    """``0.512 [0.401, 0.623]``."""
    return f"{ci['estimate']:.{digits}f} [{ci['lower']:.{digits}f}, {ci['upper']:.{digits}f}]"


def fmt_over_seeds(m: dict[str, object], digits: int = 3) -> str:
    """A per-RM summary over seeds (``mean`` and, when bounded, ``lower``/``upper``) as text."""
    lo, hi = m.get("lower", float("nan")), m.get("upper", float("nan"))
    if lo == -math.inf:
        return f"{m['mean']:.{digits}f} (1 seed)"
    if not (lo == lo and hi == hi):
        return f"{m['mean']:.{digits}f}"
    return f"{m['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _ranks(values: list[float]) -> list[float]:
    """Ranks 1..n, ties given their average rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for m in range(i, j + 1):
            ranks[order[m]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation: the Pearson correlation of the ranks (ties get their average
    rank; the definition torchmetrics and scipy use). NaN when either side is constant or there
    are fewer than 3 points. Plain Python: the bootstraps call it hundreds of thousands of times.

    >>> spearman([0.1, 0.2, 0.3, 0.4], [5, 1, 9, 7])  # ranks (1, 2, 3, 4) vs (2, 1, 4, 3)
    0.6
    """
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    rx, ry = _ranks(list(x)), _ranks(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample std of the non-NaN values (std 0 for one value; both NaN for none)."""
    values = [v for v in values if v == v]
    if not values:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def over_seeds(values: list[float]) -> dict[str, Any]:
    """Mean, std and the 95% t interval over seeds (``lower``/``upper``)."""
    ci = t_interval(values)
    return {**mean_std(values), "lower": ci["lower"], "upper": ci["upper"], "n": ci["n"], "method": ci["method"]}


def spearman_draws(rows: list[dict[str, Any]], names: list[str], metric: str, resamples: int = RESAMPLES,
                   seed: int = 0, outcome: str = "gold_gain") -> tuple[float, list[float]]:
    """Spearman(per-RM mean of ``metric``, per-RM mean of ``outcome``) across RMs, and its values on
    ``resamples`` bootstrap draws of the seeds, resampled jointly: one draw of seeds is used for
    every RM, so each RM's runs keep the pairing through the seed (same RLOO sampling, same data
    order) that makes their differences precise. Only seeds every RM has are used. The draws depend
    only on ``seed`` and the seeds, so two metrics' draws pair up."""
    by_rm = {n: {r["seed"]: (r[metric], r[outcome]) for r in rows if r["name"] == n} for n in names}
    seeds = sorted(set.intersection(*(set(v) for v in by_rm.values()))) if by_rm else []
    g = torch.Generator().manual_seed(seed)

    def on_means(pick: list[int]) -> float:
        xs = [statistics.mean(by_rm[n][seeds[i]][0] for i in pick) for n in names]
        ys = [statistics.mean(by_rm[n][seeds[i]][1] for i in pick) for n in names]
        return spearman(xs, ys)

    if not seeds:
        return float("nan"), []
    estimate = on_means(list(range(len(seeds))))
    if len(seeds) < 2:
        return estimate, []
    return estimate, [on_means(torch.randint(len(seeds), (len(seeds),), generator=g).tolist())
                      for _ in range(resamples)]


def percentile_interval(estimate: float, draws: list[float], n: int) -> dict[str, Any]:
    """An estimate with the 2.5% and 97.5% quantiles of its bootstrap ``draws`` over seeds (resampled
    jointly across RMs; NaN draws left out; a NaN interval when none is left). ``n``: the number of seeds."""
    kept = torch.tensor([d for d in draws if d == d], dtype=torch.float64)
    if kept.numel() == 0:
        return interval(estimate, float("nan"), float("nan"), "bootstrap over seeds, joint across RMs", n)
    lo, hi = torch.quantile(kept, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return interval(estimate, lo, hi, "bootstrap over seeds, joint across RMs", n)


def spearman_interval(rows: list[dict[str, Any]], names: list[str], seeds: list[int], metric: str,
                      outcome: str = "gold_gain") -> dict[str, Any]:
    """Spearman(per-RM mean of ``metric``, per-RM mean of ``outcome``) with a 95% bootstrap interval
    that resamples seeds jointly across RMs (:func:`spearman_draws`)."""
    return percentile_interval(*spearman_draws(rows, names, metric, outcome=outcome), len(seeds))


def per_seed(rows: list[dict[str, Any]], name: str, seeds: list[int], metric: str) -> list[float]:
    """``metric`` of RM ``name``'s runs in the order of ``seeds`` (paired comparisons line up by seed)."""
    by_seed = {r["seed"]: r[metric] for r in rows if r["name"] == name}
    return [by_seed[s] for s in seeds]


def all_of(verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    """A claim made of several parts: MISS if any part misses, PASS if all pass, else INCONCLUSIVE
    (seeds needed: the most any part needs)."""
    kinds = [v["verdict"] for v in verdicts]
    if "MISS" in kinds:
        return {"verdict": "MISS"}
    if all(k == "PASS" for k in kinds):
        return {"verdict": "PASS"}
    needed = [v.get("seeds_needed") for v in verdicts if v["verdict"] == "INCONCLUSIVE"]
    return {"verdict": "INCONCLUSIVE", "seeds_needed": None if None in needed else max(needed)}
