"""Sampling throughput: ``varirm.sampling.generate_responses`` (what ``varirm sample``, RLOO and
``PolicyEvaluation`` run) vs the plain transformers loops a user would write, and vs a compute bound.

What is compared: k sampled responses per prompt, for the same prompts, k, max new tokens,
temperature, top-p and prompts per call, on CPU with the same number of torch threads. Models: by
default the synthetic world's tiny Llama-style policy shape (random init, ~10.8M parameters, from
``varirm.tiny.make_tiny_model``, prompts from the synthetic task); with ``--model_dir`` a real model
(SmolLM2-135M-Instruct from ``varirm make-real-model``, prompts: the first user turn of each
conversation in ``--prompts``, default ``../shared/data/dpo_en_demo.json``).

Samplers: ``varirm`` loads the policy as ``varirm sample`` does (bf16 weights where generation runs
in bf16, see ``varirm.sampling.generation_dtype``) and calls ``generate_responses``. The plain loops
render each prompt with the chat template, left-pad a batch, call ``model.generate(do_sample=True,
num_return_sequences=k)`` and decode the new tokens: ``plain_fp32`` (fp32 weights, no autocast: the
call varirm itself made before its own sampler, on CPU), and where this CPU multiplies bf16 natively
``plain_autocast`` (bf16 autocast), ``plain_bf16`` (bf16 weights) and ``plain_bf16_static`` (bf16
weights, ``cache_implementation="static"``). ``varirm_dynamic_cache`` is varirm's sampler with
transformers' ``DynamicCache`` instead of its in-place one (``varirm.kv_cache``). The best plain
loop is the one with the highest median tokens/s.

Compute bound: the FLOPs the sampling needs (every prompt's non-pad tokens once, every generated
token once; ``2 x`` the block linears' and LM head's weights per token; attention, norms and
sampling left out, so it is a lower bound on time) over this CPU's plain ``torch.matmul`` rate on
the model's GEMM shapes with as many rows as one decode step has (prompts per call x k), in
varirm's generation precision; each pass's fraction of it is the bound time of that pass's tokens over
its measured time. Ratios between samplers carry a 95% interval over the pass pairs (``varirm.stats.paired``)
(passes alternate) and a verdict: varirm at least as fast as the best plain loop, and at least 2x the
fp32 ``generate`` call varirm made before its own sampler. With ``--profile`` (the default) one more
pass of varirm and of the best plain loop runs under ``torch.profiler``, and the operators taking
most of its CPU time are listed.

How: one process; after ``--warmup`` untimed passes of each, ``--repeats`` timed passes over all
prompts alternate between the samplers. Generated tokens are counted the same way for all, by a
wrapper around ``generate`` and ``varirm.sampling.sample_tokens`` (tokens up to and including the
first stop token, no padding). Throughput: generated tokens per second of the whole pass
(rendering, tokenization, generation, decoding). Medians, min/max and ratios go to JSON, Markdown
and BENCHMARKS.md.

    python scripts/bench_sampling.py                      # tiny policy (about two minutes on 2 cores)
    python scripts/bench_sampling.py --model_dir artifacts/smollm2-135m-instruct --num_prompts 16 --k 4 \\
        --max_new_tokens 64 --repeats 3 --out results/bench_sampling_real   # SmolLM2 (about 5 minutes)
    python scripts/bench_sampling.py --repeats 1 --warmup 0 --num_prompts 8 --hidden_size 32 --num_layers 2 \\
        --num_heads 2 --out /tmp/b --benchmarks_md ''    # smoke run (tests)
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any
from unittest import mock

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, ROOT)

from bench_common import (  # noqa: E402
    PAIRED,
    GenerateCounter,
    add_common_arguments,
    dpo_prompts,
    fmt,
    fmt_ratio,
    linear_shapes,
    machine,
    matmul_rate,
    paired_ratio,
    summary,
    write_outputs,
)

from varirm.chat import render_prompt_response  # noqa: E402


@torch.no_grad()
def plain_generate(model, tokenizer, prompts: list, k: int, max_new_tokens: int, temperature: float, top_p: float,
                   batch_size: int, autocast: bool = False, **generate_kwargs) -> list[list[str]]:
    """The loop a user writes: chat template, left-padded batch, ``generate`` (under bf16 autocast
    if asked), decode the new tokens."""
    out = []
    for start in range(0, len(prompts), batch_size):
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                 for p in prompts[start:start + batch_size]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            ids = model.generate(**enc, do_sample=True, temperature=temperature, top_p=top_p,
                                 max_new_tokens=max_new_tokens, num_return_sequences=k,
                                 pad_token_id=tokenizer.pad_token_id, **generate_kwargs)
        decoded = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        out += [decoded[i:i + k] for i in range(0, len(decoded), k)]
    return out


def profile_pass(fn, top: int = 6) -> dict[str, Any]:
    """One pass of a sampler under ``torch.profiler``: the ``top`` operators by self CPU time, each
    as a share of the pass's total self CPU time (where a pass spends its time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return {"total_self_cpu_s": round(total / 1e6, 3),
            "top": [{"op": e.key, "share": round(e.self_cpu_time_total / total, 3), "calls": e.count}
                    for e in events[:top]]}


