"""``varirm regimes``: when does reward variance matter? RLOO against rewards that rank alike but
differ in variance, across the optimization settings practitioners choose.

Razin et al.'s Theorem 1 (time to gain grows as Var^(-1/3)) is for gradient flow. Under Adam a
reward multiplied by c gives nearly the same updates, so variance can act only through what is not
scale-free: the KL penalty (beta), sampling noise, advantage normalization (GRPO divides by each
prompt's reward std, which removes the scale within a prompt entirely), or a scale-sensitive
optimizer (SGD). This driver measures it instead of assuming it: for every setting in
``optimizers x betas x advantage_normalizations`` it runs :func:`varirm.verify.verify` with the
same rewards, seeds and RLOO budget, then tabulates each reward's gold AUC (the average gold gain
over the run; 95% t interval over seeds) and the paired ratio of each low-variance reward's AUC to
the reference's (gold's), per group of prompts too (the uneven reward squashes one half), and
judges the controls (:class:`Controls`) whose outcome the maths fixes before any run. Outputs
``regimes.json`` and ``regimes.md`` in ``output_dir``, one verify report per setting below it.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Optional

from varirm.errors import ConfigError
from varirm.files import atomic_write_text
from varirm.report import curve_groups
from varirm.stats import fmt, judge, per_seed, t_interval, versus_baseline
from varirm.verify import PrepareStep, RewardModelSpec, verify

OUTCOME = "gold_auc"
IDENTITY_TOLERANCE = 0.02  # an identity holds when the paired ratio's estimate is within 2% of 1


@dataclass
class Controls:
    """Controls whose outcome is fixed by the maths before any run (a failed one means a bug):

    - *identity*: under Adam with beta 0, a reward that is gold times one factor ``c`` on every
      prompt (``uniform``) gives leave-one-out advantages ``c`` times gold's, which Adam's update
      does not see: its gold AUC / gold's = 1.00 (within 2%).
    - *beta over c*: under Adam with beta > 0, ``uniform`` at beta equals gold at ``beta / c``
      (the penalized advantages are ``c (A_gold - (beta / c) KL)``): run here, ``c`` from the
      measured whitened variances (``c^2`` = their ratio); AUC ratio 1.00 (within 2%).
    - *squashed half*: under Adam without advantage normalization, the ``uneven`` reward (gold
      times a small factor on the prompts of group ``group``) teaches its squashed half slower:
      its gold AUC there / gold's lies below 1.

    Args:
        uniform: Name of the uniformly squashed reward.
        uneven: Name of the unevenly squashed reward.
        group: The ``PolicyEvaluation`` group of prompts the uneven reward squashes.
    """

    uniform: Optional[str] = None
    uneven: Optional[str] = None
    group: str = "squashed"


def setting_name(optimizer: str, beta: float, normalization: str) -> str:
    """``adamw_beta0.1_none``: the directory and row name of one setting."""
    return f"{optimizer}_beta{beta:g}_{normalization}"


def regimes(
    reward_models: list[RewardModelSpec],
    rloo_recipe: str,
    policy: str,
    eval_samples: str,
    gold: str,
    reference: str = "gold",
    output_dir: str = "runs/regimes",
    seeds: Optional[list[int]] = None,
    optimizers: Optional[list[str]] = None,
    lr: Optional[dict] = None,
    betas: Optional[list[float]] = None,
    advantage_normalizations: Optional[list[str]] = None,
    rloo_overrides: Optional[dict] = None,  # plain dict: class_path values stay recipe text
    controls: Optional[Controls] = None,
    prepare: Optional[list[PrepareStep]] = None,
    max_length: int = 1024,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
) -> str:
    """Run RLOO against each reward under every optimization setting and tabulate the gains.

    Args:
        reward_models: Rewards that rank alike with different variance (e.g. gold and its
            squashings); given ones only (``reward``), nothing is trained.
        rloo_recipe: ``varirm rloo`` recipe shared by every run (with a PolicyEvaluation callback).
        policy: The initial policy.
        eval_samples: Samples file of the policy (variance of each reward under it).
        gold: Gold reward (dotted path or RM).
        reference: The reward the others' gains are divided by (the highest-variance one).
        output_dir: Where ``regimes.json``/``regimes.md`` and one verify report per setting go.
        seeds: Seeds of every setting (paired across rewards).
        optimizers: Any of ``adamw``, ``sgd``.
        lr: Learning rate per optimizer, e.g. ``{adamw: 0.0005, sgd: 0.5}`` (SGD needs a much larger one).
        betas: KL penalty coefficients.
        advantage_normalizations: Any of ``none``, ``group_std``.
        rloo_overrides: RLOO recipe values changed for every run (dotted keys).
        controls: The controls to judge (:class:`Controls`); the beta-over-c one runs gold once more
            per Adam setting with beta > 0.
        prepare: Commands that build missing inputs (run before the first setting).
        max_length: Longest scored prompt + response in evaluation.
        device: Evaluation device.
        resume: Reuse finished settings and stages.
        overwrite: Replace existing per-setting reports.
    """
    seeds = seeds or [0, 1, 2]
    optimizers, betas = optimizers or ["adamw", "sgd"], betas if betas is not None else [0.0, 0.1]
    normalizations = advantage_normalizations or ["none", "group_std"]
    lr, controls = lr or {}, controls or Controls()
    names = [spec.name for spec in reward_models]
    check_rewards(reward_models, names, reference, optimizers, lr, controls)
    rows, reports = [], {}
    common = dict(max_length=max_length, device=device, resume=resume, overwrite=overwrite)
    for i, (opt, beta, norm) in enumerate(itertools.product(optimizers, betas, normalizations)):
        name = setting_name(opt, beta, norm)
        overrides = {**(rloo_overrides or {}), "model.init_args.optimizer": opt, "model.init_args.lr": lr[opt],
                     "model.init_args.beta": beta, "model.init_args.advantage_normalization": norm}
        reports[name] = _setting_report(os.path.join(output_dir, name), reward_models, rloo_recipe, policy,
                                        eval_samples, gold, seeds, overrides, prepare if i == 0 else None,
                                        f"varirm regimes (setting {name})", **common)
        row = setting_row(reports[name], name, opt, beta, norm, names, reference, seeds)
        if controls.uniform and opt == "adamw" and beta > 0:  # the beta-over-c control's gold run
            spec = next(s for s in reward_models if s.name == reference)
            row["beta_over_c"] = _beta_over_c(row, spec, controls.uniform, os.path.join(output_dir, name), rloo_recipe,
                                              policy, eval_samples, gold, seeds, overrides, common)
        rows.append(row)
    table = {"reference": reference, "rewards": names, "seeds": seeds, "lr": lr, "rloo_recipe": rloo_recipe,
             "rloo_overrides": rloo_overrides or {}, "rloo_steps": rows[0]["rloo_steps"], "settings": rows,
             "variance_under_policy": {n: rows[0]["variance"][n] for n in names},
             "controls": judge_controls(rows, reports, controls, reference, seeds)}
    atomic_write_text(os.path.join(output_dir, "regimes.json"), json.dumps(table, indent=2))
    atomic_write_text(os.path.join(output_dir, "regimes.md"), render_markdown(table))
    print(render_markdown(table))
    return os.path.join(output_dir, "regimes.md")


def check_rewards(reward_models: list[RewardModelSpec], names: list[str], reference: str, optimizers: list[str],
                  lr: dict, controls: Controls) -> None:
    if reference not in names:
        raise ConfigError(f"reference {reference!r} is not among the rewards {names}")
    if any(spec.recipe is not None for spec in reward_models):
        raise ConfigError("regimes takes given rewards only (reward: ...), not recipes to train")
    missing = [o for o in optimizers if o not in lr]
    if missing:
        raise ConfigError(f"give a learning rate for every optimizer: lr has none for {missing}")
    for what in ("uniform", "uneven"):
        if getattr(controls, what) is not None and getattr(controls, what) not in names:
            raise ConfigError(f"controls.{what} names {getattr(controls, what)!r}, not among the rewards {names}")


def _setting_report(out: str, reward_models: list[RewardModelSpec], rloo_recipe: str, policy: str, eval_samples: str,
                    gold: str, seeds: list[int], overrides: dict, prepare: Optional[list[PrepareStep]], command: str,
                    max_length: int, device: str, resume: bool, overwrite: bool) -> dict:
    """One setting's verify report (run unless a finished one is resumed)."""
    if not (resume and os.path.exists(os.path.join(out, "report.json"))):
        verify(reward_models, rloo_recipe, policy, eval_samples, gold, output_dir=out, seeds=seeds,
               rloo_overrides=overrides, prepare=prepare, max_length=max_length, device=device, resume=resume,
               overwrite=overwrite, command=command)
    with open(os.path.join(out, "report.json")) as f:
        return json.load(f)


