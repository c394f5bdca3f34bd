"""The GPU check: everything varirm wants measured on a GPU, in one run that fits a short GPU loan.

Parts, in order, each in its own process with its own time limit; a part that fails or runs out of
time is recorded and the next one runs:

1. ``env``: device, versions, and the device's own dense bf16 matmul rate (an ``n x n x n`` product,
   timed after warm-ups), the denominator of the RM benchmark's MFU;
2. ``rm_1b``: ``scripts/bench_gpu_rm.py`` on a ~1B Llama-shaped random-init model (no Hub): full,
   LoRA and QLoRA at 2048 tokens: tokens/s, MFU against the measured rate, peak memory;
3. ``qlora_8b``: the same benchmark, QLoRA only, on a Llama-3.1-8B-shaped model: peak memory (target
   under 24 GB);
4. ``rloo_testbed``: RLOO throughput of the synthetic testbed's GPU recipe
   (``recipes/rloo/verify_testbed_gpu.yaml``) from a testbed-shaped policy against the gold reward:
   two runs of different lengths, so start-up cancels out of the prompts/s;
5. ``verify_testbed``: one seed of ``recipes/verify/testbed_gpu.yaml``, shortened to fit (the changes
   are listed in the summary), with its wall time.

``--dry-run`` runs the same code paths on the CPU with tiny shapes (the test suite runs it), so the
script is known to work before a GPU is lent. Outputs under OUT: ``summary.json``, ``summary.md``,
``env.json``, one log per part, each benchmark's own JSON/Markdown, ``verify_report.md``; the runs
themselves under ``OUT/work``. Run it through ``scripts/gpu_check.sh``.

    python scripts/gpu_check.py OUT [--dry-run] [--parts env rm_1b ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ["env", "rm_1b", "qlora_8b", "rloo_testbed", "verify_testbed"]
# seconds per part on the GPU (the loan is about 15 minutes in all, 10 minutes per command at most)
LIMITS = {"env": 60, "rm_1b": 200, "qlora_8b": 200, "rloo_testbed": 120, "verify_testbed": 300}
DRY_LIMIT = 120
# the whole command's default budget on the GPU: the device tool stops a command at 600 s. Parts that
# would not fit are cut to the time left or skipped (recorded); run them in a second command (--parts).
BUDGET = 540
NOMINAL_TFLOPS = 989.0  # dense bf16 peak of an H100/H200 SXM, the usual MFU denominator

SHAPES = {  # bench_gpu_rm.py model shapes
    "1b": ["--hidden_size", "2048", "--intermediate_size", "8192", "--num_layers", "16", "--num_heads", "32",
           "--num_kv_heads", "8"],
    "8b": ["--hidden_size", "4096", "--intermediate_size", "14336", "--num_layers", "32", "--num_heads", "32",
           "--num_kv_heads", "8"],
    "tiny": ["--hidden_size", "64", "--intermediate_size", "128", "--num_layers", "2", "--num_heads", "4",
             "--num_kv_heads", "2"],
}
# testbed world sizes of the verify recipe's prepare steps: shortened on the GPU (the recipe's 20000 pairs,
# 20000 demonstrations and 22000 prompts do not fit in a part), tiny for the dry run
GPU_PREPARE = {"n_train": 4000, "n_demos": 4000, "n_prompts": 4000, "n_eval_prompts": 256}
DRY_PREPARE = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "n_train": 64, "n_val": 16, "n_test": 16,
               "n_demos": 64, "n_prompts": 64, "n_eval_prompts": 8}
# RLOO batches for the dry run: prompts per step, samples per prompt, response length
DRY_RLOO = {"data.init_args.batch_size": 4, "model.init_args.k": 2, "model.init_args.max_new_tokens": 8}
SHORT_REWARD_MODELS = ["onpolicy_0", "bt_reg", "gold", "flat_gold"]  # of the recipe's 8


def matmul_tflops(n: int, repeats: int = 10, warmup: int = 3) -> dict[str, Any]:
    """Dense bf16 ``(n, n) @ (n, n)`` rate in TFLOP/s (``2 n^3`` FLOPs a product), mean of ``repeats``
    timed products after ``warmup`` untimed ones, on random normal data; CUDA when available."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync()
    seconds = (time.perf_counter() - start) / repeats
    return {"n": n, "repeats": repeats, "seconds_per_product": seconds, "tflops": 2 * n**3 / seconds / 1e12}


