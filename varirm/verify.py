"""``varirm verify``: verify reward models by how fast RLOO against each raises the gold reward.

Razin et al. 2025 (arXiv 2503.15477) judge an RM as a teacher: train a policy against it and
watch the true (gold) reward. :func:`verify` runs three stages, for every RM of a set and every seed:

1. :func:`get_reward_models`: trains the RM (:func:`varirm.jobs.train_rm` with a recipe and
   overrides) or takes a given one (a checkpoint, directory, Hub id or reward function such as the
   gold reward itself);
2. :func:`evaluate_reward_models`: evaluates it under each initial policy with
   :func:`varirm.evaluate.evaluate`: whitened per-prompt reward variance, on-policy accuracy
   against gold, off-policy accuracy on test pairs;
3. :func:`run_rloo`: RLOO from the initial policy against it (:func:`varirm.jobs.rloo`: same
   recipe, seed and budget for every RM; the RM's normalization is the shift/scale measured in
   stage 2), with a :class:`varirm.callbacks.PolicyEvaluation` callback that records the gold
   reward on held-out prompts;

then writes ``report.json``, ``report.md`` and plots into the output directory: per RM the mean
and spread over seeds of variance, accuracies, gold and proxy reward gain and area under the gold
curve; Spearman correlations of the gold gain with variance and with each accuracy
(:mod:`varirm.report`); and checks of the paper's claims (:mod:`varirm.claims`). Data flow per
(RM, seed): ``rms/<name>/seed<s>`` (checkpoint) -> ``eval/<name>/seed<s>/metrics.json`` ->
``rloo/<name>/seed<s>/policy_eval.json`` -> report.

Each finished stage leaves its output (``done.json`` written last); ``--resume true`` reuses them
after an interruption at any point: a half-done Lightning prepare step resumes from its last
checkpoint, a half-done RM, evaluation or RLOO run is redone from its start with the same seed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from argparse import ArgumentError
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, Optional, Union

from varirm import jobs
from varirm.claims import across_policies, checks
from varirm.errors import ConfigError, VarirmError
from varirm.files import atomic_write_text
from varirm.report import METRICS, curve_summary, render_markdown, summarize, write_report
from varirm.sampling import read_samples, resolve_device
from varirm.teacher import PREDICTORS, teacher_transfer

QUIET = {"trainer.enable_progress_bar": False, "trainer.enable_model_summary": False}


@dataclass
class RewardModelSpec:
    """One reward model of the verification set.

    Args:
        name: Short name used in paths and the report.
        recipe: ``varirm fit`` recipe that trains it (with ``overrides``); or give ``reward``.
        overrides: Recipe values to change, dotted key -> value, e.g.
            ``{data.init_args.on_policy_fraction: 0.25}``.
        reward: An existing RM, not trained here: a ``.ckpt``, a directory, a Hub id, or the
            dotted path of a reward function ``(prompt, response) -> float``.
        description: One line for the report.
    """

    name: str
    recipe: Optional[str] = None
    overrides: dict = field(default_factory=dict)  # plain dict: jsonargparse would instantiate class_path values
    reward: Optional[str] = None
    description: str = ""


@dataclass
class PrepareStep:
    """A job that builds an input of the verification when it is missing.

    Args:
        creates: The file the job writes; the job is skipped when it exists.
        job: The job's name (a ``varirm`` command: ``make-tiny-model``, ``make-synthetic``, ``sft``,
            ``sample``, ...; :data:`varirm.jobs.JOBS`).
        args: Its arguments, e.g. ``{output: DIR}``; a Lightning job (``fit``, ``sft``, ``rloo``)
            takes ``recipe`` and ``overrides`` (dotted keys).
    """

    creates: str
    job: str
    args: dict = field(default_factory=dict)  # plain dict: jsonargparse would instantiate class_path values


class Policy(NamedTuple):
    """An initial policy: its name in paths and the report, its path, and its samples file."""

    name: str
    path: str
    samples: str


def _done(path: str) -> bool:
    return os.path.exists(os.path.join(path, "done.json"))


def _mark_done(path: str, info: dict[str, Any], t0: float) -> None:
    """Marks a stage's output finished, with the seconds it took (a resumed run reports them again)."""
    atomic_write_text(os.path.join(path, "done.json"), json.dumps({**info, "seconds": time.time() - t0}, indent=2))


