import json
import math
import os

import pytest

from varirm.claims import across_policies, checks
from varirm.errors import ConfigError, VarirmError
from varirm.report import render_markdown, summarize
from varirm.stats import spearman
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
    with pytest.raises(VarirmError, match="fewer than 2 points"):
        curve_summary(curve[:1])


def _rows():
    # variance orders the gains exactly; off-policy accuracy runs against them
    table = {"a": (0.2, 0.9, 0.95, 0.05), "b": (0.5, 0.8, 0.9, 0.10), "c": (0.9, 0.7, 0.8, 0.30),
             "reg": (0.95, 0.7, 0.8, 0.40), "flat": (0.01, 1.0, 1.0, 0.01)}
    return [{"name": n, "seed": s, "whitened_variance_mean": v, "on_policy_acc": on, "off_policy_acc": off,
             "gold_gain": g + 0.01 * s, "proxy_gain": 1.0, "gold_auc": g / 2}
            for s in (0, 1) for n, (v, on, off, g) in table.items()]


def test_summary_and_checks_pass_and_miss_by_their_intervals():
    names = ["a", "b", "c", "reg", "flat"]
    rows = _rows()
    summary = summarize(rows, names, [0, 1])
    gain = summary["per_rm"]["c"]["gold_gain"]
    assert gain["mean"] == pytest.approx(0.305)
    assert gain["std"] == pytest.approx(0.01 / math.sqrt(2))
    # t interval over 2 seeds: 0.305 ± t_{0.975,1} (12.706) x 0.00707 / sqrt(2)
    assert (gain["lower"], gain["upper"]) == pytest.approx((0.305 - 12.706 * 0.005, 0.305 + 12.706 * 0.005))
    corr = summary["spearman_with_gold_gain"]
    assert corr["whitened_variance_mean"]["per_seed"] == pytest.approx([1.0, 1.0])
    assert corr["whitened_variance_mean"]["on_means_ci"]["lower"] == pytest.approx(1.0)  # ranks never change
    assert corr["off_policy_acc"]["on_means"] < 0
    result = checks(summary, "flat", ["a", "reg"], ["a", "b", "c", "reg"], rows, [0, 1])
    # "reg" raises variance and gain, but loses 0.2 on-policy accuracy (more than 2 points): MISS
    assert [c["verdict"] for c in result] == ["PASS", "PASS", "MISS"]
    assert {k: v["verdict"] for k, v in result[2]["parts"].items()} == {
        "variance": "PASS", "on_policy_acc": "MISS", "gold_gain": "PASS"}
    # ratio of means over the resampled seed pairs: 0.41/0.06 = 6.83 .. 0.40/0.05 = 8.00, estimate 0.405/0.055
    ratio = result[2]["intervals"]["ratio"]
    assert (ratio["estimate"], ratio["lower"], ratio["upper"]) == pytest.approx((0.405 / 0.055, 0.41 / 0.06, 8.0))
    # a regularized RM whose whole interval lies below 1.2x plain BT is a MISS
    # ~0.75x
    assert checks(summary, "flat", ["reg", "c"], ["a"], rows, [0, 1])[2]["parts"]["gold_gain"]["verdict"] == "MISS"
    # within 2 points of plain BT's on-policy accuracy: every part passes; one check per variant
    kept = [dict(r, on_policy_acc=0.895) if r["name"] == "reg" else r for r in rows]
    both = checks(summarize(kept, names, [0, 1]), None, ["a", "reg", "c"], ["a"], kept, [0, 1], on_policy_rm="b")
    assert [c["verdict"] for c in both] == ["PASS", "PASS", "MISS"]  # c loses 0.2 accuracy
    # (0.95 - 0.2) / (0.5 - 0.2): the regularizer overshoots b's variance level
    assert "250% of the gap to `b`'s 0.500" in both[1]["measured"]


def test_a_check_whose_interval_straddles_the_threshold_is_inconclusive_with_seeds_needed():
    plain, reg = [0.2, 0.2, 0.2, 0.2, 0.2], [0.1, 0.5, 0.2, 0.6, 0.3]  # ratio 1.7, but seed noise is large
    rows = [{"name": n, "seed": s, "whitened_variance_mean": v, "on_policy_acc": 0.8, "off_policy_acc": 0.8,
             "gold_gain": g, "proxy_gain": 1.0, "gold_auc": g}
            for n, v, gains in (("plain", 0.5, plain), ("reg", 0.9, reg))
            for s, g in enumerate(gains)]
    summary = summarize(rows, ["plain", "reg"], list(range(5)))
    check = checks(summary, None, ["plain", "reg"], ["plain", "reg"], rows, list(range(5)))[-1]
    ratio = check["intervals"]["ratio"]
    assert ratio["lower"] < 1.2 < ratio["upper"] and ratio["estimate"] == pytest.approx(1.7)
    assert check["verdict"] == "INCONCLUSIVE" and check["seeds_needed"] > 5


