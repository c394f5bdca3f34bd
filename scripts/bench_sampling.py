"""Sampling throughput: ``varirm.sampling.generate_responses`` (what ``varirm sample`` runs) vs the
plain transformers loop a user would write.

What is compared: k sampled responses per prompt from the same tiny Llama-style model object
(random init, ~10.8M parameters at the defaults, from ``varirm.tiny.make_tiny_model``), for the same
prompts (the synthetic task's ``prompts.jsonl``), k, max new tokens, temperature, top-p and prompts
per ``generate`` call, in fp32 on CPU with the same number of torch threads. The plain loop renders
each prompt with the tokenizer's chat template, left-pads a batch, calls ``model.generate(do_sample=True,
num_return_sequences=k)`` and decodes the new tokens.

How: one process, one model; after ``--warmup`` untimed passes of each, ``--repeats`` timed passes over
all prompts alternate (varirm, plain, varirm, plain, ...). Generated tokens are counted the same way
for both, by a wrapper around ``transformers``' ``generate`` (tokens up to and including the first
stop token, no padding). Throughput: generated tokens per second of the whole pass (rendering,
tokenization, generate, decoding). Medians, min/max and the varirm / plain ratio go to JSON,
Markdown and BENCHMARKS.md.

    python scripts/bench_sampling.py                      # full run (about a minute on 2 cores)
    python scripts/bench_sampling.py --repeats 1 --warmup 0 --num_prompts 8 --hidden_size 32 --num_layers 2 \\
        --num_heads 2 --out /tmp/b --benchmarks_md ''    # smoke run (tests)
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from typing import Any

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, ROOT)

from bench_common import GenerateCounter, add_common_arguments, fmt, machine, summary, write_outputs  # noqa: E402

TOOLS = ("varirm", "plain")


@torch.no_grad()
def plain_generate(model, tokenizer, prompts: list, k: int, max_new_tokens: int, temperature: float, top_p: float,
                   batch_size: int) -> list[list[str]]:
    """The loop a user writes: chat template, left-padded batch, ``generate``, decode the new tokens."""
    out = []
    for start in range(0, len(prompts), batch_size):
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                 for p in prompts[start:start + batch_size]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        ids = model.generate(**enc, do_sample=True, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                             num_return_sequences=k, pad_token_id=tokenizer.pad_token_id)
        decoded = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        out += [decoded[i:i + k] for i in range(0, len(decoded), k)]
    return out


def markdown(result: dict[str, Any]) -> str:
    s, m, t = result["settings"], result["machine"], result["tools"]
    lines = [
        "## Sampling: varirm generate_responses vs a plain transformers loop", "",
        f"`{result['command']}` (CPU: {m['cpu']}; {m['torch_threads']} torch threads; torch {m['torch']}, transformers "
        f"{m['transformers']}).", "",
        f"Same model object ({s['model']}, random init, fp32), {s['num_prompts']} prompts x k={s['k']}, up to "
        f"{s['max_new_tokens']} new tokens, {s['batch_size']} prompts per generate call, temperature "
        f"{s['temperature']}, top-p {s['top_p']}. {s['repeats']} timed passes each, alternating, after {s['warmup']} "
        "warm-up passes. Cells: median [min-max].", "",
        "| sampler | generated tokens/s | s per pass | tokens per response | share of time in generate |",
        "|---|---|---|---|---|"]
    for tool in TOOLS:
        a = t[tool]
        lines.append(f"| {tool} | {fmt(a['tokens_per_s'])} | {fmt(a['seconds'])} | {fmt(a['tokens_per_response'])} | "
                     f"{fmt(a['generate_share'])} |")
    lines += ["", f"varirm / plain (median tokens/s): **{result['ratio_varirm_over_plain']}**.", "",
              "Not the same in both:", ""] + [f"- {x}" for x in result["differences"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per sampler (alternating)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes per sampler first")
    parser.add_argument("--num_prompts", type=int, default=64)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=16, help="prompts per generate call")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_p", type=float, default=1.0)
    add_common_arguments(parser, "bench_sampling", "BPE target; the synthetic corpus caps it near 514")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer

    from varirm.sampling import SamplingConfig, generate_responses, load_policy, read_prompts
    from varirm.synthetic import write_task
    from varirm.tiny import make_tiny_model

    work = tempfile.mkdtemp(prefix="varirm-bench-sampling-")
    try:
        model_dir = make_tiny_model(os.path.join(work, "tiny"), hidden_size=args.hidden_size, num_layers=args.num_layers,
                                    num_heads=args.num_heads, vocab_size=args.vocab_size, seed=args.seed)
        write_task(os.path.join(work, "task"), n_train=8, n_val=8, n_test=8, n_demos=8, n_prompts=args.num_prompts,
                   n_eval_prompts=8, seed=args.seed)
        prompts = read_prompts(os.path.join(work, "task", "prompts.jsonl"))
        policy, tokenizer = load_policy(model_dir)  # what varirm sample loads; the plain loop uses the same model
        policy.eval()
        plain_tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        parameters = sum(p.numel() for p in policy.parameters())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    config = SamplingConfig(k=args.k, temperature=args.temperature, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size)
    samplers = {
        "varirm": lambda: generate_responses(policy, tokenizer, prompts, config, progress=False),
        "plain": lambda: plain_generate(policy, plain_tokenizer, prompts, args.k, args.max_new_tokens, args.temperature,
                                        args.top_p, args.batch_size),
    }
    torch.manual_seed(args.seed)
    runs: dict[str, list[dict]] = {tool: [] for tool in TOOLS}
    with GenerateCounter() as counter:
        for _ in range(args.warmup):
            for tool in TOOLS:
                samplers[tool]()
        for r in range(args.repeats):
            for tool in TOOLS:
                t0 = time.perf_counter()
                responses = samplers[tool]()
                t1 = time.perf_counter()
                calls = counter.between(t0, t1)
                tokens, rows = sum(c["tokens"] for c in calls), sum(c["rows"] for c in calls)
                assert rows == len(prompts) * args.k and sum(map(len, responses)) == rows, (tool, rows)
                runs[tool].append({"seconds": t1 - t0, "tokens": tokens, "responses": rows,
                                   "tokens_per_s": tokens / (t1 - t0), "tokens_per_response": tokens / rows,
                                   "generate_share": sum(c["seconds"] for c in calls) / (t1 - t0)})
                print(f"{tool} pass {r + 1}/{args.repeats}: {tokens / (t1 - t0):.0f} tokens/s", file=sys.stderr, flush=True)
    tools = {tool: {"tokens_per_s": summary([x["tokens_per_s"] for x in runs[tool]], 0),
                    "seconds": summary([x["seconds"] for x in runs[tool]], 3),
                    "tokens_per_response": summary([x["tokens_per_response"] for x in runs[tool]]),
                    "generate_share": summary([x["generate_share"] for x in runs[tool]], 3), "runs": runs[tool]}
             for tool in TOOLS}
    result = {
        "command": shlex.join(["python", "scripts/bench_sampling.py", *sys.argv[1:]]),
        "machine": machine(torch.get_num_threads()),
        "settings": {"model": f"hidden {args.hidden_size}, {args.num_layers} layers, {args.num_heads} heads, "
                              f"{parameters / 1e6:.2f}M parameters",
                     "num_prompts": len(prompts), "k": args.k, "max_new_tokens": args.max_new_tokens,
                     "batch_size": args.batch_size, "temperature": args.temperature, "top_p": args.top_p,
                     "repeats": args.repeats, "warmup": args.warmup,
                     "varirm": "varirm.sampling.generate_responses(policy, tokenizer, prompts, SamplingConfig(...))",
                     "plain": "apply_chat_template + left-padded tokenizer call + model.generate(do_sample=True, "
                              "num_return_sequences=k) + batch_decode"},
        "tools": tools,
        "ratio_varirm_over_plain": round(tools["varirm"]["tokens_per_s"]["median"]
                                         / tools["plain"]["tokens_per_s"]["median"], 3),
        "differences": [
            "Stop tokens: varirm stops at eos plus any special token its chat template puts after a response "
            "(here eos only); the plain loop stops at the model's generation_config eos. Same set for this tokenizer.",
            "Seeding: varirm seeds every batch (seed + batch index, reproducible files); the plain loop draws from "
            "the running RNG. Different samples, so lengths can differ; tokens/s normalizes.",
            "varirm also cuts each decoded response at the template's end-of-turn text (clean_response).",
        ],
    }
    md = markdown(result)
    write_outputs(args.out, result, md, args.benchmarks_md, "sampling")
    print(md)


if __name__ == "__main__":
    main()
