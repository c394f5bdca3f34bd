"""Scoring (prompt, response) texts with a reward model, and reward functions from recipe strings.

Everything that scores text outside training (``varirm evaluate``, labelers that turn policy
samples into preference pairs) goes through :func:`score`, which tokenizes with
:func:`varirm.chat.encode_prompt_response`: the RM sees the same text it was trained on.
"""

from __future__ import annotations

import importlib
import os
from typing import Callable, Optional

import torch
from transformers import PreTrainedTokenizerBase

from varirm.chat import Prompt, encode_prompt_response, fit_to_length, load_tokenizer, pad_right
from varirm.errors import VarirmError
from varirm.files import TRUST_ENV
from varirm.reward_model import RewardModel, load_reward_model

RewardFunction = Callable[[list[Prompt], list[str]], list[float]]


REWARD_MODULE = "varirm.reward_training.RewardModelModule"
# checkpoints written before the module was renamed (varirm.module) hold the same class
REWARD_MODULES = {REWARD_MODULE, "varirm.module.RewardModelModule"}


def read_checkpoint(path: str) -> dict:
    """The contents of a ``varirm fit`` checkpoint, read with ``torch.load(weights_only=True)``:
    tensors and plain values only, so a ``.ckpt`` from someone else cannot run code when it is
    scored. One that needs arbitrary unpickling is refused unless ``VARIRM_TRUST_CHECKPOINTS=1``
    (``varirm --trust-checkpoints ...``). Any other unreadable file is a one-line error."""
    import pickle

    if not os.path.isfile(path):
        raise VarirmError(f"{path}: checkpoint not found" + (" (a directory; pass its checkpoints/last.ckpt)"
                                                             if os.path.isdir(path) else ""))
    trusted = os.environ.get(TRUST_ENV) == "1"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trusted, mmap=True)
    except pickle.UnpicklingError as e:
        detail = next((line.strip() for line in str(e).splitlines() if "GLOBAL" in line or "global" in line),
                      str(e).splitlines()[0] if str(e) else "")
        raise VarirmError(f"{path}: refused: loading this checkpoint would run code from the file ({detail}); "
                          f"if you trust its source, pass --trust-checkpoints (or set {TRUST_ENV}=1)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise VarirmError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise VarirmError(f"{path}: not a Lightning checkpoint of varirm (no state_dict / hyper_parameters)")
    return ckpt


def load_checkpoint_module(path: str, quantized: bool = True):
    """The :class:`varirm.reward_training.RewardModelModule` of a ``varirm fit`` checkpoint, model built and
    weights loaded (read by :func:`read_checkpoint`). ``quantized=False`` builds a QLoRA
    checkpoint's base without 4-bit quantization (its adapters and score head fit either)."""
    from varirm.reward_training import RewardModelModule

    ckpt = read_checkpoint(path)
    class_path = ckpt["hyper_parameters"].get("_class_path", REWARD_MODULE)
    if class_path not in REWARD_MODULES:
        raise VarirmError(f"{path}: a checkpoint of {class_path}, not a reward model; give a `varirm fit` "
                          f"checkpoint ({REWARD_MODULE}) or an exported reward-model directory")
    # LightningCLI adds private keys (``_class_path``, ``_instantiator``) to the saved hparams
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}
    if not quantized and hparams.get("load_in_4bit"):
        hparams["load_in_4bit"] = False
    try:
        module = RewardModelModule(**hparams)
    except TypeError as e:
        raise VarirmError(f"{path}: its hyper_parameters do not fit {REWARD_MODULE} ({e})") from None
    module.configure_model()
    try:
        module.load_state_dict(ckpt["state_dict"], strict=module.strict_loading)
    except RuntimeError as e:
        raise VarirmError(f"{path}: its weights do not fit the model it names ({str(e).splitlines()[0]})") from None
    return module