def markdown(result: dict[str, Any]) -> str:
    s, m, t, b = result["settings"], result["machine"], result["tools"], result["bound"]
    lines = [
        f"## Sampling ({s['model_kind']}): varirm vs plain transformers loops", "",
        f"`{result['command']}` (CPU: {m['cpu']}; {m['torch_threads']} torch threads; torch {m['torch']}, transformers "
        f"{m['transformers']}).", "",
        f"Model: {s['model']}. {s['num_prompts']} prompts ({s['prompts']}) x k={s['k']}, up to {s['max_new_tokens']} "
        f"new tokens, {s['batch_size']} prompts per call, temperature {s['temperature']}, top-p {s['top_p']}. "
        f"{s['repeats']} timed passes each, alternating, after {s['warmup']} warm-up passes. Cells: median [min-max].",
        "", "| sampler | generated tokens/s | s per pass | tokens per response | fraction of the compute bound |",
        "|---|---|---|---|---|"]
    for tool, a in t.items():
        lines.append(f"| {tool} | {fmt(a['tokens_per_s'])} | {fmt(a['seconds'])} | {fmt(a['tokens_per_response'])} | "
                     f"{fmt(a['fraction_of_bound'])} |")
    r = result["ratios"]
    lines += ["",
              f"varirm / best plain loop (`{r['best_plain']}`, median tokens/s): **{r['varirm_over_best_plain']}**; "
              f"varirm / `plain_fp32` (varirm's call before its own sampler): **{r['varirm_over_plain_fp32']}**.", "",
              f"Ratio of mean tokens/s over the alternating passes, {PAIRED}: varirm / best "
              f"plain {fmt_ratio(r['varirm_over_best_plain_paired'])}; varirm / `plain_fp32` "
              f"{fmt_ratio(r['varirm_over_plain_fp32_paired'])}; varirm / `varirm_dynamic_cache` (the in-place KV "
              f"cache's gain) {fmt_ratio(r['preallocated_over_dynamic_cache_paired'])}.", "",
              f"Compute bound: {b['gflop_per_pass']} GFLOP per pass (prompt tokens {b['prompt_tokens']}, generated "
              f"tokens {b['generated_tokens']}, {b['params_per_token_m']}M weights per token) at "
              f"{b['matmul']['gflops_per_s']} GFLOP/s ({b['matmul']['dtype']} `torch.matmul` on "
              f"{b['matmul']['rows']}-row GEMMs of the model's shapes) = {b['seconds']} s per pass.", ""]
    for tool, p in result.get("profile", {}).items():
        ops = ", ".join(f"`{o['op']}` {o['share']:.2f}" for o in p["top"])
        lines += [f"Profile of one `{tool}` pass (torch.profiler, share of {p['total_self_cpu_s']} s self CPU time): "
                  f"{ops}.", ""]
    lines += ["Not the same in all:", ""]
    lines += [f"- {x}" for x in result["differences"]]
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
    parser.add_argument("--model_dir", default=None, help="a real model directory (default: a tiny random Llama)")
    parser.add_argument("--prompts", default=os.path.join(ROOT, "..", "shared", "data", "dpo_en_demo.json"),
                        help="with --model_dir: sharegpt file whose first user turns are the prompts")
    parser.add_argument("--max_prompt_tokens", type=int, default=256,
                        help="with --model_dir: skip prompts longer than this (rendered, in tokens)")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="after the timed passes, profile one pass of varirm and of the best plain loop")
    add_common_arguments(parser, "bench_sampling", "BPE target; the synthetic corpus caps it near 514")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from varirm.reward_model import cpu_bf16_is_native
    from varirm.sampling import SamplingConfig, generate_responses, generation_dtype, load_policy, read_prompts
    from varirm.synthetic import write_task
    from varirm.tiny import make_tiny_model

    work = tempfile.mkdtemp(prefix="varirm-bench-sampling-")
    try:
        if args.model_dir:
            from varirm.chat import load_tokenizer

            model_dir = args.model_dir
            prompts = dpo_prompts(args.prompts, args.num_prompts, load_tokenizer(model_dir), args.max_prompt_tokens)
            prompt_source = (f"{os.path.basename(args.prompts)}: the first {len(prompts)} first user turns of at most "
                             f"{args.max_prompt_tokens} tokens")
        else:
            model_dir = make_tiny_model(os.path.join(work, "tiny"), hidden_size=args.hidden_size,
                                        num_layers=args.num_layers, num_heads=args.num_heads,
                                        vocab_size=args.vocab_size, seed=args.seed)
            write_task(os.path.join(work, "task"), n_train=8, n_val=8, n_test=8, n_demos=8, n_prompts=args.num_prompts,
                       n_eval_prompts=8, seed=args.seed)
            prompts = read_prompts(os.path.join(work, "task", "prompts.jsonl"))
            prompt_source = "synthetic prompts.jsonl"
        bf16 = generation_dtype(torch.device("cpu")) == torch.bfloat16
        # what varirm sample loads: bf16 weights where generation runs in bf16
        policy, tokenizer = load_policy(model_dir, "bfloat16" if bf16 else None)
        plain_tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        if plain_tokenizer.pad_token is None:
            plain_tokenizer.pad_token = plain_tokenizer.eos_token
        fp32 = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        config_hf = fp32.config
        parameters = sum(p.numel() for p in fp32.parameters())
        plain_bf16 = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval() if bf16 else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    policy.eval()
    config = SamplingConfig(k=args.k, temperature=args.temperature, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size)
    plain = functools.partial(plain_generate, tokenizer=plain_tokenizer, prompts=prompts, k=args.k,
                              max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              batch_size=args.batch_size)
    def varirm_dynamic_cache():  # varirm's sampler with transformers' DynamicCache (no in-place KV cache)
        with mock.patch("varirm.sampling.preallocated_cache", lambda *args, **kwargs: None):
            return generate_responses(policy, tokenizer, prompts, config, progress=False)

    samplers = {"varirm": lambda: generate_responses(policy, tokenizer, prompts, config, progress=False),
                "varirm_dynamic_cache": varirm_dynamic_cache, "plain_fp32": lambda: plain(fp32)}
    if bf16:
        samplers.update({"plain_autocast": lambda: plain(fp32, autocast=True), "plain_bf16": lambda: plain(plain_bf16),
                         "plain_bf16_static": lambda: plain(plain_bf16, cache_implementation="static")})
    torch.manual_seed(args.seed)
    runs: dict[str, list[dict]] = {tool: [] for tool in samplers}
    with GenerateCounter() as counter:
        for _ in range(args.warmup):
            for tool in samplers:
                samplers[tool]()
        for r in range(args.repeats):
            for tool, fn in samplers.items():
                t0 = time.perf_counter()
                responses = fn()
                t1 = time.perf_counter()
                calls = counter.between(t0, t1)
                tokens, rows = sum(c["tokens"] for c in calls), sum(c["rows"] for c in calls)
                assert rows == len(prompts) * args.k and sum(map(len, responses)) == rows, (tool, rows)
                runs[tool].append({"seconds": t1 - t0, "tokens": tokens, "responses": rows,
                                   "tokens_per_s": tokens / (t1 - t0), "tokens_per_response": tokens / rows})
                print(f"{tool} pass {r + 1}/{args.repeats}: {tokens / (t1 - t0):.0f} tokens/s, {t1 - t0:.2f} s",
                      file=sys.stderr, flush=True)
    # the compute bound: every prompt token and generated token once, at the measured matmul rate
    prompt_tokens = sum(len(tokenizer(render_prompt_response(tokenizer, p, "")[0],
                                      add_special_tokens=False)["input_ids"])
                        for p in prompts)
    generated = statistics.median(x["tokens"] for x in runs["varirm"])
    lm_head = (config_hf.hidden_size, config_hf.vocab_size)
    per_token = config_hf.num_hidden_layers * sum(i * o for i, o in linear_shapes(config_hf)) + lm_head[0] * lm_head[1]
    rate = matmul_rate(config_hf, bf16, args.threads, rows=args.batch_size * args.k, extra_shapes=(lm_head,))
    rate["rows"] = args.batch_size * args.k

    def bound_seconds(tokens: float) -> float:
        return 2 * per_token * (prompt_tokens + tokens) / (rate["gflops_per_s"] * 1e9)

    for tool in samplers:
        for x in runs[tool]:
            x["fraction_of_bound"] = bound_seconds(x["tokens"]) / x["seconds"]
    flops, bound_s = 2 * per_token * (prompt_tokens + generated), bound_seconds(generated)  # varirm's median pass
    tools = {tool: {"tokens_per_s": summary([x["tokens_per_s"] for x in runs[tool]], 0),
                    "seconds": summary([x["seconds"] for x in runs[tool]], 3),
                    "tokens_per_response": summary([x["tokens_per_response"] for x in runs[tool]]),
                    "fraction_of_bound": summary([x["fraction_of_bound"] for x in runs[tool]], 3), "runs": runs[tool]}
             for tool in samplers}
    median = {tool: tools[tool]["tokens_per_s"]["median"] for tool in samplers}
    best_plain = max((t for t in samplers if t.startswith("plain")), key=median.get)
    profiles = {tool: profile_pass(samplers[tool]) for tool in ("varirm", best_plain)} if args.profile else {}

    def per_pass(tool: str) -> list[float]:
        return [x["tokens_per_s"] for x in runs[tool]]

    result = {
        "command": shlex.join(["python", "scripts/bench_sampling.py", *sys.argv[1:]]),
        "machine": machine(torch.get_num_threads()),
        "settings": {"model_kind": "real model" if args.model_dir else "tiny policy",
                     "model": (f"{os.path.basename(os.path.normpath(model_dir))}, " if args.model_dir
                               else "tiny Llama, ")
                              + f"hidden {config_hf.hidden_size}, {config_hf.num_hidden_layers} layers, "
                              f"{parameters / 1e6:.2f}M parameters",
                     "prompts": prompt_source, "num_prompts": len(prompts), "k": args.k,
                     "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
                     "temperature": args.temperature, "top_p": args.top_p, "repeats": args.repeats,
                     "warmup": args.warmup, "varirm_precision": "bf16" if bf16 else "fp32",
                     "native_bf16": cpu_bf16_is_native()},
        "tools": tools,
        "ratios": {"best_plain": best_plain, "varirm_over_best_plain": round(median["varirm"] / median[best_plain], 3),
                   "varirm_over_plain_fp32": round(median["varirm"] / median["plain_fp32"], 3),
                   "varirm_over_best_plain_paired": paired_ratio(per_pass(best_plain), per_pass("varirm"), 1.0),
                   "varirm_over_plain_fp32_paired": paired_ratio(per_pass("plain_fp32"), per_pass("varirm"), 2.0),
                   "preallocated_over_dynamic_cache_paired": paired_ratio(per_pass("varirm_dynamic_cache"),
                                                                         per_pass("varirm"))},
        "profile": profiles,
        "bound": {"prompt_tokens": prompt_tokens, "generated_tokens": int(generated),
                  "params_per_token_m": round(per_token / 1e6, 1), "gflop_per_pass": round(flops / 1e9, 1),
                  "matmul": rate, "seconds": round(bound_s, 3)},
        "differences": [
            "Sampler: varirm prefills each prompt once and repeats its KV cache k times, computes the prompt's last "
            "logits only, drops rows that stopped, and samples by inverse CDF from the full softmax; generate prefills "
            "each prompt k times, keeps finished rows in the batch, samples with torch.multinomial and, unless told, "
            "cuts to the top 50 tokens (transformers' default top_k), which the plain loops leave as a user would.",
            "Stop tokens: varirm stops at eos plus any special token its chat template puts after a response; the "
            "plain loops stop at the model's generation_config eos.",
            "Seeding: varirm seeds every batch (seed + batch index, reproducible files); the plain loops draw from "
            "the running RNG. Different samples, so lengths can differ; tokens/s normalizes.",
            "varirm also cuts each decoded response at the template's end-of-turn text (clean_response).",
        ],
    }
    md = markdown(result)
    write_outputs(args.out, result, md, args.benchmarks_md, "sampling_real" if args.model_dir else "sampling")
    print(md)


if __name__ == "__main__":
    main()