def _seconds(path: str, t0: float) -> float:
    """Seconds the stage in ``path`` took: as recorded when it finished (also in an earlier run), else since ``t0``."""
    recorded = None
    if _done(path):
        with open(os.path.join(path, "done.json")) as f:
            recorded = json.load(f).get("seconds")
    return time.time() - t0 if recorded is None else recorded


def verify(
    reward_models: list[RewardModelSpec],
    rloo_recipe: str,
    policy: Union[str, list[str]],
    eval_samples: Union[str, list[str]],
    gold: str,
    output_dir: str = "runs/verify",
    test_pairs: Optional[str] = None,
    test_split: str = "test",
    seeds: Optional[list[int]] = None,
    rloo_overrides: Optional[dict] = None,  # plain dict: class_path values stay recipe text
    prepare: Optional[list[PrepareStep]] = None,
    compare: Optional[list[str]] = None,
    low_variance: Optional[str] = None,
    on_policy_rm: Optional[str] = None,
    reference: Optional[str] = None,
    budgets: Optional[list[list[str]]] = None,
    off_policy_rm: Optional[str] = None,
    max_length: int = 1024,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    command: Optional[str] = None,
) -> str:
    """Train (or take) RMs, evaluate each under the initial policy, RLOO against each (one seed and budget), report.

    Args:
        reward_models: The RMs to verify (see :class:`RewardModelSpec`).
        rloo_recipe: ``varirm rloo`` recipe shared by every run; it must have a
            ``varirm.callbacks.PolicyEvaluation`` callback (the gold curve) and ``gold`` is set here.
        policy: The initial policy (causal LM directory or Hub id) RLOO starts from, or a list of
            them (Razin et al.'s Theorem 3: the same RM can teach one policy well and another
            badly): every RM is then evaluated under, and RLOO run from, each policy, with runs
            under ``eval/<policy name>/`` and ``rloo/<policy name>/`` (the name is the path's last part).
        eval_samples: Samples file of that policy (``varirm sample``, k >= 2) for the variance and
            on-policy accuracy of each RM; a list, one per policy, when ``policy`` is a list.
        gold: Gold reward: dotted path of a function or an RM directory / Hub id.
        output_dir: Report directory (with every run inside).
        test_pairs: Preference test set for off-policy accuracy (a Hub dataset id: split ``test_split``).
        test_split: Split of ``test_pairs``.
        seeds: Seeds (default ``[0]``): each RM is trained and RLOO is run once per seed.
        rloo_overrides: ``varirm rloo`` recipe values to change for every run (dotted keys).
        prepare: Jobs that build missing inputs (:class:`PrepareStep`), run first, in order.
        compare: ``[plain, regularized, ...]``: names of plain BT and of one or more BT + variance
            regularizer variants trained on the same pairs, one check per variant
            (:func:`varirm.claims.regularizer_beats_plain`).
        on_policy_rm: The RM trained on on-policy pairs: the regularizer's variance level, Theorem 2's RM.
        low_variance: Name of the perfectly accurate, low-variance RM, for Theorems 1 and 2.
        reference: Name of the RM that is the gold reward itself, for Theorem 1.
        budgets: Per label budget ``[plain BT on the labelled pairs, objective, ...]``, each objective
            checked against that plain BT (:func:`varirm.claims.objective_beats_pairs`).
        off_policy_rm: The off-policy RM, checked against ``on_policy_rm`` (:mod:`varirm.claims`).
        max_length: Longest scored prompt + response in evaluation.
        device: ``auto``, ``cpu`` or ``cuda`` for evaluation.
        resume: Reuse the stages an interrupted verification of this directory finished.
        overwrite: Delete an existing output directory first.
        command: How this verification was run, for the report (the CLI sets it).
    """
    seeds, rloo_overrides = seeds or [0], rloo_overrides or {}
    specs = [s if isinstance(s, RewardModelSpec) else RewardModelSpec(**s) for s in reward_models]
    check_set(specs, compare, low_variance, on_policy_rm, reference, budgets, off_policy_rm)
    policies = initial_policies(policy, eval_samples)
    start_output_dir(output_dir, resume, overwrite)
    start, times, device = time.time(), {}, resolve_device(device)
    prepare_inputs([s if isinstance(s, PrepareStep) else PrepareStep(**s) for s in prepare or []])
    shapes = [samples_shape(p.samples) for p in policies]  # a bad file fails before any training
    # the three stages: get every RM, evaluate each under each policy, run RLOO against each
    rms = get_reward_models(specs, seeds, output_dir, times)
    metrics = evaluate_reward_models(rms, policies, gold, test_pairs, test_split, max_length, device, output_dir,
                                     times)
    curves = run_rloo(rms, metrics, policies, rloo_recipe, rloo_overrides, gold, output_dir, times)
    runs = [run_row(spec.name, seed, p.name, rms[spec.name, seed], metrics[p.name, spec.name, seed],
                    curves[p.name, spec.name, seed])
            for seed in seeds for spec in specs for p in policies]
    report = build_report(specs, policies, shapes, runs, seeds, gold, test_pairs, rloo_recipe, rloo_overrides,
                          compare, low_variance, on_policy_rm, command, device, reference, budgets, off_policy_rm)
    report.update(timings=timings(times, specs, seeds, policies), seconds=time.time() - start)
    path = write_report(report, output_dir)
    print(render_markdown(report))
    return path


