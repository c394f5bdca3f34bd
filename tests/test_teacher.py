"""The predictors of teaching and the teacher score (varirm.teacher), on constructed runs whose
answer is known."""

import random

from varirm.teacher import best_predictor, teacher_fit, teacher_score

NAMES = [f"rm{i}" for i in range(6)]


def runs(seeds, noise: float = 0.0, rng_seed: int = 0):
    """Per RM i: gold AUC = i / 10 (+ seed noise); harm-aware accuracy tracks the AUC exactly,
    on-policy accuracy tracks it except for two swapped RMs, variance runs against it, off-policy
    accuracy is unrelated."""
    rng = random.Random(rng_seed)
    rows = []
    for s in seeds:
        for i, n in enumerate(NAMES):
            auc = i / 10 + noise * rng.gauss(0, 1)
            rows.append({"name": n, "seed": s, "gold_auc": auc, "harm_aware_acc": 0.5 + i / 20,
                         "on_policy_acc": 0.5 + [0, 2, 1, 3, 5, 4][i] / 20, "whitened_variance_mean": 1 - i / 10,
                         "off_policy_acc": [0.7, 0.9, 0.6, 0.8, 0.75, 0.65][i],
                         "harm_aware_acc_weighted": float("nan")})
    return rows


def test_best_predictor_ranks_the_exact_tracker_first_with_an_interval():
    seeds = list(range(6))
    out = best_predictor(runs(seeds, noise=0.01), NAMES, seeds)
    order = [p["metric"] for p in out["ranking"]]
    assert order[0] == "harm_aware_acc" and order[-1] == "whitened_variance_mean"
    assert "harm_aware_acc_weighted" not in order  # not measured (NaN): left out
    assert out["ranking"][0]["spearman"]["estimate"] > 0.9
    diff = out["best_minus_next"]
    assert diff["lower"] <= diff["estimate"] <= diff["upper"]


def test_teacher_fit_chooses_on_half_the_seeds_and_tests_on_the_others():
    seeds = list(range(8))
    fit = teacher_fit(runs(seeds, noise=0.01), NAMES, seeds, k=4)
    assert fit["fit_seeds"] == [0, 1, 2, 3] and fit["test_seeds"] == [4, 5, 6, 7]
    assert (fit["accuracy"], fit["weight"]) == ("harm_aware_acc", 0.0)  # variance only hurts here
    assert fit["held_out_spearman"]["estimate"] > 0.9 and fit["held_out_spearman"]["n"] == 4
    assert teacher_fit(runs([0, 1, 2]), NAMES, [0, 1, 2], k=4) is None  # too few seeds to hold any out


def test_teacher_fit_held_out_spearman_falls_when_the_outcome_is_noise():
    seeds = list(range(8))
    fit = teacher_fit(runs(seeds, noise=5.0, rng_seed=3), NAMES, seeds, k=4)
    held = fit["held_out_spearman"]
    assert held["lower"] < 0.8  # no signal: the interval cannot clear the target


def test_teacher_score_by_hand():
    row = {"harm_aware_acc": 0.8, "whitened_variance_mean": 0.9}
    assert abs(teacher_score(row, "harm_aware_acc", 0.3, k=10) - (0.7 * 0.8 + 0.3 * 0.81)) < 1e-12


def test_teacher_transfer_fits_under_one_policy_and_tests_under_the_other():
    from varirm.teacher import teacher_transfer

    seeds = list(range(8))
    a = [{**r, "policy": "a"} for r in runs(seeds, noise=0.01)]
    b = [{**r, "policy": "b", "gold_auc": -r["gold_auc"]} for r in runs(seeds, noise=0.01)]  # ranking reversed
    out = {(t["fit_under"], t["tested_under"]): t for t in teacher_transfer(a + b, NAMES, ["a", "b"], seeds, k=4)}
    assert set(out) == {("a", "b"), ("b", "a")}
    assert out["a", "b"]["held_out_spearman"]["estimate"] < -0.9  # a's score ranks b's AUCs backwards