def _beta_over_c(row: dict, spec: RewardModelSpec, uniform: str, out: str, rloo_recipe: str, policy: str,
                 eval_samples: str, gold: str, seeds: list[int], overrides: dict, common: dict) -> dict:
    """The beta-over-c control's run: the reference reward at ``beta / c``, ``c`` = sqrt(ratio of
    the uniform reward's whitened variance to the reference's); its gold AUC per seed."""
    c = math.sqrt(row["variance"][uniform] / row["variance"][spec.name])
    beta = row["beta"] / c
    control = [RewardModelSpec(f"{spec.name}_beta_over_c", reward=spec.reward)]
    scaled = _setting_report(f"{out}_{spec.name}_beta_over_c", control, rloo_recipe, policy, eval_samples, gold, seeds,
                             {**overrides, "model.init_args.beta": beta}, None,
                             f"varirm regimes (control: {spec.name} at beta / c, setting {row['setting']})", **common)
    return {"c": c, "beta": beta, OUTCOME: per_seed(scaled["runs"], f"{spec.name}_beta_over_c", seeds, OUTCOME)}


def setting_row(report: dict, name: str, optimizer: str, beta: float, normalization: str, names: list[str],
                reference: str, seeds: list[int]) -> dict:
    """One setting: each reward's gold AUC and gain (t interval over seeds) and whitened variance
    under the policy, and each other reward's paired AUC ratio to ``reference`` (judged against 1:
    MISS = the low-variance reward gains as much or more, PASS = it gains less, i.e. variance
    mattered), overall and per group of prompts when the runs have groups."""
    runs = report["runs"]
    groups = curve_groups(runs)
    ratios, by_group = {}, {}
    for n in names:
        if n == reference:
            continue
        cmp = versus_baseline(per_seed(runs, reference, seeds, OUTCOME), per_seed(runs, n, seeds, OUTCOME))
        ratios[n] = {"ratio": cmp, **judge(cmp, cmp["neutral"], above=False)}
        by_group[n] = {g: versus_baseline(per_seed(runs, reference, seeds, f"{OUTCOME}_{g}"),
                                          per_seed(runs, n, seeds, f"{OUTCOME}_{g}")) for g in groups}
    return {"setting": name, "optimizer": optimizer, "beta": beta, "advantage_normalization": normalization,
            "rloo_steps": report["rloo_steps"],
            "auc": {n: t_interval(per_seed(runs, n, seeds, OUTCOME)) for n in names},
            "gain": {n: t_interval(per_seed(runs, n, seeds, "gold_gain")) for n in names},
            "variance": {n: report["summary"]["per_rm"][n]["whitened_variance_mean"]["mean"] for n in names},
            "ratio_to_reference": ratios, "ratio_by_group": by_group}