def check_set(specs: list[RewardModelSpec], compare: Optional[list[str]], low_variance: Optional[str],
              on_policy_rm: Optional[str], reference: Optional[str] = None,
              budgets: Optional[list[list[str]]] = None, off_policy_rm: Optional[str] = None) -> None:
    """Unique names, each RM trained or given, and every name the checks use among them."""
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"reward model names must be unique: {names}")
    for spec in specs:
        if (spec.recipe is None) == (spec.reward is None):
            raise ConfigError(f"reward model {spec.name!r}: give exactly one of recipe (to train it) or reward")
    for ref, what in ([(n, "compare") for n in compare or []] + [(n, "budgets") for b in budgets or [] for n in b]
                      + [(low_variance, "low_variance"), (on_policy_rm, "on_policy_rm"), (reference, "reference"),
                         (off_policy_rm, "off_policy_rm")]):
        if ref is not None and ref not in names:
            raise ConfigError(f"{what} names {ref!r}, which is not among the reward models {names}")
    if off_policy_rm is not None and on_policy_rm is None:
        raise ConfigError(f"off_policy_rm ({off_policy_rm!r}) is checked against on_policy_rm: name that RM too")
    if compare is not None and len(compare) < 2:
        raise ConfigError(f"compare takes [plain, regularized, ...], got {compare}")
    if any(len(b) < 2 for b in budgets or []):
        raise ConfigError(f"budgets takes one [plain, objective, ...] list per label budget, got {budgets}")


def initial_policies(policy: Union[str, list[str]], eval_samples: Union[str, list[str]]) -> list[Policy]:
    """The initial policies with their samples files; a policy's name is its path's last part."""
    paths = [policy] if isinstance(policy, str) else list(policy)
    samples = [eval_samples] if isinstance(eval_samples, str) else list(eval_samples)
    if len(paths) != len(samples) or not paths:
        raise ConfigError(f"give one eval_samples file per policy: {len(paths)} policies, {len(samples)} files")
    names = [os.path.basename(p.rstrip("/")) for p in paths]
    if len(set(names)) != len(names):
        raise ConfigError(f"policies need distinct last path parts (their names in the report): {names}")
    return [Policy(*entry) for entry in zip(names, paths, samples)]


def start_output_dir(output_dir: str, resume: bool, overwrite: bool) -> None:
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not resume:
        if not overwrite:
            raise VarirmError(f"{output_dir} already exists; pass --overwrite true to replace it or --resume true to "
                              "finish an interrupted verification")
        shutil.rmtree(output_dir)
    os.makedirs(output_dir, exist_ok=True)


def prepare_inputs(steps: list[PrepareStep]) -> None:
    """Run each step whose file is missing, in order; an interrupted Lightning job resumes from its
    last checkpoint."""
    for step in steps:
        if os.path.exists(step.creates):
            continue
        if step.job not in jobs.JOBS:
            raise ConfigError(f"prepare step for {step.creates}: no job {step.job!r} (jobs: {sorted(jobs.JOBS)})")
        args = dict(step.args)
        if step.job in jobs.LIGHTNING_JOBS:
            args.setdefault("ckpt_path", "last")
        else:  # checked and converted as the command line does; `config`: arguments from a YAML file
            try:
                args = jobs.function_arguments(jobs.JOBS[step.job], {**jobs.load_recipe(args.pop("config", {})),
                                                                     **args})
            except ArgumentError as e:
                raise ConfigError(f"prepare step for {step.creates}: {step.job}: {' '.join(str(e).split())}") from None
        print(f"verify: prepare {step.creates}: varirm {step.job} ...", flush=True)
        jobs.JOBS[step.job](**args)


