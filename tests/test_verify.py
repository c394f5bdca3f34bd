import json
import math
import os

import pytest

from varirm.claims import across_policies, checks
from varirm.errors import ConfigError, VarirmError
from varirm.report import findings, plot, read_findings, render_markdown, summarize
from varirm.stats import seeds_to_resolve, spearman
from varirm.verify import RewardModelSpec, curve_summary, verify


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (1, 2, 3, 4) vs (2, 1, 4, 3): d^2 sums to 4, rho = 1 - 6 * 4 / (4 * 15) = 0.6
    assert spearman([0.1, 0.2, 0.3, 0.4], [5, 1, 9, 7]) == pytest.approx(0.6)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))  # constant side: undefined
    assert math.isnan(spearman([1, 2], [1, 2]))


def test_curve_summary_by_hand():
    curve = [{"step": 0, "gold_reward": 0.1, "proxy_reward": -0.2},
             {"step": 5, "gold_reward": 0.3, "proxy_reward": 0.4},
             {"step": 10, "gold_reward": 0.5, "proxy_reward": 1.0}]
    s = curve_summary(curve)
    assert s["gold_gain"] == pytest.approx(0.4) and s["proxy_gain"] == pytest.approx(1.2)
    # gains 0, 0.2, 0.4: area 5 * 0.1 + 5 * 0.3 = 2, over 10 steps
    assert s["gold_auc"] == pytest.approx(0.2) and s["steps"] == 10
    assert s["gold_early"] == pytest.approx(0.08)  # at step 2 of 10: 0.2 x 2 / 5
    grouped = [dict(p, gold_by_group={"kept": p["gold_reward"], "squashed": 0.0}) for p in curve]
    by = curve_summary(grouped)
    assert by["gold_auc_kept"] == pytest.approx(0.2) and by["gold_gain_squashed"] == 0.0
    with pytest.raises(VarirmError, match="fewer than 2 points"):
        curve_summary(curve[:1])


def _rows(seeds=(0, 1, 2)):
    # variance orders the AUCs exactly; off-policy accuracy runs against them
    table = {"a": (0.2, 0.9, 0.95, 0.05), "b": (0.5, 0.8, 0.9, 0.10), "c": (0.9, 0.7, 0.8, 0.30),
             "reg": (0.95, 0.7, 0.8, 0.40), "flat": (0.01, 1.0, 1.0, 0.01), "gold": (0.6, 1.0, 1.0, 0.2)}
    return [{"name": n, "seed": s, "whitened_variance_mean": v, "on_policy_acc": on, "off_policy_acc": off,
             "gold_gain": 2 * g, "proxy_gain": 1.0, "gold_auc": g + 0.01 * s, "gold_early": g / 2}
            for s in seeds for n, (v, on, off, g) in table.items()]


NAMES = ["a", "b", "c", "reg", "flat", "gold"]


def test_summary_and_checks_pass_and_miss_by_their_intervals():
    rows, seeds = _rows(), [0, 1, 2]
    summary = summarize(rows, NAMES, seeds)
    auc = summary["per_rm"]["c"]["gold_auc"]
    assert auc["mean"] == pytest.approx(0.31) and auc["std"] == pytest.approx(0.01)
    # t interval over 3 seeds: 0.31 ± t_{0.975,2} (4.303) x 0.01 / sqrt(3)
    half = 4.303 * 0.01 / 3 ** 0.5
    assert (auc["lower"], auc["upper"]) == pytest.approx((0.31 - half, 0.31 + half))
    corr = summary["spearman_with_gold_auc"]
    assert corr["whitened_variance_mean"]["per_seed"] == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    assert corr["whitened_variance_mean"]["on_means_ci"]["lower"] == pytest.approx(1.0, abs=1e-5)  # joint draws
    assert corr["off_policy_acc"]["on_means"] < 0
    result = checks(summary, "flat", ["a", "reg"], ["a", "b", "c", "reg"], rows, seeds, on_policy_rm="c",
                    reference="gold")
    assert [c["claim"][:12] for c in result[1:3]] == ["(Theorem 1) ", "(Theorem 2) "]
    # variance predicts; flat gains less than gold (AUC ratio 0.02 / 0.2); c (less accurate, higher variance)
    # gains more than flat; reg raises variance and AUC but loses 0.2 on-policy accuracy (more than 2 points)
    assert [c["verdict"] for c in result] == ["PASS", "PASS", "PASS", "MISS"]
    assert result[1]["intervals"]["auc"]["kind"] == "ratio"
    assert result[1]["intervals"]["auc"]["estimate"] == pytest.approx(0.02 / 0.21)
    assert "target (<= 0.8x) is met" in result[1]["measured"]
    assert {k: v["verdict"] for k, v in result[3]["parts"].items()} == {
        "variance": "PASS", "on_policy_acc": "MISS", "gold_auc": "PASS"}
    # 3 seeds: the AUC ratio's interval is a paired t one; a's AUCs 0.05, 0.06, 0.07, reg's 0.40, 0.41, 0.42
    ratio = result[3]["intervals"]["gold_auc"]
    assert ratio["kind"] == "ratio" and ratio["estimate"] == pytest.approx(0.41 / 0.06)
    assert ratio["method"].startswith("paired t")
    # Theorem 2's candidate must be less accurate with higher variance than the low-variance RM: gold is not
    assert checks(summary, "flat", None, ["a"], rows, seeds, on_policy_rm="gold")[1]["verdict"] == "INCONCLUSIVE"
    # a regularized RM whose whole interval lies below 1.2x plain BT is a MISS (~0.75x)
    assert checks(summary, None, ["reg", "c"], ["a"], rows, seeds)[1]["parts"]["gold_auc"]["verdict"] == "MISS"
    # within 2 points of plain BT's on-policy accuracy: every part passes; one check per variant
    kept = [dict(r, on_policy_acc=0.895) if r["name"] == "reg" else r for r in rows]
    both = checks(summarize(kept, NAMES, seeds), None, ["a", "reg", "c"], ["a"], kept, seeds, on_policy_rm="b")
    assert [c["verdict"] for c in both] == ["PASS", "PASS", "MISS"]  # c loses 0.2 accuracy
    # (0.95 - 0.2) / (0.5 - 0.2): the regularizer overshoots b's variance level
    assert "250% of the gap to `b`'s 0.500" in both[1]["measured"]



