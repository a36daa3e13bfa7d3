"""The key-value cache lceval hands a Hugging Face model: transformers' ``DynamicCache`` with layers that append
into spare room.

transformers' ``DynamicLayer`` concatenates every new token's keys and values onto the whole cache, a copy of
all S cached positions per layer at every decoding step. At 8k tokens that copying cost more than decoding's
attention itself (SmolLM2, a batch of 2: 31 s of torch.cat against 12 s of attention over 128 steps). A
``SpareLayer`` keeps its keys and values in a buffer with room to grow, as lceval's own ``LayerCache`` does
(``lceval.attention.cache.append_in_room``): each step's keys are written after the cached ones and views of
the filled part come back; the buffer is reallocated (with room again) only when it is full or when transformers
replaced the tensors (``batch_repeat_interleave``, ``batch_select_indices``, ``reorder_cache``). Keys and values
returned are the same numbers ``DynamicLayer`` returns.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from lceval.attention.cache import append_in_room


class SpareLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``update`` writes into spare capacity (``append_in_room``) instead of concatenating."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._room: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        filled = self.keys.numel() > 0
        room_k, self.keys = append_in_room(self._room[0], self.keys if filled else None, key_states)
        room_v, self.values = append_in_room(self._room[1], self.values if filled else None, value_states)
        self._room = (room_k, room_v)
        return self.keys, self.values


class SpareCache(DynamicCache):
    """transformers' ``DynamicCache`` whose full-attention layers are ``SpareLayer``s."""

    def nbytes(self) -> int:
        """Bytes of the keys and values its layers hold (their filled positions)."""
        return sum(t.numel() * t.element_size() for layer in self.layers if getattr(layer, "is_initialized", False)
                   for t in (layer.keys, layer.values))

    def take_prefix(self, source: DynamicCache, n: int, room: bool = True) -> bool:
        """Fill this empty cache with a copy of the first ``n`` positions of ``source`` (a prompt prefix computed
        before, ``lceval.generate.PrefixStore``), with spare room to grow unless ``room`` is False (a kept copy).
        False, with nothing taken, when a layer is of a kind that cannot be cut to a prefix (a sliding-window layer
        keeps only its window)."""
        layers = list(zip(self.layers, source.layers, strict=False))
        if (len(self.layers) != len(source.layers) or self.get_seq_length() != 0
                or any(type(a) is not SpareLayer or type(b) is not SpareLayer or b.get_seq_length() < n
                       for a, b in layers)):
            return False
        for mine, theirs in layers:
            keys, values = theirs.keys[..., :n, :], theirs.values[..., :n, :]
            if room:
                mine.update(keys, values)  # written into the new layer's own room
            else:
                mine.lazy_initialization(keys, values)
                mine.keys, mine.values = (x.clone(memory_format=torch.contiguous_format) for x in (keys, values))
        return True


def new_cache(config) -> DynamicCache:
    """transformers' cache for this model's config, its full-attention layers appending into spare room (its
    sliding-window and other layer kinds stay as transformers builds them)."""
    cache = SpareCache(config=config)
    cache.layers = [SpareLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
