"""``varirm evaluate``: reward variance and accuracy of a reward model under a policy.

For an RM and a policy's samples (a samples file, or a policy + prompts to sample from now):
normalization stats (shift, scale) on the policy's samples, per-prompt reward variance raw and
whitened (mean, quantiles), on-policy accuracy against a gold labeler, off-policy accuracy on a
preference test set. Writes ``metrics.json``, ``report.md``, ``variance_hist.png`` and
``rewards_per_prompt.png`` into the output directory.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Optional

import torch

from varirm.chat import encode_prompt_response, pad_right
from varirm.errors import VarirmError
from varirm.files import atomic_write_text, path_fingerprint
from varirm.formats import load_preference_rows
from varirm.rloo import token_logprobs
from varirm.sampling import load_policy, read_samples, resolve_device, sample
from varirm.scoring import RewardFunction, label_samples, load_reward_function
from varirm.stats import bootstrap_interval, fmt
from varirm.variance import harm_aware_accuracy, on_policy_accuracy, variance_report, whiten, within_prompt_variance


def prompt_intervals(rewards: torch.Tensor, gold: Optional[torch.Tensor] = None) -> dict[str, Any]:
    """95% bootstrap intervals over prompts (the unit the policy samples for) of the whitened
    variance mean (shift and scale re-measured on each resample, as on the full set), the
    on-policy accuracy and the harm-aware accuracy. ``(p, k)`` rewards and gold."""
    r = rewards.double()
    out: dict[str, Any] = {"whitened_variance_mean_ci": bootstrap_interval(
        lambda i: within_prompt_variance(whiten(r[i])).mean().item(), r.shape[0], method="bootstrap over prompts")}
    if gold is not None:
        g = gold.double()
        out["on_policy_acc_ci"] = bootstrap_interval(lambda i: on_policy_accuracy(r[i], g[i]).item(), r.shape[0],
                                                     method="bootstrap over prompts")
        out["harm_aware_acc_ci"] = bootstrap_interval(lambda i: harm_aware_accuracy(r[i], g[i]).item(), r.shape[0],
                                                      method="bootstrap over prompts")
    return out


@functools.lru_cache(maxsize=4)
def samples_logprobs(policy: str, samples: str, fingerprint: str, device: str) -> torch.Tensor:
    """:func:`response_logprobs` of a samples file's responses, ``(p, k)``; cached per file content
    (``fingerprint``), so evaluating many RMs on one samples file scores the policy once."""
    rows = read_samples(samples)
    k = len(rows[0]["responses"])
    flat = response_logprobs(policy, [row["prompt"] for row in rows for _ in range(k)],
                             [r for row in rows for r in row["responses"]], device)
    return flat.view(len(rows), k)


@torch.no_grad()
def response_logprobs(policy: str, prompts: list, responses: list[str], device: str = "cpu",
                      batch_size: int = 32) -> torch.Tensor:
    """Sequence log-probability ``log pi(y | x)`` of each response under ``policy`` (its tokens as
    the scoring path renders them, :func:`varirm.chat.encode_prompt_response`), ``(n,)``."""
    model, tokenizer = load_policy(policy)
    model.to(device).eval()
    out = []
    for start in range(0, len(responses), batch_size):
        parts = [encode_prompt_response(tokenizer, p, r) for p, r in
                 zip(prompts[start:start + batch_size], responses[start:start + batch_size])]
        ids, mask = pad_right([p + r for p, r in parts], tokenizer.pad_token_id)
        logp, _ = token_logprobs(model, ids.to(device), mask.to(device), entropy=False)  # (n, t - 1)
        scored = torch.zeros_like(mask[:, 1:], dtype=torch.bool)
        for i, (p, r) in enumerate(parts):
            scored[i, len(p) - 1:len(p) + len(r) - 1] = True  # position j scores token j + 1
        out.append((logp.cpu() * scored).sum(-1))
    return torch.cat(out).double()


def render_markdown(metrics: dict[str, Any]) -> str:
    """The Markdown report of :func:`evaluate`'s metrics."""
    q = metrics["whitened_variance_quantiles"]
    lines = [
        f"# Reward variance of `{metrics['rm']}` under `{metrics['policy']}`", "",
        f"{metrics['prompts']} prompts x {metrics['samples_per_prompt']} samples per prompt "
        f"(samples: `{metrics['samples_file']}`).", "",
        "| metric | value |", "|---|---|",
        f"| normalization shift (mean reward) | {metrics['shift']:.4f} |",
        f"| normalization scale (std of rewards) | {metrics['scale']:.4f} |",
        f"| raw per-prompt variance, mean | {metrics['raw_variance_mean']:.4f} |",
        f"| whitened per-prompt variance, mean [95% CI] | {_with_ci(metrics, 'whitened_variance_mean')} |",
        "| whitened per-prompt variance, quantiles " + ", ".join(q) + " | "
        + ", ".join(f"{v:.3f}" for v in q.values()) + " |",
    ]
    if "on_policy_acc" in metrics:
        lines += [f"| on-policy accuracy vs gold (`{metrics['gold']}`) [95% CI] | "
                  f"{_with_ci(metrics, 'on_policy_acc')} |",
                  f"| harm-aware accuracy (a wrong pair counts as right when the worse response is below the "
                  f"policy's mean reward) [95% CI] | {_with_ci(metrics, 'harm_aware_acc')} |",
                  f"| variance and accuracy average | {metrics['variance_accuracy_average']:.4f} |",
                  f"| gold reward: whitened per-prompt variance | {metrics['gold_whitened_variance_mean']:.4f} |"]
    if "harm_aware_acc_weighted" in metrics:
        lines.append(f"| harm-aware accuracy, pairs weighted by the policy's probabilities (HAcc-W) | "
                     f"{metrics['harm_aware_acc_weighted']:.4f} |")
    if "off_policy_acc" in metrics:
        lines.append(f"| off-policy accuracy (`{metrics['pairs_file']}`, {metrics['off_policy_pairs']} pairs) "
                     f"[95% CI] | {_with_ci(metrics, 'off_policy_acc')} |")
    lines += ["", "Whitened: rewards minus the shift, divided by the scale, both measured on these samples, so "
              "rescaling the RM does not change the whitened variance. Variances are unbiased (k - 1). "
              "Intervals: 95% percentile bootstrap over prompts (off-policy accuracy: over pairs).", ""]
    return "\n".join(lines)


