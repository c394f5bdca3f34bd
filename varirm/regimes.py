"""``varirm regimes``: when does reward variance matter? RLOO against rewards that rank alike but
differ in variance, across the optimization settings practitioners choose.

Razin et al.'s Theorem 1 (time to gain grows as Var^(-1/3)) is for gradient flow. Under Adam a
reward multiplied by c gives nearly the same updates, so variance can act only through what is not
scale-free: the KL penalty (beta), sampling noise, advantage normalization (GRPO divides by each
prompt's reward std, which removes the scale within a prompt entirely), or a scale-sensitive
optimizer (SGD). This driver measures it instead of assuming it: for every setting in
``optimizers x betas x advantage_normalizations`` it runs :func:`varirm.verify.verify` with the
same rewards, seeds and RLOO budget, then tabulates each reward's gold gain (95% t interval over
seeds) and the paired ratio of each low-variance reward's gain to the reference's (gold's).
Outputs ``regimes.json`` and ``regimes.md`` in ``output_dir``, one verify report per setting below it.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Optional

from varirm.errors import ConfigError
from varirm.files import atomic_write_text
from varirm.stats import fmt, judge, paired, t_interval
from varirm.verify import PrepareStep, RewardModelSpec, verify


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
        prepare: Commands that build missing inputs (run before the first setting).
        max_length: Longest scored prompt + response in evaluation.
        device: Evaluation device.
        resume: Reuse finished settings and stages.
        overwrite: Replace existing per-setting reports.
    """
    seeds = seeds or [0, 1, 2]
    optimizers, betas = optimizers or ["adamw", "sgd"], betas if betas is not None else [0.0, 0.1]
    normalizations = advantage_normalizations or ["none", "group_std"]
    lr = lr or {}
    names = [spec.name for spec in reward_models]
    if reference not in names:
        raise ConfigError(f"reference {reference!r} is not among the rewards {names}")
    if any(spec.recipe is not None for spec in reward_models):
        raise ConfigError("regimes takes given rewards only (reward: ...), not recipes to train")
    missing = [o for o in optimizers if o not in lr]
    if missing:
        raise ConfigError(f"give a learning rate for every optimizer: lr has none for {missing}")
    rows = []
    for i, (opt, beta, norm) in enumerate(itertools.product(optimizers, betas, normalizations)):
        name = setting_name(opt, beta, norm)
        out = os.path.join(output_dir, name)
        if not (resume and os.path.exists(os.path.join(out, "report.json"))):
            verify(reward_models, rloo_recipe, policy, eval_samples, gold, output_dir=out, seeds=seeds,
                   rloo_overrides={**(rloo_overrides or {}), "model.init_args.optimizer": opt,
                                   "model.init_args.lr": lr[opt], "model.init_args.beta": beta,
                                   "model.init_args.advantage_normalization": norm},
                   prepare=prepare if i == 0 else None, max_length=max_length, device=device, resume=resume,
                   overwrite=overwrite, command=f"varirm regimes (setting {name})")
        with open(os.path.join(out, "report.json")) as f:
            report = json.load(f)
        rows.append(setting_row(report, name, opt, beta, norm, names, reference, seeds))
    table = {"reference": reference, "rewards": names, "seeds": seeds, "lr": lr, "rloo_recipe": rloo_recipe,
             "rloo_overrides": rloo_overrides or {}, "rloo_steps": rows[0]["rloo_steps"], "settings": rows,
             "variance_under_policy": {n: rows[0]["variance"][n] for n in names}}
    atomic_write_text(os.path.join(output_dir, "regimes.json"), json.dumps(table, indent=2))
    atomic_write_text(os.path.join(output_dir, "regimes.md"), render_markdown(table))
    print(render_markdown(table))
    return os.path.join(output_dir, "regimes.md")


def setting_row(report: dict, name: str, optimizer: str, beta: float, normalization: str, names: list[str],
                reference: str, seeds: list[int]) -> dict:
    """One setting: each reward's gold gain (t interval over seeds) and whitened variance under the
    policy, and each other reward's paired gain ratio to ``reference`` (judged against 1: MISS =
    the low-variance reward gains as much or more, PASS = it gains less, i.e. variance mattered)."""
    gains = {n: [next(r["gold_gain"] for r in report["runs"] if r["name"] == n and r["seed"] == s) for s in seeds]
             for n in names}
    ratios = {}
    for n in names:
        if n == reference:
            continue
        ratio = paired(gains[reference], gains[n])["ratio"]
        ratios[n] = {"ratio": ratio, **judge(ratio, 1.0, above=False)}
    return {"setting": name, "optimizer": optimizer, "beta": beta, "advantage_normalization": normalization,
            "rloo_steps": report["rloo_steps"], "gain": {n: t_interval(g) for n, g in gains.items()},
            "variance": {n: report["summary"]["per_rm"][n]["whitened_variance_mean"]["mean"] for n in names},
            "ratio_to_reference": ratios}


def render_markdown(table: dict) -> str:
    names, ref = table["rewards"], table["reference"]
    others = [n for n in names if n != ref]
    var = table["variance_under_policy"]
    lines = ["# When does reward variance matter? RLOO gold gain by optimization setting", "",
             "Rewards (whitened variance under the initial policy): " + ", ".join(f"`{n}` {var[n]:.3f}" for n in names)
             + f". They rank every within-prompt pair alike; only their variance differs. Seeds {table['seeds']}, "
             f"{table['rloo_steps']} RLOO steps per run, learning rates {table['lr']}. Gold gain: mean [95% t interval "
             f"over seeds]; ratio: gain / `{ref}`'s gain on the same seeds [95% paired bootstrap]. "
             "Verdict on 'the low-variance reward learns slower': PASS = the ratio's interval lies below 1, "
             "MISS = it lies above 1, INCONCLUSIVE = it contains 1.", "",
             "| optimizer | beta | advantages | " + " | ".join(f"gain `{n}`" for n in names) + " | "
             + " | ".join(f"`{n}` / `{ref}`" for n in others) + " |",
             "|---|---|---|" + "---|" * (len(names) + len(others))]
    for row in table["settings"]:
        cells = [fmt(row["gain"][n]) for n in names]
        for n in others:
            r = row["ratio_to_reference"][n]
            needed = f", ~{r['seeds_needed']} seeds" if r.get("seeds_needed") else ""
            cells.append(f"{fmt(r['ratio'], 2)} {r['verdict']}{needed}")
        lines.append(f"| {row['optimizer']} | {row['beta']:g} | {row['advantage_normalization']} | "
                     + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)
