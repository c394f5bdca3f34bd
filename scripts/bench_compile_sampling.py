"""Does ``torch.compile`` of the policy pay for itself within one ``varirm sample`` call?

Issue 25 asks to try it and keep it only if it does. This script times ``varirm.sampling.
generate_responses`` (what ``varirm sample`` and every RLOO step run) on the real model with the
eager policy and with ``torch.compile(policy, dynamic=True)``: the compiled model's first pass
includes compiling (and any recompiles the decode loop triggers: the cache length changes every
step, rows leave the batch). Break-even: compile seconds over the seconds a compiled pass saves.
Passes alternate after the compiled model's first pass; ``--time_limit`` caps that first pass (a
compile that does not finish within it is reported as not paying), and a compiler failure is
reported as the verdict. Writes JSON and Markdown.

    TORCHINDUCTOR_COMPILE_THREADS=1 python scripts/bench_compile_sampling.py \
        --model_dir artifacts/smollm2-135m-instruct --time_limit 300 --repeats 2

(On this project's 2-core machine inductor's pool of compile workers failed, "compile-worker future
... did not complete"; TORCHINDUCTOR_COMPILE_THREADS=1 compiles in the process.)
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, ROOT)

from bench_common import dpo_prompts, machine, write_outputs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--prompts", default=os.path.join(ROOT, "..", "shared", "data", "dpo_en_demo.json"))
    parser.add_argument("--num_prompts", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each after the first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time_limit", type=int, default=600, help="seconds allowed for the compiled first pass")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "bench_compile_sampling"))
    parser.add_argument("--benchmarks_md", default="", help="BENCHMARKS.md to update ('' to leave it alone)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from varirm.sampling import SamplingConfig, generate_responses, generation_dtype, load_policy

    # what varirm sample loads: bf16 weights where generation runs in bf16
    bf16 = generation_dtype(torch.device("cpu")) == torch.bfloat16
    policy, tokenizer = load_policy(args.model_dir, "bfloat16" if bf16 else None)
    policy.eval()
    prompts = dpo_prompts(args.prompts, args.num_prompts, tokenizer, 256)
    config = SamplingConfig(k=args.k, temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens, seed=0,
                            batch_size=args.num_prompts)

    def one_pass(model) -> float:
        start = time.perf_counter()
        generate_responses(model, tokenizer, prompts, config, progress=False)
        return time.perf_counter() - start

    one_pass(policy)  # warm-up
    compiled = torch.compile(policy, dynamic=True)

    def too_long(*_):
        raise TimeoutError

    signal.signal(signal.SIGALRM, too_long)
    signal.alarm(args.time_limit)
    error = None
    try:
        first = one_pass(compiled)
    except TimeoutError:
        first = None
    except Exception as e:  # a compiler failure is a result too: compile cannot pay here
        first, error = None, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    finally:
        signal.alarm(0)
    eager, timed = [], []
    for _ in range(args.repeats):
        eager.append(one_pass(policy))
        if first is not None:
            timed.append(one_pass(compiled))
    e = statistics.median(eager)
    env = "".join(f"{k}={os.environ[k]} " for k in ("TORCHINDUCTOR_COMPILE_THREADS",) if k in os.environ)
    result = {"command": env + shlex.join(["python", "scripts/bench_compile_sampling.py", *sys.argv[1:]]),
              "machine": machine(args.threads), "prompts": len(prompts), "k": args.k,
              "max_new_tokens": args.max_new_tokens, "eager_s": [round(x, 3) for x in eager],
              "compiled_first_s": None if first is None else round(first, 3),
              "compiled_s": [round(x, 3) for x in timed], "time_limit_s": args.time_limit, "error": error,
              "inductor_compile_threads": os.environ.get("TORCHINDUCTOR_COMPILE_THREADS")}
    if error is not None:
        verdict = f"compiling failed on this machine ({error}); not kept"
    elif first is None:
        verdict = (f"the compiled model's first pass did not finish within {args.time_limit} s (eager pass "
                   f"{e:.1f} s): compiling does not pay for itself within one call; not kept")
    else:
        c = statistics.median(timed)
        saved = e - c
        overhead = first - c
        result.update(compile_overhead_s=round(overhead, 1), saved_per_pass_s=round(saved, 3))
        pays = saved > 0 and overhead <= saved
        verdict = (f"eager {e:.2f} s per pass, compiled {c:.2f} s after a first pass of {first:.1f} s (compile "
                   f"overhead {overhead:.1f} s); "
                   + (f"break-even after {overhead / saved:.1f} passes" if saved > 0 else "no pass is faster")
                   + (": pays within one call" if pays else ": does not pay within one call; not kept"))
    result["verdict"] = verdict
    md = "\n".join([
        "## torch.compile of the sampling policy", "",
        f"`{result['command']}` (CPU: {result['machine']['cpu']}; {args.threads} torch threads; torch "
        f"{result['machine']['torch']}).", "",
        f"`varirm.sampling.generate_responses` on {len(prompts)} prompts x k={args.k}, up to {args.max_new_tokens} new "
        f"tokens, eager vs `torch.compile(policy, dynamic=True)`; {args.repeats} alternating passes each after the "
        f"compiled model's first pass. Eager passes: {result['eager_s']} s; compiled first pass: "
        f"{result['compiled_first_s']} s; compiled passes: {result['compiled_s']} s.", "",
        f"Verdict: {verdict}.", ""])
    write_outputs(args.out, result, md, args.benchmarks_md, "compile_sampling")
    print(md)


if __name__ == "__main__":
    main()
