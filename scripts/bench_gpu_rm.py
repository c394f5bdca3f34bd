"""RM training on one GPU: tokens/s, model FLOPs utilization (MFU) and peak memory of varirm's
Bradley-Terry step for a ~1B Llama-style reward model (random init), full fine-tune, LoRA and QLoRA.

The model: a Llama config of Llama-3.2-1B's shape (hidden 2048, MLP 8192, 16 layers, 32 query and
8 key-value heads) with a small locally trained tokenizer (the vocabulary adds embedding rows only,
which do no matmul work and are left out of the FLOPs), saved in bf16 and loaded the way every
varirm run loads a model (``varirm.reward_training.RewardModelModule`` -> ``varirm.reward_model.load_reward_model``:
``AutoModelForSequenceClassification``, ``score`` head, peft LoRA with ``score`` in
``modules_to_save``, bitsandbytes NF4 for QLoRA). Training: the module's real ``training_step``
(chosen and rejected in one forward, BT loss) under a Lightning ``Trainer`` with
``precision=bf16-mixed``, AdamW, on batches of random token ids with every position real (no
padding), ``--seq_len`` tokens per sequence, ``b`` pairs = ``2b`` sequences per step.

Each (mode, pairs per step) runs in its own process (a CUDA out-of-memory error ends that run
only); for each mode the largest ``--batch_sizes`` entry that fits is the headline. Timed: the
window from the end of the last of ``--warmup`` steps to the end of the last step.

MFU (full fine-tune; PaLM's accounting, Chowdhery et al. 2022, appendix B): model FLOPs per token
``6 N + 12 L d T`` (``N`` non-embedding parameters, ``L`` layers, ``d`` width, ``T`` sequence
length) times tokens/s, over ``--peak_tflops`` (989 for an H100 SXM's dense bf16). LoRA and QLoRA
compute no weight gradients for the base, so MFU by this formula would overstate their work; they
get tokens/s and memory only.

    python scripts/bench_gpu_rm.py                         # on a GPU (~10 min on an H100)
    python scripts/bench_gpu_rm.py --hidden_size 64 --intermediate_size 128 --num_layers 2 --num_heads 4 \\
        --num_kv_heads 2 --seq_len 64 --batch_sizes 1 2 --steps 2 --warmup 1 --out /tmp/g --benchmarks_md ''
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(SCRIPTS)
sys.path.insert(0, SCRIPTS)
sys.path.insert(0, ROOT)

from bench_common import StepClock, machine, peak_rss_mib, run_if_worker, run_worker, write_outputs  # noqa: E402

MODES = {"full": {}, "lora": {"lora_r": 16, "lora_alpha": 32},
         "qlora": {"lora_r": 16, "lora_alpha": 32, "load_in_4bit": True}}


def make_model_dir(path: str, args) -> str:
    """The benchmark model: Llama config of the given shape, random init, bf16 safetensors, and
    varirm's tiny byte-level BPE tokenizer with its chat template."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from varirm.synthetic import corpus
    from varirm.tiny import train_tokenizer

    torch.manual_seed(args.seed)
    tokenizer = train_tokenizer(corpus(seed=args.seed), 512, pad_token=True)
    config = LlamaConfig(hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
                         num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads,
                         num_key_value_heads=args.num_kv_heads, max_position_embeddings=max(args.seq_len, 2048),
                         vocab_size=len(tokenizer), tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    # initialised on the GPU when there is one: an 8B-shaped model takes minutes to initialise on CPU cores
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the workers, other processes, need that memory
    tokenizer.save_pretrained(path)
    return path


def flops_per_token(non_embedding_params: int, layers: int, width: int, seq_len: int) -> float:
    """Training FLOPs per token, ``6 N + 12 L d T`` (PaLM, Chowdhery et al. 2022, appendix B).

    >>> flops_per_token(100, 2, 8, 16)
    3672.0
    """
    return 6.0 * non_embedding_params + 12.0 * layers * width * seq_len


def worker(spec: dict) -> None:
    import torch
    from lightning.pytorch import Callback, Trainer
    from torch.utils.data import DataLoader

    from varirm.lightning_cli import cpu_precision
    from varirm.reward_training import RewardModelModule

    torch.set_num_threads(spec["threads"])
    cuda = torch.cuda.is_available()
    clock = StepClock()

    class Clock(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            clock.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if cuda:
                torch.cuda.synchronize()
            clock.end()

    module = RewardModelModule(spec["model_dir"], lr=1e-5, warmup_ratio=0.0, scheduler="constant",
                               gradient_checkpointing=spec["gradient_checkpointing"], **MODES[spec["mode"]])
    pairs, t, steps = spec["pairs"], spec["seq_len"], spec["warmup"] + spec["steps"]
    generator = torch.Generator().manual_seed(spec["seed"])
    vocab = spec["vocab_size"]
    batches = [{"input_ids": torch.randint(3, vocab, (2 * pairs, t), generator=generator),  # (2b, t): chosen, rejected
                "attention_mask": torch.ones(2 * pairs, t, dtype=torch.long), "margin": torch.zeros(pairs)}
               for _ in range(steps)]
    precision = cpu_precision("bf16-mixed", "auto")[0]  # on a CPU (smoke runs): as varirm fit would choose
    trainer = Trainer(accelerator="auto", devices=1, precision=precision, max_steps=steps, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[Clock()])
    result = {"mode": spec["mode"], "pairs": pairs, "seq_len": t, "fits": True, "precision": precision}
    try:
        trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    except torch.OutOfMemoryError:
        result["fits"] = False
    if result["fits"]:
        t0, t1, n = clock.window(spec["warmup"])
        base = module.model.base_model
        backbone = getattr(base, base.base_model_prefix)
        result.update(timed_steps=n, tokens_per_s=n * 2 * pairs * t / (t1 - t0), pairs_per_s=n * pairs / (t1 - t0),
                      parameters=sum(p.numel() for p in module.model.parameters()),
                      trainable_parameters=sum(p.numel() for p in module.model.parameters() if p.requires_grad),
                      non_embedding_parameters=sum(p.numel() for p in backbone.layers.parameters()))
    result["peak_memory_gib"] = (torch.cuda.max_memory_allocated() if cuda else peak_rss_mib() * 2**20) / 2**30
    result["memory_kind"] = "torch.cuda.max_memory_allocated" if cuda else "peak RSS of the process"
    result["device"] = torch.cuda.get_device_name() if cuda else "cpu"
    import json

    with open(spec["result"], "w") as f:
        json.dump(result, f)


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = ["## RM training on one GPU: tokens/s, MFU, peak memory", "",
             f"`{result['command']}` on {result['device']} (torch {result['machine']['torch']}, transformers "
             f"{result['machine']['transformers']}).", "",
             f"Llama-style RM, random init: {s['model']}; sequence length {s['seq_len']}, every position a real token; "
             f"{result['precision']}, AdamW; gradient checkpointing {s['gradient_checkpointing']}; "
             f"{s['warmup']} warm-up + {s['steps']} timed steps per run. MFU: full fine-tune only, `6N + 12LdT` FLOPs "
             f"per token over {s['peak_tflops']} TFLOP/s.", "",
             "| mode | pairs/step (largest that fits) | tokens/s | MFU | peak memory GiB | trainable parameters |",
             "|---|---|---|---|---|---|"]
    for mode, m in result["modes"].items():
        best = m.get("best")
        if best is None:
            lines.append(f"| {mode} | none of {m['tried']} fits | - | - | - | - |")
            continue
        mfu = f"{best['mfu']:.1%}" if best.get("mfu") is not None else "-"
        lines.append(f"| {mode} | {best['pairs']} | {best['tokens_per_s']:.0f} | {mfu} | "
                     f"{best['peak_memory_gib']:.1f} | {best['trainable_parameters'] / 1e6:.2f}M |")
    lines += ["", "Every run (pairs/step: tokens/s, peak memory GiB): " + "; ".join(
        f"{mode} " + ", ".join(f"{r['pairs']}: " + (f"{r['tokens_per_s']:.0f}, {r['peak_memory_gib']:.1f}" if r["fits"]
                                                   else r.get("error", "out of memory")) for r in m["runs"])
        for mode, m in result["modes"].items()) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden_size", type=int, default=2048)
    parser.add_argument("--intermediate_size", type=int, default=8192)
    parser.add_argument("--num_layers", type=int, default=16)
    parser.add_argument("--num_heads", type=int, default=32)
    parser.add_argument("--num_kv_heads", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=1024)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="pairs per step to try")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--gradient_checkpointing", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--peak_tflops", type=float, default=989.0, help="the device's dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(ROOT, "results", "bench_gpu_rm"))
    parser.add_argument("--benchmarks_md", default=os.path.join(ROOT, "BENCHMARKS.md"))
    parser.add_argument("--worker_spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if run_if_worker(args, worker):
        return

    work = tempfile.mkdtemp(prefix="varirm-bench-gpu-")
    try:
        model_dir = make_model_dir(os.path.join(work, "model"), args)
        from transformers import AutoConfig

        vocab = AutoConfig.from_pretrained(model_dir).vocab_size
        modes = {}
        for mode in args.modes:
            runs = []
            for pairs in sorted(args.batch_sizes):
                spec = {"mode": mode, "pairs": pairs, "model_dir": model_dir, "seq_len": args.seq_len,
                        "steps": args.steps, "warmup": args.warmup,
                        "gradient_checkpointing": args.gradient_checkpointing, "seed": args.seed, "vocab_size": vocab}
                try:
                    res = run_worker(os.path.abspath(__file__), spec, work, f"{mode}-{pairs}", args.threads)
                except RuntimeError as e:  # a crashed run (not out of memory) is recorded; other modes still run
                    print(e, file=sys.stderr, flush=True)
                    res = {"mode": mode, "pairs": pairs, "fits": False, "error": str(e).splitlines()[0]}
                print(f"{mode} {pairs} pairs/step: " + (f"{res['tokens_per_s']:.0f} tokens/s, peak "
                      f"{res['peak_memory_gib']:.1f} GiB" if res["fits"] else res.get("error", "out of memory")),
                      file=sys.stderr, flush=True)
                runs.append(res)
                if not res["fits"]:
                    break  # larger batches do not fit either
            fitting = [r for r in runs if r["fits"]]
            best = max(fitting, key=lambda r: r["pairs"]) if fitting else None
            if best is not None and mode == "full":
                fpt = flops_per_token(best["non_embedding_parameters"], args.num_layers, args.hidden_size, args.seq_len)
                best["mfu"] = best["tokens_per_s"] * fpt / (args.peak_tflops * 1e12)
            modes[mode] = {"tried": sorted(args.batch_sizes), "runs": runs, "best": best}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"command": shlex.join(["python", "scripts/bench_gpu_rm.py", *sys.argv[1:]]),
              "machine": machine(args.threads),
              "device": next((r["device"] for m in modes.values() for r in m["runs"] if "device" in r), None),
              "settings": {"model": f"hidden {args.hidden_size}, MLP {args.intermediate_size}, "
                                    f"{args.num_layers} layers, {args.num_heads} heads ({args.num_kv_heads} key-value)",
                           "seq_len": args.seq_len, "steps": args.steps, "warmup": args.warmup,
                           "gradient_checkpointing": args.gradient_checkpointing, "peak_tflops": args.peak_tflops},
              "precision": next((r["precision"] for m in modes.values() for r in m["runs"] if "precision" in r), None),
              "modes": modes}
    md = markdown(result)
    write_outputs(args.out, result, md, args.benchmarks_md, "gpu_rm")
    print(md)


if __name__ == "__main__":
    main()