def samples_shape(path: str) -> tuple[int, int]:
    """Prompts and samples per prompt of a samples file (read whole, so a bad file fails here)."""
    rows = read_samples(path)
    return len(rows), len(rows[0]["responses"])


def _run_dir(output_dir: str, stage: str, policy: Policy, multi: bool, name: str, seed: int) -> str:
    return os.path.join(output_dir, stage, *([policy.name] if multi else []), name, f"seed{seed}")


def get_reward_models(specs: list[RewardModelSpec], seeds: list[int], output_dir: str,
                      times: dict) -> dict[tuple[str, int], str]:
    """Stage 1: ``(name, seed) -> RM`` (a checkpoint trained here under ``rms/<name>/seed<s>``, or the
    given reward)."""
    rms = {}
    for seed in seeds:
        for spec in specs:
            t0, rm_dir = time.time(), os.path.join(output_dir, "rms", spec.name, f"seed{seed}")
            rms[spec.name, seed] = spec.reward
            if spec.recipe is not None:
                rms[spec.name, seed] = os.path.join(rm_dir, "checkpoints", "last.ckpt")
                if not _done(rm_dir):
                    shutil.rmtree(rm_dir, ignore_errors=True)
                    jobs.train_rm(spec.recipe, {**spec.overrides, "seed_everything": seed, "data.init_args.seed": seed,
                                                "trainer.default_root_dir": rm_dir, **QUIET})
                    _mark_done(rm_dir, {"checkpoint": rms[spec.name, seed]}, t0)
            times["train_rm_s", spec.name, seed] = _seconds(rm_dir, t0)  # a given reward has no rm_dir
    return rms


def evaluate_reward_models(rms: dict[tuple[str, int], str], policies: list[Policy], gold: str,
                           test_pairs: Optional[str], test_split: str, max_length: int, device: str, output_dir: str,
                           times: dict) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Stage 2: ``(policy, name, seed) -> metrics`` of :func:`varirm.evaluate.evaluate` (variance,
    accuracies, the shift/scale RLOO normalizes with) under ``eval/[<policy>/]<name>/seed<s>``."""
    out = {}
    for (name, seed), rm in rms.items():
        for p in policies:
            eval_dir, t0 = _run_dir(output_dir, "eval", p, len(policies) > 1, name, seed), time.time()
            if _done(eval_dir):
                with open(os.path.join(eval_dir, "metrics.json")) as f:
                    out[p.name, name, seed] = json.load(f)
            else:
                out[p.name, name, seed] = jobs.evaluate(rm, eval_dir, samples=p.samples, policy=p.path, gold=gold,
                                                        pairs=test_pairs, pairs_split=test_split, max_length=max_length,
                                                        device=device, plots=False, overwrite=True,
                                                        policy_weighted=True)
                _mark_done(eval_dir, {"rm": rm}, t0)
            times["evaluate_s", p.name, name, seed] = _seconds(eval_dir, t0)
    return out


def run_rloo(rms: dict[tuple[str, int], str], metrics: dict[tuple[str, str, int], dict[str, Any]],
             policies: list[Policy], rloo_recipe: str, rloo_overrides: dict, gold: str, output_dir: str,
             times: dict) -> dict[tuple[str, str, int], list[dict[str, float]]]:
    """Stage 3: ``(policy, name, seed) -> gold curve``: RLOO from the policy against the RM, same
    recipe, seed and budget for every RM, rewards normalized by the shift/scale of stage 2, under
    ``rloo/[<policy>/]<name>/seed<s>``."""
    out = {}
    for (name, seed), rm in rms.items():
        for p in policies:
            rloo_dir, t0 = _run_dir(output_dir, "rloo", p, len(policies) > 1, name, seed), time.time()
            if not _done(rloo_dir):
                shutil.rmtree(rloo_dir, ignore_errors=True)
                m = metrics[p.name, name, seed]
                jobs.rloo(rloo_recipe, {**rloo_overrides, "model.init_args.policy_name_or_path": p.path,
                                        "model.init_args.reward_model": rm, "model.init_args.gold": gold,
                                        "model.init_args.reward_shift": m["shift"],
                                        "model.init_args.reward_scale": m["scale"], "model.init_args.seed": seed,
                                        "seed_everything": seed, "data.init_args.seed": seed,
                                        "trainer.default_root_dir": rloo_dir, **QUIET})
                if not os.path.exists(os.path.join(rloo_dir, "policy_eval.json")):
                    raise ConfigError(f"{rloo_recipe}: no policy_eval.json was written; the recipe needs a "
                                      "varirm.callbacks.PolicyEvaluation callback under trainer.callbacks")
                _mark_done(rloo_dir, {"rm": rm}, t0)
            with open(os.path.join(rloo_dir, "policy_eval.json")) as f:
                out[p.name, name, seed] = json.load(f)["curve"]
            times["rloo_s", p.name, name, seed] = _seconds(rloo_dir, t0)
    return out


def run_row(name: str, seed: int, policy: str, rm: str, metrics: dict[str, Any],
            curve: list[dict[str, float]]) -> dict[str, Any]:
    """One run of the report: the RM's evaluation under the policy and the gains of its RLOO run."""
    return {"name": name, "seed": seed, "policy": policy, "rm": rm, "shift": metrics["shift"],
            "scale": metrics["scale"], **{k: metrics.get(k, float("nan")) for k in PREDICTORS},
            **{f"{k}_ci": metrics.get(f"{k}_ci") for k in METRICS[:3]}, **curve_summary(curve), "curve": curve}


