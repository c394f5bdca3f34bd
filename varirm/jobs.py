"""One plain function per job, under the command line and the verification: a recipe (a YAML path
or a dict) plus overrides in, a run directory or a result out. Nothing here builds command lines.

- Lightning jobs: :func:`train_rm` (``varirm fit``), :func:`test_rm` / :func:`validate_rm`,
  :func:`sft`, :func:`rloo`. ``overrides`` are dotted recipe keys, as on the command line
  (``{"trainer.max_steps": 10, "data.init_args.seed": 1}``).
- Tools, plain functions of their arguments: :func:`sample`, :func:`evaluate`, :func:`export`,
  :func:`card`, :func:`make_tiny_model`, :func:`make_real_model`, :func:`make_synthetic`,
  :func:`make_instruction_world`.

:data:`JOBS` maps each command name to its function; :mod:`varirm.verify` runs its prepare steps
through it and :mod:`varirm.api` adds ``verify`` and ``regimes`` on top.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Callable, Optional, Union

import yaml
from jsonargparse import ArgumentParser

from varirm.errors import ConfigError
from varirm.evaluate import evaluate
from varirm.export import card, export
from varirm.instructions import write_world as make_instruction_world
from varirm.lightning_cli import run_job
from varirm.real import make_real_model
from varirm.sampling import sample
from varirm.synthetic import write_task as make_synthetic
from varirm.tiny import make_tiny_model

Recipe = Union[str, os.PathLike, dict, list]


def load_recipe(recipe: Recipe) -> dict[str, Any]:
    """A recipe as a dict (a copy): from a YAML path, or a list of paths/dicts merged in order
    (later top-level keys replace earlier ones, as several ``--config`` of ``varirm verify`` do)."""
    if isinstance(recipe, dict):
        return copy.deepcopy(recipe)
    if isinstance(recipe, (list, tuple)):
        merged: dict[str, Any] = {}
        for part in recipe:
            merged.update(load_recipe(part))
        return merged
    try:
        with open(recipe) as f:
            config = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"{recipe}: cannot read the recipe ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{recipe}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{recipe}: a recipe is a mapping of settings, got {type(config).__name__}")
    return config


def function_arguments(function: Callable[..., Any], config: dict[str, Any]) -> dict[str, Any]:
    """``config`` checked against ``function``'s signature and converted as the command line does
    (nested dataclasses such as :class:`varirm.verify.RewardModelSpec` built from their dicts)."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(function, as_positional=False)
    namespace = parser.instantiate_classes(parser.parse_object(config))
    return {key: namespace[key] for key in config if key in namespace}


def apply_overrides(config: dict[str, Any], overrides: Optional[dict[str, Any]]) -> dict[str, Any]:
    """``config`` with each dotted key of ``overrides`` set (in place; also returned).

    >>> apply_overrides({"model": {"class_path": "M", "init_args": {"lr": 1.0}}}, {"model.init_args.lr": 0.5,
    ...                 "trainer.max_steps": 3})
    {'model': {'class_path': 'M', 'init_args': {'lr': 0.5}}, 'trainer': {'max_steps': 3}}
    """
    for key, value in (overrides or {}).items():
        *parents, last = key.split(".")
        node = config
        for i, part in enumerate(parents):
            child = node.get(part)
            if isinstance(child, str) and parents[i + 1:i + 2] == ["init_args"]:
                child = {"class_path": child}  # `model: pkg.Class` given as a bare class path
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {'.'.join(parents[:i + 1])} is not a mapping in the recipe")
            node[part] = node = child
        node[last] = copy.deepcopy(value)  # the parser converts nested dicts in place: keep the caller's
    return config


def _lightning(job: str, subcommand: str, recipe: Recipe, overrides: Optional[dict[str, Any]],
               ckpt_path: Optional[str]):
    if isinstance(recipe, (list, tuple)):  # LightningCLI merges nested groups; a list would merge differently
        raise ConfigError(f"varirm {job}: give one recipe (a path or a dict) and change it with overrides")
    config = apply_overrides(load_recipe(recipe), overrides)
    if ckpt_path is not None:
        config["ckpt_path"] = ckpt_path
    return run_job(job, {subcommand: config})


def train_rm(recipe: Recipe, overrides: Optional[dict[str, Any]] = None, ckpt_path: Optional[str] = None) -> str:
    """Train a reward model (``varirm fit``): returns the run directory (``checkpoints/last.ckpt``
    is the RM). ``ckpt_path="last"`` resumes an interrupted run."""
    return _lightning("fit", "fit", recipe, overrides, ckpt_path).trainer.default_root_dir


def _evaluated(subcommand: str, recipe: Recipe, overrides: Optional[dict[str, Any]],
               ckpt_path: Optional[str]) -> dict[str, float]:
    cli = _lightning("fit", subcommand, recipe, overrides, ckpt_path)
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items()}


def test_rm(recipe: Recipe, overrides: Optional[dict[str, Any]] = None, ckpt_path: Optional[str] = None
            ) -> dict[str, float]:
    """Test a reward model (``varirm test``) on the recipe's test pairs: returns the metrics."""
    return _evaluated("test", recipe, overrides, ckpt_path)


test_rm.__test__ = False  # a job, not a test for pytest


def validate_rm(recipe: Recipe, overrides: Optional[dict[str, Any]] = None, ckpt_path: Optional[str] = None
                ) -> dict[str, float]:
    """Validate a reward model (``varirm validate``) on the recipe's val pairs: returns the metrics."""
    return _evaluated("validate", recipe, overrides, ckpt_path)


def sft(recipe: Recipe, overrides: Optional[dict[str, Any]] = None, ckpt_path: Optional[str] = None) -> str:
    """Fine-tune a policy on demonstrations (``varirm sft``): returns the run directory; the policy
    is saved in Hugging Face format at the recipe's ``model.init_args.save_dir``."""
    return _lightning("sft", "fit", recipe, overrides, ckpt_path).trainer.default_root_dir


def rloo(recipe: Recipe, overrides: Optional[dict[str, Any]] = None, ckpt_path: Optional[str] = None) -> str:
    """RLOO of a policy against a frozen reward (``varirm rloo``): returns the run directory
    (``policy_eval.json`` holds the gold curve when the recipe has a ``PolicyEvaluation`` callback)."""
    return _lightning("rloo", "fit", recipe, overrides, ckpt_path).trainer.default_root_dir


LIGHTNING_JOBS = ("fit", "sft", "rloo")  # jobs with a run directory and checkpoints (resumable)

JOBS: dict[str, Callable[..., Any]] = {
    "fit": train_rm, "validate": validate_rm, "test": test_rm, "sft": sft, "rloo": rloo, "sample": sample,
    "evaluate": evaluate, "export": export, "card": card, "make-tiny-model": make_tiny_model,
    "make-real-model": make_real_model, "make-synthetic": make_synthetic,
    "make-instruction-world": make_instruction_world,
}
