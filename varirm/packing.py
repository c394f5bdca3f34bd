"""Padding-free batches: the chosen and rejected sequences of several pairs packed into one row.

A packed batch is one row of every sequence's tokens back to back, ``input_ids (1, T)`` with
``T = sum(seq_lens)``, and ``seq_lens (2b,)`` (chosen ``[:b]``, rejected ``[b:]``, as in the padded
batch). Each sequence gets its own position ids ``0..len-1`` and attends only to its own earlier
tokens; its reward is read at its last token. No pad token is ever computed, and the result equals
the padded batch's (checked in fp32 in ``tests/test_packing.py``).

Attention inside each sequence: ``varirm_varlen`` (:func:`varlen_sdpa_attention`) runs PyTorch's
causal SDPA on each sequence's slice (the cost of per-sequence attention, sum of ``len^2``, instead
of ``T^2`` for one masked row; no ``T x T`` mask is built, see :func:`packed_forward`) and is plain
SDPA on unpacked inputs. The boundaries reach it as
``cu_seq_lens_q`` / ``cu_seq_lens_k``, the keywords flash-attention's varlen kernel reads, so on a
GPU with ``flash_attention_2`` the same batch runs that kernel instead.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

VARLEN = "varirm_varlen"


def collate_packed_pairs(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """``input_ids (1, T)``: every chosen then every rejected sequence, back to back; ``seq_lens
    (2b,)``; ``margin (b,)``.

    >>> batch = collate_packed_pairs([{"chosen_ids": [1, 2, 3], "rejected_ids": [1, 4], "margin": 0.0},
    ...                               {"chosen_ids": [5], "rejected_ids": [6, 7], "margin": 1.0}])
    >>> batch["input_ids"].tolist(), batch["seq_lens"].tolist()
    ([[1, 2, 3, 5, 1, 4, 6, 7]], [3, 1, 2, 2])
    """
    seqs = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
    return {"input_ids": torch.tensor([[t for s in seqs for t in s]], dtype=torch.long),
            "seq_lens": torch.tensor([len(s) for s in seqs], dtype=torch.long),
            "margin": torch.tensor([float(e["margin"]) for e in examples], dtype=torch.float32)}


def packed_positions(seq_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Position ids ``(1, T)`` restarting at 0 in each sequence, and the boundaries ``cu (n + 1,)``
    (int32, as flash-attention's varlen kernel takes them).

    >>> pos, cu = packed_positions(torch.tensor([3, 1, 2]))
    >>> pos.tolist(), cu.tolist()
    ([[0, 1, 2, 0, 0, 1]], [0, 3, 4, 6])
    """
    cu = F.pad(seq_lens.cumsum(0), (1, 0)).to(torch.int32)
    starts = torch.repeat_interleave(cu[:-1].long(), seq_lens)  # (T,)
    return (torch.arange(int(seq_lens.sum()), device=seq_lens.device) - starts).unsqueeze(0), cu


def varlen_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          cu_seq_lens_q: torch.Tensor | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed sequence: ``query (1, h, T, d)``, ``key``/``value``
    ``(1, h_kv, T, d)``, boundaries ``cu_seq_lens_q (n + 1,)``; returns ``(1, T, h, d)``. Without
    boundaries (an unpacked batch) it is transformers' SDPA attention."""
    if cu_seq_lens_q is None:
        if _PACKED.get():
            raise RuntimeError("a packed row reached attention without its sequence boundaries (cu_seq_lens_q): "
                               "this model does not pass attention keywords through; use padded batches")
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    bounds = cu_seq_lens_q.tolist()
    window = kwargs.get("sliding_window")
    if kwargs.get("softcap") or kwargs.get("s_aux") is not None or (window and max(
            e - s for s, e in zip(bounds[:-1], bounds[1:])) > window):
        raise NotImplementedError("data.packing: this model's attention (logit softcap, attention sinks or a "
                                  "sliding window shorter than a sequence) is not reproduced; use padded batches")
    gqa = query.shape[1] != key.shape[1]  # grouped-query attention: fewer key/value heads
    out = [F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True,
                                          dropout_p=dropout, scale=scaling,
                                          enable_gqa=gqa)
           for s, e in zip(bounds[:-1], bounds[1:])]
    return torch.cat(out, dim=2).transpose(1, 2).contiguous(), None


_PACKED = contextvars.ContextVar("varirm_packed", default=False)


@contextlib.contextmanager
def packed_forward() -> Iterator[None]:
    """Marks a forward of a packed row: no attention mask is built (each sequence's attention is
    causal on its own slice), and attention without the boundaries is an error, not a silent mix."""
    token = _PACKED.set(True)
    try:
        yield
    finally:
        _PACKED.reset(token)


def varlen_mask(*args, **kwargs) -> Any:
    """SDPA's mask for unpacked batches; none for a packed row (it would be T x T, and unused)."""
    return None if _PACKED.get() else sdpa_mask(*args, **kwargs)


AttentionInterface.register(VARLEN, varlen_sdpa_attention)
AttentionMaskInterface.register(VARLEN, varlen_mask)


def packed_kwargs(seq_lens: torch.Tensor) -> dict[str, Any]:
    """What a transformers decoder needs to run a packed row: ``position_ids`` and the boundaries
    (no ``attention_mask``: the sequences are not padded)."""
    position_ids, cu = packed_positions(seq_lens)
    longest = int(seq_lens.max())
    return {"position_ids": position_ids, "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest,
            "max_length_k": longest}
