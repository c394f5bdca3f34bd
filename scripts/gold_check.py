"""Hand check of the instruction world's gold reward: SmolLM2 samples with the gold score and the
counts it is computed from, as a Markdown table to read (the verdicts are a person's, in README).

Takes the first response to each of the first N prompts of a samples file (``varirm sample``) and
writes ``<out>.md`` with, per sample: the instruction, the counts (words, commas, bullets, words
with a capital, keyword uses), gold (:func:`varirm.instructions.gold_reward`) and the response; and,
over the whole file, gold's mean and within-prompt spread per kind of instruction.

    python scripts/gold_check.py --samples artifacts/samples/smollm2_eval_k4.jsonl --n 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from varirm.files import atomic_write_text  # noqa: E402
from varirm.instructions import BULLET_RE, gold_reward, instruction_of, words  # noqa: E402
from varirm.sampling import read_samples  # noqa: E402


def row(prompt, response: str) -> str:
    kind, params = instruction_of(prompt)
    found = words(response)
    counts = (f"{len(found)} words, {response.count(',')} commas, {len(BULLET_RE.findall(response))} bullets, "
              f"{sum(w != w.lower() for w in found)} capitalized"
              + (f", '{params[0]}' x{sum(w.lower() == params[0] for w in found)}" if kind == "keyword" else ""))
    text = response.replace("|", "\\|").replace("\n", " ⏎ ")
    return f"| {kind} {' '.join(params)} | {counts} | {gold_reward(prompt, response):.3f} | {text} |"


def by_kind(rows: list[dict]) -> list[str]:
    """Gold over every sample of the file, per kind of instruction: mean, std over samples, mean
    within-prompt (population) std."""
    gold, spread = defaultdict(list), defaultdict(list)
    for r in rows:
        values = [gold_reward(r["prompt"], x) for x in r["responses"]]
        kind = instruction_of(r["prompt"])[0]
        gold[kind] += values
        spread[kind].append(statistics.pstdev(values))
    lines = ["| instruction | prompts | samples | mean gold | std | mean within-prompt std |",
             "|---|---|---|---|---|---|"]
    for kind in sorted(gold) + ["all"]:
        g = [v for vs in gold.values() for v in vs] if kind == "all" else gold[kind]
        s = [v for vs in spread.values() for v in vs] if kind == "all" else spread[kind]
        lines.append(f"| {kind} | {len(s)} | {len(g)} | {statistics.mean(g):.3f} | {statistics.pstdev(g):.3f} | "
                     f"{statistics.mean(s):.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default="artifacts/samples/smollm2_eval_k4.jsonl")
    parser.add_argument("--n", type=int, default=20, help="prompts (first response of each)")
    parser.add_argument("--out", default="results/instruction_world/gold_check")
    args = parser.parse_args()
    everything = read_samples(args.samples)
    rows = everything[:args.n]
    lines = [f"# Gold hand check: first response to each of the first {len(rows)} prompts of `{args.samples}`", "",
             f"Gold over all {len(everything)} prompts of the file, by instruction:", "", *by_kind(everything), "",
             "Made by `python scripts/gold_check.py`. Counts are what `varirm.instructions.gold_reward` reads; "
             "the response is shown whole (at most 64 tokens; ⏎ marks a line break).", "",
             "| instruction | counts | gold | response |", "|---|---|---|---|"]
    lines += [row(r["prompt"], r["responses"][0]) for r in rows]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    atomic_write_text(args.out + ".md", "\n".join(lines) + "\n")
    print(args.out + ".md")


if __name__ == "__main__":
    main()
