"""The Lightning jobs (train an RM with ``fit``/``validate``/``test``, ``sft``, ``rloo``) on
LightningCLI: :func:`run_job` takes a command line (the console, :mod:`varirm.cli`) or a recipe as a
dict (the Python API, :mod:`varirm.jobs`); both reach the same :class:`VarirmCLI`.

A run lives in ``trainer.default_root_dir``: ``config.yaml`` (resolved), ``checkpoints/``
(``last.ckpt`` for ``--ckpt_path last``), TensorBoard events, ``csv/version_N/metrics.csv`` (one
per attempt: the first run and each resume), ``data_stats.json``.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Any, Union

# bitsandbytes (imported through transformers -> peft) warns on every start that it cannot download
# an optional faster CPU 4-bit kernel from the Hub; it changes nothing for GPU runs or correctness.
# Set before the imports below load it.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.cli import LightningCLI  # noqa: E402
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger  # noqa: E402

from varirm.callbacks import RandomState, SaveFitConfig  # noqa: E402
from varirm.errors import VarirmError  # noqa: E402
from varirm.preference_data import PreferenceDataModule  # noqa: E402
from varirm.reward_model import cpu_bf16_is_native  # noqa: E402,F401 (cpu_precision's probe; tests patch it here)
from varirm.reward_training import RewardModelModule  # noqa: E402


def cpu_precision(precision, accelerator) -> tuple[object, str]:
    """The precision to train with: ``precision`` unchanged, except bf16 on a CPU without native
    bf16 matmuls, which becomes ``32-true`` (with a note saying so). ``VARIRM_CPU_BF16=1`` keeps
    bf16 anyway (e.g. to compare numerics). Returns ``(precision, note)``; note is '' if unchanged."""
    import torch

    on_cpu = accelerator == "cpu" or (accelerator in (None, "auto") and not torch.cuda.is_available())
    if (not on_cpu or not str(precision).startswith("bf16") or os.environ.get("VARIRM_CPU_BF16") == "1"
            or cpu_bf16_is_native()):
        return precision, ""
    return "32-true", (f"varirm: precision {precision} -> 32-true: this CPU "
                       f"({torch.backends.cpu.get_cpu_capability()}) "
                       "has no native bf16 matrix multiply, and bf16 autocast would run much slower than fp32 "
                       "(VARIRM_CPU_BF16=1 keeps bf16)")


class VarirmCLI(LightningCLI):
    """LightningCLI with varirm's run-directory layout and argument links. On a CPU without native
    bf16 matmuls, a bf16 precision is replaced by fp32 (:func:`cpu_precision`), in the saved config too."""

    def add_arguments_to_parser(self, parser) -> None:
        # One tokenizer for data and model: the data module loads the model's.
        parser.link_arguments("model.init_args.model_name_or_path", "data.init_args.tokenizer_name_or_path")
        parser.link_arguments("model.init_args.trust_remote_code", "data.init_args.trust_remote_code")

    def instantiate_trainer(self, **kwargs):
        config = self.config_init[self.subcommand]["trainer"] if self.subcommand else self.config_init["trainer"]
        root = config.get("default_root_dir") or os.getcwd()
        if config.get("logger") in (None, True):
            # TensorBoard appends event files, so it logs into the run dir itself (where config.yaml
            # goes). CSVLogger deletes an existing metrics.csv, so each attempt (first run, each
            # resume) gets its own csv/version_N/metrics.csv and nothing written is lost.
            kwargs["logger"] = [TensorBoardLogger(root, name="", version=""), CSVLogger(root, name="csv")]
        configured = config.get("callbacks") or []
        callbacks = kwargs["callbacks"] = [*kwargs.get("callbacks", []),
                                           *(configured if isinstance(configured, list) else [configured])]
        for c in callbacks:  # recipes' checkpoint callbacks write where the run directory expects them
            if isinstance(c, ModelCheckpoint) and c.dirpath is None:
                c.dirpath = os.path.join(os.path.realpath(root), "checkpoints")
        if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            callbacks.append(ModelCheckpoint(dirpath=os.path.join(root, "checkpoints"), save_last=True))
        if not any(isinstance(c, RandomState) for c in callbacks):
            callbacks.append(RandomState())
        precision, note = cpu_precision(kwargs.get("precision", config.get("precision")), config.get("accelerator"))
        if note:
            print(note, file=sys.stderr)
            kwargs["precision"] = precision
            (self.config[self.subcommand] if self.subcommand else self.config)["trainer.precision"] = precision
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        ckpt_path = self.config_init["fit"].get("ckpt_path")
        ckpt_dirs = {c.dirpath for c in self.trainer.checkpoint_callbacks if getattr(c, "dirpath", None)}
        existing = [d for d in ckpt_dirs if os.path.isdir(d) and any(f.endswith(".ckpt") for f in os.listdir(d))]
        if ckpt_path is None and existing:
            raise VarirmError(f"{existing[0]} already holds checkpoints of an earlier run; resume it with "
                              "--ckpt_path last, or choose another --trainer.default_root_dir")


class PolicyCLI(VarirmCLI):
    """For systems without a tokenizer-bearing data module (RLOO): no argument links."""

    def add_arguments_to_parser(self, parser) -> None:
        pass


def systems() -> dict[str, tuple[type, type, type]]:
    """The Lightning jobs: name -> (system, data module, CLI class). Recipes may name subclasses."""
    from varirm.rloo import PromptDataModule, RLOOModule
    from varirm.sft import SFTDataModule, SFTModule

    return {"fit": (RewardModelModule, PreferenceDataModule, VarirmCLI), "sft": (SFTModule, SFTDataModule, VarirmCLI),
            "rloo": (RLOOModule, PromptDataModule, PolicyCLI)}


def run_job(job: str, args: Union[list[str], dict[str, Any]]) -> VarirmCLI:
    """Run a Lightning job (``fit`` trains an RM, ``sft``, ``rloo``) in this process and return the
    LightningCLI (with ``trainer``, ``model``, ``datamodule``). ``args``: the command line after the
    command's name (the console; for ``fit`` it starts with ``fit``, ``validate`` or ``test``), or
    ``{subcommand: config}`` with the recipe as a dict (:mod:`varirm.jobs`)."""
    model_class, data_class, cli_class = systems()[job]
    if isinstance(args, list) and job != "fit":
        args = ["fit", *args]  # varirm sft/rloo ...: always a fit
    return run_lightning(model_class, data_class, args, cli_class)


def run_lightning(model_class, data_class, args: Union[list[str], dict[str, Any], None],
                  cli_class: type = VarirmCLI) -> VarirmCLI:
    """LightningCLI over a system and its data module (classes or subclasses named in recipes)."""
    with warnings.catch_warnings():
        # Explicit args (in-process calls, ``varirm sft``) are intended; Lightning warns when
        # sys.argv also has arguments.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return cli_class(model_class, data_class, subclass_mode_model=True, subclass_mode_data=True, args=args,
                         save_config_callback=SaveFitConfig, save_config_kwargs={"overwrite": True},
                         parser_kwargs={"exit_on_error": False},
                         auto_configure_optimizers=False)
