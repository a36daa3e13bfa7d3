"""The key-value cache lceval hands a Hugging Face model: transformers' ``DynamicCache`` with layers that append
into spare room.

transformers' ``DynamicLayer`` concatenates every new token's keys and values onto the whole cache, a copy of
all S cached positions per layer at every decoding step. At 8k tokens that copying cost more than decoding's
attention itself (SmolLM2, a batch of 2: 31 s of torch.cat against 12 s of attention over 128 steps). A
``SpareLayer`` keeps its keys and values in a buffer with room to grow, writes each step's keys after the
cached ones, and returns views of the filled part; the buffer is reallocated (with room again) only when it is
full or when transformers replaced the tensors (``batch_repeat_interleave``, ``batch_select_indices``,
``reorder_cache``). Keys and values returned are the same numbers ``DynamicLayer`` returns.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

#: room a reallocated buffer leaves after its filled part: at least this many tokens...
SPARE_MIN = 256
#: ... or this fraction of the filled length, whichever is more (amortized O(1) copies per appended token)
SPARE_FRACTION = 8


class SpareLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``update`` writes into spare capacity instead of concatenating."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._room: tuple[torch.Tensor, torch.Tensor] | None = None

    def _fits(self, t: int) -> bool:
        """The current keys are the filled front of this layer's buffer and ``t`` more tokens fit after them."""
        if self._room is None or self.keys.numel() == 0:
            return False
        bk, bv = self._room
        n = self.keys.shape[-2]
        return (self.keys.data_ptr() == bk.data_ptr() and self.values.data_ptr() == bv.data_ptr()
                and self.keys.shape[:-2] == bk.shape[:-2] and n + t <= bk.shape[-2])

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        t = key_states.shape[-2]
        if not self._fits(t):
            n = self.keys.shape[-2] if self.keys.numel() else 0
            cap = n + t + max(SPARE_MIN, (n + t) // SPARE_FRACTION)
            room = []
            for old, new in ((self.keys, key_states), (self.values, value_states)):
                buf = new.new_empty((*new.shape[:-2], cap, new.shape[-1]))
                if n:
                    buf[..., :n, :] = old
                room.append(buf)
            self._room = (room[0], room[1])
            self.keys, self.values = room[0][..., :n, :], room[1][..., :n, :]
        bk, bv = self._room
        n = self.keys.shape[-2]
        bk[..., n:n + t, :] = key_states
        bv[..., n:n + t, :] = value_states
        self.keys, self.values = bk[..., :n + t, :], bv[..., :n + t, :]
        return self.keys, self.values


def new_cache(config) -> DynamicCache:
    """transformers' cache for this model's config, its full-attention layers appending into spare room (its
    sliding-window and other layer kinds stay as transformers builds them)."""
    cache = DynamicCache(config=config)
    cache.layers = [SpareLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
