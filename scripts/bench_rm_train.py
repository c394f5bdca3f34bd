"""Reward-model training throughput: varirm (``varirm fit``) vs TRL's ``RewardTrainer``.

What is compared: Bradley-Terry RM training of the same tiny Llama-style model (random init,
~10.8M parameters at the defaults, built by ``varirm.tiny.make_tiny_model`` with its tokenizer and
chat template, pad != eos) on the same pairs, for the same number of steps (by default exactly one
epoch, so both tools train on the same pairs) and pairs per step, with
the same precision (bf16 autocast where the CPU multiplies bf16 natively, else fp32, as ``varirm
fit`` itself chooses; ``--bf16`` / ``--no-bf16`` force one), optimizer (AdamW, constant
learning rate, no warm-up, no weight decay, gradient-norm clip 1.0), no gradient checkpointing and
no dropout, on CPU with the same number of torch threads.

Two data sets: (a) the real variable-length sharegpt pairs of ``../shared/data/dpo_en_demo.json``
(last 10% held out; TRL gets them in its conversational ``prompt``/``chosen``/``rejected`` message
format, varirm reads the file itself), (b) the synthetic task (``varirm.synthetic.write_task``:
``train.jsonl`` for training, ``test.jsonl`` held out).

How: every run is a fresh Python process (``--worker_spec``, started by this script), so peak RSS
(``ru_maxrss``) is the tool's own. varirm runs its real path,
``varirm.cli.cli_main(["fit", "--config", "recipes/quickstart.yaml", overrides...])``; TRL runs
``RewardTrainer(model=<dir>, args=RewardConfig(...), train_dataset=...)``. A callback (Lightning /
transformers) stamps the end of every optimizer step; after ``--warmup`` steps, the window from the
end of the last warm-up step to the end of the last step is timed (it holds data loading, the
optimizer and callbacks, nothing of the set-up). Throughput: pairs/s and non-pad tokens/s (real
tokens of chosen + rejected in the timed steps' batches). Set-up (model load, data reading and
tokenization, trainer construction; imports excluded) is reported apart. After training both models
are scored on the held-out pairs by one function (``varirm.scoring.score`` on
``varirm.reward_model.RewardModel`` around the trained transformers model: same rendering, same reading of
the last token). Runs alternate (varirm, TRL, varirm, TRL, ...) ``--repeats`` times per data set;
medians, min/max and the varirm / TRL ratio go to JSON, Markdown and BENCHMARKS.md.

Speed counts only at equal accuracy, and a few timed steps train nothing: so each tool also trains
on the synthetic task for ``--accuracy_steps`` steps (several epochs, until the tiny model has
learned the gold preference) with ``--accuracy_seeds`` seeds, and both trained models' held-out
accuracies are reported side by side.

Real-model mode (``--model_dir``): a pretrained model directory instead of the tiny one, e.g.
SmolLM2-135M-Instruct from ``varirm make-real-model``, trained with LoRA (``--lora_r``; the same
``peft.LoraConfig`` in both tools: rank, alpha, no dropout, the same target modules, the score head
trained in full) on dpo_en_demo at max_length 512, with ``recipes/real/smollm2_lora.yaml`` as
varirm's recipe. It also estimates the physical limit of a step: the FLOPs the LoRA step needs on
its non-pad tokens (frozen linears forward + input gradients, adapters forward + both gradients,
causal attention), over this CPU's matmul rate in the precision used, measured here with plain
``torch.matmul`` on the model's GEMM shapes; each tool's fraction of that limit is reported.

    python scripts/bench_rm_train.py                      # full run (a few minutes on 2 cores)
    varirm make-real-model --output artifacts/smollm2-135m-instruct
    python scripts/bench_rm_train.py --model_dir artifacts/smollm2-135m-instruct --lora_r 8   # real model (~10 min)
    python scripts/bench_rm_train.py --repeats 1 --steps 2 --warmup 1 --hidden_size 32 --num_layers 2 \\
        --num_heads 2 --out /tmp/b --benchmarks_md ''    # smoke run (tests)
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
from typing import Any  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, ROOT)

from bench_common import (  # noqa: E402
    PAIRED,
    DtypeProbe,
    StepClock,
    add_common_arguments,
    default_bf16,
    fmt,
    fmt_ratio,
    linear_shapes,
    machine,
    matmul_rate,
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
DPO_FILE = os.path.join(os.path.dirname(ROOT), "shared", "data", "dpo_en_demo.json")


# --- measurement inside a worker ----------------------------------------------------------------

class LightningClock(Callback):
    """Step times, pairs and tokens of varirm's batches (named in the CLI as ``__main__.LightningClock``)."""

    def __init__(self):
        self.clock, self.probe = StepClock(), DtypeProbe()
        self.pairs: list[int] = []
        self.tokens: list[int] = []
        self.positions: list[int] = []
        self.squares: list[int] = []  # sum over rows of (non-pad length)^2: attention cost
        self.peak_rss_mib = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.probe.attach(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.clock.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.clock.end()
        if "seq_lens" in batch:  # packed: the sequences' lengths, no pad position at all
            lengths = batch["seq_lens"]
            positions = int(lengths.sum())
        else:  # padded: a (2b, t) mask
            lengths, positions = batch["attention_mask"].sum(-1), batch["attention_mask"].numel()
        self.pairs.append(len(lengths) // 2)
        self.tokens.append(int(lengths.sum()))
        self.positions.append(positions)
        self.squares.append(int((lengths ** 2).sum()))

    def on_train_end(self, trainer, pl_module) -> None:
        self.probe.detach()
        self.peak_rss_mib = peak_rss_mib()


class CountingCollator:
    """Wraps TRL's collator: pairs, non-pad tokens and padded positions of each batch, in order."""

    def __init__(self, inner):
        self.inner = inner
        self.pairs: list[int] = []
        self.tokens: list[int] = []
        self.positions: list[int] = []
        self.squares: list[int] = []

    def __call__(self, examples):
        batch = self.inner(examples)
        mask = batch["attention_mask"]
        self.pairs.append(len(examples))
        self.tokens.append(int(mask.sum()))
        self.positions.append(mask.numel())
        self.squares.append(int((mask.sum(-1) ** 2).sum()))
        return batch


def throughput(clock: StepClock, warmup: int, pairs: list[int], tokens: list[int], positions: list[int],
               squares: list[int]) -> dict:
    t0, t1, n = clock.window(warmup)
    steps = slice(warmup, warmup + n)
    timed_pairs, timed_tokens, timed_positions = sum(pairs[steps]), sum(tokens[steps]), sum(positions[steps])
    return {"timed_steps": n, "timed_s": t1 - t0, "timed_pairs": timed_pairs, "timed_tokens": timed_tokens,
            "timed_squared_lengths": sum(squares[steps]),
            "pairs_per_s": timed_pairs / (t1 - t0), "tokens_per_s": timed_tokens / (t1 - t0),
            "pad_fraction": 1 - timed_tokens / timed_positions, "steps_run": len(clock.ends)}


def heldout_accuracy(hf_model, model_dir: str, path: str, max_length: int) -> dict:
    """Pairwise accuracy on held-out pairs, the same way for both tools: ``varirm.scoring.score``
    (chat-template rendering of ``varirm.chat.encode_prompt_response``, cut to ``max_length`` as in
    training, reward at the last non-pad token) on the trained transformers model, in fp32."""
    from varirm.chat import load_tokenizer
    from varirm.formats import load_preference_rows
    from varirm.reward_model import RewardModel
    from varirm.scoring import score

    rows, _ = load_preference_rows(path, "train", "auto", {}, False)
    tokenizer = load_tokenizer(model_dir)
    if hf_model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        hf_model.resize_token_embeddings(len(tokenizer))  # TRL keeps pad == eos; varirm's pad row is never read
    rm = RewardModel(hf_model).eval()
    prompts = [r["prompt_messages"] or r["prompt_text"] for r in rows]
    chosen = score(rm, tokenizer, prompts, [r["chosen"] for r in rows], max_length=max_length)
    rejected = score(rm, tokenizer, prompts, [r["rejected"] for r in rows], max_length=max_length)
    return {"heldout_pairs": len(rows), "heldout_acc": float((chosen > rejected).float().mean()),
            "heldout_ties": int((chosen == rejected).sum())}


def run_varirm(spec: dict) -> dict:
    from varirm.cli import cli_main

    t_begin = time.perf_counter()
    run_dir = os.path.join(spec["work"], "run")
    epoch = not spec["steps"]  # 0: exactly one epoch over the training pairs
    total = -1 if epoch else spec["warmup"] + spec["steps"]
    lora = (["--model.init_args.lora_r", str(spec["lora_r"]), "--model.init_args.lora_alpha", str(spec["lora_alpha"]),
             "--model.init_args.lora_dropout", "0.0",
             "--model.init_args.lora_target_modules", json.dumps(spec["lora_targets"])]
            if spec["lora_r"] else ["--model.init_args.lora_r", "0"])
    cli = cli_main([
        "fit", "--config", os.path.join(ROOT, spec["recipe"]),
        "--seed_everything", str(spec["seed"]),
        "--trainer.default_root_dir", run_dir,
        "--trainer.max_steps", str(total), "--trainer.max_epochs", "1" if epoch else "-1",
        "--trainer.precision", "bf16-mixed" if spec["bf16"] else "32-true",
        "--trainer.gradient_clip_val", str(spec["max_grad_norm"]),
        "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0", *quiet_run_args(run_dir),
        "--trainer.callbacks+=__main__.LightningClock",
        "--model.init_args.model_name_or_path", spec["model_dir"],
        "--model.init_args.lr", str(spec["lr"]), "--model.init_args.weight_decay", "0.0",
        "--model.init_args.warmup_ratio", "0.0", "--model.init_args.scheduler", "constant",
        *lora, "--data.init_args.format", "auto", "--data.init_args.val_fraction", "0",
        "--data.init_args.train", spec["train"], "--data.init_args.val", "null", "--data.init_args.test", "null",
        "--data.init_args.max_length", str(spec["max_length"]), "--data.init_args.overlong", spec["varirm_overlong"],
        "--data.init_args.batch_size", str(spec["batch_size"]),
        "--data.init_args.length_grouping", str(spec["length_grouping"]).lower(),
        "--data.init_args.packing", str(spec["packing"]).lower(),
        "--model.init_args.gradient_checkpointing", str(spec["gradient_checkpointing"]).lower(),
    ])
    timer = next(c for c in cli.trainer.callbacks if isinstance(c, LightningClock))
    stats = cli.datamodule.stats["train"]
    out = {"setup_s": timer.clock.first_start - t_begin, "peak_rss_mib": timer.peak_rss_mib,
           "autocast_dtypes": sorted(timer.probe.dtypes),
           "parameters": sum(p.numel() for p in cli.model.model.parameters()),
           "trainable_parameters": sum(p.numel() for p in cli.model.model.parameters() if p.requires_grad),
           "rows": {"given": stats["rows_read"], "over_max_length": stats["overlong"],
                    "over_max_length_policy": stats["overlong_policy"], "trained_on": stats["pairs"]},
           **throughput(timer.clock, spec["warmup"], timer.pairs, timer.tokens, timer.positions, timer.squares)}
    if spec["heldout_eval"]:
        out.update(heldout_accuracy(cli.model.model.hf_model, spec["model_dir"], spec["heldout"], spec["max_length"]))
    out["tokenizer_size"] = len(cli.model.tokenizer)
    return out


def trl_rows(path: str) -> list[dict[str, Any]]:
    """Pairs of a varirm-readable file in TRL's preference formats: conversational (``prompt``
    messages, ``chosen``/``rejected`` as one assistant message each) or standard strings."""
    from varirm.formats import load_preference_rows

    rows, _ = load_preference_rows(path, "train", "auto", {}, False)
    out = []
    for r in rows:
        if r["prompt_messages"]:
            out.append({"prompt": r["prompt_messages"], "chosen": [{"role": "assistant", "content": r["chosen"]}],
                        "rejected": [{"role": "assistant", "content": r["rejected"]}]})
        else:
            out.append({"prompt": r["prompt_text"], "chosen": r["chosen"], "rejected": r["rejected"]})
    return out


def run_trl(spec: dict) -> dict:
    import datasets
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer

    clock, probe = StepClock(), DtypeProbe()
    rss = {}

    class HFClock(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            probe.attach(model)

        def on_step_begin(self, args, state, control, **kwargs):
            clock.start()

        def on_step_end(self, args, state, control, **kwargs):
            clock.end()

        def on_train_end(self, args, state, control, **kwargs):
            probe.detach()
            rss["peak"] = peak_rss_mib()

    t_begin = time.perf_counter()
    rows = trl_rows(spec["train"])
    config = RewardConfig(
        output_dir=os.path.join(spec["work"], "run"), seed=spec["seed"], num_train_epochs=1,
        max_steps=spec["warmup"] + spec["steps"] if spec["steps"] else -1,
        per_device_train_batch_size=spec["batch_size"], learning_rate=spec["lr"], lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, optim="adamw_torch", max_grad_norm=spec["max_grad_norm"],
        bf16=spec["bf16"], use_cpu=True, gradient_checkpointing=spec["gradient_checkpointing"],
        gradient_checkpointing_kwargs={"use_reentrant": False}, disable_dropout=True,
        max_length=spec["max_length"], report_to="none", save_strategy="no", eval_strategy="no",
        logging_steps=10**9, disable_tqdm=True, dataloader_num_workers=0)
    peft_config = None
    if spec["lora_r"]:  # the LoraConfig varirm.reward_model.load_reward_model builds
        from peft import LoraConfig, TaskType

        peft_config = LoraConfig(r=spec["lora_r"], lora_alpha=spec["lora_alpha"], lora_dropout=0.0,
                                 target_modules=spec["lora_targets"], modules_to_save=["score"],
                                 task_type=TaskType.SEQ_CLS)
    trainer = RewardTrainer(model=spec["model_dir"], args=config, train_dataset=datasets.Dataset.from_list(rows),
                            callbacks=[HFClock()], peft_config=peft_config)
    counter = trainer.data_collator = CountingCollator(trainer.data_collator)
    trainer.train()
    out = {"setup_s": clock.first_start - t_begin, "peak_rss_mib": rss["peak"], "autocast_dtypes": sorted(probe.dtypes),
           "parameters": sum(p.numel() for p in trainer.model.parameters()),
           "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
           "rows": {"given": len(rows), "over_max_length": len(rows) - len(trainer.train_dataset),
                    "over_max_length_policy": "drop", "trained_on": len(trainer.train_dataset)},
           **throughput(clock, spec["warmup"], counter.pairs, counter.tokens, counter.positions, counter.squares)}
    model = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    if spec["heldout_eval"]:
        out.update(heldout_accuracy(model, spec["model_dir"], spec["heldout"], spec["max_length"]))
    out["tokenizer_size"] = len(trainer.processing_class)
    return out


def step_flops(config, lora_r: int, tokens: int, squared_lengths: int) -> dict[str, float]:
    """FLOPs a Bradley-Terry step needs on ``tokens`` non-pad tokens (rows of lengths ``L_i``,
    ``squared_lengths = sum L_i^2``), counting multiply-adds as 2 FLOPs:

    - frozen block linears (``P`` weights): forward ``2 T P`` + input gradients ``2 T P``
      (full fine-tuning adds weight gradients, ``2 T P`` more);
    - LoRA adapters (rank ``r`` on every block linear, ``P_r = r (in + out)`` each): forward,
      input and weight gradients, ``6 T P_r``;
    - causal attention (``QK^T`` and ``AV``, only the lower triangle): forward ``2 sum L_i^2 H d_h``
      per layer, backward twice that.

    Embedding lookups, norms, activations, the score head (read at one token per row) and the
    optimizer are left out: the limit is a lower bound on the step's time."""
    layers = config.num_hidden_layers
    shapes = linear_shapes(config)
    frozen = layers * sum(i * o for i, o in shapes)
    adapters = layers * sum(lora_r * (i + o) for i, o in shapes) if lora_r else 0
    heads_dim = config.num_attention_heads * (getattr(config, "head_dim", None)
                                              or config.hidden_size // config.num_attention_heads)
    linear = (4 if lora_r else 6) * tokens * frozen + 6 * tokens * adapters
    attention = 3 * 2 * squared_lengths * heads_dim * layers
    return {"linear": float(linear), "attention": float(attention), "total": float(linear + attention)}


def physical_limit(model_dir: str, lora_r: int, bf16: bool, threads: int,
                   runs: dict[str, list[dict]]) -> dict[str, Any]:
    """Each tool's achieved FLOP rate on its timed steps (:func:`step_flops` on the tokens it
    actually trained on) as a fraction of the measured matmul rate, and the time per step the
    limit allows for the same tokens."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    rate = matmul_rate(config, bf16, threads)
    out: dict[str, Any] = {"matmul": rate, "flops_model": (
        "frozen block linears forward + input gradients (4 T P), LoRA adapters forward + input and weight gradients "
        "(6 T P_r), causal attention forward + backward (6 H d_h sum_i L_i^2 per layer), with T the step's non-pad "
        "tokens; embeddings, norms, activations, the score head and the optimizer left out, so the limit is a lower "
        "bound on the step time.")}
    for tool, tool_runs in runs.items():
        fractions, limit_s, actual_s, flops = [], [], [], []
        for r in tool_runs:
            f = step_flops(config, lora_r, r["timed_tokens"], r["timed_squared_lengths"])
            achieved = f["total"] / r["timed_s"]
            fractions.append(achieved / (rate["gflops_per_s"] * 1e9))
            limit_s.append(f["total"] / (rate["gflops_per_s"] * 1e9) / r["timed_steps"])
            actual_s.append(r["timed_s"] / r["timed_steps"])
            flops.append(f["total"] / r["timed_steps"])
        out[tool] = {"fraction_of_limit": summary(fractions, 3), "limit_s_per_step": summary(limit_s, 2),
                     "s_per_step": summary(actual_s, 2), "tflop_per_step": summary([x / 1e12 for x in flops], 3)}
    return out


def same_token_ids(model_dir: str, path: str) -> dict[str, int]:
    """Pairs whose chosen and rejected token ids are the same through varirm's tokenization (prompt
    and response rendered and tokenized apart, :func:`varirm.chat.encode_prompt_response`) and TRL's
    (the whole conversation through ``apply_chat_template``, as ``trl.data_utils._tokenize`` does)."""
    from transformers import AutoTokenizer

    from varirm.chat import encode_prompt_response, load_tokenizer
    from varirm.formats import load_preference_rows

    rows, _ = load_preference_rows(path, "train", "auto", {}, False)
    ours, theirs = load_tokenizer(model_dir), AutoTokenizer.from_pretrained(model_dir)
    same = 0
    for r, x in zip(rows, trl_rows(path)):
        prompt = r["prompt_messages"] or r["prompt_text"]
        ok = True
        for side in ("chosen", "rejected"):
            a = sum(encode_prompt_response(ours, prompt, r[side]), [])
            if r["prompt_messages"]:
                b = theirs.apply_chat_template(x["prompt"] + x[side], tokenize=True, return_dict=True)["input_ids"]
            else:  # TRL appends eos, then tokenizes prompt + response
                b = theirs(text=x["prompt"] + x[side] + theirs.eos_token)["input_ids"]
            ok = ok and a == b
        same += ok
    return {"pairs": len(rows), "identical": same}


def worker(spec: dict) -> None:
    import torch

    torch.set_num_threads(spec["threads"])
    import_s = time.perf_counter() - T_PROCESS
    result = run_varirm(spec) if spec["tool"] == "varirm" else run_trl(spec)
    result.update(tool=spec["tool"], torch_threads=torch.get_num_threads(), import_s=import_s,
                  process_s=time.perf_counter() - T_PROCESS,
                  thp_mem_alloc=os.environ.get("THP_MEM_ALLOC_ENABLE"))  # set by `import varirm` before torch
    with open(spec["result"], "w") as f:
        json.dump(result, f)


# --- the comparison -----------------------------------------------------------------------------

def prepare_datasets(work: str, args) -> dict[str, dict[str, Any]]:
    """Train and held-out files of each data set, in the layout varirm reads."""
    out = {}
    if "dpo_en_demo" in args.datasets:
        with open(args.dpo_file) as f:
            rows = json.load(f)
        n_held = max(1, round(len(rows) * args.heldout_fraction))
        paths = {}
        for split, part in (("train", rows[:-n_held]), ("heldout", rows[-n_held:])):
            paths[split] = os.path.join(work, f"dpo_{split}.json")
            with open(paths[split], "w") as f:
                json.dump(part, f, ensure_ascii=False)
        out["dpo_en_demo"] = {**paths, "max_length": args.dpo_max_length, "batch_size": args.dpo_batch_size,
                              "source": os.path.relpath(args.dpo_file, ROOT),
                              "split": f"first {len(rows) - n_held} rows train, last {n_held} held out"}
    if "synthetic" in args.datasets:
        from varirm.synthetic import write_task

        task = os.path.join(work, "synthetic")
        write_task(task, n_train=args.synthetic_train_pairs, n_val=8, n_test=args.synthetic_heldout_pairs, n_demos=8,
                   n_prompts=8, n_eval_prompts=8, seed=args.seed)
        out["synthetic"] = {"train": os.path.join(task, "train.jsonl"), "heldout": os.path.join(task, "test.jsonl"),
                            "max_length": args.synthetic_max_length, "batch_size": args.synthetic_batch_size,
                            "source": "varirm.synthetic.write_task",
                            "split": f"{args.synthetic_train_pairs} train pairs, "
                                     f"{args.synthetic_heldout_pairs} held out"}
    return out


def aggregate(runs: list[dict]) -> dict[str, Any]:
    return {"pairs_per_s": summary([r["pairs_per_s"] for r in runs]),
            "tokens_per_s": summary([r["tokens_per_s"] for r in runs], 0),
            "peak_rss_mib": summary([r["peak_rss_mib"] for r in runs], 0),
            "setup_s": summary([r["setup_s"] for r in runs]),
            "heldout_acc": summary([r["heldout_acc"] for r in runs], 3) if "heldout_acc" in runs[0] else None,
            "pad_fraction": summary([r["pad_fraction"] for r in runs], 3),
            "heldout_pairs": runs[0].get("heldout_pairs", 0), "rows": runs[0]["rows"],
            "parameters": runs[0]["parameters"], "trainable_parameters": runs[0]["trainable_parameters"],
            "autocast_dtypes": sorted({d for r in runs for d in r["autocast_dtypes"]}),
            "torch_threads": sorted({r["torch_threads"] for r in runs}), "runs": runs}


def load_text(result: dict[str, Any]) -> str:
    loads = [x for d in result["datasets"].values() for tool in TOOLS for r in d[tool]["runs"]
             for x in r.get("load_average_1min", [])]
    return f"{min(loads)}-{max(loads)}" if loads else "not recorded"


def markdown(result: dict[str, Any]) -> str:
    s, m = result["settings"], result["machine"]
    lora = s.get("lora")
    model_text = (f"Same pretrained model for both ({s['model']}), LoRA r={lora['r']}, alpha {lora['alpha']}, "
                  f"no dropout, on {', '.join(lora['targets'])} of every block, score head trained in full "
                  "(one `peft.LoraConfig`)"
                  if lora else f"Same tiny Llama-style RM for both ({s['model']})") if s.get("real_model") else (
        f"Same tiny Llama-style RM for both ({s['model']})")
    checkpointing = ("gradient checkpointing (non-reentrant) in both" if s.get("gradient_checkpointing")
                     else "no gradient checkpointing")
    lines = [
        "## RM training on a real model: varirm vs TRL RewardTrainer" if s.get("real_model") else
        "## RM training: varirm vs TRL RewardTrainer", "",
        f"`{result['command']}` (CPU: {m['cpu']}; {m['torch_threads']} torch threads; torch {m['torch']}, transformers "
        f"{m['transformers']}, trl {m['trl']}, lightning {m['lightning']}).", "",
        f"{model_text}, same pairs, "
        + (f"{s['warmup']} warm-up + {s['steps']} timed optimizer steps per run (each tool in its own batch order, so "
           "the timed steps hold different pairs: compare non-pad tokens/s)" if s["steps"] else
           f"one epoch over the training pairs per run (both tools see exactly the same pairs), the first "
           f"{s['warmup']} optimizer steps untimed")
        + f", {s['precision']}, AdamW lr {s['lr']} constant, grad-norm clip "
        f"{s['max_grad_norm']}, {checkpointing}, no dropout. Each run is its own process; "
        f"{s['repeats']} runs per tool, alternating varirm, TRL (1-minute load average before/after each run, other "
        f"work on the machine included: {load_text(result)}). "
        + ("Held-out accuracy: both trained models scored by one function (`varirm.scoring.score`, fp32). "
           if any(d[t]["heldout_acc"] for d in result["datasets"].values() for t in TOOLS) else "")
        + "Cells: median [min-max].", "",
        "| data | tool | pairs/s | non-pad tokens/s | pad fraction | peak RSS MiB | set-up s | held-out acc "
        "| rows trained on |",
        "|---|---|---|---|---|---|---|---|---|"]
    for name, d in result["datasets"].items():
        label = f"{name} (max_length {d['max_length']}, {d['batch_size']} pairs/step)"
        for tool in TOOLS:
            t = d[tool]
            rows = t["rows"]
            acc = f"{fmt(t['heldout_acc'])} ({t['heldout_pairs']} pairs)" if t["heldout_acc"] else "not measured"
            lines.append(f"| {label} | {tool} | {fmt(t['pairs_per_s'])} | {fmt(t['tokens_per_s'])} | "
                         f"{t['pad_fraction']['median']} | {fmt(t['peak_rss_mib'])} | {fmt(t['setup_s'])} | "
                         f"{acc} | {rows['trained_on']} of "
                         f"{rows['given']} ({rows['over_max_length']} over max_length, "
                         f"{rows['over_max_length_policy']}) |")
    lines.append("")
    for name, d in result["datasets"].items():
        r = d["ratio_varirm_over_trl"]
        lines.append(f"- {name}, varirm / TRL (medians): pairs/s **{r['pairs_per_s']}**, tokens/s "
                     f"**{r['tokens_per_s']}**, peak RSS {r['peak_rss_mib']}, set-up {r['setup_s']}.")
        if "tokens_per_s_paired" in r:
            lines.append(f"- {name}, ratio of mean varirm / TRL, {PAIRED}: "
                         f"non-pad tokens/s {fmt_ratio(r['tokens_per_s_paired'])}; pairs/s "
                         f"{fmt_ratio(r['pairs_per_s_paired'])}.")
    for name, d in result["datasets"].items():
        lim = d.get("physical_limit")
        if not lim:
            continue
        mm = lim["matmul"]
        lines += ["", f"Physical limit ({name}): this CPU's plain `torch.matmul` rate in {mm['dtype']} on the model's "
                  f"GEMM shapes with {mm['threads']} threads, best shape: **{mm['gflops_per_s']} GFLOP/s** "
                  f"({', '.join(f'{k}: {v}' for k, v in mm['flops_per_s_by_shape'].items())}). FLOPs of a step: "
                  f"{lim['flops_model']}", "",
                  "| tool | s/step (measured) | TFLOP/step (its non-pad tokens) | s/step at the matmul rate "
                  "| fraction of the limit |",
                  "|---|---|---|---|---|"]
        for tool in TOOLS:
            t = lim[tool]
            lines.append(f"| {tool} | {fmt(t['s_per_step'])} | {fmt(t['tflop_per_step'])} | "
                         f"{fmt(t['limit_s_per_step'])} | **{fmt(t['fraction_of_limit'])}** |")
    a = result.get("accuracy")
    if a:
        lines += ["",
                  f"Accuracy after training: both tools, {a['steps']} steps ({a['epochs']} epochs) on the synthetic "
                  f"task from the start (same settings as above), seeds {a['seeds']}, each model scored on the "
                  f"{a['varirm']['runs'][0]['heldout_pairs']} held-out pairs by the same function.", "",
                  "| tool | held-out acc per seed | median | pairs/s over the whole run |", "|---|---|---|---|"]
        for tool in TOOLS:
            t = a[tool]
            lines.append(f"| {tool} | {', '.join(f'{v:.3f}' for v in t['heldout_acc']['values'])} | "
                         f"{t['heldout_acc']['median']} | {fmt(t['pairs_per_s'])} |")
        lines += ["", f"Held-out accuracy, varirm minus TRL (medians): **{a['acc_difference']:+.3f}**. " + (
                  f"The {s['steps']}-step runs above measure speed only: their accuracies are those of barely trained "
                  "models." if s["steps"] else "The one-epoch runs above measure speed: their accuracies are those of "
                  "models after a single pass.")]
    dtypes = {tool: sorted({x for d in result["datasets"].values() for x in d[tool]["autocast_dtypes"]})
              for tool in TOOLS}
    lines += ["", f"Precision check (dtype of an MLP projection's output during training): varirm {dtypes['varirm']}, "
              f"TRL {dtypes['trl']}.", "", "Not the same in both tools:", ""]
    lines += [f"- {x}" for x in result["differences"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", default=None,
                        help="real-model mode: this model directory (e.g. from varirm make-real-model) instead of a "
                             "tiny random one; recipe recipes/real/smollm2_lora.yaml, dpo_en_demo only, max_length 512")
    parser.add_argument("--lora_r", type=int, default=0, help="LoRA rank in both tools (0: full fine-tuning)")
    parser.add_argument("--lora_alpha", type=int, default=16)
    parser.add_argument("--lora_targets", nargs="+",
                        default=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                        help="LoRA target modules in both tools")
    parser.add_argument("--datasets", nargs="+", choices=["dpo_en_demo", "synthetic"], default=None,
                        help="default: both (tiny model), dpo_en_demo (--model_dir)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per tool and data set (alternating)")
    parser.add_argument("--steps", type=int, default=0,
                        help="timed optimizer steps per run; 0: one epoch over the training pairs (both tools then "
                             "train on exactly the same pairs, so pairs/s does not depend on which lengths were drawn)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before the timed ones")
    parser.add_argument("--dpo_file", default=DPO_FILE)
    parser.add_argument("--dpo_max_length", type=int, default=None, help="default 1024 (tiny), 512 (--model_dir)")
    parser.add_argument("--dpo_batch_size", type=int, default=4, help="pairs per step on dpo_en_demo")
    parser.add_argument("--heldout_fraction", type=float, default=0.1, help="last rows of dpo_en_demo held out")
    parser.add_argument("--synthetic_max_length", type=int, default=64)
    parser.add_argument("--synthetic_batch_size", type=int, default=32, help="pairs per step on the synthetic task")
    parser.add_argument("--synthetic_train_pairs", type=int, default=2048)
    parser.add_argument("--synthetic_heldout_pairs", type=int, default=500)
    parser.add_argument("--accuracy_steps", type=int, default=320,
                        help="steps of the longer runs on the synthetic task that compare held-out accuracy after "
                             "training (0: skip)")
    parser.add_argument("--accuracy_seeds", type=int, default=2, help="seeds of those runs, per tool")
    parser.add_argument("--section", default=None, help="BENCHMARKS.md section to write (default rm_train, or "
                                                          "rm_train_real with --model_dir)")
    parser.add_argument("--heldout_eval", action=argparse.BooleanOptionalAction, default=None,
                        help="score both trained models on the held-out pairs (default: tiny model only; a few LoRA "
                             "steps of the real model learn nothing worth scoring, and scoring costs more than "
                             "training)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast in both tools (default: only where this CPU has native bf16 matmuls, "
                             "as varirm fit decides; else fp32)")
    parser.add_argument("--varirm_overlong", choices=["drop", "truncate"], default="drop",
                        help="varirm's data.overlong; TRL always drops rows over max_length")
    parser.add_argument("--gradient_checkpointing", action=argparse.BooleanOptionalAction, default=False,
                        help="gradient checkpointing in both tools (non-reentrant)")
    parser.add_argument("--target_tokens", type=float, default=None,
                        help="varirm / TRL non-pad tokens/s target, judged by the paired interval")
    parser.add_argument("--target_pairs", type=float, default=None, help="the same for pairs/s")
    parser.add_argument("--packing", action=argparse.BooleanOptionalAction, default=False,
                        help="varirm's data.packing: padding-free batches (varirm.packing)")
    parser.add_argument("--length_grouping", action=argparse.BooleanOptionalAction, default=True,
                        help="varirm's data.length_grouping (its recipe default); TRL samples in random order")
    add_common_arguments(parser, "bench_rm_train",
                         "BPE vocabulary (trained on the synthetic task's texts and dpo_en_demo's)")
    args = parser.parse_args()
    if run_if_worker(args, worker):
        return
    real = args.model_dir is not None
    args.datasets = args.datasets or (["dpo_en_demo"] if real else ["dpo_en_demo", "synthetic"])
    args.dpo_max_length = args.dpo_max_length or (512 if real else 1024)
    args.section = args.section or ("rm_train_real" if real else "rm_train")
    if real and args.out == os.path.join(ROOT, "results", "bench_rm_train"):
        args.out += "_real"
    args.heldout_eval = not real if args.heldout_eval is None else args.heldout_eval
    args.bf16 = default_bf16(args.bf16)
    # a forced --bf16 on a CPU without native bf16: varirm fit would switch to fp32; keep it equal to TRL's
    os.environ["VARIRM_CPU_BF16"] = "1" if args.bf16 else "0"

    from varirm.tiny import make_tiny_model

    work = tempfile.mkdtemp(prefix="varirm-bench-rm-")
    try:
        # the tokenizer also learns the real data's text, as a user's tokenizer would cover it
        corpus_files = [args.dpo_file] if "dpo_en_demo" in args.datasets else None
        model_dir = os.path.abspath(args.model_dir) if real else make_tiny_model(
            os.path.join(work, "tiny"), hidden_size=args.hidden_size, num_layers=args.num_layers,
            num_heads=args.num_heads, vocab_size=args.vocab_size, corpus_files=corpus_files, seed=args.seed)
        recipe = os.path.join("recipes", "real", "smollm2_lora.yaml") if real else "recipes/quickstart.yaml"
        data = prepare_datasets(work, args)

        def run(name: str, tool: str, label: str, steps: int, warmup: int, seed: int) -> dict:
            d = data[name]
            run_work = os.path.join(work, f"{name}-{tool}-{label}")
            os.makedirs(run_work)
            spec = {"tool": tool, "work": run_work, "model_dir": model_dir, "train": d["train"],
                    "heldout": d["heldout"], "max_length": d["max_length"], "batch_size": d["batch_size"],
                    "steps": steps, "warmup": warmup, "lr": args.lr, "max_grad_norm": args.max_grad_norm,
                    "bf16": args.bf16, "varirm_overlong": args.varirm_overlong, "length_grouping": args.length_grouping,
                    "packing": args.packing, "seed": seed, "recipe": recipe, "heldout_eval": args.heldout_eval,
                    "lora_r": args.lora_r, "lora_alpha": args.lora_alpha, "lora_targets": args.lora_targets,
                    "gradient_checkpointing": args.gradient_checkpointing}
            load_before = os.getloadavg()[0]
            res = run_worker(os.path.abspath(__file__), spec, work, f"{name}-{tool}-{label}", args.threads)
            res["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # before, after
            print(f"{name} {tool} {label}: {res['pairs_per_s']:.2f} pairs/s, {res['tokens_per_s']:.0f} tokens/s, "
                  f"peak RSS {res['peak_rss_mib']:.0f} MiB, held-out acc {res.get('heldout_acc', float('nan')):.3f}, "
                  f"process {res['process_s']:.1f} s (imports {res['import_s']:.1f} s, set-up {res['setup_s']:.1f} s)",
                  file=sys.stderr, flush=True)
            return res

        datasets_out = {}
        for name, d in data.items():
            runs: dict[str, list[dict]] = {tool: [] for tool in TOOLS}
            for r in range(args.repeats):
                for tool in TOOLS:
                    runs[tool].append(run(name, tool, f"run{r + 1}", args.steps, args.warmup, args.seed))
            agg = {tool: aggregate(runs[tool]) for tool in TOOLS}
            if agg["varirm"]["autocast_dtypes"] != agg["trl"]["autocast_dtypes"]:
                raise RuntimeError(f"{name}: the tools trained in different precisions (MLP output dtypes: varirm "
                                   f"{agg['varirm']['autocast_dtypes']}, TRL {agg['trl']['autocast_dtypes']})")
            ratio = {k: round(agg["varirm"][k]["median"] / agg["trl"][k]["median"], 3)
                     for k in ("pairs_per_s", "tokens_per_s", "peak_rss_mib", "setup_s")}
            for key, target in (("tokens_per_s", args.target_tokens), ("pairs_per_s", args.target_pairs)):
                ratio[f"{key}_paired"] = paired_ratio([x[key] for x in runs["trl"]], [x[key] for x in runs["varirm"]],
                                                      target)
            datasets_out[name] = {**{k: d[k] for k in ("source", "split", "max_length", "batch_size")},
                                  "same_token_ids": same_token_ids(model_dir, d["train"]), **agg,
                                  "ratio_varirm_over_trl": ratio}
            if real:
                datasets_out[name]["physical_limit"] = physical_limit(model_dir, args.lora_r, args.bf16, args.threads,
                                                                      runs)
        accuracy = None
        if args.accuracy_steps > 0 and "synthetic" in data:
            # trained until the model has learned the task, so that held-out accuracy compares the tools
            acc_runs = {tool: [] for tool in TOOLS}
            for i in range(args.accuracy_seeds):
                for tool in TOOLS:
                    acc_runs[tool].append(run("synthetic", tool, f"accuracy-seed{args.seed + i}", args.accuracy_steps,
                                              0, args.seed + i))
            accuracy = {"dataset": "synthetic", "steps": args.accuracy_steps,
                        "epochs": round(args.accuracy_steps * data["synthetic"]["batch_size"]
                                        / args.synthetic_train_pairs, 2),
                        "seeds": list(range(args.seed, args.seed + args.accuracy_seeds)),
                        **{tool: {"heldout_acc": summary([r["heldout_acc"] for r in acc_runs[tool]], 3),
                                  "pairs_per_s": summary([r["pairs_per_s"] for r in acc_runs[tool]]),
                                  "runs": acc_runs[tool]} for tool in TOOLS}}
            accuracy["acc_difference"] = round(accuracy["varirm"]["heldout_acc"]["median"]
                                               - accuracy["trl"]["heldout_acc"]["median"], 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    params = next(iter(datasets_out.values()))["varirm"]["parameters"]
    result = {
        "command": shlex.join(["python", "scripts/bench_rm_train.py", *sys.argv[1:]]),
        "machine": machine(args.threads),
        "settings": {"model": (f"{args.model_dir}, {params / 1e6:.1f}M parameters" if real else
                               f"hidden {args.hidden_size}, {args.num_layers} layers, {args.num_heads} heads, "
                               f"{params / 1e6:.2f}M parameters"),
                     "real_model": real, "recipe": recipe,
                     "lora": ({"r": args.lora_r, "alpha": args.lora_alpha, "dropout": 0.0, "targets": args.lora_targets,
                               "modules_to_save": ["score"]} if args.lora_r else None),
                     "precision": "bf16 autocast" if args.bf16 else "fp32", "steps": args.steps, "warmup": args.warmup,
                     "repeats": args.repeats, "lr": args.lr, "max_grad_norm": args.max_grad_norm,
                     "optimizer": "AdamW (torch), constant lr, no warm-up, weight decay 0",
                     "varirm": f"varirm fit --config {recipe} + overrides (model, data, steps, LoRA, "
                               "precision, optimizer schedule, no logger/progress bar/validation, a ModelCheckpoint "
                               "that saves nothing)",
                     "trl": "RewardTrainer(model=<dir>, RewardConfig(use_cpu=True, optim='adamw_torch', "
                            "gradient_checkpointing=<as varirm's>, save_strategy='no', report_to='none'), "
                            "peft_config=<the same LoraConfig> with --lora_r)",
                     "varirm_overlong": args.varirm_overlong, "varirm_length_grouping": args.length_grouping,
                     "varirm_packing": args.packing, "gradient_checkpointing": args.gradient_checkpointing,
                     "timing": "end of the last warm-up step to the end of the last step (optimizer-step callbacks)"},
        "datasets": datasets_out,
        "accuracy": accuracy,
        "differences": [
            "Batch order: varirm groups pairs of similar length into batches (data.length_grouping, its recipe "
            f"default; here {args.length_grouping}); TRL samples in random order, so its batches hold more padding "
            "(pad fraction column). Non-pad tokens/s counts real tokens only.",
            "Over-long rows: TRL drops pairs longer than max_length; varirm truncates by default. Here varirm runs "
            f"with data.overlong={args.varirm_overlong} (rows trained on column).",
            "Tokenization: varirm tokenizes the rendered prompt and response apart (exact boundary); TRL tokenizes "
            "the whole rendered conversation with the same chat template. Checked: identical token ids for "
            + ", ".join(f"{d['same_token_ids']['identical']} of {d['same_token_ids']['pairs']} {name} training pairs"
                        for name, d in datasets_out.items()) + ".",
            "Reward read-out: varirm applies the head to the hidden state at the last attention-mask position; "
            "TRL's transformers model applies it at every position and picks the last non-pad one.",
            "Checkpointing: varirm's CLI always adds a ModelCheckpoint (and Lightning refuses "
            "enable_checkpointing=false beside it), so varirm gets one that saves nothing; TRL save_strategy='no'.",
            "Allocator: each worker imports varirm (scripts/bench_common.py) before torch, so both tools ran with "
            "THP_MEM_ALLOC_ENABLE=" + "/".join(sorted({str(r.get("thp_mem_alloc")) for d in datasets_out.values()
                                                      for t in TOOLS for r in d[t]["runs"]}))
            + " (transparent huge pages for tensors of 2 MB and more: what `import varirm` sets); a TRL user gets "
            "it only by setting it.",
            "Set-up: varirm's includes its CLI parsing and tokenization cache (empty at each run); TRL's includes "
            "converting the rows to its conversational format and tokenizing.",
        ],
    }
    md = markdown(result)
    write_outputs(args.out, result, md, args.benchmarks_md, args.section)
    print(md)


if __name__ == "__main__":
    main()
