import math

import pytest
import torch

from varirm.stats import (
    bootstrap_interval,
    judge,
    paired,
    seeds_to_resolve,
    spearman_draws,
    t_interval,
    versus_baseline,
)


def test_t_interval_by_hand():
    ci = t_interval([0.2, 0.4, 0.6])  # mean 0.4, sd 0.2, t_{0.975,2} = 4.303
    half = 4.303 * 0.2 / math.sqrt(3)
    assert (ci["estimate"], ci["lower"], ci["upper"], ci["n"]) == pytest.approx((0.4, 0.4 - half, 0.4 + half, 3))
    one = t_interval([0.5])
    assert one["estimate"] == 0.5 and one["lower"] == -math.inf and one["upper"] == math.inf  # one seed: unbounded
    assert t_interval([0.3, float("nan"), 0.3])["n"] == 2  # NaN runs left out


def test_bootstrap_interval_on_a_two_point_set_by_hand():
    x = torch.tensor([0.0, 1.0])
    # resampled means are 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and 97.5% quantiles are 0 and 1
    ci = bootstrap_interval(lambda i: x[i].mean().item(), 2)
    assert (ci["estimate"], ci["lower"], ci["upper"]) == (0.5, 0.0, 1.0)
    same = bootstrap_interval(lambda i: x[i].mean().item(), 2)
    assert same == ci  # seeded: the same interval every time


def test_paired_difference_and_ratio():
    result = paired([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])
    diff = result["difference"]
    # no spread in differences
    assert (diff["estimate"], diff["lower"], diff["upper"]) == pytest.approx((1.0, 1.0, 1.0))
    # below 10 seeds the ratio's interval is a paired t one (delta method): residuals b - 1.5 a = 0.5, 0, -0.5
    # (sd 0.5), half-width t_{0.975, 2} x 0.5 / (sqrt(3) x mean(a) = 2)
    ratio = result["ratio"]
    half = 4.303 * 0.5 / math.sqrt(3) / 2
    assert (ratio["estimate"], ratio["lower"], ratio["upper"]) == pytest.approx((1.5, 1.5 - half, 1.5 + half))
    assert ratio["method"].startswith("paired t")
    many = paired([float(i) for i in range(1, 11)], [i + 1.0 for i in range(1, 11)])  # 10 seeds: bootstrap
    assert many["ratio"]["method"] == "paired bootstrap over seeds"
    assert many["ratio"]["estimate"] == pytest.approx(6.5 / 5.5)
    assert math.isnan(paired([-1.0, 0.5], [1.0, 1.0])["ratio"]["estimate"])  # a baseline mean <= 0: no ratio
    with pytest.raises(ValueError, match="same seeds"):
        paired([1.0], [1.0, 2.0])


def test_judge_and_seeds_needed():
    assert judge({"estimate": 0.9, "lower": 0.85, "upper": 0.95, "n": 5}, 0.8)["verdict"] == "PASS"
    assert judge({"estimate": 0.5, "lower": 0.4, "upper": 0.6, "n": 5}, 0.8)["verdict"] == "MISS"
    assert judge({"estimate": 0.5, "lower": 0.4, "upper": 0.6, "n": 5}, 0.8, above=False)["verdict"] == "PASS"
    out = judge({"estimate": 0.9, "lower": 0.7, "upper": 1.1, "n": 4}, 0.8)
    # half-width 0.2 must shrink below the gap 0.1: n x (0.2 / 0.1)^2 = 16 seeds
    assert out == {"verdict": "INCONCLUSIVE", "seeds_needed": 16}
    assert seeds_to_resolve({"estimate": 0.8, "lower": 0.7, "upper": 0.9, "n": 4}, 0.8) is None  # on the threshold
    assert (judge({"estimate": float("nan"), "lower": float("nan"), "upper": float("nan"), "n": 1}, 0.8)["verdict"]
            == "INCONCLUSIVE")


def test_versus_baseline_uses_a_ratio_only_against_a_surely_positive_gain():
    up = versus_baseline([1.0, 1.1, 0.9], [2.0, 2.1, 1.9])
    assert up["kind"] == "ratio" and up["neutral"] == 1.0 and up["estimate"] == pytest.approx(2.0)
    unsure = versus_baseline([0.3, -0.2, 0.1], [0.5, 0.4, 0.6])  # baseline's interval contains 0
    assert unsure["kind"] == "difference" and unsure["neutral"] == 0.0 and unsure["estimate"] == pytest.approx(1.3 / 3)


def test_spearman_bootstrap_resamples_seeds_jointly_across_rms():
    """Two RMs whose gains move together with the seed (a shared seed effect) but whose order never
    changes: a joint draw keeps every resample's order, so the interval is a single point; drawing
    each RM's seeds apart would mix a good seed of one with a bad seed of the other."""
    rows = []
    for seed, effect in enumerate([0.0, 1.0, 2.0, 3.0, 4.0]):
        for name, x, offset in (("a", 0.1, 0.0), ("b", 0.2, 0.1), ("c", 0.3, 0.2)):
            rows.append({"name": name, "seed": seed, "x": x, "gold_gain": effect + offset})
    estimate, draws = spearman_draws(rows, ["a", "b", "c"], "x", resamples=200)
    assert estimate == pytest.approx(1.0, abs=1e-5) and draws  # (torchmetrics: 0.9999985 for equal rankings)
    assert all(d == pytest.approx(1.0, abs=1e-5) for d in draws)