def env_part(out: str, dry: bool) -> None:
    import importlib.metadata as md
    import platform

    import torch

    versions = {}
    for name in ("torch", "transformers", "lightning", "peft", "bitsandbytes", "datasets", "jsonargparse",
                 "torchmetrics"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    result = {"python": platform.python_version(), "versions": versions, "cuda": torch.version.cuda if cuda else None,
              "device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or platform.machine()})",
              "memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
              "matmul_bf16": matmul_tflops(256 if dry else 8192, repeats=2 if dry else 300)}  # ~0.4 s on an H200
    with open(os.path.join(out, "env.json"), "w") as f:
        json.dump(result, f, indent=2)


def rewrite_recipe(path: str, work: str, dry: bool) -> str:
    """A copy of a testbed recipe under ``work/recipes`` with its artifacts and runs under ``work``
    (and, for the dry run, the CPU instead of the GPU). Returns the copy's path."""
    text = open(os.path.join(ROOT, path)).read()
    # paths as YAML values and list items: at the start of a value only, so ``work`` itself is never rewritten
    text = re.sub(r"(?<![\w/.-])artifacts/testbed", f"{work}/testbed", text)
    text = re.sub(r"(?<![\w/.-])runs/", f"{work}/runs/", text)
    text = text.replace("recipes/rloo/verify_testbed_gpu.yaml", f"{work}/recipes/verify_testbed_gpu.yaml")
    text = text.replace("recipes/onpolicy_testbed_gpu.yaml", f"{work}/recipes/onpolicy_testbed_gpu.yaml")
    if dry:
        text = re.sub(r"accelerator: gpu\b", "accelerator: cpu", text)
    copy = os.path.join(work, "recipes", os.path.basename(path))
    os.makedirs(os.path.dirname(copy), exist_ok=True)
    with open(copy, "w") as f:
        f.write(text)
    return copy


def shortened_verify(work: str, dry: bool) -> tuple[str, list[str]]:
    """recipes/verify/testbed_gpu.yaml shortened to one seed and short runs (tiny world when dry).
    Returns the recipe's path and the list of changes, for the summary."""
    rewrite_recipe("recipes/rloo/verify_testbed_gpu.yaml", work, dry)
    rewrite_recipe("recipes/onpolicy_testbed_gpu.yaml", work, dry)
    recipe = yaml.safe_load(open(rewrite_recipe("recipes/verify/testbed_gpu.yaml", work, dry)))
    rm_steps, rloo_steps = (2, 4) if dry else (300, 60)
    changes = ["seeds [0] (the recipe has 3)", f"each trained RM: trainer.max_steps {rm_steps}",
               f"each RLOO run: trainer.max_steps {rloo_steps} ({rloo_steps // 2} RLOO steps; the recipe has 100)",
               f"artifacts and runs under {work}"]
    recipe["seeds"] = [0]
    recipe["output_dir"] = os.path.join(work, "verify")
    recipe["rloo_overrides"] = {**(recipe.get("rloo_overrides") or {}), "trainer.max_steps": rloo_steps,
                                **(DRY_RLOO if dry else {})}
    for rm in recipe["reward_models"]:
        if "recipe" in rm:
            rm["overrides"] = {**(rm.get("overrides") or {}), "trainer.max_steps": rm_steps}
    recipe["reward_models"] = [rm for rm in recipe["reward_models"] if rm["name"] in SHORT_REWARD_MODELS]
    sizes = DRY_PREPARE if dry else GPU_PREPARE
    for step in recipe["prepare"]:  # an argument's value replaced where it is one of sizes'
        step["args"] = {key: sizes.get(key, value) for key, value in step["args"].items()}
    changes += [f"reward models {SHORT_REWARD_MODELS} (the recipe has 8)", f"world sizes {sizes}"]
    if dry:
        changes += [f"dry run: RLOO {DRY_RLOO}, CPU"]
    path = os.path.join(work, "recipes", "verify_testbed_short.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(recipe, f, sort_keys=False)
    return path, changes


def varirm(*args: str) -> list[str]:
    return [sys.executable, "-m", "varirm", *args]


def rloo_runs(work: str, dry: bool) -> list[tuple[str, list[str]]]:
    """The testbed policy (make-tiny-model at the testbed's shape; throughput needs no SFT), the
    prompts, and two RLOO runs of the GPU recipe that differ only in length."""
    shape = (["--hidden_size", "32", "--num_layers", "2", "--num_heads", "2"] if dry
             else ["--hidden_size", "256", "--num_layers", "4", "--num_heads", "8"])
    sizes = ["--n_train", "64", "--n_val", "16", "--n_test", "16", "--n_demos", "16",
             "--n_prompts", "256" if dry else "8192", "--n_eval_prompts", "16" if dry else "512"]
    recipe = yaml.safe_load(open(rewrite_recipe("recipes/rloo/verify_testbed_gpu.yaml", work, dry)))
    recipe["trainer"]["callbacks"] = []  # no gold-curve evaluations or checkpoints inside the timed runs
    throughput = os.path.join(work, "recipes", "rloo_throughput.yaml")
    with open(throughput, "w") as f:
        yaml.safe_dump(recipe, f, sort_keys=False)
    steps = (1, 2) if dry else (5, 45)  # RLOO steps; 2 optimizer steps each (ppo_epochs 2)
    dry_batches = [arg for key, value in DRY_RLOO.items() for arg in (f"--{key}", str(value))] if dry else []
    runs = [("policy", varirm("make-tiny-model", "--output", f"{work}/testbed/pi0", "--vocab_size", "1024", *shape)),
            ("prompts", varirm("make-synthetic", "--output_dir", f"{work}/testbed/synthetic", *sizes))]
    for n in steps:
        runs.append((f"rloo_{n}", varirm("rloo", "--config", throughput, "--trainer.max_steps", str(2 * n),
                                          "--trainer.default_root_dir", f"{work}/runs/rloo_{n}",
                                          "--trainer.enable_progress_bar", "false", *dry_batches)))
    return runs


RUNNING: list[subprocess.Popen] = []  # the step running now, for the signal handler


def kill_running_and_exit(signum, frame) -> None:
    """SIGTERM/SIGINT (the device tool ending the command): the running step's whole process group
    goes too, so nothing keeps the GPU busy after this command."""
    for proc in RUNNING:
        os.killpg(proc.pid, signal.SIGKILL)
    sys.exit(128 + signum)


def run_logged(command: list[str], log, deadline: float) -> int:
    """Run ``command`` (its own process group, output to ``log``) until done or ``deadline``; on
    time-out the whole group is killed and 124 returned."""
    log.write(f"$ {shlex.join(command)}\n")
    log.flush()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    RUNNING.append(proc)
    try:
        return proc.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return 124
    finally:
        RUNNING.remove(proc)


def part_commands(name: str, out: str, work: str, dry: bool, env: dict, record: dict) -> list[tuple[str, list[str]]]:
    """The (step name, command) list of part ``name``; what the summary should know about how the
    part was set up goes into ``record``."""
    bench = [sys.executable, os.path.join(ROOT, "scripts", "bench_gpu_rm.py")]
    peak = env["matmul_bf16"]["tflops"] if env else NOMINAL_TFLOPS
    if name == "env":
        flags = ["--env-only", "--dry-run"] if dry else ["--env-only"]
        return [("env", [sys.executable, os.path.abspath(__file__), out, *flags])]
    if name == "rm_1b":
        sizes = (["--seq_len", "64", "--batch_sizes", "1", "--steps", "1", "--warmup", "1"] if dry
                 else ["--seq_len", "2048", "--batch_sizes", "2", "8", "--steps", "5", "--warmup", "2"])
        return [("bench", [*bench, *SHAPES["tiny" if dry else "1b"], *sizes, "--peak_tflops", f"{peak:.6g}",
                           "--out", os.path.join(out, "rm_1b"), "--benchmarks_md", ""])]
    if name == "qlora_8b":
        sizes = (["--seq_len", "64", "--batch_sizes", "1", "--steps", "1", "--warmup", "1"] if dry
                 else ["--seq_len", "2048", "--batch_sizes", "1", "--steps", "3", "--warmup", "1"])
        # gradient checkpointing, as QLoRA 8B on a 24 GB card is run (recipes/qlora_8b.yaml)
        return [("bench", [*bench, *SHAPES["tiny" if dry else "8b"], "--modes", "qlora", *sizes,
                           "--gradient_checkpointing",
                           "--out", os.path.join(out, "qlora_8b"), "--benchmarks_md", ""])]
    if name == "rloo_testbed":
        return rloo_runs(os.path.join(work, "rloo"), dry)
    if name == "verify_testbed":
        recipe, record["changes"] = shortened_verify(os.path.join(work, "verify"), dry)
        return [("verify", varirm("verify", "--config", recipe))]
    raise ValueError(name)


def run_part(name: str, out: str, work: str, dry: bool, env: dict, left: float) -> dict[str, Any]:
    """Part ``name`` under its time limit, cut to ``left`` seconds of the command's budget."""
    limit = int(min(DRY_LIMIT if dry else LIMITS[name], left))
    start = time.monotonic()
    deadline = start + limit
    record: dict[str, Any] = {"part": name, "limit_s": limit, "steps": []}
    with open(os.path.join(out, f"{name}.log"), "w") as log:
        try:
            for step, command in part_commands(name, out, work, dry, env, record):
                t0 = time.monotonic()
                rc = run_logged(command, log, deadline)
                record["steps"].append({"step": step, "rc": rc, "wall_s": round(time.monotonic() - t0, 2)})
                if rc != 0:
                    break
        except Exception as e:  # a part's set-up failed: recorded, the next part runs
            log.write(f"gpu_check: {type(e).__name__}: {e}\n")
            record["steps"].append({"step": "setup", "rc": 1, "error": f"{type(e).__name__}: {e}"})
    record["wall_s"] = round(time.monotonic() - start, 2)
    last = record["steps"][-1]["rc"] if record["steps"] else 1
    record["status"] = "ok" if last == 0 else ("timeout" if last == 124 else "failed")
    return record


def results(record: dict, out: str, work: str, dry: bool) -> None:
    """Adds what each part measured to its record."""
    name = record["part"]
    if name in ("rm_1b", "qlora_8b") and os.path.exists(os.path.join(out, f"{name}.json")):
        bench = json.load(open(os.path.join(out, f"{name}.json")))  # bench_gpu_rm.py --out OUT/name
        record["peak_tflops"] = bench["settings"]["peak_tflops"]  # the MFU denominator (measured rate)
        record["modes"] = {mode: m["best"] and {k: m["best"].get(k) for k in
                                                ("pairs", "tokens_per_s", "mfu", "peak_memory_gib")}
                           for mode, m in bench["modes"].items()}
        for m in record["modes"].values():  # the usual MFU too: against the nominal dense bf16 peak
            if m and m.get("mfu") is not None:
                m["mfu_nominal"] = m["mfu"] * record["peak_tflops"] / NOMINAL_TFLOPS
    runs = [s for s in record["steps"] if s["step"].startswith("rloo_")]
    if name == "rloo_testbed" and record["status"] == "ok" and len(runs) == 2:
        short, long = runs
        extra_steps = int(long["step"][5:]) - int(short["step"][5:])
        throughput = os.path.join(work, "rloo", "recipes", "rloo_throughput.yaml")  # the dry run overrides it
        prompts = (DRY_RLOO["data.init_args.batch_size"] if dry
                   else yaml.safe_load(open(throughput))["data"]["init_args"]["batch_size"])
        record["prompts_per_rloo_step"] = prompts
        seconds = (long["wall_s"] - short["wall_s"]) / extra_steps
        if seconds > 0:  # else the runs' start-up noise was larger than the extra steps (dry runs)
            record["seconds_per_rloo_step"], record["prompts_per_s"] = seconds, prompts / seconds
    if name == "verify_testbed":
        report = os.path.join(work, "verify", "verify", "report.md")
        record["report"] = None
        if os.path.exists(report):  # beside the summary: work/ is not for bringing back
            shutil.copy(report, os.path.join(out, "verify_report.md"))
            record["report"] = os.path.join(out, "verify_report.md")


def markdown(summary: dict) -> str:
    env = summary.get("env") or {}
    commands = ", ".join(f"`{c}`" for c in summary["commands"])
    lines = ["## GPU check", "", f"{commands}{' (dry run: CPU, tiny shapes)' if summary['dry_run'] else ''}"
             f" on {env.get('device', 'unknown device')}; torch {env.get('versions', {}).get('torch')}, CUDA "
             f"{env.get('cuda')}. Measured dense bf16 matmul: "
             f"{env.get('matmul_bf16', {}).get('tflops', float('nan')):.1f} TFLOP/s.", "",
             "| part | status | wall s (limit) | measured |", "|---|---|---|---|"]
    for r in summary["parts"]:
        measured = ""
        if "modes" in r:
            measured = "; ".join(f"{mode}: " + (f"{m['pairs']} pairs/step, {m['tokens_per_s']:.0f} tokens/s, "
                                                 + (f"MFU {m['mfu']:.1%} of the measured matmul rate "
                                                    f"({m['mfu_nominal']:.1%} of {NOMINAL_TFLOPS:.0f} TFLOP/s), "
                                                    if m.get("mfu") is not None else "")
                                                 + f"peak {m['peak_memory_gib']:.1f} GiB" if m else "none fits")
                                 for mode, m in r["modes"].items())
        if r["part"] == "rloo_testbed" and r["status"] == "ok" and "prompts_per_s" not in r:
            measured = "not measurable: the longer run was not slower than the shorter one"
        if "prompts_per_s" in r:
            measured = (f"{r['prompts_per_s']:.1f} prompts/s ({r['seconds_per_rloo_step']:.2f} s per RLOO step of "
                        f"{r['prompts_per_rloo_step']} prompts)")
        if r["part"] == "verify_testbed":
            measured = f"one seed, shortened ({'; '.join(r.get('changes', []))}); report {r.get('report')}"
        if r["status"] == "skipped":
            measured = "not run: the command's budget was spent; run it with --parts in another command"
        lines.append(f"| {r['part']} | {r['status']} | {r['wall_s']:.0f} ({r['limit_s']}) | {measured} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output folder (created)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: the same code paths")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS)
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for the whole command (default {BUDGET} on a GPU, none in a dry run)")
    parser.add_argument("--env-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    if args.env_only:
        env_part(out, args.dry_run)
        return
    signal.signal(signal.SIGTERM, kill_running_and_exit)
    signal.signal(signal.SIGINT, kill_running_and_exit)
    budget = args.budget if args.budget is not None else (float("inf") if args.dry_run else BUDGET)
    end = time.monotonic() + budget
    work = os.path.join(out, "work")
    command = shlex.join(["python", "scripts/gpu_check.py", *sys.argv[1:]])
    summary_path = os.path.join(out, "summary.json")
    # a second command into the same folder (--parts) adds its parts to the first one's summary
    summary: dict[str, Any] = (json.load(open(summary_path)) if os.path.exists(summary_path)
                               else {"commands": [], "dry_run": args.dry_run, "parts": []})
    summary["commands"].append(command)
    env_path = os.path.join(out, "env.json")
    env: dict[str, Any] = json.load(open(env_path)) if os.path.exists(env_path) else {}  # from an earlier command
    for name in args.parts:
        left = end - time.monotonic()
        if left < 30:
            record = {"part": name, "limit_s": 0, "steps": [], "wall_s": 0.0, "status": "skipped"}
        else:
            record = run_part(name, out, work, args.dry_run, env, left)
        if name == "env" and os.path.exists(env_path):
            env = json.load(open(env_path))
        summary["env"] = env
        results(record, out, work, args.dry_run)
        summary["parts"] = [p for p in summary["parts"] if p["part"] != name] + [record]
        print(f"gpu_check: {name}: {record['status']} in {record['wall_s']:.0f} s", file=sys.stderr, flush=True)
        with open(os.path.join(out, "summary.json"), "w") as f:  # after every part: a cut-off run keeps its parts
            json.dump(summary, f, indent=2)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(markdown(summary))
    print(markdown(summary))


if __name__ == "__main__":
    main()
