"""varirm from Python: one plain function per job, the same ones the ``varirm`` command runs.

    from varirm import api

    run = api.train_rm("recipes/quickstart.yaml", {"trainer.max_epochs": 1})  # -> run directory
    metrics = api.evaluate(f"{run}/checkpoints/last.ckpt", "runs/eval", samples="artifacts/samples/pi0_eval_k10.jsonl",
                           gold="varirm.synthetic.gold_reward")             # -> variance, accuracies
    report = api.verify("recipes/verify/synthetic.yaml", seeds=[0, 1])     # -> report.md

A recipe is a YAML path or a dict (``verify``/``regimes`` also take a list, merged in order); ``overrides`` are dotted
keys as on the command line. Lightning jobs return their run directory, tools what they wrote,
``verify``/``regimes`` the report's path.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from varirm import regimes as regimes_module
from varirm import verify as verify_module
from varirm.jobs import (
    JOBS,
    Recipe,
    apply_overrides,
    card,
    evaluate,
    export,
    function_arguments,
    load_recipe,
    make_instruction_world,
    make_real_model,
    make_synthetic,
    make_tiny_model,
    rloo,
    sample,
    sft,
    test_rm,
    train_rm,
    validate_rm,
)
from varirm.report import read_findings

__all__ = ["API", "apply_overrides", "card", "evaluate", "export", "findings", "function_arguments", "load_recipe",
           "make_instruction_world", "make_real_model", "make_synthetic", "make_tiny_model", "regimes", "rloo",
           "sample", "sft", "test_rm", "train_rm", "validate_rm", "verify"]


def _from_recipe(function: Callable[..., str], recipe: Recipe, settings: dict[str, Any]) -> str:
    """``function`` called with the recipe's arguments, ``settings`` replacing them, checked and
    converted as the command line does."""
    return function(**function_arguments(function, {**load_recipe(recipe), **settings}))


def verify(recipe: Recipe, **settings: Any) -> str:
    """Verify a set of RMs by RLOO (:func:`varirm.verify.verify`) from a recipe such as
    ``recipes/verify/synthetic.yaml``; ``settings`` replace the recipe's (``seeds=[0, 1]``,
    ``output_dir=...``). Returns the path of ``report.md``."""
    return _from_recipe(verify_module.verify, recipe, settings)


def regimes(recipe: Recipe, **settings: Any) -> str:
    """When does variance matter (:func:`varirm.regimes.regimes`), from a recipe such as
    ``recipes/verify/regimes.yaml``; ``settings`` replace the recipe's. Returns ``regimes.md``'s path."""
    return _from_recipe(regimes_module.regimes, recipe, settings)


def findings(reports: list[str], policy: Optional[str] = None) -> str:
    """What verifications found, in plain words: each check's verdict, seeds, claim and main measurement.

    Args:
        reports: Output directories of ``varirm verify`` (or their ``report.json``).
        policy: The initial policy whose checks to read, in reports with several (its name, e.g. ``pi0``).
    """
    return read_findings(reports, policy)


API: dict[str, Callable[..., Any]] = {**JOBS, "verify": verify, "regimes": regimes, "findings": findings}