def test_findings_say_each_verdict_in_plain_words_and_one_seed_decides_nothing(tmp_path):
    rows, seeds = _rows(), [0, 1, 2]
    summary = summarize(rows, NAMES, seeds)
    result = checks(summary, "flat", ["a", "reg"], ["a", "b", "c", "reg"], rows, seeds, on_policy_rm="c",
                    reference="gold")
    report = {"seeds": seeds, "checks": result, "reward_models": [{"name": n} for n in NAMES]}
    lines = findings(report)
    assert len(lines) == 4 and lines[0].startswith("PASS, 3 seeds: Spearman(whitened variance")
    ratio = result[1]["intervals"]["auc"]
    assert lines[1] == (f"PASS, 3 seeds: {result[1]['claim']}. Measured: gold AUC `flat` / `gold` "
                        f"{ratio['estimate']:.3f} [{ratio['lower']:.3f}, {ratio['upper']:.3f}] "
                        f"({ratio['method']}, 3 seeds).")
    assert "Measured: gold AUC `c` - `flat`" in lines[2]  # Theorem 2's headline is its AUC difference
    assert lines[3].startswith("MISS, 3 seeds:") and "(b) on-policy accuracy difference" in lines[3]  # every part
    one = findings({**report, "seeds": [0]})
    assert one == [f"INCONCLUSIVE, 1 seed: {c['claim']}" for c in result]
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "report.json").write_text(json.dumps(report))
    text = read_findings([str(tmp_path / "v")])
    assert text.splitlines()[0] == f"{tmp_path / 'v'}: a, b, c, reg, flat, gold; 3 seeds"
    assert text.splitlines()[1:] == ["  " + line for line in lines]
    from varirm.cli import cli_main

    assert cli_main(["findings", "--reports", json.dumps([str(tmp_path / "v")])]) == text  # `varirm findings`
    with pytest.raises(VarirmError, match="no initial policy 'pi9'"):
        findings({**report, "policies": [{"name": "pi0", "checks": result}]}, "pi9")
    with pytest.raises(VarirmError, match="cannot read the verification report"):
        read_findings([str(tmp_path / "missing")])


def test_two_rewards_get_theorem_1_without_a_ranking_check_and_a_gold_plot_per_half(tmp_path):
    seeds = [0, 1, 2]
    rows = [r for r in _rows() if r["name"] in ("gold", "flat")]
    summary = summarize(rows, ["gold", "flat"], seeds)
    result = checks(summary, "flat", None, [], rows, seeds, reference="gold")
    assert [c["claim"][:12] for c in result] == ["(Theorem 1) "]  # Spearman over two RMs is undefined: not checked
    curve = [{"step": s, "gold_reward": 0.1 * s, "gold_by_group": {"kept": 0.1 * s, "squashed": 0.05 * s}}
             for s in range(3)]
    runs = [{**r, "curve": curve} for r in rows]
    report = {"seeds": seeds, "checks": result, "runs": runs, "summary": summary,
              "reward_models": [{"name": "gold"}, {"name": "flat"}]}
    path = plot(report, str(tmp_path))[0]
    with open(path, "rb") as f:
        width = int.from_bytes(f.read(24)[16:20], "big")  # PNG header: IHDR width
    assert width == 100 * (4.5 * 3 + 2.5)  # three panels: all prompts, kept, squashed
    plot({**report, "runs": [{**r, "curve": [{"step": p["step"], "gold_reward": p["gold_reward"]} for p in curve]}
                             for r in rows]}, str(tmp_path))
    with open(path, "rb") as f:
        assert int.from_bytes(f.read(24)[16:20], "big") == 100 * (4.5 + 2.5)  # no groups: one panel


