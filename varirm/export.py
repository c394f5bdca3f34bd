"""``varirm export`` and ``varirm card``: Hugging Face Hub format with a variance model card.

Export: checkpoint (or run directory) -> directory with safetensors weights (LoRA merged, or the
adapter with ``adapter_only``), tokenizer and chat template, ``config.json`` with ``num_labels=1``,
``pad_token_id`` and the reward normalization measured on the target policy's samples
(``reward_shift``/``reward_scale``, and ``mean``/``std`` for OpenRLHF), the resolved training
recipe (``varirm_recipe.yaml``), ``varirm_card.json`` (everything the card is rendered from)
and ``README.md`` (the card). The directory is written under a temporary name and renamed into
place at the end, so a failure leaves nothing half-written.

Card numbers come only from ``metrics.json`` files written by ``varirm evaluate`` for this same
checkpoint; nothing is typed by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Optional

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from varirm.errors import VarirmError
from varirm.files import atomic_write_text, path_fingerprint
from varirm.report import read_report
from varirm.reward_model import RewardModel
from varirm.stats import fmt, fmt_over_seeds

TEMPLATE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model_cards", "variance_card.md")
CARD_DATA = "varirm_card.json"


def resolve_checkpoint(path: str) -> tuple[str, Optional[str]]:
    """``(checkpoint file, run directory or None)`` from a ``.ckpt`` or a run directory."""
    if os.path.isdir(path):
        ckpt = os.path.join(path, "checkpoints", "last.ckpt")
        if not os.path.isfile(ckpt):
            raise VarirmError(f"{path}: no checkpoints/last.ckpt in this run directory")
        return ckpt, path
    if not os.path.isfile(path):
        raise VarirmError(f"{path}: checkpoint not found")
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    return path, run_dir if os.path.isfile(os.path.join(run_dir, "config.yaml")) else None


def load_evaluation(path: str, checkpoint: Optional[str] = None) -> dict[str, Any]:
    """``metrics.json`` of ``varirm evaluate`` (a file or its output directory). With
    ``checkpoint``, it must have been measured on that checkpoint."""
    file = os.path.join(path, "metrics.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise VarirmError(f"{path}: no metrics.json from varirm evaluate")
    with open(file) as f:
        metrics = json.load(f)
    if checkpoint is not None:
        if os.path.realpath(metrics["rm"]) != os.path.realpath(checkpoint):
            raise VarirmError(f"{file}: measured on {metrics['rm']}, not on {checkpoint}; evaluate this checkpoint")
        if os.path.exists(checkpoint) and metrics.get("rm_fingerprint") != path_fingerprint(checkpoint):
            raise VarirmError(f"{file}: measured on an earlier version of {checkpoint} (it changed since, e.g. a "
                              "resumed run); evaluate this checkpoint")
    return metrics


def _is_hub_id(name: str) -> bool:
    return not os.path.exists(name) and name.count("/") == 1 and not name.startswith((".", "/"))


def _card_info(hparams: dict[str, Any], recipe: Optional[dict[str, Any]]) -> dict[str, Any]:
    data = ((recipe or {}).get("data") or {}).get("init_args") or {}
    train = data.get("train") or []
    train = [train] if isinstance(train, str) else list(train)
    if data.get("on_policy_fraction"):
        train.append(f"{data.get('on_policy_samples')} ({data['on_policy_fraction']:.0%} on-policy pairs)")
    method = "full fine-tune"
    if hparams.get("lora_r"):
        method = f"LoRA r={hparams['lora_r']}" + (" on a 4-bit NF4 base (QLoRA)" if hparams.get("load_in_4bit") else "")
    objective = "Bradley-Terry"
    if hparams.get("variance_coef"):
        objective += (f" + {hparams['variance_coef']} x variance regularizer on policy samples "
                      f"(`{data.get('policy_samples')}`)")
    if hparams.get("center_rewards_coef"):
        objective += f" + {hparams['center_rewards_coef']} x reward centring"
    return {"base_model": hparams["model_name_or_path"], "train_data": train, "method": method, "objective": objective,
            "prompt_is_chat": data.get("format", "auto") != "standard", "max_length": data.get("max_length", 1024)}


def render_card(info: dict[str, Any], repo_id: str, license: str = "apache-2.0") -> ModelCard:
    """The model card (Hub model-index metadata + Markdown) from ``varirm_card.json`` content."""
    evaluations = info["evaluations"]
    results = []
    for e in evaluations:
        name = f"samples of {e['policy']}"
        results.append(EvalResult(task_type="text-classification", task_name="reward variance under policy",
                                  dataset_type="policy-samples", dataset_name=name,
                                  metric_type="whitened_reward_variance",
                                  metric_name="whitened per-prompt reward variance",
                                  metric_value=round(e["whitened_variance_mean"], 4)))
        if "on_policy_acc" in e:
            results.append(EvalResult(task_type="text-classification", task_name="on-policy accuracy",
                                      dataset_type="policy-samples", dataset_name=name, metric_type="accuracy",
                                      metric_name="on-policy accuracy vs gold",
                                      metric_value=round(e["on_policy_acc"], 4)))
        if "harm_aware_acc" in e:
            results.append(EvalResult(task_type="text-classification", task_name="harm-aware accuracy",
                                      dataset_type="policy-samples", dataset_name=name, metric_type="accuracy",
                                      metric_name="harm-aware on-policy accuracy vs gold",
                                      metric_value=round(e["harm_aware_acc"], 4)))
    for e in info["off_policy"]:
        results.append(EvalResult(task_type="text-classification", task_name="preference accuracy",
                                  dataset_type=e["pairs_file"] if _is_hub_id(e["pairs_file"]) else "preference-pairs",
                                  dataset_name=os.path.basename(e["pairs_file"]), metric_type="accuracy",
                                  metric_name="off-policy pairwise accuracy",
                                  metric_value=round(e["off_policy_acc"], 4)))
    base = info["base_model"]
    data = ModelCardData(
        base_model=base if _is_hub_id(base) else None, license=license, library_name="transformers",
        pipeline_tag="text-classification", tags=["reward-model", "rlhf", "varirm", "reward-variance"],
        datasets=[d for d in info["train_data"] if _is_hub_id(d)] or None, model_name=info["model_name"],
        eval_results=results or None)
    return ModelCard.from_template(
        data, template_path=TEMPLATE, model_name=info["model_name"], repo_id=repo_id,
        base_model=base if _is_hub_id(base) else None, base_model_path=base, train_data=info["train_data"],
        method=info["method"], objective=info["objective"], prompt_is_chat=info["prompt_is_chat"],
        evaluations=evaluations, off_policy=info["off_policy"],
        normalization_policy=info.get("normalization_policy") or "no policy (not measured)",
        verification=info.get("verification"), adapter_only=info.get("adapter_only", False),
        max_length=info.get("max_length", 1024), reward_shift=info.get("reward_shift"),
        reward_scale=info.get("reward_scale"))


def _write_card(directory: str, info: dict[str, Any]) -> None:
    card_text = str(render_card(info, info["repo_id"], info["license"]))  # render first: a failure writes nothing
    atomic_write_text(os.path.join(directory, CARD_DATA), json.dumps(info, indent=2))
    atomic_write_text(os.path.join(directory, "README.md"), card_text)


def _off_policy(evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for e in evaluations:
        if "off_policy_acc" in e and e["pairs_file"] not in seen:
            seen.add(e["pairs_file"])
            out.append({k: e[k] for k in ("pairs_file", "off_policy_pairs", "off_policy_acc")})
    return out


def verification_summary(report_path: str, checkpoint: str) -> str:
    """The card's "RLOO verification" section: this checkpoint's rows in a ``varirm verify``
    report (``report.json`` or its directory), next to the other RMs of the same report."""
    path, report = read_report(report_path)
    mine = [r for r in report["runs"] if os.path.exists(r["rm"]) and os.path.samefile(r["rm"], checkpoint)]
    if not mine:
        raise VarirmError(f"{path}: none of its RLOO runs used {checkpoint}; verify this checkpoint, "
                          "or attach no report")
    name = mine[0]["name"]
    entries = report.get("policies") or [{"name": None, "policy": report["policy"], "summary": report["summary"]}]
    lines = []
    for entry in entries:  # one section per initial policy (the variance card lists each policy too)
        runs = [r for r in mine if entry["name"] is None or r.get("policy") == entry["name"]]
        lines += _verification_section(report, entry, runs, name, path) + [""]
    return "\n".join(lines).rstrip("\n")


def _verification_section(report: dict[str, Any], entry: dict[str, Any], mine: list[dict[str, Any]], name: str,
                          path: str) -> list[str]:
    per_rm, corr = entry["summary"]["per_rm"], entry["summary"]["spearman_with_gold_gain"]
    ranked = sorted(per_rm, key=lambda n: -per_rm[n]["gold_gain"]["mean"])
    own = "; ".join(f"seed {r['seed']}: gold reward {r['gold_start']:.3f} -> {r['gold_end']:.3f} "
                    f"(gain {r['gold_gain']:.3f}, AUC {r['gold_auc']:.3f}), proxy gain {r['proxy_gain']:.3f}"
                    for r in mine)
    lines = [f"RLOO from `{entry['policy']}` against this checkpoint (`{name}` in `{path}`), "
             f"{report['rloo_steps']} RLOO steps; gold reward `{report['gold']}` measured on held-out prompts. "
             f"This checkpoint: {own}.", "",
             f"Every RM of that report, mean over seeds {report['seeds']} "
             f"{'[95% t interval]' if 'lower' in per_rm[name]['gold_gain'] else '± std'} "
             "(one checkpoint per seed and recipe):", "",
             "| RM | whitened variance | on-policy acc | off-policy acc | gold gain | gold AUC |",
             "|---|---|---|---|---|---|"]
    for n in ranked:
        m = per_rm[n]
        cells = " | ".join(fmt_over_seeds(m[k]) if "lower" in m[k] else f"{m[k]['mean']:.3f} ± {m[k]['std']:.3f}"
                           for k in ("whitened_variance_mean", "on_policy_acc", "off_policy_acc", "gold_gain",
                                     "gold_auc"))
        lines.append(f"| {'**' + n + '** (this RM)' if n == name else n} | {cells} |")
    v, off = corr["whitened_variance_mean"], corr["off_policy_acc"]
    show = lambda c: fmt(c["on_means_ci"], 2) if "on_means_ci" in c else f"{c['on_means']:.2f}"  # noqa: E731
    lines += ["", f"`{name}`'s mean gold gain ranks {ranked.index(name) + 1} of {len(ranked)}. Across these RMs, "
              f"Spearman correlation of gold gain with whitened variance: {show(v)}; with off-policy accuracy: "
              f"{show(off)}."]
    return lines + _teacher_lines(entry["summary"].get("teacher"), name)


def _teacher_lines(teacher: Optional[dict[str, Any]], name: str) -> list[str]:
    """The card's teacher score: this RM's value and rank among the report's RMs, how well the score
    ranked their RLOO gold AUC on held-out seeds, and what it does not say."""
    if not teacher or name not in teacher["per_rm"]:
        return []
    scores = teacher["per_rm"]
    rank = sorted(scores, key=lambda n: -scores[n]).index(name) + 1
    return ["", f"Teacher score (predicts the rank of the RLOO gold AUC from cheap measurements, no RLOO): "
                f"{scores[name]:.3f}, rank {rank} of {len(scores)}; `{teacher['formula']}`. Chosen on seeds "
                f"{teacher['fit_seeds']}; on the held-out seeds {teacher['test_seeds']} its Spearman with the gold "
                f"AUC across these RMs was {fmt(teacher['held_out_spearman'], 2)}. Caveats: it ranks RMs under this "
                "one policy in the world the report ran in; its weights were fit on that report's RMs; it says "
                "nothing about absolute gains or about another policy."]


def export(
    checkpoint: str,
    output: str,
    evaluations: Optional[list[str]] = None,
    verification: Optional[str] = None,
    adapter_only: bool = False,
    overwrite: bool = False,
    repo_id: Optional[str] = None,
    license: str = "apache-2.0",
    push_to_hub: Optional[str] = None,
    private: bool = False,
) -> str:
    """Export a trained reward model to the Hugging Face format with a variance model card.

    Args:
        checkpoint: ``last.ckpt`` (or any ``.ckpt``) from ``varirm fit``, or its run directory.
        output: Directory to create.
        evaluations: ``varirm evaluate`` output directories (or metrics.json files) measured on this
            checkpoint; the first one's policy is the target policy whose shift/scale go into the config.
        verification: A ``varirm verify`` report (``report.json`` or its directory) with RLOO runs
            against this checkpoint, summarized on the card.
        adapter_only: Save the LoRA adapter (with the score head) instead of merged weights.
        overwrite: Replace an existing ``output``.
        repo_id: Name used in the card's loading snippet (default: ``push_to_hub`` or ``output``).
        license: License in the card metadata.
        push_to_hub: Upload the exported folder to this Hub repo (``ORG/NAME``); the token comes from
            ``HF_TOKEN`` or the huggingface_hub login and is never written anywhere.
        private: Create the Hub repo as private.
    """
    from varirm.scoring import load_checkpoint_module

    ckpt, run_dir = resolve_checkpoint(checkpoint)
    if os.path.exists(output) and not overwrite:
        raise VarirmError(f"{output} already exists; pass --overwrite true to replace it")
    evals = [load_evaluation(e, ckpt) for e in (evaluations or [])]
    verified = verification_summary(verification, ckpt) if verification else None
    recipe = None
    if run_dir and os.path.isfile(os.path.join(run_dir, "config.yaml")):
        with open(os.path.join(run_dir, "config.yaml")) as f:
            recipe = yaml.safe_load(f)
    # QLoRA: load the base unquantized so merged weights are plain safetensors (no bitsandbytes
    # needed to load them); the checkpoint holds only adapters and the score head, which fit both.
    # Its rewards then differ from the 4-bit model's by the quantization error.
    module = load_checkpoint_module(ckpt, quantized=False)
    rm, tokenizer, hparams = module.model.eval(), module.tokenizer, dict(module.hparams)
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.", dir=parent)
    try:
        if rm.is_peft and not adapter_only:
            rm = RewardModel(rm.hf_model.merge_and_unload())
        config = rm.base_model.config
        config.num_labels = 1
        config.pad_token_id = tokenizer.pad_token_id
        if evals:  # in config.json of a full export; with --adapter_only, in varirm_card.json
            config.reward_shift = config.mean = evals[0]["shift"]
            config.reward_scale = config.std = evals[0]["scale"]
            config.reward_normalization_policy = evals[0]["policy"]
        rm.save_pretrained(tmp, tokenizer)
        if run_dir and os.path.isfile(os.path.join(run_dir, "config.yaml")):
            shutil.copyfile(os.path.join(run_dir, "config.yaml"), os.path.join(tmp, "varirm_recipe.yaml"))
        info = {"model_name": os.path.basename(os.path.abspath(push_to_hub or repo_id or output)),
                "repo_id": push_to_hub or repo_id or output, "license": license, "checkpoint": ckpt,
                "adapter_only": adapter_only, **_card_info(hparams, recipe), "evaluations": evals,
                "off_policy": _off_policy(evals), "normalization_policy": evals[0]["policy"] if evals else None,
                "reward_shift": evals[0]["shift"] if evals else None,
                "reward_scale": evals[0]["scale"] if evals else None,
                "verification": verified}
        _write_card(tmp, info)
        _move_into_place(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if push_to_hub:
        upload(output, push_to_hub, private)
    return output


def _move_into_place(tmp: str, output: str) -> None:
    """The finished export ``tmp`` becomes ``output``; an existing ``output`` is replaced only now,
    so a failed export leaves it as it was."""
    os.chmod(tmp, 0o755)
    if os.path.exists(output):
        backup = tmp + ".old"
        os.replace(output, backup)
        os.replace(tmp, output)
        shutil.rmtree(backup)
    else:
        os.replace(tmp, output)


def upload(folder: str, repo_id: str, private: bool = False) -> str:
    """Create the Hub repo (if needed) and upload the folder; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()  # endpoint from HF_ENDPOINT, token from HF_TOKEN / login
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=folder,
                               commit_message="Upload reward model (varirm export)")
    return commit.commit_url


