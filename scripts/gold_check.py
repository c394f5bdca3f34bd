"""Hand check of the instruction world's gold reward: SmolLM2 samples with the gold score and the
counts it is computed from, as a Markdown table to read (the verdicts are a person's, in README).

Takes the first response to each of the first N prompts of a samples file (``varirm sample``) and
writes ``<out>.md`` with, per sample: the instruction, the counts (words, commas, bullets, words
with a capital, keyword uses), gold (:func:`varirm.instructions.gold_reward`) and the response.

    python scripts/gold_check.py --samples artifacts/samples/smollm2_eval_k4.jsonl --n 20
"""

from __future__ import annotations

import argparse
import os
import sys

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", default="artifacts/samples/smollm2_eval_k4.jsonl")
    parser.add_argument("--n", type=int, default=20, help="prompts (first response of each)")
    parser.add_argument("--out", default="results/verify_real_smollm2/gold_check")
    args = parser.parse_args()
    rows = read_samples(args.samples)[:args.n]
    lines = [f"# Gold hand check: first response to each of the first {len(rows)} prompts of `{args.samples}`", "",
             "Made by `python scripts/gold_check.py`. Counts are what `varirm.instructions.gold_reward` reads; "
             "the response is shown whole (at most 64 tokens; ⏎ marks a line break).", "",
             "| instruction | counts | gold | response |", "|---|---|---|---|"]
    lines += [row(r["prompt"], r["responses"][0]) for r in rows]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    atomic_write_text(args.out + ".md", "\n".join(lines) + "\n")
    print(args.out + ".md")


if __name__ == "__main__":
    main()
