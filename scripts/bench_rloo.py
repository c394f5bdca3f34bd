"""RLOO throughput: varirm (``varirm rloo``, ``varirm.rloo.RLOOModule``) vs TRL's ``RLOOTrainer``.

What is compared: RLOO of the same tiny Llama-style policy (random init, ~10.8M parameters at the
defaults, from ``varirm.tiny.make_tiny_model``; no SFT: throughput does not need a good policy)
against the same reward function (``varirm.synthetic.gold_reward``; TRL gets it as a python
``reward_funcs`` callable), on the same prompts (the synthetic task's ``prompts.jsonl``), with the
same prompts per step, k samples per prompt, max new tokens, sampling (temperature 1, top-p 1, no
top-k), KL coefficient with a frozen reference copy of the policy, PPO-style clipped updates per
batch of samples (varirm ``ppo_epochs`` = TRL ``num_iterations``, clip 0.2), AdamW learning rate
(constant), no gradient clipping, CPU, same number of torch threads, bf16 autocast in both where this CPU
multiplies bf16 natively (else fp32). With ``--model_dir`` the policy is a real model (SmolLM2-135M-Instruct)
and the reward a sequence classifier on the same backbone with a new score head (``reward_funcs=<dir>``
for TRL, ``reward_model: <dir>`` for varirm), prompts the first user turns of ``--prompts``.

How: every run is a fresh Python process (``--worker_spec``, started by this script). varirm runs its
real path, ``varirm.cli.cli_main(["rloo", "--config", "recipes/rloo/synthetic_gold.yaml",
overrides...])``; TRL runs ``RLOOTrainer(model=<dir>, reward_funcs=<callable>, args=RLOOConfig(...))``.
A callback stamps the end of every RLOO step (one generation batch and its ``ppo_epochs``
optimizer steps); after ``--warmup`` RLOO steps the window from the end of the last warm-up step to
the end of the last step is timed. Generated tokens are counted by one instrument for both tools, a
wrapper around ``transformers``' ``generate`` (tokens up to and including the first stop token),
so tokens/s is comparable even where completions stop at different lengths. Runs alternate
(varirm, TRL, varirm, ...) ``--repeats`` times; medians, min/max and the varirm / TRL ratio go to
JSON, Markdown and BENCHMARKS.md.

    python scripts/bench_rloo.py                          # full run (a few minutes on 2 cores)
    python scripts/bench_rloo.py --model_dir artifacts/smollm2-135m-instruct --batch_size 8 --max_new_tokens 32 \\
        --steps 2 --warmup 1 --repeats 3 --ppo_epochs 1 --num_prompts 64 --out results/bench_rloo_real   # SmolLM2
    python scripts/bench_rloo.py --repeats 1 --steps 1 --warmup 1 --hidden_size 32 --num_layers 2 \\
        --num_heads 2 --batch_size 4 --out /tmp/b --benchmarks_md ''    # smoke run (tests)
"""

from __future__ import annotations

import time

T_PROCESS = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from typing import Any, Optional  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, ROOT)

from bench_common import (  # noqa: E402
    PAIRED,
    GenerateCounter,
    StepClock,
    add_common_arguments,
    default_bf16,
    dpo_prompts,
    fmt,
    fmt_ratio,
    machine,
    paired_ratio,
    peak_rss_mib,
    quiet_run_args,
    run_if_worker,
    run_worker,
    summary,
    write_outputs,
)
from lightning.pytorch import Callback  # noqa: E402

TOOLS = ("varirm", "trl")


class LightningRLOOClock(Callback):
    """Start of the first and end of every RLOO step of varirm (one training batch each)."""

    def __init__(self):
        self.clock = StepClock()
        self.peak_rss_mib = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.clock.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.clock.end()

    def on_train_end(self, trainer, pl_module) -> None:
        self.peak_rss_mib = peak_rss_mib()