def card(model_dir: str, evaluations: Optional[list[str]] = None, verification: Optional[str] = None,
         license: Optional[str] = None) -> str:
    """``varirm card``: re-render an exported model's card, adding new ``varirm evaluate`` results
    (e.g. under another policy) without re-exporting weights. An evaluation of a policy already
    on the card replaces the old one.

    Args:
        model_dir: Directory written by ``varirm export``.
        evaluations: New ``varirm evaluate`` output directories (or metrics.json files) of the same checkpoint.
        verification: A ``varirm verify`` report with RLOO runs against the same checkpoint.
        license: Change the card's license.
    """
    path = os.path.join(model_dir, CARD_DATA)
    if not os.path.isfile(path):
        raise VarirmError(f"{model_dir}: no {CARD_DATA}; was it written by varirm export?")
    with open(path) as f:
        info = json.load(f)
    for e in (evaluations or []):
        new = load_evaluation(e, info["checkpoint"])
        info["evaluations"] = [old for old in info["evaluations"] if old["policy"] != new["policy"]] + [new]
    info["off_policy"] = _off_policy(info["evaluations"])
    if verification:
        info["verification"] = verification_summary(verification, info["checkpoint"])
    if license:
        info["license"] = license
    _write_card(model_dir, info)
    return os.path.join(model_dir, "README.md")
