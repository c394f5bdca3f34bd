"""Running one ``varirm`` command in-process: the Lightning commands (``fit``/``validate``/``test``,
``sft``, ``rloo``) through :class:`VarirmCLI`, and the tools (``make-tiny-model``, ``sample``,
``evaluate``, ``export``, ...) through jsonargparse. :func:`run` is what ``varirm verify`` calls for
its prepare steps and runs; :mod:`varirm.cli` (the console entry point, with ``verify`` itself)
sits above both, so imports flow one way: cli -> verify -> commands.

A run lives in ``trainer.default_root_dir``: ``config.yaml`` (resolved), ``checkpoints/``
(``last.ckpt`` for ``--ckpt_path last``), TensorBoard events, ``csv/version_N/metrics.csv`` (one
per attempt: the first run and each resume), ``data_stats.json``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from typing import Any, Optional

# bitsandbytes (imported through transformers -> peft) warns on every start that it cannot download
# an optional faster CPU 4-bit kernel from the Hub; it changes nothing for GPU runs or correctness.
# Set before the imports below load it.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from jsonargparse import CLI  # noqa: E402
from lightning.pytorch import Callback  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback  # noqa: E402
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger  # noqa: E402

from varirm.data import PreferenceDataModule  # noqa: E402
from varirm.errors import VarirmError  # noqa: E402
from varirm.model import cpu_bf16_is_native  # noqa: E402,F401 (cpu_precision's probe; tests patch it here)
from varirm.module import RewardModelModule  # noqa: E402

TOOLS = {"make-tiny-model", "make-real-model", "make-synthetic", "sample", "evaluate", "export", "card"}


class SaveFitConfig(SaveConfigCallback):
    """Saves the resolved config of ``fit`` runs only, so a later ``test`` in the same run
    directory does not replace the training config."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


class RandomState(Callback):
    """Saves the random number generators' states (torch CPU and CUDA, numpy, Python) in every
    checkpoint and puts them back when a resumed run starts training, so sampling, dropout and
    draws continue as in an uninterrupted run. Stored as tensors and plain values, so checkpoints
    still load with ``torch.load(weights_only=True)``. Under data parallelism (processes sample
    different data and so draw different amounts) every process's states are stored, as
    ``{"ranks": [...]}``, and each process gets its own back (rank 0's when the number of
    processes changed)."""

    def __init__(self):
        self.pending: Optional[dict[str, Any]] = None

    def state_dict(self) -> dict[str, Any]:
        import random

        import numpy as np
        import torch

        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {"torch": torch.get_rng_state(),
                 "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                 "numpy": [kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, gauss],
                 "python": list(random.getstate())}
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return state
        # Lightning builds the checkpoint on every process and global rank 0 writes it
        states: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(states, state)
        return {"ranks": states}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = state

    def on_train_start(self, trainer, pl_module) -> None:
        import random

        import numpy as np
        import torch

        if self.pending is None:
            return
        state, self.pending = self.pending, None
        if "ranks" in state:
            ranks = state["ranks"]
            state = ranks[trainer.global_rank] if len(ranks) == trainer.world_size else ranks[0]
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, gauss))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))


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



def make_tool_parsers():
    from varirm.evaluate import evaluate
    from varirm.export import card, export
    from varirm.real import make_real_model
    from varirm.sampling import sample
    from varirm.synthetic import write_task
    from varirm.tiny import make_tiny_model

    return {"make-tiny-model": make_tiny_model, "make-real-model": make_real_model, "make-synthetic": write_task,
            "sample": sample, "evaluate": evaluate, "export": export, "card": card}


def run(argv: list[str], echo: bool = True):
    """Run one command (everything but ``verify``) in this process. Returns the tool's result, or
    the LightningCLI object (with ``trainer``, ``model``, ``datamodule``) for Lightning commands.
    ``echo``: print a tool's result (what it wrote), as the console command does."""
    if argv and argv[0] in TOOLS:
        result = CLI(make_tool_parsers()[argv[0]], args=argv[1:], as_positional=False, exit_on_error=False)
        if result is not None and echo:
            print(json.dumps(result, indent=2) if isinstance(result, dict) else result)
        return result
    if argv and argv[0] == "rloo":  # varirm rloo --config ...: train a policy against a frozen RM
        from varirm.rloo import PromptDataModule, RLOOModule

        return run_lightning(RLOOModule, PromptDataModule, ["fit", *argv[1:]], cli_class=PolicyCLI)
    if argv and argv[0] == "sft":  # varirm sft --config ...: fit a policy on demonstrations
        from varirm.sft import SFTDataModule, SFTModule

        return run_lightning(SFTModule, SFTDataModule, ["fit", *argv[1:]])
    return run_lightning(RewardModelModule, PreferenceDataModule, argv)


class PolicyCLI(VarirmCLI):
    """For systems without a tokenizer-bearing data module (RLOO): no argument links."""

    def add_arguments_to_parser(self, parser) -> None:
        pass


def run_lightning(model_class, data_class, args: list[str] | None, cli_class: type = VarirmCLI) -> VarirmCLI:
    """LightningCLI over a system and its data module (classes or subclasses named in recipes)."""
    with warnings.catch_warnings():
        # Explicit args (in-process calls, ``varirm sft``) are intended; Lightning warns when
        # sys.argv also has arguments.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        return cli_class(model_class, data_class, subclass_mode_model=True, subclass_mode_data=True, args=args,
                         save_config_callback=SaveFitConfig, save_config_kwargs={"overwrite": True},
                         parser_kwargs={"exit_on_error": False},
                         auto_configure_optimizers=False)