def test_on_policy_against_off_policy_rm_by_paired_intervals():
    rows, seeds = _rows(), [0, 1, 2]
    summary = summarize(rows, NAMES, seeds)
    # c (variance 0.9, on-policy acc 0.7) against a (0.2, 0.9): more variance, less accurate, AUC 0.31 vs 0.06
    check = checks(summary, None, None, ["a", "c"], rows, seeds, on_policy_rm="c", off_policy_rm="a")[-1]
    assert check["claim"].startswith("the on-policy RM `c` beats the off-policy RM `a`")
    assert {k: v["verdict"] for k, v in check["parts"].items()} == {
        "variance": "PASS", "on_policy_acc": "MISS", "gold_auc": "PASS"}
    assert check["verdict"] == "MISS"
    var, ratio = check["intervals"]["variance"], check["intervals"]["gold_auc"]
    assert var["estimate"] == pytest.approx(0.7) and var["lower"] == pytest.approx(0.7)  # no spread over seeds
    assert ratio["kind"] == "ratio" and ratio["estimate"] == pytest.approx(0.31 / 0.06)
    assert check["intervals"]["off_policy_acc"]["estimate"] == pytest.approx(-0.15)
    # without on_policy_rm there is nothing to check against
    assert all("off-policy RM" not in c["claim"] for c in checks(summary, None, None, ["a"], rows, seeds,
                                                                  off_policy_rm="a"))

def test_the_regularizer_against_a_baseline_without_a_sure_gain_is_judged_by_the_difference():
    plain, reg = [-0.2, 0.1, -0.1], [0.3, 0.4, 0.35]
    rows = [{"name": n, "seed": s, "whitened_variance_mean": v, "on_policy_acc": 0.8, "off_policy_acc": 0.8,
             "gold_gain": g, "proxy_gain": 1.0, "gold_auc": g, "gold_early": g}
            for n, v, gains in (("plain", 0.5, plain), ("reg", 0.9, reg), ("x", 0.7, [0.1, 0.1, 0.2]))
            for s, g in enumerate(gains)]
    summary = summarize(rows, ["plain", "reg", "x"], [0, 1, 2])
    check = checks(summary, None, ["plain", "reg"], ["plain", "reg"], rows, [0, 1, 2])[-1]
    gain = check["intervals"]["gold_auc"]
    assert gain["kind"] == "difference" and gain["estimate"] == pytest.approx(1.25 / 3)
    assert check["parts"]["gold_auc"]["verdict"] == "PASS"  # t interval of the differences 0.5, 0.3, 0.45 is above 0


def test_a_check_whose_interval_straddles_the_threshold_is_inconclusive_with_seeds_needed():
    plain, reg = [0.2, 0.2, 0.2, 0.2, 0.2], [0.1, 0.5, 0.2, 0.6, 0.3]  # ratio 1.7, but seed noise is large
    rows = [{"name": n, "seed": s, "whitened_variance_mean": v, "on_policy_acc": 0.8, "off_policy_acc": 0.8,
             "gold_gain": g, "proxy_gain": 1.0, "gold_auc": g, "gold_early": g}
            for n, v, gains in (("plain", 0.5, plain), ("reg", 0.9, reg))
            for s, g in enumerate(gains)]
    summary = summarize(rows, ["plain", "reg"], list(range(5)))
    check = checks(summary, None, ["plain", "reg"], ["plain", "reg"], rows, list(range(5)))[-1]
    ratio = check["intervals"]["gold_auc"]
    assert ratio["lower"] < 1.0 < ratio["upper"] and ratio["estimate"] == pytest.approx(1.7)
    # the estimate reaches 1.2: the seeds needed are those that would take the interval off 1.0 (the PASS rule)
    assert check["verdict"] == "INCONCLUSIVE"
    assert check["parts"]["gold_auc"]["seeds_needed"] == seeds_to_resolve(ratio, 1.0)


