"""Shared pieces of the benchmark scripts: worker subprocesses, the generated-token counter,
summaries, the machine description, the precision default, the arguments of a quiet measured
``varirm`` run, and the JSON / Markdown / BENCHMARKS.md section writers."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Optional

SCRIPTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(SCRIPTS)
for path in (ROOT, SCRIPTS):
    if path not in sys.path:
        sys.path.insert(0, path)

from varirm.files import atomic_write_text  # noqa: E402


def cpu_description() -> str:
    """The CPU's model name, torch's instruction-set level, and whether it multiplies bf16 natively
    (numbers from machines that differ here are not comparable)."""
    import torch

    from varirm.reward_model import cpu_bf16_is_native

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{model}, {os.cpu_count()} cores visible, torch ISA {torch.backends.cpu.get_cpu_capability()}, "
            f"native bf16 matmul: {'yes' if cpu_bf16_is_native() else 'no'}")


def default_bf16(flag: Optional[bool]) -> bool:
    """A ``--bf16/--no-bf16`` flag left unset (None) means what ``varirm fit`` would choose: bf16
    only where this CPU multiplies bf16 natively."""
    from varirm.reward_model import cpu_bf16_is_native

    return cpu_bf16_is_native() if flag is None else flag


def quiet_run_args(run_dir: str) -> list[str]:
    """``varirm`` CLI arguments for a measured run: no logger, progress bar or model summary, and a
    ModelCheckpoint that saves nothing (varirm's CLI adds a saving one unless one is configured, and
    Lightning refuses ``enable_checkpointing=false`` beside it)."""
    return ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
            "--trainer.callbacks.dirpath", os.path.join(run_dir, "checkpoints"),
            "--trainer.callbacks.save_top_k", "0", "--trainer.callbacks.save_last", "false"]


def write_section(path: str, name: str, text: str) -> None:
    """Replace (or append) the section between ``<!-- bench:name -->`` markers of BENCHMARKS.md."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    doc = (open(path).read() if os.path.exists(path)
           else "# Benchmarks\n\nEach section is written by the script it names.\n")
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in doc and end in doc:
        doc = doc[:doc.index(start)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(path, doc)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def versions() -> dict[str, str]:
    """Versions of the libraries the benchmarks compare or run on."""
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "trl", "lightning", "accelerate", "datasets"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine(threads: int) -> dict[str, Any]:
    return {"cpu": cpu_description(), "cores_visible": os.cpu_count(),
            "torch_threads": threads, "python": platform.python_version(), **versions()}


def summary(values: list[float], digits: int = 2) -> dict[str, Any]:
    """Median and spread (min, max) of repeated measurements."""
    def r(v: float):
        return round(v, digits) if digits else int(round(v))

    return {"median": r(statistics.median(values)), "min": r(min(values)), "max": r(max(values)),
            "values": [r(v) for v in values]}


def fmt(s: dict[str, Any]) -> str:
    """``median [min-max]`` for a Markdown table cell."""
    return f"{s['median']} [{s['min']}-{s['max']}]"


def run_worker(script: str, spec: dict[str, Any], work: str, name: str, threads: int,
               timeout: Optional[float] = None) -> dict[str, Any]:
    """Run ``script --worker_spec SPEC`` in its own Python process (own peak RSS, own RNG and
    patches) with ``threads`` intra-op threads; returns the JSON it writes to ``spec['result']``."""
    spec = {**spec, "result": os.path.join(work, f"{name}.result.json"), "threads": threads}
    spec_path = os.path.join(work, f"{name}.spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "VARIRM_CACHE": os.path.join(work, f"{name}.cache")}  # fresh: set-up includes tokenization
    log_path = os.path.join(work, f"{name}.log")
    with open(log_path, "w") as log:
        proc = subprocess.run([sys.executable, script, "--worker_spec", spec_path], stdout=log,
                              stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=timeout)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-4000:]
        raise RuntimeError(f"worker {name} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    with open(spec["result"]) as f:
        return json.load(f)


def generated_lengths(new_ids, stop_ids: list[int]):
    """Tokens each row actually generated: up to and including its first stop token, else all
    ``r`` columns. ``new_ids``: ``(n, r)`` continuation ids (pad after a stop). Returns ``(n,)``."""
    import torch

    is_stop = torch.isin(new_ids, torch.tensor(stop_ids, device=new_ids.device))
    return torch.where(is_stop.any(1), is_stop.int().argmax(1) + 1, torch.full_like(is_stop[:, 0], new_ids.shape[1],
                                                                                      dtype=torch.long))


class GenerateCounter:
    """Counts what every generation call of the process produced, whoever calls it: rows,
    generated tokens (up to and including the first stop token, see :func:`generated_lengths`)
    and seconds inside the call. The same instrument for every tool of a comparison.

    Use as a context manager; while active it patches ``transformers.GenerationMixin.generate``
    (TRL, plain loops) and ``varirm.sampling.sample_tokens`` (varirm's sampler)."""

    def __init__(self):
        self.calls: list[dict[str, float]] = []

    def _record(self, start: float, ids, prompt_len: int, stops) -> None:
        seconds = time.perf_counter() - start
        stops = [stops] if isinstance(stops, int) else list(stops or [])
        new = ids[:, prompt_len:]
        tokens = int(generated_lengths(new, stops).sum()) if stops else int(new.numel())
        self.calls.append({"start": start, "end": start + seconds, "seconds": seconds, "rows": new.shape[0],
                           "max_new": new.shape[1], "tokens": tokens})

    def __enter__(self) -> "GenerateCounter":
        from transformers.generation.utils import GenerationMixin

        import varirm.sampling

        self._originals = original, original_varirm = GenerationMixin.generate, varirm.sampling.sample_tokens
        counter = self

        def generate(model, *args, **kwargs):
            start = time.perf_counter()
            out = original(model, *args, **kwargs)
            ids = out if not hasattr(out, "sequences") else out.sequences
            prompt = kwargs.get("input_ids", args[0] if args else None)
            config = kwargs.get("generation_config") or model.generation_config
            counter._record(start, ids, prompt.shape[1], kwargs.get("eos_token_id", None) or config.eos_token_id)
            return out

        def sample_tokens(policy, input_ids, attention_mask, k, max_new_tokens, temperature, top_p, stops, pad_id):
            start = time.perf_counter()
            ids = original_varirm(policy, input_ids, attention_mask, k, max_new_tokens, temperature, top_p, stops,
                                  pad_id)
            counter._record(start, ids, input_ids.shape[1], stops)
            return ids

        GenerationMixin.generate = generate
        varirm.sampling.sample_tokens = sample_tokens
        return self

    def __exit__(self, *exc) -> None:
        from transformers.generation.utils import GenerationMixin

        import varirm.sampling

        GenerationMixin.generate, varirm.sampling.sample_tokens = self._originals

    def between(self, t0: float, t1: float) -> list[dict[str, float]]:
        """Calls that started in ``(t0, t1]``."""
        return [c for c in self.calls if t0 < c["start"] <= t1]


class DtypeProbe:
    """Records the output dtype of one MLP projection of a model on every forward while attached
    (bf16 under autocast, fp32 without), to check which precision a trainer really ran."""

    def __init__(self):
        self.dtypes: set[str] = set()
        self._handle = None

    def attach(self, model) -> None:
        import torch

        target = next((m for n, m in model.named_modules() if n.endswith("mlp.down_proj")), None)
        target = target or next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        self._handle = target.register_forward_hook(
            lambda mod, inp, out: self.dtypes.add(str(out.dtype).replace("torch.", "")))

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def linear_shapes(config) -> list[tuple[int, int]]:
    """``(in, out)`` of the Linear layers of one Llama-style block: q, k, v, o, gate, up, down."""
    d, heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    inter = config.intermediate_size
    return [(d, heads * head_dim), (d, kv * head_dim), (d, kv * head_dim), (heads * head_dim, d),
            (d, inter), (d, inter), (inter, d)]


def matmul_rate(config, bf16: bool, threads: int, rows: int = 2048, repeats: int = 8,
                extra_shapes: tuple[tuple[int, int], ...] = ()) -> dict[str, Any]:
    """This CPU's plain ``torch.matmul`` rate (FLOP/s) on the model's GEMM shapes (``rows`` tokens
    times each block linear's weight, and ``extra_shapes`` such as the LM head), in the given
    precision; the best shape's median is the limit used."""
    import torch

    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if bf16 else torch.float32
    rates = {}
    for i, o in sorted(set(linear_shapes(config)) | set(extra_shapes)):
        a, b = torch.randn(rows, i, dtype=dtype), torch.randn(i, o, dtype=dtype)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        rates[f"{rows}x{i} @ {i}x{o}"] = 2 * rows * i * o / statistics.median(times)
    best = max(rates.values())
    return {"dtype": str(dtype).replace("torch.", ""), "threads": threads,
            "flops_per_s_by_shape": {k: round(v / 1e9, 1) for k, v in rates.items()},
            "gflops_per_s": round(best / 1e9, 1)}


def dpo_prompts(path: str, n: int, tokenizer, max_tokens: int) -> list:
    """The first user turn of the first ``n`` conversations of a sharegpt preference file whose
    rendered prompt has at most ``max_tokens`` tokens (longer ones are skipped, not cut)."""
    from varirm.chat import render_prompt_response
    from varirm.formats import read_raw_rows

    prompts = []
    for _, row in read_raw_rows(path):
        turn = next(m for m in row["conversations"] if m["from"] == "human")
        prompt = [{"role": "user", "content": turn["value"]}]
        text = render_prompt_response(tokenizer, prompt, "")[0]
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_tokens:
            prompts.append(prompt)
        if len(prompts) >= n:
            break
    return prompts


PAIRED = ("95% interval over the alternating run pairs (paired t by the delta method below 10 pairs, paired "
          "bootstrap from 10)")


def paired_ratio(base: list[float], other: list[float], target: Optional[float] = None) -> dict[str, Any]:
    """``mean(other) / mean(base)`` over runs that alternated (run ``i`` of each is a pair), with a
    95% interval over the pairs (``varirm.stats.paired``: paired t by the delta method below 10 pairs, a
    paired bootstrap from 10) and, given a ``target``,
    PASS / MISS / INCONCLUSIVE by that interval (``varirm.stats.judge``)."""
    from varirm.stats import judge, paired

    ci = paired(base, other)["ratio"]
    out = {"estimate": round(ci["estimate"], 3), "lower": round(ci["lower"], 3), "upper": round(ci["upper"], 3),
           "pairs": len(base), "method": ci["method"]}
    if target is not None:
        out.update(target=target, **judge(ci, target))
    return out


def fmt_ratio(r: dict[str, Any]) -> str:
    """``1.57 [1.48, 1.62] (3 pairs)``, with the verdict when there is a target."""
    text = f"{r['estimate']:.2f} [{r['lower']:.2f}, {r['upper']:.2f}] ({r['pairs']} run pairs)"
    if "verdict" in r:
        needed = f", ~{r['seeds_needed']} pairs would resolve it" if r.get("seeds_needed") else ""
        text += f", target >= {r['target']}x: {r['verdict']}{needed}"
    return text


def write_outputs(out: str, result: dict[str, Any], md: str, benchmarks_md: str, section: str) -> None:
    """``out.json``, ``out.md`` and the ``<!-- bench:section -->`` block of ``benchmarks_md``
    (skipped when it is '')."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    with open(out + ".md", "w") as f:
        f.write(md)
    if benchmarks_md:
        write_section(benchmarks_md, section, md)


class StepClock:
    """Wall-clock time at the start of the first step and at the end of every step. The timed
    window runs from the end of step ``warmup`` (the start of step 1 when ``warmup`` is 0) to the
    end of the last step, so it holds everything the training loop does between steps (data
    loading, optimizer, callbacks), and none of the set-up before the first step."""

    def __init__(self):
        self.first_start: Optional[float] = None
        self.ends: list[float] = []

    def start(self) -> None:
        if self.first_start is None:
            self.first_start = time.perf_counter()

    def end(self) -> None:
        self.ends.append(time.perf_counter())

    def window(self, warmup: int) -> tuple[float, float, int]:
        """``(t0, t1, timed steps)``."""
        if len(self.ends) <= warmup:
            raise RuntimeError(f"only {len(self.ends)} steps ran; need more than warmup={warmup}")
        t0 = self.ends[warmup - 1] if warmup > 0 else self.first_start
        return t0, self.ends[-1], len(self.ends) - warmup


def add_common_arguments(parser, name: str, vocab_help: str = "BPE vocabulary size") -> None:
    """The options every tool-vs-tool benchmark has: the tiny model's size, threads, seed, outputs,
    and the hidden ``--worker_spec`` by which the script runs one measured run in a subprocess."""
    import argparse

    parser.add_argument("--hidden_size", type=int, default=384)
    parser.add_argument("--num_layers", type=int, default=6)
    parser.add_argument("--num_heads", type=int, default=6)
    parser.add_argument("--vocab_size", type=int, default=4096, help=vocab_help)
    parser.add_argument("--threads", type=int, default=2, help="torch threads in every run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(ROOT, "results", name))
    parser.add_argument("--benchmarks_md", default=os.path.join(ROOT, "BENCHMARKS.md"),
                        help="BENCHMARKS.md to update ('' to leave it alone)")
    parser.add_argument("--worker_spec", help=argparse.SUPPRESS)


def run_if_worker(args, worker) -> bool:
    """In a worker subprocess (``--worker_spec``): run ``worker(spec)`` and return True."""
    if not args.worker_spec:
        return False
    with open(args.worker_spec) as f:
        worker(json.load(f))
    return True
