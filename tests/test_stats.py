import math

import pytest
import torch

from varirm.stats import bootstrap_interval, judge, paired, seeds_to_resolve, t_interval


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
    assert result["ratio"]["estimate"] == pytest.approx(1.5)
    assert 1.0 < result["ratio"]["lower"] <= 1.5 <= result["ratio"]["upper"]
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