def _two_policy_runs(gains_b: dict[str, float], seeds=range(6)) -> list[dict]:
    """3 RMs under policies pA and pB with seed noise; under pA AUCs rank a > b > c, variance likewise."""
    gains_a, variance = {"a": 0.6, "b": 0.4, "c": 0.2}, {"a": 0.9, "b": 0.5, "c": 0.1}
    noise = [0.0, 0.03, -0.02, 0.01, -0.03, 0.02]
    return [{"name": n, "seed": s, "policy": p, "whitened_variance_mean": variance[n] if p == "pA" else 1 - variance[n],
             "on_policy_acc": 0.8, "off_policy_acc": 0.8, "gold_gain": g[n], "proxy_gain": 1.0,
             "gold_auc": g[n] + noise[(s + i) % 6], "gold_early": g[n]}
            for p, g in (("pA", gains_a), ("pB", gains_b)) for i, n in enumerate(gains_a) for s in seeds]


def test_across_policies_ranking_change_and_which_variance_predicts():
    names, seeds = ["a", "b", "c"], list(range(6))
    reversed_runs = _two_policy_runs({"a": 0.1, "b": 0.3, "c": 0.5})  # pB ranks c > b > a
    across = across_policies(reversed_runs, names, ["pA", "pB"], seeds)
    change = across["rank_agreement"][0]
    assert change["spearman"]["estimate"] == pytest.approx(-1.0, abs=1e-5)
    # halves of the seeds agree within a policy (Spearman 1) and disagree across (-1): within - across = 2
    assert change["split_half"]["estimate"] == pytest.approx(2.0, abs=1e-4) and change["verdict"] == "PASS"
    predicts = {(r["variance_under"], r["gain_under"]): r["spearman"]["estimate"]
                for r in across["variance_predicts_gain"]}
    # each policy's own variance (pB's is 1 - pA's here) ranks its own gains exactly; the other's backwards
    assert predicts == pytest.approx({("pA", "pA"): 1.0, ("pB", "pB"): 1.0, ("pA", "pB"): -1.0, ("pB", "pA"): -1.0},
                                     abs=1e-5)
    # the same ranking under both policies: no change beyond seed noise
    same = across_policies(_two_policy_runs({"a": 0.6, "b": 0.4, "c": 0.2}), names, ["pA", "pB"], seeds)
    assert same["rank_agreement"][0]["split_half"]["estimate"] == pytest.approx(0.0, abs=1e-4)
    assert same["rank_agreement"][0]["verdict"] != "PASS"
    # noise that swaps neighbours within one policy as often as across: the test does not call it a change
    close = [dict(r, gold_auc=0.4 + 0.05 * ((r["seed"] + {"a": 0, "b": 1, "c": 2}[r["name"]]) % 3))
             for r in _two_policy_runs({"a": 0.6, "b": 0.4, "c": 0.2})]
    assert across_policies(close, names, ["pA", "pB"], seeds)["rank_agreement"][0]["verdict"] != "PASS"


def test_verify_rejects_bad_sets_before_any_work(tmp_path):
    base = dict(rloo_recipe="r.yaml", policy="p", eval_samples="s.jsonl", gold="g", output_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="unique"):
        verify([RewardModelSpec("a", reward="g"), RewardModelSpec("a", reward="g")], **base)
    with pytest.raises(ConfigError, match="exactly one of recipe"):
        verify([RewardModelSpec("a", recipe="x.yaml", reward="g")], **base)
    with pytest.raises(ConfigError, match="not among the reward models"):
        verify([RewardModelSpec("a", reward="g")], compare=["a", "b"], **base)
    with pytest.raises(ConfigError, match="budgets names 'z'"):
        verify([RewardModelSpec("a", reward="g"), RewardModelSpec("b", reward="g")], budgets=[["a", "z"]], **base)
    with pytest.raises(ConfigError, match="one \\[plain, objective"):
        verify([RewardModelSpec("a", reward="g")], budgets=[["a"]], **base)
    with pytest.raises(ConfigError, match="off_policy_rm .* name that RM too"):
        verify([RewardModelSpec("a", reward="g")], off_policy_rm="a", **base)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.md").write_text("earlier")
    with pytest.raises(VarirmError, match="--overwrite true"):
        verify([RewardModelSpec("a", reward="g")], **base)
    assert (tmp_path / "out" / "report.md").read_text() == "earlier"  # nothing written is lost
    # a missing samples file stops the run before any RM is trained
    with pytest.raises(VarirmError, match="s.jsonl"):
        verify([RewardModelSpec("a", recipe="x.yaml")], **{**base, "output_dir": str(tmp_path / "fresh")})
    assert not (tmp_path / "fresh" / "rms").exists()
    # a prepare step's arguments are checked as on the command line
    with pytest.raises(ConfigError, match="prepare step for .*make-tiny-model: .*no_such_argument"):
        verify([RewardModelSpec("a", reward="g")], prepare=[{"creates": str(tmp_path / "m" / "config.json"),
                                                             "job": "make-tiny-model",
                                                             "args": {"output": "m", "no_such_argument": 1}}],
               **{**base, "output_dir": str(tmp_path / "fresh2")})
    assert not (tmp_path / "m").exists()