def gold_reward_trl(prompts, completions, **kwargs) -> list[float]:
    """``varirm.synthetic.gold_reward`` as a TRL reward function (conversational completions are
    lists holding one assistant message)."""
    from varirm.synthetic import gold_reward

    return [gold_reward(p, c[0]["content"] if isinstance(c, list) else c) for p, c in zip(prompts, completions)]


class ScoreTimer:
    """Times every reward computation of a step: varirm's labeler (``varirm.scoring.load_reward_function``
    wrapped, so RM directories and reward functions alike) or TRL's ``RLOOTrainer._calculate_rewards``."""

    def __init__(self, tool: str):
        self.tool, self.calls = tool, []

    def _timed(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.calls.append((start, time.perf_counter() - start))
            return out
        return timed

    def __enter__(self) -> "ScoreTimer":
        if self.tool == "varirm":
            import varirm.scoring as owner

            name, original = "load_reward_function", owner.load_reward_function
            patched = lambda *a, **kw: self._timed(original(*a, **kw))  # noqa: E731
        else:
            from trl import RLOOTrainer as owner

            name, original = "_calculate_rewards", owner._calculate_rewards
            patched = self._timed(original)
        self._restore = (owner, name, original)
        setattr(owner, name, patched)
        return self

    def __exit__(self, *exc) -> None:
        setattr(*self._restore)

    def seconds_between(self, t0: float, t1: float) -> float:
        return sum(sec for start, sec in self.calls if t0 < start <= t1)


def throughput(clock: StepClock, counter: GenerateCounter, warmup: int, k: int,
               scorer: Optional[ScoreTimer] = None) -> dict[str, Any]:
    t0, t1, n = clock.window(warmup)
    calls = counter.between(t0, t1)
    rows, tokens = sum(c["rows"] for c in calls), sum(c["tokens"] for c in calls)
    dt = t1 - t0
    return {"timed_rloo_steps": n, "timed_s": dt, "timed_prompts": rows / k, "timed_completions": rows,
            "timed_generated_tokens": tokens, "prompts_per_s": rows / k / dt, "generated_tokens_per_s": tokens / dt,
            "mean_completion_tokens": tokens / max(rows, 1), "generate_calls": len(calls),
            "generate_share": sum(c["seconds"] for c in calls) / dt, "rloo_steps_run": len(clock.ends),
            "score_share": scorer.seconds_between(t0, t1) / dt if scorer else None}


def run_varirm(spec: dict, counter: GenerateCounter, scorer: ScoreTimer) -> dict[str, Any]:
    from varirm.cli import cli_main

    t_begin = time.perf_counter()
    run_dir = os.path.join(spec["work"], "run")
    cli = cli_main([
        "rloo", "--config", os.path.join(ROOT, "recipes", "rloo", "synthetic_gold.yaml"),
        "--seed_everything", str(spec["seed"]),
        "--trainer.default_root_dir", run_dir,
        "--trainer.max_steps", str((spec["warmup"] + spec["steps"]) * spec["epochs"]), "--trainer.max_epochs", "-1",
        "--trainer.precision", "bf16-mixed" if spec["bf16"] else "32-true",
        *quiet_run_args(run_dir),
        "--trainer.callbacks+=__main__.LightningRLOOClock",
        "--model.init_args.policy_name_or_path", spec["model_dir"],
        "--model.init_args.reward_model", spec["rm_dir"] or "varirm.synthetic.gold_reward",
        "--model.init_args.gold", "null",
        "--model.init_args.sampling_precision", "bf16" if spec["bf16"] else "fp32",
        "--model.init_args.k", str(spec["k"]), "--model.init_args.beta", str(spec["beta"]),
        "--model.init_args.ppo_epochs", str(spec["epochs"]), "--model.init_args.clip_eps", str(spec["clip_eps"]),
        "--model.init_args.temperature", "1.0", "--model.init_args.top_p", "1.0",
        "--model.init_args.max_new_tokens", str(spec["max_new_tokens"]), "--model.init_args.lr", str(spec["lr"]),
        "--data.init_args.prompts", spec["prompts"], "--data.init_args.batch_size", str(spec["batch_size"]),
        "--data.init_args.shuffle", "false",
    ])
    timer = next(c for c in cli.trainer.callbacks if isinstance(c, LightningRLOOClock))
    return {"setup_s": timer.clock.first_start - t_begin, "peak_rss_mib": timer.peak_rss_mib,
            "optimizer_steps": cli.trainer.global_step,
            **throughput(timer.clock, counter, spec["warmup"], spec["k"], scorer)}


def run_trl(spec: dict, counter: GenerateCounter, scorer: ScoreTimer) -> dict[str, Any]:
    import datasets
    from transformers import TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from varirm.sampling import read_prompts

    clock, rss, epochs = StepClock(), {}, spec["epochs"]

    class HFRLOOClock(TrainerCallback):
        """An RLOO step is ``num_iterations`` optimizer steps on one generation batch."""

        def on_step_begin(self, args, state, control, **kwargs):
            clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % epochs == 0:
                clock.end()

        def on_train_end(self, args, state, control, **kwargs):
            rss["peak"] = peak_rss_mib()

    t_begin = time.perf_counter()
    prompts = read_prompts(spec["prompts"])
    config = RLOOConfig(
        output_dir=os.path.join(spec["work"], "run"), seed=spec["seed"],
        max_steps=(spec["warmup"] + spec["steps"]) * epochs,
        per_device_train_batch_size=spec["batch_size"] * spec["k"],  # completions per optimizer step
        num_generations=spec["k"], num_iterations=epochs, epsilon=spec["clip_eps"], beta=spec["beta"],
        temperature=1.0, top_p=1.0, top_k=0, max_completion_length=spec["max_new_tokens"],
        learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, optim="adamw_torch",
        max_grad_norm=0.0, bf16=spec["bf16"], use_cpu=True, gradient_checkpointing=False, disable_dropout=True,
        report_to="none", save_strategy="no", logging_steps=10**9, disable_tqdm=True, dataloader_num_workers=0,
        shuffle_dataset=False)
    trainer = RLOOTrainer(model=spec["model_dir"], reward_funcs=spec["rm_dir"] or gold_reward_trl, args=config,
                          train_dataset=datasets.Dataset.from_list([{"prompt": p} for p in prompts]),
                          callbacks=[HFRLOOClock()])
    trainer.train()
    return {"setup_s": clock.first_start - t_begin, "peak_rss_mib": rss["peak"],
            "optimizer_steps": trainer.state.global_step,
            **throughput(clock, counter, spec["warmup"], spec["k"], scorer)}


def make_reward_model(model_dir: str, output: str) -> str:
    """A reward-model directory on ``model_dir``'s backbone with a freshly initialised score head
    (throughput does not need a trained one), loaded and saved as ``varirm fit`` would (pad != eos,
    embeddings resized): both varirm (``reward_model: <dir>``) and TRL (``reward_funcs=<dir>``)
    load it as a sequence classifier."""
    import torch

    from varirm.chat import load_tokenizer
    from varirm.reward_model import load_reward_model

    torch.manual_seed(0)
    tokenizer = load_tokenizer(model_dir)
    load_reward_model(model_dir, tokenizer).save_pretrained(output, tokenizer)
    return output


def dpo_prompt_file(path: str, output: str, n: int, model_dir: str, max_tokens: int) -> str:
    """A prompts file of :func:`bench_common.dpo_prompts` (first user turns of at most ``max_tokens``)."""
    from varirm.chat import load_tokenizer

    with open(output, "w") as f:
        for prompt in dpo_prompts(path, n, load_tokenizer(model_dir), max_tokens):
            f.write(json.dumps({"prompt": prompt}) + "\n")
    return output


def worker(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    import_s = time.perf_counter() - T_PROCESS
    with GenerateCounter() as counter, ScoreTimer(spec["tool"]) as scorer:
        result = (run_varirm if spec["tool"] == "varirm" else run_trl)(spec, counter, scorer)
    result.update(tool=spec["tool"], torch_threads=torch.get_num_threads(), import_s=import_s,
                  process_s=time.perf_counter() - T_PROCESS)
    with open(spec["result"], "w") as f:
        json.dump(result, f)


def aggregate(runs: list[dict]) -> dict[str, Any]:
    return {"prompts_per_s": summary([r["prompts_per_s"] for r in runs]),
            "generated_tokens_per_s": summary([r["generated_tokens_per_s"] for r in runs], 0),
            "mean_completion_tokens": summary([r["mean_completion_tokens"] for r in runs]),
            "generate_share": summary([r["generate_share"] for r in runs], 3),
            "score_share": summary([r["score_share"] for r in runs], 3),
            "rest_share": summary([1 - r["generate_share"] - r["score_share"] for r in runs], 3),
            "peak_rss_mib": summary([r["peak_rss_mib"] for r in runs], 0),
            "setup_s": summary([r["setup_s"] for r in runs]),
            "torch_threads": sorted({r["torch_threads"] for r in runs}), "runs": runs}


def markdown(result: dict[str, Any]) -> str:
    s, m, t = result["settings"], result["machine"], result["tools"]
    lines = [
        f"## RLOO{' (real model)' if s['real'] else ''}: varirm vs TRL RLOOTrainer", "",
        f"`{result['command']}` (CPU: {m['cpu']}; {m['torch_threads']} torch threads; torch {m['torch']}, transformers "
        f"{m['transformers']}, trl {m['trl']}, lightning {m['lightning']}).", "",
        f"Same policy and reward ({s['model']}), "
        f"{s['prompts_per_step']} prompts x k={s['k']} samples per RLOO step, up to {s['max_new_tokens']} new tokens, "
        f"{s['ppo_epochs']} clipped updates per batch (clip {s['clip_eps']}), beta {s['beta']} with a frozen "
        f"reference, AdamW lr {s['lr']}, {s['precision']}. {s['warmup']} warm-up + {s['steps']} timed RLOO steps "
        f"per run, each run its own process, {s['repeats']} runs per tool alternating varirm, TRL. "
        "Cells: median [min-max].", "",
        "| tool | prompts/s | generated tokens/s | tokens per completion | step: generate | step: score | "
        "step: rest (log-probs, backward, optimizer) | peak RSS MiB | set-up s |",
        "|---|---|---|---|---|---|---|---|---|"]
    for tool in TOOLS:
        a = t[tool]
        lines.append(f"| {tool} | {fmt(a['prompts_per_s'])} | {fmt(a['generated_tokens_per_s'])} | "
                     f"{fmt(a['mean_completion_tokens'])} | {fmt(a['generate_share'])} | {fmt(a['score_share'])} | "
                     f"{fmt(a['rest_share'])} | {fmt(a['peak_rss_mib'])} | {fmt(a['setup_s'])} |")
    r = result["ratio_varirm_over_trl"]
    lines += ["", f"varirm / TRL (medians): prompts/s **{r['prompts_per_s']}**, generated tokens/s "
              f"**{r['generated_tokens_per_s']}**, peak RSS {r['peak_rss_mib']}. Ratio of mean prompts/s, {PAIRED}: "
              f"{fmt_ratio(r['prompts_per_s_paired'])}.", "",
              "Not the same in both tools:", ""]
    lines += [f"- {x}" for x in result["differences"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per tool (alternating)")
    parser.add_argument("--steps", type=int, default=4, help="timed RLOO steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed RLOO steps before the timed ones")
    parser.add_argument("--batch_size", type=int, default=16, help="prompts per RLOO step")
    parser.add_argument("--k", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max_new_tokens", type=int, default=16)
    parser.add_argument("--ppo_epochs", type=int, default=2, help="varirm ppo_epochs = TRL num_iterations")
    parser.add_argument("--clip_eps", type=float, default=0.2)
    parser.add_argument("--beta", type=float, default=0.02)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--num_prompts", type=int, default=256, help="prompts in the synthetic prompts file")
    parser.add_argument("--model_dir", default=None,
                        help="a real policy directory (e.g. artifacts/smollm2-135m-instruct); the RM is the same "
                             "backbone with a new score head, prompts from --prompts")
    parser.add_argument("--prompts", default=os.path.join(ROOT, "..", "shared", "data", "dpo_en_demo.json"),
                        help="with --model_dir: sharegpt file whose first user turns are the prompts")
    parser.add_argument("--max_prompt_tokens", type=int, default=256,
                        help="with --model_dir: skip prompts longer than this (rendered, in tokens)")
    parser.add_argument("--target", type=float, default=None,
                        help="varirm / TRL prompts/s to judge against (default: 1.5 with --model_dir, else 1.0)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 in both tools (default: only where this CPU has native bf16 matmuls)")
    add_common_arguments(parser, "bench_rloo", "BPE target; the synthetic corpus caps it near 514")
    args = parser.parse_args()
    if run_if_worker(args, worker):
        return

    from varirm.synthetic import write_task
    from varirm.tiny import make_tiny_model

    bf16 = default_bf16(args.bf16)
    if args.target is None:
        args.target = 1.5 if args.model_dir else 1.0
    work = tempfile.mkdtemp(prefix="varirm-bench-rloo-")
    try:
        if args.model_dir:
            model_dir = args.model_dir
            rm_dir = make_reward_model(model_dir, os.path.join(work, "rm"))
            prompts_file = dpo_prompt_file(args.prompts, os.path.join(work, "prompts.jsonl"), args.num_prompts,
                                           model_dir, args.max_prompt_tokens)
        else:
            model_dir = make_tiny_model(os.path.join(work, "tiny"), hidden_size=args.hidden_size,
                                        num_layers=args.num_layers, num_heads=args.num_heads,
                                        vocab_size=args.vocab_size, seed=args.seed)
            task = os.path.join(work, "synthetic")
            write_task(task, n_train=8, n_val=8, n_test=8, n_demos=8, n_prompts=args.num_prompts, n_eval_prompts=8,
                       seed=args.seed)
            rm_dir, prompts_file = None, os.path.join(task, "prompts.jsonl")
        runs: dict[str, list[dict]] = {tool: [] for tool in TOOLS}
        for r in range(args.repeats):
            for tool in TOOLS:
                name = f"{tool}-{r}"
                os.makedirs(os.path.join(work, name))
                spec = {"tool": tool, "work": os.path.join(work, name), "model_dir": model_dir, "rm_dir": rm_dir,
                        "bf16": bf16, "prompts": prompts_file, "steps": args.steps, "warmup": args.warmup,
                        "batch_size": args.batch_size, "k": args.k, "max_new_tokens": args.max_new_tokens,
                        "epochs": args.ppo_epochs, "clip_eps": args.clip_eps, "beta": args.beta, "lr": args.lr,
                        "seed": args.seed}
                res = run_worker(os.path.abspath(__file__), spec, work, name, args.threads)
                runs[tool].append(res)
                print(f"{tool} run {r + 1}/{args.repeats}: {res['prompts_per_s']:.2f} prompts/s, "
                      f"{res['generated_tokens_per_s']:.0f} generated tokens/s, process {res['process_s']:.1f} s "
                      f"(imports {res['import_s']:.1f} s, set-up {res['setup_s']:.1f} s)", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tools = {tool: aggregate(runs[tool]) for tool in TOOLS}
    ratio = {k: round(tools["varirm"][k]["median"] / tools["trl"][k]["median"], 3)
             for k in ("prompts_per_s", "generated_tokens_per_s", "peak_rss_mib", "setup_s")}
    ratio["prompts_per_s_paired"] = paired_ratio([x["prompts_per_s"] for x in runs["trl"]],
                                                 [x["prompts_per_s"] for x in runs["varirm"]], args.target)
    result = {
        "command": shlex.join(["python", "scripts/bench_rloo.py", *sys.argv[1:]]),
        "machine": machine(args.threads),
        "settings": {"real": bool(args.model_dir),
                     "model": (f"{os.path.basename(os.path.normpath(args.model_dir))}, reward model: "
                               "the same backbone with a new score head, prompts: first user turns of "
                               f"{os.path.basename(args.prompts)} of at most {args.max_prompt_tokens} tokens"
                               if args.model_dir else
                               f"tiny Llama-style policy, hidden {args.hidden_size}, {args.num_layers} layers, "
                               f"{args.num_heads} heads (random init), reward `varirm.synthetic.gold_reward`"),
                     "prompts_per_step": args.batch_size, "k": args.k, "max_new_tokens": args.max_new_tokens,
                     "ppo_epochs": args.ppo_epochs, "clip_eps": args.clip_eps, "beta": args.beta, "lr": args.lr,
                     "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
                     "precision": "bf16 autocast" if bf16 else "fp32",
                     "varirm": "varirm rloo --config recipes/rloo/synthetic_gold.yaml + overrides (policy, reward, "
                               "gold null, sampling, steps; no logger/progress bar, a ModelCheckpoint that saves "
                               "nothing)",
                     "trl": "RLOOTrainer(model=<dir>, reward_funcs=<gold_reward callable>, RLOOConfig(use_cpu=True, "
                            "per_device_train_batch_size=prompts x k, num_generations=k, num_iterations=ppo_epochs, "
                            "gradient_checkpointing=False, optim='adamw_torch', max_grad_norm=0))",
                     "timing": "end of the last warm-up RLOO step to the end of the last one"},
        "tools": tools,
        "ratio_varirm_over_trl": ratio,
        "differences": [
            "Completion length: neither tool can be told to ignore eos (varirm has no option for it), so completions "
            "stop at the policy's eos in both; generated tokens/s (counted the same way for both) normalizes for any "
            "difference. Both read the prompts in file order (varirm data.shuffle false, TRL shuffle_dataset=False), "
            "so every RLOO step gives both tools the same prompts and their completions differ by sampling only "
            "(before, each tool shuffled in its own order: 22.7 vs 13.7 tokens per completion).",
            "Reward normalization: varirm divides rewards by a shift/scale measured on the first batch; TRL uses raw "
            "rewards (normalize_advantages=False, its default). Negligible compute.",
            "KL estimate: varirm puts its recipe's penalty where kl_in says (k1 in the reward by default); TRL its "
            "own (both from the same reference log-probabilities, one extra no-grad forward each).",
            "Log-probabilities: both compute logits for completion tokens only (logits_to_keep). varirm takes the "
            "sampling policy's log-probabilities (for the ratio and the KL) and the logged entropy from the first "
            "update's forward, where the ratio is exactly 1; TRL runs a separate no-grad forward for them.",
            "Generation: varirm's own sampler (varirm.sampling.sample_tokens: each prompt prefilled once and its "
            "KV cache repeated k times, finished rows leave the batch, inverse-CDF sampling from the full softmax); "
            "TRL calls transformers' generate with each prompt repeated k times in the batch (top_k=0 here, so no "
            "top-50 cut). Same number of rows.",
            "Gradient norm: no clipping in either, but transformers' Trainer still computes the gradient norm at "
            "every optimizer step (for its logs); varirm's manual-optimization RLOO step does not.",
            "Checkpointing: varirm's CLI always adds a ModelCheckpoint, so varirm gets one that saves nothing; "
            "TRL save_strategy='no'.",
            "Precision: the same in both (bf16: varirm precision bf16-mixed with sampling_precision bf16, "
            "TRL bf16=True, whose generate runs under the same autocast; fp32 otherwise).",
        ],
    }
    md = markdown(result)
    write_outputs(args.out, result, md, args.benchmarks_md, "rloo_real" if args.model_dir else "rloo")
    print(md)


if __name__ == "__main__":
    main()
