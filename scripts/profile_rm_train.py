"""Where RM training time goes: ``torch.profiler`` over real ``varirm fit`` steps.

Runs ``varirm fit`` (recipes/quickstart.yaml with overrides) on the real variable-length pairs of
``../shared/data/dpo_en_demo.json`` with the benchmark's tiny model (the same settings as
``scripts/bench_rm_train.py``), profiles ``--steps`` optimizer steps after ``--warmup`` with
``torch.profiler`` (CPU activities), and writes the top operators by self CPU time, plus the
share of the step spent in forward, backward, optimizer and data loading (Lightning's
``SimpleProfiler``), to JSON, Markdown and a BENCHMARKS.md section.

    python scripts/profile_rm_train.py                  # full run (about a minute on 2 cores)
    python scripts/profile_rm_train.py --model_dir artifacts/smollm2-135m-instruct --lora_r 8 --max_length 512 \
        --packing --steps 5 --warmup 2 --out results/profile_rm_train_real_packing --benchmarks_md ''  # SmolLM2
    python scripts/profile_rm_train.py --steps 2 --warmup 1 --hidden_size 32 --num_layers 2 --num_heads 2 \\
        --out /tmp/p --benchmarks_md ''              # smoke run (tests)
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, ROOT)

from bench_common import add_common_arguments, machine, quiet_run_args, write_outputs  # noqa: E402
from lightning.pytorch import Callback  # noqa: E402

DPO_FILE = os.path.join(os.path.dirname(ROOT), "shared", "data", "dpo_en_demo.json")

# operator-name fragments of each kind of work, for the "what dominated" summary
KINDS = {"matrix multiplies": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"),
         "attention (scaled dot product, forward and backward)": ("scaled_dot_product",),
         "optimizer (AdamW)": ("Optimizer.step", "adam"),
         "copies and casts": ("aten::copy_", "aten::to", "aten::_to_copy", "aten::clone", "aten::contiguous")}


def kind_shares(events, total: float) -> dict[str, float]:
    """Share of all self CPU time per kind of work in :data:`KINDS` (each operator counted once,
    under the first kind it matches); the rest is 'other (elementwise, reductions, ...)'."""
    shares = dict.fromkeys(KINDS, 0.0)
    for e in events:
        name = e.key.lower()
        kind = next((k for k, frags in KINDS.items() if any(f.lower() in name for f in frags)), None)
        if kind is not None:
            shares[kind] += e.self_cpu_time_total / total
    shares["other (elementwise, reductions, ...)"] = 1 - sum(shares.values())
    return {k: round(v, 3) for k, v in shares.items()}


class TorchProfile(Callback):
    """``torch.profiler`` over optimizer steps ``warmup + 1 .. warmup + steps`` (named in the CLI as
    ``__main__.TorchProfile``)."""

    def __init__(self, warmup: int = 2, steps: int = 8):
        import torch

        self.warmup, self.steps = warmup, steps
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        self.seen, self.faults = 0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen == self.warmup:
            self.faults = -resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            self.profiler.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.seen == self.warmup + self.steps:
            self.profiler.__exit__(None, None, None)
            self.faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="profiled optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="steps before profiling starts")
    parser.add_argument("--dpo_file", default=DPO_FILE)
    parser.add_argument("--max_length", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=4, help="pairs per step")
    parser.add_argument("--top", type=int, default=12, help="operators listed")
    parser.add_argument("--model_dir", default=None, help="a real model (recipe recipes/real/smollm2_lora.yaml) "
                        "instead of the tiny random one (recipes/quickstart.yaml)")
    parser.add_argument("--lora_r", type=int, default=None, help="LoRA rank (default: the recipe's)")
    parser.add_argument("--packing", action=argparse.BooleanOptionalAction, default=False,
                        help="data.packing: padding-free batches")
    add_common_arguments(parser, "profile_rm_train", "BPE vocabulary (trained on the synthetic and dpo_en_demo texts)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from lightning.pytorch.profilers import SimpleProfiler

    from varirm.tiny import make_tiny_model

    work = tempfile.mkdtemp(prefix="varirm-profile-")
    try:
        model_dir = os.path.abspath(args.model_dir) if args.model_dir else make_tiny_model(
            os.path.join(work, "tiny"), hidden_size=args.hidden_size, num_layers=args.num_layers,
            num_heads=args.num_heads, vocab_size=args.vocab_size, corpus_files=[args.dpo_file], seed=args.seed)
        recipe = os.path.join(ROOT, "recipes", *(("real", "smollm2_lora.yaml") if args.model_dir
                                                 else ("quickstart.yaml",)))
        os.environ["VARIRM_CACHE"] = os.path.join(work, "cache")
        simple = SimpleProfiler(dirpath=work, filename="simple")
        from varirm.lightning_cli import VarirmCLI, run_lightning
        from varirm.preference_data import PreferenceDataModule
        from varirm.reward_training import RewardModelModule

        class ProfiledCLI(VarirmCLI):
            def instantiate_trainer(self, **kwargs):
                return super().instantiate_trainer(**{**kwargs, "profiler": simple})

        cli = run_lightning(RewardModelModule, PreferenceDataModule, [
            "fit", "--config", recipe, "--seed_everything", str(args.seed),
            "--trainer.default_root_dir", os.path.join(work, "run"),
            "--trainer.max_steps", str(args.warmup + args.steps), "--trainer.max_epochs", "-1",
            "--trainer.limit_val_batches", "0", *quiet_run_args(os.path.join(work, "run")),
            "--trainer.callbacks+=__main__.TorchProfile",
            "--trainer.callbacks.warmup", str(args.warmup), "--trainer.callbacks.steps", str(args.steps),
            "--model.init_args.model_name_or_path", model_dir, "--model.init_args.warmup_ratio", "0.0",
            "--model.init_args.scheduler", "constant",
            "--data.init_args.train", args.dpo_file, "--data.init_args.val", "null", "--data.init_args.test", "null",
            "--data.init_args.max_length", str(args.max_length), "--data.init_args.overlong", "drop",
            "--data.init_args.batch_size", str(args.batch_size), "--data.init_args.val_fraction", "0",
            "--data.init_args.packing", str(args.packing).lower(),
            *(["--model.init_args.lora_r", str(args.lora_r)] if args.lora_r is not None else []),
        ], cli_class=ProfiledCLI)
        precision = cli.trainer.precision  # the recipe's bf16-mixed, or 32-true on a CPU without native bf16
        profile = next(c for c in cli.trainer.callbacks if isinstance(c, TorchProfile))
        prof, faults = profile.profiler, profile.faults
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]
        ops = [{"op": e.key, "calls": e.count, "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 1),
                "share": round(e.self_cpu_time_total / total, 3)} for e in top]
        kinds = kind_shares(events, total)
        phases = {}
        for action, durations in simple.recorded_durations.items():
            for key in ("run_training_batch", "[Strategy]SingleDeviceStrategy.training_step",
                        "[Strategy]SingleDeviceStrategy.backward", "optimizer_step",
                        "[_TrainingEpochLoop].train_dataloader_next"):
                if action == key or action.endswith(key):
                    phases[key] = round(sum(durations[args.warmup:]) * 1e3, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"command": shlex.join(["python", "scripts/profile_rm_train.py", *sys.argv[1:]]),
              "machine": machine(args.threads), "steps": args.steps, "warmup": args.warmup,
              "precision": precision, "total_self_cpu_ms": round(total / 1e3, 1), "top_ops": ops, "kind_shares": kinds,
              "model": os.path.basename(os.path.normpath(args.model_dir)) if args.model_dir else "tiny",
              "lora_r": args.lora_r, "packing": args.packing, "minor_page_faults": faults,
              "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE"),
              "lightning_phases_ms": phases}
    lines = ["## Profile: where varirm's RM training step spends its time", "",
             f"`{result['command']}` (CPU: {result['machine']['cpu']}): torch.profiler (CPU) over {args.steps} "
             f"`varirm fit` steps of the {result['model']} model"
             + (f" (LoRA r={args.lora_r})" if args.lora_r else "") + " on dpo_en_demo "
             f"(max_length {args.max_length}, {args.batch_size} pairs/step, "
             f"{'packed' if args.packing else 'padded'}, precision {result['precision']}), "
             f"after {args.warmup} warm-up steps; {faults} minor page faults in those steps (THP_MEM_ALLOC_ENABLE="
             f"{result['thp_mem_alloc']}).", "", "| operator | calls | self CPU ms | share |",
             "|---|---|---|---|"]
    lines += [f"| `{o['op']}` | {o['calls']} | {o['self_cpu_ms']} | {o['share']:.1%} |" for o in ops]
    top_kind = max(kinds, key=kinds.get)
    lines += ["", f"What dominated: {top_kind}, {kinds[top_kind]:.1%} of all self CPU time. By kind: "
              + ", ".join(f"{k} {v:.1%}" for k, v in kinds.items()) + "."]
    if phases:
        lines += ["", "Lightning phases over the same steps (ms; optimizer_step wraps the closure that runs "
                  "training_step and backward): "
                  + ", ".join(f"{k.split('.')[-1]} {v}" for k, v in phases.items()) + "."]
        loading, batch = phases.get("[_TrainingEpochLoop].train_dataloader_next"), phases.get("run_training_batch")
        if loading is not None and batch:
            verdict = ("the step is bound by the model's compute, not by data" if loading / batch < 0.05
                       else "data loading is a real part of the step")
            lines += ["", f"Data loading (collation included) took {loading} ms against {batch} ms of training "
                      f"batches ({loading / batch:.2%}): {verdict}."]
    md = "\n".join(lines) + "\n"
    write_outputs(args.out, result, md, args.benchmarks_md, "profile_rm_train")
    print(md)


if __name__ == "__main__":
    main()