def load_scorer(path: str, device: str = "cpu", quantized: bool = True) -> tuple[RewardModel, PreTrainedTokenizerBase]:
    """A reward model in eval mode and its tokenizer, from a Lightning checkpoint (``.ckpt``
    written by ``varirm fit``), a ``varirm fit`` run directory (its ``checkpoints/last.ckpt``), or
    a Hugging Face directory / Hub id (full weights or a LoRA adapter) with a trained score head.
    ``quantized=False``: see :func:`load_checkpoint_module`."""
    run_ckpt = os.path.join(path, "checkpoints", "last.ckpt")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(run_ckpt):
        path = run_ckpt
    if path.endswith(".ckpt") or os.path.isfile(path):
        module = load_checkpoint_module(path, quantized)
        rm, tokenizer = module.model, module.tokenizer
    else:
        tokenizer = load_tokenizer(path)
        rm = load_reward_model(path, tokenizer, trained_head=True)
    return rm.to(device).eval(), tokenizer


@torch.no_grad()
def score(rm: RewardModel, tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt], responses: list[str],
          batch_size: int = 32, max_length: Optional[int] = None, bf16: Optional[bool] = None) -> torch.Tensor:
    """Rewards ``(n,)`` (fp32, on CPU) for ``n`` (prompt, response) pairs. Rows are scored in
    length order (little padding) and returned in input order. ``bf16``: the RM's forward under bf16
    autocast (``None``: on CUDA only; RLOO passes its trainer's precision)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    ids = []
    for prompt, response in zip(prompts, responses):
        p, r = encode_prompt_response(tokenizer, prompt, response)
        ids.append(fit_to_length(p, r, max_length) if max_length else p + r)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    device = next(rm.parameters()).device
    out = torch.empty(len(ids))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        input_ids, attention_mask = pad_right([ids[i] for i in chunk], tokenizer.pad_token_id)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" if bf16 is None else bf16):
            rewards = rm(input_ids.to(device), attention_mask.to(device))
        out[chunk] = rewards.float().cpu()
    return out


def load_reward_function(spec: str, batch_size: int = 32, device: Optional[str] = None,
                         max_length: Optional[int] = None, bf16: Optional[bool] = None) -> RewardFunction:
    """A reward function ``(prompts, responses) -> rewards`` from a recipe string: what RLOO trains
    against, what evaluation scores and what labels policy samples. A reward model (a directory, a
    ``.ckpt``, or a Hub id such as ``Skywork/Skywork-Reward-Llama-3.1-8B-v0.2``: anything with a
    ``/``), loaded here and scored with :func:`score`; or the dotted path of a Python callable
    ``(prompt, response) -> float``, e.g. ``varirm.synthetic.gold_reward``. ``max_length`` cuts RM inputs as
    training does; ``bf16``: see :func:`score`."""
    if "/" in spec or os.path.isdir(spec) or spec.endswith(".ckpt"):
        rm, tokenizer = load_scorer(spec, device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return lambda prompts, responses: score(rm, tokenizer, prompts, responses, batch_size, max_length,
                                                     bf16).tolist()
    module_name, _, attr = spec.replace(":", ".").rpartition(".")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise VarirmError(f"labeler {spec!r}: neither a reward-model directory nor an importable callable "
                          f"({e})") from None
    return lambda prompts, responses: [float(fn(p, r)) for p, r in zip(prompts, responses)]


def label_samples(samples: list[dict], labeler: Optional[str] = None,
                  device: Optional[str] = None) -> list[list[float]]:
    """Labels ``(p, k)`` of a samples file's rows: from ``labeler`` when given (it wins), else the
    rows' own ``gold`` field. The labeler RM (if any) is loaded for this call only."""
    if labeler:
        label = load_reward_function(labeler, device=device)
        flat = label([row["prompt"] for row in samples for _ in row["responses"]],
                     [r for row in samples for r in row["responses"]])
        k = len(samples[0]["responses"])
        return [flat[i * k:(i + 1) * k] for i in range(len(samples))]
    if samples and all("gold" in row for row in samples):
        return [list(map(float, row["gold"])) for row in samples]
    raise VarirmError("the policy samples have no 'gold' field and no labeler is set")