def _with_ci(metrics: dict[str, Any], key: str) -> str:
    ci = metrics.get(f"{key}_ci")
    return fmt(ci, 4) if ci else f"{metrics[key]:.4f}"


def plot(rewards: torch.Tensor, gold: Optional[torch.Tensor], output: str, title: str,
         prompts_shown: int = 8) -> list[str]:
    """``variance_hist.png`` (per-prompt whitened variance) and ``rewards_per_prompt.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = whiten(rewards.double())
    paths = [os.path.join(output, "variance_hist.png"), os.path.join(output, "rewards_per_prompt.png")]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(within_prompt_variance(z).numpy(), bins=30, color="#4477aa")
    ax.set_xlabel("per-prompt variance of whitened rewards")
    ax.set_ylabel("prompts")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    n = min(prompts_shown, z.shape[0])
    for i in range(n):
        ax.scatter([i] * z.shape[1], z[i].numpy(), s=14, color="#4477aa", label="RM (whitened)" if i == 0 else None)
        if gold is not None:
            ax.scatter([i + 0.25] * z.shape[1], whiten(gold.double())[i].numpy(), s=14, color="#ee6677",
                       marker="x", label="gold (whitened)" if i == 0 else None)
    ax.set_xlabel("prompt")
    ax.set_ylabel("reward, whitened")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)
    return paths


def off_policy_accuracy(scorer: RewardFunction, pairs: str, split: str = "test") -> dict[str, Any]:
    """Share of the preference pairs in ``pairs`` whose chosen response the scorer ranks higher,
    with a 95% bootstrap interval over pairs."""
    pair_rows, _ = load_preference_rows(pairs, split, "auto", {}, skip_bad=False)
    prompts = [r["prompt_messages"] or r["prompt_text"] for r in pair_rows]
    chosen = torch.tensor(scorer(prompts, [r["chosen"] for r in pair_rows]))
    rejected = torch.tensor(scorer(prompts, [r["rejected"] for r in pair_rows]))
    right = (chosen > rejected).double()
    return {"pairs_file": pairs, "off_policy_pairs": len(pair_rows), "off_policy_acc": right.mean().item(),
            "off_policy_acc_ci": bootstrap_interval(lambda i: right[i].mean().item(), len(right),
                                                    method="bootstrap over pairs")}


def evaluate(
    rm: str,
    output: str,
    samples: Optional[str] = None,
    policy: Optional[str] = None,
    prompts: Optional[str] = None,
    k: int = 10,
    num_prompts: Optional[int] = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 32,
    seed: int = 0,
    gold: Optional[str] = None,
    pairs: Optional[str] = None,
    pairs_split: str = "test",
    batch_size: int = 32,
    max_length: int = 1024,
    device: str = "auto",
    plots: bool = True,
    overwrite: bool = False,
    policy_weighted: bool = False,
) -> dict[str, Any]:
    """Evaluate reward variance and accuracy of an RM under a policy.

    Args:
        rm: Reward model: a ``.ckpt`` from ``varirm fit``, a Hugging Face directory or Hub id, or the
            dotted path of a reward function ``(prompt, response) -> float``.
        output: Directory for metrics.json, report.md and the plots.
        samples: Samples file (``varirm sample``); or give ``policy`` and ``prompts`` instead.
        policy: Policy (causal LM) to sample from when no samples file is given.
        prompts: Prompts file for sampling.
        k: Samples per prompt when sampling.
        num_prompts: Use only the first this many prompts when sampling.
        temperature: Sampling temperature.
        top_p: Nucleus sampling threshold.
        max_new_tokens: Longest sampled response.
        seed: Sampling seed.
        gold: Gold labeler for on-policy accuracy: a callable's dotted path or an RM directory
            (a ``gold`` field in the samples file is used when this is not given).
        pairs: Preference test set for off-policy accuracy (any format ``varirm fit`` reads).
        pairs_split: Split of ``pairs`` when it is a Hub dataset id.
        batch_size: Sequences per scoring forward.
        max_length: Longest scored prompt + response (truncated like training).
        device: ``auto``, ``cpu`` or ``cuda``.
        plots: Write the PNG plots.
        overwrite: Replace an existing report in ``output``.
        policy_weighted: Also the policy-weighted harm-aware accuracy (HAcc-W): scores every
            sample's log-probability under ``policy`` (default: the samples file's ``policy``).
    """
    if os.path.exists(os.path.join(output, "metrics.json")) and not overwrite:
        raise VarirmError(f"{output} already holds an evaluation; pass --overwrite true or choose another --output")
    device = resolve_device(device)
    if samples is None:
        if not (policy and prompts):
            raise VarirmError("give --samples FILE, or --policy and --prompts to sample from the policy")
        samples = sample(policy, prompts, os.path.join(output, "samples.jsonl"), k=k, temperature=temperature,
                         top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, num_prompts=num_prompts, device=device)
    rows = read_samples(samples)
    scorer = load_reward_function(rm, batch_size, device, max_length)
    k = len(rows[0]["responses"])
    rewards = torch.tensor(scorer([row["prompt"] for row in rows for _ in range(k)],
                                  [r for row in rows for r in row["responses"]])).float().view(len(rows), k)
    gold_rewards = (torch.tensor(label_samples(rows, gold, device), dtype=torch.float32)
                    if gold is not None or all("gold" in row for row in rows) else None)
    metrics: dict[str, Any] = {"rm": rm, "rm_fingerprint": path_fingerprint(rm) if os.path.exists(rm) else rm,
                               "policy": rows[0].get("policy", "unknown"), "samples_file": samples,
                               "gold": gold or ("samples file" if gold_rewards is not None else None)}
    metrics.update(variance_report(rewards, gold_rewards))
    metrics.update(prompt_intervals(rewards, gold_rewards))
    if policy_weighted and gold_rewards is not None:  # HAcc-W: pairs weighted by the sampling policy
        metrics["harm_aware_acc_weighted"] = harm_aware_accuracy(rewards, gold_rewards, samples_logprobs(
            policy or rows[0].get("policy", ""), samples, path_fingerprint(samples), device)).item()
    if pairs is not None:
        metrics.update(off_policy_accuracy(scorer, pairs, pairs_split))
    atomic_write_text(os.path.join(output, "metrics.json"), json.dumps(metrics, indent=2))
    atomic_write_text(os.path.join(output, "report.md"), render_markdown(metrics))
    if plots:
        plot(rewards, gold_rewards, output, f"RM {_rm_name(rm)} under {metrics['policy']}")
    return metrics


def _rm_name(rm: str) -> str:
    """A short name for plot titles: the run directory of a checkpoint, else the last path part."""
    name = rm.rstrip("/")
    return os.path.basename(os.path.dirname(os.path.dirname(name)) if name.endswith(".ckpt") else name)
