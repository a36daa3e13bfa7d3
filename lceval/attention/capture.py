"""Attention capture: normalized weights of chosen query rows, per layer and head, during a forward pass.

Alignment and probing read attention from inside a model. A ``Capture`` is
handed to a model (``with capturing(model, rows=[...]) as cap:``); every
attention layer that runs while it is active calls
``cap.record(layer, attention, q, k, v, score_mod=...)`` with its own index and
its position-encoded q, k, v, which is exactly what an attention function of a
Hugging Face model receives, so the same hook serves every adapter. The weights
come from the variant's own ``weights()`` (linear attention: its explicit
normalized phi(q).phi(k) matrix), for the chosen rows only: memory is
O(rows x S), never the full T x S matrix.

>>> with capturing(model, rows=[120, 121]) as cap:
...     model.hidden(ids)
>>> cap.weights[0].shape        # layer 0: (B, H, 2, S)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor


class Capture:
    """Records ``weights[layer]`` (B, H, R, S) for query ``rows`` (a slice or row numbers) of chosen ``layers``."""

    def __init__(self, rows: slice | Sequence[int] | Tensor, layers: Iterable[int] | None = None):
        self.rows = rows
        self.layers = None if layers is None else set(layers)
        self.weights: dict[int, Tensor] = {}

    def shift_rows(self, offset: int) -> None:
        """The rows as indices into a call whose first ``offset`` positions came from a cache (a shared prefix
        computed before): row r becomes r - offset."""
        self.rows = _shift(self.rows, offset)

    def wants(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    @torch.no_grad()
    def record(self, layer: int, attention, q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True,
               score_mod=None, scale=None) -> Tensor | None:
        """Record this layer's call; returns the weights of every query row of the call where they were computed
        (a caller may take the output from them: ``Attention.from_weights``), else None."""
        if self.wants(layer):
            self.weights[layer] = attention.weights(q, k, v, causal=causal, rows=self.rows, score_mod=score_mod,
                                                    scale=scale).float()
        return None

    def stacked(self) -> Tensor:
        """(L, B, H, R, S) over the recorded layers in order."""
        return torch.stack([self.weights[i] for i in sorted(self.weights)])


def _shift(rows, offset: int):
    if isinstance(rows, slice):
        return slice(None if rows.start is None else rows.start - offset,
                     None if rows.stop is None else rows.stop - offset, rows.step)
    return rows - offset if isinstance(rows, Tensor) else [r - offset for r in rows]


@contextmanager
def capturing(model, rows, layers: Iterable[int] | None = None) -> Iterator[Capture]:
    """Attach a ``Capture`` to a model that offers the hook (``model.capture``) for one block of code.

    ``rows``: the query rows to capture, or a ready ``Capture`` (a subclass that reduces as it records)."""
    if not hasattr(model, "capture"):
        raise TypeError(f"{type(model).__name__} offers no attention capture (no `capture` attribute)")
    cap = rows if isinstance(rows, Capture) else Capture(rows, layers)
    model.capture = cap
    try:
        yield cap
    finally:
        model.capture = None