def test_objective_against_pairs_is_judged_by_the_auc_ratio_and_reports_the_rest():
    """``budgets`` checks: PASS needs the paired AUC ratio >= 1.2 with its interval above 1; a ratio
    above 1 but below 1.2 with a tight interval is a MISS; variance and accuracy are reported unjudged."""
    seeds = list(range(5))
    rows = []
    for s in seeds:
        for name, auc in (("pairs", 0.10), ("strong", 0.13), ("mild", 0.105)):
            rows.append({"name": name, "seed": s, "whitened_variance_mean": 0.9, "on_policy_acc": 0.8,
                         "off_policy_acc": 0.8, "gold_gain": auc, "proxy_gain": 1.0,
                         "gold_auc": auc + 0.001 * s, "gold_early": auc / 2})
    summary = summarize(rows, ["pairs", "strong", "mild"], seeds)
    strong, mild = checks(summary, None, None, [], rows, seeds, budgets=[["pairs", "strong", "mild"]])[1:]
    assert strong["verdict"] == "PASS" and strong["intervals"]["gold_auc"]["kind"] == "ratio"
    assert strong["intervals"]["gold_auc"]["estimate"] == pytest.approx(1.3, abs=0.01)
    assert mild["verdict"] == "MISS" and "on-policy accuracy difference" in mild["measured"]


@pytest.mark.slow
def test_verify_end_to_end_tiny(tmp_path, tiny_model_dir, synthetic_dir):
    """The whole command on tiny inputs: one trained RM, the gold and the flat gold reward, RLOO
    from a tiny policy; then a resumed run reuses every finished stage."""
    from conftest import REPO

    from varirm.cli import cli_main

    samples = tmp_path / "eval_k4.jsonl"
    cli_main(["sample", "--policy", tiny_model_dir, "--prompts", str(synthetic_dir / "eval_prompts.jsonl"),
              "--output", str(samples), "--k", "4", "--num_prompts", "12", "--max_new_tokens", "8"])
    callback = [{"class_path": "varirm.callbacks.PolicyEvaluation",
                 "init_args": {"prompts": str(synthetic_dir / "eval_prompts.jsonl"), "num_prompts": 8, "k": 2,
                               "every_n_steps": 2}}]
    rms = [RewardModelSpec("bt", recipe=str(REPO / "recipes" / "onpolicy_synthetic.yaml"), overrides={
               "model.init_args.model_name_or_path": tiny_model_dir,
               "data.init_args.train": str(synthetic_dir / "train.jsonl"),
               "data.init_args.val": str(synthetic_dir / "val.jsonl"), "data.init_args.on_policy_fraction": 0.0,
               "trainer.max_epochs": 1, "trainer.limit_train_batches": 3, "trainer.limit_val_batches": 1},
               description="tiny BT"),
           RewardModelSpec("gold", reward="varirm.synthetic.gold_reward"),
           RewardModelSpec("flat", reward="varirm.synthetic.flat_gold_reward")]
    out = tmp_path / "verify"
    kwargs = dict(rloo_recipe=str(REPO / "recipes" / "rloo" / "verify_synthetic.yaml"), policy=tiny_model_dir,
                  eval_samples=str(samples), gold="varirm.synthetic.gold_reward", output_dir=str(out),
                  test_pairs=str(synthetic_dir / "test.jsonl"), max_length=64, device="cpu", low_variance="flat",
                  rloo_overrides={"trainer.max_steps": 8, "trainer.callbacks": callback,
                                  "model.init_args.max_new_tokens": 8,
                                  "data.init_args.prompts": str(synthetic_dir / "prompts.jsonl"),
                                  "data.init_args.batch_size": 4})
    verify(rms, **kwargs)
    report = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in report["runs"]] == ["bt", "gold", "flat"]
    for run in report["runs"]:
        assert [p["step"] for p in run["curve"]] == [0, 2, 4]  # 8 optimizer steps = 4 RLOO steps
        assert run["curve"][0]["gold_reward"] == report["runs"][0]["curve"][0]["gold_reward"]  # same pi0, same seed
    flat = next(r for r in report["runs"] if r["name"] == "flat")
    assert flat["on_policy_acc"] == 1.0 and flat["off_policy_acc"] == 1.0
    assert flat["whitened_variance_mean"] < 0.2
    text = (out / "report.md").read_text()
    assert "`bt`" in text and "tiny BT" in text and "Spearman" in text and ("PASS" in text or "MISS" in text)
    for png in ("gold_curves.png", "variance_vs_gain.png", "accuracy_vs_gain.png"):
        assert (out / png).stat().st_size > 1000
    ckpt = out / "rms" / "bt" / "seed0" / "checkpoints" / "last.ckpt"
    mtime = ckpt.stat().st_mtime_ns
    verify(rms, resume=True, **kwargs)  # every stage finished: nothing is trained again
    assert ckpt.stat().st_mtime_ns == mtime
    resumed = json.loads((out / "report.json").read_text())
    assert json.dumps(resumed["summary"], sort_keys=True) == json.dumps(report["summary"], sort_keys=True)
    # each stage's seconds are those it took in the first run (recorded in done.json), not the reuse's
    trained, timed = report["timings"]["bt/seed0"], resumed["timings"]["bt/seed0"]
    assert timed == trained and trained["train_rm_s"] > 0.5 and trained["rloo_s"] > 0.5
    assert resumed["timings"]["per_seed"] == report["timings"]["per_seed"] and resumed["seconds"] < report["seconds"]
    stage_seconds = [v for run, stages in report["timings"].items() if run != "per_seed" for v in stages.values()]
    # every figure is rounded to 0.1 s on its own: the sum of the rounded stages is off by at most 0.05 each
    assert report["timings"]["per_seed"]["0"] == pytest.approx(sum(stage_seconds),
                                                               abs=0.05 * (len(stage_seconds) + 1) + 1e-9)
    assert f"per seed: seed 0 {report['timings']['per_seed']['0']:.0f} s" in (out / "report.md").read_text()

    # the trained RM exports with its verification result on the card; another checkpoint cannot claim it
    from varirm.export import export, verification_summary

    exported = export(str(ckpt), str(tmp_path / "exported"), evaluations=[str(out / "eval" / "bt" / "seed0")],
                      verification=str(out))
    card = (tmp_path / "exported" / "README.md").read_text()
    assert ("**bt** (this RM)" in card and "ranks" in card and "This checkpoint: seed 0" in card
            and "No RLOO verification report" not in card)
    assert exported == str(tmp_path / "exported")
    with pytest.raises(VarirmError, match="none of its RLOO runs used"):
        verification_summary(str(out), str(samples))


