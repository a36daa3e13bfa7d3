"""What attention keeps between decoding steps.

A ``KVCache`` holds one ``LayerCache`` per layer and the number of tokens the
model has consumed (``length``, the position of the next token). Softmax
variants keep the position-encoded keys and values; linear attention keeps its
recurrent state (sum of phi(k)^T v and of phi(k)) in ``state``. The attention
variant owns how its layer cache is extended (``Attention.cached``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

#: room a reallocated buffer leaves after its filled part: at least this many positions...
SPARE_MIN = 256
#: ... or this fraction of the filled length, whichever is more (amortized O(1) copies per appended position)
SPARE_FRACTION = 8


def append_in_room(room: Tensor | None, filled: Tensor | None, new: Tensor) -> tuple[Tensor, Tensor]:
    """``filled`` (..., n, D) followed by ``new`` (..., t, D) along positions, without copying ``filled`` again.

    ``room`` is the buffer ``filled`` was returned as the front of; ``new`` is written after it and the buffer and
    a view of its n + t filled positions come back. The buffer is reallocated, with spare room, when it is full or
    when ``filled`` is no longer its front (the caller replaced it: a batch repeat, a selection, a reorder). A
    concatenation at every decoding step would copy all n cached positions each time."""
    n = 0 if filled is None else filled.shape[-2]
    t = new.shape[-2]
    fits = (room is not None and n > 0 and filled.data_ptr() == room.data_ptr() and filled.stride() == room.stride()
            and filled.shape[:-2] == room.shape[:-2] and n + t <= room.shape[-2])
    if not fits:
        room = new.new_empty((*new.shape[:-2], n + t + max(SPARE_MIN, (n + t) // SPARE_FRACTION), new.shape[-1]))
        if n:
            room[..., :n, :] = filled
    room[..., n : n + t, :] = new
    return room, room[..., : n + t, :]


@dataclass
class LayerCache:
    k: Tensor | None = None  # (B, H_kv, S, D), position-encoded
    v: Tensor | None = None  # (B, H_kv, S, D)
    state: Any = None  # variant-specific recurrent state
    conv_tail: Tensor | None = None  # (B, d, k - 1): last inputs of a model's token-shift convolution
    room: tuple[Tensor | None, Tensor | None] = (None, None)  # the buffers k and v are the front of

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add new keys/values along the sequence (into spare room, ``append_in_room``) and return all of them."""
        room_k, self.k = append_in_room(self.room[0], self.k, k)
        room_v, self.v = append_in_room(self.room[1], self.v, v)
        self.room = (room_k, room_v)
        return self.k, self.v


@dataclass
class KVCache:
    layers: list[LayerCache] = field(default_factory=list)
    length: int = 0  # tokens consumed so far = position of the next token

    @classmethod
    def empty(cls, n_layers: int) -> KVCache:
        return cls([LayerCache() for _ in range(n_layers)])

    def take_prefix(self, source: KVCache, n: int, room: bool = True) -> bool:
        """Fill this empty cache with a copy of the first ``n`` positions of ``source`` (a prompt prefix computed
        before, ``lceval.generate.PrefixStore``), with spare room to grow unless ``room`` is False (a kept copy). A
        recurrent state or a convolution's tail holds the whole sequence and cannot be cut: those are copied only
        whole (``n == source.length``); otherwise False, nothing taken."""
        if self.length or len(self.layers) != len(source.layers) or not 0 < n <= source.length:
            return False
        whole = n == source.length
        if not whole and any(layer.state is not None or layer.conv_tail is not None or layer.k is None
                             or layer.k.shape[-2] != source.length for layer in source.layers):
            return False
        for mine, theirs in zip(self.layers, source.layers, strict=True):
            if theirs.k is not None and room:
                mine.append(theirs.k[..., :n, :], theirs.v[..., :n, :])  # written into this layer's own room
            elif theirs.k is not None:
                mine.k, mine.v = (x[..., :n, :].clone(memory_format=torch.contiguous_format)
                                  for x in (theirs.k, theirs.v))
            mine.state, mine.conv_tail = (map_tensors(x, Tensor.clone) for x in (theirs.state, theirs.conv_tail))
        self.length = n
        return True

    def nbytes(self) -> int:
        """Bytes of what the layers hold for their positions: keys, values, recurrent states, convolution tails."""
        sizes: list[int] = []
        for layer in self.layers:
            for x in (layer.k, layer.v, layer.state, layer.conv_tail):
                map_tensors(x, lambda t: sizes.append(t.numel() * t.element_size()))
        return sum(sizes)

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Each cached sequence ``repeats`` times along the batch (a shared prefix handed to every prompt of a
        batch); the same call as transformers' caches."""
        def rep(x):
            return map_tensors(x, lambda t: t.repeat_interleave(repeats, dim=0))

        for layer in self.layers:
            layer.k, layer.v, layer.state, layer.conv_tail = map(rep, (layer.k, layer.v, layer.state,
                                                                       layer.conv_tail))
            layer.room = (None, None)  # the repeated keys are new tensors: the next append allocates room


def map_tensors(x, fn):
    """``fn`` applied to every tensor of a layer's entry (a tensor, a recurrent state of nested tuples or lists)."""
    if isinstance(x, Tensor):
        return fn(x)
    return type(x)(map_tensors(t, fn) for t in x) if isinstance(x, tuple | list) else x
