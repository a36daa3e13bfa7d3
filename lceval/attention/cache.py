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


@dataclass
class LayerCache:
    k: Tensor | None = None  # (B, H_kv, S, D), position-encoded
    v: Tensor | None = None  # (B, H_kv, S, D)
    state: Any = None  # variant-specific recurrent state
    conv_tail: Tensor | None = None  # (B, d, k - 1): last inputs of a model's token-shift convolution

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add new keys/values along the sequence and return all of them."""
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


@dataclass
class KVCache:
    layers: list[LayerCache] = field(default_factory=list)
    length: int = 0  # tokens consumed so far = position of the next token

    @classmethod
    def empty(cls, n_layers: int) -> KVCache:
        return cls([LayerCache() for _ in range(n_layers)])

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Each cached sequence ``repeats`` times along the batch (a shared prefix handed to every prompt of a
        batch); the same call as transformers' caches."""
        def rep(x):
            if isinstance(x, Tensor):
                return x.repeat_interleave(repeats, dim=0)
            return type(x)(rep(t) for t in x) if isinstance(x, tuple | list) else x

        for layer in self.layers:
            layer.k, layer.v, layer.state, layer.conv_tail = map(rep, (layer.k, layer.v, layer.state,
                                                                       layer.conv_tail))