def _verify_config(tmp_path, tiny_model_dir, synthetic_dir) -> str:
    """A tiny `varirm verify` recipe whose prepare steps train pi0 (SFT) and sample it, as the demo's do."""
    import yaml
    from conftest import REPO

    demos = tmp_path / "demos.jsonl"
    from varirm.synthetic import make_demos

    demos.write_text("".join(json.dumps(r) + "\n" for r in make_demos(640, seed=0)))
    pi0, samples = tmp_path / "pi0", tmp_path / "eval_k4.jsonl"
    callback = [{"class_path": "varirm.callbacks.PolicyEvaluation",
                 "init_args": {"prompts": str(synthetic_dir / "eval_prompts.jsonl"), "num_prompts": 8, "k": 2,
                               "every_n_steps": 2}}]
    config = {
        "output_dir": str(tmp_path / "verify"), "policy": str(pi0), "gold": "varirm.synthetic.gold_reward",
        "eval_samples": str(samples), "test_pairs": str(synthetic_dir / "test.jsonl"),
        "max_length": 64, "device": "cpu",
        "rloo_recipe": str(REPO / "recipes" / "rloo" / "verify_synthetic.yaml"),
        "rloo_overrides": {"trainer.max_steps": 12, "trainer.callbacks": callback, "model.init_args.max_new_tokens": 8,
                           "data.init_args.prompts": str(synthetic_dir / "prompts.jsonl"),
                           "data.init_args.batch_size": 4},
        "reward_models": [
            {"name": "bt", "recipe": str(REPO / "recipes" / "onpolicy_synthetic.yaml"), "overrides": {
                "model.init_args.model_name_or_path": tiny_model_dir,
                "data.init_args.train": str(synthetic_dir / "train.jsonl"),
                "data.init_args.val": str(synthetic_dir / "val.jsonl"), "data.init_args.on_policy_fraction": 0.0,
                "trainer.max_epochs": 1, "trainer.limit_train_batches": 6, "trainer.limit_val_batches": 1}},
            {"name": "gold", "reward": "varirm.synthetic.gold_reward"}],
        "prepare": [
            {"creates": str(pi0 / "config.json"), "job": "sft",
             "args": {"recipe": str(REPO / "recipes" / "sft_synthetic.yaml"), "overrides": {
                 "trainer.max_epochs": 3, "trainer.default_root_dir": str(tmp_path / "sft"),
                 "trainer.enable_progress_bar": False, "model.init_args.model_name_or_path": tiny_model_dir,
                 "model.init_args.save_dir": str(pi0), "data.init_args.train": str(demos)}}},
            {"creates": str(samples), "job": "sample",
             "args": {"policy": str(pi0), "prompts": str(synthetic_dir / "eval_prompts.jsonl"), "output": str(samples),
                      "k": 4, "num_prompts": 12, "max_new_tokens": 8}}]}
    path = tmp_path / "verify.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _comparable(report: dict) -> dict:
    """A report without what differs between attempts by nature (wall times, the command line)."""
    return {k: v for k, v in report.items() if k not in ("timings", "seconds", "command")}


