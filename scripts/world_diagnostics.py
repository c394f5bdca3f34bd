"""Does the verification world show the paper's variance/accuracy trade-off? (varirm.diagnostics)

Reads a ``varirm verify`` output directory (its report.json, and the evaluation samples it names, so
run it where the verification ran) and writes ``diagnostics.json`` and ``diagnostics.md``:

    python scripts/world_diagnostics.py results/verify --output results/world
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from varirm.diagnostics import diagnose_verification, render_markdown  # noqa: E402
from varirm.files import atomic_write_text  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("verification", help="a varirm verify output directory")
    parser.add_argument("--output", default="results/world", help="directory for diagnostics.json/.md")
    parser.add_argument("--policy", default=None, help="policy name in a multi-policy report (default: the first)")
    args = parser.parse_args(argv)
    diag = diagnose_verification(args.verification, args.policy)
    diag["command"] = "python scripts/world_diagnostics.py " + " ".join(argv if argv is not None else sys.argv[1:])
    diag["machine"] = platform.processor() or platform.machine()
    os.makedirs(args.output, exist_ok=True)
    atomic_write_text(os.path.join(args.output, "diagnostics.json"), json.dumps(diag, indent=2) + "\n")
    text = render_markdown(diag, f"World diagnostics of `{args.verification}` under `{diag['policy']}`")
    atomic_write_text(os.path.join(args.output, "diagnostics.md"), text + f"\nCommand: `{diag['command']}`.\n")
    print(text)
    return diag


if __name__ == "__main__":
    main()
