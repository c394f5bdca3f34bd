"""The reward model: any ``AutoModelForSequenceClassification`` backbone with a scalar ``score``
head, read at the last non-pad token; full, LoRA, or QLoRA (4-bit base + LoRA) via peft.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Union

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from varirm.errors import ConfigError
from varirm.packing import VARLEN, packed_forward, packed_kwargs

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_bf16_is_native() -> bool:
    """Whether this CPU has fast bf16 matrix multiplies: oneDNN's bf16 kernels need AVX512 (or
    AMX). Without them (AVX2-only CPUs) torch multiplies bf16 matrices in a scalar fallback that
    is many times slower than fp32, so bf16 autocast makes CPU training slower, not faster."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the probe: go by the ISA
        return torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "AVX2")


class RewardModel(nn.Module):
    """Backbone + scalar head: ``r(x, y) = w^T h_T`` with ``h_T`` the last hidden state at the last
    non-pad position ``T`` of each row.

    The position comes from ``attention_mask`` (``T = max{t : mask[t] = 1}``), not from searching
    for pad ids, so a response that contains the pad/eos token is still scored at its end. Rows
    must be right-padded (the collator does this): GPT-2 computes position ids without looking at
    the mask, so left-padded rows get shifted positions and different scores.

    Args:
        hf_model: a ``*ForSequenceClassification`` model with ``num_labels=1`` and a ``score``
            head, or a peft model wrapping one.
    """

    def __init__(self, hf_model: Union[PreTrainedModel, nn.Module]):
        super().__init__()
        self.hf_model = hf_model
        base = self.base_model
        if not isinstance(getattr(base, "score", None), nn.Module):
            raise ConfigError(f"{type(base).__name__} has no 'score' head; varirm needs a decoder "
                             "*ForSequenceClassification model (Llama, GPT-2, GPT-NeoX, Qwen, ...)")

    @property
    def base_model(self) -> PreTrainedModel:
        """The transformers model (inside the peft wrapper under LoRA; LoRA layers live in it)."""
        return self.hf_model.get_base_model() if hasattr(self.hf_model, "get_base_model") else self.hf_model

    @property
    def is_peft(self) -> bool:
        return hasattr(self.hf_model, "peft_config")

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                seq_lens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``input_ids``, ``attention_mask``: ``(n, t)`` right-padded; or a packed row (:mod:`varirm.packing`):
        ``input_ids (1, T)`` holding ``n`` sequences of lengths ``seq_lens (n,)`` back to back. Returns
        rewards ``(n,)`` in fp32."""
        if self.is_peft and torch.is_autocast_enabled(input_ids.device.type):
            # peft would cast a bf16 input up to its fp32 adapters and autocast back down for the matmul: a round
            # trip (exact without LoRA dropout) that copies every adapted layer's input, in forward and backward
            from peft.helpers import disable_input_dtype_casting

            with disable_input_dtype_casting(self.hf_model):
                return self._forward(input_ids, attention_mask, seq_lens)
        return self._forward(input_ids, attention_mask, seq_lens)

    def _forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                 seq_lens: Optional[torch.Tensor]) -> torch.Tensor:
        base = self.base_model
        backbone = getattr(base, base.base_model_prefix)
        if seq_lens is not None:  # packed: attention within each sequence, reward at each one's last token
            seq_lens = seq_lens.to(input_ids.device)
            if input_ids.shape != (1, int(seq_lens.sum())) or not len(seq_lens) or int(seq_lens.min()) < 1:
                raise ValueError(f"a packed row is input_ids (1, sum(seq_lens)) of non-empty sequences; got "
                                 f"{tuple(input_ids.shape)} and seq_lens {seq_lens.tolist()}")
            if base.config._attn_implementation != VARLEN and "flash" not in base.config._attn_implementation:
                base.set_attn_implementation(VARLEN)  # SDPA per sequence; plain SDPA on padded batches
                if base.config._attn_implementation != VARLEN:
                    raise ConfigError(f"data.packing needs a model on transformers' attention interface; "
                                      f"{type(base).__name__} is not: use padded batches")
            with packed_forward():
                hidden = backbone(input_ids=input_ids, **packed_kwargs(seq_lens)).last_hidden_state[0]  # (T, d)
            h_last = hidden[seq_lens.cumsum(0) - 1]  # (n, d)
        else:
            hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (n, t, d)
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            last = (attention_mask * positions).argmax(-1)  # (n,)
            h_last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (n, d)
        return base.score(h_last.to(base.score.weight.dtype if hasattr(base.score, "weight") else h_last.dtype)
                          ).squeeze(-1).float()

    def save_pretrained(self, directory: str, tokenizer: Optional[PreTrainedTokenizerBase] = None) -> None:
        """Full weights, or under LoRA the adapter plus the ``score`` head (``modules_to_save``),
        and the tokenizer with its chat template."""
        if self.is_peft:
            # The embedding rows added for a new pad token never influence a reward (pad positions
            # come after the scored token and attention is causal), so they need not be saved.
            self.hf_model.save_pretrained(directory, save_embedding_layers=False)
        else:
            self.hf_model.save_pretrained(directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)


def disable_cpu_bf16_repack(model: nn.Module) -> int:
    """bitsandbytes 4-bit on CPUs with AVX512-BF16 repacks weights after any no-grad forward, after
    which LoRA gradients through those layers are silently None. Turning the repack off keeps
    them. Returns how many ``Linear4bit`` layers were changed."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def load_reward_model(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    lora_r: int = 0,
    lora_alpha: int = 16,
    lora_dropout: float = 0.0,
    lora_target_modules: Union[str, list[str]] = "all-linear",
    load_in_4bit: bool = False,
    gradient_checkpointing: bool = False,
    dtype: Optional[str] = None,
    trust_remote_code: bool = False,
    trained_head: bool = False,
) -> RewardModel:
    """Load a reward model from a Hub id or a local directory.

    ``name_or_path`` may also be a saved LoRA reward model (a directory with
    ``adapter_config.json``): its base is loaded and the adapter applied (trainable).
    The vocabulary is resized to ``len(tokenizer)`` (a pad token may have been added) and
    ``config.pad_token_id`` set from the tokenizer.

    A backbone without a ``score`` head in its weights (a pretrained LM, the start of RM
    training) gets a freshly initialised head, said in one line; with ``trained_head=True``
    (scoring with a finished RM) a missing head is an error, since its rewards would be random.
    """
    adapter_dir = None
    if os.path.isfile(os.path.join(name_or_path, "adapter_config.json")):
        adapter_dir = name_or_path
        with open(os.path.join(name_or_path, "adapter_config.json")) as f:
            name_or_path = json.load(f)["base_model_name_or_path"]
    kwargs = {"num_labels": 1, "trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = DTYPES[dtype]
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=DTYPES[dtype or "bfloat16"])
    try:
        hf_model, info = AutoModelForSequenceClassification.from_pretrained(name_or_path, output_loading_info=True,
                                                                            **kwargs)
    except OSError as e:  # missing directory, unknown Hub id offline, no weights
        raise ConfigError(f"{name_or_path}: cannot load a model ({str(e).splitlines()[0]})") from None
    except ValueError as e:  # a config transformers cannot turn into a sequence classifier
        raise ConfigError(f"{name_or_path}: cannot load a reward model ({str(e).splitlines()[0]})") from None
    new_head = sorted(k for k in info["missing_keys"] if k.split(".")[0] == "score")
    if new_head and adapter_dir is None:
        if trained_head:
            raise ConfigError(f"{name_or_path}: no trained reward head ({', '.join(new_head)} not in its weights); "
                              "this looks like a plain language model: train a reward model with varirm fit, or "
                              "give a varirm checkpoint or exported reward-model directory")
        rank_zero_info(f"score head initialised ({', '.join(new_head)}): expected for a new reward model")
    if hf_model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        hf_model.resize_token_embeddings(len(tokenizer))
    hf_model.config.pad_token_id = tokenizer.pad_token_id
    if load_in_4bit:
        from peft import prepare_model_for_kbit_training

        hf_model = prepare_model_for_kbit_training(hf_model, use_gradient_checkpointing=gradient_checkpointing,
                                                   gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gradient_checkpointing:
        hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if adapter_dir is not None:
        from peft import PeftModel

        hf_model = PeftModel.from_pretrained(hf_model, adapter_dir, is_trainable=True)
    elif lora_r > 0 or load_in_4bit:
        from peft import LoraConfig, TaskType, get_peft_model

        if lora_r <= 0:
            raise ConfigError("load_in_4bit trains LoRA adapters on a frozen 4-bit base: set lora_r > 0")
        config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                            target_modules=lora_target_modules, modules_to_save=["score"],
                            task_type=TaskType.SEQ_CLS)
        hf_model = get_peft_model(hf_model, config)
    if load_in_4bit:
        disable_cpu_bf16_repack(hf_model)
    hf_model.train()  # from_pretrained returns eval mode; Lightning switches modes per stage from here
    return RewardModel(hf_model)