@pytest.mark.slow
def test_verify_killed_at_two_points_and_resumed_writes_the_uninterrupted_report(tmp_path, tiny_model_dir,
                                                                                 synthetic_dir):
    import signal
    import subprocess
    import sys
    import time

    def start(root, *extra):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        return subprocess.Popen([sys.executable, "-m", "varirm", "verify",
                                 "--config", str(root / "verify.yaml"), *extra],
                                cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def kill_when(proc, exists, timeout=600):
        t0 = time.time()
        while not exists():
            assert proc.poll() is None, f"finished before the kill point: {proc.stderr.read()[-2000:]}"
            assert time.time() - t0 < timeout
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    for root in (reference, interrupted):
        root.mkdir()
        _verify_config(root, tiny_model_dir, synthetic_dir)
    proc = start(reference)
    assert proc.wait() == 0, proc.stderr.read()[-3000:]

    # 1: during the prepare step that trains pi0, after its first checkpoint
    proc = start(interrupted)
    kill_when(proc, lambda: any((interrupted / "sft" / "checkpoints").glob("*.ckpt")))
    assert not (interrupted / "pi0" / "config.json").exists()
    # 2: resumed, then killed again in the RLOO run against the trained RM
    proc = start(interrupted, "--resume", "true")
    kill_when(proc, lambda: (interrupted / "verify" / "rloo" / "bt" / "seed0" / "csv").exists())
    assert not (interrupted / "verify" / "report.json").exists()
    proc = start(interrupted, "--resume", "true")
    assert proc.wait() == 0, proc.stderr.read()[-3000:]

    a = json.loads((reference / "verify" / "report.json").read_text())
    b = json.loads((interrupted / "verify" / "report.json").read_text())
    text = lambda r: json.dumps(_comparable(r), sort_keys=True).replace(str(interrupted), str(reference))  # noqa: E731
    assert text(a) == text(b)


@pytest.mark.slow
def test_verify_under_two_policies(tmp_path, tiny_model_dir, synthetic_dir):
    """Every RM evaluated under and RLOO'd from each policy; runs nested by policy name; one report
    section per policy plus the across-policies tables; plots per policy."""
    from conftest import REPO

    from varirm.cli import cli_main
    from varirm.tiny import make_tiny_model

    other = make_tiny_model(str(tmp_path / "other"), seed=7)
    samples = []
    for policy in (tiny_model_dir, other):
        path = tmp_path / f"eval_{len(samples)}.jsonl"
        cli_main(["sample", "--policy", policy, "--prompts", str(synthetic_dir / "eval_prompts.jsonl"), "--output",
                  str(path), "--k", "4", "--num_prompts", "12", "--max_new_tokens", "8"])
        samples.append(str(path))
    callback = [{"class_path": "varirm.callbacks.PolicyEvaluation",
                 "init_args": {"prompts": str(synthetic_dir / "eval_prompts.jsonl"), "num_prompts": 8, "k": 2,
                               "every_n_steps": 2}}]
    out = tmp_path / "verify"
    verify([RewardModelSpec("gold", reward="varirm.synthetic.gold_reward"),
            RewardModelSpec("flat", reward="varirm.synthetic.flat_gold_reward"),
            RewardModelSpec("half", reward="varirm.synthetic.half_flat_gold_reward")],
           rloo_recipe=str(REPO / "recipes" / "rloo" / "verify_synthetic.yaml"), policy=[tiny_model_dir, other],
           eval_samples=samples, gold="varirm.synthetic.gold_reward", output_dir=str(out), max_length=64, device="cpu",
           rloo_overrides={"trainer.max_steps": 4, "trainer.callbacks": callback, "model.init_args.max_new_tokens": 8,
                           "data.init_args.prompts": str(synthetic_dir / "prompts.jsonl"),
                           "data.init_args.batch_size": 4})
    report = json.loads((out / "report.json").read_text())
    assert [p["name"] for p in report["policies"]] == ["llama", "other"]
    assert sorted({(r["policy"], r["name"]) for r in report["runs"]}) == sorted(
        (p, n) for p in ("llama", "other") for n in ("gold", "flat", "half"))
    for policy in ("llama", "other"):
        assert (out / "rloo" / policy / "half" / "seed0" / "policy_eval.json").exists()
        assert (out / f"gold_curves_{policy}.png").stat().st_size > 1000
    assert len(report["across_policies"]["variance_predicts_gain"]) == 4
    text = (out / "report.md").read_text()
    assert "## Under `llama`" in text and "## Under `other`" in text and "## Across policies" in text
    assert text == render_markdown(report)


def test_regimes_row_table_and_controls_from_made_up_reports():
    from varirm.regimes import Controls, judge_controls, setting_row
    from varirm.regimes import render_markdown as regimes_markdown

    aucs = {"gold": [0.6, 0.7, 0.8], "flat": [0.6, 0.7, 0.8], "uneven": [0.4, 0.5, 0.5], "same": [0.6, 0.9, 0.6]}
    halves = {"gold": ([0.5, 0.6, 0.7], [0.7, 0.8, 0.9]), "flat": ([0.5, 0.6, 0.7], [0.7, 0.8, 0.9]),
              "uneven": ([0.1, 0.2, 0.2], [0.7, 0.8, 0.8]), "same": ([0.5, 0.8, 0.5], [0.7, 1.0, 0.7])}
    variance = {"gold": 0.36, "flat": 0.0081, "uneven": 0.2, "same": 0.5}

    def report(scale_flat=1.0):
        return {"rloo_steps": 60,
                "runs": [{"name": n, "seed": s, "gold_auc": a[s] * (scale_flat if n == "flat" else 1.0),
                          "gold_gain": 2 * a[s], "gold_auc_squashed": halves[n][0][s], "gold_auc_kept": halves[n][1][s]}
                         for n, a in aucs.items() for s in range(3)],
                "summary": {"per_rm": {n: {"whitened_variance_mean": {"mean": v}} for n, v in variance.items()}}}

    names, seeds = list(aucs), [0, 1, 2]
    zero = setting_row(report(), "adamw_beta0_none", "adamw", 0.0, "none", names, "gold", seeds)
    # gold: mean 0.7, sd 0.1, t_{0.975,2} 4.303 -> 0.7 ± 0.248
    assert ((zero["auc"]["gold"]["lower"], zero["auc"]["gold"]["upper"])
            == pytest.approx((0.7 - 0.2484, 0.7 + 0.2484), abs=1e-4))
    uneven = zero["ratio_to_reference"]["uneven"]
    assert uneven["ratio"]["estimate"] == pytest.approx(1.4 / 2.1) and uneven["verdict"] == "PASS"
    assert zero["ratio_to_reference"]["same"]["verdict"] == "INCONCLUSIVE"  # 0.7 vs 0.7 on average, noisy
    assert zero["ratio_by_group"]["uneven"]["squashed"]["estimate"] == pytest.approx(0.5 / 1.8)
    # beta > 0: flat 10% slower than gold at beta / c (c = sqrt(0.0081 / 0.36) = 0.15): the identity fails
    beta = setting_row(report(0.9), "adamw_beta0.05_none", "adamw", 0.05, "none", names, "gold", seeds)
    beta["beta_over_c"] = {"c": 0.15, "beta": 0.05 / 0.15, "gold_auc": aucs["gold"]}
    reports = {"adamw_beta0_none": report(), "adamw_beta0.05_none": report(0.9)}
    controls = judge_controls([zero, beta], reports, Controls(uniform="flat", uneven="uneven"), "gold", seeds)
    assert [(c["setting"], c["verdict"]) for c in controls] == [
        ("adamw_beta0_none", "PASS"), ("adamw_beta0_none", "PASS"), ("adamw_beta0.05_none", "FAIL"),
        ("adamw_beta0.05_none", "PASS")]
    text = regimes_markdown({"rewards": names, "reference": "gold", "seeds": seeds, "rloo_steps": 60,
                             "lr": {"adamw": 1e-4}, "settings": [zero, beta], "controls": controls,
                             "variance_under_policy": zero["variance"]})
    assert "| adamw | 0.05 | none |" in text and "`uneven` `squashed`" in text and "| FAIL |" in text