def timings(times: dict, specs: list[RewardModelSpec], seeds: list[int], policies: list[Policy]) -> dict[str, Any]:
    """Seconds per run: ``[<policy>/]<name>/seed<s>`` -> RM training (shared by the policies),
    evaluation, RLOO (as each stage took, also when a resumed run reused it); ``per_seed``: seed -> all
    of one seed's stages."""
    out: dict[str, Any] = {"per_seed": {}}
    for seed in seeds:
        for spec in specs:
            for p in policies:
                key = f"{p.name}/{spec.name}/seed{seed}" if len(policies) > 1 else f"{spec.name}/seed{seed}"
                out[key] = {"train_rm_s": round(times["train_rm_s", spec.name, seed], 1),
                            "evaluate_s": round(times["evaluate_s", p.name, spec.name, seed], 1),
                            "rloo_s": round(times["rloo_s", p.name, spec.name, seed], 1)}
        out["per_seed"][str(seed)] = round(sum(times["train_rm_s", s.name, seed] for s in specs) + sum(
            times[stage, p.name, s.name, seed] for s in specs for p in policies for stage in ("evaluate_s", "rloo_s")),
            1)
    return out


def build_report(specs: list[RewardModelSpec], policies: list[Policy], shapes: list[tuple[int, int]],
                 runs: list[dict[str, Any]], seeds: list[int],
                 gold: str, test_pairs: Optional[str], rloo_recipe: str, rloo_overrides: dict,
                 compare: Optional[list[str]], low_variance: Optional[str], on_policy_rm: Optional[str],
                 command: Optional[str], device: str, reference: Optional[str] = None,
                 budgets: Optional[list[list[str]]] = None, off_policy_rm: Optional[str] = None) -> dict[str, Any]:
    """``report.json``'s content: per policy the summary and the claims' checks; with several
    policies, how they compare (:func:`varirm.claims.across_policies`)."""
    names, trained = [s.name for s in specs], [s.name for s in specs if s.recipe is not None]
    per_policy = []
    for p, (prompts, k) in zip(policies, shapes):
        mine = [r for r in runs if r["policy"] == p.name]
        summary = summarize(mine, names, seeds, k)
        per_policy.append({"name": p.name, "policy": p.path, "eval_samples": p.samples, "eval_prompts": prompts,
                           "eval_k": k, "summary": summary,
                           "checks": checks(summary, low_variance, compare, trained, mine, seeds, on_policy_rm,
                                           reference, budgets, off_policy_rm)})
    first, multi = per_policy[0], len(policies) > 1
    return {
        "command": command or "varirm.verify.verify(...)", "policy": first["policy"], "gold": gold,
        "eval_samples": first["eval_samples"], "eval_prompts": first["eval_prompts"], "eval_k": first["eval_k"],
        "test_pairs": test_pairs, "rloo_recipe": rloo_recipe, "rloo_overrides": rloo_overrides,
        "rloo_steps": runs[0]["steps"], "seeds": seeds, "reward_models": [asdict(s) for s in specs],
        "compare": compare, "budgets": budgets, "low_variance": low_variance, "reference": reference,
        "off_policy_rm": off_policy_rm, "runs": runs,
        "summary": first["summary"],
        "checks": first["checks"], "policies": per_policy,
        "across_policies": {**across_policies(runs, names, [p.name for p in policies], seeds),
                            "teacher_transfer": teacher_transfer(runs, names, [p.name for p in policies], seeds,
                                                                 shapes[0][1])} if multi else None,
        "timings": None, "seconds": None, "device": device}