def judge_controls(rows: list[dict], reports: dict[str, dict], controls: Controls, reference: str,
                   seeds: list[int]) -> list[dict[str, Any]]:
    """Each control of :class:`Controls` that the settings allow, with its prediction, what was
    measured, and PASS/FAIL."""
    out = []
    for row in rows:
        if row["optimizer"] != "adamw":
            continue
        setting = row["setting"]
        aucs = {n: per_seed(reports[setting]["runs"], n, seeds, OUTCOME) for n in row["auc"]}
        if controls.uniform and row["beta"] == 0:
            ratio = row["ratio_to_reference"][controls.uniform]["ratio"]
            out.append(_identity(setting, f"`{controls.uniform}` / `{reference}` gold AUC = 1.00 (Adam does not see a "
                                 "uniform reward scale)", ratio))
        if controls.uniform and "beta_over_c" in row:
            scaled = row["beta_over_c"]
            cmp = versus_baseline(scaled[OUTCOME], aucs[controls.uniform])
            out.append(_identity(setting, f"`{controls.uniform}` at beta {row['beta']:g} / `{reference}` at beta / c = "
                                 f"{scaled['beta']:.3g} (c = {scaled['c']:.3f}) gold AUC = 1.00", cmp))
        if controls.uneven and row["advantage_normalization"] == "none":
            cmp = row["ratio_by_group"][controls.uneven].get(controls.group)
            if cmp is not None:
                verdict = judge(cmp, cmp["neutral"], above=False)["verdict"]
                out.append({"setting": setting, "prediction": f"`{controls.uneven}` teaches its `{controls.group}` "
                            f"half slower than `{reference}`: AUC ratio there below 1", "measured": fmt(cmp, 3),
                            "verdict": "PASS" if verdict == "PASS" else "FAIL"})
    return out


