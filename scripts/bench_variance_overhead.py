"""Time per training step: plain Bradley-Terry vs BT + variance regularizer (k samples per prompt).

Both variants take the same pair batches (batch_size pairs = 2 * batch_size sequences); the
regularized step adds ``groups_per_batch`` prompts x k policy samples to the same forward. Steps
alternate (plain, regularized, plain, ...) in one process after a warm-up, so both see the same
machine state; the median step time of each and their ratio are written as JSON and Markdown.

    python scripts/bench_variance_overhead.py            # full run
    python scripts/bench_variance_overhead.py --steps 2  # smoke run (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench_common import cpu_description, default_bf16, write_outputs  # noqa: E402

from varirm.preference_data import PreferenceDataModule  # noqa: E402
from varirm.reward_training import RewardModelModule  # noqa: E402
from varirm.synthetic import write_task  # noqa: E402
from varirm.tiny import make_tiny_model  # noqa: E402

GROUP_KEYS = ("group_input_ids", "group_attention_mask", "group_size", "group_gold")


def policy_samples(task_dir: str, k: int, path: str) -> str:
    """k responses per prompt drawn like the synthetic task's responses (a stand-in for a policy:
    step time depends on sequence count and length, not on who wrote the text)."""
    import random

    from varirm.synthetic import pi0_demo, prompt_topic

    rng = random.Random(0)
    with open(os.path.join(task_dir, "prompts.jsonl")) as f, open(path, "w") as out:
        for line in f:
            prompt = json.loads(line)["prompt"]
            topic = prompt_topic(prompt[0]["content"])
            responses = [pi0_demo(rng, topic, rng.uniform(0, 0.6)) for _ in range(k)]
            out.write(json.dumps({"prompt": prompt, "responses": responses, "policy": "synthetic"}) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32, help="pairs per step")
    parser.add_argument("--groups_per_batch", type=int, default=4)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast (default: where the CPU has native bf16 matmuls, as varirm fit decides)")
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "bench_variance_overhead"))
    parser.add_argument("--benchmarks_md", default=os.path.join(ROOT, "BENCHMARKS.md"),
                        help="BENCHMARKS.md to update ('' to leave it alone, as the smoke test does)")
    args = parser.parse_args()
    args.bf16 = default_bf16(args.bf16)
    torch.manual_seed(0)
    work = tempfile.mkdtemp(prefix="varirm-bench-")
    model_dir = make_tiny_model(os.path.join(work, "tiny"))
    task = os.path.join(work, "task")
    write_task(task, n_train=2048, n_val=8, n_test=8, n_demos=8, n_prompts=512, n_eval_prompts=8)
    dm = PreferenceDataModule(tokenizer_name_or_path=model_dir, train=os.path.join(task, "train.jsonl"), max_length=64,
                              batch_size=args.batch_size, groups_per_batch=args.groups_per_batch,
                              policy_samples=policy_samples(task, args.k, os.path.join(work, "samples.jsonl")),
                              cache_dir=os.path.join(work, "cache"))
    dm.prepare_data()
    dm.setup("fit")
    module = RewardModelModule(model_dir, lr=1e-3, variance_coef=0.1)
    module.configure_model()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    def epochs():  # as many steps as asked for: epoch after epoch
        while True:
            yield from dm.train_dataloader()

    batches = epochs()

    def step(batch) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss, _ = module._shared_step(batch, module.train_metrics)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    times = {"plain": [], "regularized": []}
    for i in range(args.warmup + args.steps):
        batch = next(batches)
        plain = {k: v for k, v in batch.items() if k not in GROUP_KEYS}
        t_plain, t_reg = step(plain), step(batch)
        if i >= args.warmup:
            times["plain"].append(t_plain)
            times["regularized"].append(t_reg)
    shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "command": "python scripts/bench_variance_overhead.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": cpu_description(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "settings": {"pairs_per_step": args.batch_size, "sequences_per_plain_step": 2 * args.batch_size,
                     "groups_per_batch": args.groups_per_batch, "k": args.k,
                     "extra_sequences_per_regularized_step": args.groups_per_batch * args.k,
                     "bf16_autocast": args.bf16, "steps": args.steps, "warmup": args.warmup,
                     "model": "tiny Llama (hidden 64, 2 layers), max_length 64"},
        "median_step_ms": {k: round(1000 * v, 2) for k, v in med.items()},
        "p10_p90_step_ms": {k: [round(1000 * q, 2) for q in statistics.quantiles(v, n=10)[::8]] if len(v) > 1 else None
                            for k, v in times.items()},
        "ratio_regularized_over_plain": round(med["regularized"] / med["plain"], 3),
        "target_ratio_at_most": 1.3,
    }
    md = ("## Variance-regularizer overhead\n\n"
          f"`{result['command']}` ({result['machine']['threads']} threads, torch {result['machine']['torch']}; "
          f"CPU: {result['machine']['cpu']}; {'bf16 autocast' if args.bf16 else 'fp32'}).\n\n"
          f"{args.batch_size} pairs per step; the regularized step adds {args.groups_per_batch} prompts x k={args.k} "
          f"samples to the same forward. Median of {args.steps} alternating steps each.\n\n"
          "| step | median ms | p10-p90 ms |\n|---|---|---|\n"
          + "".join(f"| {k} | {result['median_step_ms'][k]} | {result['p10_p90_step_ms'][k]} |\n" for k in times)
          + f"\nRatio regularized / plain: **{result['ratio_regularized_over_plain']}** (target <= 1.3).\n")
    write_outputs(args.out, result, md, args.benchmarks_md, "variance_overhead")
    print(md)



if __name__ == "__main__":
    main()
