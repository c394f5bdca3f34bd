"""A key/value cache allocated once per sampling call, for :func:`varirm.sampling.sample_tokens`.

transformers' ``DynamicCache`` grows each layer by ``torch.cat`` at every decode step: the whole cache
is copied once per new token and layer (on SmolLM2 on CPU, 0.30 of sampling time was ``aten::cat``).
:class:`PreallocatedLayer` keeps each layer's keys and values in buffers of ``prompt + max_new_tokens``
positions, written in place; attention reads views of the filled part. Rows leaving the batch
(finished samples) copy only the filled part, as ``DynamicCache`` does.
"""

from __future__ import annotations

from typing import Optional

import torch
from transformers.cache_utils import Cache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """One layer's keys/values ``(b, h, capacity, d)``; ``keys``/``values`` are views of the first
    ``length`` positions (what attention reads). Made for :func:`varirm.sampling.sample_tokens`: beam
    reordering and offloading are refused, not silently wrong."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity, self.length = capacity, 0
        self._k = self._v = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self._k = key_states.new_empty(*key_states.shape[:2], self.capacity, key_states.shape[3])
        self._v = value_states.new_empty(*value_states.shape[:2], self.capacity, value_states.shape[3])
        self.length = 0
        self.is_initialized = True

    def _views(self) -> None:
        self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"the preallocated KV cache holds {self.capacity} positions; {end} were written")
        self._k[:, :, self.length:end] = key_states
        self._v[:, :, self.length:end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def get_max_length(self) -> int:
        return self.capacity

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        raise NotImplementedError("PreallocatedLayer does not reorder beams; use the model's own cache")

    def offload(self) -> None:
        raise NotImplementedError("PreallocatedLayer does not offload; use the model's own cache")

    prefetch = offload

    def _rows(self, rows: torch.Tensor) -> None:
        """Keep buffer rows ``rows`` (with repeats), copying only the filled positions."""
        for name in ("_k", "_v"):
            old = getattr(self, name)
            new = old.new_empty(len(rows), *old.shape[1:])
            new[:, :, :self.length] = old[rows, :, :self.length]
            setattr(self, name, new)
        self._views()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            self._rows(torch.arange(self._k.shape[0], device=self._k.device).repeat_interleave(repeats))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            self._rows(indices)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if tokens_to_remove and self.is_initialized:
            self.length = max(0, self.length + tokens_to_remove)
            self._views()

    def reset(self) -> None:
        self._k = self._v = None
        self.length = 0
        super().reset()


def preallocated_cache(model: torch.nn.Module, capacity: int) -> Optional[Cache]:
    """A cache of :class:`PreallocatedLayer` for ``model``'s decoder layers, or ``None`` (use the
    model's own cache) where a layer is not plain full attention (sliding windows, linear
    attention, shared or cross-attention caches)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config.get_text_config(decoder=True)
    types = getattr(config, "layer_types", None)
    plain = (not getattr(config, "sliding_window", None) and not getattr(config, "is_encoder_decoder", False)
             and (types is None or set(types) == {"full_attention"}))
    layers = getattr(config, "num_hidden_layers", None)
    if not plain or not layers:
        return None
    return Cache(layers=[PreallocatedLayer(capacity) for _ in range(layers)])