def _identity(setting: str, prediction: str, ratio: dict) -> dict[str, Any]:
    ok = ratio["estimate"] == ratio["estimate"] and abs(ratio["estimate"] - 1.0) <= IDENTITY_TOLERANCE
    return {"setting": setting, "prediction": prediction + f" (within {IDENTITY_TOLERANCE:.0%})",
            "measured": fmt(ratio, 3), "verdict": "PASS" if ok else "FAIL"}


def render_markdown(table: dict) -> str:
    names, ref = table["rewards"], table["reference"]
    others = [n for n in names if n != ref]
    var = table["variance_under_policy"]
    lines = ["# When does reward variance matter? RLOO gold AUC by optimization setting", "",
             "Rewards (whitened variance under the initial policy): " + ", ".join(f"`{n}` {var[n]:.3f}" for n in names)
             + f". They rank every within-prompt pair alike; only their variance differs. Seeds {table['seeds']}, "
             f"{table['rloo_steps']} RLOO steps per run, learning rates {table['lr']}. Gold AUC: the average gold gain "
             "over the run, mean [95% t interval over seeds]; ratio: AUC / "
             f"`{ref}`'s on the same seeds [95% paired interval]. Verdict on 'the low-variance reward learns "
             "slower': PASS = the ratio's interval lies below 1, MISS = it lies above 1, INCONCLUSIVE = it "
             "contains 1.", "",
             "| optimizer | beta | advantages | " + " | ".join(f"AUC `{n}`" for n in names) + " | "
             + " | ".join(f"`{n}` / `{ref}`" for n in others) + " |",
             "|---|---|---|" + "---|" * (len(names) + len(others))]
    for row in table["settings"]:
        cells = [fmt(row["auc"][n]) for n in names]
        for n in others:
            r = row["ratio_to_reference"][n]
            needed = f", ~{r['seeds_needed']} seeds" if r.get("seeds_needed") else ""
            cells.append(f"{fmt(r['ratio'], 2)} {r['verdict']}{needed}")
        lines.append(f"| {row['optimizer']} | {row['beta']:g} | {row['advantage_normalization']} | "
                     + " | ".join(cells) + " |")
    grouped = [(n, g) for n in others for g in table["settings"][0].get("ratio_by_group", {}).get(n, {})]
    if grouped:
        lines += ["", "AUC ratio to `" + ref + "` per group of held-out prompts [95% paired interval]:", "",
                  "| optimizer | beta | advantages | " + " | ".join(f"`{n}` `{g}`" for n, g in grouped) + " |",
                  "|---|---|---|" + "---|" * len(grouped)]
        for row in table["settings"]:
            lines.append(f"| {row['optimizer']} | {row['beta']:g} | {row['advantage_normalization']} | "
                         + " | ".join(fmt(row["ratio_by_group"][n][g], 2) for n, g in grouped) + " |")
    if table.get("controls"):
        lines += ["", "Controls (predicted before the runs; a FAIL means a bug to find before reading the rest):", "",
                  "| setting | prediction | measured | verdict |", "|---|---|---|---|"]
        lines += [f"| {c['setting']} | {c['prediction']} | {c['measured']} | {c['verdict']} |"
                  for c in table["controls"]]
    lines.append("")
    return "\n".join(lines)