def _two_policy_runs(gains_b: dict[str, float]) -> list[dict]:
    """3 RMs x 2 seeds under policies pA and pB; under pA gains rank a > b > c, variance likewise."""
    gains_a, variance = {"a": 0.6, "b": 0.4, "c": 0.2}, {"a": 0.9, "b": 0.5, "c": 0.1}
    return [{"name": n, "seed": s, "policy": p, "whitened_variance_mean": variance[n] if p == "pA" else 1 - variance[n],
             "on_policy_acc": 0.8, "off_policy_acc": 0.8, "gold_gain": g[n] + 0.01 * s, "proxy_gain": 1.0,
             "gold_auc": g[n]} for p, g in (("pA", gains_a), ("pB", gains_b)) for n in gains_a for s in (0, 1)]


def test_across_policies_ranking_change_and_which_variance_predicts():
    names, seeds = ["a", "b", "c"], [0, 1]
    reversed_runs = _two_policy_runs({"a": 0.1, "b": 0.3, "c": 0.5})  # pB ranks c > b > a
    across = across_policies(reversed_runs, names, ["pA", "pB"], seeds)
    change = across["rank_agreement"][0]
    assert change["spearman"]["estimate"] == pytest.approx(-1.0, abs=1e-5) and change["verdict"] == "PASS"
    predicts = {(r["variance_under"], r["gain_under"]): r["spearman"]["estimate"]
                for r in across["variance_predicts_gain"]}
    # each policy's own variance (pB's is 1 - pA's here) ranks its own gains exactly; the other's backwards
    assert predicts == pytest.approx({("pA", "pA"): 1.0, ("pB", "pB"): 1.0, ("pA", "pB"): -1.0, ("pB", "pA"): -1.0},
                                     abs=1e-5)
    same = across_policies(_two_policy_runs({"a": 0.5, "b": 0.3, "c": 0.1}), names, ["pA", "pB"], seeds)
    assert same["rank_agreement"][0]["verdict"] == "MISS"  # every resample keeps the ranking


def test_verify_rejects_bad_sets_before_any_work(tmp_path):
    base = dict(rloo_recipe="r.yaml", policy="p", eval_samples="s.jsonl", gold="g", output_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="unique"):
        verify([RewardModelSpec("a", reward="g"), RewardModelSpec("a", reward="g")], **base)
    with pytest.raises(ConfigError, match="exactly one of recipe"):
        verify([RewardModelSpec("a", recipe="x.yaml", reward="g")], **base)
    with pytest.raises(ConfigError, match="not among the reward models"):
        verify([RewardModelSpec("a", reward="g")], compare=["a", "b"], **base)
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
    again = json.loads((out / "report.json").read_text())["summary"]
    assert json.dumps(again, sort_keys=True) == json.dumps(report["summary"], sort_keys=True)

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


def test_regimes_row_and_table_from_a_made_up_report():
    from varirm.regimes import render_markdown as regimes_markdown
    from varirm.regimes import setting_row

    gains = {"gold": [0.6, 0.7, 0.8], "flat": [0.2, 0.25, 0.3], "same": [0.6, 0.9, 0.6]}
    report = {"rloo_steps": 30,
              "runs": [{"name": n, "seed": s, "gold_gain": g[s]} for n, g in gains.items() for s in range(3)],
              "summary": {"per_rm": {n: {"whitened_variance_mean": {"mean": v}} for n, v in
                                     (("gold", 0.98), ("flat", 0.01), ("same", 0.5))}}}
    row = setting_row(report, "adamw_beta0.1_none", "adamw", 0.1, "none", ["gold", "flat", "same"], "gold", [0, 1, 2])
    # gold: mean 0.7, sd 0.1, t_{0.975,2} 4.303 -> 0.7 ± 0.248
    assert ((row["gain"]["gold"]["lower"], row["gain"]["gold"]["upper"])
            == pytest.approx((0.7 - 0.2484, 0.7 + 0.2484), abs=1e-4))
    flat = row["ratio_to_reference"]["flat"]
    # gains less: variance mattered
    assert flat["ratio"]["estimate"] == pytest.approx(0.25 / 0.7) and flat["verdict"] == "PASS"
    assert row["ratio_to_reference"]["same"]["verdict"] == "INCONCLUSIVE"  # 0.7 vs 0.7 on average, noisy
    text = regimes_markdown({"rewards": ["gold", "flat", "same"], "reference": "gold", "seeds": [0, 1, 2],
                             "rloo_steps": 30, "lr": {"adamw": 5e-4}, "settings": [row],
                             "variance_under_policy": row["variance"]})
    assert "| adamw | 0.1 | none |" in text and "PASS" in text and "INCONCLUSIVE" in text
